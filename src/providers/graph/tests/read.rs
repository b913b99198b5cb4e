//! Reading a mailbox against the simulator: folders, per-folder delta, paging, expired
//! links, vanished folders.

use crate::model::Progress;
use crate::providers::graph::GraphCursor;
use crate::providers::{Provider as _, ProviderError};

use super::*;

#[tokio::test]
async fn first_round_lists_default_and_child_folders_in_full_with_prefer_on_every_request() {
    let m = mailbox().await;
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let progress: ProgressFn = Box::new(move |p| s2.lock().unwrap().push(p));

    let round = m.client.fetch_round(None, &progress).await.unwrap();

    assert!(round.full);
    assert_eq!(round.complete_scopes, vec![m.root.clone(), m.kids.clone()]);
    assert!(round.gone_scopes.is_empty());
    // 300 contacts a folder at 200 a page.
    assert_eq!(round.pages, 4);
    assert_eq!(upserts(&round), m.all_ids());
    assert!(
        deletions(&round).is_empty(),
        "a first listing of the simulator has no removals (see removed_row_in_a_page_becomes_a_deletion)"
    );
    let cursor = GraphCursor::decode(&round.cursor).expect("cursor decodes");
    assert_eq!(cursor.folders.len(), 2);
    for f in [&m.root, &m.kids] {
        assert!(cursor.folders[f].contains("/contacts/delta?$deltatoken="));
    }
    // Progress after each page.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen.last().map(|p| (p.pages, p.contacts)), Some((4, 600)));
    // Every request, follow-ups included, carries Prefer and the bearer token.
    m.assert_prefer_on_every_request();
    let follow_ups = m
        .graph_requests()
        .iter()
        .filter(|r| r.query.contains("skiptoken"))
        .count();
    assert_eq!(follow_ups, 2, "one delta follow-up per folder");
    let initial_deltas: Vec<LogEntry> = m
        .graph_requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/contacts/delta") && !r.query.contains("token"))
        .collect();
    assert_eq!(initial_deltas.len(), 2);
    for r in initial_deltas {
        assert!(r
            .query
            .contains("$select=id,givenName,surname,displayName,emailAddresses"));
        assert!(r.query.contains("parentFolderId,changeKey"));
    }
    // The rotated refresh token was stored.
    let stored = m.stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], m.refresh);
    assert_eq!(
        m.sim.refresh_token(SimProvider::Outlook, OLGA),
        Some(stored[0].clone())
    );
}

#[tokio::test]
async fn child_folders_are_listed_across_pages() {
    let m = mailbox_with(0).await;
    // Graph pages folder listings ten at a time: twelve children need a second page.
    for i in 0..11 {
        let (status, _) = m.control("POST", "/folders", Some(json!({"name": format!("F{i}")})));
        assert_eq!(status, 201);
    }
    let round = m.round(None).await;
    assert_eq!(round.complete_scopes.len(), 13);
    assert_eq!(round.complete_scopes[0], m.root);
    let folder_pages: Vec<LogEntry> = m
        .graph_requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/childFolders"))
        .collect();
    assert!(
        folder_pages.iter().any(|r| r.query.contains("$skip=10")),
        "the next link of the first folder page was followed"
    );
}

