//! Fault suite (issue 9): with 10 % of requests failing in every way the providers fail —
//! 429, 500, 503, dropped connections, hangs, truncated bodies — plus access tokens that
//! expire mid-sync, the CRM converges to exactly the state of a clean run, and the API keeps
//! serving throughout. Also: switching direction keeps the cursor (no resync).

mod common;

use std::time::Duration;

use common::*;
use contact_sync::sim::{FaultConfig, FaultKind, Provider, SeedUser, Sim, SimOptions};
use serde_json::Value;

/// A run's CRM, without ids and timestamps, sorted.
fn normalised(contacts: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = contacts
        .iter()
        .map(|c| {
            let mut links: Vec<String> = c["links"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| format!("{}:{}", l["account"], l["provider_id"]))
                .collect();
            links.sort();
            format!(
                "{}|{}|{}|{}|{}|{}|{}|{}|{}",
                c["first_name"],
                c["last_name"],
                c["emails"],
                c["phones"],
                c["address"],
                c["company"]["name"],
                c["job_title"],
                c["birthday"],
                links.join(",")
            )
        })
        .collect();
    out.sort();
    out
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run(faults: bool) -> (Vec<String>, Value, Value) {
    // `FAULT_CONTACTS` sizes each address book (scripts/reliability.sh runs it large).
    // 600 by default: since issue 16 a sync asks for far fewer photos and tokens, and at
    // 120 contacts the faulty run made only 26 requests, too few for 10 % to hit any.
    let n = env("FAULT_CONTACTS", 600);
    let sim = Sim::start(SimOptions {
        seed: 5,
        google_users: vec![SeedUser::new("fg@example.com", n, 71)],
        outlook_users: vec![{
            let mut u = SeedUser::new("fo@example.com", n, 71);
            u.child_folders = 1;
            u
        }],
        access_token_ttl: if faults {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(3600)
        },
    })
    .await
    .unwrap();
    if faults {
        for p in [Provider::Google, Provider::Outlook] {
            sim.set_faults(
                p,
                FaultConfig {
                    probability: 0.10,
                    kinds: vec![
                        FaultKind::TooMany,
                        FaultKind::Internal,
                        FaultKind::Unavailable,
                        FaultKind::Drop,
                        FaultKind::Hang,
                        FaultKind::Truncate,
                    ],
                    hang_ms: 30_000,
                    latency_ms: 20,
                    retry_after: 0.0,
                    seed: 11,
                },
            );
        }
    }
    let mut d = TestDaemon::new();
    let accounts = format!(
        "{}{}",
        account_toml("g", "google", "all", "one-way"),
        account_toml("o", "outlook", "all", "one-way")
    );
    d.write_config(&d.config_text("", &format!("{}{accounts}", providers_for(&sim))));
    d.start().await;
    // One account after the other: which provider is merged first decides the CRM's values
    // at first link, so both runs use the same order.
    d.connect(
        "g",
        &sim.refresh_token(Provider::Google, "fg@example.com")
            .unwrap(),
    )
    .await;
    d.wait_for(
        "g synced",
        Duration::from_secs(240 + n as u64 / 4),
        || async {
            let a = d.account("g").await;
            a["state"] == "idle" && a["last_sync"].is_string()
        },
    )
    .await;
    d.connect(
        "o",
        &sim.refresh_token(Provider::Outlook, "fo@example.com")
            .unwrap(),
    )
    .await;
    // The API answers while the accounts sync through the faults.
    let deadline = std::time::Instant::now() + Duration::from_secs(240 + n as u64 / 4);
    loop {
        let h = d
            .http
            .get(format!("{}/healthz", d.base()))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        assert!(
            h.is_ok_and(|r| r.status() == 200),
            "the API stopped answering"
        );
        let g = d.account("g").await;
        let o = d.account("o").await;
        if g["last_sync"].is_string()
            && o["last_sync"].is_string()
            && g["state"] == "idle"
            && o["state"] == "idle"
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no convergence: {g} {o}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if faults {
        let injected = sim
            .requests(Provider::Google)
            .iter()
            .chain(sim.requests(Provider::Outlook).iter())
            .filter(|r| r.fault.is_some())
            .count();
        let requests = sim.requests(Provider::Google).len() + sim.requests(Provider::Outlook).len();
        eprintln!("{n} contacts per provider: {requests} requests, faults injected: {injected}");
        assert!(injected > 0);
    }
    let contacts = d.contacts().await;
    (
        normalised(&contacts),
        d.account("g").await["today"].clone(),
        d.account("o").await["today"].clone(),
    )
}

#[tokio::test]
async fn faults_converge_to_the_same_crm_as_a_clean_run() {
    let (clean, g1, o1) = run(false).await;
    let (faulty, g2, o2) = run(true).await;
    let only_clean: Vec<_> = clean.iter().filter(|c| !faulty.contains(c)).collect();
    let only_faulty: Vec<_> = faulty.iter().filter(|c| !clean.contains(c)).collect();
    // Provider ids are assigned by each simulator run the same way (same seeds).
    assert!(
        only_clean.is_empty() && only_faulty.is_empty(),
        "clean only: {only_clean:#?}\nfaulty only: {only_faulty:#?}"
    );
    assert_eq!(g1, g2, "same metrics");
    assert_eq!(o1, o2, "same metrics");
}

#[tokio::test]
async fn switching_direction_keeps_the_cursor_and_does_not_resync() {
    let sim = start_sim(vec![SeedUser::new("sw@example.com", 80, 72)], vec![]).await;
    let mut d = TestDaemon::new();
    let rest = |dir: &str| {
        format!(
            "{}{}",
            providers_for(&sim),
            account_toml("g", "google", "all", dir)
        )
    };
    d.write_config(&d.config_text("", &rest("one-way")));
    d.start().await;
    d.connect(
        "g",
        &sim.refresh_token(Provider::Google, "sw@example.com")
            .unwrap(),
    )
    .await;
    d.wait_synced("g", None).await;
    // A CRM edit while one-way: not sent, not now and not later.
    let c = d
        .contacts()
        .await
        .into_iter()
        .find(|c| c["links"].as_array().unwrap().len() == 1)
        .unwrap();
    let id = c["id"].as_u64().unwrap();
    d.api(
        reqwest::Method::PATCH,
        &format!("/api/v1/contacts/{id}"),
        Some(serde_json::json!({"job_title": "Edited while one-way"})),
    )
    .await;
    sim.clear_requests(Provider::Google);
    d.write_config(&d.config_text("", &rest("two-way")));
    d.wait_for("two-way", Duration::from_secs(10), || async {
        d.account("g").await["direction"] == "two-way"
    })
    .await;
    let a = d.sync_now("g").await;
    let full_listings = sim
        .requests(Provider::Google)
        .iter()
        .filter(|r| r.path.ends_with("/people/me/connections") && !r.query.contains("syncToken"))
        .count();
    assert_eq!(full_listings, 0, "no resync after a direction change");
    assert_eq!(a["outbox"]["pending"], 0);
    assert_eq!(
        today(&a, &["updated", "in_provider"]),
        0,
        "one-way edits are not sent retroactively"
    );
    let pid = c["links"][0]["provider_id"].as_str().unwrap();
    let people = sim
        .control(
            Provider::Google,
            "GET",
            "/_sim/users/sw@example.com/contacts",
            None,
        )
        .1;
    let p = people
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["person"]["resourceName"] == pid)
        .unwrap();
    assert_ne!(
        p["person"]["organizations"][0]["title"],
        "Edited while one-way"
    );
    // An edit made now, in two-way, is sent.
    d.api(
        reqwest::Method::PATCH,
        &format!("/api/v1/contacts/{id}"),
        Some(serde_json::json!({"last_name": "Twoway"})),
    )
    .await;
    d.wait_for("pushed", Duration::from_secs(30), || async {
        today(&d.account("g").await, &["updated", "in_provider"]) == 1
    })
    .await;
}
