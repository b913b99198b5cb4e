//! The Graph contacts client end to end against the project's Graph simulator.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use contact_sync::model::{Change, Fields, ProviderContact};
use contact_sync::providers::graph::{GraphClient, GraphCursor, WriteResult};
use contact_sync::providers::http::RetryPolicy;
use contact_sync::providers::oauth::{GrantSink, OAuthClient, TokenSource};
use contact_sync::providers::{ProgressFn, Provider as _, ProviderError, Round};
use contact_sync::sim::{FaultConfig, FaultKind, Provider, SeedUser, Sim, SimOptions};
use secrecy::{ExposeSecret, SecretString};

const OLGA: &str = "olga@example.com";

async fn sim_with(contacts: usize, child_folders: usize) -> Sim {
    let mut u = SeedUser::new(OLGA, contacts, 21);
    u.child_folders = child_folders;
    Sim::start(SimOptions {
        outlook_users: vec![u],
        ..SimOptions::default()
    })
    .await
    .expect("sim starts")
}

fn client_for(sim: &Sim) -> (GraphClient, Arc<Mutex<Vec<String>>>) {
    let stored = Arc::new(Mutex::new(Vec::new()));
    let s2 = stored.clone();
    let sink: GrantSink = Arc::new(move |t: &SecretString| {
        s2.lock().unwrap().push(t.expose_secret().to_string());
        Ok(())
    });
    let tokens = TokenSource::new(
        OAuthClient {
            client_id: "cid".into(),
            client_secret: None,
            token_url: format!("{}/common/oauth2/v2.0/token", sim.graph_base),
            scopes: vec!["offline_access".into(), "Contacts.ReadWrite".into()],
        },
        SecretString::from(sim.refresh_token(Provider::Outlook, OLGA).expect("seeded")),
        sink,
    );
    let client = GraphClient::new(
        format!("{}/v1.0", sim.graph_base),
        Arc::new(tokens),
        RetryPolicy::fast(),
    );
    (client, stored)
}

fn quiet() -> ProgressFn {
    Box::new(|_| {})
}

