//! Sending requests politely: a timeout on every request, `Retry-After` honoured (whole or
//! fractional seconds, or an HTTP date), exponential backoff with full jitter on 429, 500,
//! 502, 503 and 504 and on connection failures, and a bounded number of attempts.

use std::time::Duration;

use rand::Rng;

use super::ProviderError;

/// Retry policy of a client.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
    /// The longest `Retry-After` we wait for inside one call; longer ones end the round.
    pub max_retry_after: Duration,
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Fast retries for tests against the simulator.
    pub fn fast() -> Self {
        RetryPolicy {
            max_attempts: 12,
            base: Duration::from_millis(5),
            cap: Duration::from_millis(100),
            max_retry_after: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// Full-jitter backoff for attempt `n` (0-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let ceiling = exp.min(self.cap);
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
    }
}

/// Parses `Retry-After`: delta seconds (Graph sends fractions too) or an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(86_400.0)));
        }
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// Whether a status is worth retrying.
pub fn retryable_status(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// Classifies a reqwest transport error.
pub fn transport_error(e: &reqwest::Error) -> ProviderError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "response body was cut off or malformed"
    } else {
        "failed"
    };
    ProviderError::Transient(format!("Request {what}: {}.", without_url(e)))
}

fn without_url(e: &reqwest::Error) -> String {
    // URLs can carry tokens (Graph delta links); keep them out of messages and logs.
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<url>");
    }
    s
}

/// Reads a response body incrementally, `Ok(None)` as soon as it grows past `cap` bytes
/// (the rest is not read), so a huge or endless body cannot exhaust memory.
pub async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<Option<Vec<u8>>, ProviderError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Ok(None);
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
        if buf.len() + chunk.len() > cap {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf))
}

/// Google's photo hosts (`lh3.googleusercontent.com` and its siblings), fetched without
/// credentials ([`super::transport::Transport::with_public_hosts`]; SPEC §8).
pub const GOOGLE_PHOTO_HOSTS: &[&str] = &["googleusercontent.com"];

/// A client with the redirect policy OAuth needs and sane timeouts.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("contact-sync/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[test]
    fn retry_after_accepts_whole_fractional_and_date() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy::default();
        for n in 0..40 {
            assert!(p.backoff(n) <= p.cap);
        }
    }
}
