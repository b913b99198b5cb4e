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

/// Every page a streamed listing sends, until it ends.
async fn streamed(m: &Mailbox) -> (Round, Vec<crate::providers::Page>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let progress: ProgressFn = Box::new(|_| {});
    let collect = async move {
        let mut pages = vec![];
        while let Some(p) = rx.recv().await {
            pages.push(p);
        }
        pages
    };
    let (round, pages) = futures_util::join!(m.client.fetch_pages(None, &progress, tx), collect);
    (round.unwrap(), pages)
}

/// The upserts of some pages, by id, with whether they carry a photo URL.
fn photo_urls(changes: &[Change]) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Upsert(p) => Some((p.provider_id.clone(), p.photo_url.is_some())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn streamed_full_listing_sends_each_page_as_it_comes_with_the_folders_count_as_total() {
    let m = mailbox().await;
    // Contact lists are counted by `$count` but never listed: the total is an upper bound.
    let (s, _) = m.control("PATCH", "/options", Some(json!({"contactLists": 3})));
    assert_eq!(s, 200);
    let (round, pages) = streamed(&m).await;
    // 300 contacts a folder at 200 a page: four pages, each sent on its own.
    assert_eq!(pages.len(), 4);
    assert!(
        pages.iter().all(|p| p.total == Some(603)),
        "{:?}",
        pages.iter().map(|p| p.total).collect::<Vec<_>>()
    );
    assert!(round.changes.is_empty());
    assert!(round.full);
    assert_eq!(round.complete_scopes, vec![m.root.clone(), m.kids.clone()]);
    assert_eq!(
        GraphCursor::decode(&round.cursor)
            .expect("cursor decodes")
            .folders
            .len(),
        2
    );
    let all: Vec<Change> = pages.into_iter().flat_map(|p| p.changes).collect();
    // The same contacts, with the same photo URLs, as the round fetched whole.
    let whole = m
        .new_client()
        .fetch_round(None, &(Box::new(|_| {}) as ProgressFn))
        .await
        .unwrap();
    assert_eq!(photo_urls(&all), photo_urls(&whole.changes));
    assert!(photo_urls(&all).iter().any(|(_, p)| *p));
    assert_eq!(
        upserts(&Round {
            changes: all,
            ..Round::default()
        }),
        m.all_ids()
    );
}

#[tokio::test]
async fn streamed_listing_is_sent_whole_when_the_mailbox_does_not_count() {
    let m = mailbox().await;
    let (s, _) = m.control("PATCH", "/options", Some(json!({"refuseCount": true})));
    assert_eq!(s, 200);
    let (round, pages) = streamed(&m).await;
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].total, Some(600));
    assert!(round.full);
    let all = Round {
        changes: pages.into_iter().flat_map(|p| p.changes).collect(),
        ..Round::default()
    };
    assert_eq!(upserts(&all), m.all_ids());
}

/// A streamed listing holds its removals to the end and keeps those a listing fetched whole
/// keeps ([`dedupe`]): every sequence of up to four listings (as an upsert or as an
/// unreadable contact) and removals of one contact across two folders ends the same way.
#[tokio::test]
async fn streamed_removals_stand_as_they_would_in_a_listing_fetched_whole() {
    use crate::providers::graph::read::{dedupe, FolderStream};
    let m = mailbox_with(2).await;
    let listed = m
        .client
        .fetch_round(None, &(Box::new(|_| {}) as ProgressFn))
        .await
        .unwrap();
    let Some(Change::Upsert(pc)) = listed.changes.first().cloned() else {
        panic!("a contact is listed");
    };
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Kind {
        Upsert,
        Unreadable,
        Removed,
    }
    let kind = |c: &Change| match c {
        Change::Upsert(_) => Kind::Upsert,
        Change::Unreadable { .. } => Kind::Unreadable,
        Change::Deleted { .. } => Kind::Removed,
        other => panic!("not made here: {other:?}"),
    };
    let change = |k: Kind| match k {
        Kind::Upsert => Change::Upsert(pc.clone()),
        Kind::Unreadable => Change::Unreadable {
            provider_id: pc.provider_id.clone(),
            version: "v".into(),
            error: "e".into(),
        },
        Kind::Removed => Change::Deleted {
            provider_id: pc.provider_id.clone(),
        },
    };
    // (folder, kind) for every sequence of length 1..=4.
    let events: Vec<(usize, Kind)> = [0, 1]
        .into_iter()
        .flat_map(|f| [Kind::Upsert, Kind::Unreadable, Kind::Removed].map(|k| (f, k)))
        .collect();
    let mut sequences: Vec<Vec<(usize, Kind)>> = vec![];
    let mut frontier: Vec<Vec<(usize, Kind)>> = vec![vec![]];
    for _ in 0..4 {
        frontier = frontier
            .iter()
            .flat_map(|s| {
                events.iter().map(|e| {
                    let mut s = s.clone();
                    s.push(*e);
                    s
                })
            })
            .collect();
        sequences.extend(frontier.iter().cloned());
    }
    for seq in &sequences {
        let whole = dedupe(
            seq.iter()
                .map(|&(f, k)| (f.to_string(), change(k)))
                .collect(),
        );
        assert!(whole.len() <= 1, "{seq:?}");
        let want = whole.last().map(kind);
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let mut stream = FolderStream::new(&tx, 1);
        for &(f, k) in seq {
            stream.set_folder(f, None);
            stream.send(vec![change(k)]).await.unwrap();
        }
        let removals = stream.removals();
        drop(stream);
        drop(tx);
        let mut sent = vec![];
        while let Some(p) = rx.recv().await {
            sent.extend(p.changes);
        }
        assert!(sent.iter().all(|c| kind(c) != Kind::Removed), "{seq:?}");
        assert!(removals.len() <= 1, "one removal at most: {seq:?}");
        // The planner applies what was sent in order, then the removals.
        let got = sent.iter().chain(&removals).last().map(kind);
        assert_eq!(got, want, "{seq:?}");
    }
    assert_eq!(sequences.len(), 6 + 36 + 216 + 1296);
}
