//! Request behaviour against the simulator: throttling, cut-off bodies, tokens, photos and
//! the in-flight limit.

use std::time::Duration;

use crate::model::ProviderContact;
use crate::providers::graph::map::photo_url;
use crate::providers::graph::MAX_IN_FLIGHT;
use crate::providers::{Provider as _, ProviderError, MAX_PHOTO_BYTES};
use crate::sim::{Cut, FaultConfig, ScriptBody};

use super::*;

#[tokio::test]
async fn throttled_429_with_fractional_retry_after_is_retried_then_succeeds() {
    let m = mailbox().await;
    m.script(
        Script::on(&format!("{}/contacts/delta", enc(&m.kids)))
            .with("$select")
            .times(1)
            .json(429, json!({"error": {"code": "ApplicationThrottled", "message": "Application is over its MailboxConcurrency limit."}}))
            .header("Retry-After", "0.01"),
    );
    let round = m.round(None).await;
    assert_eq!(upserts(&round).len(), 600);
    let kids_delta = format!("/v1.0/me/contactFolders/{}/contacts/delta", enc(&m.kids));
    assert_eq!(
        m.graph_requests()
            .iter()
            .filter(|r| r.path == kids_delta && !r.query.contains("token"))
            .count(),
        2
    );
}

/// Every Graph request answered 429 with this `Retry-After`.
fn throttle_all(retry_after: &str) -> Script {
    Script::on("/v1.0/")
        .json(
            429,
            json!({"error": {"code": "TooManyRequests", "message": "Please retry again later."}}),
        )
        .header("Retry-After", retry_after)
}

/// The follow-up pages of the default folder's delta (links the simulator wrote).
fn root_follow_up(m: &Mailbox) -> Script {
    Script::on(&format!("{}/contacts/delta", m.root)).with("$skiptoken")
}

#[tokio::test]
async fn throttling_that_never_ends_is_reported_as_throttled() {
    let m = mailbox_with(60).await;
    m.script(throttle_all("0.001"));
    let err = m.failed_round(None).await;
    assert!(matches!(err, ProviderError::Throttled { .. }), "{err:?}");
    // A Retry-After beyond the policy's maximum ends the round at once.
    m.sim.clear_scripts(SimProvider::Outlook);
    m.script(throttle_all("3600"));
    m.sim.clear_requests(SimProvider::Outlook);
    let fresh = m.new_client().fetch_round(None, &no_progress()).await;
    let waited = match fresh {
        Err(ProviderError::Throttled { retry_after }) => retry_after,
        other => panic!("{other:?}"),
    };
    assert_eq!(waited, Some(Duration::from_secs(3600)));
    assert_eq!(m.graph_requests().len(), 1, "not retried");
}

#[tokio::test]
async fn truncated_body_is_retried_and_never_read_as_an_empty_page() {
    let m = mailbox().await;
    m.script(root_follow_up(&m).times(1).cut(Cut::Half));
    let round = m.round(None).await;
    assert_eq!(upserts(&round).len(), 600);
    let root_follow_ups = |m: &Mailbox| {
        m.graph_requests()
            .iter()
            .filter(|r| r.path.contains(bare(&m.root)) && r.query.contains("skiptoken"))
            .count()
    };
    assert_eq!(root_follow_ups(&m), 2);

    // Always cut off: the round fails (Transient), it does not come back empty.
    m.script(root_follow_up(&m).cut(Cut::Half));
    let err = m.failed_round(None).await;
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn unauthorized_401_refreshes_the_token_once_and_retries() {
    let m = mailbox().await;
    // The client holds an access token the service no longer accepts.
    m.tokens.access_token().await.unwrap();
    m.sim.expire_access_tokens();
    let round = m.round(None).await;
    assert_eq!(upserts(&round).len(), 600);
    assert_eq!(m.token_requests().len(), 2);
    let stored = m.stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 2, "each refresh rotated the refresh token");
    assert_eq!(
        m.sim.refresh_token(SimProvider::Outlook, OLGA),
        stored.last().cloned()
    );
    let unauthorized = m
        .graph_requests()
        .iter()
        .filter(|r| r.status == 401)
        .count();
    assert_eq!(unauthorized, 1);
}