fn upserts(r: &Round) -> Vec<&ProviderContact> {
    r.changes
        .iter()
        .filter_map(|c| match c {
            Change::Upsert(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn ids(r: &Round) -> HashSet<String> {
    upserts(r).iter().map(|p| p.provider_id.clone()).collect()
}

#[tokio::test]
async fn graph_client_full_incremental_writes_expiry_and_revocation_against_the_simulator() {
    let sim = sim_with(700, 2).await;
    let (client, stored) = client_for(&sim);

    // Initial sync: every folder listed in full, 200 per page (the Prefer header works).
    let r1 = client.fetch_round(None, &quiet()).await.unwrap();
    assert!(r1.full);
    assert_eq!(
        r1.complete_scopes.len(),
        3,
        "default folder and two children"
    );
    assert_eq!(upserts(&r1).len(), 700);
    assert_eq!(ids(&r1).len(), 700, "no duplicates");
    let scopes: HashSet<&str> = upserts(&r1).iter().map(|p| p.scope.as_str()).collect();
    assert_eq!(scopes.len(), 3);
    assert!(r1.pages <= 8, "{} pages for 700 contacts", r1.pages);
    assert!(
        !stored.lock().unwrap().is_empty(),
        "rotated refresh token stored"
    );
    let cursor1 = GraphCursor::decode(&r1.cursor).unwrap();
    assert_eq!(cursor1.folders.len(), 3);

    // Nothing changed: an empty incremental round.
    let r2 = client
        .fetch_round(Some(&r1.cursor), &quiet())
        .await
        .unwrap();
    assert!(!r2.full);
    assert!(r2.changes.is_empty(), "{:?}", r2.changes);
    assert!(r2.complete_scopes.is_empty());

    // Two-way writes, then the next round sees exactly them.
    let fields = Fields {
        first_name: "Neu".into(),
        last_name: "Kontakt".into(),
        emails: (0..4).map(|i| format!("neu{i}@example.de")).collect(),
        phones: vec!["+49 30 1234567".into()],
        address: Some(contact_sync::model::Address {
            street: Some("Unter den Linden 1".into()),
            city: Some("Berlin".into()),
            region: None,
            postal_code: Some("10117".into()),
            country: Some("Germany".into()),
        }),
        organization: Some("Beispiel GmbH".into()),
        job_title: Some("Einkauf".into()),
        birthday: chrono::NaiveDate::from_ymd_opt(1980, 2, 29),
    };
    let (new_id, new_etag, dropped) = client.create(&fields).await.unwrap();
    assert!(new_etag.is_some());
    assert_eq!(dropped.emails, vec!["neu3@example.de"]);

    let mut existing = upserts(&r1).into_iter().cloned().collect::<Vec<_>>();
    existing.sort_by(|a, b| a.provider_id.cmp(&b.provider_id));
    let target = existing[0].clone();
    let mut changed = target.fields.clone();
    changed.job_title = Some("Chief Synchroniser".into());
    let res = client
        .update(
            &target.provider_id,
            target.etag.as_deref(),
            &changed,
            &["job_title"],
        )
        .await
        .unwrap();
    assert!(matches!(res, WriteResult::Updated { .. }), "{res:?}");
    // The old etag is stale now.
    let res = client
        .update(
            &target.provider_id,
            target.etag.as_deref(),
            &changed,
            &["job_title"],
        )
        .await
        .unwrap();
    assert_eq!(res, WriteResult::Conflict);
    let victim = existing[1].provider_id.clone();
    client.delete(&victim).await.unwrap();
    client.delete(&victim).await.unwrap(); // already gone: fine

    let r3 = client
        .fetch_round(Some(&r2.cursor), &quiet())
        .await
        .unwrap();
    assert!(!r3.full);
    let up3 = upserts(&r3);
    let created = up3
        .iter()
        .find(|p| p.provider_id == new_id)
        .expect("created contact listed with the id create returned");
    let mut expected = fields.clone();
    expected.emails.truncate(3);
    assert_eq!(
        created.fields, expected,
        "what was written is what is read back"
    );
    let updated = up3
        .iter()
        .find(|p| p.provider_id == target.provider_id)
        .expect("updated contact listed");
    assert_eq!(
        updated.fields.job_title.as_deref(),
        Some("Chief Synchroniser")
    );
    assert_eq!(
        updated.fields.emails, target.fields.emails,
        "rest untouched"
    );
    assert!(r3
        .changes
        .iter()
        .any(|c| matches!(c, Change::Deleted { provider_id } if *provider_id == victim)));
    assert_eq!(up3.len(), 2, "{:?}", r3.changes);

    // Expired cursors: every folder listed again in full, no duplicates.
    assert!(sim.expire_cursors(Provider::Outlook, OLGA));
    let r4 = client
        .fetch_round(Some(&r3.cursor), &quiet())
        .await
        .unwrap();
    assert!(r4.full);
    assert_eq!(r4.complete_scopes.len(), 3);
    assert_eq!(upserts(&r4).len(), 700);
    assert_eq!(ids(&r4).len(), 700);
    assert!(ids(&r4).contains(&new_id) && !ids(&r4).contains(&victim));

    // Photos: a few contacts have one; the rest answer 404 = none.
    let mut with_photo = 0;
    for p in existing.iter().take(40) {
        if let Some(jpeg) = client.fetch_photo(p).await.unwrap() {
            assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
            with_photo += 1;
        }
    }
    assert!(with_photo < 40);

    // A revoked grant: reauth required.
    assert!(sim.revoke(Provider::Outlook, OLGA));
    let err = client
        .fetch_round(Some(&r4.cursor), &quiet())
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::ReauthRequired(_)), "{err:?}");
    sim.stop().await;
}

#[tokio::test]
async fn graph_client_converges_under_faults_and_keeps_the_mailbox_concurrency_limit() {
    let sim = sim_with(300, 1).await;
    let (client, _) = client_for(&sim);
    let clean = client.fetch_round(None, &quiet()).await.unwrap();
    assert_eq!(ids(&clean).len(), 300);

    sim.set_faults(
        Provider::Outlook,
        FaultConfig {
            probability: 0.25,
            kinds: vec![
                FaultKind::TooMany,
                FaultKind::Unavailable,
                FaultKind::Internal,
                FaultKind::Truncate,
                FaultKind::Drop,
            ],
            retry_after: 0.01,
            seed: 7,
            ..FaultConfig::default()
        },
    );
    sim.clear_requests(Provider::Outlook);
    let faulty = client.fetch_round(None, &quiet()).await.unwrap();
    assert_eq!(ids(&faulty), ids(&clean), "faults change nothing");
    let faults = sim
        .requests(Provider::Outlook)
        .iter()
        .filter(|e| e.fault.is_some())
        .count();
    assert!(faults > 0, "faults were injected");

    // Four requests in flight at most: the simulator's per-mailbox quota never trips.
    // Latency makes the requests overlap.
    sim.set_faults(
        Provider::Outlook,
        FaultConfig {
            latency_ms: 30,
            ..FaultConfig::default()
        },
    );
    sim.set_quota(Provider::Outlook, Some(4));
    sim.clear_requests(Provider::Outlook);
    let contacts = upserts(&clean).into_iter().cloned().collect::<Vec<_>>();
    let results =
        futures_util::future::join_all(contacts.iter().take(40).map(|p| client.fetch_photo(p)))
            .await;
    assert!(results.iter().all(Result::is_ok));
    assert!(
        sim.requests(Provider::Outlook)
            .iter()
            .all(|e| e.status != 429),
        "no request was throttled for concurrency"
    );
    sim.stop().await;
}

/// Initial listing of 25,000 contacts over the default folder and four children; prints
/// the time (`cargo test --release --test graph_client_sim -- --ignored --nocapture`).
#[tokio::test]
#[ignore]
async fn bench_initial_listing_of_25000_contacts() {
    let sim = sim_with(25_000, 4).await;
    let (client, _) = client_for(&sim);
    let t = std::time::Instant::now();
    let r = client.fetch_round(None, &quiet()).await.unwrap();
    let took = t.elapsed();
    assert_eq!(ids(&r).len(), 25_000);
    let graph_calls = sim
        .requests(Provider::Outlook)
        .iter()
        .filter(|e| e.path.starts_with("/v1.0/"))
        .count();
    let refetches = sim
        .requests(Provider::Outlook)
        .iter()
        .filter(|e| e.path.starts_with("/v1.0/me/contacts/"))
        .count();
    println!(
        "graph initial listing: 25000 contacts, {} pages, {graph_calls} API calls ({refetches} refetches), {took:?}",
        r.pages
    );
    assert_eq!(refetches, 0, "full rows are never refetched");
    sim.stop().await;
}

/// A client (and grant) for `scopes`, with a refresh token the simulator issued for
/// `granted`.
fn scoped_client(sim: &Sim, scopes: &[&str], granted: &str) -> GraphClient {
    let (s, v) = sim.control(
        Provider::Outlook,
        "POST",
        &format!("/_sim/users/{OLGA}/grants"),
        Some(serde_json::json!({"scope": granted})),
    );
    assert_eq!(s, 201, "{v}");
    let sink: GrantSink = Arc::new(|_: &SecretString| Ok(()));
    let tokens = TokenSource::new(
        OAuthClient {
            client_id: "cid".into(),
            client_secret: None,
            token_url: format!("{}/common/oauth2/v2.0/token", sim.graph_base),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        },
        SecretString::from(v["refresh_token"].as_str().unwrap().to_string()),
        sink,
    );
    GraphClient::new(
        format!("{}/v1.0", sim.graph_base),
        Arc::new(tokens),
        RetryPolicy::fast(),
    )
}

#[tokio::test]
async fn write_with_a_read_only_grant_is_reauth_required_naming_contacts_readwrite() {
    let sim = sim_with(3, 0).await;
    // The client of a one-way account, still in use for writes (the old bug).
    let client = scoped_client(
        &sim,
        &[
            "offline_access",
            "https://graph.microsoft.com/Contacts.Read",
        ],
        "https://graph.microsoft.com/Contacts.Read",
    );
    let round = client
        .fetch_round(None, &quiet())
        .await
        .expect("reads work");
    let c = upserts(&round)[0].clone();
    let out = client
        .write(&[contact_sync::providers::graph::WriteOp::Update {
            id: c.provider_id.clone(),
            etag: c.etag.clone(),
            fields: c.fields.clone(),
            changed: vec!["job_title".into()],
        }])
        .await;
    match &out[0] {
        WriteResult::Failed(ProviderError::ReauthRequired(m)) => {
            assert!(m.contains("Contacts.ReadWrite"), "{m}")
        }
        other => panic!("expected reauth, got {other:?}"),
    }
    assert!(sim
        .requests(Provider::Outlook)
        .iter()
        .any(|r| r.path == "/v1.0/$batch"));
}

#[tokio::test]
async fn token_scope_without_contacts_readwrite_is_reauth_required_for_a_two_way_client() {
    let sim = sim_with(3, 0).await;
    let client = scoped_client(
        &sim,
        &[
            "offline_access",
            "https://graph.microsoft.com/Contacts.ReadWrite",
        ],
        "https://graph.microsoft.com/Contacts.Read",
    );
    match client.fetch_round(None, &quiet()).await {
        Err(ProviderError::ReauthRequired(m)) => assert!(m.contains("Contacts.ReadWrite"), "{m}"),
        other => panic!("expected reauth, got {other:?}"),
    }
    // A grant with Contacts.ReadWrite also covers a one-way client's Contacts.Read.
    let client = scoped_client(
        &sim,
        &[
            "offline_access",
            "https://graph.microsoft.com/Contacts.Read",
        ],
        "https://graph.microsoft.com/Contacts.ReadWrite",
    );
    client
        .fetch_round(None, &quiet())
        .await
        .expect("read with a read-write grant");
}

/// Issue 16: the initial listing learns which contacts have a photo (PidLidHasPicture, one
/// filtered `$select=id` listing per folder) and only those carry a photo URL, so photo
/// requests equal the contacts with a photo. Delta requests carry `$select` only.
#[tokio::test]
async fn only_contacts_with_a_photo_get_a_photo_url() {
    let sim = sim_with(450, 2).await;
    let (client, _) = client_for(&sim);
    let r = client.fetch_round(None, &quiet()).await.unwrap();
    let with_url: Vec<&ProviderContact> = upserts(&r)
        .into_iter()
        .filter(|p| p.photo_url.is_some())
        .collect();
    assert!(!with_url.is_empty());
    let log = sim.requests(Provider::Outlook);
    let listings = log
        .iter()
        .filter(|e| e.query.contains("singleValueExtendedProperties"))
        .count();
    assert_eq!(
        listings, 3,
        "one photo listing per folder (each fits one page)"
    );
    for e in log.iter().filter(|e| e.path.ends_with("/delta")) {
        assert!(
            !e.query.contains("%24filter")
                && !e.query.contains("$filter")
                && !e.query.contains("expand"),
            "{}",
            e.query
        );
    }
    // Every contact with a URL has a photo; every other contact has none.
    for p in upserts(&r) {
        let got = client.fetch_photo(p).await.unwrap();
        if p.photo_url.is_some() {
            assert!(got.is_some(), "{} has a photo", p.provider_id);
        } else {
            let forced = ProviderContact {
                photo_url: None,
                ..(*p).clone()
            };
            // Asked anyway (by id): the simulator has no photo for it.
            assert!(client.fetch_photo(&forced).await.unwrap().is_none());
        }
    }
    // The next round is a delta round: no photo listing, no photo URLs.
    sim.clear_requests(Provider::Outlook);
    let r2 = client.fetch_round(Some(&r.cursor), &quiet()).await.unwrap();
    assert!(upserts(&r2).iter().all(|p| p.photo_url.is_none()));
    assert!(sim
        .requests(Provider::Outlook)
        .iter()
        .all(|e| !e.query.contains("singleValueExtendedProperties")));
}

/// Issue 16: with the simulator enforcing a request budget and the client configured with
/// the same budget, a whole initial sync with its photos gets no 429; a client without the
/// budget does.
#[tokio::test]
async fn the_request_budget_keeps_a_sync_free_of_throttling() {
    let sim = sim_with(600, 1).await;
    let (budget, window) = (40u32, std::time::Duration::from_secs(1));
    sim.set_graph_budget(Some((budget, window)));
    let (client, _) = client_for(&sim);
    let client = client.with_budget(budget, window);
    let started = std::time::Instant::now();
    let r = client.fetch_round(None, &quiet()).await.unwrap();
    let mut photos = 0;
    for p in upserts(&r).into_iter().filter(|p| p.photo_url.is_some()) {
        assert!(client.fetch_photo(p).await.unwrap().is_some());
        photos += 1;
    }
    let sent = client.requests_sent();
    assert!(
        photos > 20 && sent > u64::from(budget) + 20,
        "{photos} {sent}"
    );
    assert_eq!(sim.graph_budget_refusals(), 0, "no request was throttled");
    assert!(
        sim.requests(Provider::Outlook)
            .iter()
            .all(|e| e.status != 429),
        "no 429 in the log"
    );
    // The sync slowed itself down to the budget instead.
    let floor = (sent - u64::from(budget)) as f64 / f64::from(budget) * window.as_secs_f64();
    assert!(
        started.elapsed().as_secs_f64() >= floor * 0.9,
        "{:?} < {floor}",
        started.elapsed()
    );

    // Control: the same work without a budget in the client is throttled.
    sim.set_graph_budget(Some((budget, window)));
    let (unbounded, _) = client_for(&sim);
    let unbounded = unbounded.with_budget(0, window);
    if let Ok(r) = unbounded.fetch_round(None, &quiet()).await {
        for p in upserts(&r).into_iter().filter(|p| p.photo_url.is_some()) {
            let _ = unbounded.fetch_photo(p).await;
        }
    }
    assert!(sim.graph_budget_refusals() > 0);
}

/// Issue 16, the stalled fault runs: an access token that lives only seconds (the fault
/// suite's 2 s) is refreshed about once per lifetime, not before every request. Refreshing
/// under the token lock before every request serialised a mailbox's requests behind the
/// token endpoint, so one hung token request held up all of them.
#[tokio::test]
async fn a_short_lived_token_is_not_refreshed_before_every_request() {
    let mut u = SeedUser::new(OLGA, 400, 21);
    u.child_folders = 1;
    let sim = Sim::start(SimOptions {
        outlook_users: vec![u],
        access_token_ttl: std::time::Duration::from_secs(2),
        ..SimOptions::default()
    })
    .await
    .expect("sim starts");
    let (client, _) = client_for(&sim);
    let started = std::time::Instant::now();
    let r = client.fetch_round(None, &quiet()).await.unwrap();
    for p in upserts(&r).into_iter().filter(|p| p.photo_url.is_some()) {
        client.fetch_photo(p).await.unwrap();
    }
    let log = sim.requests(Provider::Outlook);
    let tokens = log.iter().filter(|e| e.path.ends_with("/token")).count();
    let api = log.len() - tokens;
    let lifetimes = started.elapsed().as_secs_f64() / 2.0;
    assert!(api > 40, "{api}");
    assert!(
        (tokens as f64) <= 2.0 * lifetimes + 2.0,
        "{tokens} token requests for {api} API requests in {:?}",
        started.elapsed()
    );
}

/// Issue 16: photos in `$batch`, 20 per request, give the same bytes as one by one, and a
/// contact without a photo gives none.
#[tokio::test]
async fn photos_come_through_batch_twenty_at_a_time() {
    let sim = sim_with(500, 0).await;
    let (client, _) = client_for(&sim);
    let r = client.fetch_round(None, &quiet()).await.unwrap();
    let mut contacts: Vec<ProviderContact> = upserts(&r)
        .into_iter()
        .filter(|p| p.photo_url.is_some())
        .cloned()
        .collect();
    assert!(contacts.len() > 20, "{}", contacts.len());
    // One contact without a photo, asked for anyway.
    let without = upserts(&r)
        .into_iter()
        .find(|p| p.photo_url.is_none())
        .unwrap()
        .clone();
    contacts.push(without);
    sim.clear_requests(Provider::Outlook);
    let batched = client.fetch_photos(&contacts).await;
    let log = sim.requests(Provider::Outlook);
    let batches = log.iter().filter(|e| e.path.ends_with("$batch")).count();
    assert_eq!(batches, contacts.len().div_ceil(20));
    assert!(
        log.iter().all(|e| !e.path.ends_with("/photo/$value")),
        "nothing asked alone"
    );
    assert_eq!(batched.len(), contacts.len());
    for (c, got) in contacts.iter().zip(&batched) {
        let one = client.fetch_photo(c).await.unwrap();
        assert_eq!(got.as_ref().unwrap(), &one, "{}", c.provider_id);
    }
    assert!(batched.last().unwrap().as_ref().unwrap().is_none());
    assert!(batched[0]
        .as_ref()
        .unwrap()
        .as_ref()
        .is_some_and(|b| b.starts_with(&[0xff, 0xd8])));
}
