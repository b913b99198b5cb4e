//! What goes into the executor ([`Auth`], [`Request`]) and what comes out ([`Response`],
//! classified by [`Class`]).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;

use super::super::oauth::TokenSource;
use super::super::ProviderError;

/// How requests are authorised.
pub enum Auth {
    /// HTTP Basic (RFC 7617), the CardDAV app-password scheme. A 401 is a wrong username
    /// or password: [`ProviderError::Permanent`] at once (nothing to refresh).
    Basic {
        username: String,
        password: SecretString,
    },
    /// OAuth 2 bearer tokens from the account's [`TokenSource`]: refreshed before they
    /// expire, and once more after a 401. A second 401 is
    /// [`ProviderError::ReauthRequired`], for every provider.
    Bearer(Arc<TokenSource>),
    /// No credentials.
    None,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Auth::Bearer(_) => f.write_str("Bearer(<token source>)"),
            Auth::None => f.write_str("None"),
        }
    }
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: url::Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Vec<u8>>,
    /// Largest body read; a larger one is a failed request ([`super::is_oversize`]).
    pub cap: usize,
    /// Whether sending the request twice does no harm (reads, etag-guarded updates,
    /// deletes). A request that is not idempotent (a create) is retried only after
    /// failures that cannot have reached the server: a 429, or no connection at all. True
    /// unless [`Request::not_idempotent`] says otherwise: the caller knows whether its POST
    /// creates (not idempotent) or reads or writes under an etag (idempotent).
    pub idempotent: bool,
    /// Units of the account's request budget this request spends (a `$batch` of n parts
    /// costs n); 1 by default.
    pub cost: u32,
    /// Overrides the policy's per-request timeout.
    pub timeout: Option<Duration>,
}

impl Request {
    pub fn new(method: Method, url: url::Url, cap: usize) -> Self {
        Request {
            idempotent: true,
            method,
            url,
            headers: vec![],
            body: None,
            cap,
            cost: 1,
            timeout: None,
        }
    }

    /// A GET of `url`, reading at most `cap` bytes.
    pub fn get(url: url::Url, cap: usize) -> Self {
        Request::new(Method::GET, url, cap)
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// A JSON body, with its `Content-Type`.
    pub fn json(self, v: &serde_json::Value) -> Self {
        self.header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(v).unwrap_or_default())
    }

    /// Appends query parameters (URL-encoded).
    pub fn query(mut self, pairs: &[(&str, &str)]) -> Self {
        if !pairs.is_empty() {
            self.url.query_pairs_mut().extend_pairs(pairs);
        }
        self
    }

    /// Marks the request as idempotent: sending it twice does no harm (see
    /// [`Request::idempotent`]).
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Marks the request as not idempotent (see [`Request::idempotent`]).
    pub fn not_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }

    pub fn cost(mut self, units: u32) -> Self {
        self.cost = units.max(1);
        self
    }

    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
}

/// The final answer to a request.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// How this answer's status classifies ([`classify`]).
    pub fn class(&self) -> Class {
        classify(self.status)
    }

    /// This answer as the error of its class, with `message`.
    pub fn into_error(&self, message: String) -> ProviderError {
        self.class()
            .into_error(message, super::super::http::retry_after(&self.headers))
    }
}

/// What an HTTP status means for the sync, the same for every provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx (and the 1xx/3xx a client that follows no redirects may see).
    Success,
    /// Worth retrying later: 408, 5xx.
    Transient,
    /// 429: the provider asks us to slow down.
    Throttled,
    /// 401: the credentials were refused (after a refresh, where there is one).
    Reauth,
    /// 404, 410: the thing asked for is not there (any more). What that means is the
    /// caller's business (an expired cursor, a deleted contact); as an error it is
    /// permanent.
    Gone,
    /// Anything else (400, 403, 409, 412, …): retrying will not help.
    Permanent,
}

/// Classifies a status.
pub fn classify(status: StatusCode) -> Class {
    match status.as_u16() {
        s if s < 400 => Class::Success,
        401 => Class::Reauth,
        404 | 410 => Class::Gone,
        429 => Class::Throttled,
        408 | 500..=599 => Class::Transient,
        _ => Class::Permanent,
    }
}

impl Class {
    /// The [`ProviderError`] of this class. [`Class::Gone`] (and [`Class::Success`], which
    /// is no error) become [`ProviderError::Permanent`].
    pub fn into_error(self, message: String, retry_after: Option<Duration>) -> ProviderError {
        match self {
            Class::Transient => ProviderError::Transient(message),
            Class::Throttled => ProviderError::Throttled { retry_after },
            Class::Reauth => ProviderError::ReauthRequired(message),
            Class::Gone | Class::Permanent | Class::Success => ProviderError::Permanent(message),
        }
    }
}
