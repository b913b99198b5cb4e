//! Reading: full and incremental listings of `people/me/connections`, paging, sync
//! tokens and our [`Cursor`], photos, and re-reads of single people.

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::map::{decode_raw_person, drop_renamed_deletions, map_person};
use super::wire::*;
use super::{CallError, CallKind, GoogleClient};
use crate::model::{Change, Progress};
use crate::providers::transport::{is_oversize, Request};
use crate::providers::{Jpeg, Page, PageSink, ProgressFn, ProviderError, Round, MAX_PHOTO_BYTES};

/// A token chain older than this is restarted with a full listing: a day before Google
/// would reject it ([`SYNC_TOKEN_LIFETIME`]).
pub const FULL_SYNC_MAX_AGE: chrono::Duration = chrono::Duration::days(6);

/// Our cursor: Google's sync token and when the full listing that began its chain started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Format version; an unknown version is a cursor we cannot decode.
    pub v: u32,
    pub sync_token: String,
    pub full_sync_at: DateTime<Utc>,
}

impl Cursor {
    pub(super) const VERSION: u32 = 1;

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Cursor> {
        let c: Cursor = serde_json::from_slice(bytes).ok()?;
        (c.v == Cursor::VERSION && !c.sync_token.is_empty()).then_some(c)
    }
}

/// Outcome of one listing attempt.
enum Listing {
    Done(Round),
    Expired,
}

