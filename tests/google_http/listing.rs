//! Listings: paging to the sync token, incremental rounds, the starred group, expired and
//! old cursors, and listings that cannot be trusted.

use chrono::Utc;
use contact_sync::config::Group;
use contact_sync::model::{Change, Progress};
use contact_sync::providers::google::{Cursor, PERSON_FIELDS};
use contact_sync::providers::{Provider as _, ProviderError};
use contact_sync::sim::{Provider, Script};
use serde_json::json;

use crate::*;

#[tokio::test]
async fn full_listing_pages_through_to_the_sync_token_with_identical_parameters() {
    let (sim, book) = three_page_book().await;
    let gc = client(&sim, Group::All);
    let (progress, seen) = recording_progress();
    let r = gc.fetch_round(None, &progress).await.expect("round");
    assert!(r.full);
    assert_eq!(r.complete_scopes, vec![String::new()]);
    assert_eq!(r.pages, 2);
    assert_eq!(ids(&r), book);
    assert!(r.changes.iter().all(|c| matches!(c, Change::Upsert(_))));
    let cur = Cursor::decode(&r.cursor).expect("our cursor");
    assert!(!cur.sync_token.is_empty());
    assert!(Utc::now() - cur.full_sync_at < chrono::Duration::minutes(1));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            Progress {
                pages: 1,
                contacts: 2,
                total: Some(3)
            },
            Progress {
                pages: 2,
                contacts: 3,
                total: Some(3)
            },
        ]
    );

    let reqs = api_requests(&sim);
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.method == "GET"));
    assert_eq!(q(&reqs[0], "personFields").as_deref(), Some(PERSON_FIELDS));
    assert_eq!(q(&reqs[0], "pageSize").as_deref(), Some("1000"));
    assert_eq!(q(&reqs[0], "requestSyncToken").as_deref(), Some("true"));
    assert_eq!(q(&reqs[0], "syncToken"), None);
    assert!(q(&reqs[1], "pageToken").is_some_and(|t| !t.is_empty()));
    assert_eq!(fixed_query(&reqs[0]), fixed_query(&reqs[1]));
    // The access token the token endpoint issued for Alice's grant.
    assert!(reqs[0].bearer.as_deref().is_some_and(|b| !b.is_empty()));
    assert_eq!(reqs[0].user.as_deref(), Some(ALICE));
    assert_eq!(token_requests(&sim).len(), 1);
}

#[tokio::test]
async fn incremental_round_sends_the_sync_token_and_reports_deletions() {
    let (sim, book) = three_page_book().await;
    let gc = client(&sim, Group::All);
    let first = gc.fetch_round(None, &no_progress()).await.expect("full");
    // Alice edits the second contact and deletes the third.
    let (s, _) = sim.control(
        Provider::Google,
        "PATCH",
        &format!("/_sim/users/{ALICE}/contacts/{}", &book[1][7..]),
        Some(json!({"names": [{"givenName": "Changed", "familyName": "Family"}]})),
    );
    assert_eq!(s, 200);
    let (s, _) = sim.control(
        Provider::Google,
        "DELETE",
        &format!("/_sim/users/{ALICE}/contacts/{}", &book[2][7..]),
        None,
    );
    assert_eq!(s, 204);
    let r = gc
        .fetch_round(Some(&first.cursor), &no_progress())
        .await
        .expect("incremental");
    assert!(!r.full);
    assert!(r.complete_scopes.is_empty());
    assert_eq!(r.pages, 1);
    assert!(is_upsert_of(&r.changes[0], &book[1]));
    assert_eq!(
        r.changes[1],
        Change::Deleted {
            provider_id: book[2].clone()
        }
    );
    let cur = Cursor::decode(&r.cursor).unwrap();
    let first_cur = Cursor::decode(&first.cursor).unwrap();
    assert_ne!(cur.sync_token, first_cur.sync_token);
    // The chain keeps the time of the full listing that began it.
    assert_eq!(cur.full_sync_at, first_cur.full_sync_at);
    let reqs = api_requests(&sim);
    assert_eq!(
        q(&reqs[2], "syncToken").as_deref(),
        Some(first_cur.sync_token.as_str())
    );
    // Every other parameter is the one of the full listing.
    let without_sync = |r: &contact_sync::sim::LogEntry| {
        fixed_query(r)
            .into_iter()
            .filter(|(k, _)| k != "syncToken")
            .collect::<Vec<_>>()
    };
    assert_eq!(without_sync(&reqs[2]), without_sync(&reqs[0]));
}

#[tokio::test]
async fn group_starred_lists_everyone_and_marks_unstarred_as_left() {
    let (sim, book) = three_page_book().await;
    let gc = client(&sim, Group::Starred);
    let r = gc.fetch_round(None, &no_progress()).await.unwrap();
    assert!(is_upsert_of(&r.changes[0], &book[0]));
    assert_eq!(
        r.changes[1],
        Change::Left {
            provider_id: book[1].clone()
        }
    );
    assert!(is_upsert_of(&r.changes[2], &book[2]));
}

fn stale_cursor() -> Vec<u8> {
    Cursor {
        v: 1,
        sync_token: "old".into(),
        full_sync_at: Utc::now(),
    }
    .encode()
}

