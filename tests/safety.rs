//! Deletion safety (issue 9): the deletion guard, tombstones and restore.

mod common;

use std::time::Duration;

use common::*;
use contact_sync::sim::{Provider, SeedUser};
use reqwest::Method;
use serde_json::json;

const USER: &str = "del@example.com";

async fn cli(d: &TestDaemon, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(bin())
        .arg("--config")
        .arg(d.config_path())
        .args(args)
        .output()
        .await
        .unwrap()
}

fn delete_in_google(sim: &contact_sync::sim::Sim, pids: &[String]) {
    for p in pids {
        let (s, v) = sim.control(
            Provider::Google,
            "DELETE",
            &format!(
                "/_sim/users/{USER}/contacts/{}",
                p.trim_start_matches("people/")
            ),
            None,
        );
        assert!(s < 300, "{v}");
    }
}

#[tokio::test]
async fn deletion_guard_holds_mass_deletions_until_approved_or_threshold_raised() {
    let sim = start_sim(vec![SeedUser::new(USER, 160, 61)], vec![]).await;
    let mut d = TestDaemon::new();
    let rest = format!(
        "{}{}",
        providers_for(&sim),
        account_toml("g", "google", "all", "one-way")
    );
    d.write_config(&d.config_text("", &rest));
    d.start().await;
    d.connect("g", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    d.wait_synced("g", None).await;
    let contacts = d.contacts().await;
    let links: Vec<String> = check_no_duplicates(&contacts, "g")
        .keys()
        .cloned()
        .collect();
    assert!(links.len() > 120);

    // 55 deletions: more than 10 % and at least 50 — held.
    delete_in_google(&sim, &links[..55]);
    d.admin(Method::POST, "/api/v1/sync", None).await;
    let a = d.wait_state("g", "deletion_held").await;
    assert!(a["last_error"].as_str().unwrap().contains("approve"), "{a}");
    assert_eq!(
        d.contacts().await.len(),
        contacts.len(),
        "nothing deleted while held"
    );
    assert!(d
        .audit_lines()
        .iter()
        .any(|l| l["action"] == "deletion_held"));

    // Raising the threshold releases it.
    d.write_config(&d.config_text("deletion_guard_share = 0.5", &rest));
    d.wait_for("released by config", Duration::from_secs(30), || async {
        let a = d.account("g").await;
        a["state"] == "idle" && a["today"]["deleted"]["from_provider"].as_u64().unwrap_or(0) >= 50
    })
    .await;
    let after = d.contacts().await;
    assert!(after.len() <= contacts.len() - 50);

    // Another mass deletion with the default threshold: held, then `approve` applies it.
    d.write_config(&d.config_text("", &rest));
    d.wait_for("reloaded", Duration::from_secs(10), || async {
        d.get("/api/v1/accounts").await["config_error"].is_null()
    })
    .await;
    let links: Vec<String> = check_no_duplicates(&after, "g").keys().cloned().collect();
    let n = (links.len() / 2).max(50).min(links.len());
    delete_in_google(&sim, &links[..n]);
    d.admin(Method::POST, "/api/v1/sync", None).await;
    d.wait_state("g", "deletion_held").await;
    let out = cli(&d, &["approve", "g"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_synced("g", None).await;
    d.wait_for(
        "approved deletions applied",
        Duration::from_secs(30),
        || async { d.contacts().await.len() <= after.len() - n },
    )
    .await;
}

#[tokio::test]
async fn deleted_contacts_are_tombstoned_and_restore_brings_them_back_with_links() {
    let sim = start_sim(
        vec![SeedUser::new(USER, 30, 62)],
        vec![SeedUser::new("tw@example.com", 10, 63)],
    )
    .await;
    let mut d = TestDaemon::new();
    let rest = format!(
        "{}{}{}",
        providers_for(&sim),
        account_toml("g", "google", "all", "one-way"),
        account_toml("o", "outlook", "all", "two-way")
    );
    d.write_config(&d.config_text("", &rest));
    d.start().await;
    d.connect("g", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    d.connect(
        "o",
        &sim.refresh_token(Provider::Outlook, "tw@example.com")
            .unwrap(),
    )
    .await;
    d.wait_synced("g", None).await;
    d.wait_synced("o", None).await;

    // One-way: a CRM deletion keeps the link; restore brings the contact and its link back.
    let contacts = d.contacts().await;
    let c = contacts
        .iter()
        .find(|c| {
            c["links"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["account"] == "g")
        })
        .unwrap()
        .clone();
    let id = c["id"].as_u64().unwrap();
    let (s, _) = d
        .api(Method::DELETE, &format!("/api/v1/contacts/{id}"), None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = d
        .api(Method::GET, &format!("/api/v1/contacts/{id}"), None)
        .await;
    assert_eq!(s, 404);
    let out = cli(&d, &["restore", &id.to_string()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = d.get(&format!("/api/v1/contacts/{id}")).await;
    assert_eq!(back["emails"], c["emails"]);
    assert_eq!(back["links"], c["links"]);
    assert!(d
        .audit_lines()
        .iter()
        .any(|l| l["action"] == "restored" && l["crm_id"] == id));

    // Two-way: the deletion reached Outlook; restore creates the contact there again.
    let o = contacts
        .iter()
        .find(|c| {
            c["links"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["account"] == "o")
        })
        .unwrap()
        .clone();
    let oid = o["id"].as_u64().unwrap();
    let given = o["first_name"].as_str().unwrap().to_string();
    let count = |sim: &contact_sync::sim::Sim| {
        sim.control(
            Provider::Outlook,
            "GET",
            "/_sim/users/tw@example.com/contacts",
            None,
        )
        .1
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["contact"]["givenName"] == given.as_str())
        .count()
    };
    let before = count(&sim);
    let (s, _) = d
        .api(Method::DELETE, &format!("/api/v1/contacts/{oid}"), None)
        .await;
    assert_eq!(s, 204);
    d.wait_for("deleted in Outlook", Duration::from_secs(30), || async {
        count(&sim) == before - 1
    })
    .await;
    let (s, restored) = d
        .admin(
            Method::POST,
            &format!("/api/v1/contacts/{oid}/restore"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{restored}");
    d.wait_for("re-created in Outlook", Duration::from_secs(30), || async {
        count(&sim) == before
    })
    .await;
    d.wait_for("linked again", Duration::from_secs(30), || async {
        d.get(&format!("/api/v1/contacts/{oid}")).await["links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["account"] == "o")
    })
    .await;
    let (s, _) = d
        .admin(Method::POST, "/api/v1/contacts/987654/restore", None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn tombstones_expire_after_the_retention_period() {
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text("tombstone_retention = \"1s\"", ""));
    d.start().await;
    let (_, c) = d
        .api(
            Method::POST,
            "/api/v1/contacts",
            Some(json!({"first_name": "Gone", "emails": ["gone@x.org"]})),
        )
        .await;
    let id = c["id"].as_u64().unwrap();
    d.api(Method::DELETE, &format!("/api/v1/contacts/{id}"), None)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    d.stop().await;
    d.start().await;
    let (s, _) = d
        .admin(
            Method::POST,
            &format!("/api/v1/contacts/{id}/restore"),
            None,
        )
        .await;
    assert_eq!(s, 404, "purged after the retention period");
}
