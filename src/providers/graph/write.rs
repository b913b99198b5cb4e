//! Two-way writes: creates, updates and deletes through `$batch`.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::exec::{ApiError, Call, Reply};
use super::map::{fields_to_contact, seg, update_body, Dropped};
use super::wire::{error_codes, BatchItem, BatchResponses, PREFER};
use super::{GraphClient, MAX_BATCH, WRITE_SCOPE};
use crate::model::Fields;
use crate::providers::{without, ProviderError, PushOp, PushResult};

// ---------------------------------------------------------------------------------------
// Two-way writes, through `$batch`
// ---------------------------------------------------------------------------------------

/// One write to the mailbox.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Creates a contact in the default Contacts folder.
    Create {
        fields: Fields,
    },
    /// Writes the Graph properties of the `changed` CRM fields (names of
    /// [`crate::model::field`]), with `If-Match: etag` when an etag is known.
    Update {
        id: String,
        etag: Option<String>,
        fields: Fields,
        changed: Vec<String>,
    },
    Delete {
        id: String,
    },
}

/// What became of one [`WriteOp`].
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResult {
    Created {
        id: String,
        etag: Option<String>,
        /// Values beyond Graph's multi-value limits, not written (for the audit).
        dropped: Dropped,
        /// The folder Graph put the contact in (the default folder).
        folder: Option<String>,
    },
    Updated {
        etag: Option<String>,
        dropped: Dropped,
    },
    Deleted,
    /// The contact changed since the etag we sent (412, or 409 `ErrorIrresolvableConflict`):
    /// re-read it and merge again.
    Conflict,
    /// The contact no longer exists.
    NotFound,
    Failed(ProviderError),
}