#[tokio::test]
async fn expired_delta_link_410_relists_only_that_folder_in_full() {
    let m = mailbox().await;
    let first = m.round(None).await;
    let kids = m.ids_in(&m.kids);
    let (carol, dave) = (kids[0].clone(), kids[1].clone());
    // Delta rows of changed contacts carry only what changed: carol's is fetched by id.
    m.control("PATCH", "/options", Some(json!({"partialDelta": true})));
    m.control(
        "PATCH",
        &format!("/contacts/{carol}"),
        Some(json!({"jobTitle": "CTO"})),
    );
    m.control("DELETE", &format!("/contacts/{dave}"), None);
    assert!(m.sim.expire_graph_folder_delta(OLGA, &m.root));
    m.sim.clear_requests(SimProvider::Outlook);

    let round = m.round(Some(&first.cursor)).await;

    // root's link answered 410 SyncStateNotFound: listed again in full, within the round.
    assert_eq!(round.complete_scopes, vec![m.root.clone()]);
    assert!(!round.full);
    let up = upserts(&round);
    for id in m.ids_in(&m.root) {
        assert!(up.contains(&(id, m.root.clone())));
    }
    // kids went on incrementally: the partial row was fetched in full by id.
    let carol_now = round
        .changes
        .iter()
        .find_map(|c| match c {
            Change::Upsert(p) if p.provider_id == carol => Some(p.clone()),
            _ => None,
        })
        .expect("carol upserted");
    let (_, _, sim_carol) = m
        .contacts()
        .into_iter()
        .find(|(i, _, _)| *i == carol)
        .expect("carol");
    assert_eq!(carol_now.scope, m.kids);
    assert_eq!(
        carol_now.fields.first_name,
        sim_carol["givenName"].as_str().unwrap_or_default()
    );
    let sim_emails: Vec<String> = sim_carol["emailAddresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["address"].as_str().map(String::from))
        .collect();
    assert_eq!(carol_now.fields.emails, sim_emails);
    assert_eq!(carol_now.fields.job_title.as_deref(), Some("CTO"));
    assert!(deletions(&round).contains(&dave));
    let before = GraphCursor::decode(&first.cursor).unwrap();
    let cursor = GraphCursor::decode(&round.cursor).unwrap();
    assert!(cursor.folders[&m.root].contains("deltatoken="));
    assert!(cursor.folders[&m.kids].contains("deltatoken="));
    assert_ne!(cursor.folders[&m.kids], before.folders[&m.kids]);
    let reqs = m.graph_requests();
    assert!(reqs
        .iter()
        .any(|r| r.path == format!("/v1.0/me/contacts/{}", enc(&carol))));
    let root_delta = format!("/v1.0/me/contactFolders/{}/contacts/delta", enc(&m.root));
    assert_eq!(
        reqs.iter()
            .filter(|r| r.path == root_delta
                && r.query.contains("$select=")
                && !r.query.contains("token"))
            .count(),
        1,
        "root restarted from the initial delta URL once"
    );
    m.assert_prefer_on_every_request();
}

#[tokio::test]
async fn resync_required_code_in_a_400_is_compared_case_insensitively() {
    let m = mailbox().await;
    let first = m.round(None).await;
    assert!(m.sim.expire_graph_folder_delta(OLGA, &m.root));
    m.script(
        Script::on(&format!("{}/contacts/delta", m.kids))
            .with("$deltatoken")
            .times(1)
            .json(
                400,
                json!({"error": {"code": "BadRequest", "innerError": {"code": "RESYNCREQUIRED"}}}),
            ),
    );
    let round = m.round(Some(&first.cursor)).await;
    assert_eq!(round.complete_scopes, vec![m.root.clone(), m.kids.clone()]);
    assert!(round.full);
}

/// A third folder, `Old`, listed by a first round; the cursor of that round.
async fn with_old_folder(m: &Mailbox) -> (String, Vec<u8>) {
    let (_, f) = m.control("POST", "/folders", Some(json!({"name": "Old"})));
    let old = f["id"].as_str().expect("folder id").to_string();
    let first = m.round(None).await;
    assert_eq!(GraphCursor::decode(&first.cursor).unwrap().folders.len(), 3);
    m.sim.clear_requests(SimProvider::Outlook);
    (old, first.cursor)
}

/// A mailbox whose folder `Old`, listed by a first round, was deleted since: the mailbox,
/// the folder's id, the first round's cursor and the path of the folder's lookup.
async fn deleted_old_folder() -> (Mailbox, String, Vec<u8>, String) {
    let m = mailbox_with(60).await;
    let (old, cursor) = with_old_folder(&m).await;
    assert_eq!(m.control("DELETE", &format!("/folders/{old}"), None).0, 204);
    let lookup = format!("/me/contactFolders/{}", enc(&old));
    (m, old, cursor, lookup)
}

fn no_request_into(m: &Mailbox, folder: &str) -> bool {
    let prefix = format!("/v1.0/me/contactFolders/{}/", enc(folder));
    m.graph_requests()
        .iter()
        .all(|r| !r.path.starts_with(&prefix))
}

#[tokio::test]
async fn vanished_folder_confirmed_by_404_item_not_found_is_a_gone_scope() {
    let m = mailbox_with(60).await;
    let (old, cursor) = with_old_folder(&m).await;
    assert_eq!(m.control("DELETE", &format!("/folders/{old}"), None).0, 204);
    let round = m.round(Some(&cursor)).await;
    assert_eq!(round.gone_scopes, vec![old.clone()]);
    let cursor = GraphCursor::decode(&round.cursor).unwrap();
    assert!(!cursor.folders.contains_key(&old));
    assert_eq!(cursor.folders.len(), 2);
    assert!(no_request_into(&m, &old));
}

#[tokio::test]
async fn folder_found_by_id_outside_the_default_tree_is_a_gone_scope() {
    // Outlook moves a folder the user deletes to Deleted Items; Graph still finds it.
    let m = mailbox_with(60).await;
    let (old, cursor) = with_old_folder(&m).await;
    let (status, moved) = m.control(
        "POST",
        &format!("/folders/{old}/move-to-deleted-items"),
        None,
    );
    assert_eq!(status, 200);
    assert_ne!(moved["parentFolderId"], json!(m.root));
    let round = m.round(Some(&cursor)).await;
    assert_eq!(round.gone_scopes, vec![old.clone()]);
    assert!(!GraphCursor::decode(&round.cursor)
        .unwrap()
        .folders
        .contains_key(&old));
    assert!(no_request_into(&m, &old));
}

#[tokio::test]
async fn vanished_folder_whose_lookup_fails_with_500_fails_the_round() {
    let (m, old, cursor, lookup) = deleted_old_folder().await;
    m.script(graph_error(
        &lookup,
        500,
        "InternalServerError",
        "An internal server error occurred.",
    ));
    let err = m.failed_round(Some(&cursor)).await;
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    // Retried per policy before giving up.
    let lookups = m
        .graph_requests()
        .iter()
        .filter(|r| r.path == format!("/v1.0/me/contactFolders/{}", enc(&old)))
        .count();
    assert_eq!(lookups as u32, RetryPolicy::fast().max_attempts);
}

#[tokio::test]
async fn vanished_folder_with_a_bare_404_is_not_treated_as_gone() {
    let (m, _, cursor, lookup) = deleted_old_folder().await;
    m.script(Script::on(&lookup).text(404, "<html>no</html>"));
    let err = m.failed_round(Some(&cursor)).await;
    assert!(matches!(err, ProviderError::Permanent(_)), "{err:?}");
}

#[tokio::test]
async fn default_folder_falls_back_to_the_parent_of_a_top_level_folder() {
    let m = mailbox_with(60).await;
    m.script(graph_error(
        "/me/contactFolders/contacts",
        400,
        "ErrorInvalidIdMalformed",
        "Id is malformed.",
    ));
    let round = m.round(None).await;
    assert_eq!(round.complete_scopes, vec![m.root.clone(), m.kids.clone()]);
    m.assert_prefer_on_every_request();
}

#[tokio::test]
async fn skiptoken_expiring_mid_listing_restarts_that_folder_and_keeps_no_half_round() {
    let m = mailbox().await;
    m.script(
        Script::on(&format!("{}/contacts/delta", m.kids))
            .with("$skiptoken")
            .times(1)
            .json(410, json!({"error": {"code": "syncStateNotFound"}})),
    );
    let round = m.round(None).await;
    assert_eq!(round.complete_scopes, vec![m.root.clone(), m.kids.clone()]);
    // The first page of kids was listed before the failure and again after the restart:
    // one change per contact.
    let first_of_kids = m.ids_in(&m.kids)[0].clone();
    assert_eq!(
        round
            .changes
            .iter()
            .filter(|c| c.provider_id() == first_of_kids)
            .count(),
        1
    );
    assert_eq!(upserts(&round), m.all_ids());
    let kids_delta = format!("/v1.0/me/contactFolders/{}/contacts/delta", enc(&m.kids));
    let kids_starts = m
        .graph_requests()
        .iter()
        .filter(|r| r.path == kids_delta && !r.query.contains("token"))
        .count();
    assert_eq!(kids_starts, 2);
    let cursor = GraphCursor::decode(&round.cursor).unwrap();
    assert!(cursor.folders[&m.kids].contains("deltatoken="));
}

#[tokio::test]
async fn stored_link_to_another_host_is_not_followed_and_the_folder_is_relisted() {
    let m = mailbox_with(60).await;
    let first = m.round(None).await;
    let mut c = GraphCursor::decode(&first.cursor).unwrap();
    c.folders.insert(
        m.root.clone(),
        format!(
            "http://old-proxy.invalid/v1.0/me/contactFolders/{}/contacts/delta?$deltatoken=x",
            m.root
        ),
    );
    let round = m.round(Some(&c.encode())).await;
    assert_eq!(round.complete_scopes, vec![m.root.clone()]);
    let cursor = GraphCursor::decode(&round.cursor).unwrap();
    assert!(cursor.folders[&m.root].starts_with(&m.sim.graph_base));
}

#[tokio::test]
async fn delta_page_without_next_or_delta_link_is_a_failed_fetch() {
    let m = mailbox_with(60).await;
    m.script(Script::on("/contacts/delta").json(200, json!({"value": []})));
    let err = m.failed_round(None).await;
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn paging_link_to_another_host_is_refused() {
    let m = mailbox_with(60).await;
    m.script(
        Script::on(&format!("{}/contacts/delta", enc(&m.root))).json(
            200,
            json!({"value": [], "@odata.nextLink": "http://evil.example/steal"}),
        ),
    );
    let err = m.failed_round(None).await;
    assert!(matches!(err, ProviderError::Permanent(_)), "{err:?}");
}
