//! Sending one request through the shared executor with Graph's headers, and reading
//! Graph's error answers (the codes that say a delta link expired or an item is gone).

use std::time::Duration;

use reqwest::header::{HeaderName, ACCEPT, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::wire::{error_codes, parse_page, Page, PREFER};
use super::GraphClient;
use crate::providers::http::RetryPolicy;
use crate::providers::transport::{classify, is_oversize, Request};
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
        classify(self.status).into_error(msg, None)
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
        self.t.check_link(link).map(|_| ())
    }

    /// Holds every request of the mailbox back for `d` (a `Retry-After` of a `$batch` part).
    pub(super) fn pause_for(&self, d: Duration) {
        self.t.pause_for(d);
    }

    /// The retry policy in force.
    pub(super) fn retry(&self) -> &RetryPolicy {
        self.t.policy()
    }

    /// Sends one request through the shared executor (auth, retries, `Retry-After`, the
    /// mailbox's in-flight limit and budget) with Graph's headers, reads the body (at most
    /// `call.cap` bytes) and hands a success body to `parse`. A parse failure counts as a
    /// failed attempt, like a dropped connection; any other answer is [`Reply::Api`].
    pub(super) async fn exec<T>(
        &self,
        call: Call<'_>,
        parse: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<Reply<T>, ProviderError> {
        let url = url::Url::parse(call.url)
            .map_err(|e| ProviderError::Permanent(format!("Invalid Microsoft Graph URL: {e}.")))?;
        let mut req = Request::new(call.method.clone(), url, call.cap)
            .header(HeaderName::from_static("prefer"), PREFER)
            .header(ACCEPT, "application/json")
            .cost(call.cost);
        if let Some(b) = call.body {
            req = req.json(b);
        }
        if let Some(e) = call.if_match {
            req = req.header(IF_MATCH, e);
        }
        if !call.idempotent {
            req = req.not_idempotent();
        }
        match self.t.fetch(&req, |r| parse(&r.body)).await {
            Ok(Ok(v)) => Ok(Reply::Ok(v)),
            Ok(Err(resp)) => Ok(Reply::Api(ApiError {
                status: resp.status,
                codes: error_codes(&resp.body),
            })),
            Err(e) if is_oversize(&e) => Ok(Reply::TooBig),
            Err(e) => Err(e),
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
