//! The authorised-request executor every provider client sends its requests through.
//!
//! One place decides, for every request of an account:
//! - **where credentials may go**: the configured API origin, plus origins admitted later
//!   (a CardDAV home set on another host); https only, except http to loopback for tests.
//!   A paging link from the service is followed only on an admitted origin
//!   ([`Transport::check_link`]). Hosts of [`Transport::with_public_hosts`] (Google's photo
//!   CDN) are fetched without credentials; anything else is refused before it is sent;
//! - **how it is authorised** ([`Auth`]): HTTP Basic, or OAuth bearer tokens refreshed
//!   before they expire and once after a 401; a second 401 is
//!   [`ProviderError::ReauthRequired`] for every provider;
//! - **what is retried**: 429, 500, 502, 503, 504 and connection failures, and a 2xx whose
//!   body the caller cannot read (cut off, malformed), with `Retry-After` honoured (seconds
//!   or an HTTP date) and capped full-jitter backoff otherwise ([`super::http`]), at most
//!   [`RetryPolicy::max_attempts`] times. A request that is not idempotent is retried only
//!   when the server cannot have carried it out (429, no connection). A `Retry-After`
//!   longer than [`RetryPolicy::max_retry_after`] ends the call at once;
//! - **throttling of the whole account**: a `Retry-After` on a 429 or 5xx pauses every
//!   request of the account (not only the one that was refused) until it has passed; an
//!   optional limit on requests in flight ([`Transport::with_concurrency`]) and an optional
//!   request budget ([`Transport::with_budget`]) hold requests back before they are sent;
//! - **timeouts and body caps**: every request has a timeout (the policy's, or
//!   [`Request::timeout`]), and no body is read past [`Request::cap`] (error bodies past
//!   [`ERROR_CAP`]);
//! - **what an answer means** ([`Class`], [`classify`]): transient, throttled, reauth,
//!   gone or permanent, mapped to one [`ProviderError`].
//!
//! What comes back is the final answer: [`Transport::execute`] returns it whatever its
//! status; [`Transport::fetch`] hands a 2xx body to the caller's parser (a parse failure is
//! a failed attempt, retried like a dropped connection) and returns any other answer as
//! `Err(Response)` for the caller to interpret (Google's expired sync token, a stale etag).

mod request;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub use request::{classify, Auth, Class, Request, Response};

use super::http::{read_capped, retry_after, retryable_status, transport_error, RetryPolicy};
use super::ProviderError;

/// Largest error body read (only to classify the error); a larger one reads as empty.
pub const ERROR_CAP: usize = super::MAX_ERROR_BYTES;

/// A request budget: a token bucket (GCRA) of requests per period.
pub type Budget = governor::DefaultDirectRateLimiter;