impl GraphClient {
    /// Carries out writes through `POST {api_base}/$batch`, at most [`MAX_BATCH`] per
    /// request; one result per op, in order. Throttled items are sent again after their
    /// `Retry-After`; a create is never sent twice unless the service said it was not
    /// carried out (429).
    pub async fn write(&self, ops: &[WriteOp]) -> Vec<WriteResult> {
        let mut results: Vec<Option<WriteResult>> = vec![None; ops.len()];
        let mut dropped: Vec<Dropped> = vec![Dropped::default(); ops.len()];
        let mut bodies: Vec<Option<Value>> = vec![None; ops.len()];
        for (i, op) in ops.iter().enumerate() {
            match op {
                WriteOp::Create { fields } => {
                    let (b, d) = fields_to_contact(fields);
                    bodies[i] = Some(b);
                    dropped[i] = d;
                }
                WriteOp::Update {
                    fields, changed, ..
                } => {
                    let names: Vec<&str> = changed.iter().map(String::as_str).collect();
                    let (b, d) = update_body(fields, &names);
                    bodies[i] = Some(b);
                    dropped[i] = d;
                }
                WriteOp::Delete { .. } => {}
            }
        }
        let all: Vec<usize> = (0..ops.len()).collect();
        for chunk in all.chunks(MAX_BATCH) {
            let mut pending: Vec<usize> = chunk.to_vec();
            let mut attempt = 0u32;
            while !pending.is_empty() {
                let requests: Vec<Value> = pending
                    .iter()
                    .map(|&i| batch_request(i, &ops[i], bodies[i].as_ref()))
                    .collect();
                let url = format!("{}/$batch", self.api_base);
                let body = json!({ "requests": requests });
                // Sending a create twice would create two contacts.
                let idempotent = pending
                    .iter()
                    .all(|&i| !matches!(ops[i], WriteOp::Create { .. }));
                let call = Call {
                    method: Method::POST,
                    body: Some(&body),
                    cost: pending.len() as u32,
                    idempotent,
                    ..Call::get(&url)
                };
                let reply = self
                    .exec(call, |b| {
                        serde_json::from_slice::<BatchResponses>(b).map_err(|e| e.to_string())
                    })
                    .await;
                let batch = match reply {
                    Ok(Reply::Ok(b)) => b,
                    Ok(Reply::Api(e)) => {
                        let err = e.into_provider_error("a $batch request");
                        for &i in &pending {
                            results[i] = Some(WriteResult::Failed(err.clone()));
                        }
                        break;
                    }
                    Ok(Reply::TooBig) => {
                        let err =
                            ProviderError::Transient("Oversized $batch response.".to_string());
                        for &i in &pending {
                            results[i] = Some(WriteResult::Failed(err.clone()));
                        }
                        break;
                    }
                    Err(err) => {
                        for &i in &pending {
                            results[i] = Some(WriteResult::Failed(err.clone()));
                        }
                        break;
                    }
                };
                let mut again = Vec::new();
                let mut wait: Option<Duration> = None;
                let by_id: HashMap<&str, &BatchItem> =
                    batch.responses.iter().map(|r| (r.id.as_str(), r)).collect();
                for &i in &pending {
                    let key = i.to_string();
                    let Some(item) = by_id.get(key.as_str()) else {
                        results[i] = Some(WriteResult::Failed(ProviderError::Transient(
                            "The $batch response left out a request.".into(),
                        )));
                        continue;
                    };
                    let is_create = matches!(ops[i], WriteOp::Create { .. });
                    let retry = item.status == 429
                        || (!is_create && matches!(item.status, 503 | 504 | 424));
                    if retry {
                        if let Some(ra) = item.retry_after() {
                            wait = Some(wait.map_or(ra, |w| w.max(ra)));
                        }
                        again.push(i);
                        continue;
                    }
                    results[i] = Some(item_result(&ops[i], item, &dropped[i]));
                }
                if again.is_empty() {
                    break;
                }
                attempt += 1;
                if attempt >= self.retry().max_attempts
                    || wait.is_some_and(|w| w > self.retry().max_retry_after)
                {
                    for &i in &again {
                        results[i] = Some(WriteResult::Failed(ProviderError::Throttled {
                            retry_after: wait,
                        }));
                    }
                    break;
                }
                let wait = wait.unwrap_or_else(|| self.retry().backoff(attempt - 1));
                self.pause_for(wait);
                tracing::debug!(
                    items = again.len(),
                    ?wait,
                    "retrying throttled $batch items"
                );
                tokio::time::sleep(wait).await;
                pending = again;
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    WriteResult::Failed(ProviderError::Transient("Not sent.".into()))
                })
            })
            .collect()
    }

    /// Creates a contact in the default folder: its id, etag and the values Graph's limits
    /// left out.
    pub async fn create(
        &self,
        fields: &Fields,
    ) -> Result<(String, Option<String>, Dropped), ProviderError> {
        let op = WriteOp::Create {
            fields: fields.clone(),
        };
        match self.write(std::slice::from_ref(&op)).await.pop() {
            Some(WriteResult::Created {
                id, etag, dropped, ..
            }) => Ok((id, etag, dropped)),
            Some(WriteResult::Failed(e)) => Err(e),
            other => Err(ProviderError::Transient(format!(
                "Unexpected answer to a create: {other:?}."
            ))),
        }
    }

    /// Updates the properties of the `changed` CRM fields if the contact still has `etag`:
    /// [`WriteResult::Updated`], [`WriteResult::Conflict`] or [`WriteResult::NotFound`].
    pub async fn update(
        &self,
        id: &str,
        etag: Option<&str>,
        fields: &Fields,
        changed: &[&str],
    ) -> Result<WriteResult, ProviderError> {
        let op = WriteOp::Update {
            id: id.to_string(),
            etag: etag.map(str::to_string),
            fields: fields.clone(),
            changed: changed.iter().map(|s| s.to_string()).collect(),
        };
        match self.write(std::slice::from_ref(&op)).await.pop() {
            Some(WriteResult::Failed(e)) => Err(e),
            Some(r) => Ok(r),
            None => Err(ProviderError::Transient("Not sent.".into())),
        }
    }

    /// Deletes a contact; one that is already gone counts as deleted.
    pub async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        let op = WriteOp::Delete { id: id.to_string() };
        match self.write(std::slice::from_ref(&op)).await.pop() {
            Some(WriteResult::Deleted | WriteResult::NotFound) => Ok(()),
            Some(WriteResult::Failed(e)) => Err(e),
            other => Err(ProviderError::Transient(format!(
                "Unexpected answer to a delete: {other:?}."
            ))),
        }
    }
}

