//! Retries through the shared executor: `Retry-After` (seconds and HTTP dates), server
//! errors, cut-off, malformed and oversized answers, and the account-wide pause.

use std::sync::Arc;
use std::time::{Duration, Instant};

use contact_sync::config::Group;
use contact_sync::providers::http::RetryPolicy;
use contact_sync::providers::{Provider as _, ProviderError, MAX_PAGE_BYTES};
use contact_sync::sim::{Cut, Provider, Script, ScriptBody};
use serde_json::json;

use crate::*;

const LIST: &str = "/v1/people/me/connections";

#[tokio::test]
async fn throttled_429_honours_retry_after_then_succeeds() {
    let (sim, _) = three_page_book().await;
    sim.script(
        Provider::Google,
        Script::on(LIST)
            .times(1)
            .json(
                429,
                google_error(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "Quota exceeded for quota metric 'Read requests'",
                ),
            )
            .header("Retry-After", "0"),
    );
    let gc = client(&sim, Group::All);
    let r = gc
        .fetch_round(None, &no_progress())
        .await
        .expect("after 429");
    assert_eq!(r.changes.len(), 3);
    let reqs = api_requests(&sim);
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].status, 429);
    assert_eq!(fixed_query(&reqs[0]), fixed_query(&reqs[1]));
    assert_eq!(q(&reqs[1], "pageToken"), None);
}

#[tokio::test]
async fn endless_429_ends_as_throttled_and_long_retry_after_is_not_waited() {
    let (sim, _) = three_page_book().await;
    sim.script(
        Provider::Google,
        Script::on(LIST)
            .json(
                429,
                json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}),
            )
            .header("Retry-After", "0"),
    );
    let gc = client(&sim, Group::All);
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Throttled {
            retry_after: Some(Duration::ZERO)
        }
    );
    assert_eq!(
        api_requests(&sim).len(),
        RetryPolicy::fast().max_attempts as usize
    );

    sim.clear_scripts(Provider::Google);
    sim.clear_requests(Provider::Google);
    sim.script(
        Provider::Google,
        Script::on(LIST)
            .json(429, json!({}))
            .header("Retry-After", "3600"),
    );
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Throttled {
            retry_after: Some(Duration::from_secs(3600))
        }
    );
    assert_eq!(api_requests(&sim).len(), 1);
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_waited_for() {
    let (sim, _) = three_page_book().await;
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    sim.script(
        Provider::Google,
        Script::on(LIST)
            .times(1)
            .json(
                503,
                google_error(503, "UNAVAILABLE", "The service is currently unavailable."),
            )
            .header(
                "Retry-After",
                &at.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
            ),
    );
    let gc = client(&sim, Group::All);
    let start = Instant::now();
    let r = gc
        .fetch_round(None, &no_progress())
        .await
        .expect("after 503");
    assert_eq!(r.changes.len(), 3);
    // The date has whole seconds: at least one second is left of the two.
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(api_requests(&sim).len(), 3);
}

#[tokio::test]
async fn a_throttled_request_pauses_every_request_of_the_account() {
    let (sim, book) = three_page_book().await;
    sim.script(
        Provider::Google,
        Script::on(LIST)
            .times(1)
            .json(
                429,
                google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded"),
            )
            .header("Retry-After", "1"),
    );
    let gc = Arc::new(client(&sim, Group::All));
    let start = Instant::now();
    let listing = {
        let gc = gc.clone();
        tokio::spawn(async move { gc.fetch_round(None, &no_progress()).await })
    };
    // Wait until the listing has been throttled, then fetch a photo from the API host.
    while api_requests(&sim).is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let photo = contact_sync::model::ProviderContact {
        provider_id: book[0].clone(),
        etag: None,
        scope: String::new(),
        fields: Default::default(),
        photo_url: Some(format!("{}/photos/{}", sim.google_base, &book[0][7..])),
    };
    let got = gc.fetch_photo(&photo).await.expect("photo");
    assert!(got.is_some());
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "the photo waited for the account's Retry-After: {:?}",
        start.elapsed()
    );
    listing.await.unwrap().expect("listing after the pause");
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let (sim, _) = three_page_book().await;
    sim.script(
        Provider::Google,
        Script::on(LIST).times(1).text(500, "oops"),
    );
    sim.script(
        Provider::Google,
        Script::on(LIST).times(1).json(
            503,
            json!({"error": {"code": 503, "status": "UNAVAILABLE"}}),
        ),
    );
    let gc = client(&sim, Group::All);
    let r = gc
        .fetch_round(None, &no_progress())
        .await
        .expect("after 5xx");
    assert_eq!(r.changes.len(), 3);
}

#[tokio::test]
async fn truncated_or_malformed_page_is_refetched_not_read_as_deletions() {
    let (sim, book) = three_page_book().await;
    let page2 = || Script::on(LIST).with("pageToken").times(1);
    // Cut off by the connection: fewer bytes than Content-Length.
    sim.script(Provider::Google, page2().cut(Cut::Half));
    // Complete HTTP, but the JSON stops half-way.
    sim.script(Provider::Google, page2().body(ScriptBody::OwnHalf));
    // Not JSON at all.
    sim.script(
        Provider::Google,
        page2().text(200, "<html>Bad gateway</html>"),
    );
    let gc = client(&sim, Group::All);
    let r = gc.fetch_round(None, &no_progress()).await.expect("round");
    assert_eq!(ids(&r), book);
    assert_eq!(r.pages, 2);
    let reqs = api_requests(&sim);
    assert_eq!(reqs.len(), 5);
    let token = q(&reqs[1], "pageToken");
    assert!(token.is_some());
    assert!(reqs[1..].iter().all(|r| q(r, "pageToken") == token));
}

#[tokio::test]
async fn oversized_page_is_a_failed_fetch_and_is_not_read() {
    let sim = empty_book().await;
    // Content-Length announces one byte over the cap; only a few bytes follow.
    sim.script(
        Provider::Google,
        Script::on(LIST)
            .status(200)
            .body(ScriptBody::Filler(MAX_PAGE_BYTES + 1))
            .cut(Cut::Bytes(16)),
    );
    let gc = client(&sim, Group::All);
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Transient(m) if m.contains("larger than 64 MiB")),
        "{err:?}"
    );
    // The same request would get the same answer: it is not retried inside the round.
    assert_eq!(api_requests(&sim).len(), 1);
}

#[tokio::test]
async fn persistently_truncated_page_is_a_transient_error() {
    let (sim, _) = three_page_book().await;
    sim.script(
        Provider::Google,
        Script::on(LIST).with("pageToken").cut(Cut::Bytes(10)),
    );
    let gc = client(&sim, Group::All);
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    assert!(err.is_retryable());
}
