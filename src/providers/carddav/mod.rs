//! CardDAV accounts (RFC 6352): Nextcloud, iCloud, Fastmail, Radicale, Xandikos.
//!
//! Layers, as for the other providers:
//! - [`wire`]: WebDAV/CardDAV XML request bodies and `multistatus` parsing;
//! - [`map`]: vCard 3.0/4.0 → CRM fields, and the content-line reading both directions use;
//! - [`patch`]: CRM fields → vCard: write-back that patches a card's own lines, new cards;
//! - [`read`]: discovery (RFC 6764, RFC 5397, RFC 6352 §7.1) and rounds (RFC 6578
//!   `sync-collection`, `addressbook-multiget`, a `getetag` listing as fallback);
//! - [`write`](mod@write): two-way PUT / DELETE with `If-Match` / `If-None-Match`.
//!
//! Every request goes through the shared [`crate::providers::transport`] with HTTP Basic
//! (the account's app password from `password_file`).
//!
//! Key concepts:
//! - A **provider id** is the card's href path as the server lists it; the **scope** is
//!   its address book's path, so a full listing of one book accounts for that book only.
//! - The **cursor** is a small JSON document holding, per address book, the RFC 6578
//!   sync-token, or (for a server without `sync-collection`) the href → etag map of the
//!   last listing.

pub mod map;
pub mod patch;
pub mod read;
pub mod wire;
pub mod write;

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::http::RetryPolicy;
use super::transport::{Auth, Request, Transport};
use super::{Jpeg, ProgressFn, ProviderError, PushOp, PushResult, Round};
use crate::model::ProviderContact;

/// Hrefs per `addressbook-multiget` (real clients use 10-100; servers cap or fail on
/// unbounded ones).
pub const MULTIGET_CHUNK: usize = 100;

/// Largest single card read or written.
pub const MAX_CARD_BYTES: usize = 4 * 1024 * 1024;

/// One address book of the account.
#[derive(Debug, Clone, PartialEq)]
pub struct Book {
    pub url: url::Url,
    pub display_name: Option<String>,
    /// Whether the server lists `sync-collection` among the book's reports (`None`: it did
    /// not say; we try it).
    pub sync_collection: Option<bool>,
}

impl Book {
    /// The scope of the book's contacts.
    pub fn scope(&self) -> String {
        self.url.path().to_string()
    }
}

/// Per-book state kept in the account's cursor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BookCursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The last `getetag` listing (servers without `sync-collection`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etags: Option<BTreeMap<String, String>>,
}

/// The account's cursor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub books: BTreeMap<String, BookCursor>,
}

impl Cursor {
    pub fn decode(bytes: Option<&[u8]>) -> Cursor {
        bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The CardDAV client of one account.
pub struct CardDavClient {
    t: Transport,
    url: url::Url,
    address_book: Option<String>,
    books: tokio::sync::Mutex<Option<Vec<Book>>>,
}

impl CardDavClient {
    pub fn new(
        url: &str,
        username: String,
        password: SecretString,
        address_book: Option<String>,
        retry: RetryPolicy,
    ) -> Result<Self, ProviderError> {
        let url = url::Url::parse(url)
            .map_err(|e| ProviderError::Permanent(format!("Invalid CardDAV url: {e}.")))?;
        let t = Transport::new(&url, Auth::Basic { username, password }, retry)?;
        Ok(CardDavClient {
            t,
            url,
            address_book,
            books: tokio::sync::Mutex::new(None),
        })
    }

    /// The account's address books, discovered once per client.
    pub async fn books(&self) -> Result<Vec<Book>, ProviderError> {
        let mut cached = self.books.lock().await;
        if let Some(b) = cached.as_ref() {
            return Ok(b.clone());
        }
        let b = self.discover().await?;
        *cached = Some(b.clone());
        Ok(b)
    }

    /// Forgets the discovered books (after a failure that may mean they moved).
    pub async fn forget_books(&self) {
        *self.books.lock().await = None;
    }

    /// The URL of an href (path or full URL) relative to the book it belongs to.
    fn resolve(&self, books: &[Book], href: &str) -> Result<url::Url, ProviderError> {
        let base = books
            .iter()
            .find(|b| href.starts_with(b.url.path()))
            .map(|b| &b.url)
            .unwrap_or(&self.url);
        base.join(href).map_err(|e| {
            ProviderError::Permanent(format!("The server sent an invalid href {href:?}: {e}."))
        })
    }
}

/// A failure status, classified.
pub fn status_error(what: &str, status: reqwest::StatusCode) -> ProviderError {
    let msg = format!("CardDAV {what} failed: HTTP {status}.");
    if status.is_server_error() || status.as_u16() == 429 {
        ProviderError::Transient(msg)
    } else {
        ProviderError::Permanent(msg)
    }
}

impl CardDavClient {
    /// A round; after a failure the discovered books are forgotten (they may have moved).
    async fn round(
        &self,
        cursor: Option<&[u8]>,
        progress: &ProgressFn,
    ) -> Result<Round, ProviderError> {
        let r = self.list_round(cursor, progress).await;
        if r.is_err() {
            self.forget_books().await;
        }
        r
    }

    /// Pushes, one request per op, in order.
    async fn push_ops(&self, ops: &[PushOp]) -> Vec<PushResult> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(self.push_one(op).await);
        }
        out
    }

    /// A contact's photo: an inline `data:` URI, or a URL on the server's own host.
    async fn photo(&self, contact: &ProviderContact) -> Result<Option<Jpeg>, ProviderError> {
        let Some(p) = &contact.photo_url else {
            return Ok(None);
        };
        if p.starts_with("data:") {
            return Ok(map::data_uri_bytes(p).filter(|b| b.len() <= super::MAX_PHOTO_BYTES));
        }
        let Ok(u) = url::Url::parse(p) else {
            return Ok(None);
        };
        if !map::photo_host_allowed(&u, &self.url) {
            return Ok(None);
        }
        let resp = self
            .t
            .execute(&Request::new(
                reqwest::Method::GET,
                u,
                super::MAX_PHOTO_BYTES,
            ))
            .await;
        match resp {
            Ok(r) if r.status.is_success() && !r.body.is_empty() => Ok(Some(r.body)),
            Ok(_) => Ok(None),
            // Too large: skipped, like the other providers' oversized photos.
            Err(e) if super::transport::is_oversize(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

super::provider_impl!(CardDavClient);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_tolerates_garbage() {
        let mut c = Cursor::default();
        c.books.insert(
            "/u/book/".into(),
            BookCursor {
                token: Some("http://radicale.org/ns/sync/abc".into()),
                etags: None,
            },
        );
        assert_eq!(Cursor::decode(Some(&c.encode())), c);
        assert_eq!(
            Cursor::decode(Some(b"\x00\x01 not json")),
            Cursor::default()
        );
        assert_eq!(Cursor::decode(None), Cursor::default());
    }
}