/// A budget of `budget` requests refilled evenly over `window`, full at start; `None` when
/// either is zero.
///
/// The bucket holds a tenth less than `budget`: requests reach the service a little later
/// than they leave, and an uneven delay could otherwise make one of them arrive before the
/// service's own bucket has refilled. The tenth held back is that tolerance.
pub fn request_budget(budget: u32, window: Duration) -> Option<Budget> {
    let period = window.checked_div(budget)?;
    let burst = std::num::NonZeroU32::new((budget - budget / 10).max(1))?;
    let quota = governor::Quota::with_period(period)?.allow_burst(burst);
    Some(governor::RateLimiter::direct(quota))
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

/// Sends requests for one account. Its `Debug` shows no secret ([`Auth`] redacts them).
#[derive(Debug)]
pub struct Transport {
    http: reqwest::Client,
    auth: Auth,
    retry: RetryPolicy,
    /// Names the service in messages ("Google People API").
    service: String,
    origins: Mutex<HashSet<Origin>>,
    public_hosts: Vec<String>,
    in_flight: Option<Semaphore>,
    budget: Option<Budget>,
    /// No request is sent before this instant (a `Retry-After` holds for the account).
    pause_until: Mutex<Option<Instant>>,
    sent: AtomicU64,
}

/// Why one attempt failed, and whether it may be made again.
struct Failure {
    error: ProviderError,
    /// Whether sending again cannot apply a write twice.
    safe: bool,
    wait: Option<Duration>,
}

impl Transport {
    /// A transport whose credentials go only to `origin`'s scheme, host and port (and to
    /// origins later admitted with [`Transport::admit`]). Redirects are never followed:
    /// callers that expect one (CardDAV's well-known URI) follow it by hand.
    pub fn new(origin: &url::Url, auth: Auth, retry: RetryPolicy) -> Result<Self, ProviderError> {
        let t = Transport::without_origin(auth, retry);
        t.admit(origin)?;
        Ok(t)
    }

    /// A transport that admits no origin yet: until [`Transport::admit`] admits one, every
    /// request is refused ([`ProviderError::Permanent`]) without being sent.
    pub fn without_origin(auth: Auth, retry: RetryPolicy) -> Self {
        Transport {
            http: super::http::client(retry.request_timeout),
            auth,
            retry,
            service: "The server".into(),
            origins: Mutex::new(HashSet::new()),
            public_hosts: vec![],
            in_flight: None,
            budget: None,
            pause_until: Mutex::new(None),
            sent: AtomicU64::new(0),
        }
    }

    /// Names the service in error messages ("Google People API").
    pub fn with_service(mut self, name: &str) -> Self {
        self.service = name.to_string();
        self
    }

    /// Hosts (a domain and its subdomains, https on the default port, no user info) that
    /// requests may go to WITHOUT credentials: a provider's photo CDN.
    pub fn with_public_hosts(mut self, hosts: &[&str]) -> Self {
        self.public_hosts = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        self
    }

    /// At most `n` requests of the account in flight at once (`0`: no limit).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.in_flight = (n > 0).then(|| Semaphore::new(n));
        self
    }

    /// The account's request budget ([`request_budget`]); `None` turns it off.
    pub fn with_budget(mut self, budget: Option<Budget>) -> Self {
        self.budget = budget;
        self
    }

    /// The retry policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Requests sent so far: every attempt, each counted at its [`Request::cost`].
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
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

    /// Whether `u` is on an admitted origin (where credentials may go).
    pub fn is_admitted(&self, u: &url::Url) -> bool {
        u.username().is_empty()
            && u.password().is_none()
            && origin_of(u).is_some_and(|o| self.origins.lock().is_ok_and(|s| s.contains(&o)))
    }

    /// Whether `u` is on one of the public hosts ([`Transport::with_public_hosts`]).
    pub fn is_public(&self, u: &url::Url) -> bool {
        if !u.username().is_empty() || u.password().is_some() {
            return false;
        }
        let Some(url::Host::Domain(host)) = u.host() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        u.scheme() == "https"
            && u.port().is_none()
            && self
                .public_hosts
                .iter()
                .any(|h| host == *h || host.ends_with(&format!(".{h}")))
    }

    /// Whether a request to `u` would be sent at all (admitted or public).
    pub fn may_send(&self, u: &url::Url) -> bool {
        self.is_admitted(u) || self.is_public(u)
    }

    /// A paging link (next link, delta link) from the service, parsed, when it points at
    /// an admitted origin: the credentials go with it.
    pub fn check_link(&self, link: &str) -> Result<url::Url, ProviderError> {
        url::Url::parse(link)
            .ok()
            .filter(|u| self.is_admitted(u))
            .ok_or_else(|| {
                ProviderError::Permanent(format!(
                    "{} sent a paging link to another host; refusing to follow it.",
                    self.service
                ))
            })
    }

    /// Holds every request of the account back for `d` (a `Retry-After` the service sent
    /// outside a plain answer, such as in a part of a batch).
    pub fn pause_for(&self, d: Duration) {
        let t = Instant::now() + d;
        let mut g = self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none_or(|old| old < t) {
            *g = Some(t);
        }
    }

    async fn wait_for_pause(&self) {
        let until = *self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = until {
            if t > Instant::now() {
                tokio::time::sleep_until(t).await;
            }
        }
    }

    /// Sends `req` with retries; returns the final answer whatever its status, except that
    /// a refused credential (401) is an error (see [`Auth`]).
    pub async fn execute(&self, req: &Request) -> Result<Response, ProviderError> {
        self.run(req, |_| Ok(())).await.map(|(r, _)| r)
    }

    /// Sends `req` with retries and hands a 2xx body to `parse`: `Ok(Ok(value))`. A parse
    /// failure counts as a failed attempt (retried when the request is idempotent). Any
    /// other final answer is `Ok(Err(response))`, its body capped at [`ERROR_CAP`].
    pub async fn fetch<T>(
        &self,
        req: &Request,
        parse: impl Fn(&Response) -> Result<T, String>,
    ) -> Result<Result<T, Response>, ProviderError> {
        match self.run(req, parse).await? {
            (_, Some(v)) => Ok(Ok(v)),
            (r, None) => Ok(Err(r)),
        }
    }

    async fn run<T>(
        &self,
        req: &Request,
        parse: impl Fn(&Response) -> Result<T, String>,
    ) -> Result<(Response, Option<T>), ProviderError> {
        let credentials = self.is_admitted(&req.url);
        if !credentials && !self.is_public(&req.url) {
            return Err(ProviderError::Permanent(format!(
                "Refusing to send a request to {}: not the configured server.",
                redact(&req.url)
            )));
        }
        let mut attempt: u32 = 0;
        let mut refreshed = false;
        loop {
            self.wait_for_pause().await;
            // The budget first, then a slot: a request waiting for budget holds no slot.
            if let Some(b) = &self.budget {
                let n =
                    std::num::NonZeroU32::new(req.cost.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
                if b.until_n_ready(n).await.is_err() {
                    // More than the whole budget: wait for a full bucket instead.
                    b.until_ready().await;
                }
            }
            // The token before a slot: a refresh does not hold one of the account's slots.
            let token = match (&self.auth, credentials) {
                (Auth::Bearer(tokens), true) => Some(tokens.access_token().await?),
                _ => None,
            };
            let _permit = match &self.in_flight {
                Some(s) => Some(
                    s.acquire()
                        .await
                        .map_err(|_| ProviderError::Transient("Client shut down.".into()))?,
                ),
                None => None,
            };
            self.sent
                .fetch_add(u64::from(req.cost.max(1)), Ordering::Relaxed);
            let failure = match self.attempt(req, token.as_ref(), credentials).await {
                Attempt::Answer(resp) => {
                    if !resp.status.is_success() {
                        return Ok((resp, None));
                    }
                    match parse(&resp) {
                        Ok(v) => return Ok((resp, Some(v))),
                        Err(e) => Failure {
                            error: ProviderError::Transient(format!(
                                "{} sent an unreadable answer to {} {} ({} bytes): {e}.",
                                self.service,
                                req.method,
                                redact(&req.url),
                                resp.body.len()
                            )),
                            safe: req.idempotent,
                            wait: None,
                        },
                    }
                }
                Attempt::Unauthorized => match (&self.auth, &token) {
                    (Auth::Bearer(tokens), Some(t)) if !refreshed => {
                        tracing::debug!("HTTP 401; refreshing the access token once");
                        refreshed = true;
                        tokens.invalidate(t).await;
                        continue;
                    }
                    (Auth::Bearer(_), _) => {
                        return Err(ProviderError::ReauthRequired(format!(
                            "{} rejected a freshly refreshed access token for {} {} (HTTP 401)",
                            self.service,
                            req.method,
                            redact(&req.url)
                        )))
                    }
                    _ => {
                        return Err(ProviderError::Permanent(
                            "The server rejected the username or password (HTTP 401); check the account's username and password_file."
                                .into(),
                        ))
                    }
                },
                Attempt::Failed(f) => f,
                Attempt::Final(e) => return Err(e),
            };
            attempt += 1;
            if attempt >= self.retry.max_attempts || !failure.safe {
                return Err(failure.error);
            }
            let delay = failure
                .wait
                .unwrap_or_else(|| self.retry.backoff(attempt - 1));
            tracing::debug!(attempt, ?delay, error = %failure.error, "Request failed; retrying");
            drop(_permit);
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt.
    async fn attempt(
        &self,
        req: &Request,
        token: Option<&SecretString>,
        credentials: bool,
    ) -> Attempt {
        let mut b = self.http.request(req.method.clone(), req.url.clone());
        for (k, v) in &req.headers {
            b = b.header(k, v);
        }
        if credentials {
            match (&self.auth, token) {
                (Auth::Basic { username, password }, _) => {
                    b = b.basic_auth(username, Some(password.expose_secret()));
                }
                (Auth::Bearer(_), Some(t)) => b = b.bearer_auth(t.expose_secret()),
                _ => {}
            }
        }
        if let Some(body) = &req.body {
            b = b.body(body.clone());
        }
        if let Some(t) = req.timeout {
            b = b.timeout(t);
        }
        let resp = match b.send().await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Failed(Failure {
                    error: transport_error(&e),
                    // Nothing reached the service when no connection was made.
                    safe: req.idempotent || e.is_connect(),
                    wait: None,
                });
            }
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED && credentials && !matches!(self.auth, Auth::None) {
            return Attempt::Unauthorized;
        }
        if retryable_status(status) {
            let wait = retry_after(resp.headers());
            let throttled = status == StatusCode::TOO_MANY_REQUESTS;
            let error = if throttled {
                ProviderError::Throttled { retry_after: wait }
            } else {
                ProviderError::Transient(format!(
                    "{} answered HTTP {status} to {} {}.",
                    self.service,
                    req.method,
                    redact(&req.url)
                ))
            };
            if let Some(w) = wait {
                if w > self.retry.max_retry_after {
                    return Attempt::Final(error);
                }
                // The service asked the account to wait: every request waits.
                self.pause_for(w);
            }
            return Attempt::Failed(Failure {
                error,
                // A 429 was not carried out; a 5xx may have been.
                safe: req.idempotent || throttled,
                wait,
            });
        }
        let headers = resp.headers().clone();
        if !status.is_success() {
            let body = read_capped(resp, req.cap.min(ERROR_CAP))
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            return Attempt::Answer(Response {
                status,
                headers,
                body,
            });
        }
        match read_capped(resp, req.cap).await {
            Ok(Some(body)) => Attempt::Answer(Response {
                status,
                headers,
                body,
            }),
            // Not retried: the same request gets the same oversized answer.
            Ok(None) => Attempt::Final(ProviderError::Transient(format!(
                "{} sent an answer to {} {} larger than {}{OVERSIZE}; it was not read.",
                self.service,
                req.method,
                redact(&req.url),
                size(req.cap)
            ))),
            // Cut off mid-way: a failed attempt.
            Err(error) => Attempt::Failed(Failure {
                error,
                safe: req.idempotent,
                wait: None,
            }),
        }
    }
}

enum Attempt {
    Answer(Response),
    Unauthorized,
    Failed(Failure),
    Final(ProviderError),
}

const OVERSIZE: &str = ", the size limit";

/// `64 MiB`, `512 KiB`, `1000 bytes`.
fn size(n: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if n >= MIB && n % MIB == 0 {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n % KIB == 0 {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

/// Whether a request failed only because its answer was larger than [`Request::cap`]
/// (the caller may ask for less, or skip the item).
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
mod tests;
