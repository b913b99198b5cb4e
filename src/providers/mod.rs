//! Provider clients: Google People API, Microsoft Graph and CardDAV, behind one [`Provider`] trait
//! the account actor drives.
//!
//! A client owns the wire format (paths, fields, paging, errors, quotas) and hands the
//! account actor whole [`Round`]s: every change since the stored cursor, mapped to
//! [`crate::model::Change`]s, and the cursor to store once the round is committed. Every
//! request goes through the shared executor ([`transport`]): credentials, retries of
//! throttled and failed requests, body caps and the origin check live there; what comes
//! out is classified by [`ProviderError`].

pub mod build;
pub mod carddav;
pub mod google;
pub mod graph;
pub mod http;
pub mod oauth;
pub mod text;
pub mod transport;

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::model::{Change, Fields, Progress};

/// Everything a provider reported since the cursor the round started from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Round {
    pub changes: Vec<Change>,
    /// Scopes (Google: `""`; Graph: folder ids) listed completely in this round: links of
    /// this account in these scopes that the round did not mention are deleted provider
    /// contacts (SPEC §8, resync after an expired cursor).
    pub complete_scopes: Vec<String>,
    /// Scopes the provider says no longer exist (a deleted Graph folder).
    pub gone_scopes: Vec<String>,
    /// The cursor to store when the round is committed.
    pub cursor: Vec<u8>,
    /// Whether this round was a full listing (first sync or resync).
    pub full: bool,
    pub pages: u64,
}

/// Why a provider call failed, classified for the supervisor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The grant was revoked or expired (`invalid_grant`): the account needs `connect`.
    #[error("The provider rejected the account's grant ({0}); run `contact-sync connect` again.")]
    ReauthRequired(String),
    /// No refresh token is stored for the account.
    #[error("The account is not connected; run `contact-sync connect {0}`.")]
    NotConnected(String),
    /// Throttled, and retrying inside the client did not get through.
    #[error("The provider kept throttling requests (HTTP 429); retry after {retry_after:?}.")]
    Throttled { retry_after: Option<Duration> },
    /// A failure worth retrying later: 5xx, a dropped connection, a timeout, a truncated or
    /// malformed page.
    #[error("{0}")]
    Transient(String),
    /// A failure retrying will not fix (400 for a request we built, 403, 404 of the API).
    #[error("{0}")]
    Permanent(String),
}

impl ProviderError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Throttled { .. } | ProviderError::Transient(_)
        )
    }
    pub fn is_permanent(&self) -> bool {
        !self.is_retryable()
    }
}

/// A CRM change to apply in the provider (two-way).
#[derive(Debug, Clone, PartialEq)]
pub enum PushOp {
    /// Create a contact (Google: starred when the account syncs the starred group;
    /// Outlook: in the default folder).
    Create {
        fields: Fields,
        starred: bool,
    },
    /// Write the `changed` fields (names of [`crate::model::field`]) of a linked contact.
    Update {
        provider_id: String,
        etag: Option<String>,
        fields: Fields,
        changed: Vec<&'static str>,
    },
    Delete {
        provider_id: String,
    },
}

/// What the provider did with one [`PushOp`].
#[derive(Debug, Clone, PartialEq)]
pub enum PushResult {
    /// Created; `stored` is what the provider now holds (values over its limits dropped).
    Created {
        provider_id: String,
        etag: Option<String>,
        /// Where the provider put it (a Graph folder id; empty for Google).
        scope: String,
        stored: Fields,
    },
    /// Updated; `stored` is the pushed fields as the provider now holds them.
    Updated {
        etag: Option<String>,
        stored: Fields,
    },
    Deleted,
    /// The provider changed the contact since our etag: fetch, merge, and push again.
    Conflict,
    /// The contact no longer exists in the provider.
    Gone,
    Failed(ProviderError),
}

/// Removes values a provider dropped from pushed fields.
pub fn without(fields: &Fields, emails: &[String], phones: &[String]) -> Fields {
    let mut f = fields.clone();
    f.emails.retain(|e| !emails.contains(e));
    f.phones.retain(|p| !phones.contains(p));
    f
}

/// A photo fetched from the provider.
pub type Jpeg = Vec<u8>;

/// Largest photo we keep; larger ones are skipped.
pub const MAX_PHOTO_BYTES: usize = 512 * 1024;

/// Largest JSON answer (a listing page, a contact, a batch answer) a client reads; a larger
/// one is a failed fetch. Google pages hold at most 1000 people, Graph pages 200 contacts:
/// real pages are a few MiB at most.
pub const MAX_PAGE_BYTES: usize = 64 * 1024 * 1024;

/// Largest error body read (only to classify the error).
pub const MAX_ERROR_BYTES: usize = 64 * 1024;

/// Longest text value (a name, an email, a phone, an address line, a company, a title) read
/// from a provider, in bytes. A longer value is treated as absent: it is never truncated,
/// since a cut email or phone would be wrong data.
pub const MAX_FIELD_BYTES: usize = 8 * 1024;

/// Reports fetch progress to the account actor (pages and contacts so far).
pub type ProgressFn = Box<dyn Fn(Progress) + Send + Sync>;

/// One page of a streamed listing: its changes and the total the provider announced (the
/// number of contacts the whole listing will hold), when it says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    pub changes: Vec<Change>,
    pub total: Option<u64>,
}

/// Where a streamed listing sends its pages, as they arrive. Bounded: a provider waits
/// while the account actor is a few pages behind, which bounds the memory of a round.
pub type PageSink = tokio::sync::mpsc::Sender<Page>;

