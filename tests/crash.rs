//! Crash safety (SPEC §8): SIGKILL the daemon at random moments of an initial sync, restart
//! it, and find exactly the contacts, links and metric counts of an uninterrupted run.

mod common;

use std::time::Duration;

use common::*;
use contact_sync::sim::{FaultConfig, Provider, SeedUser};
use rand::{Rng, SeedableRng};

#[tokio::test]
async fn sigkill_during_initial_sync_loses_nothing_and_duplicates_nothing() {
    const USER: &str = "crash@example.com";
    let sim = start_sim(vec![SeedUser::new(USER, 1500, 41)], vec![]).await;
    let (eligible, skipped) = expected(&google_changes(&sim, USER));
    // A little latency so that kills land in fetching as well as in committing.
    sim.set_faults(
        Provider::Google,
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
            account_toml("g", "google", "all", "one-way")
        ),
    ));
    d.start().await;
    d.connect("g", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut kills = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..400))).await;
        let done = d.account("g").await["last_sync"].is_string();
        d.kill().await;
        kills += 1;
        d.start().await;
        if done {
            break;
        }
    }
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
