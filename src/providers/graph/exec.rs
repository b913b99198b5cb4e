//! Sending one request: auth, the mailbox's budget and in-flight limit, retries, the body
//! cap, and Graph's error answers.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::time::Instant;

use super::wire::{error_codes, parse_page, Page, PREFER};
use super::GraphClient;
use crate::providers::http::{read_capped, retry_after, retryable_status, transport_error};
use crate::providers::ProviderError;

/// Largest JSON response we read (a 200-contact page is far below this).
const MAX_JSON_BYTES: usize = crate::providers::MAX_PAGE_BYTES;

/// A non-success answer that retrying does not fix, with the Graph error codes it carried.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    /// `error.code` and every nested `code`, as sent.
    pub codes: Vec<String>,
}

impl ApiError {
    pub fn has_code(&self, code: &str) -> bool {
        self.codes.iter().any(|c| c.eq_ignore_ascii_case(code))
    }
    pub fn sync_state_lost(&self) -> bool {
        self.status == StatusCode::GONE
            || self.has_code("SyncStateNotFound")
            || self.has_code("resyncRequired")
    }
    pub fn item_not_found(&self) -> bool {
        self.status == StatusCode::NOT_FOUND
            && (self.has_code("ErrorItemNotFound") || self.has_code("itemNotFound"))
    }
    pub fn describe(&self) -> String {
        match self.codes.first() {
            Some(c) => format!("HTTP {} ({c})", self.status.as_u16()),
            None => format!("HTTP {}", self.status.as_u16()),
        }
    }
    pub fn into_provider_error(self, what: &str) -> ProviderError {
        let msg = format!("Microsoft Graph answered {} to {what}.", self.describe());
        if self.status == StatusCode::UNAUTHORIZED {
            ProviderError::ReauthRequired(msg)
        } else if self.status.is_server_error() || self.status == StatusCode::REQUEST_TIMEOUT {
            ProviderError::Transient(msg)
        } else {
            ProviderError::Permanent(msg)
        }
    }
}

/// What one call produced.
pub(crate) enum Reply<T> {
    Ok(T),
    /// The body exceeded the cap given to the call.
    TooBig,
    Api(ApiError),
}

pub(crate) struct Call<'a> {
    pub method: Method,
    pub url: &'a str,
    pub body: Option<&'a Value>,
    pub if_match: Option<&'a str>,
    pub cap: usize,
    /// Requests this call counts against the mailbox's budget (a `$batch`: its parts).
    pub cost: u32,
    /// Whether the request may be sent again after a failure that may have reached the
    /// service (a timeout, a 5xx). A `$batch` with creates may not: only 429 and failures to
    /// connect are retried for it.
    pub idempotent: bool,
}

impl<'a> Call<'a> {
    pub fn get(url: &'a str) -> Self {
        Call {
            method: Method::GET,
            url,
            body: None,
            if_match: None,
            cap: MAX_JSON_BYTES,
            cost: 1,
            idempotent: true,
        }
    }
}

impl GraphClient {
    /// Links from the service must point at the API we talk to: the bearer token goes with
    /// them.
    pub(super) fn check_link(&self, link: &str) -> Result<(), ProviderError> {
        let origin = |s: &str| url::Url::parse(s).ok().map(|u| u.origin());
        match (origin(link), origin(&self.api_base)) {
            (Some(a), Some(b)) if a == b => Ok(()),
            _ => Err(ProviderError::Permanent(
                "Microsoft Graph sent a paging link to another host; refusing to follow it.".into(),
            )),
        }
    }

    pub(super) async fn wait_for_pause(&self) {
        let until = *self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = until {
            if t > Instant::now() {
                tokio::time::sleep_until(t).await;
            }
        }
    }

    pub(super) fn pause_for(&self, d: Duration) {
        let t = Instant::now() + d;
        let mut g = self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none_or(|old| old < t) {
            *g = Some(t);
        }
    }

