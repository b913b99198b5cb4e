//! Request behaviour against the simulator: throttling, cut-off bodies, tokens, photos and
//! the in-flight limit.

use std::time::Duration;

use crate::model::ProviderContact;
use crate::providers::graph::map::photo_url;
use crate::providers::graph::MAX_IN_FLIGHT;
use crate::providers::{Provider as _, ProviderError, MAX_PHOTO_BYTES};
use crate::sim::{FaultConfig, FaultKind};

use super::*;

#[tokio::test]
async fn throttled_429_with_fractional_retry_after_is_retried_then_succeeds() {
    let m = mailbox().await;
    m.script(Script {
        fault: Some(FaultKind::TooMany),
        retry_after: Some(0.01),
        times: Some(1),
        ..script(&[bare(&m.kids), "/contacts/delta?$select"])
    });
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

#[tokio::test]
async fn throttling_that_never_ends_is_reported_as_throttled() {
    let m = mailbox_with(60).await;
    m.script(Script {
        fault: Some(FaultKind::TooMany),
        retry_after: Some(0.001),
        ..script(&["/v1.0/"])
    });
    let err = m.failed_round(None).await;
    assert!(matches!(err, ProviderError::Throttled { .. }), "{err:?}");
    // A Retry-After beyond the policy's maximum ends the round at once.
    m.sim
        .control(SimProvider::Outlook, "DELETE", "/scripts", None);
    m.script(Script {
        fault: Some(FaultKind::TooMany),
        retry_after: Some(3600.0),
        ..script(&["/v1.0/"])
    });
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
    m.script(Script {
        fault: Some(FaultKind::Truncate),
        times: Some(1),
        ..script(&[bare(&m.root), "skiptoken"])
    });
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
    m.script(Script {
        fault: Some(FaultKind::Truncate),
        ..script(&[bare(&m.root), "skiptoken"])
    });
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
    m.script(answer(
        &["/v1.0/"],
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
    assert_eq!(first.grant_type.as_deref(), Some("refresh_token"));
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
    m.script(Script {
        status: Some(200),
        bytes: Some(MAX_PHOTO_BYTES + 1),
        headers: [("Content-Type".to_string(), "image/jpeg".to_string())].into(),
        ..script(&[bare(&big), "/photo/"])
    });
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
