//! Crash safety (SPEC §8): SIGKILL the daemon at random moments of an initial sync, restart
//! it, and find exactly the contacts, links and metric counts of an uninterrupted run.
//!
//! The CI sizes are small; `scripts/reliability.sh` runs the same tests at scale through
//! `CRASH_CONTACTS`, `CRASH_KILLS`, `CRASH_WINDOW_MS`, `CRASH_PUSH` and `CRASH_PUSH_KILLS`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use contact_sync::sim::{FaultConfig, Provider, SeedUser};
use rand::{Rng, SeedableRng};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits until every stored audit event is in the files, then checks that no `seq` is
/// missing and returns the lines with one per `seq` (a crash may repeat a line, with its
/// `seq`).
async fn audit_by_seq(d: &TestDaemon) -> Vec<serde_json::Value> {
    d.wait_for(
        "the audit backlog to drain",
        Duration::from_secs(60),
        || async { d.get("/api/v1/accounts").await["audit_backlog"] == 0 },
    )
    .await;
    let mut by_seq = BTreeMap::new();
    for l in d.audit_lines() {
        let seq = l["seq"].as_u64().expect("every line has a seq");
        if let Some(prev) = by_seq.insert(seq, l.clone()) {
            assert_eq!(prev, l, "a repeated seq repeats the same event");
        }
    }
    let max = by_seq.keys().next_back().copied().unwrap_or(0);
    assert_eq!(
        by_seq.len() as u64,
        max,
        "no seq is missing from 1 to {max}"
    );
    by_seq.into_values().collect()
}

/// How many distinct events of `action` and `direction` name each CRM id.
fn events_per_contact(
    lines: &[serde_json::Value],
    action: &str,
    direction: &str,
) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for l in lines
        .iter()
        .filter(|l| l["action"] == action && l["direction"] == direction)
    {
        if let Some(id) = l["crm_id"].as_u64() {
            *out.entry(id).or_default() += 1;
        }
    }
    out
}

#[tokio::test]
async fn sigkill_during_initial_sync_loses_nothing_and_duplicates_nothing() {
    initial_sync_survives_sigkills(Provider::Google).await;
}

/// The same for an Outlook mailbox of three folders, whose initial listing streams too.
#[tokio::test]
async fn sigkill_during_outlook_initial_sync_loses_nothing_and_duplicates_nothing() {
    initial_sync_survives_sigkills(Provider::Outlook).await;
}

