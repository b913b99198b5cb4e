//! Two-way pushes to Google against the simulator, with the real binary (issue 13): the
//! etags Google requires, stale etags, and refusals that must not loop.

mod common;

use std::time::Duration;

use common::*;
use contact_sync::sim::{Provider, SeedUser, Sim};
use reqwest::Method;
use serde_json::{json, Value};

const G: &str = "gina@example.com";

async fn setup(contacts: usize) -> (Sim, TestDaemon) {
    let sim = start_sim(vec![SeedUser::new(G, contacts, 61)], vec![]).await;
    let mut d = TestDaemon::new();
    let accounts = account_toml("g", "google", "all", "two-way");
    d.write_config(&d.config_text("", &format!("{}{accounts}", providers_for(&sim))));
    d.start().await;
    d.connect("g", &sim.refresh_token(Provider::Google, G).unwrap())
        .await;
    d.wait_synced("g", None).await;
    (sim, d)
}

fn person(sim: &Sim, pid: &str) -> Option<Value> {
    sim.control(
        Provider::Google,
        "GET",
        &format!("/_sim/users/{G}/contacts"),
        None,
    )
    .1
    .as_array()
    .unwrap()
    .iter()
    .find(|p| p["person"]["resourceName"] == pid)
    .map(|p| p["person"].clone())
}

/// CRM contacts linked to the Google account, with their resource names.
async fn linked(d: &TestDaemon) -> Vec<(u64, String)> {
    d.contacts()
        .await
        .iter()
        .filter_map(|c| {
            let l = c["links"]
                .as_array()?
                .iter()
                .find(|l| l["account"] == "g")?;
            Some((c["id"].as_u64()?, l["provider_id"].as_str()?.to_string()))
        })
        .collect()
}

/// (status) of every write request of one kind the simulator saw.
fn writes(sim: &Sim, endpoint: &str) -> Vec<u16> {
    sim.requests(Provider::Google)
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with(endpoint))
        .map(|r| r.status)
        .collect()
}

fn reject(sim: &Sim, pid: &str, times: u32) {
    let (s, v) = sim.control(
        Provider::Google,
        "POST",
        &format!(
            "/_sim/users/{G}/contacts/{}/reject-updates",
            pid.trim_start_matches("people/")
        ),
        Some(json!({ "times": times })),
    );
    assert_eq!(s, 200, "{v}");
}

async fn patch(d: &TestDaemon, id: u64, body: Value) {
    let (s, v) = d
        .api(Method::PATCH, &format!("/api/v1/contacts/{id}"), Some(body))
        .await;
    assert_eq!(s, 200, "{v}");
}

async fn wait_outbox_settled(d: &TestDaemon) -> Value {
    d.wait_for("outbox settled", Duration::from_secs(60), || async {
        let a = d.account("g").await;
        a["outbox"]["pending"] == 0 && a["state"] == "idle"
    })
    .await;
    d.account("g").await
}

