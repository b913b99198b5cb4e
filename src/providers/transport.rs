//! The authorised-request executor a provider client sends every request through.
//!
//! One place decides, for every provider request: which origins may receive the account's
//! credentials (the configured server, plus hosts discovery explicitly admits, https only
//! except loopback http for tests), how the request is authorised, how throttling and
//! server failures are retried ([`super::http`]: `Retry-After`, capped full-jitter
//! backoff, a bounded number of attempts), and how much of a body is read. What comes back
//! is the final status, headers and (capped) body; interpreting a status is the client's
//! business, except 401, which always means the credentials were refused.
//!
//! CardDAV uses it with HTTP Basic. It is written so that the OAuth clients can move onto
//! it later by adding an [`Auth`] variant that fetches a bearer token.

use std::collections::HashSet;
use std::sync::Mutex;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};

use super::http::{read_capped, retry_after, retryable_status, transport_error, RetryPolicy};
use super::ProviderError;

/// How requests are authorised.
pub enum Auth {
    /// HTTP Basic (RFC 7617), the CardDAV app-password scheme.
    Basic {
        username: String,
        password: SecretString,
    },
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
    /// Largest body read; a larger one is a failed request.
    pub cap: usize,
}

impl Request {
    pub fn new(method: Method, url: url::Url, cap: usize) -> Self {
        Request {
            method,
            url,
            headers: vec![],
            body: None,
            cap,
        }
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
}

/// `(scheme, host, port)` of a URL.
type Origin = (String, String, u16);

fn origin_of(u: &url::Url) -> Option<Origin> {
    Some((
        u.scheme().to_string(),
        u.host_str()?.to_ascii_lowercase(),
        u.port_or_known_default()?,
    ))
}

/// Sends requests for one account.
pub struct Transport {
    http: reqwest::Client,
    auth: Auth,
    retry: RetryPolicy,
    origins: Mutex<HashSet<Origin>>,
}

impl Transport {
    /// A transport whose credentials go only to `origin`'s scheme, host and port (and to
    /// origins later admitted with [`Transport::admit`]). Redirects are never followed:
    /// callers that expect one (CardDAV's well-known URI) follow it by hand.
    pub fn new(origin: &url::Url, auth: Auth, retry: RetryPolicy) -> Result<Self, ProviderError> {
        let t = Transport {
            http: super::http::client(retry.request_timeout),
            auth,
            retry,
            origins: Mutex::new(HashSet::new()),
        };
        t.admit(origin)?;
        Ok(t)
    }

    /// Admits another origin (a CardDAV home set on another host, as iCloud's is). Only
    /// https, or http to a loopback address.
    pub fn admit(&self, u: &url::Url) -> Result<(), ProviderError> {
        let secure =
            u.scheme() == "https" || (u.scheme() == "http" && crate::config::is_loopback(u));
        let origin = origin_of(u).filter(|_| secure).ok_or_else(|| {
            ProviderError::Permanent(format!(
                "Refusing to send credentials to {}: only https (or http to a loopback address) is allowed.",
                redact(u)
            ))
        })?;
        if let Ok(mut o) = self.origins.lock() {
            o.insert(origin);
        }
        Ok(())
    }

    /// Whether `u` is on an admitted origin.
    pub fn is_admitted(&self, u: &url::Url) -> bool {
        origin_of(u).is_some_and(|o| self.origins.lock().is_ok_and(|s| s.contains(&o)))
    }

    /// Sends `req`, retrying throttling and server failures; returns the final answer,
    /// whatever its status, except that a 401 is an error.
    pub async fn execute(&self, req: &Request) -> Result<Response, ProviderError> {
        if !self.is_admitted(&req.url) {
            return Err(ProviderError::Permanent(format!(
                "Refusing to send a request to {}: not the configured server.",
                redact(&req.url)
            )));
        }
        let mut attempt = 0;
        loop {
            let mut b = self.http.request(req.method.clone(), req.url.clone());
            for (k, v) in &req.headers {
                b = b.header(k, v);
            }
            if let Auth::Basic { username, password } = &self.auth {
                b = b.basic_auth(username, Some(password.expose_secret()));
            }
            if let Some(body) = &req.body {
                b = b.body(body.clone());
            }
            let last = attempt + 1 >= self.retry.max_attempts;
            let resp = match b.send().await {
                Ok(r) => r,
                Err(e) if !last => {
                    tracing::debug!(error = %transport_error(&e), attempt, "Request failed; retrying.");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(transport_error(&e)),
            };
            let status = resp.status();
            if retryable_status(status) {
                let wait = retry_after(resp.headers());
                if last || wait.is_some_and(|w| w > self.retry.max_retry_after) {
                    return Err(if status == StatusCode::TOO_MANY_REQUESTS {
                        ProviderError::Throttled { retry_after: wait }
                    } else {
                        ProviderError::Transient(format!(
                            "The server answered HTTP {status} to {} {}.",
                            req.method,
                            redact(&req.url)
                        ))
                    });
                }
                tracing::debug!(
                    status = status.as_u16(),
                    attempt,
                    "Server busy or failing; retrying."
                );
                tokio::time::sleep(wait.unwrap_or_else(|| self.retry.backoff(attempt))).await;
                attempt += 1;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED {
                return Err(ProviderError::Permanent(
                    "The server rejected the username or password (HTTP 401); check the account's username and password_file."
                        .into(),
                ));
            }
            let headers = resp.headers().clone();
            let body = read_capped(resp, req.cap).await?.ok_or_else(|| {
                ProviderError::Transient(format!(
                    "The answer to {} {} is {OVERSIZE} {} bytes.",
                    req.method,
                    redact(&req.url),
                    req.cap
                ))
            })?;
            return Ok(Response {
                status,
                headers,
                body,
            });
        }
    }
}

const OVERSIZE: &str = "larger than the limit of";

/// Whether a request failed only because its answer was larger than [`Request::cap`]
/// (the caller may ask for less).
pub fn is_oversize(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Transient(m) if m.contains(OVERSIZE))
}

/// A URL without user info or query, for messages.
pub fn redact(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn transport_sends_credentials_only_to_admitted_origins() {
        let t = Transport::new(
            &url("https://dav.example.com/remote.php/dav"),
            Auth::None,
            RetryPolicy::fast(),
        )
        .unwrap();
        assert!(t.is_admitted(&url("https://dav.example.com/other/path")));
        assert!(!t.is_admitted(&url("https://evil.example.net/")));
        assert!(!t.is_admitted(&url("http://dav.example.com/")));
        assert!(t.admit(&url("http://p01-contacts.example.com/")).is_err());
        assert!(t.admit(&url("http://127.0.0.1:5232/")).is_ok());
        assert!(t.admit(&url("https://p01-contacts.example.com/")).is_ok());
        assert!(t.is_admitted(&url("https://p01-contacts.example.com:443/x")));
    }

    #[test]
    fn auth_debug_redacts_the_password() {
        let a = Auth::Basic {
            username: "ops".into(),
            password: SecretString::from("hunter2".to_string()),
        };
        let s = format!("{a:?}");
        assert!(s.contains("ops") && !s.contains("hunter2"));
    }
}
