//! Two-way sync end to end (issue 7): CRM changes reach Google and Outlook exactly once,
//! nothing echoes back, conflicts resolve by SPEC §4, and a crash loses no push.

mod common;

use std::time::Duration;

use common::*;
use contact_sync::sim::{Provider, SeedUser, Sim};
use reqwest::Method;
use serde_json::{json, Value};

const G: &str = "gary@example.com";
const O: &str = "olive@example.com";

async fn setup(google: usize, outlook: usize) -> (Sim, TestDaemon) {
    let sim = start_sim(
        vec![SeedUser::new(G, google, 51)],
        vec![SeedUser::new(O, outlook, 52)],
    )
    .await;
    let mut d = TestDaemon::new();
    let accounts = format!(
        "{}{}",
        account_toml("g", "google", "all", "two-way"),
        account_toml("o", "outlook", "all", "two-way")
    );
    d.write_config(&d.config_text("", &format!("{}{accounts}", providers_for(&sim))));
    d.start().await;
    d.connect("g", &sim.refresh_token(Provider::Google, G).unwrap())
        .await;
    d.connect("o", &sim.refresh_token(Provider::Outlook, O).unwrap())
        .await;
    d.wait_synced("g", None).await;
    d.wait_synced("o", None).await;
    (sim, d)
}

fn google_people(sim: &Sim) -> Vec<Value> {
    sim.control(
        Provider::Google,
        "GET",
        &format!("/_sim/users/{G}/contacts"),
        None,
    )
    .1
    .as_array()
    .unwrap()
    .clone()
}

fn graph_contacts(sim: &Sim) -> Vec<Value> {
    sim.control(
        Provider::Outlook,
        "GET",
        &format!("/_sim/users/{O}/contacts"),
        None,
    )
    .1
    .as_array()
    .unwrap()
    .clone()
}

fn google_named<'a>(people: &'a [Value], given: &str) -> Vec<&'a Value> {
    people
        .iter()
        .filter(|p| p["person"]["names"][0]["givenName"] == given)
        .collect()
}

fn graph_named<'a>(contacts: &'a [Value], given: &str) -> Vec<&'a Value> {
    contacts
        .iter()
        .filter(|c| c["contact"]["givenName"] == given)
        .collect()
}

async fn wait_outbox_empty(d: &TestDaemon, id: &str) -> Value {
    d.wait_for("outbox drained", Duration::from_secs(60), || async {
        let a = d.account(id).await;
        a["outbox"]["pending"] == 0 && a["state"] == "idle"
    })
    .await;
    d.account(id).await
}

