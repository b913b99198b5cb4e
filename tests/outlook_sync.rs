//! Outlook accounts end to end: the real binary against the Graph simulator (issue 6), and a
//! contact present in both a Google and an Outlook account.

mod common;

use common::*;
use contact_sync::sim::{FaultConfig, FaultKind, Provider, SeedUser};
use reqwest::Method;
use serde_json::json;

const USER: &str = "olga@example.com";

fn user(n: usize, seed: u64) -> SeedUser {
    let mut u = SeedUser::new(USER, n, seed);
    u.child_folders = 2;
    u
}

async fn daemon_for(
    sim: &contact_sync::sim::Sim,
    daemon_extra: &str,
    accounts: &str,
) -> TestDaemon {
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text(daemon_extra, &format!("{}{accounts}", providers_for(sim))));
    d.start().await;
    d
}

#[tokio::test]
async fn outlook_initial_sync_across_default_and_child_folders_is_exact() {
    let sim = start_sim(vec![], vec![user(240, 21)]).await;
    let changes = graph_changes(&sim, USER);
    let (eligible, skipped) = expected(&changes);
    let (_, folders) = sim.control(
        Provider::Outlook,
        "GET",
        &format!("/_sim/users/{USER}/folders"),
        None,
    );
    assert!(
        folders["folders"].as_array().unwrap().len() >= 3,
        "{folders}"
    );
    let d = daemon_for(&sim, "", &account_toml("o", "outlook", "all", "one-way")).await;
    d.connect("o", &sim.refresh_token(Provider::Outlook, USER).unwrap())
        .await;
    let a = d.wait_synced("o", None).await;
    let contacts = d.contacts().await;
    let links = check_no_duplicates(&contacts, "o");
    let mut got: Vec<_> = links.keys().cloned().collect();
    got.sort();
    let mut want = eligible.clone();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        (today(&a, &["added", "to_crm"]) + today(&a, &["updated", "in_crm"])) as usize,
        eligible.len()
    );
    assert_eq!(today(&a, &["added", "to_crm"]) as usize, contacts.len());
    for (reason, n) in &skipped {
        assert_eq!(a["today"]["skipped"][reason], *n, "skipped {reason}");
    }
    // Every delta request carried the Prefer header's effect: pages of at most 200.
    let reqs = sim.requests(Provider::Outlook);
    assert!(reqs.iter().any(|r| r.path.contains("/contacts/delta")));
}