fn batch_request(i: usize, op: &WriteOp, body: Option<&Value>) -> Value {
    let mut headers = json!({ "Prefer": PREFER });
    let (method, url) = match op {
        WriteOp::Create { .. } => ("POST", "/me/contacts".to_string()),
        WriteOp::Update { id, etag, .. } => {
            if let Some(e) = etag {
                headers["If-Match"] = json!(e);
            }
            ("PATCH", format!("/me/contacts/{}", seg(id)))
        }
        WriteOp::Delete { id } => ("DELETE", format!("/me/contacts/{}", seg(id))),
    };
    let mut req = json!({ "id": i.to_string(), "method": method, "url": url });
    if let Some(b) = body {
        headers["Content-Type"] = json!("application/json");
        req["body"] = b.clone();
    }
    req["headers"] = headers;
    req
}

pub(super) fn item_result(op: &WriteOp, item: &BatchItem, dropped: &Dropped) -> WriteResult {
    let codes = error_codes(&serde_json::to_vec(&item.body).unwrap_or_default());
    let api = ApiError {
        status: StatusCode::from_u16(item.status).unwrap_or(StatusCode::BAD_GATEWAY),
        codes,
    };
    match item.status {
        200..=299 => match op {
            WriteOp::Create { .. } => match item.body.get("id").and_then(Value::as_str) {
                Some(id) => WriteResult::Created {
                    id: id.to_string(),
                    etag: item.etag(),
                    dropped: dropped.clone(),
                    folder: item
                        .body
                        .get("parentFolderId")
                        .and_then(Value::as_str)
                        .map(String::from),
                },
                None => WriteResult::Failed(ProviderError::Transient(
                    "Graph created a contact but did not say its id.".into(),
                )),
            },
            WriteOp::Update { .. } => WriteResult::Updated {
                etag: item.etag(),
                dropped: dropped.clone(),
            },
            WriteOp::Delete { .. } => WriteResult::Deleted,
        },
        412 => WriteResult::Conflict,
        409 if api.has_code("ErrorIrresolvableConflict") => WriteResult::Conflict,
        404 if !matches!(op, WriteOp::Create { .. }) => WriteResult::NotFound,
        // The token was granted without write permission (an account connected one-way
        // and switched to two-way): only a new grant helps.
        403 if api.has_code("ErrorAccessDenied") => {
            WriteResult::Failed(ProviderError::ReauthRequired(format!(
                "Microsoft Graph refused a contact write with 403 ErrorAccessDenied: the grant lacks the {WRITE_SCOPE} scope that two-way sync needs"
            )))
        }
        _ => WriteResult::Failed(api.into_provider_error("a contact write")),
    }
}

impl GraphClient {
    /// The [`crate::providers::Provider::push`] of Graph: [`PushOp`]s as [`WriteOp`]s, and
    /// what became of them.
    pub(super) async fn push_ops(&self, ops: &[PushOp]) -> Vec<PushResult> {
        let writes: Vec<WriteOp> = ops
            .iter()
            .map(|op| match op {
                PushOp::Create { fields, .. } => WriteOp::Create {
                    fields: fields.clone(),
                },
                PushOp::Update {
                    provider_id,
                    etag,
                    fields,
                    changed,
                } => WriteOp::Update {
                    id: provider_id.clone(),
                    etag: etag.clone(),
                    fields: fields.clone(),
                    changed: changed.iter().map(|c| c.to_string()).collect(),
                },
                PushOp::Delete { provider_id } => WriteOp::Delete {
                    id: provider_id.clone(),
                },
            })
            .collect();
        let results = self.write(&writes).await;
        ops.iter()
            .zip(results)
            .map(|(op, r)| {
                let fields = match op {
                    PushOp::Create { fields, .. } | PushOp::Update { fields, .. } => fields.clone(),
                    PushOp::Delete { .. } => Fields::default(),
                };
                match r {
                    WriteResult::Created {
                        id,
                        etag,
                        dropped,
                        folder,
                    } => PushResult::Created {
                        provider_id: id,
                        etag,
                        scope: folder.unwrap_or_default(),
                        stored: without(&fields, &dropped.emails, &dropped.phones),
                    },
                    WriteResult::Updated { etag, dropped } => PushResult::Updated {
                        etag,
                        stored: without(&fields, &dropped.emails, &dropped.phones),
                    },
                    WriteResult::Deleted => PushResult::Deleted,
                    WriteResult::Conflict => PushResult::Conflict,
                    WriteResult::NotFound => PushResult::Gone,
                    WriteResult::Failed(e) => PushResult::Failed(e),
                }
            })
            .collect()
    }
}
