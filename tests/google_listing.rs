//! Google listings the provider's documentation allows and our reading must survive
//! (issue 13), with the real binary against the simulator: a person that breaks the schema,
//! a full listing shorter than its `totalItems`, and re-identified contacts.

mod common;

use common::*;
use contact_sync::sim::{Provider, SeedUser, Sim};
use serde_json::{json, Value};

const G: &str = "lena@example.com";

async fn start(sim: &Sim) -> TestDaemon {
    let mut d = TestDaemon::new();
    let accounts = account_toml("g", "google", "all", "one-way");
    d.write_config(&d.config_text("", &format!("{}{accounts}", providers_for(sim))));
    d.start().await;
    d.connect("g", &sim.refresh_token(Provider::Google, G).unwrap())
        .await;
    d
}

fn control(sim: &Sim, method: &str, path: &str, body: Option<Value>) -> Value {
    let (s, v) = sim.control(
        Provider::Google,
        method,
        &format!("/_sim/users/{G}{path}"),
        body,
    );
    assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
    v
}

fn expire_cursors(sim: &Sim) {
    control(sim, "POST", "/expire-cursors", None);
}

/// Provider id → CRM id of the account's links.
async fn links(d: &TestDaemon) -> std::collections::HashMap<String, u64> {
    check_no_duplicates(&d.contacts().await, "g")
}

fn unreadable_audits(d: &TestDaemon) -> usize {
    d.audit_lines()
        .iter()
        .filter(|l| l["action"] == "skipped" && l["reason"] == "unreadable")
        .count()
}

#[tokio::test]
async fn unreadable_person_is_skipped_as_unreadable_and_the_rest_of_its_page_syncs() {
    let sim = start_sim(vec![SeedUser::new(G, 8, 71)], vec![]).await;
    // A person that breaks the schema, next to the well-formed ones of the same page.
    control(
        &sim,
        "POST",
        "/malformed",
        Some(json!({"person": {
            "resourceName": "people/c9000000000000000001",
            "etag": "%EgBroken1",
            "metadata": {"sources": [{"type": "CONTACT", "id": "7d", "etag": "#broken1"}]},
            "names": "Broken Person",
            "emailAddresses": [{"value": 42}],
        }})),
    );
    let expected_ids = expected(&google_changes(&sim, G)).0;
    let d = start(&sim).await;
    let a = d.wait_synced("g", None).await;
    let linked = links(&d).await;
    for pid in &expected_ids {
        assert!(
            linked.contains_key(pid),
            "{pid} synced despite its broken neighbour"
        );
    }
    assert!(!linked.contains_key("people/c9000000000000000001"));
    assert_eq!(today(&a, &["skipped", "unreadable"]), 1, "{a}");
    assert_eq!(a["last_error"], Value::Null);

    // Incremental page: a new well-formed contact next to another broken person, this one
    // without a readable resource name or etag.
    control(
        &sim,
        "POST",
        "/contacts",
        Some(
            json!({"names": [{"givenName": "Wella", "familyName": "Formed"}],
                    "emailAddresses": [{"value": "wella@example.org"}]}),
        ),
    );
    control(
        &sim,
        "POST",
        "/malformed",
        Some(json!({"person": {"resourceName": 7, "names": [{"givenName": ["x"]}]}})),
    );
    let a = d.sync_now("g").await;
    assert!(
        d.contacts()
            .await
            .iter()
            .any(|c| c["first_name"] == "Wella"),
        "the well-formed person of the page synced"
    );
    assert_eq!(today(&a, &["skipped", "unreadable"]), 2, "{a}");
    assert_eq!(a["state"], "idle");

    // Counted and audited once per version: neither the next round nor a full listing that
    // shows both again counts them twice.
    d.sync_now("g").await;
    expire_cursors(&sim);
    let a = d.sync_now("g").await;
    assert_eq!(today(&a, &["skipped", "unreadable"]), 2, "{a}");
    assert_eq!(unreadable_audits(&d), 2);
    assert_eq!(
        today(&a, &["deleted", "from_provider"]),
        0,
        "nothing was deleted around the broken people"
    );
    assert_eq!(links(&d).await.len(), linked.len() + 1);
}