async fn initial_sync_survives_sigkills(provider: Provider) {
    const USER: &str = "crash@example.com";
    let (contacts_n, kills_n, window) = (
        env("CRASH_CONTACTS", 1500),
        env("CRASH_KILLS", 8),
        env("CRASH_WINDOW_MS", 400),
    );
    let mut seed = SeedUser::new(USER, contacts_n as usize, 41);
    let (sim, changes, kind) = match provider {
        Provider::Google => {
            let sim = start_sim(vec![seed], vec![]).await;
            let changes = google_changes(&sim, USER);
            (sim, changes, "google")
        }
        Provider::Outlook => {
            seed.child_folders = 2;
            let sim = start_sim(vec![], vec![seed]).await;
            let changes = graph_changes(&sim, USER);
            (sim, changes, "outlook")
        }
    };
    let (eligible, skipped) = expected(&changes);
    // A little latency so that kills land in fetching as well as in committing.
    sim.set_faults(
        provider,
        FaultConfig {
            latency_ms: 15,
            ..Default::default()
        },
    );
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text(
        "",
        &format!(
            "{}{}",
            providers_for(&sim),
            account_toml("g", kind, "all", "one-way")
        ),
    ));
    d.start().await;
    d.connect("g", &sim.refresh_token(provider, USER).unwrap())
        .await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut kills = 0;
    let mut after_done = 0;
    for _ in 0..kills_n {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..window.max(21)))).await;
        let done = d.account("g").await["last_sync"].is_string();
        d.kill().await;
        kills += 1;
        d.start().await;
        if done {
            after_done += 1;
            if after_done > 1 {
                break;
            }
        }
    }
    eprintln!("{kind} initial sync of {contacts_n}: {kills} kills");
    assert!(kills >= 1);
    let a = d.wait_synced("g", None).await;
    let contacts = d.contacts().await;
    let links = check_no_duplicates(&contacts, "g");
    assert_eq!(
        links.len(),
        eligible.len(),
        "every eligible contact linked exactly once"
    );
    // Today's metrics equal an uninterrupted run's: each eligible contact counted once.
    let added = today(&a, &["added", "to_crm"]);
    let updated = today(&a, &["updated", "in_crm"]);
    assert_eq!(added as usize, contacts.len());
    assert_eq!((added + updated) as usize, eligible.len());
    for (reason, n) in &skipped {
        assert_eq!(
            a["today"]["skipped"][reason], *n,
            "skipped {reason} counted once"
        );
    }
    // The audit trail agrees with the store: one `added` per CRM contact, an `updated`
    // per counted update, and no seq missing.
    let lines = audit_by_seq(&d).await;
    let added_events = events_per_contact(&lines, "added", "to_crm");
    let ids: BTreeSet<u64> = contacts.iter().filter_map(|c| c["id"].as_u64()).collect();
    assert_eq!(
        added_events.keys().copied().collect::<BTreeSet<_>>(),
        ids,
        "every CRM contact has an added event"
    );
    assert!(
        added_events.values().all(|n| *n == 1),
        "exactly one added event per contact"
    );
    let updated_events: usize = events_per_contact(&lines, "updated", "to_crm")
        .values()
        .sum();
    assert_eq!(updated_events as u64, updated, "every update has its event");
    // Links point at contacts that link back, and the store reopens cleanly again.
    for (pid, id) in &links {
        let c = d.get(&format!("/api/v1/contacts/{id}")).await;
        assert!(c["links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["provider_id"] == pid.as_str()));
    }
}

#[tokio::test]
async fn sigkill_during_two_way_push_pushes_each_contact_exactly_once() {
    const USER: &str = "push@example.com";
    let sim = start_sim(vec![SeedUser::new(USER, 0, 42)], vec![]).await;
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text(
        "",
        &format!(
            "{}{}",
            providers_for(&sim),
            account_toml("g", "google", "all", "two-way")
        ),
    ));
    d.start().await;
    d.connect("g", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    d.wait_synced("g", None).await;
    // Slow provider: kills land while batches are in flight (the simulator still applies
    // a request whose client died, as a real server would).
    let (push_n, push_kills) = (env("CRASH_PUSH", 300), env("CRASH_PUSH_KILLS", 6));
    sim.set_faults(
        Provider::Google,
        FaultConfig {
            latency_ms: 150,
            ..Default::default()
        },
    );
    for i in 0..push_n {
        let (s, v) = d
            .api(reqwest::Method::POST, "/api/v1/contacts", Some(serde_json::json!({"first_name": format!("Push{i}"), "last_name": "Once", "emails": [format!("push{i}@example.org")]})))
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for _ in 0..push_kills {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..700))).await;
        d.kill().await;
        d.start().await;
    }
    d.wait_for("outbox drained", Duration::from_secs(120), || async {
        let a = d.account("g").await;
        a["outbox"]["pending"] == 0 && a["state"] == "idle"
    })
    .await;
    let a = d.sync_now("g").await;
    let people = sim
        .control(
            Provider::Google,
            "GET",
            &format!("/_sim/users/{USER}/contacts"),
            None,
        )
        .1;
    let pushed = people
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["person"]["names"][0]["familyName"] == "Once")
        .count();
    let n = push_n as usize;
    assert_eq!(pushed, n, "each CRM contact exactly once in the provider");
    let contacts = d.contacts().await;
    assert_eq!(contacts.len(), n, "no contact came back as a duplicate");
    assert_eq!(check_no_duplicates(&contacts, "g").len(), n);
    assert_eq!(
        today(&a, &["added", "to_provider"]),
        push_n,
        "counted once each"
    );
    assert_eq!(today(&a, &["added", "to_crm"]), 0);
    // One `added` to the provider per pushed contact, and no seq missing.
    let lines = audit_by_seq(&d).await;
    let pushed_events = events_per_contact(&lines, "added", "to_provider");
    assert_eq!(pushed_events.len(), n, "every push has its event");
    assert!(
        pushed_events.values().all(|k| *k == 1),
        "exactly one added event per pushed contact"
    );
    let adopted = d
        .audit_lines()
        .iter()
        .filter(|l| l["reason"] == "creation confirmed by the provider's listing")
        .count();
    eprintln!(
        "two-way push of {push_n}: {push_kills} kills, creations adopted after a kill: {adopted}"
    );
}