impl GoogleClient {
    /// Lists every page, from the start of a chain (`sync_token: None`) or since a token.
    async fn list(
        &self,
        sync_token: Option<&str>,
        full_sync_at: DateTime<Utc>,
        progress: &ProgressFn,
        sink: Option<&PageSink>,
    ) -> Result<Listing, ProviderError> {
        let full = sync_token.is_none();
        let page_size = PAGE_SIZE.to_string();
        let mut round = Round {
            full,
            complete_scopes: if full { vec![String::new()] } else { vec![] },
            ..Round::default()
        };
        let mut page_token: Option<String> = None;
        let mut seen: u64 = 0;
        // The largest size of the whole listing a page announced (`totalItems`).
        let mut promised: u64 = 0;
        loop {
            let mut query: Vec<(&str, &str)> = vec![
                ("personFields", PERSON_FIELDS),
                ("pageSize", &page_size),
                ("requestSyncToken", "true"),
            ];
            if let Some(t) = sync_token {
                query.push(("syncToken", t));
            }
            if let Some(p) = &page_token {
                query.push(("pageToken", p));
            }
            let page: ListConnectionsJson = match self
                .call(
                    Method::GET,
                    "/v1/people/me/connections",
                    &query,
                    None,
                    CallKind::Read,
                )
                .await
            {
                Ok(p) => p,
                Err(CallError::Api { status, error })
                    if !full
                        && (status == StatusCode::GONE
                            || (status == StatusCode::BAD_REQUEST
                                && (error.has_reason("EXPIRED_SYNC_TOKEN")
                                    || error.status.as_deref()
                                        == Some("FAILED_PRECONDITION")))) =>
                {
                    info!(%status, "Google rejected the sync token as expired; starting a full listing");
                    return Ok(Listing::Expired);
                }
                Err(e) => return Err(e.into_provider()),
            };
            round.pages += 1;
            seen += page.connections.len() as u64;
            let total = page.total_items.or(page.total_people);
            // Streamed: this page's changes go to the sink, not into the round.
            let before = round.changes.len();
            for raw in &page.connections {
                let (change, renamed) = decode_raw_person(raw, self.group);
                round.changes.extend(renamed);
                if let Change::Unreadable {
                    provider_id, error, ..
                } = &change
                {
                    warn!(%provider_id, %error, "Google sent a person that cannot be read; it is skipped");
                    if provider_id.starts_with("unreadable:") {
                        // Without its resource name we cannot tell which link it is: this
                        // listing cannot reveal deletions.
                        round.complete_scopes.clear();
                    }
                }
                round.changes.push(change);
            }
            if let Some(sink) = sink {
                let changes = round.changes.split_off(before);
                sink.send(Page { changes, total })
                    .await
                    .map_err(|_| ProviderError::Transient("the round was abandoned".into()))?;
            }
            promised = promised.max(total.unwrap_or(0));
            progress(Progress {
                pages: round.pages,
                contacts: seen,
                total,
            });
            debug!(
                pages = round.pages,
                contacts = seen,
                full,
                "Google page listed"
            );
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) if page_token.as_deref() == Some(next.as_str()) => {
                    return Err(ProviderError::Transient(
                        "Google sent the same page token twice; paging stopped.".into(),
                    ));
                }
                Some(next) => page_token = Some(next),
                None => {
                    let Some(sync) = page.next_sync_token.filter(|t| !t.is_empty()) else {
                        return Err(ProviderError::Transient(
                            "Google's last page carried no nextSyncToken; the listing is not trusted."
                                .into(),
                        ));
                    };
                    drop_renamed_deletions(&mut round.changes);
                    if full && seen < promised {
                        // Fewer people than Google said the listing holds: it is not
                        // complete, so the people it did not show are not deletions.
                        warn!(
                            seen,
                            total_items = promised,
                            "Google's full listing ended with fewer people than totalItems; no deletions are inferred from it"
                        );
                        round.complete_scopes.clear();
                    }
                    round.cursor = Cursor {
                        v: Cursor::VERSION,
                        sync_token: sync,
                        full_sync_at,
                    }
                    .encode();
                    return Ok(Listing::Done(round));
                }
            }
        }
    }

    pub(super) async fn round(
        &self,
        cursor: Option<&[u8]>,
        progress: &ProgressFn,
    ) -> Result<Round, ProviderError> {
        let now = Utc::now();
        let decoded = cursor.and_then(Cursor::decode);
        if cursor.is_some() && decoded.is_none() {
            warn!("Unreadable Google cursor; starting a full listing");
        }
        if let Some(c) = decoded {
            if now - c.full_sync_at < FULL_SYNC_MAX_AGE {
                match self
                    .list(Some(&c.sync_token), c.full_sync_at, progress, None)
                    .await?
                {
                    Listing::Done(r) => return Ok(r),
                    Listing::Expired => {}
                }
            } else {
                info!(
                    full_sync_at = %c.full_sync_at,
                    "Google sync token chain is about to expire; starting a full listing"
                );
            }
        }
        match self.list(None, now, progress, None).await? {
            Listing::Done(r) => Ok(r),
            Listing::Expired => Err(ProviderError::Permanent(
                "Google reported an expired sync token on a full listing.".into(),
            )),
        }
    }

    /// [`Provider::fetch_pages`](crate::providers::Provider::fetch_pages): a full listing
    /// is handed on page by page as it arrives; an incremental round is fetched whole and
    /// handed on as one page (an expired token would restart it as a full listing after
    /// pages were handed on).
    pub(super) async fn stream_round(
        &self,
        cursor: Option<&[u8]>,
        progress: &ProgressFn,
        sink: PageSink,
    ) -> Result<Round, ProviderError> {
        if cursor.is_some() {
            let round = self.round(cursor, progress).await?;
            return crate::providers::send_whole(round, &sink).await;
        }
        match self.list(None, Utc::now(), progress, Some(&sink)).await? {
            Listing::Done(r) => Ok(r),
            Listing::Expired => Err(ProviderError::Permanent(
                "Google reported an expired sync token on a full listing.".into(),
            )),
        }
    }

    /// A contact's photo: `None` when it is missing (404), refused, empty or over
    /// [`MAX_PHOTO_BYTES`], or its URL is neither on Google's photo hosts nor on the API's
    /// origin (SPEC §8). The token goes only to the API's origin.
    pub(super) async fn photo(&self, url: &str) -> Result<Option<Jpeg>, ProviderError> {
        let Some(u) = url::Url::parse(url).ok().filter(|u| self.t.may_send(u)) else {
            warn!("Photo URL is not on Google's photo hosts or the API host; not fetched");
            return Ok(None);
        };
        match self.t.execute(&Request::get(u, MAX_PHOTO_BYTES)).await {
            Ok(r) if r.status.is_success() => Ok(Some(r.body).filter(|b| !b.is_empty())),
            Ok(r) if r.status == StatusCode::NOT_FOUND => Ok(None),
            Ok(r) => {
                warn!(status = %r.status, "Photo fetch refused; contact kept without photo");
                Ok(None)
            }
            Err(e) if is_oversize(&e) => {
                warn!("Photo larger than the cap; skipped");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/{resourceName}` with the sync's person fields (so the CONTACT source etag
    /// comes along), one person at a time: used only after a refused update. A person that
    /// is gone (404) is left out.
    pub(super) async fn get_people(&self, ids: &[String]) -> Result<Vec<Change>, ProviderError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(name) = id.strip_prefix("people/").filter(|n| {
                !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            }) else {
                continue;
            };
            let path = format!("/v1/people/{name}");
            match self
                .call::<PersonJson>(
                    Method::GET,
                    &path,
                    &[("personFields", PERSON_FIELDS)],
                    None,
                    CallKind::Read,
                )
                .await
            {
                Ok(p) if p.resource_name.is_empty() => {}
                Ok(p) => out.push(map_person(&p, self.group)),
                Err(CallError::Api { status, .. }) if status == StatusCode::NOT_FOUND => {}
                Err(e) => return Err(e.into_provider()),
            }
        }
        Ok(out)
    }
}
