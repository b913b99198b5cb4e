//! Two-way batch writes against the simulator: chunk sizes, answer order, etags, retries
//! one by one after a whole batch is refused, and what may be sent again.

use contact_sync::config::Group;
use contact_sync::model::{field, Fields};
use contact_sync::providers::google::UpdateOutcome;
use contact_sync::providers::ProviderError;
use contact_sync::sim::{Provider, Script};
use serde_json::{json, Value};

use crate::*;

/// CRM fields with every synced field set (a recorded fixture).
fn full_fields() -> Fields {
    serde_json::from_str(include_str!(
        "../../src/providers/google/tests/fixtures/ada_fields.json"
    ))
    .expect("fixture")
}

/// Alice's contacts as the control API shows them: `(resource name, person)`, in order.
fn contacts(sim: &contact_sync::sim::Sim) -> Vec<(String, Value)> {
    let (_, v) = sim.control(
        Provider::Google,
        "GET",
        &format!("/_sim/users/{ALICE}/contacts"),
        None,
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                format!("people/{}", c["id"].as_str().unwrap()),
                c["person"].clone(),
            )
        })
        .collect()
}

fn source_etag(person: &Value) -> String {
    person["metadata"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"] == "CONTACT")
        .and_then(|s| s["etag"].as_str())
        .unwrap()
        .to_string()
}

fn writes(sim: &contact_sync::sim::Sim, path: &str) -> Vec<contact_sync::sim::LogEntry> {
    api_requests(sim)
        .into_iter()
        .filter(|r| r.path == path)
        .collect()
}

#[tokio::test]
async fn batch_create_sends_at_most_200_per_call_and_answers_in_input_order() {
    let sim = empty_book().await;
    let gc = client(&sim, Group::All);
    let items: Vec<(u64, Fields, bool)> = (0..450u64)
        .map(|i| {
            let mut f = full_fields();
            f.first_name = format!("P{i}");
            (1000 + i, f, i == 7)
        })
        .collect();
    let out = gc.batch_create(&items).await;
    assert_eq!(out.len(), 450);
    let made = contacts(&sim);
    assert_eq!(made.len(), 450);
    for (i, c) in out.iter().enumerate() {
        assert_eq!(c.crm_id, 1000 + i as u64);
        let (id, person) = made
            .iter()
            .find(|(_, p)| p["names"][0]["givenName"] == format!("P{i}"))
            .expect("created");
        assert_ne!(person["etag"].as_str(), Some(source_etag(person).as_str()));
        assert_eq!(
            c.result,
            Ok((id.clone(), Some(source_etag(person)))),
            "the CONTACT source's etag is kept, not the person's"
        );
    }
    let reqs = writes(&sim, "/v1/people:batchCreateContacts");
    assert!(reqs.iter().all(|r| r.method == "POST"));
    let sizes: Vec<usize> = reqs
        .iter()
        .map(|r| body_json(r)["contacts"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![200, 200, 50]);
    let first = body_json(&reqs[0]);
    assert_eq!(first["readMask"], "metadata");
    let starred = &first["contacts"][7]["contactPerson"]["memberships"];
    assert_eq!(starred.as_array().unwrap().len(), 2);
    assert_eq!(
        starred[1]["contactGroupMembership"]["contactGroupResourceName"],
        "contactGroups/starred"
    );
    assert_eq!(
        first["contacts"][8]["contactPerson"]["memberships"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn batch_create_rejected_as_a_whole_is_retried_one_by_one() {
    let sim = empty_book().await;
    sim.script(
        Provider::Google,
        Script::on("/v1/people:batchCreateContacts")
            .body_contains(r#""givenName":"Bad""#)
            .json(
                400,
                google_error(400, "INVALID_ARGUMENT", "Invalid contact"),
            ),
    );
    let gc = client(&sim, Group::All);
    let mk = |id: u64, name: &str| {
        let mut f = full_fields();
        f.first_name = name.into();
        (id, f, false)
    };
    let out = gc
        .batch_create(&[mk(1, "Good"), mk(2, "Bad"), mk(3, "Fine")])
        .await;
    let made = contacts(&sim);
    let named = |n: &str| {
        made.iter()
            .find(|(_, p)| p["names"][0]["givenName"] == n)
            .map(|(id, p)| (id.clone(), Some(source_etag(p))))
            .expect("created")
    };
    assert_eq!(out[0].result, Ok(named("Good")));
    assert!(
        matches!(&out[1].result, Err(ProviderError::Permanent(m)) if m.contains("INVALID_ARGUMENT"))
    );
    assert_eq!(out[2].result, Ok(named("Fine")));
    assert_eq!(made.len(), 2);
    assert_eq!(api_requests(&sim).len(), 4);
}

#[tokio::test]
async fn batch_create_is_not_resent_after_a_server_error_but_is_after_429() {
    let sim = empty_book().await;
    sim.script(
        Provider::Google,
        Script::on("/v1/people:batchCreateContacts").text(500, "internal"),
    );
    let gc = client(&sim, Group::All);
    let out = gc.batch_create(&[(1, full_fields(), false)]).await;
    assert!(matches!(out[0].result, Err(ProviderError::Transient(_))));
    assert_eq!(
        api_requests(&sim).len(),
        1,
        "a create that may have landed is not resent"
    );

    sim.clear_scripts(Provider::Google);
    sim.script(
        Provider::Google,
        Script::on("/v1/people:batchCreateContacts")
            .times(1)
            .json(429, json!({}))
            .header("Retry-After", "0"),
    );
    let out = gc.batch_create(&[(1, full_fields(), false)]).await;
    let made = contacts(&sim);
    assert_eq!(made.len(), 1, "created once, after the 429");
    assert_eq!(
        out[0].result,
        Ok((made[0].0.clone(), Some(source_etag(&made[0].1))))
    );
}

#[tokio::test]
async fn batch_update_sends_the_contact_source_etag_and_masks_and_reports_stale_etag_as_conflict() {
    let sim = empty_book().await;
    let ids: Vec<String> = (1..=4)
        .map(|i| add_contact(&sim, &format!("Given{i}"), false))
        .collect();
    let etag_of = |id: &str| {
        contacts(&sim)
            .into_iter()
            .find(|(i, _)| i == id)
            .map(|(_, p)| source_etag(&p))
            .unwrap()
    };
    let e: Vec<String> = ids.iter().map(|id| etag_of(id)).collect();
    let gc = client(&sim, Group::All);
    let items = vec![
        (
            ids[0].clone(),
            e[0].clone(),
            full_fields(),
            vec![field::NAME, field::JOB_TITLE],
        ),
        (
            ids[1].clone(),
            "stale2".to_string(),
            full_fields(),
            vec![field::COMPANY, field::NAME],
        ),
        (
            ids[2].clone(),
            e[2].clone(),
            full_fields(),
            vec![field::PHOTO],
        ),
        (
            ids[3].clone(),
            e[3].clone(),
            full_fields(),
            vec![field::EMAILS],
        ),
    ];
    let out = gc.batch_update(&items).await;
    let got: Vec<_> = out
        .iter()
        .map(|u| (u.provider_id.clone(), u.outcome.clone()))
        .collect();
    // The new etags are the CONTACT source's, as the simulator now holds them.
    let (new1, new4) = (etag_of(&ids[0]), etag_of(&ids[3]));
    assert_ne!(new1, e[0]);
    assert_eq!(
        got,
        vec![
            (ids[0].clone(), UpdateOutcome::Updated { etag: Some(new1) }),
            (ids[1].clone(), UpdateOutcome::Conflict),
            (
                ids[2].clone(),
                UpdateOutcome::Updated {
                    etag: Some(e[2].clone())
                }
            ),
            (ids[3].clone(), UpdateOutcome::Updated { etag: Some(new4) }),
        ]
    );
    let reqs = writes(&sim, "/v1/people:batchUpdateContacts");
    for r in &reqs {
        let b = body_json(r);
        for (id, p) in b["contacts"].as_object().unwrap() {
            assert_eq!(p["resourceName"], json!(id));
            assert_eq!(p["metadata"]["sources"][0]["type"], "CONTACT");
            assert!(
                p.get("etag").is_none(),
                "the person etag is a cache tag, not sent"
            );
            assert!(p.get("memberships").is_none());
        }
    }
    let masks: Vec<(String, usize)> = reqs
        .iter()
        .map(|r| {
            let b = body_json(r);
            (
                b["updateMask"].as_str().unwrap().to_string(),
                b["contacts"].as_object().unwrap().len(),
            )
        })
        .collect();
    // The first two share a mask; the batch fails on the second's etag and is retried one
    // by one.
    assert_eq!(
        masks,
        vec![
            ("names,organizations".to_string(), 2),
            ("names,organizations".to_string(), 1),
            ("names,organizations".to_string(), 1),
            ("emailAddresses".to_string(), 1),
        ]
    );
    assert_eq!(body_json(&reqs[1])["readMask"], "metadata");
}

#[tokio::test]
async fn batch_update_per_item_status_maps_to_conflict_and_gone() {
    let sim = empty_book().await;
    // Google's per-item statuses (google.rpc.Code 9, 5, 3, 0) in one answer.
    sim.script(
        Provider::Google,
        Script::on("/v1/people:batchUpdateContacts").json(200, json!({"updateResult": {
            "people/c1": {"status": {"code": 9, "message": "etag mismatch"}},
            "people/c2": {"status": {"code": 5, "message": "not found"}},
            "people/c3": {"status": {"code": 3, "message": "bad phone"}},
            "people/c4": {"status": {"code": 0}, "person": {"resourceName": "people/c4", "etag": "%Ep4",
                "metadata": {"sources": [{"type": "CONTACT", "etag": "n4"}]}}}
        }})),
    );
    let gc = client(&sim, Group::All);
    let items: Vec<_> = (1..=4)
        .map(|i| {
            (
                format!("people/c{i}"),
                format!("e{i}"),
                full_fields(),
                vec![field::PHONES],
            )
        })
        .collect();
    let out = gc.batch_update(&items).await;
    assert_eq!(out[0].outcome, UpdateOutcome::Conflict);
    assert_eq!(out[1].outcome, UpdateOutcome::Gone);
    assert!(matches!(
        out[2].outcome,
        UpdateOutcome::Failed(ProviderError::Permanent(_))
    ));
    assert_eq!(
        out[3].outcome,
        UpdateOutcome::Updated {
            etag: Some("n4".into())
        }
    );
}

#[tokio::test]
async fn batch_delete_sends_at_most_500_per_call_and_gone_counts_as_deleted() {
    let sim = contact_sync::sim::Sim::start(contact_sync::sim::SimOptions {
        google_users: vec![contact_sync::sim::SeedUser::new(ALICE, 1203, 7)],
        ..Default::default()
    })
    .await
    .unwrap();
    sim.set_detailed_log(Provider::Google, true);
    let all: Vec<String> = contacts(&sim).into_iter().map(|(id, _)| id).collect();
    let gc = client(&sim, Group::All);
    let ids: Vec<String> = all[..1200].to_vec();
    let out = gc.batch_delete(&ids).await;
    assert_eq!(out.len(), 1200);
    assert!(out.iter().all(|d| d.result.is_ok()));
    let sizes: Vec<usize> = writes(&sim, "/v1/people:batchDeleteContacts")
        .iter()
        .map(|r| body_json(r)["resourceNames"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![500, 500, 200]);
    assert_eq!(contacts(&sim).len(), 3);

    // One already gone (the simulator answers 404 for the whole batch) and one Google
    // refuses (scripted: a profile, not a contact); the batch is retried one by one. An
    // empty answer body counts as Google's Empty.
    let locked = all[1202].clone();
    sim.script(
        Provider::Google,
        Script::on("/v1/people:batchDeleteContacts")
            .body_contains(&format!("\"{locked}\""))
            .json(400, google_error(400, "INVALID_ARGUMENT", "Not a contact")),
    );
    sim.script(
        Provider::Google,
        Script::on("/v1/people:batchDeleteContacts")
            .body_contains(&format!("[\"{}\"]", all[1200]))
            .status(200)
            .body(contact_sync::sim::ScriptBody::Text(String::new())),
    );
    let out = gc
        .batch_delete(&[all[1200].clone(), all[0].clone(), locked])
        .await;
    assert_eq!(out[0].result, Ok(()));
    assert_eq!(out[1].result, Ok(()));
    assert!(matches!(out[2].result, Err(ProviderError::Permanent(_))));
}
