//! Two-way writes (RFC 6352 §6.3.2, §9): one card per request, guarded by etags.
//!
//! - Create: PUT `<book>/<uuid>.vcf` with `If-None-Match: *`, a new vCard 3.0 card with a
//!   fresh `UID`, into the first address book of the account.
//! - Update: GET the card, patch only the changed mapped properties (every other line stays
//!   byte for byte, see [`super::map::patch`]), PUT with `If-Match`.
//! - Delete: DELETE with `If-Match`.
//!
//! A 412 (or a card whose etag moved since the link's) is [`PushResult::Conflict`]: the
//! next round fetches the card, merges, and pushes again. When the server answers a PUT
//! without an etag (it changed the card, RFC 6352 §6.3.2.3), the card is read back.

use reqwest::header::{CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH};
use reqwest::{Method, StatusCode};

use super::{map, status_error, Book, CardDavClient, MAX_CARD_BYTES};
use crate::model::Fields;
use crate::providers::transport::Request;
use crate::providers::{ProviderError, PushOp, PushResult};

const VCARD: &str = "text/vcard; charset=utf-8";

impl CardDavClient {
    pub(super) async fn push_one(&self, op: &PushOp) -> PushResult {
        let books = match self.books().await {
            Ok(b) => b,
            Err(e) => return PushResult::Failed(e),
        };
        let r = match op {
            PushOp::Create { fields, .. } => self.create(&books, fields).await,
            PushOp::Update {
                provider_id,
                etag,
                fields,
                changed,
            } => {
                self.update(&books, provider_id, etag.as_deref(), fields, changed)
                    .await
            }
            PushOp::Delete { provider_id } => self.delete(&books, provider_id).await,
        };
        r.unwrap_or_else(PushResult::Failed)
    }

    fn book_of<'b>(&self, books: &'b [Book], href: &str) -> Option<&'b Book> {
        books.iter().find(|b| href.starts_with(b.url.path()))
    }

    fn stored(&self, text: &str) -> Fields {
        map::parse(text)
            .map(|c| map::map(&c, text, &self.url).fields)
            .unwrap_or_default()
    }

    /// The etag of a card just written: from the PUT's answer, else read back.
    async fn etag_after_put(
        &self,
        book: &Book,
        href: &str,
        resp_etag: Option<&str>,
        sent: &str,
    ) -> Result<(Option<String>, String), ProviderError> {
        if let Some(e) = resp_etag {
            return Ok((Some(e.to_string()), sent.to_string()));
        }
        match self.get_card(book, href).await? {
            Some((text, etag)) => Ok((etag, text)),
            None => Ok((None, sent.to_string())),
        }
    }

    async fn create(&self, books: &[Book], fields: &Fields) -> Result<PushResult, ProviderError> {
        let book = books.first().ok_or_else(|| {
            ProviderError::Permanent("No address book to create cards in.".into())
        })?;
        let uid = uuid::Uuid::new_v4();
        let text = map::new_card(fields, &format!("urn:uuid:{uid}"));
        let url = book
            .url
            .join(&format!("{uid}.vcf"))
            .map_err(|e| ProviderError::Permanent(e.to_string()))?;
        let href = url.path().to_string();
        let r = self
            .t
            .execute(
                &Request::new(Method::PUT, url, MAX_CARD_BYTES)
                    .header(CONTENT_TYPE, VCARD)
                    .header(IF_NONE_MATCH, "*")
                    .body(text.clone()),
            )
            .await?;
        let (etag, held) = if r.status == StatusCode::PRECONDITION_FAILED {
            // The name is fresh, so only our own earlier attempt (retried after a lost
            // answer) can have taken it: the card is there.
            match self.get_card(book, &href).await? {
                Some((held, etag)) => (etag, held),
                None => return Err(status_error("PUT (create)", r.status)),
            }
        } else if r.status.is_success() {
            self.etag_after_put(book, &href, r.header(&ETAG), &text)
                .await?
        } else {
            return Err(status_error("PUT (create)", r.status));
        };
        Ok(PushResult::Created {
            provider_id: href,
            etag,
            scope: book.scope(),
            stored: self.stored(&held),
        })
    }

    async fn update(
        &self,
        books: &[Book],
        href: &str,
        etag: Option<&str>,
        fields: &Fields,
        changed: &[&'static str],
    ) -> Result<PushResult, ProviderError> {
        let Some(book) = self.book_of(books, href) else {
            return Ok(PushResult::Gone);
        };
        let Some((text, current)) = self.get_card(book, href).await? else {
            return Ok(PushResult::Gone);
        };
        if let (Some(ours), Some(now)) = (etag, current.as_deref()) {
            if ours != now {
                return Ok(PushResult::Conflict);
            }
        }
        if map::parse(&text).is_none() {
            return Err(ProviderError::Permanent(format!(
                "The card {href} is not a valid vCard; not updated."
            )));
        }
        let patched = map::patch(&text, fields, changed);
        let Some(if_match) = etag.or(current.as_deref()) else {
            return Err(ProviderError::Transient(format!(
                "The server gave no etag for {href}; not updated."
            )));
        };
        let url = self.resolve(books, href)?;
        let r = self
            .t
            .execute(
                &Request::new(Method::PUT, url, MAX_CARD_BYTES)
                    .header(CONTENT_TYPE, VCARD)
                    .header(IF_MATCH, if_match)
                    .body(patched.clone()),
            )
            .await?;
        match r.status {
            StatusCode::PRECONDITION_FAILED => Ok(PushResult::Conflict),
            StatusCode::NOT_FOUND | StatusCode::GONE => Ok(PushResult::Gone),
            s if s.is_success() => {
                let (etag, held) = self
                    .etag_after_put(book, href, r.header(&ETAG), &patched)
                    .await?;
                Ok(PushResult::Updated {
                    etag,
                    stored: self.stored(&held),
                })
            }
            s => Err(status_error("PUT (update)", s)),
        }
    }

    async fn delete(&self, books: &[Book], href: &str) -> Result<PushResult, ProviderError> {
        let Some(book) = self.book_of(books, href) else {
            return Ok(PushResult::Gone);
        };
        // The link keeps no etag for deletions; read the current one so a card changed
        // meanwhile is not deleted blindly.
        let Some((_, current)) = self.get_card(book, href).await? else {
            return Ok(PushResult::Gone);
        };
        let url = self.resolve(books, href)?;
        let mut req = Request::new(Method::DELETE, url, MAX_CARD_BYTES);
        if let Some(e) = &current {
            req = req.header(IF_MATCH, e);
        }
        let r = self.t.execute(&req).await?;
        match r.status {
            StatusCode::PRECONDITION_FAILED => Ok(PushResult::Conflict),
            StatusCode::NOT_FOUND | StatusCode::GONE => Ok(PushResult::Gone),
            s if s.is_success() => Ok(PushResult::Deleted),
            s => Err(status_error("DELETE", s)),
        }
    }
}