#[tokio::test]
async fn expired_sync_token_restarts_the_round_as_a_full_listing() {
    let (sim, book) = three_page_book().await;
    let gc = client(&sim, Group::All);
    let (progress, seen) = recording_progress();
    let r = gc
        .fetch_round(Some(&stale_cursor()), &progress)
        .await
        .expect("resync");
    assert!(r.full);
    assert_eq!(r.complete_scopes, vec![String::new()]);
    assert_eq!(ids(&r), book);
    let cur = Cursor::decode(&r.cursor).unwrap();
    assert!(!cur.sync_token.is_empty() && cur.sync_token != "old");
    assert_eq!(seen.lock().unwrap().last().unwrap().contacts, 3);
    let reqs = api_requests(&sim);
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].status, 400, "the simulator's EXPIRED_SYNC_TOKEN");
    assert_eq!(q(&reqs[0], "syncToken").as_deref(), Some("old"));
    assert_eq!(q(&reqs[1], "syncToken"), None);
}

#[tokio::test]
async fn http_410_on_a_sync_token_is_treated_as_expired() {
    let (sim, _) = three_page_book().await;
    sim.script(
        Provider::Google,
        Script::on("/v1/people/me/connections")
            .query("syncToken", "old")
            .json(410, google_error(410, "NOT_FOUND", "Gone")),
    );
    let gc = client(&sim, Group::All);
    let r = gc
        .fetch_round(Some(&stale_cursor()), &no_progress())
        .await
        .expect("resync");
    assert!(r.full);
    assert_eq!(r.changes.len(), 3);
}

#[tokio::test]
async fn other_400_is_permanent_not_a_resync() {
    let (sim, _) = three_page_book().await;
    sim.script(
        Provider::Google,
        Script::on("/v1/people/me/connections").json(
            400,
            google_error(400, "INVALID_ARGUMENT", "Invalid personFields mask path"),
        ),
    );
    let gc = client(&sim, Group::All);
    let cur = Cursor {
        v: 1,
        sync_token: "s".into(),
        full_sync_at: Utc::now(),
    }
    .encode();
    let err = gc
        .fetch_round(Some(&cur), &no_progress())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Permanent(m) if m.contains("INVALID_ARGUMENT")),
        "{err:?}"
    );
    assert_eq!(api_requests(&sim).len(), 1);
}

#[tokio::test]
async fn chain_older_than_six_days_is_refreshed_with_a_full_listing() {
    let (sim, _) = three_page_book().await;
    let gc = client(&sim, Group::All);
    let first = gc.fetch_round(None, &no_progress()).await.unwrap();
    let token = Cursor::decode(&first.cursor).unwrap().sync_token;
    sim.clear_requests(Provider::Google);
    let old = Cursor {
        v: 1,
        sync_token: token.clone(),
        full_sync_at: Utc::now() - chrono::Duration::hours(6 * 24 + 1),
    }
    .encode();
    let r = gc.fetch_round(Some(&old), &no_progress()).await.unwrap();
    assert!(r.full);
    assert!(api_requests(&sim)
        .iter()
        .all(|r| q(r, "syncToken").is_none()));
    let fresh = Cursor::decode(&r.cursor).unwrap();
    assert!(Utc::now() - fresh.full_sync_at < chrono::Duration::minutes(1));

    // Five days old is still used incrementally.
    let young = Cursor {
        v: 1,
        sync_token: token,
        full_sync_at: Utc::now() - chrono::Duration::days(5),
    }
    .encode();
    let r = gc.fetch_round(Some(&young), &no_progress()).await.unwrap();
    assert!(!r.full);
}

#[tokio::test]
async fn undecodable_cursor_does_a_full_listing() {
    let (sim, _) = three_page_book().await;
    let gc = client(&sim, Group::All);
    let r = gc
        .fetch_round(Some(b"\x01\x02not-a-cursor"), &no_progress())
        .await
        .unwrap();
    assert!(r.full);
    assert_eq!(r.complete_scopes, vec![String::new()]);
    assert_eq!(r.changes.len(), 3);
}

#[tokio::test]
async fn last_page_without_sync_token_is_not_trusted() {
    let sim = empty_book().await;
    sim.script(
        Provider::Google,
        Script::on("/v1/people/me/connections").json(200, json!({})),
    );
    let gc = client(&sim, Group::All);
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn empty_address_book_is_a_complete_empty_listing() {
    let sim = empty_book().await;
    let gc = client(&sim, Group::All);
    let (progress, seen) = recording_progress();
    let r = gc.fetch_round(None, &progress).await.unwrap();
    assert!(r.full && r.changes.is_empty());
    assert_eq!(r.complete_scopes, vec![String::new()]);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Progress {
            pages: 1,
            contacts: 0,
            total: Some(0)
        }]
    );
}

#[tokio::test]
async fn repeated_page_token_stops_instead_of_looping() {
    let sim = empty_book().await;
    sim.script(
        Provider::Google,
        Script::on("/v1/people/me/connections").json(
            200,
            json!({"connections": [person(1)], "nextPageToken": "same"}),
        ),
    );
    let gc = client(&sim, Group::All);
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    assert_eq!(api_requests(&sim).len(), 2);
}
