//! Bad provider data end to end (SPEC §8): the real binary against the simulator while every
//! page it gets is cut off half-way. The accounts go to `error` with a clear message, the CRM
//! keeps every contact, the API keeps answering, and once the pages are whole again (with
//! the cursors expired meanwhile, so the recovery is a full listing) the CRM converges to
//! what a clean run gives.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use contact_sync::sim::{FaultConfig, FaultKind, Provider, SeedUser};

const GUSER: &str = "trunc-g@example.com";
const OUSER: &str = "trunc-o@example.com";

fn ids(contacts: &[serde_json::Value]) -> BTreeSet<u64> {
    contacts.iter().filter_map(|c| c["id"].as_u64()).collect()
}

#[tokio::test]
async fn truncated_pages_put_accounts_in_error_lose_nothing_and_converge_afterwards() {
    let sim = start_sim(
        vec![SeedUser::new(GUSER, 300, 11)],
        vec![SeedUser::new(OUSER, 200, 12)],
    )
    .await;
    let (g_eligible, _) = expected(&google_changes(&sim, GUSER));
    let (o_eligible, _) = expected(&graph_changes(&sim, OUSER));
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text(
        "",
        &format!(
            "{}{}{}",
            providers_for(&sim),
            account_toml("g", "google", "all", "one-way"),
            account_toml("o", "outlook", "all", "one-way"),
        ),
    ));
    d.start().await;
    d.connect("g", &sim.refresh_token(Provider::Google, GUSER).unwrap())
        .await;
    d.connect("o", &sim.refresh_token(Provider::Outlook, OUSER).unwrap())
        .await;
    d.wait_synced("g", None).await;
    d.wait_synced("o", None).await;
    // A contact that exists only in the CRM.
    let (s, own) = d
        .api(
            reqwest::Method::POST,
            "/api/v1/contacts",
            Some(serde_json::json!({"first_name": "Only", "last_name": "InCrm", "emails": ["only@crm.example"]})),
        )
        .await;
    assert_eq!(s, 201, "{own}");
    let before = d.contacts().await;
    let before_ids = ids(&before);

    // Every API answer is cut in half from now on, and the cursors expire meanwhile.
    for p in [Provider::Google, Provider::Outlook] {
        sim.set_faults(
            p,
            FaultConfig {
                probability: 1.0,
                kinds: vec![FaultKind::Truncate],
                ..Default::default()
            },
        );
    }
    for (p, u) in [(Provider::Google, GUSER), (Provider::Outlook, OUSER)] {
        let (s, v) = sim.control(p, "POST", &format!("/_sim/users/{u}/expire-cursors"), None);
        assert_eq!(s, 200, "{v}");
    }
    let (s, _) = d.admin(reqwest::Method::POST, "/api/v1/sync", None).await;
    assert_eq!(s, 202);
    for id in ["g", "o"] {
        let a = d.wait_state(id, "error").await;
        let msg = a["last_error"].as_str().unwrap_or_default().to_string();
        // The page (or, after a restart, the token answer) was cut off: the message says so.
        assert!(
            ["cut off", "malformed", "unreadable", "end of file", "body"]
                .iter()
                .any(|w| msg.contains(w)),
            "account {id}: unclear last_error {msg:?}"
        );
        assert!(
            !msg.contains("access_token") && !msg.contains("deltatoken"),
            "{msg}"
        );
    }
    // Let the supervisor retry a few times under the fault; the API keeps answering.
    for _ in 0..20 {
        let r = d
            .http
            .get(format!("{}/healthz", d.base()))
            .send()
            .await
            .expect("healthz answers");
        assert!(r.status().is_success());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Listing pages themselves were cut off, not just token answers.
    let cut = |p: Provider, part: &str| {
        sim.requests(p)
            .iter()
            .filter(|e| e.path.contains(part) && e.fault.as_deref() == Some("truncate"))
            .count()
    };
    assert!(cut(Provider::Google, "/connections") > 0);
    assert!(cut(Provider::Outlook, "/delta") + cut(Provider::Outlook, "contactFolders") > 0);
    let during = d.contacts().await;
    assert_eq!(ids(&during), before_ids, "no CRM contact deleted or added");
    assert_eq!(during, before, "no CRM contact changed");

    // Whole pages again: both accounts converge.
    for p in [Provider::Google, Provider::Outlook] {
        sim.set_faults(p, FaultConfig::default());
    }
    for id in ["g", "o"] {
        d.wait_for(
            "a clean round after the fault",
            Duration::from_secs(90),
            || async {
                let a = d.account(id).await;
                a["state"] == "idle" && a["last_error"].is_null()
            },
        )
        .await;
    }
    let after = d.contacts().await;
    let g_links = check_no_duplicates(&after, "g");
    let o_links = check_no_duplicates(&after, "o");
    assert_eq!(g_links.len(), g_eligible.len());
    assert_eq!(o_links.len(), o_eligible.len());
    assert!(
        after.iter().any(|c| c["id"] == own["id"]),
        "the CRM-only contact is kept"
    );
    assert_eq!(
        ids(&after),
        before_ids,
        "the resync created and deleted nothing"
    );
}