#[tokio::test]
async fn full_listing_short_of_total_items_infers_no_deletions() {
    let sim = start_sim(vec![SeedUser::new(G, 12, 72)], vec![]).await;
    let d = start(&sim).await;
    d.wait_synced("g", None).await;
    let before = links(&d).await;
    let mut pids: Vec<String> = before.keys().cloned().collect();
    pids.sort();
    assert!(pids.len() >= 3, "{pids:?}");

    // Control: a contact deleted while the sync token expired is found by the full listing.
    control(
        &sim,
        "DELETE",
        &format!("/contacts/{}", pids[0].trim_start_matches("people/")),
        None,
    );
    expire_cursors(&sim);
    let a = d.sync_now("g").await;
    assert_eq!(today(&a, &["deleted", "from_provider"]), 1, "{a}");

    // A full listing that leaves a person out while totalItems still counts it is not
    // complete: nobody is deleted, not even a contact really deleted meanwhile.
    control(
        &sim,
        "POST",
        &format!(
            "/contacts/{}/hide-from-listing",
            pids[1].trim_start_matches("people/")
        ),
        None,
    );
    control(
        &sim,
        "DELETE",
        &format!("/contacts/{}", pids[2].trim_start_matches("people/")),
        None,
    );
    expire_cursors(&sim);
    let a = d.sync_now("g").await;
    assert_eq!(today(&a, &["deleted", "from_provider"]), 1, "{a}");
    let after = links(&d).await;
    assert!(
        after.contains_key(&pids[1]),
        "the unlisted person keeps its link"
    );
    assert!(after.contains_key(&pids[2]));
    assert_eq!(after.len(), before.len() - 1);
    assert!(d.log().contains("fewer people than totalItems"));
}

#[tokio::test]
async fn reidentified_contact_is_relinked_by_its_previous_resource_name_not_deleted_and_matched() {
    let sim = start_sim(vec![SeedUser::new(G, 10, 73)], vec![]).await;
    let d = start(&sim).await;
    d.wait_synced("g", None).await;
    let before = links(&d).await;
    let crm_count = d.contacts().await.len();
    let (old_pid, crm_id) = before
        .iter()
        .min()
        .map(|(p, c)| (p.clone(), *c))
        .expect("a linked contact");
    let v = control(
        &sim,
        "POST",
        &format!(
            "/contacts/{}/reidentify",
            old_pid.trim_start_matches("people/")
        ),
        None,
    );
    let new_pid = v["resourceName"].as_str().unwrap().to_string();
    assert_ne!(new_pid, old_pid);
    let audit_before = d.audit_lines().len();
    let a = d.sync_now("g").await;
    let after = links(&d).await;
    assert_eq!(
        after.get(&new_pid),
        Some(&crm_id),
        "the link moved to the new name"
    );
    assert!(!after.contains_key(&old_pid));
    assert_eq!(after.len(), before.len());
    assert_eq!(
        d.contacts().await.len(),
        crm_count,
        "no contact deleted or created"
    );
    assert_eq!(today(&a, &["deleted", "from_provider"]), 0, "{a}");
    assert_eq!(today(&a, &["added", "to_crm"]), before.len() as u64, "{a}");
    let c = d.get(&format!("/api/v1/contacts/{crm_id}")).await;
    assert_eq!(
        c["links"],
        json!([{"account": "g", "provider_id": new_pid}])
    );
    let new_lines: Vec<Value> = d.audit_lines().into_iter().skip(audit_before).collect();
    assert!(
        new_lines
            .iter()
            .all(|l| l["action"] != "deleted" && l["action"] != "added"),
        "{new_lines:?}"
    );
}
