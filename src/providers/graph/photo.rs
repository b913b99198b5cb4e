//! Contact photos: one by one, and twenty at a time through `$batch`.

use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::exec::{Call, Reply};
use super::map::{photo_url, seg};
use super::wire::{BatchItem, BatchResponses};
use super::{GraphClient, MAX_BATCH};
use crate::model::ProviderContact;
use crate::providers::{Jpeg, ProviderError, MAX_PHOTO_BYTES};

impl GraphClient {
    pub(super) async fn photo(
        &self,
        contact: &ProviderContact,
    ) -> Result<Option<Jpeg>, ProviderError> {
        let url = match &contact.photo_url {
            Some(u) if self.check_link(u).is_ok() => u.clone(),
            _ => photo_url(&self.api_base, &contact.provider_id),
        };
        let call = Call {
            cap: MAX_PHOTO_BYTES,
            ..Call::get(&url)
        };
        match self.exec(call, |b| Ok(b.to_vec())).await? {
            Reply::Ok(b) if b.is_empty() => Ok(None),
            Reply::Ok(b) => Ok(Some(b)),
            Reply::TooBig => {
                tracing::warn!(
                    contact = %contact.provider_id,
                    max = MAX_PHOTO_BYTES,
                    "contact photo is larger than the limit; skipped"
                );
                Ok(None)
            }
            Reply::Api(e) if e.status == StatusCode::NOT_FOUND => Ok(None),
            Reply::Api(e) => Err(e.into_provider_error("a contact photo request")),
        }
    }
}

impl GraphClient {
    /// Photos through `$batch`, [`MAX_BATCH`] per request and up to four requests at once
    /// (the in-flight limit);
    /// Graph returns each photo's bytes base64-encoded in its part. A part that is throttled
    /// or fails (anything but 200 or 404), or a batch that fails as a whole, is asked again
    /// on its own with [`GraphClient::photo`] (and its retries). Each part counts against
    /// the request budget.
    pub(super) async fn photos_batched(
        &self,
        contacts: &[ProviderContact],
    ) -> Vec<Result<Option<Jpeg>, ProviderError>> {
        // Every chunk at once: the client's four slots (and the budget) pace them.
        let mut chunks = Vec::new();
        for chunk in contacts.chunks(MAX_BATCH) {
            chunks.push(self.photo_chunk(chunk));
        }
        let per_chunk = futures_util::future::join_all(chunks).await;
        per_chunk.into_iter().flatten().collect()
    }

    /// One `$batch` of photos (see [`GraphClient::photos_batched`]).
    async fn photo_chunk(
        &self,
        chunk: &[ProviderContact],
    ) -> Vec<Result<Option<Jpeg>, ProviderError>> {
        use base64::Engine as _;
        let requests: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "id": i.to_string(),
                    "method": "GET",
                    "url": format!("/me/contacts/{}/photo/$value", seg(&c.provider_id)),
                })
            })
            .collect();
        let body = json!({ "requests": requests });
        let url = format!("{}/$batch", self.api_base);
        let call = Call {
            method: Method::POST,
            body: Some(&body),
            cost: chunk.len() as u32,
            ..Call::get(&url)
        };
        let reply = self
            .exec(call, |b| {
                serde_json::from_slice::<BatchResponses>(b).map_err(|e| e.to_string())
            })
            .await;
        let parts: HashMap<String, BatchItem> = match reply {
            Ok(Reply::Ok(b)) => b.responses.into_iter().map(|r| (r.id.clone(), r)).collect(),
            _ => HashMap::new(),
        };
        let mut out = Vec::with_capacity(chunk.len());
        for (i, c) in chunk.iter().enumerate() {
            let got = parts.get(&i.to_string()).and_then(|p| match p.status {
                200 => match &p.body {
                    Value::String(b64) => {
                        match base64::engine::general_purpose::STANDARD.decode(b64) {
                            Ok(b) if b.is_empty() => Some(Ok(None)),
                            Ok(b) if b.len() > MAX_PHOTO_BYTES => {
                                tracing::warn!(contact = %c.provider_id, max = MAX_PHOTO_BYTES, "contact photo is larger than the limit; skipped");
                                Some(Ok(None))
                            }
                            Ok(b) => Some(Ok(Some(b))),
                            Err(_) => None,
                        }
                    }
                    _ => None,
                },
                404 => Some(Ok(None)),
                _ => None,
            });
            out.push(match got {
                Some(r) => r,
                None => self.photo(c).await,
            });
        }
        out
    }
}
