//! Google accounts end to end: the real binary against the Google simulator (issue 5).

mod common;

use std::time::Duration;

use common::*;
use contact_sync::sim::{FaultConfig, FaultKind, Provider, SeedUser};
use reqwest::Method;
use serde_json::json;

const USER: &str = "alice@example.com";

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
async fn google_initial_sync_skips_merges_and_creates_exactly_as_spec_says() {
    let sim = start_sim(vec![SeedUser::new(USER, 300, 11)], vec![]).await;
    let changes = google_changes(&sim, USER);
    let (eligible, skipped) = expected(&changes);
    assert!(
        skipped.values().sum::<u64>() > 0,
        "the seed has ineligible contacts"
    );

    let d = daemon_for(&sim, "", &account_toml("g", "google", "all", "one-way")).await;
    // Two CRM contacts that already exist: the sync must link them, not duplicate them.
    let mut preexisting = vec![];
    for c in changes
        .iter()
        .filter_map(|c| match c {
            contact_sync::model::Change::Upsert(pc)
                if eligible.contains(&pc.provider_id) && !pc.fields.emails.is_empty() =>
            {
                Some(pc)
            }
            _ => None,
        })
        .take(2)
    {
        let (s, v) = d
            .api(Method::POST, "/api/v1/contacts", Some(json!({
                "first_name": c.fields.first_name.to_uppercase(), "last_name": c.fields.last_name,
                "emails": [c.fields.emails[0].to_uppercase()], "job_title": "Kept by the CRM"
            })))
            .await;
        assert_eq!(s, 201, "{v}");
        preexisting.push((v["id"].as_u64().unwrap(), c.provider_id.clone()));
    }

    d.connect("g", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    let a = d.wait_synced("g", None).await;
    let contacts = d.contacts().await;
    let links = check_no_duplicates(&contacts, "g");

    // Every eligible contact is linked; no ineligible one is.
    let mut linked: Vec<_> = links.keys().cloned().collect();
    linked.sort();
    let mut want = eligible.clone();
    want.sort();
    assert_eq!(linked, want);
    // The pre-existing contacts were matched and kept their own values.
    for (id, pid) in &preexisting {
        assert_eq!(links[pid], *id, "{pid} linked to the existing CRM contact");
        let c = contacts.iter().find(|c| c["id"] == *id).unwrap();
        assert_eq!(
            c["job_title"], "Kept by the CRM",
            "merge only adds at first link"
        );
    }
    // Counts: each eligible contact was either created or merged into an existing one.
    let added = today(&a, &["added", "to_crm"]);
    let updated = today(&a, &["updated", "in_crm"]);
    assert_eq!(added as usize, contacts.len() - preexisting.len());
    assert_eq!((added + updated) as usize, eligible.len());
    assert!(updated >= 2);
    for (reason, n) in &skipped {
        assert_eq!(a["today"]["skipped"][reason], *n, "skipped {reason}");
    }
    // Audit: one line per added and skipped contact, with field names and no values.
    let audit = d.audit_lines();
    let count = |action: &str| {
        audit
            .iter()
            .filter(|l| l["action"] == action && l["account"] == "g")
            .count() as u64
    };
    assert_eq!(count("added"), added);
    assert_eq!(count("skipped"), skipped.values().sum::<u64>());
    let some_added = audit.iter().find(|l| l["action"] == "added").unwrap();
    assert_eq!(some_added["direction"], "to_crm");
    assert!(some_added["fields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "name"));
    assert!(some_added.get("values").is_none());
    // Photos were fetched for created contacts that have one.
    assert!(contacts.iter().any(|c| c["has_photo"] == true));
    let with_photo = contacts.iter().find(|c| c["has_photo"] == true).unwrap();
    let r = d
        .http
        .get(format!(
            "{}/api/v1/contacts/{}/photo",
            d.base(),
            with_photo["id"]
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..2], &[0xff, 0xd8], "a JPEG");
}

#[tokio::test]
async fn google_updates_and_deletions_arrive_on_the_next_poll_and_expired_token_resyncs_without_duplicates(
) {
    let sim = start_sim(vec![SeedUser::new(USER, 120, 12)], vec![]).await;
    let d = daemon_for(&sim, "", &account_toml("g", "google", "all", "one-way")).await;
    d.connect("g", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    d.wait_synced("g", None).await;
    let before = d.contacts().await;
    let links = check_no_duplicates(&before, "g");
    // Pick a linked contact whose CRM contact has only this link, to edit and one to delete.
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
    let num = |pid: &str| pid.trim_start_matches("people/").to_string();
    let (s, v) = sim.control(
        Provider::Google,
        "PATCH",
        &format!("/_sim/users/{USER}/contacts/{}", num(edit_pid)),
        Some(json!({"organizations": [{"name": "Renamed GmbH", "title": "Chief Tester"}]})),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = sim.control(
        Provider::Google,
        "DELETE",
        &format!("/_sim/users/{USER}/contacts/{}", num(del_pid)),
        None,
    );
    assert!(s == 200 || s == 204, "{v}");
    let (s, v) = sim.control(Provider::Google, "POST", &format!("/_sim/users/{USER}/contacts"),
        Some(json!({"names": [{"givenName": "Newcomer", "familyName": "Zed"}], "emailAddresses": [{"value": "newcomer@example.org"}]})));
    assert_eq!(s, 201, "{v}");

    let a = d.sync_now("g").await;
    let after = d.contacts().await;
    check_no_duplicates(&after, "g");
    let edited = after.iter().find(|c| c["id"] == *edit_id).unwrap();
    assert_eq!(edited["company"]["name"], "Renamed GmbH");
    assert_eq!(edited["job_title"], "Chief Tester");
    assert!(
        after.iter().all(|c| c["id"] != *del_id),
        "deleted in the provider, deleted in the CRM"
    );
    assert!(after.iter().any(|c| c["first_name"] == "Newcomer"));
    assert_eq!(after.len(), before.len(), "one deleted, one added");
    assert_eq!(today(&a, &["deleted", "from_provider"]), 1);

    // An expired sync token: a full resync that creates no duplicate and counts no addition.
    let added_before = today(&a, &["added", "to_crm"]);
    assert!(sim.expire_cursors(Provider::Google, USER));
    let a = d.sync_now("g").await;
    let resynced = d.contacts().await;
    check_no_duplicates(&resynced, "g");
    assert_eq!(resynced.len(), after.len());
    assert_eq!(today(&a, &["added", "to_crm"]), added_before);
    assert!(
        d.log().contains("EXPIRED")
            || sim
                .requests(Provider::Google)
                .iter()
                .any(|r| r.status == 400)
    );

    // A deletion made while the token was expired is found by the resync's full listing.
    let victim = resynced
        .iter()
        .find(|c| c["links"].as_array().unwrap().len() == 1)
        .unwrap();
    let pid = victim["links"][0]["provider_id"]
        .as_str()
        .unwrap()
        .to_string();
    sim.control(
        Provider::Google,
        "DELETE",
        &format!("/_sim/users/{USER}/contacts/{}", num(&pid)),
        None,
    );
    sim.expire_cursors(Provider::Google, USER);
    d.sync_now("g").await;
    assert!(d.contacts().await.iter().all(|c| c["id"] != victim["id"]));
}

#[tokio::test]
async fn google_sync_converges_under_30_percent_injected_faults() {
    let sim = start_sim(vec![SeedUser::new(USER, 250, 13)], vec![]).await;
    let (eligible, _) = expected(&google_changes(&sim, USER));
    sim.set_faults(
        Provider::Google,
        FaultConfig {
            probability: 0.3,
            kinds: vec![
                FaultKind::TooMany,
                FaultKind::Internal,
                FaultKind::Unavailable,
                FaultKind::Drop,
                FaultKind::Truncate,
            ],
            retry_after: 0.0,
            seed: 3,
            ..Default::default()
        },
    );
    let d = daemon_for(&sim, "", &account_toml("g", "google", "all", "one-way")).await;
    d.connect("g", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    d.wait_synced("g", None).await;
    let contacts = d.contacts().await;
    let links = check_no_duplicates(&contacts, "g");
    assert_eq!(links.len(), eligible.len());
    let faults = sim
        .requests(Provider::Google)
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert!(faults > 0, "faults were injected");
    // The API kept serving throughout.
    assert_eq!(d.get("/healthz").await["status"], "ok");
}

#[tokio::test]
async fn google_revoked_grant_gives_reauth_required_and_other_accounts_go_on() {
    let sim = start_sim(
        vec![
            SeedUser::new(USER, 40, 14),
            SeedUser::new("bob@example.com", 40, 15),
        ],
        vec![],
    )
    .await;
    let accounts = format!(
        "{}{}",
        account_toml("a", "google", "all", "one-way"),
        account_toml("b", "google", "all", "one-way")
    );
    let d = daemon_for(&sim, "", &accounts).await;
    d.connect("a", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    d.connect(
        "b",
        &sim.refresh_token(Provider::Google, "bob@example.com")
            .unwrap(),
    )
    .await;
    d.wait_synced("a", None).await;
    d.wait_synced("b", None).await;
    assert!(sim.revoke(Provider::Google, USER));
    sim.expire_access_tokens();
    d.admin(Method::POST, "/api/v1/sync", None).await;
    let a = d.wait_state("a", "reauth_required").await;
    assert!(a["last_error"].as_str().unwrap().contains("connect"), "{a}");
    let b = d.sync_now("b").await;
    assert_eq!(b["state"], "idle");
    // No token or secret in the log.
    let refresh = sim
        .refresh_token(Provider::Google, "bob@example.com")
        .unwrap();
    assert!(!d.log().contains(&refresh));
    assert!(!d.log().contains(TOKEN));
}

/// Waits for `g` to stop at the contact limit (SPEC §5) and checks that nothing of the
/// round that crossed it was written; returns the account.
async fn limit_exceeded_with_nothing_written(d: &TestDaemon) -> serde_json::Value {
    let a = d.wait_state("g", "limit_exceeded").await;
    assert!(
        a["last_error"].as_str().unwrap().contains("contact_limit"),
        "{a}"
    );
    assert!(
        d.contacts().await.is_empty(),
        "nothing of the run that crossed the limit is written"
    );
    a
}

#[tokio::test]
async fn google_contact_limit_stops_the_account_without_writing_and_raising_it_resumes() {
    let sim = start_sim(vec![SeedUser::new(USER, 120, 16)], vec![]).await;
    let (eligible, _) = expected(&google_changes(&sim, USER));
    let mut d = TestDaemon::new();
    let providers = providers_for(&sim);
    let acct = account_toml("g", "google", "all", "one-way");
    d.write_config(&d.config_text("contact_limit = 50", &format!("{providers}{acct}")));
    d.start().await;
    d.connect("g", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    limit_exceeded_with_nothing_written(&d).await;
    assert!(d
        .audit_lines()
        .iter()
        .any(|l| l["action"] == "limit_exceeded"));
    // Raising the limit resumes the account.
    d.write_config(&d.config_text("contact_limit = 1000", &format!("{providers}{acct}")));
    d.wait_synced("g", None).await;
    assert_eq!(
        check_no_duplicates(&d.contacts().await, "g").len(),
        eligible.len()
    );
}

/// SPEC §5 with streamed rounds: an initial listing is planned and committed page by page
/// only when the provider's announced total fits under the limit; a listing of three pages
/// that would cross it writes nothing, and once the limit allows it the same listing streams
/// (every eligible contact once).
#[tokio::test]
async fn google_streamed_round_crossing_the_limit_writes_nothing() {
    let sim = start_sim(vec![SeedUser::new(USER, 2300, 18)], vec![]).await;
    let (eligible, _) = expected(&google_changes(&sim, USER));
    assert!(eligible.len() > 1000 && eligible.len() < 2300);
    let mut d = TestDaemon::new();
    let providers = providers_for(&sim);
    let acct = account_toml("g", "google", "all", "one-way");
    let limit = eligible.len() - 1;
    d.write_config(&d.config_text(
        &format!("contact_limit = {limit}"),
        &format!("{providers}{acct}"),
    ));
    d.start().await;
    d.connect("g", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    let a = limit_exceeded_with_nothing_written(&d).await;
    assert_eq!(a["linked"], 0, "{a}");
    assert!(!d.log().contains("Round streamed"));
    // A limit the announced total fits under: the round streams.
    d.write_config(&d.config_text("contact_limit = 2300", &format!("{providers}{acct}")));
    d.wait_synced("g", None).await;
    assert_eq!(
        check_no_duplicates(&d.contacts().await, "g").len(),
        eligible.len()
    );
    assert!(d.log().contains("Round streamed"), "{}", d.log());
}

#[tokio::test]
async fn google_starred_group_syncs_only_starred_and_unstarring_unlinks() {
    let mut user = SeedUser::new(USER, 150, 17);
    user.starred_share = 0.3;
    let sim = start_sim(vec![user], vec![]).await;
    let (s, all) = sim.control(
        Provider::Google,
        "GET",
        &format!("/_sim/users/{USER}/contacts"),
        None,
    );
    assert_eq!(s, 200);
    let changes = google_changes(&sim, USER);
    let starred: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["starred"] == true)
        .map(|c| format!("people/{}", c["id"].as_str().unwrap()))
        .collect();
    let (eligible, _) = expected(&changes);
    let want: Vec<&String> = eligible.iter().filter(|p| starred.contains(p)).collect();
    assert!(!want.is_empty() && want.len() < eligible.len());

    let d = daemon_for(&sim, "", &account_toml("s", "google", "starred", "one-way")).await;
    d.connect("s", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    d.wait_synced("s", None).await;
    let links = check_no_duplicates(&d.contacts().await, "s");
    assert_eq!(links.len(), want.len());

    // Unstar one: it is unlinked, not deleted.
    let pid = want[0].clone();
    let crm_id = links[&pid];
    let (s, v) = sim.control(
        Provider::Google,
        "POST",
        &format!(
            "/_sim/users/{USER}/contacts/{}/unstar",
            pid.trim_start_matches("people/")
        ),
        None,
    );
    assert!(s < 300, "{v}");
    d.sync_now("s").await;
    let c = d.get(&format!("/api/v1/contacts/{crm_id}")).await;
    assert!(
        c["links"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["provider_id"] != pid.as_str()),
        "{c}"
    );
    assert!(d
        .audit_lines()
        .iter()
        .any(|l| l["action"] == "unlinked" && l["provider_id"] == pid.as_str()));

    // Switching the group to all: a fresh full sync links the rest, without duplicates.
    let providers = providers_for(&sim);
    d.write_config(&d.config_text(
        "",
        &format!(
            "{providers}{}",
            account_toml("s", "google", "all", "one-way")
        ),
    ));
    d.wait_for("group all", Duration::from_secs(60), || async {
        let a = d.account("s").await;
        a["group"] == "all"
            && a["state"] == "idle"
            && a["linked"].as_u64() == Some(eligible.len() as u64)
    })
    .await;
    check_no_duplicates(&d.contacts().await, "s");
}

/// SPEC §3 (photos at the initial sync) with streamed rounds: an initial sync cut short
/// after some chunks were committed (every page after the first keeps failing) resumes as
/// the initial sync once the provider recovers, so the contacts the resumed round creates
/// get their photos too, and nothing is created twice.
#[tokio::test]
async fn google_initial_sync_cut_short_resumes_with_photos() {
    use contact_sync::model::Change;
    use contact_sync::sim::{Script, ScriptBody};
    let sim = start_sim(vec![SeedUser::new(USER, 2300, 18)], vec![]).await;
    let changes = google_changes(&sim, USER);
    let (eligible, _) = expected(&changes);
    let with_photo: std::collections::HashSet<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Upsert(pc) if pc.photo_url.is_some() && eligible.contains(&pc.provider_id) => {
                Some(pc.provider_id.clone())
            }
            _ => None,
        })
        .collect();
    assert!(with_photo.len() > 20, "{}", with_photo.len());
    // The first two pages are served; every later page fails.
    sim.script(
        Provider::Google,
        Script {
            method: "GET".into(),
            path: "/people/me/connections".into(),
            with: vec!["pageToken".into()],
            times: 1,
            ..Script::default()
        },
    );
    sim.script(
        Provider::Google,
        Script {
            method: "GET".into(),
            path: "/people/me/connections".into(),
            with: vec!["pageToken".into()],
            status: Some(500),
            body: ScriptBody::Json(
                json!({"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}),
            ),
            ..Script::default()
        },
    );
    let acct = account_toml("g", "google", "all", "one-way");
    let d = daemon_for(&sim, "", &acct).await;
    d.connect("g", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !d.log().contains("Sync round failed") {
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before: std::collections::HashSet<u64> = d
        .contacts()
        .await
        .iter()
        .filter_map(|c| c["id"].as_u64())
        .collect();
    let partial = before.len();
    assert!(
        partial > 0 && partial < eligible.len(),
        "the first pages' chunks are committed, not the round: {partial} of {}",
        eligible.len()
    );
    // The provider recovers: the next round finishes the initial sync.
    sim.clear_scripts(Provider::Google);
    d.wait_synced("g", None).await;
    let contacts = d.contacts().await;
    let links = check_no_duplicates(&contacts, "g");
    assert_eq!(links.len(), eligible.len());
    // A contact created from a provider contact with a photo has it, whichever round
    // created it (a CRM contact with two links was created by the other one, or merged).
    let mut resumed = 0;
    for pid in &with_photo {
        let c = contacts
            .iter()
            .find(|c| c["id"] == links[pid])
            .expect("linked contact");
        if c["links"].as_array().map_or(0, |l| l.len()) != 1 {
            continue;
        }
        assert_eq!(
            c["has_photo"], true,
            "{pid} was created with its photo: {c}"
        );
        if !before.contains(&links[pid]) {
            resumed += 1;
        }
    }
    assert!(
        resumed > 10,
        "the resumed round created contacts with photos: {resumed}"
    );
}