#[tokio::test]
async fn two_way_create_update_delete_reach_the_provider_exactly_once_without_echo() {
    let (sim, d) = setup(30, 30).await;
    let crm_before = d.contacts().await.len();
    let (s, c) = d
        .api(
            Method::POST,
            "/api/v1/contacts",
            Some(json!({
                "first_name": "Twoway", "last_name": "Tester", "emails": ["twoway@example.org"],
                "phones": ["+1 201 555 0199"], "company_name": "Echo Ltd", "job_title": "QA"
            })),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let id = c["id"].as_u64().unwrap();
    let g = wait_outbox_empty(&d, "g").await;
    let o = wait_outbox_empty(&d, "o").await;
    let people = google_people(&sim);
    let gp = google_named(&people, "Twoway");
    assert_eq!(gp.len(), 1, "created in Google exactly once");
    assert_eq!(gp[0]["person"]["organizations"][0]["name"], "Echo Ltd");
    let oc = graph_contacts(&sim);
    assert_eq!(
        graph_named(&oc, "Twoway").len(),
        1,
        "created in Outlook exactly once"
    );
    assert_eq!(today(&g, &["added", "to_provider"]), 1);
    assert_eq!(today(&o, &["added", "to_provider"]), 1);
    let linked = d.get(&format!("/api/v1/contacts/{id}")).await;
    assert_eq!(linked["links"].as_array().unwrap().len(), 2, "{linked}");

    // The next polls write nothing back: no CRM change, no metric, no audit line.
    let audit_before = d.audit_lines().len();
    let updated_before = today(&g, &["updated", "in_crm"]);
    let g = d.sync_now("g").await;
    d.sync_now("o").await;
    let g = if g["state"] == "idle" {
        d.sync_now("g").await
    } else {
        g
    };
    assert_eq!(d.contacts().await.len(), crm_before + 1);
    assert_eq!(today(&g, &["updated", "in_crm"]), updated_before);
    assert_eq!(
        today(&g, &["added", "to_crm"]),
        today(&d.account("g").await, &["added", "to_crm"])
    );
    let new_lines: Vec<Value> = d.audit_lines().into_iter().skip(audit_before).collect();
    assert!(
        new_lines.iter().all(|l| l["crm_id"] != id),
        "echo audited: {new_lines:?}"
    );
    assert_eq!(
        d.get(&format!("/api/v1/contacts/{id}")).await["updated_at"],
        linked["updated_at"]
    );

    // Update in the CRM: only the changed field goes out.
    let (s, _) = d
        .api(
            Method::PATCH,
            &format!("/api/v1/contacts/{id}"),
            Some(json!({"job_title": "Lead QA"})),
        )
        .await;
    assert_eq!(s, 200);
    let g = wait_outbox_empty(&d, "g").await;
    let o = wait_outbox_empty(&d, "o").await;
    let people = google_people(&sim);
    assert_eq!(
        google_named(&people, "Twoway")[0]["person"]["organizations"][0]["title"],
        "Lead QA"
    );
    let oc = graph_contacts(&sim);
    assert_eq!(
        graph_named(&oc, "Twoway")[0]["contact"]["jobTitle"],
        "Lead QA"
    );
    assert_eq!(today(&g, &["updated", "in_provider"]), 1);
    assert_eq!(today(&o, &["updated", "in_provider"]), 1);
    let g2 = d.sync_now("g").await;
    assert_eq!(
        today(&g2, &["updated", "in_crm"]),
        today(&g, &["updated", "in_crm"]),
        "no echo"
    );

    // Delete in the CRM: deleted in both providers.
    let (s, _) = d
        .api(Method::DELETE, &format!("/api/v1/contacts/{id}"), None)
        .await;
    assert_eq!(s, 204);
    wait_outbox_empty(&d, "g").await;
    wait_outbox_empty(&d, "o").await;
    assert!(google_named(&google_people(&sim), "Twoway").is_empty());
    assert!(graph_named(&graph_contacts(&sim), "Twoway").is_empty());
    let g = d.sync_now("g").await;
    assert_eq!(
        today(&g, &["deleted", "from_provider"]),
        0,
        "our own deletion is not a provider deletion"
    );
    assert!(
        d.contacts()
            .await
            .iter()
            .all(|c| c["first_name"] != "Twoway"),
        "not re-created"
    );
}

#[tokio::test]
async fn two_way_simultaneous_edit_takes_the_provider_value_and_audits_a_conflict() {
    let (sim, d) = setup(20, 0).await;
    let contacts = d.contacts().await;
    let c = contacts
        .iter()
        .find(|c| {
            c["links"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["account"] == "g")
        })
        .unwrap();
    let pid = c["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["account"] == "g")
        .unwrap()["provider_id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = c["id"].as_u64().unwrap();
    // The provider changes the job title, then the CRM changes it too, before any sync.
    let (s, v) = sim.control(
        Provider::Google,
        "PATCH",
        &format!(
            "/_sim/users/{G}/contacts/{}",
            pid.trim_start_matches("people/")
        ),
        Some(json!({"organizations": [{"name": "Prov Inc", "title": "Provider Title"}]})),
    );
    assert_eq!(s, 200, "{v}");
    let (s, _) = d
        .api(
            Method::PATCH,
            &format!("/api/v1/contacts/{id}"),
            Some(json!({"job_title": "CRM Title"})),
        )
        .await;
    assert_eq!(s, 200);
    wait_outbox_empty(&d, "g").await;
    d.sync_now("g").await;
    let after = d.get(&format!("/api/v1/contacts/{id}")).await;
    assert_eq!(
        after["job_title"], "Provider Title",
        "the provider's value wins a conflict"
    );
    let conflict = d
        .audit_lines()
        .into_iter()
        .find(|l| l["action"] == "conflict" && l["crm_id"] == id);
    let conflict = conflict.expect("a conflict audit event");
    assert_eq!(conflict["fields"], json!(["job_title"]));
    let people = google_people(&sim);
    let p = people
        .iter()
        .find(|p| p["person"]["resourceName"] == pid.as_str())
        .unwrap();
    assert_eq!(p["person"]["organizations"][0]["title"], "Provider Title");
}

#[tokio::test]
async fn two_way_crash_after_crm_write_still_pushes_once() {
    let (sim, mut d) = setup(10, 10).await;
    let (s, _) = d
        .api(Method::POST, "/api/v1/contacts", Some(json!({"first_name": "Crashy", "last_name": "McCrash", "emails": ["crashy@example.org"]})))
        .await;
    assert_eq!(s, 201);
    // Killed before the debounced push could run.
    d.kill().await;
    assert!(
        google_named(&google_people(&sim), "Crashy").is_empty(),
        "not pushed before the kill"
    );
    d.start().await;
    wait_outbox_empty(&d, "g").await;
    wait_outbox_empty(&d, "o").await;
    d.sync_now("g").await;
    d.sync_now("o").await;
    assert_eq!(google_named(&google_people(&sim), "Crashy").len(), 1);
    assert_eq!(graph_named(&graph_contacts(&sim), "Crashy").len(), 1);
    let crm: Vec<Value> = d
        .contacts()
        .await
        .into_iter()
        .filter(|c| c["first_name"] == "Crashy")
        .collect();
    assert_eq!(crm.len(), 1);
    assert_eq!(crm[0]["links"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn two_way_thousand_creates_use_batch_endpoints() {
    let (sim, d) = setup(0, 0).await;
    sim.clear_requests(Provider::Google);
    sim.clear_requests(Provider::Outlook);
    let started = std::time::Instant::now();
    for i in 0..1000 {
        let (s, v) = d
            .api(Method::POST, "/api/v1/contacts", Some(json!({"first_name": format!("Bulk{i}"), "last_name": "Load", "emails": [format!("bulk{i}@example.org")]})))
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let g = wait_outbox_empty(&d, "g").await;
    let o = wait_outbox_empty(&d, "o").await;
    let elapsed = started.elapsed();
    assert_eq!(today(&g, &["added", "to_provider"]), 1000);
    assert_eq!(today(&o, &["added", "to_provider"]), 1000);
    assert_eq!(google_people(&sim).len(), 1000);
    assert_eq!(graph_contacts(&sim).len(), 1000);
    let google_writes = sim
        .requests(Provider::Google)
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("batchCreateContacts"))
        .count();
    let graph_writes = sim
        .requests(Provider::Outlook)
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("$batch"))
        .count();
    eprintln!("1000 CRM creates: {google_writes} Google requests, {graph_writes} Graph requests, {elapsed:?}");
    assert!(google_writes <= 10, "{google_writes} Google write requests");
    assert!(graph_writes <= 60, "{graph_writes} Graph write requests");
}
