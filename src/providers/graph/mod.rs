//! Microsoft Graph personal contacts (Outlook), one-way reads plus the two-way write calls.
//!
//! Layers, as for the other providers:
//! - [`wire`]: the serde types as Graph sends them, and the wire constants the simulator
//!   shares (`$select` list, PidLidHasPicture id, page sizes, `$batch` and multi-value
//!   limits);
//! - [`map`]: pure functions between the wire types and [`ProviderContact`](crate::model::ProviderContact), both ways;
//! - `exec`: one request through the shared [`crate::providers::transport`] executor with
//!   Graph's headers, and Graph's error codes;
//! - `read`: folder discovery, per-folder delta with paging and delta links, the round;
//! - `photo`: photos one by one and twenty per `$batch`;
//! - `write`: creates, updates and deletes through `$batch`.
//!
//! Wire facts are documented in the Graph contacts reference kept beside the repository
//! (`../shared/reference/ms-graph-contacts.md`); the rules this client keeps:
//!
//! - **Folders.** Every round enumerates the default Contacts folder (well-known name
//!   `contacts`) and all its child folders, recursively, following `@odata.nextLink`.
//! - **Delta per folder.** Each folder has its own delta link; the cursor is
//!   [`GraphCursor`] as JSON. A folder without a link (new, first sync, or after the link
//!   expired) is listed in full and reported in [`Round::complete_scopes`](super::Round::complete_scopes).
//! - **Expiry.** HTTP 410, or an error code `SyncStateNotFound` / `resyncRequired` (any
//!   case, top-level or nested), drops that folder's link and lists the folder again in full
//!   within the same round. Nothing of the failed attempt is kept.
//! - **Vanished folders.** A folder in the cursor that discovery no longer lists is looked up
//!   by id: found outside the default folder's tree (Outlook moves a deleted folder to
//!   Deleted Items) or a 404 `ErrorItemNotFound` makes it a gone scope; any other failure
//!   (a bare 404, a 5xx) fails the round. A failed listing never becomes a deletion.
//! - **Headers.** `Prefer: odata.maxpagesize=200, IdType="ImmutableId"` on every request,
//!   follow-ups included (the header is not carried by next/delta links).
//! - **Politeness** (through the shared executor). At most four requests in flight per
//!   mailbox and Outlook's request budget; 429/5xx retried per [`RetryPolicy`] honouring
//!   `Retry-After` (fractions too) for the whole mailbox; 401 refreshes the token once; a
//!   cut-off or malformed body is a failed request (retried, then
//!   [`ProviderError::Transient`](super::ProviderError::Transient)), never an empty page.
//! - **Secrets.** Access tokens and next/delta links (they carry state tokens) are never
//!   logged or put into error messages; folder ids and counts are.

mod exec;
pub mod map;
mod photo;
mod read;
pub mod wire;
mod write;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::http::RetryPolicy;
use super::oauth::TokenSource;
use super::transport::{Auth, Transport};

pub use map::{
    fields_to_contact, graph_properties, is_partial, map_contact, map_contact_with_base,
    parse_birthday, row_outcome, update_body, Dropped, RowOutcome,
};
pub use wire::{
    parse_page, GraphAddress, GraphContact, GraphEmail, Page, DEFAULT_API_BASE, DEFAULT_PAGE_SIZE,
    HAS_PICTURE, MAX_BATCH, MAX_BUSINESS_PHONES, MAX_EMAILS, MAX_HOME_PHONES, MAX_PAGE_SIZE,
    PAGE_SIZE, PREFER, SELECT, SELECT_PROPERTIES,
};
pub use write::{WriteOp, WriteResult};

/// Requests in flight per mailbox (Outlook's documented concurrency limit).
pub const MAX_IN_FLIGHT: usize = 4;

/// Outlook's documented request budget per app and mailbox: 10,000 requests…
pub const DEFAULT_REQUEST_BUDGET: u32 = 10_000;
/// …in a 10-minute period.
pub const DEFAULT_BUDGET_WINDOW: Duration = Duration::from_secs(600);

/// The request budget of one mailbox ([`request_budget`] of [`DEFAULT_REQUEST_BUDGET`] per
/// [`DEFAULT_BUDGET_WINDOW`] unless configured): the shared executor's token bucket.
pub use crate::providers::transport::{request_budget, Budget};

/// The delegated permission two-way sync needs to write contacts.
pub const WRITE_SCOPE: &str = "Contacts.ReadWrite";

/// The stored cursor: one delta link per contact folder id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphCursor {
    pub folders: BTreeMap<String, String>,
}

impl GraphCursor {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn decode(bytes: &[u8]) -> Option<GraphCursor> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Microsoft Graph contacts client for one mailbox. Every request goes through the shared
/// executor ([`crate::providers::transport`]): bearer tokens, retries, `Retry-After` pauses
/// of the whole mailbox, the in-flight limit ([`MAX_IN_FLIGHT`]) and the request budget.
#[derive(Debug)]
pub struct GraphClient {
    api_base: String,
    t: Transport,
}

impl GraphClient {
    pub fn new(api_base: String, tokens: Arc<TokenSource>, retry: RetryPolicy) -> Self {
        let api_base = api_base.trim_end_matches('/').to_string();
        let t = Transport::without_origin(Auth::Bearer(tokens), retry)
            .with_service("Microsoft Graph")
            .with_concurrency(MAX_IN_FLIGHT)
            .with_budget(request_budget(
                DEFAULT_REQUEST_BUDGET,
                DEFAULT_BUDGET_WINDOW,
            ));
        // An api_base that cannot take the token admits nothing: every request is then
        // refused as permanent, with the reason in the message.
        match url::Url::parse(&api_base) {
            Ok(u) => {
                if let Err(e) = t.admit(&u) {
                    tracing::warn!(error = %e, "Microsoft Graph api_base refused");
                }
            }
            Err(e) => tracing::warn!(error = %e, "Microsoft Graph api_base is not a URL"),
        }
        GraphClient { api_base, t }
    }

    /// Sets the mailbox's request budget: at most `budget` requests per `window` (a zero
    /// turns the budget off).
    pub fn with_budget(mut self, budget: u32, window: Duration) -> Self {
        self.t = self.t.with_budget(request_budget(budget, window));
        self
    }

    /// Requests sent so far (every attempt, `$batch` parts counted one by one).
    pub fn requests_sent(&self) -> u64 {
        self.t.requests_sent()
    }

    pub fn api_base(&self) -> &str {
        &self.api_base
    }
}

super::provider_impl!(GraphClient, photos = photos_batched, pages = stream_round);
