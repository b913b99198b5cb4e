//! Google People API client: lists `people/me/connections` page by page with a sync token,
//! maps each `Person` to a [`Change`], and falls back to a full listing when the token is
//! missing, unreadable, about to expire, or rejected as expired.
//!
//! The cursor handed to the account actor is a small JSON document of our own ([`Cursor`]):
//! Google's sync token plus the time of the full listing that started its chain. Google lets
//! tokens expire 7 days after the full sync, so a chain older than [`FULL_SYNC_MAX_AGE`] is
//! restarted with a full listing before Google would reject it.
//!
//! Safety rules: a page that does not parse as JSON (cut off, malformed) is a failed fetch,
//! retried and then reported as [`ProviderError::Transient`], never read as an empty page;
//! a full listing whose last page carries no `nextSyncToken` is not trusted either, and one
//! that shows fewer people than its `totalItems` infers no deletions. Within a page, each
//! person is read on its own ([`decode_person`]): one that breaks the schema is skipped as
//! unreadable and the rest of the page syncs. Tokens and full URLs never reach the log.
//!
//! Writes carry the CONTACT source's etag (`metadata.sources[].etag`, [`contact_etag`]),
//! which Google compares on updates; the person's own `etag` is a different value.
//!
//! Layers:
//! - [`wire`]: the serde types and constants of the People API, exactly as Google sends
//!   them (the simulator uses the same constants);
//! - [`map`]: pure functions between a `Person` and CRM fields;
//! - [`read`]: listings, paging, sync tokens and the cursor, photos, re-reads;
//! - [`mod@write`]: two-way `batchCreateContacts` / `batchUpdateContacts` /
//!   `batchDeleteContacts`.
//!
//! Every request goes through the shared [`crate::providers::transport`] executor with the
//! account's OAuth bearer token.

pub mod map;
pub mod read;
pub mod wire;
pub mod write;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tracing::warn;

pub use map::{
    contact_etag, decode_person, decode_raw_person, fields_to_person, is_starred, map_person,
    update_mask,
};
pub use read::{Cursor, FULL_SYNC_MAX_AGE};
pub use wire::*;
pub use write::{Created, Deleted, UpdateOutcome, Updated};

use super::http::{RetryPolicy, GOOGLE_PHOTO_HOSTS};
use super::oauth::TokenSource;
use super::transport::{classify, Auth, Class, Request, Transport};
use super::{Jpeg, ProgressFn, Provider, ProviderError, Round, MAX_PAGE_BYTES};
use crate::config::Group;
use crate::model::{Change, ProviderContact};

/// Why a call failed: an API answer we did not retry, or a classified provider error.
#[derive(Debug)]
enum CallError {
    Api { status: StatusCode, error: ApiError },
    Provider(ProviderError),
}

impl CallError {
    fn into_provider(self) -> ProviderError {
        match self {
            CallError::Provider(e) => e,
            // An error whose body is not Google's error JSON (cut off, or a proxy's page)
            // cannot be classified: retrying later is the safe reading, not a terminal
            // error.
            CallError::Api { status, error }
                if error.status.is_none() && error.message.is_none() && error.code.is_none() =>
            {
                ProviderError::Transient(format!(
                    "Google People API answered HTTP {status} with an unreadable error body (cut off or not JSON)."
                ))
            }
            // Otherwise the status says what it means, as for every provider (404 and 410
            // are terminal here: the callers that expect them handle them first).
            CallError::Api { status, error } => match classify(status) {
                Class::Transient => ProviderError::Transient(error.describe(status)),
                Class::Reauth => ProviderError::ReauthRequired(error.describe(status)),
                _ => ProviderError::Permanent(error.describe(status)),
            },
        }
    }
}

/// How a call may be retried and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    /// A read: every failure may be retried.
    Read,
    /// An idempotent write (etag-guarded update, delete) whose answer may be empty.
    EmptyOk,
    /// A create: only failures that cannot have reached the server (429, no connection)
    /// are retried, so a contact is never created twice.
    Create,
}

/// A Google People API client for one account.
#[derive(Debug)]
pub struct GoogleClient {
    api_base: String,
    group: Group,
    t: Transport,
    /// Photo downloads in flight for this account, whoever asks ([`PHOTO_CONCURRENCY`]).
    photo_slots: Arc<tokio::sync::Semaphore>,
}

