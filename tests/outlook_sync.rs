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
    // The folders' `$count` fit under the limit: the listing was planned and committed as
    // it came.
    assert!(d.log().contains("Round streamed"), "{}", d.log());
}

/// SPEC §5 with streamed Outlook rounds: an initial listing streams only when the folders'
/// `$count` fits under the limit. That count is an upper bound (Graph counts contact lists
/// there, which it never lists), so a listing that crosses the limit writes nothing, and one
/// whose count crosses it while its contacts do not is collected whole and synced.
#[tokio::test]
async fn outlook_streamed_round_crossing_the_limit_writes_nothing() {
    let sim = start_sim(vec![], vec![user(300, 31)]).await;
    let (s, _) = sim.control(
        Provider::Outlook,
        "PATCH",
        &format!("/_sim/users/{USER}/options"),
        Some(json!({"contactLists": 2})),
    );
    assert_eq!(s, 200);
    let (eligible, _) = expected(&graph_changes(&sim, USER));
    assert!(eligible.len() > 100 && eligible.len() < 300);
    let acct = account_toml("o", "outlook", "all", "one-way");
    let limit = eligible.len() - 1;
    let d = daemon_for(&sim, &format!("contact_limit = {limit}"), &acct).await;
    d.connect("o", &sim.refresh_token(Provider::Outlook, USER).unwrap())
        .await;
    d.wait_state("o", "limit_exceeded").await;
    assert!(d.contacts().await.is_empty());
    assert!(!d.log().contains("Round streamed"));
    // 300 contacts and 2 lists are counted; 301 fits every contact but not the count.
    d.write_config(&d.config_text(
        "contact_limit = 301",
        &format!("{}{acct}", providers_for(&sim)),
    ));
    d.wait_synced("o", None).await;
    let links = check_no_duplicates(&d.contacts().await, "o");
    assert_eq!(links.len(), eligible.len());
    assert!(!d.log().contains("Round streamed"), "{}", d.log());
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
    // 400 contacts (160 before issue 16): photos now go 20 to a `$batch`, and at 160 the
    // sync made too few requests for the seeded 30 % to hit one.
    let sim = start_sim(vec![], vec![user(400, 23)]).await;
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

/// Graph's delta documentation: an updated item carries *at least* the properties that
/// changed. A property the row does not carry is unchanged, never cleared; one Graph sends
/// as `null` is cleared.
#[tokio::test]
async fn outlook_partial_delta_row_keeps_unsent_properties_and_explicit_null_clears() {
    let sim = start_sim(vec![], vec![user(10, 31)]).await;
    let (s, v) = sim.control(
        Provider::Outlook,
        "POST",
        &format!("/_sim/users/{USER}/contacts"),
        Some(json!({
            "givenName": "Grace", "surname": "Hopper",
            "emailAddresses": [{"name": "Grace", "address": "grace.partial@example.com"}],
            "mobilePhone": "+1 202 555 0142",
            "homeAddress": {"street": "1 Navy Way", "city": "Arlington", "postalCode": "22201"},
            "companyName": "US Navy", "jobTitle": "Rear Admiral",
            "birthday": "1906-12-09T11:59:00Z"
        })),
    );
    assert_eq!(s, 201, "{v}");
    let pid = v["id"].as_str().unwrap().to_string();
    let d = daemon_for(&sim, "", &account_toml("o", "outlook", "all", "one-way")).await;
    d.connect("o", &sim.refresh_token(Provider::Outlook, USER).unwrap())
        .await;
    d.wait_synced("o", None).await;
    let find = |cs: &[serde_json::Value]| {
        cs.iter()
            .find(|c| {
                c["links"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l["provider_id"] == pid.as_str())
            })
            .cloned()
            .expect("the contact is synced")
    };
    let before = find(&d.contacts().await);
    assert_eq!(before["first_name"], "Grace");
    assert_eq!(before["company"]["name"], "US Navy");
    assert_eq!(before["birthday"], "1906-12-09");
    assert_eq!(before["address"]["city"], "Arlington");

    // From now on delta sends only what changed: the row carries surname, displayName,
    // emailAddresses, mobilePhone and jobTitle, as in the report.
    let (s, v) = sim.control(
        Provider::Outlook,
        "PATCH",
        &format!("/_sim/users/{USER}/options"),
        Some(json!({"partialDelta": true})),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = sim.control(
        Provider::Outlook,
        "PATCH",
        &format!("/_sim/users/{USER}/contacts/{pid}"),
        Some(json!({
            "surname": "Hopper-Murray",
            "emailAddresses": [{"name": "Grace", "address": "grace.partial@example.com"}],
            "mobilePhone": "+1 202 555 0143",
            "jobTitle": "Commodore"
        })),
    );
    assert_eq!(s, 200, "{v}");
    sim.clear_requests(Provider::Outlook);
    d.sync_now("o").await;
    let after = find(&d.contacts().await);
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["last_name"], "Hopper-Murray");
    assert_eq!(after["job_title"], "Commodore");
    assert_eq!(after["first_name"], "Grace", "{after}");
    assert_eq!(after["company"]["name"], "US Navy", "{after}");
    assert_eq!(after["birthday"], "1906-12-09", "{after}");
    assert_eq!(after["address"], before["address"], "{after}");
    // The partial row was fetched whole by id.
    let reqs = sim.requests(Provider::Outlook);
    assert!(
        reqs.iter()
            .any(|r| r.method == "GET" && r.path.starts_with("/v1.0/me/contacts/AAMk")),
        "no GET by id: {:?}",
        reqs.iter().map(|r| &r.path).collect::<Vec<_>>()
    );

    // An explicit null is a real clearing of a non-mandatory field.
    let (s, v) = sim.control(
        Provider::Outlook,
        "PATCH",
        &format!("/_sim/users/{USER}/contacts/{pid}"),
        Some(json!({"companyName": null, "birthday": null})),
    );
    assert_eq!(s, 200, "{v}");
    d.sync_now("o").await;
    let cleared = find(&d.contacts().await);
    assert!(cleared["company"].is_null(), "{cleared}");
    assert!(cleared["birthday"].is_null(), "{cleared}");
    assert_eq!(cleared["first_name"], "Grace");
    assert_eq!(cleared["job_title"], "Commodore");
    assert_eq!(cleared["address"], before["address"]);
}

fn graph_api_requests(sim: &contact_sync::sim::Sim) -> usize {
    sim.requests(Provider::Outlook)
        .iter()
        .filter(|r| r.path.starts_with("/v1.0/"))
        .count()
}

/// A permanent provider error (Graph: 404 `MailboxNotEnabledForRESTAPI`) is a terminal
/// `error` state with the message in `last_error`: no restart loop. An operator's sync-now,
/// or a config change, tries again.
#[tokio::test]
async fn permanent_error_is_terminal_until_sync_now_or_config_change() {
    let sim = start_sim(vec![], vec![user(20, 32)]).await;
    let accounts = account_toml("o", "outlook", "all", "one-way");
    let d = daemon_for(&sim, "", &accounts).await;
    d.connect("o", &sim.refresh_token(Provider::Outlook, USER).unwrap())
        .await;
    d.wait_synced("o", None).await;
    let disable = |on: bool| {
        let (s, v) = sim.control(
            Provider::Outlook,
            "PATCH",
            &format!("/_sim/users/{USER}/options"),
            Some(json!({"mailboxDisabled": on})),
        );
        assert_eq!(s, 200, "{v}");
    };
    disable(true);
    let (s, _) = d.admin(Method::POST, "/api/v1/sync", None).await;
    assert_eq!(s, 202);
    let a = d.wait_state("o", "error").await;
    assert!(
        a["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("MailboxNotEnabledForRESTAPI"),
        "{a}"
    );
    // No restart loop: with the fast test backoff (at most 1 s) a transient error would
    // have been retried several times in 4 s.
    sim.clear_requests(Provider::Outlook);
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_eq!(graph_api_requests(&sim), 0, "the account kept retrying");
    let a = d.account("o").await;
    assert_eq!(a["state"], "error");
    assert!(a["last_error"]
        .as_str()
        .unwrap_or("")
        .contains("MailboxNotEnabledForRESTAPI"));

    // The mailbox is fixed: nothing happens by itself…
    disable(false);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(d.account("o").await["state"], "error");
    // …until an operator asks for a sync.
    let a = d.sync_now("o").await;
    assert_eq!(a["state"], "idle");
    assert!(a["last_error"].is_null(), "{a}");

    // Again broken; this time a config change starts it again.
    disable(true);
    let (s, _) = d.admin(Method::POST, "/api/v1/sync", None).await;
    assert_eq!(s, 202);
    d.wait_state("o", "error").await;
    disable(false);
    let before = d.account("o").await["last_sync"].clone();
    d.write_config(&d.config_text(
        "contact_limit = 40000",
        &format!("{}{accounts}", providers_for(&sim)),
    ));
    d.wait_for(
        "a round after the config change",
        std::time::Duration::from_secs(30),
        || async {
            let a = d.account("o").await;
            a["state"] == "idle" && a["last_sync"] != before
        },
    )
    .await;
}

fn graph_grant(sim: &contact_sync::sim::Sim, scope: &str) -> String {
    let (s, v) = sim.control(
        Provider::Outlook,
        "POST",
        &format!("/_sim/users/{USER}/grants"),
        Some(json!({"scope": scope})),
    );
    assert_eq!(s, 201, "{v}");
    v["refresh_token"].as_str().unwrap().to_string()
}

/// One-way → two-way rebuilds the client with the two-way scope. A grant made for one-way
/// (Contacts.Read) cannot write: the account asks for a new grant, naming the scope, and
/// the CRM edits made meanwhile reach Outlook once the new grant is in.
#[tokio::test]
async fn outlook_one_way_to_two_way_asks_for_contacts_readwrite_and_pushes_waiting_edits_after_connect(
) {
    let sim = start_sim(vec![], vec![user(20, 33)]).await;
    let d = daemon_for(&sim, "", &account_toml("o", "outlook", "all", "one-way")).await;
    d.connect(
        "o",
        &graph_grant(&sim, "https://graph.microsoft.com/Contacts.Read"),
    )
    .await;
    d.wait_synced("o", None).await;
    let contacts = d.contacts().await;
    let links = check_no_duplicates(&contacts, "o");
    let (pid, id) = links.iter().next().map(|(p, i)| (p.clone(), *i)).unwrap();

    d.write_config(&d.config_text(
        "",
        &format!(
            "{}{}",
            providers_for(&sim),
            account_toml("o", "outlook", "all", "two-way")
        ),
    ));
    let a = d.wait_state("o", "reauth_required").await;
    assert!(
        a["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("Contacts.ReadWrite"),
        "{a}"
    );
    // A token refresh of the two-way client asked for Contacts.ReadWrite.
    assert!(d.log().contains("Direction changed"), "{}", d.log());

    let (s, v) = d
        .api(
            Method::PATCH,
            &format!("/api/v1/contacts/{id}"),
            Some(json!({"job_title": "Scope Tester"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let a = d.account("o").await;
    assert_eq!(a["outbox"]["pending"], 1, "{a}");
    assert_eq!(a["outbox"]["failed"], json!([]), "{a}");

    d.connect(
        "o",
        &graph_grant(&sim, "https://graph.microsoft.com/Contacts.ReadWrite"),
    )
    .await;
    d.wait_for(
        "the edit pushed",
        std::time::Duration::from_secs(60),
        || async {
            let a = d.account("o").await;
            a["state"] == "idle" && a["outbox"]["pending"] == 0
        },
    )
    .await;
    let a = d.account("o").await;
    assert_eq!(a["outbox"]["failed"], json!([]), "{a}");
    let (_, all) = sim.control(
        Provider::Outlook,
        "GET",
        &format!("/_sim/users/{USER}/contacts"),
        None,
    );
    let c = all
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == pid.as_str())
        .unwrap();
    assert_eq!(c["contact"]["jobTitle"], "Scope Tester", "{c}");
}

/// Deleting a contact folder in Outlook moves it to Deleted Items: it leaves the tree under
/// the default Contacts folder, though Graph still finds it by id. Its contacts count as
/// deleted from Outlook, and the deletion guard still holds a large share of them.
#[tokio::test]
async fn outlook_folder_moved_to_deleted_items_counts_as_deleted_and_the_guard_applies() {
    let sim = start_sim(vec![], vec![user(90, 34)]).await;
    let d = daemon_for(
        &sim,
        "deletion_guard_min = 5",
        &account_toml("o", "outlook", "all", "one-way"),
    )
    .await;
    d.connect("o", &sim.refresh_token(Provider::Outlook, USER).unwrap())
        .await;
    d.wait_synced("o", None).await;
    let links = check_no_duplicates(&d.contacts().await, "o");
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
    let linked_in_child: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["folderId"] == child.as_str())
        .map(|c| c["id"].as_str().unwrap().to_string())
        .filter(|p| links.contains_key(p))
        .collect();
    assert!(linked_in_child.len() >= 5, "{}", linked_in_child.len());

    let (s, v) = sim.control(
        Provider::Outlook,
        "POST",
        &format!("/_sim/users/{USER}/folders/{child}/move-to-deleted-items"),
        None,
    );
    assert_eq!(s, 200, "{v}");
    // Graph still finds the folder by id, outside the default folder's tree.
    assert_ne!(v["parentFolderId"], default.as_str());

    // A third of the account at once: held by the guard, nothing deleted yet.
    let (s, _) = d.admin(Method::POST, "/api/v1/sync", None).await;
    assert_eq!(s, 202);
    d.wait_state("o", "deletion_held").await;
    let held = check_no_duplicates(&d.contacts().await, "o");
    assert!(linked_in_child.iter().all(|p| held.contains_key(p)));

    let (s, v) = d
        .admin(Method::POST, "/api/v1/accounts/o/approve", None)
        .await;
    assert!(s < 300, "{v}");
    d.wait_for(
        "the approved round",
        std::time::Duration::from_secs(30),
        || async { d.account("o").await["state"] == "idle" },
    )
    .await;
    let after = check_no_duplicates(&d.contacts().await, "o");
    for p in &linked_in_child {
        assert!(
            !after.contains_key(p),
            "{p} from the folder in Deleted Items is still linked"
        );
    }
    assert_eq!(after.len(), links.len() - linked_in_child.len());
    // And it stays so: the folder's contacts are not picked up again.
    d.sync_now("o").await;
    assert_eq!(
        check_no_duplicates(&d.contacts().await, "o").len(),
        after.len()
    );
}

/// When the token answer does not say which scopes were granted, Graph's 403
/// `ErrorAccessDenied` on a write is how a missing Contacts.ReadWrite shows: the account
/// goes to `reauth_required` naming the scope, the edit stays queued (not failed), and it
/// reaches Outlook once a grant with the scope is connected.
#[tokio::test]
async fn outlook_write_refused_403_for_want_of_contacts_readwrite_is_reauth_and_retried_after_connect(
) {
    let sim = start_sim(vec![], vec![user(20, 35)]).await;
    let (s, v) = sim.control(
        Provider::Outlook,
        "PATCH",
        &format!("/_sim/users/{USER}/options"),
        Some(json!({"omitTokenScope": true})),
    );
    assert_eq!(s, 200, "{v}");
    let d = daemon_for(&sim, "", &account_toml("o", "outlook", "all", "two-way")).await;
    d.connect(
        "o",
        &graph_grant(&sim, "https://graph.microsoft.com/Contacts.Read"),
    )
    .await;
    d.wait_synced("o", None).await;
    let links = check_no_duplicates(&d.contacts().await, "o");
    let (pid, id) = links.iter().next().map(|(p, i)| (p.clone(), *i)).unwrap();

    let (s, v) = d
        .api(
            Method::PATCH,
            &format!("/api/v1/contacts/{id}"),
            Some(json!({"job_title": "Refused Then Pushed"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let a = d.wait_state("o", "reauth_required").await;
    assert!(
        a["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("Contacts.ReadWrite"),
        "{a}"
    );
    assert!(sim
        .requests(Provider::Outlook)
        .iter()
        .any(|r| r.path == "/v1.0/$batch"));
    assert_eq!(a["outbox"]["pending"], 1, "{a}");
    assert_eq!(a["outbox"]["failed"], json!([]), "{a}");

    d.connect(
        "o",
        &graph_grant(&sim, "https://graph.microsoft.com/Contacts.ReadWrite"),
    )
    .await;
    d.wait_for(
        "the edit pushed",
        std::time::Duration::from_secs(60),
        || async {
            let a = d.account("o").await;
            a["state"] == "idle" && a["outbox"]["pending"] == 0
        },
    )
    .await;
    assert_eq!(d.account("o").await["outbox"]["failed"], json!([]));
    let (_, all) = sim.control(
        Provider::Outlook,
        "GET",
        &format!("/_sim/users/{USER}/contacts"),
        None,
    );
    let c = all
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == pid.as_str())
        .unwrap();
    assert_eq!(c["contact"]["jobTitle"], "Refused Then Pushed", "{c}");
}

/// A push of the account's old actor (still running after a restart) commits a link while
/// the new actor's full listing runs. The listing passed that contact's folder before the
/// contact was created, so the contact is not in it; it must not be read as deleted from
/// Outlook (it would come back later under a new CRM id). The simulator's gates order the
/// two clients' requests.
#[tokio::test]
async fn link_committed_by_a_push_during_a_full_listing_is_not_read_as_a_deletion() {
    let sim = start_sim(vec![], vec![user(20, 36)]).await;
    let d = daemon_for(&sim, "", &account_toml("o", "outlook", "all", "two-way")).await;
    d.connect("o", &sim.refresh_token(Provider::Outlook, USER).unwrap())
        .await;
    let first = d.wait_synced("o", None).await;
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
    let gate = |contains: serde_json::Value| -> u64 {
        let (s, v) = sim.control(
            Provider::Outlook,
            "POST",
            "/_sim/gates",
            Some(json!({ "contains": contains })),
        );
        assert_eq!(s, 201, "{v}");
        v["id"].as_u64().unwrap()
    };
    let held = |id: u64| -> u64 {
        let (s, v) = sim.control(Provider::Outlook, "GET", &format!("/_sim/gates/{id}"), None);
        assert_eq!(s, 200, "{v}");
        v["held"].as_u64().unwrap()
    };
    let open = |id: u64| {
        let (s, v) = sim.control(
            Provider::Outlook,
            "DELETE",
            &format!("/_sim/gates/{id}"),
            None,
        );
        assert_eq!(s, 204, "{v}");
    };

    // The push of a new CRM contact waits at the gate, before it reaches Graph.
    let push_gate = gate(json!("$batch"));
    let (s, created) = d
        .api(
            Method::POST,
            "/api/v1/contacts",
            Some(json!({"first_name": "Pushed", "last_name": "Meanwhile", "emails": ["pushed.meanwhile@example.org"]})),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let crm_id = created["id"].as_u64().unwrap();
    d.wait_for(
        "the push at the gate",
        std::time::Duration::from_secs(30),
        || async { held(push_gate) >= 1 },
    )
    .await;

    // The account restarts (a direction change) with expired delta links: the new actor
    // lists every folder in full. It lists the default folder, then waits at a child.
    assert!(sim.expire_cursors(Provider::Outlook, USER));
    let child_part = child.trim_end_matches('=').to_string();
    let listing_gate = gate(json!([child_part, "/contacts/delta"]));
    d.write_config(&d.config_text(
        "",
        &format!(
            "{}{}",
            providers_for(&sim),
            account_toml("o", "outlook", "all", "one-way")
        ),
    ));
    d.wait_for(
        "the listing at the gate",
        std::time::Duration::from_secs(30),
        || async { held(listing_gate) >= 1 },
    )
    .await;

    // The old push reaches Graph (the contact lands in the default folder, already listed)
    // and commits its link while the listing still runs.
    open(push_gate);
    let linked = || async {
        let c = d.get(&format!("/api/v1/contacts/{crm_id}")).await;
        c["links"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["account"] == "o"))
    };
    d.wait_for(
        "the pushed link",
        std::time::Duration::from_secs(30),
        linked,
    )
    .await;
    open(listing_gate);
    let a = d.wait_synced("o", first["last_sync"].as_str()).await;
    assert_eq!(today(&a, &["deleted", "from_provider"]), 0, "{a}");
    let (s, c) = d
        .api(Method::GET, &format!("/api/v1/contacts/{crm_id}"), None)
        .await;
    assert_eq!(s, 200, "the pushed contact was deleted: {c}");
    assert!(linked().await, "the pushed contact lost its link: {c}");

    // The next round sees the contact in Outlook and keeps it under the same CRM id.
    d.sync_now("o").await;
    let all = d.contacts().await;
    check_no_duplicates(&all, "o");
    let pushed: Vec<_> = all.iter().filter(|c| c["first_name"] == "Pushed").collect();
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    assert_eq!(pushed[0]["id"], crm_id);
}

/// SPEC §3 (issue 16): photos only during the initial sync of a one-way account, only for
/// contacts that sync newly creates. A contact that matches an existing CRM contact does not
/// get its photo downloaded, and a contact without a photo is never asked for one
/// (PidLidHasPicture tells the client which have one).
#[tokio::test]
async fn photos_are_fetched_only_for_contacts_the_sync_creates() {
    let sim = start_sim(vec![], vec![user(150, 31)]).await;
    let changes = graph_changes(&sim, USER);
    let (eligible, _) = expected(&changes);
    let (_, all) = sim.control(
        Provider::Outlook,
        "GET",
        &format!("/_sim/users/{USER}/contacts"),
        None,
    );
    let all = all.as_array().unwrap().clone();
    let with_photo: Vec<&serde_json::Value> = all
        .iter()
        .filter(|c| {
            c["hasPhoto"] == true && eligible.contains(&c["id"].as_str().unwrap().to_string())
        })
        .collect();
    // Three contacts with a photo (and a name and an email) exist in the CRM already.
    let matched: Vec<&serde_json::Value> = with_photo
        .iter()
        .copied()
        .filter(|c| {
            c["contact"]["emailAddresses"][0]["address"].is_string()
                && c["contact"]["givenName"].is_string()
                && c["contact"]["surname"].is_string()
        })
        .take(3)
        .collect();
    assert_eq!(matched.len(), 3, "the seed has contacts with photos");
    let d = daemon_for(&sim, "", &account_toml("o", "outlook", "all", "one-way")).await;
    for c in &matched {
        let (s, v) = d
            .api(
                Method::POST,
                "/api/v1/contacts",
                Some(json!({
                    "first_name": c["contact"]["givenName"],
                    "last_name": c["contact"]["surname"],
                    "emails": [c["contact"]["emailAddresses"][0]["address"]],
                })),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    d.connect("o", &sim.refresh_token(Provider::Outlook, USER).unwrap())
        .await;
    let a = d.wait_synced("o", None).await;
    assert_eq!(today(&a, &["updated", "in_crm"]), 3, "{a}");
    // Photo requests alone or as `$batch` parts.
    let photo_requests: Vec<String> = sim
        .requests(Provider::Outlook)
        .iter()
        .filter(|e| e.path.ends_with("/photo/$value"))
        .map(|e| e.path.clone())
        .chain(
            sim.graph_batch_parts(USER)
                .into_iter()
                .filter(|p| p.ends_with("/photo/$value")),
        )
        .collect();
    for c in &matched {
        let id = c["id"].as_str().unwrap();
        assert!(
            !photo_requests
                .iter()
                .any(|p| p.contains(&id.replace('=', "%3D")) || p.contains(id)),
            "the photo of matched contact {id} was downloaded"
        );
    }
    // One request per created contact with a photo, none for any other.
    assert_eq!(
        photo_requests.len(),
        with_photo.len() - 3,
        "{photo_requests:?}"
    );
    let contacts = d.contacts().await;
    let photos = contacts.iter().filter(|c| c["has_photo"] == true).count();
    assert_eq!(photos, with_photo.len() - 3);
}