#[tokio::test]
async fn outlook_updates_deletions_expired_delta_and_vanished_folder() {
    let sim = start_sim(vec![], vec![user(150, 22)]).await;
    let d = daemon_for(&sim, "", &account_toml("o", "outlook", "all", "one-way")).await;
    d.connect("o", &sim.refresh_token(Provider::Outlook, USER).unwrap())
        .await;
    d.wait_synced("o", None).await;
    let before = d.contacts().await;
    let links = check_no_duplicates(&before, "o");
    let single: Vec<(&String, &u64)> = links
        .iter()
        .filter(|(_, id)| {
            before.iter().find(|c| c["id"] == **id).unwrap()["links"]
                .as_array()
                .unwrap()
                .len()
                == 1
        })
        .collect();
    let (edit_pid, edit_id) = single[0];
    let (del_pid, del_id) = single[1];
    let (s, v) = sim.control(
        Provider::Outlook,
        "PATCH",
        &format!("/_sim/users/{USER}/contacts/{edit_pid}"),
        Some(json!({"jobTitle": "Head of Tests"})),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = sim.control(
        Provider::Outlook,
        "DELETE",
        &format!("/_sim/users/{USER}/contacts/{del_pid}"),
        None,
    );
    assert!(s < 300, "{v}");
    let a = d.sync_now("o").await;
    let after = d.contacts().await;
    assert_eq!(
        after.iter().find(|c| c["id"] == *edit_id).unwrap()["job_title"],
        "Head of Tests"
    );
    assert!(after.iter().all(|c| c["id"] != *del_id));
    assert_eq!(today(&a, &["deleted", "from_provider"]), 1);

    // Expired delta links: a full re-list, matched by link, no duplicate, no addition.
    let added = today(&a, &["added", "to_crm"]);
    assert!(sim.expire_cursors(Provider::Outlook, USER));
    let a = d.sync_now("o").await;
    let resynced = d.contacts().await;
    check_no_duplicates(&resynced, "o");
    assert_eq!(resynced.len(), after.len());
    assert_eq!(today(&a, &["added", "to_crm"]), added);
    assert!(sim
        .requests(Provider::Outlook)
        .iter()
        .any(|r| r.status == 410));

    // A child folder deleted in Outlook: its contacts are deleted from the provider's view.
    let (_, f) = sim.control(
        Provider::Outlook,
        "GET",
        &format!("/_sim/users/{USER}/folders"),
        None,
    );
    let default = f["default"].as_str().unwrap().to_string();
    let child = f["folders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .find(|id| *id != default)
        .unwrap();
    let (_, all) = sim.control(
        Provider::Outlook,
        "GET",
        &format!("/_sim/users/{USER}/contacts"),
        None,
    );
    let in_child: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["folderId"] == child.as_str())
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    let linked_in_child: Vec<&String> = in_child
        .iter()
        .filter(|p| check_no_duplicates(&resynced, "o").contains_key(*p))
        .collect();
    assert!(!linked_in_child.is_empty());
    let (s, v) = sim.control(
        Provider::Outlook,
        "DELETE",
        &format!("/_sim/users/{USER}/folders/{child}"),
        None,
    );
    assert!(s < 300, "{v}");
    d.sync_now("o").await;
    let links_now = check_no_duplicates(&d.contacts().await, "o");
    for p in linked_in_child {
        assert!(
            !links_now.contains_key(p),
            "{p} from the vanished folder is still linked"
        );
    }
}

#[tokio::test]
async fn outlook_sync_converges_under_faults_and_revoked_grant_needs_reauth() {
    let sim = start_sim(vec![], vec![user(160, 23)]).await;
    let (eligible, _) = expected(&graph_changes(&sim, USER));
    sim.set_faults(
        Provider::Outlook,
        FaultConfig {
            probability: 0.3,
            kinds: vec![
                FaultKind::TooMany,
                FaultKind::Internal,
                FaultKind::Unavailable,
                FaultKind::Drop,
                FaultKind::Truncate,
            ],
            retry_after: 0.01,
            seed: 4,
            ..Default::default()
        },
    );
    let d = daemon_for(&sim, "", &account_toml("o", "outlook", "all", "one-way")).await;
    d.connect("o", &sim.refresh_token(Provider::Outlook, USER).unwrap())
        .await;
    d.wait_synced("o", None).await;
    assert_eq!(
        check_no_duplicates(&d.contacts().await, "o").len(),
        eligible.len()
    );
    assert!(sim
        .requests(Provider::Outlook)
        .iter()
        .any(|r| r.fault.is_some()));
    sim.set_faults(Provider::Outlook, FaultConfig::default());

    assert!(sim.revoke(Provider::Outlook, USER));
    sim.expire_access_tokens();
    d.admin(Method::POST, "/api/v1/sync", None).await;
    d.wait_state("o", "reauth_required").await;
}

#[tokio::test]
async fn outlook_contact_limit_stops_the_account() {
    let sim = start_sim(vec![], vec![user(100, 24)]).await;
    let d = daemon_for(
        &sim,
        "contact_limit = 10",
        &account_toml("o", "outlook", "all", "one-way"),
    )
    .await;
    d.connect("o", &sim.refresh_token(Provider::Outlook, USER).unwrap())
        .await;
    d.wait_state("o", "limit_exceeded").await;
    assert!(d.contacts().await.is_empty());
}

#[tokio::test]
async fn contact_in_google_and_outlook_ends_as_one_crm_contact_and_provider_deletion_only_unlinks()
{
    // Same seed: the two address books share about a fifth of their people.
    let sim = start_sim(
        vec![SeedUser::new("gina@example.com", 120, 31)],
        vec![SeedUser::new(USER, 120, 31)],
    )
    .await;
    let accounts = format!(
        "{}{}",
        account_toml("g", "google", "all", "one-way"),
        account_toml("o", "outlook", "all", "one-way")
    );
    let d = daemon_for(&sim, "", &accounts).await;
    d.connect(
        "g",
        &sim.refresh_token(Provider::Google, "gina@example.com")
            .unwrap(),
    )
    .await;
    d.wait_synced("g", None).await;
    d.connect("o", &sim.refresh_token(Provider::Outlook, USER).unwrap())
        .await;
    d.wait_synced("o", None).await;
    let contacts = d.contacts().await;
    check_no_duplicates(&contacts, "g");
    check_no_duplicates(&contacts, "o");
    let both: Vec<&serde_json::Value> = contacts
        .iter()
        .filter(|c| {
            let l = c["links"].as_array().unwrap();
            l.iter().any(|x| x["account"] == "g") && l.iter().any(|x| x["account"] == "o")
        })
        .collect();
    assert!(
        !both.is_empty(),
        "shared people are one CRM contact linked to both accounts"
    );
    let shared = both[0];
    let gid = shared["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["account"] == "g")
        .unwrap()["provider_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = sim.control(
        Provider::Google,
        "DELETE",
        &format!(
            "/_sim/users/gina@example.com/contacts/{}",
            gid.trim_start_matches("people/")
        ),
        None,
    );
    assert!(s < 300, "{v}");
    let a = d.sync_now("g").await;
    let c = d.get(&format!("/api/v1/contacts/{}", shared["id"])).await;
    let links = c["links"].as_array().unwrap();
    assert_eq!(links.len(), 1, "{c}");
    assert_eq!(links[0]["account"], "o");
    assert_eq!(
        today(&a, &["deleted", "from_provider"]),
        0,
        "an unlink is not a deletion"
    );
}
