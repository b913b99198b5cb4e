//! The shared request executor (`providers::transport`) against the simulator: bearer
//! tokens, the per-account concurrency limit, per-request timeouts, and what is never
//! sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use contact_sync::providers::http::RetryPolicy;
use contact_sync::providers::oauth::{OAuthClient, TokenSource};
use contact_sync::providers::transport::{Auth, Request, Transport};
use contact_sync::providers::ProviderError;
use contact_sync::sim::{FaultConfig, FaultKind, Provider, SeedUser, Sim, SimOptions};
use secrecy::SecretString;

const ALICE: &str = "alice@example.com";

async fn sim() -> Sim {
    Sim::start(SimOptions {
        google_users: vec![SeedUser::new(ALICE, 3, 5)],
        ..SimOptions::default()
    })
    .await
    .expect("sim starts")
}

fn transport(sim: &Sim) -> Transport {
    let tokens = Arc::new(TokenSource::new(
        OAuthClient {
            client_id: "cid".into(),
            client_secret: Some(SecretString::from("secret")),
            token_url: format!("{}/token", sim.google_base),
            scopes: vec![],
        },
        SecretString::from(sim.refresh_token(Provider::Google, ALICE).unwrap()),
        Arc::new(|_| Ok(())),
    ));
    let base = url::Url::parse(&sim.google_base).unwrap();
    Transport::new(&base, Auth::Bearer(tokens), RetryPolicy::fast())
        .unwrap()
        .with_service("Google People API")
}

fn listing(sim: &Sim) -> Request {
    let u = url::Url::parse(&format!("{}/v1/people/me/connections", sim.google_base)).unwrap();
    Request::get(u, 1 << 20).query(&[("personFields", "names")])
}

#[tokio::test]
async fn concurrency_limit_keeps_an_account_within_the_providers_quota() {
    let sim = sim().await;
    sim.set_quota(Provider::Google, Some(2));
    sim.set_faults(
        Provider::Google,
        FaultConfig {
            latency_ms: 100,
            ..FaultConfig::default()
        },
    );
    let t = Arc::new(transport(&sim).with_concurrency(2));
    let req = listing(&sim);
    let all = futures_util::future::join_all((0..6).map(|_| {
        let (t, req) = (t.clone(), req.clone());
        async move { t.execute(&req).await }
    }))
    .await;
    assert!(all
        .iter()
        .all(|r| r.as_ref().is_ok_and(|r| r.status == 200)));
    let log = sim.requests(Provider::Google);
    assert!(
        log.iter().all(|e| e.fault.as_deref() != Some("quota")),
        "no request over the quota: {log:?}"
    );
    assert_eq!(t.requests_sent(), 6);
}

#[tokio::test]
async fn a_hanging_answer_times_out_per_request_and_is_transient() {
    let sim = sim().await;
    let t = transport(&sim);
    // Get the token first: the hang applies to every request after this.
    t.execute(&listing(&sim)).await.expect("first");
    sim.set_faults(
        Provider::Google,
        FaultConfig {
            probability: 1.0,
            kinds: vec![FaultKind::Hang],
            hang_ms: 5_000,
            ..FaultConfig::default()
        },
    );
    let start = Instant::now();
    let err = t
        .execute(&listing(&sim).timeout(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Transient(m) if m.contains("timed out")),
        "{err:?}"
    );
    // Every attempt gave up after its own timeout, not the hang's five seconds.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn requests_to_other_hosts_are_refused_before_they_are_sent() {
    let sim = sim().await;
    let t = transport(&sim);
    for u in [
        "https://evil.example/v1/people/me/connections",
        "http://169.254.169.254/latest/meta-data/",
        "https://user:pw@127.0.0.1/v1/",
    ] {
        let err = t
            .execute(&Request::get(url::Url::parse(u).unwrap(), 1024))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProviderError::Permanent(m) if m.starts_with("Refusing")),
            "{u}: {err:?}"
        );
    }
    assert!(
        sim.requests(Provider::Google).is_empty(),
        "not even a token was fetched"
    );
}