/// Sends one page of a streamed listing.
pub(crate) async fn send_page(
    pages: &PageSink,
    changes: Vec<Change>,
    total: Option<u64>,
) -> Result<(), ProviderError> {
    pages
        .send(Page { changes, total })
        .await
        .map_err(|_| ProviderError::Transient("the round was abandoned".into()))
}

/// Hands a round fetched whole to `pages` as one page (its total is exact) and returns it
/// without its changes.
pub(crate) async fn send_whole(mut round: Round, pages: &PageSink) -> Result<Round, ProviderError> {
    let changes = std::mem::take(&mut round.changes);
    let total = Some(changes.len() as u64);
    send_page(pages, changes, total).await?;
    Ok(round)
}

/// What the account actor needs from a provider.
pub trait Provider: Send + Sync {
    /// Fetches every change since `cursor` (`None`: a full listing). An expired or rejected
    /// cursor makes the client fall back to a full listing by itself and say so in
    /// [`Round::complete_scopes`].
    fn fetch_round<'a>(
        &'a self,
        cursor: Option<&'a [u8]>,
        progress: &'a ProgressFn,
    ) -> BoxFuture<'a, Result<Round, ProviderError>>;

    /// Two-way: applies CRM changes in the provider, using its batch endpoints. Results are
    /// in the order of `ops`.
    fn push<'a>(&'a self, ops: &'a [PushOp]) -> BoxFuture<'a, Vec<PushResult>>;

    /// [`Provider::fetch_round`], handing the changes to `pages` page by page as they arrive
    /// instead of collecting them: the returned [`Round`] has no `changes`. If the receiver
    /// is dropped the listing stops with an error. The default fetches the whole round and
    /// sends it as one page.
    fn fetch_pages<'a>(
        &'a self,
        cursor: Option<&'a [u8]>,
        progress: &'a ProgressFn,
        pages: PageSink,
    ) -> BoxFuture<'a, Result<Round, ProviderError>> {
        Box::pin(async move {
            let round = self.fetch_round(cursor, progress).await?;
            send_whole(round, &pages).await
        })
    }

    /// Fetches a contact's photo; `Ok(None)` when it has none.
    fn fetch_photo<'a>(
        &'a self,
        contact: &'a crate::model::ProviderContact,
    ) -> BoxFuture<'a, Result<Option<Jpeg>, ProviderError>>;

    /// Two-way: the latest version of contacts whose push was refused as stale
    /// ([`PushResult::Conflict`]), to merge before the push is retried. Contacts that are
    /// gone are left out (the next listing reports them). The default fetches nothing: the
    /// next round's delta brings the change.
    fn refetch<'a>(
        &'a self,
        provider_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Change>, ProviderError>> {
        let _ = provider_ids;
        Box::pin(async { Ok(vec![]) })
    }

    /// Fetches the photos of several contacts: one result per contact, in order. The
    /// default asks [`Provider::fetch_photo`] four at a time; a provider with a batch
    /// endpoint may do better.
    fn fetch_photos<'a>(
        &'a self,
        contacts: &'a [crate::model::ProviderContact],
    ) -> BoxFuture<'a, Vec<Result<Option<Jpeg>, ProviderError>>> {
        use futures_util::StreamExt as _;
        Box::pin(
            futures_util::stream::iter(contacts)
                .map(move |c| self.fetch_photo(c))
                .buffered(4)
                .collect(),
        )
    }
}

/// Implements [`Provider`] for a client from inherent async methods: `round(cursor,
/// progress)` for [`Provider::fetch_round`], `push_ops(ops)` for [`Provider::push`],
/// `photo(contact)` for [`Provider::fetch_photo`] and, given `photos = name`, a batched
/// `name(contacts)` for [`Provider::fetch_photos`]. One copy of the boxing glue for every
/// client.
macro_rules! provider_impl {
    ($client:ty $(, photos = $photos:ident)? $(, pages = $pages:ident)?) => {
        impl $crate::providers::Provider for $client {
            fn fetch_round<'a>(
                &'a self,
                cursor: Option<&'a [u8]>,
                progress: &'a $crate::providers::ProgressFn,
            ) -> futures_util::future::BoxFuture<
                'a,
                Result<$crate::providers::Round, $crate::providers::ProviderError>,
            > {
                Box::pin(self.round(cursor, progress))
            }

            fn push<'a>(
                &'a self,
                ops: &'a [$crate::providers::PushOp],
            ) -> futures_util::future::BoxFuture<'a, Vec<$crate::providers::PushResult>> {
                Box::pin(self.push_ops(ops))
            }

            fn fetch_photo<'a>(
                &'a self,
                contact: &'a $crate::model::ProviderContact,
            ) -> futures_util::future::BoxFuture<
                'a,
                Result<Option<$crate::providers::Jpeg>, $crate::providers::ProviderError>,
            > {
                Box::pin(self.photo(contact))
            }

            $(
                fn fetch_photos<'a>(
                    &'a self,
                    contacts: &'a [$crate::model::ProviderContact],
                ) -> futures_util::future::BoxFuture<
                    'a,
                    Vec<Result<Option<$crate::providers::Jpeg>, $crate::providers::ProviderError>>,
                > {
                    Box::pin(self.$photos(contacts))
                }
            )?

            $(
                fn fetch_pages<'a>(
                    &'a self,
                    cursor: Option<&'a [u8]>,
                    progress: &'a $crate::providers::ProgressFn,
                    pages: $crate::providers::PageSink,
                ) -> futures_util::future::BoxFuture<
                    'a,
                    Result<$crate::providers::Round, $crate::providers::ProviderError>,
                > {
                    Box::pin(self.$pages(cursor, progress, pages))
                }
            )?
        }
    };
}
pub(crate) use provider_impl;