#[tokio::test]
async fn unauthorized_twice_in_a_row_needs_reauth() {
    let m = mailbox_with(60).await;
    m.script(Script::on("/v1.0/").json(
        401,
        json!({"error": {"code": "InvalidAuthenticationToken"}}),
    ));
    let err = m.failed_round(None).await;
    assert!(matches!(err, ProviderError::ReauthRequired(_)), "{err:?}");
}

#[tokio::test]
async fn invalid_grant_from_the_token_endpoint_is_reauth_required() {
    let m = mailbox_with(0).await;
    // A refresh token the identity platform does not know: 400 invalid_grant (AADSTS70000).
    m.sim.set_detailed_log(SimProvider::Outlook, true);
    let (client, _, stored) = client_for(&m.sim, "r1");
    let err = client.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::ReauthRequired(_)), "{err:?}");
    assert!(stored.lock().unwrap().is_empty());
    assert!(
        m.graph_requests().is_empty(),
        "no Graph call without a token"
    );
    let first = &m.sim.requests(SimProvider::Outlook)[0];
    assert!(first.path.ends_with("/oauth2/v2.0/token"));
    let form = first.body.as_deref().unwrap_or_default();
    assert!(form.contains("grant_type=refresh_token"), "{form}");
    assert!(form.contains("refresh_token=r1"), "{form}");
    assert_eq!(first.status, 400);
}

fn pc(id: &str) -> ProviderContact {
    ProviderContact {
        provider_id: id.into(),
        etag: None,
        scope: "F".into(),
        fields: Fields::default(),
        photo_url: None,
    }
}

/// Adds a contact with a photo to the default folder; its id.
fn add_with_photo(m: &Mailbox, given: &str) -> String {
    let (status, v) = m.control(
        "POST",
        "/contacts",
        Some(json!({"givenName": given, "photo": true})),
    );
    assert_eq!(status, 201);
    v["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn photo_is_fetched_with_auth_404_is_none_and_oversized_is_none() {
    let m = mailbox_with(0).await;
    let has = add_with_photo(&m, "Has");
    let big = add_with_photo(&m, "Big");
    let (_, none) = m.control("POST", "/contacts", Some(json!({"givenName": "None"})));
    let none = none["id"].as_str().expect("id").to_string();
    m.script(
        Script::on(&format!("/contacts/{}/photo", enc(&big)))
            .status(200)
            .body(ScriptBody::Filler(MAX_PHOTO_BYTES + 1)),
    );
    let mut with_url = pc(&has);
    with_url.photo_url = Some(photo_url(m.client.api_base(), &has));
    assert_eq!(
        m.client.fetch_photo(&with_url).await.unwrap(),
        Some(crate::sim::jpeg::TINY_JPEG.to_vec())
    );
    assert_eq!(m.client.fetch_photo(&pc(&none)).await.unwrap(), None);
    assert_eq!(m.client.fetch_photo(&pc(&big)).await.unwrap(), None);
    m.assert_prefer_on_every_request();
}

#[tokio::test]
async fn at_most_four_requests_are_in_flight_per_mailbox() {
    let m = mailbox_with(0).await;
    let ids: Vec<String> = (0..12)
        .map(|i| add_with_photo(&m, &format!("P{i}")))
        .collect();
    m.sim.set_faults(
        SimProvider::Outlook,
        FaultConfig {
            latency_ms: 40,
            ..FaultConfig::default()
        },
    );
    let contacts: Vec<ProviderContact> = ids.iter().map(|i| pc(i)).collect();
    let results =
        futures_util::future::join_all(contacts.iter().map(|c| m.client.fetch_photo(c))).await;
    assert!(results.iter().all(|r| r.as_ref().unwrap().is_some()));
    let max = m.sim.peak_in_flight(SimProvider::Outlook, OLGA);
    assert!(max <= MAX_IN_FLIGHT, "{max} requests in flight");
    assert!(max >= 2, "requests did run concurrently ({max})");
}