impl GoogleClient {
    pub fn new(
        api_base: String,
        group: Group,
        tokens: Arc<TokenSource>,
        retry: RetryPolicy,
    ) -> Self {
        let api_base = api_base.trim_end_matches('/').to_string();
        let t = Transport::without_origin(Auth::Bearer(tokens), retry)
            .with_service("Google People API")
            .with_public_hosts(GOOGLE_PHOTO_HOSTS);
        // An api_base that cannot take the token admits nothing: every request is then
        // refused as permanent, with the reason in the message.
        match url::Url::parse(&api_base) {
            Ok(u) => {
                if let Err(e) = t.admit(&u) {
                    warn!(error = %e, "Google api_base refused");
                }
            }
            Err(e) => warn!(error = %e, "Google api_base is not a URL"),
        }
        GoogleClient {
            api_base,
            group,
            t,
            photo_slots: Arc::new(tokio::sync::Semaphore::new(PHOTO_CONCURRENCY)),
        }
    }

    fn url(&self, path: &str) -> Result<url::Url, CallError> {
        url::Url::parse(&format!("{}{}", self.api_base, path)).map_err(|e| {
            CallError::Provider(ProviderError::Permanent(format!(
                "Invalid Google api_base: {e}."
            )))
        })
    }

    /// Sends one authorised request through the executor (which retries 429/5xx, transport
    /// failures and unreadable bodies, and a 401 once with a fresh token) and reads the
    /// JSON answer.
    async fn call<T: DeserializeOwned + Send + 'static>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
        kind: CallKind,
    ) -> Result<T, CallError> {
        let mut req = Request::new(method, self.url(path)?, MAX_PAGE_BYTES).query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        req = match kind {
            CallKind::Create => req.not_idempotent(),
            CallKind::Read | CallKind::EmptyOk => req.idempotent(),
        };
        let empty_ok = kind == CallKind::EmptyOk;
        let answer = self
            .t
            .fetch_offloaded(&req, move |r| {
                let bytes: &[u8] = if empty_ok && r.body.trim_ascii().is_empty() {
                    b"{}"
                } else {
                    &r.body
                };
                serde_json::from_slice::<T>(bytes).map_err(|e| e.to_string())
            })
            .await
            .map_err(CallError::Provider)?;
        answer.map_err(|resp| {
            let error = serde_json::from_slice::<ErrorEnvelope>(&resp.body)
                .ok()
                .and_then(|e| e.error)
                .unwrap_or_default();
            CallError::Api {
                status: resp.status,
                error,
            }
        })
    }
}

impl Provider for GoogleClient {
    fn fetch_round<'a>(
        &'a self,
        cursor: Option<&'a [u8]>,
        progress: &'a ProgressFn,
    ) -> BoxFuture<'a, Result<Round, ProviderError>> {
        Box::pin(self.round(cursor, progress))
    }

    fn fetch_pages<'a>(
        &'a self,
        cursor: Option<&'a [u8]>,
        progress: &'a ProgressFn,
        pages: super::PageSink,
    ) -> BoxFuture<'a, Result<Round, ProviderError>> {
        Box::pin(self.stream_round(cursor, progress, pages))
    }

    fn push<'a>(&'a self, ops: &'a [super::PushOp]) -> BoxFuture<'a, Vec<super::PushResult>> {
        Box::pin(self.push_ops(ops))
    }

    fn fetch_photo<'a>(
        &'a self,
        contact: &'a ProviderContact,
    ) -> BoxFuture<'a, Result<Option<Jpeg>, ProviderError>> {
        Box::pin(async move {
            match contact.photo_url.as_deref() {
                Some(url) if !url.is_empty() => {
                    let _slot = self
                        .photo_slots
                        .acquire()
                        .await
                        .map_err(|_| ProviderError::Transient("Client shut down.".into()))?;
                    self.photo(url).await
                }
                _ => Ok(None),
            }
        })
    }

    /// Photos come from Google's photo CDN, not from the People API, so its per-minute
    /// quota does not count them: [`PHOTO_CONCURRENCY`] at a time for the account (across
    /// calls) instead of the trait's four per call. With 50 ms per request, ~2,100 photos of an initial sync take ~7 s instead of
    /// ~30 s (docs/benchmarks.md, `google_initial_25k_50ms`).
    fn fetch_photos<'a>(
        &'a self,
        contacts: &'a [ProviderContact],
    ) -> BoxFuture<'a, Vec<Result<Option<Jpeg>, ProviderError>>> {
        use futures_util::StreamExt as _;
        Box::pin(
            futures_util::stream::iter(contacts)
                .map(move |c| self.fetch_photo(c))
                .buffered(PHOTO_CONCURRENCY)
                .collect(),
        )
    }

    fn refetch<'a>(
        &'a self,
        provider_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Change>, ProviderError>> {
        Box::pin(self.get_people(provider_ids))
    }
}
