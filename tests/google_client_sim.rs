//! The Google People API client against the Google simulator, over HTTP: full and
//! incremental rounds, starred-only, expired sync tokens, injected faults, a revoked grant,
//! and the two-way batch writes.

use std::collections::HashSet;
use std::sync::Arc;

use contact_sync::config::Group;
use contact_sync::model::{field, Change, Fields};
use contact_sync::providers::google::{Cursor, GoogleClient, UpdateOutcome};
use contact_sync::providers::http::RetryPolicy;
use contact_sync::providers::oauth::{OAuthClient, TokenSource};
use contact_sync::providers::{ProgressFn, Provider as _, ProviderError};
use contact_sync::sim::{FaultConfig, FaultKind, Provider, SeedUser, Sim, SimOptions};
use secrecy::SecretString;
use serde_json::{json, Value};

const ALICE: &str = "alice@example.com";

async fn sim(contacts: usize) -> Sim {
    let mut u = SeedUser::new(ALICE, contacts, 21);
    u.starred_share = 0.3;
    Sim::start(SimOptions {
        google_users: vec![u],
        ..SimOptions::default()
    })
    .await
    .expect("sim starts")
}

fn client(sim: &Sim, group: Group) -> GoogleClient {
    let refresh = sim
        .refresh_token(Provider::Google, ALICE)
        .expect("seeded refresh token");
    let tokens = Arc::new(TokenSource::new(
        OAuthClient {
            client_id: "cid".into(),
            client_secret: Some(SecretString::from("secret")),
            token_url: format!("{}/token", sim.google_base),
            scopes: vec!["https://www.googleapis.com/auth/contacts".into()],
        },
        SecretString::from(refresh),
        Arc::new(|_| Ok(())),
    ));
    GoogleClient::new(sim.google_base.clone(), group, tokens, RetryPolicy::fast())
}

fn quiet() -> ProgressFn {
    Box::new(|_| {})
}

fn upserted(changes: &[Change]) -> HashSet<String> {
    changes
        .iter()
        .filter(|c| matches!(c, Change::Upsert(_)))
        .map(|c| c.provider_id().to_string())
        .collect()
}

async fn control(sim: &Sim) -> Vec<Value> {
    reqwest::get(format!("{}/_sim/users/{ALICE}/contacts", sim.google_base))
        .await
        .expect("control")
        .json()
        .await
        .expect("json")
}

async fn ctl(sim: &Sim, method: reqwest::Method, path: &str, body: Value) -> reqwest::StatusCode {
    reqwest::Client::new()
        .request(
            method,
            format!("{}/_sim/users/{ALICE}/{path}", sim.google_base),
        )
        .json(&body)
        .send()
        .await
        .expect("control")
        .status()
}

#[tokio::test]
async fn full_then_incremental_round_against_the_simulator() {
    let sim = sim(1500).await;
    let gc = client(&sim, Group::All);
    let r = gc.fetch_round(None, &quiet()).await.expect("full round");
    assert!(r.full);
    assert_eq!(r.complete_scopes, vec![String::new()]);
    assert_eq!(r.pages, 2, "1000 per page");
    assert_eq!(upserted(&r.changes).len(), 1500);
    assert!(Cursor::decode(&r.cursor).is_some());

    // Nothing changed: an incremental round is empty.
    let quiet_round = gc.fetch_round(Some(&r.cursor), &quiet()).await.unwrap();
    assert!(!quiet_round.full);
    assert!(quiet_round.changes.is_empty());

    let all = control(&sim).await;
    let (a, b) = (
        all[0]["id"].as_str().unwrap().to_string(),
        all[1]["id"].as_str().unwrap().to_string(),
    );
    assert_eq!(
        ctl(
            &sim,
            reqwest::Method::PATCH,
            &format!("contacts/{a}"),
            json!({"names": [{"givenName": "Renamed", "familyName": "Person"}]})
        )
        .await,
        200
    );
    assert_eq!(
        ctl(
            &sim,
            reqwest::Method::DELETE,
            &format!("contacts/{b}"),
            json!({})
        )
        .await,
        204
    );
    let r2 = gc
        .fetch_round(Some(&quiet_round.cursor), &quiet())
        .await
        .expect("incremental round");
    assert!(!r2.full);
    let renamed = r2
        .changes
        .iter()
        .find_map(|c| match c {
            Change::Upsert(p) if p.provider_id == format!("people/{a}") => Some(p),
            _ => None,
        })
        .expect("renamed contact in the round");
    assert_eq!(renamed.fields.first_name, "Renamed");
    assert!(r2.changes.contains(&Change::Deleted {
        provider_id: format!("people/{b}")
    }));
    assert_eq!(r2.changes.len(), 2);
}

#[tokio::test]
async fn expired_sync_token_gives_a_full_listing_in_the_same_round() {
    let sim = sim(300).await;
    let gc = client(&sim, Group::All);
    let r = gc.fetch_round(None, &quiet()).await.unwrap();
    assert!(sim.expire_cursors(Provider::Google, ALICE));
    let again = gc.fetch_round(Some(&r.cursor), &quiet()).await.unwrap();
    assert!(again.full);
    assert_eq!(again.complete_scopes, vec![String::new()]);
    assert_eq!(upserted(&again.changes), upserted(&r.changes));
}

