//! Access tokens (refresh once after a 401, the same answer to a second 401 as every
//! provider gives, a revoked grant) and photos.

use contact_sync::config::Group;
use contact_sync::model::ProviderContact;
use contact_sync::providers::{Provider as _, ProviderError, MAX_PHOTO_BYTES};
use contact_sync::sim::{Provider, Script, ScriptBody};
use serde_json::json;

use crate::*;

fn unauthenticated() -> serde_json::Value {
    json!({"error": {"code": 401,
        "message": "Request had invalid authentication credentials.",
        "status": "UNAUTHENTICATED"}})
}

#[tokio::test]
async fn unauthorized_401_refreshes_the_token_once_and_retries() {
    let (sim, _) = three_page_book().await;
    sim.script(
        Provider::Google,
        Script::on("/v1/").times(1).json(401, unauthenticated()),
    );
    let gc = client(&sim, Group::All);
    let r = gc
        .fetch_round(None, &no_progress())
        .await
        .expect("after refresh");
    assert_eq!(r.changes.len(), 3);
    let tokens = token_requests(&sim);
    assert_eq!(tokens.len(), 2);
    let bearers: Vec<String> = api_requests(&sim)
        .iter()
        .map(|r| r.bearer.clone().unwrap_or_default())
        .collect();
    assert_eq!(bearers.len(), 3);
    assert_ne!(bearers[0], bearers[1], "a fresh token after the 401");
    assert_eq!(bearers[1], bearers[2]);
    let form: Vec<(String, String)> =
        url::form_urlencoded::parse(tokens[1].body.as_deref().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    assert!(form.contains(&("grant_type".into(), "refresh_token".into())));
    assert!(form.contains(&("refresh_token".into(), refresh_token(&sim))));
}

#[tokio::test]
async fn expired_access_token_is_refreshed_without_failing_the_round() {
    let (sim, _) = three_page_book().await;
    let gc = client(&sim, Group::All);
    gc.fetch_round(None, &no_progress()).await.expect("first");
    // The simulator now refuses the cached token with its own 401.
    sim.expire_access_tokens();
    let r = gc.fetch_round(None, &no_progress()).await.expect("second");
    assert_eq!(r.changes.len(), 3);
    assert_eq!(token_requests(&sim).len(), 2);
}

#[tokio::test]
async fn second_401_after_refresh_is_reauth_required() {
    let (sim, _) = three_page_book().await;
    sim.script(
        Provider::Google,
        Script::on("/v1/").json(
            401,
            json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
        ),
    );
    let gc = client(&sim, Group::All);
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    // The same answer as every provider gives to a refused fresh token (it used to be
    // Permanent for Google).
    assert!(matches!(err, ProviderError::ReauthRequired(_)), "{err:?}");
    assert_eq!(api_requests(&sim).len(), 2);
    assert_eq!(token_requests(&sim).len(), 2);
}

#[tokio::test]
async fn revoked_grant_is_reauth_required() {
    let (sim, _) = three_page_book().await;
    let gc = client(&sim, Group::All);
    assert!(sim.revoke(Provider::Google, ALICE));
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::ReauthRequired(_)), "{err:?}");
    assert!(api_requests(&sim).is_empty());
}

fn with_photo(url: String) -> ProviderContact {
    ProviderContact {
        provider_id: "people/c1".into(),
        etag: None,
        scope: String::new(),
        fields: Default::default(),
        photo_url: Some(url),
    }
}

#[tokio::test]
async fn photo_is_fetched_and_missing_or_oversized_photos_are_none() {
    let sim = empty_book().await;
    sim.script(
        Provider::Google,
        Script::on("/photos/big")
            .status(200)
            .body(ScriptBody::Filler(MAX_PHOTO_BYTES + 1)),
    );
    sim.script(
        Provider::Google,
        Script::on("/photos/gone").text(404, "not found"),
    );
    sim.script(Provider::Google, Script::on("/photos/flaky").text(503, ""));
    let gc = client(&sim, Group::All);
    let base = &sim.google_base;
    let got = gc
        .fetch_photo(&with_photo(format!("{base}/photos/small")))
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(contact_sync::sim::jpeg::TINY_JPEG));
    // The photo host is the API host here: the bearer token went along.
    assert!(api_requests(&sim)[0].bearer.is_some());
    assert_eq!(
        gc.fetch_photo(&with_photo(format!("{base}/photos/big")))
            .await,
        Ok(None)
    );
    assert_eq!(
        gc.fetch_photo(&with_photo(format!("{base}/photos/gone")))
            .await,
        Ok(None)
    );
    let err = gc
        .fetch_photo(&with_photo(format!("{base}/photos/flaky")))
        .await
        .unwrap_err();
    assert!(err.is_retryable());
    let mut none = with_photo(String::new());
    none.photo_url = None;
    assert_eq!(gc.fetch_photo(&none).await, Ok(None));
    // Neither Google's photo hosts nor the API host: not fetched at all.
    sim.clear_requests(Provider::Google);
    assert_eq!(
        gc.fetch_photo(&with_photo(
            "http://169.254.169.254/latest/meta-data/".into()
        ))
        .await,
        Ok(None)
    );
    assert!(api_requests(&sim).is_empty());
}