    /// Sends one request with auth, retries and the in-flight limit, reads the body (at most
    /// `call.cap` bytes) and hands a success body to `parse`. A parse failure counts as a
    /// failed attempt, like a dropped connection.
    pub(super) async fn exec<T>(
        &self,
        call: Call<'_>,
        parse: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<Reply<T>, ProviderError> {
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            let token = self.tokens.access_token().await?;
            self.wait_for_pause().await;
            // The budget first, then a slot: a request waiting for budget holds no slot.
            if let Some(b) = &self.budget {
                let n = std::num::NonZeroU32::new(call.cost.max(1))
                    .unwrap_or(std::num::NonZeroU32::MIN);
                if b.until_n_ready(n).await.is_err() {
                    // More parts than the whole budget: wait for a full bucket instead.
                    b.until_ready().await;
                }
            }
            self.sent.fetch_add(
                u64::from(call.cost.max(1)),
                std::sync::atomic::Ordering::Relaxed,
            );
            let permit = self
                .in_flight
                .acquire()
                .await
                .map_err(|_| ProviderError::Transient("Client shut down.".into()))?;
            let mut req = self
                .http
                .request(call.method.clone(), call.url)
                .bearer_auth(token.expose_secret())
                .header("Prefer", PREFER)
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(b) = call.body {
                req = req.json(b);
            }
            if let Some(e) = call.if_match {
                req = req.header(reqwest::header::IF_MATCH, e);
            }
            let failure: ProviderError;
            let mut wait = None;
            let mut safe_to_retry = call.idempotent;
            match req.send().await {
                Err(e) => {
                    // Nothing reached the service when the connection could not be made.
                    safe_to_retry |= e.is_connect();
                    failure = transport_error(&e)
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED && !refreshed {
                        drop(permit);
                        refreshed = true;
                        tracing::debug!("Graph answered 401; refreshing the access token once");
                        self.tokens.invalidate(&token).await;
                        continue;
                    }
                    if status.is_success() {
                        if resp.content_length().is_some_and(|n| n > call.cap as u64) {
                            return Ok(Reply::TooBig);
                        }
                        match read_capped(resp, call.cap).await {
                            Ok(None) => return Ok(Reply::TooBig),
                            Ok(Some(body)) => match parse(&body) {
                                Ok(v) => return Ok(Reply::Ok(v)),
                                Err(e) => {
                                    failure = ProviderError::Transient(format!(
                                        "Microsoft Graph sent a malformed response: {e}."
                                    ))
                                }
                            },
                            Err(e) => failure = e,
                        }
                    } else if retryable_status(status) {
                        // A throttled request was not carried out.
                        safe_to_retry |= status == StatusCode::TOO_MANY_REQUESTS;
                        let ra = retry_after(resp.headers());
                        if let Some(ra) = ra {
                            if ra > self.retry.max_retry_after {
                                return Err(if status == StatusCode::TOO_MANY_REQUESTS {
                                    ProviderError::Throttled {
                                        retry_after: Some(ra),
                                    }
                                } else {
                                    ProviderError::Transient(format!(
                                        "Microsoft Graph is unavailable (HTTP {}); retry after {ra:?}.",
                                        status.as_u16()
                                    ))
                                });
                            }
                            self.pause_for(ra);
                            wait = Some(ra);
                        }
                        failure = if status == StatusCode::TOO_MANY_REQUESTS {
                            ProviderError::Throttled { retry_after: ra }
                        } else {
                            ProviderError::Transient(format!(
                                "Microsoft Graph kept failing (HTTP {}).",
                                status.as_u16()
                            ))
                        };
                    } else {
                        let body = read_capped(resp, crate::providers::MAX_ERROR_BYTES)
                            .await
                            .ok()
                            .flatten()
                            .unwrap_or_default();
                        return Ok(Reply::Api(ApiError {
                            status,
                            codes: error_codes(&body),
                        }));
                    }
                }
            }
            drop(permit);
            attempt += 1;
            if attempt >= self.retry.max_attempts || !safe_to_retry {
                return Err(failure);
            }
            let wait = wait.unwrap_or_else(|| self.retry.backoff(attempt - 1));
            tracing::debug!(attempt, ?wait, error = %failure, "retrying a Graph request");
            tokio::time::sleep(wait).await;
        }
    }

    pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<Result<T, ApiError>, ProviderError> {
        match self
            .exec(Call::get(url), |b| {
                serde_json::from_slice::<T>(b).map_err(|e| e.to_string())
            })
            .await?
        {
            Reply::Ok(v) => Ok(Ok(v)),
            Reply::Api(e) => Ok(Err(e)),
            Reply::TooBig => Err(ProviderError::Transient(
                "Microsoft Graph sent an oversized response.".into(),
            )),
        }
    }

    /// GETs a listing page; a page must end in a next link or a delta link.
    pub(super) async fn get_page(
        &self,
        url: &str,
        delta: bool,
    ) -> Result<Result<Page, ApiError>, ProviderError> {
        let parsed = self.exec(Call::get(url), |b| parse_page(b, delta)).await?;
        match parsed {
            Reply::Ok(p) => {
                for l in p.next_link.iter().chain(p.delta_link.iter()) {
                    self.check_link(l)?;
                }
                Ok(Ok(p))
            }
            Reply::Api(e) => Ok(Err(e)),
            Reply::TooBig => Err(ProviderError::Transient(
                "Microsoft Graph sent an oversized page.".into(),
            )),
        }
    }
}