#[tokio::test]
async fn starred_group_upserts_starred_and_leaves_the_unstarred() {
    let sim = sim(200).await;
    let starred: HashSet<String> = control(&sim)
        .await
        .iter()
        .filter(|c| c["starred"] == true)
        .map(|c| format!("people/{}", c["id"].as_str().unwrap()))
        .collect();
    assert!(!starred.is_empty());
    let gc = client(&sim, Group::Starred);
    let r = gc.fetch_round(None, &quiet()).await.unwrap();
    assert_eq!(upserted(&r.changes), starred);
    let left = r
        .changes
        .iter()
        .filter(|c| matches!(c, Change::Left { .. }))
        .count();
    assert_eq!(left, 200 - starred.len());

    let one = starred.iter().next().unwrap().trim_start_matches("people/");
    ctl(
        &sim,
        reqwest::Method::POST,
        &format!("contacts/{one}/unstar"),
        json!({}),
    )
    .await;
    let r2 = gc.fetch_round(Some(&r.cursor), &quiet()).await.unwrap();
    assert!(r2.changes.contains(&Change::Left {
        provider_id: format!("people/{one}")
    }));
}

#[tokio::test]
async fn injected_faults_still_converge_to_the_full_listing() {
    let sim = sim(2500).await;
    sim.set_faults(
        Provider::Google,
        FaultConfig {
            probability: 0.3,
            kinds: vec![
                FaultKind::TooMany,
                FaultKind::Internal,
                FaultKind::Unavailable,
                FaultKind::Drop,
                FaultKind::Truncate,
            ],
            retry_after: 0.0,
            seed: 7,
            ..FaultConfig::default()
        },
    );
    let gc = client(&sim, Group::All);
    let r = gc.fetch_round(None, &quiet()).await.expect("converges");
    assert_eq!(upserted(&r.changes).len(), 2500);
    assert_eq!(r.pages, 3);
    let faults = sim
        .requests(Provider::Google)
        .iter()
        .filter(|e| e.path.ends_with("/connections") && e.fault.is_some())
        .count();
    assert!(faults > 0, "the simulator injected faults");
    // Tokens and URLs with them never appear in our own error texts; the query the
    // simulator saw kept every paging parameter identical.
    let queries: Vec<String> = sim
        .requests(Provider::Google)
        .iter()
        .filter(|e| e.path.ends_with("/connections"))
        .map(|e| e.query.clone())
        .collect();
    assert!(queries.iter().all(|q| q.contains("requestSyncToken=true")));
}

#[tokio::test]
async fn revoked_grant_is_reauth_required() {
    let sim = sim(10).await;
    let gc = client(&sim, Group::All);
    assert!(sim.revoke(Provider::Google, ALICE));
    let err = gc.fetch_round(None, &quiet()).await.unwrap_err();
    assert!(matches!(err, ProviderError::ReauthRequired(_)), "{err:?}");
}

#[tokio::test]
async fn batch_writes_round_trip_through_the_simulator() {
    let sim = sim(5).await;
    let gc = client(&sim, Group::All);
    let r = gc.fetch_round(None, &quiet()).await.unwrap();

    let fields = |n: &str| Fields {
        first_name: n.into(),
        last_name: "Pushed".into(),
        emails: vec![format!("{n}@example.net")],
        ..Fields::default()
    };
    let created = gc
        .batch_create(&[(1, fields("One"), false), (2, fields("Two"), true)])
        .await;
    let (id1, etag1) = created[0].result.clone().expect("created");
    let (id2, _) = created[1].result.clone().expect("created");

    let r2 = gc.fetch_round(Some(&r.cursor), &quiet()).await.unwrap();
    assert_eq!(
        upserted(&r2.changes),
        HashSet::from([id1.clone(), id2.clone()])
    );

    let etag1 = etag1.expect("etag");
    let mut f = fields("Uno");
    f.job_title = Some("Pilot".into());
    let up = gc
        .batch_update(&[
            (
                id1.clone(),
                etag1.clone(),
                f.clone(),
                vec![field::NAME, field::JOB_TITLE],
            ),
            (id2.clone(), "stale".into(), f, vec![field::NAME]),
        ])
        .await;
    assert!(matches!(up[0].outcome, UpdateOutcome::Updated { etag: Some(ref e) } if *e != etag1));
    assert_eq!(up[1].outcome, UpdateOutcome::Conflict);

    let del = gc.batch_delete(std::slice::from_ref(&id2)).await;
    assert_eq!(del[0].result, Ok(()));
    let r3 = gc.fetch_round(Some(&r2.cursor), &quiet()).await.unwrap();
    assert!(r3.changes.contains(&Change::Deleted { provider_id: id2 }));
    let one = r3
        .changes
        .iter()
        .find_map(|c| match c {
            Change::Upsert(p) if p.provider_id == id1 => Some(p),
            _ => None,
        })
        .expect("updated contact");
    assert_eq!(one.fields.first_name, "Uno");
    assert_eq!(one.fields.job_title.as_deref(), Some("Pilot"));
}