#[tokio::test]
async fn two_way_update_and_delete_of_a_listed_contact_carry_the_contact_source_etag() {
    let (sim, d) = setup(12).await;
    let (id, pid) = linked(&d)
        .await
        .into_iter()
        .next()
        .expect("a linked contact");
    let before = person(&sim, &pid).expect("in Google");
    assert_ne!(
        before["etag"], before["metadata"]["sources"][0]["etag"],
        "the simulator keeps Person.etag and the CONTACT source etag apart, as Google does"
    );
    sim.clear_requests(Provider::Google);
    patch(&d, id, json!({"job_title": "Etag Inspector"})).await;
    let a = wait_outbox_settled(&d).await;
    assert_eq!(today(&a, &["updated", "in_provider"]), 1, "{a}");
    let after = person(&sim, &pid).expect("still in Google");
    assert_eq!(after["organizations"][0]["title"], "Etag Inspector");
    assert_eq!(
        writes(&sim, "batchUpdateContacts"),
        vec![200],
        "accepted at the first try: the stored etag is the CONTACT source's"
    );

    // A second edit chains the etag Google returned with the first update.
    patch(&d, id, json!({"job_title": "Chief Etag Inspector"})).await;
    wait_outbox_settled(&d).await;
    assert_eq!(
        person(&sim, &pid).unwrap()["organizations"][0]["title"],
        "Chief Etag Inspector"
    );
    assert_eq!(writes(&sim, "batchUpdateContacts"), vec![200, 200]);

    let (s, _) = d
        .api(Method::DELETE, &format!("/api/v1/contacts/{id}"), None)
        .await;
    assert_eq!(s, 204);
    wait_outbox_settled(&d).await;
    assert!(person(&sim, &pid).is_none(), "deleted in Google");
    assert_eq!(writes(&sim, "batchDeleteContacts"), vec![200]);
    assert!(d.account("g").await["outbox"]["failed"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn stale_etag_is_fetched_merged_and_converges_in_two_rounds() {
    let (sim, d) = setup(12).await;
    let (id, pid) = linked(&d)
        .await
        .into_iter()
        .next()
        .expect("a linked contact");
    // Google refuses the next update as stale, as after another client's write.
    reject(&sim, &pid, 1);
    sim.clear_requests(Provider::Google);
    patch(&d, id, json!({"job_title": "Second Try"})).await;
    d.wait_for(
        "the update reached Google",
        Duration::from_secs(30),
        || async { person(&sim, &pid).unwrap()["organizations"][0]["title"] == "Second Try" },
    )
    .await;
    let a = wait_outbox_settled(&d).await;
    assert_eq!(
        writes(&sim, "batchUpdateContacts"),
        vec![400, 200],
        "refused once, then accepted with the fetched etag in the next round"
    );
    let gets = sim
        .requests(Provider::Google)
        .iter()
        .filter(|r| r.method == "GET" && r.path == format!("/v1/{pid}"))
        .count();
    assert_eq!(gets, 1, "the refused contact was fetched before the retry");
    assert!(a["outbox"]["failed"].as_array().unwrap().is_empty(), "{a}");
    assert_eq!(a["last_error"], Value::Null, "{a}");
    assert_eq!(today(&a, &["updated", "in_provider"]), 1);
}

#[tokio::test]
async fn repeated_rejection_fails_the_entry_once_with_its_reason_and_never_loops() {
    let (sim, d) = setup(12).await;
    let people = linked(&d).await;
    let (bad_id, bad_pid) = people[0].clone();
    let (good_id, good_pid) = people[1].clone();
    reject(&sim, &bad_pid, 1000);
    sim.clear_requests(Provider::Google);
    // Both edits share one update mask, so they travel in one batch.
    patch(&d, bad_id, json!({"job_title": "Never Lands"})).await;
    patch(&d, good_id, json!({"job_title": "Lands"})).await;
    d.wait_for("the entry failed", Duration::from_secs(30), || async {
        !d.account("g").await["outbox"]["failed"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    // A window of several poll intervals (1 s) after the failure: nothing more is sent.
    let sent_at_failure = writes(&sim, "batchUpdateContacts").len();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let sent = writes(&sim, "batchUpdateContacts");
    eprintln!("batchUpdateContacts answers over the whole test: {sent:?}");
    assert_eq!(
        sent.len(),
        sent_at_failure,
        "no retries after the failure: {sent:?}"
    );
    assert!(
        sent.len() <= 5,
        "a refused push is retried once, not every half second: {} calls ({sent:?})",
        sent.len()
    );
    assert!(
        sent.contains(&200),
        "the good contact went through: {sent:?}"
    );
    assert_eq!(
        person(&sim, &good_pid).unwrap()["organizations"][0]["title"],
        "Lands",
        "one refused contact does not hold back the rest of its batch"
    );
    assert_ne!(
        person(&sim, &bad_pid).unwrap()["organizations"][0]["title"],
        "Never Lands"
    );
    let a = d.account("g").await;
    let failed = a["outbox"]["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{a}");
    assert_eq!(failed[0]["crm_id"], bad_id);
    assert!(
        failed[0]["error"].as_str().unwrap().contains("stale etag"),
        "{a}"
    );
    let last_error = a["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("rejected") && last_error.contains("stale etag"),
        "status says why: {a}"
    );
    let rejected: Vec<Value> = d
        .audit_lines()
        .into_iter()
        .filter(|l| l["action"] == "rejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["crm_id"], bad_id);
    assert!(rejected[0]["reason"]
        .as_str()
        .unwrap()
        .contains("stale etag"));
}

#[tokio::test]
async fn crm_contact_linked_twice_in_one_account_sends_updates_and_deletes_to_every_link() {
    let (sim, d) = setup(0).await;
    // A duplicate in the address book: two Google contacts of one person.
    let mut pids = vec![];
    for _ in 0..2 {
        let (s, v) = sim.control(
            Provider::Google,
            "POST",
            &format!("/_sim/users/{G}/contacts"),
            Some(
                json!({"names": [{"givenName": "Dupli", "familyName": "Cate"}],
                        "emailAddresses": [{"value": "dupli@example.org"}]}),
            ),
        );
        assert_eq!(s, 201, "{v}");
        pids.push(v["person"]["resourceName"].as_str().unwrap().to_string());
    }
    d.sync_now("g").await;
    let crm: Vec<Value> = d
        .contacts()
        .await
        .into_iter()
        .filter(|c| c["first_name"] == "Dupli")
        .collect();
    assert_eq!(crm.len(), 1, "one CRM contact for both");
    assert_eq!(crm[0]["links"].as_array().unwrap().len(), 2, "{}", crm[0]);
    let id = crm[0]["id"].as_u64().unwrap();

    patch(&d, id, json!({"job_title": "Twice"})).await;
    let a = wait_outbox_settled(&d).await;
    for pid in &pids {
        assert_eq!(
            person(&sim, pid).unwrap()["organizations"][0]["title"],
            "Twice",
            "{pid} got the update"
        );
    }
    assert_eq!(today(&a, &["updated", "in_provider"]), 2);

    let (s, _) = d
        .api(Method::DELETE, &format!("/api/v1/contacts/{id}"), None)
        .await;
    assert_eq!(s, 204);
    wait_outbox_settled(&d).await;
    for pid in &pids {
        assert!(person(&sim, pid).is_none(), "{pid} deleted in Google");
    }
    let a = d.sync_now("g").await;
    assert_eq!(a["linked"], 0, "{a}");
    assert!(d
        .contacts()
        .await
        .iter()
        .all(|c| c["first_name"] != "Dupli"));
}

#[tokio::test]
async fn reidentified_contact_gets_crm_updates_under_its_new_resource_name() {
    let (sim, d) = setup(6).await;
    let (id, old_pid) = linked(&d)
        .await
        .into_iter()
        .next()
        .expect("a linked contact");
    let (s, v) = sim.control(
        Provider::Google,
        "POST",
        &format!(
            "/_sim/users/{G}/contacts/{}/reidentify",
            old_pid.trim_start_matches("people/")
        ),
        None,
    );
    assert_eq!(s, 200, "{v}");
    let new_pid = v["resourceName"].as_str().unwrap().to_string();
    d.sync_now("g").await;
    patch(&d, id, json!({"job_title": "Renamed"})).await;
    let a = wait_outbox_settled(&d).await;
    assert_eq!(
        person(&sim, &new_pid).unwrap()["organizations"][0]["title"],
        "Renamed"
    );
    assert_eq!(today(&a, &["deleted", "from_provider"]), 0, "{a}");
    assert!(a["outbox"]["failed"].as_array().unwrap().is_empty(), "{a}");
}
