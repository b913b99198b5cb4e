//! Integration tests of the Google People API simulator, over HTTP.

use std::time::Duration;

use base64::Engine;
use contact_sync::sim::{FaultConfig, FaultKind, Provider, SeedUser, Sim, SimOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ALICE: &str = "alice@example.com";

async fn sim_with(contacts: usize) -> Sim {
    let mut u = SeedUser::new(ALICE, contacts, 11);
    u.starred_share = 0.3;
    Sim::start(SimOptions {
        google_users: vec![u, SeedUser::new("bob@example.com", 5, 12)],
        ..SimOptions::default()
    })
    .await
    .expect("sim starts")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn access_token(sim: &Sim, user: &str) -> String {
    let rt = sim
        .refresh_token(Provider::Google, user)
        .expect("seeded refresh token");
    let v: Value = client()
        .post(format!("{}/token", sim.google_base))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("client_id", "cid"),
            ("client_secret", "secret"),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    v["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

async fn get(sim: &Sim, tok: &str, path_query: &str) -> (StatusCode, Value) {
    let r = client()
        .get(format!("{}{}", sim.google_base, path_query))
        .bearer_auth(tok)
        .send()
        .await
        .expect("request");
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn send(
    sim: &Sim,
    tok: &str,
    method: reqwest::Method,
    path_query: &str,
    body: Value,
) -> (StatusCode, Value) {
    let r = client()
        .request(method, format!("{}{}", sim.google_base, path_query))
        .bearer_auth(tok)
        .json(&body)
        .send()
        .await
        .expect("request");
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Lists every page; returns (people, nextSyncToken, number of pages).
async fn list_all(sim: &Sim, tok: &str, extra: &str) -> (Vec<Value>, Option<String>, usize) {
    let mut people = Vec::new();
    let mut page_token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q =
            format!("/v1/people/me/connections?personFields=names,emailAddresses,metadata{extra}");
        if let Some(t) = &page_token {
            q.push_str(&format!("&pageToken={}", urlenc(t)));
        }
        let (s, v) = get(sim, tok, &q).await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        people.extend(v["connections"].as_array().cloned().unwrap_or_default());
        match v["nextPageToken"].as_str() {
            Some(t) => {
                assert!(
                    v.get("nextSyncToken").is_none(),
                    "sync token only on the last page"
                );
                page_token = Some(t.to_string());
            }
            None => return (people, v["nextSyncToken"].as_str().map(String::from), pages),
        }
    }
}

fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn error_status(v: &Value) -> (&str, Option<&str>) {
    (
        v["error"]["status"].as_str().unwrap_or(""),
        v["error"]["details"][0]["reason"].as_str(),
    )
}

#[tokio::test]
async fn paging_totals_and_person_fields() {
    let sim = sim_with(250).await;
    let tok = access_token(&sim, ALICE).await;
    let (people, sync, pages) = list_all(&sim, &tok, "&pageSize=100&requestSyncToken=true").await;
    assert_eq!(people.len(), 250);
    assert_eq!(pages, 3);
    assert!(sync.is_some());
    let mut names: Vec<&str> = people
        .iter()
        .filter_map(|p| p["resourceName"].as_str())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 250);
    assert!(names.iter().all(|n| n.starts_with("people/c")));

    let (_, first) = get(&sim, &tok, "/v1/people/me/connections?personFields=names").await;
    assert_eq!(first["totalPeople"], 250);
    assert_eq!(first["totalItems"], 250);
    assert_eq!(
        first["connections"].as_array().map(Vec::len),
        Some(100),
        "default page size"
    );
    for p in first["connections"].as_array().into_iter().flatten() {
        for k in p.as_object().expect("person").keys() {
            assert!(
                ["resourceName", "etag", "names"].contains(&k.as_str()),
                "unexpected {k}"
            );
        }
    }
    // No sync token unless asked for.
    let (_, all) = get(
        &sim,
        &tok,
        "/v1/people/me/connections?personFields=names&pageSize=1000",
    )
    .await;
    assert!(all.get("nextSyncToken").is_none() && all.get("nextPageToken").is_none());

    let (s, v) = get(&sim, &tok, "/v1/people/me/connections").await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], 400);
    assert_eq!(error_status(&v).0, "INVALID_ARGUMENT");
    let (s, v) = get(
        &sim,
        &tok,
        "/v1/people/me/connections?personFields=names,bogus",
    )
    .await;
    assert_eq!((s.as_u16(), error_status(&v).0), (400, "INVALID_ARGUMENT"));
    let (s, _) = get(
        &sim,
        &tok,
        "/v1/people/me/connections?personFields=names&pageSize=1001",
    )
    .await;
    assert_eq!(s, 400);
    // A page token used with other parameters is rejected.
    let (_, p1) = get(
        &sim,
        &tok,
        "/v1/people/me/connections?personFields=names&pageSize=10",
    )
    .await;
    let t = p1["nextPageToken"].as_str().expect("next page");
    let (s, _) = get(
        &sim,
        &tok,
        &format!(
            "/v1/people/me/connections?personFields=phoneNumbers&pageToken={}",
            urlenc(t)
        ),
    )
    .await;
    assert_eq!(s, 400);
    sim.stop().await;
}

#[tokio::test]
async fn person_wire_format() {
    let sim = sim_with(300).await;
    let tok = access_token(&sim, ALICE).await;
    let (_, v) = get(
        &sim,
        &tok,
        "/v1/people/me/connections?pageSize=1000&personFields=names,emailAddresses,phoneNumbers,addresses,organizations,birthdays,photos,memberships,metadata",
    )
    .await;
    let people = v["connections"].as_array().expect("connections").clone();
    let p0 = &people[0];
    assert_eq!(p0["metadata"]["sources"][0]["type"], "CONTACT");
    assert!(p0["metadata"]["sources"][0]["updateTime"]
        .as_str()
        .is_some());
    assert!(p0["etag"].as_str().is_some());
    let memberships = |p: &Value| -> Vec<String> {
        p["memberships"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                m["contactGroupMembership"]["contactGroupResourceName"]
                    .as_str()
                    .map(String::from)
            })
            .collect()
    };
    assert!(people
        .iter()
        .all(|p| memberships(p).contains(&"contactGroups/myContacts".to_string())));
    let starred = people
        .iter()
        .filter(|p| memberships(p).contains(&"contactGroups/starred".to_string()))
        .count();
    assert!(starred > 40 && starred < 150, "{starred}");
    assert!(people
        .iter()
        .any(|p| p["birthdays"][0]["date"].get("year").is_none()
            && p["birthdays"][0]["date"]["month"].is_number()));
    assert!(people.iter().any(|p| p["phoneNumbers"][0]["canonicalForm"]
        .as_str()
        .is_some_and(|c| c.starts_with('+'))));
    assert!(people
        .iter()
        .any(|p| p["addresses"][1]["metadata"]["primary"] == json!(true)));
    assert!(people.iter().any(|p| p["emailAddresses"]
        .as_array()
        .is_some_and(|a| a.len() == 11)));
    // Photos: a real one and default ones, all served as JPEG.
    let real = people
        .iter()
        .filter_map(|p| p["photos"][0].as_object())
        .find(|ph| ph.get("default").is_none())
        .and_then(|ph| ph["url"].as_str())
        .expect("a contact with a photo")
        .to_string();
    let bytes = client()
        .get(&real)
        .send()
        .await
        .expect("photo")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF]);
    // Contact groups.
    let (s, g) = get(&sim, &tok, "/v1/contactGroups/starred?maxMembers=5").await;
    assert_eq!(s, 200);
    assert_eq!(g["memberCount"], starred);
    assert_eq!(g["memberResourceNames"].as_array().map(Vec::len), Some(5));
    let (_, g) = get(&sim, &tok, "/v1/contactGroups/myContacts").await;
    assert_eq!(g["memberCount"], 300);
    assert!(g.get("memberResourceNames").is_none());
    sim.stop().await;
}

#[tokio::test]
async fn sync_tokens_changes_during_paging_and_deletions() {
    let sim = sim_with(120).await;
    let tok = access_token(&sim, ALICE).await;
    let ctl = format!("{}/_sim/users/{ALICE}", sim.google_base);
    let c = client();
    // First page of a full sync.
    let (_, p1) = get(
        &sim,
        &tok,
        "/v1/people/me/connections?personFields=names,metadata&pageSize=50&requestSyncToken=true",
    )
    .await;
    let seen_first: Vec<String> = p1["connections"]
        .as_array()
        .expect("page")
        .iter()
        .map(|p| p["resourceName"].as_str().unwrap_or("").to_string())
        .collect();
    let all: Vec<Value> = c
        .get(format!("{ctl}/contacts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 120);
    // While paging: change a contact already listed, delete one not listed yet, add one.
    let changed = seen_first[3].trim_start_matches("people/").to_string();
    let r = c
        .patch(format!("{ctl}/contacts/{changed}"))
        .json(&json!({"names": [{"givenName": "Renamed", "familyName": "Person"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deleted = all[110]["id"].as_str().unwrap().to_string();
    assert_eq!(
        c.delete(format!("{ctl}/contacts/{deleted}"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let created: Value = c.post(format!("{ctl}/contacts")).json(&json!({"names": [{"givenName": "New", "familyName": "Comer"}], "emailAddresses": [{"value": "new@example.com"}]})).send().await.unwrap().json().await.unwrap();
    let created_id = created["id"].as_str().unwrap().to_string();
    // Finish the round.
    let mut token = p1["nextPageToken"].as_str().map(String::from);
    let mut sync = None;
    while let Some(t) = token {
        let (s, v) = get(&sim, &tok, &format!("/v1/people/me/connections?personFields=names,metadata&pageSize=50&requestSyncToken=true&pageToken={}", urlenc(&t))).await;
        assert_eq!(s, 200);
        token = v["nextPageToken"].as_str().map(String::from);
        sync = v["nextSyncToken"].as_str().map(String::from);
    }
    let sync = sync.expect("sync token on the last page");
    // The delta brings all three changes.
    let (s, d) = get(&sim, &tok, &format!("/v1/people/me/connections?personFields=names,metadata&requestSyncToken=true&syncToken={}", urlenc(&sync))).await;
    assert_eq!(s, 200, "{d}");
    let conns = d["connections"].as_array().expect("changes").clone();
    let find = |id: &str| {
        conns
            .iter()
            .find(|p| p["resourceName"] == json!(format!("people/{id}")))
            .cloned()
    };
    let ch = find(&changed).expect("changed person in delta");
    assert_eq!(ch["names"][0]["givenName"], "Renamed");
    let del = find(&deleted).expect("deleted person in delta");
    assert_eq!(del["metadata"]["deleted"], true);
    assert!(del.get("names").is_none());
    assert!(find(&created_id).is_some());
    assert_eq!(conns.len(), 3);
    // Next round is empty; the token chains.
    let sync2 = d["nextSyncToken"]
        .as_str()
        .expect("next sync token")
        .to_string();
    let (_, d2) = get(
        &sim,
        &tok,
        &format!(
            "/v1/people/me/connections?personFields=names&requestSyncToken=true&syncToken={}",
            urlenc(&sync2)
        ),
    )
    .await;
    assert!(d2.get("connections").is_none(), "{d2}");
    // Delta paging: many changes with a small page size.
    for p in &all[..30] {
        let id = p["id"].as_str().unwrap();
        c.post(format!("{ctl}/contacts/{id}/star"))
            .send()
            .await
            .unwrap();
    }
    let mut got = 0;
    let mut pt: Option<String> = None;
    loop {
        let mut q = format!("/v1/people/me/connections?personFields=names&pageSize=7&requestSyncToken=true&syncToken={}", urlenc(&sync2));
        if let Some(t) = &pt {
            q.push_str(&format!("&pageToken={}", urlenc(t)));
        }
        let (s, v) = get(&sim, &tok, &q).await;
        assert_eq!(s, 200);
        got += v["connections"].as_array().map(Vec::len).unwrap_or(0);
        match v["nextPageToken"].as_str() {
            Some(t) => pt = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(got, 30);
    sim.stop().await;
}

#[tokio::test]
async fn expired_sync_token_error_shape() {
    let sim = sim_with(5).await;
    let tok = access_token(&sim, ALICE).await;
    let (_, v) = get(
        &sim,
        &tok,
        "/v1/people/me/connections?personFields=names&requestSyncToken=true",
    )
    .await;
    let sync = v["nextSyncToken"].as_str().expect("sync").to_string();
    let check = |s: StatusCode, v: &Value| {
        assert_eq!(s, 400);
        assert_eq!(v["error"]["code"], 400);
        assert_eq!(v["error"]["status"], "FAILED_PRECONDITION");
        assert_eq!(
            v["error"]["message"],
            "Sync token is expired. Clear local cache and retry call without the sync token."
        );
        assert_eq!(
            v["error"]["details"][0]["@type"],
            "type.googleapis.com/google.rpc.ErrorInfo"
        );
        assert_eq!(v["error"]["details"][0]["reason"], "EXPIRED_SYNC_TOKEN");
    };
    let q = format!(
        "/v1/people/me/connections?personFields=names&syncToken={}",
        urlenc(&sync)
    );
    let (s, v) = get(&sim, &tok, &q).await;
    assert_eq!(s, 200, "{v}");
    // Older than seven days.
    sim.advance_clock(Duration::from_secs(8 * 24 * 3600));
    let tok = access_token(&sim, ALICE).await;
    let (s, v) = get(&sim, &tok, &q).await;
    check(s, &v);
    // Expired through the control API.
    let (_, v) = get(
        &sim,
        &tok,
        "/v1/people/me/connections?personFields=names&requestSyncToken=true",
    )
    .await;
    let fresh = v["nextSyncToken"].as_str().expect("sync").to_string();
    let r = client()
        .post(format!(
            "{}/_sim/users/{ALICE}/expire-cursors",
            sim.google_base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, v) = get(
        &sim,
        &tok,
        &format!(
            "/v1/people/me/connections?personFields=names&syncToken={}",
            urlenc(&fresh)
        ),
    )
    .await;
    check(s, &v);
    let (s, v) = get(
        &sim,
        &tok,
        "/v1/people/me/connections?personFields=names&syncToken=not-a-token",
    )
    .await;
    check(s, &v);
    // Re-seeding a user invalidates its old tokens.
    let bob = "bob@example.com";
    let tok = access_token(&sim, bob).await;
    let (_, v) = get(
        &sim,
        &tok,
        "/v1/people/me/connections?personFields=names&requestSyncToken=true",
    )
    .await;
    let before = v["nextSyncToken"].as_str().expect("sync").to_string();
    sim.add_user(Provider::Google, &SeedUser::new(bob, 5, 12));
    let tok = access_token(&sim, bob).await;
    let (s, v) = get(
        &sim,
        &tok,
        &format!(
            "/v1/people/me/connections?personFields=names&syncToken={}",
            urlenc(&before)
        ),
    )
    .await;
    check(s, &v);
    sim.stop().await;
}

#[tokio::test]
async fn writes_etags_and_batches() {
    let sim = sim_with(3).await;
    let tok = access_token(&sim, ALICE).await;
    let (s, p) = send(
        &sim,
        &tok,
        reqwest::Method::POST,
        "/v1/people:createContact?personFields=names,emailAddresses,memberships,metadata",
        json!({"names": [{"givenName": "Zoë", "familyName": "Ünal"}], "emailAddresses": [{"value": "zoe@example.com", "type": "work"}],
               "memberships": [{"contactGroupMembership": {"contactGroupResourceName": "contactGroups/starred"}}]}),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    let rn = p["resourceName"].as_str().expect("rn").to_string();
    assert_eq!(p["names"][0]["displayName"], "Zoë Ünal");
    assert_eq!(p["memberships"].as_array().map(Vec::len), Some(2));
    let person_etag = p["etag"].as_str().expect("etag").to_string();
    let etag = p["metadata"]["sources"][0]["etag"]
        .as_str()
        .expect("source etag")
        .to_string();
    assert_ne!(
        etag, person_etag,
        "Person.etag and the CONTACT source's etag are different values"
    );
    let src = |e: &str| json!({"sources": [{"type": "CONTACT", "etag": e}]});
    let upd = format!("/v1/{rn}:updateContact?updatePersonFields=emailAddresses&personFields=emailAddresses,names,metadata");
    // The person's etag in the source's slot is refused, as Google does.
    let (s, e) = send(
        &sim,
        &tok,
        reqwest::Method::PATCH,
        &upd,
        json!({"metadata": src(&person_etag), "emailAddresses": [{"value": "zoe@new.example"}]}),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["status"], "FAILED_PRECONDITION");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("person.metadata.sources.etag"));
    let (s, p2) = send(
        &sim,
        &tok,
        reqwest::Method::PATCH,
        &upd,
        json!({"metadata": src(&etag), "emailAddresses": [{"value": "zoe@new.example"}]}),
    )
    .await;
    assert_eq!(s, 200, "{p2}");
    assert_eq!(p2["emailAddresses"][0]["value"], "zoe@new.example");
    assert_eq!(
        p2["names"][0]["givenName"], "Zoë",
        "fields outside the mask stay"
    );
    assert_ne!(
        p2["etag"],
        json!(person_etag),
        "both etags change on a write"
    );
    assert_ne!(p2["metadata"]["sources"][0]["etag"], json!(etag));
    // Stale etag.
    let (s, e) = send(
        &sim,
        &tok,
        reqwest::Method::PATCH,
        &upd,
        json!({"metadata": src(&etag), "emailAddresses": []}),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["status"], "FAILED_PRECONDITION");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("etag"));
    // Missing etag: `person.etag` alone is not the source etag.
    let (s, _) = send(
        &sim,
        &tok,
        reqwest::Method::PATCH,
        &upd,
        json!({"etag": p2["etag"], "emailAddresses": []}),
    )
    .await;
    assert_eq!(s, 400);
    // Missing mask.
    let (s, _) = send(
        &sim,
        &tok,
        reqwest::Method::PATCH,
        &format!("/v1/{rn}:updateContact"),
        json!({"metadata": p2["metadata"]}),
    )
    .await;
    assert_eq!(s, 400);
    // The current source etag works.
    let (s, _) = send(&sim, &tok, reqwest::Method::PATCH, &upd, json!({"metadata": {"sources": [{"type": "CONTACT", "etag": p2["metadata"]["sources"][0]["etag"]}]}, "emailAddresses": []})).await;
    assert_eq!(s, 200);

    // Batch create: 200 allowed, 201 rejected.
    let many = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"contactPerson": {"names": [{"givenName": format!("B{i}")}]}}))
            .collect()
    };
    let (s, e) = send(
        &sim,
        &tok,
        reqwest::Method::POST,
        "/v1/people:batchCreateContacts",
        json!({"contacts": many(201), "readMask": "names"}),
    )
    .await;
    assert_eq!((s.as_u16(), error_status(&e).0), (400, "INVALID_ARGUMENT"));
    let (s, b) = send(
        &sim,
        &tok,
        reqwest::Method::POST,
        "/v1/people:batchCreateContacts",
        json!({"contacts": many(200), "readMask": "names,metadata"}),
    )
    .await;
    assert_eq!(s, 200);
    let created = b["createdPeople"].as_array().expect("createdPeople");
    assert_eq!(created.len(), 200);
    assert_eq!(created[5]["person"]["names"][0]["givenName"], "B5");
    let (s, _) = send(
        &sim,
        &tok,
        reqwest::Method::POST,
        "/v1/people:batchCreateContacts",
        json!({"contacts": many(2)}),
    )
    .await;
    assert_eq!(s, 400, "readMask is required");
    // Batch update.
    let mut map = serde_json::Map::new();
    for c in &created[..3] {
        let person = &c["person"];
        map.insert(
            person["resourceName"].as_str().unwrap().to_string(),
            json!({"metadata": person["metadata"], "names": [{"givenName": "Upd"}]}),
        );
    }
    let (s, u) = send(
        &sim,
        &tok,
        reqwest::Method::POST,
        "/v1/people:batchUpdateContacts",
        json!({"contacts": map, "updateMask": "names", "readMask": "names"}),
    )
    .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["updateResult"].as_object().map(|m| m.len()), Some(3));
    assert!(u["updateResult"]
        .as_object()
        .unwrap()
        .values()
        .all(|r| r["person"]["names"][0]["givenName"] == "Upd"));
    // Same etags again: conflict, nothing applied.
    let (s, _) = send(
        &sim,
        &tok,
        reqwest::Method::POST,
        "/v1/people:batchUpdateContacts",
        json!({"contacts": map, "updateMask": "names", "readMask": "names"}),
    )
    .await;
    assert_eq!(s, 400);
    // Batch delete: 500 allowed, 501 rejected.
    let names: Vec<String> = created
        .iter()
        .map(|c| c["person"]["resourceName"].as_str().unwrap().to_string())
        .collect();
    let mut too_many = names.clone();
    while too_many.len() < 501 {
        too_many.push(names[0].clone());
    }
    let (s, _) = send(
        &sim,
        &tok,
        reqwest::Method::POST,
        "/v1/people:batchDeleteContacts",
        json!({"resourceNames": too_many}),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = send(
        &sim,
        &tok,
        reqwest::Method::POST,
        "/v1/people:batchDeleteContacts",
        json!({"resourceNames": names}),
    )
    .await;
    assert_eq!(s, 200);
    // Single delete, then 404.
    let (s, _) = send(
        &sim,
        &tok,
        reqwest::Method::DELETE,
        &format!("/v1/{rn}:deleteContact"),
        Value::Null,
    )
    .await;
    assert_eq!(s, 200);
    let (s, e) = send(
        &sim,
        &tok,
        reqwest::Method::DELETE,
        &format!("/v1/{rn}:deleteContact"),
        Value::Null,
    )
    .await;
    assert_eq!(
        (s.as_u16(), e["error"]["status"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let (_, v) = get(&sim, &tok, "/v1/people/me/connections?personFields=names").await;
    assert_eq!(v["totalPeople"], 3);
    sim.stop().await;
}

fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

async fn authorize(sim: &Sim, challenge: &str) -> String {
    let r = client()
        .get(format!("{}/o/oauth2/v2/auth", sim.google_base))
        .query(&[
            ("client_id", "cid.apps.googleusercontent.com"),
            ("redirect_uri", "http://127.0.0.1:9/cb"),
            ("response_type", "code"),
            ("scope", "https://www.googleapis.com/auth/contacts"),
            ("state", "st4te"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
            ("access_type", "offline"),
            ("login_hint", "bob@example.com"),
        ])
        .send()
        .await
        .expect("authorize");
    assert_eq!(r.status(), 302);
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(loc.path(), "/cb");
    let q: std::collections::HashMap<_, _> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["state"], "st4te");
    q["code"].clone()
}

#[tokio::test]
async fn oauth_code_pkce_refresh_revoke_and_401() {
    let sim = sim_with(2).await;
    let verifier = "a-very-long-verifier-string-of-forty-three-chars";
    let token = |code: String, v: &'static str| {
        let url = format!("{}/token", sim.google_base);
        async move {
            client()
                .post(url)
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code.as_str()),
                    ("client_id", "cid.apps.googleusercontent.com"),
                    ("client_secret", "s"),
                    ("redirect_uri", "http://127.0.0.1:9/cb"),
                    ("code_verifier", v),
                ])
                .send()
                .await
                .expect("token")
        }
    };
    let code = authorize(&sim, &s256(verifier)).await;
    let bad = token(code.clone(), "wrong-verifier").await;
    assert_eq!(bad.status(), 400);
    let e: Value = bad.json().await.unwrap();
    assert_eq!(e["error"], "invalid_grant");
    let code = authorize(&sim, &s256(verifier)).await;
    let good = token(code.clone(), verifier).await;
    assert_eq!(good.status(), 200);
    let t: Value = good.json().await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3600);
    let access = t["access_token"].as_str().unwrap().to_string();
    let refresh = t["refresh_token"]
        .as_str()
        .expect("refresh token on code exchange")
        .to_string();
    // Codes are single use.
    assert_eq!(token(code, verifier).await.status(), 400);
    // The token is Bob's.
    let (s, me) = get(
        &sim,
        &access,
        "/v1/people/me?personFields=emailAddresses,names",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(me["emailAddresses"][0]["value"], "bob@example.com");
    let (s, v) = get(
        &sim,
        &access,
        "/v1/people/me/connections?personFields=names",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["totalPeople"], 5);
    // Refresh: no new refresh token from Google.
    let r: Value = client()
        .post(format!("{}/token", sim.google_base))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", "cid.apps.googleusercontent.com"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["access_token"].is_string() && r.get("refresh_token").is_none());
    // Expired access tokens get 401 UNAUTHENTICATED.
    sim.expire_access_tokens();
    let (s, v) = get(
        &sim,
        &access,
        "/v1/people/me/connections?personFields=names",
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    let r = client()
        .get(format!(
            "{}/v1/people/me/connections?personFields=names",
            sim.google_base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Revoke, then the refresh token is dead.
    let r = client()
        .post(format!(
            "{}/revoke?token={}",
            sim.google_base,
            urlenc(&refresh)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .post(format!("{}/token", sim.google_base))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", "cid.apps.googleusercontent.com"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        e,
        json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
    );
    // Client credentials are recorded.
    assert!(sim.clients(Provider::Google).contains(&(
        "cid.apps.googleusercontent.com".to_string(),
        Some("s".to_string())
    )));
    let clients: Value = client()
        .get(format!("{}/_sim/clients", sim.google_base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(clients.as_array().is_some_and(|a| !a.is_empty()));
    // Control-API revoke kills the seeded grant too.
    let rt = sim.refresh_token(Provider::Google, ALICE).unwrap();
    let r = client()
        .post(format!("{}/_sim/users/{ALICE}/revoke", sim.google_base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .post(format!("{}/token", sim.google_base))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("client_id", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    sim.stop().await;
}

#[tokio::test]
async fn access_token_ttl_expires() {
    let sim = Sim::start(SimOptions {
        google_users: vec![SeedUser::new(ALICE, 1, 1)],
        access_token_ttl: Duration::from_secs(60),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let tok = access_token(&sim, ALICE).await;
    let (s, _) = get(&sim, &tok, "/v1/people/me/connections?personFields=names").await;
    assert_eq!(s, 200);
    sim.advance_clock(Duration::from_secs(61));
    let (s, v) = get(&sim, &tok, "/v1/people/me/connections?personFields=names").await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["details"][0]["reason"], "ACCESS_TOKEN_EXPIRED");
    sim.stop().await;
}

#[tokio::test]
async fn faults_of_each_kind() {
    let sim = sim_with(3).await;
    let tok = access_token(&sim, ALICE).await;
    let list = format!(
        "{}/v1/people/me/connections?personFields=names",
        sim.google_base
    );
    let only = |k: FaultKind| FaultConfig {
        probability: 1.0,
        kinds: vec![k],
        hang_ms: 250,
        ..FaultConfig::default()
    };
    let c = client();

    sim.set_faults(Provider::Google, only(FaultKind::TooMany));
    let r = c.get(&list).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    // The control API is never faulted.
    let r = c
        .get(format!("{}/_sim/requests", sim.google_base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    sim.set_faults(Provider::Google, only(FaultKind::Internal));
    assert_eq!(
        c.get(&list)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        500
    );
    sim.set_faults(Provider::Google, only(FaultKind::Unavailable));
    let r = c.get(&list).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));

    sim.set_faults(Provider::Google, only(FaultKind::Drop));
    let res = match c.get(&list).bearer_auth(&tok).send().await {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(res, "dropped connection must fail");

    sim.set_faults(Provider::Google, only(FaultKind::Truncate));
    let r = c
        .get(&list)
        .bearer_auth(&tok)
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(r.status(), 200);
    assert!(
        r.json::<Value>().await.is_err(),
        "truncated body must not parse"
    );

    sim.set_faults(Provider::Google, only(FaultKind::Hang));
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let e = quick
        .get(&list)
        .bearer_auth(&tok)
        .send()
        .await
        .expect_err("hangs past the timeout");
    assert!(e.is_timeout());

    sim.set_faults(
        Provider::Google,
        FaultConfig {
            latency_ms: 200,
            ..FaultConfig::default()
        },
    );
    let t0 = std::time::Instant::now();
    assert_eq!(
        c.get(&list)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(t0.elapsed() >= Duration::from_millis(200));

    // Faults through the control API, probabilistic and deterministic by seed.
    let run = |seed: u64| {
        let c = c.clone();
        let (list, tok, base) = (list.clone(), tok.clone(), sim.google_base.clone());
        async move {
            let r = c
                .post(format!("{base}/_sim/faults"))
                .json(&json!({"probability": 0.5, "kinds": ["500", "429"], "seed": seed}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let mut out = Vec::new();
            for _ in 0..20 {
                out.push(
                    c.get(&list)
                        .bearer_auth(&tok)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16(),
                );
            }
            out
        }
    };
    let a = run(7).await;
    let b = run(7).await;
    assert_eq!(a, b);
    assert!(a.contains(&200) && a.iter().any(|s| *s != 200));
    sim.set_faults(Provider::Google, FaultConfig::default());
    // The hung request finishes (and is logged) after its delay.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log: Vec<Value> = c
        .get(format!("{}/_sim/requests", sim.google_base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for kind in ["429", "500", "503", "drop", "truncate", "hang"] {
        assert!(log.iter().any(|e| e["fault"] == kind), "log records {kind}");
    }
    assert!(log
        .iter()
        .all(|e| !e["path"].as_str().unwrap_or("").starts_with("/_sim")));
    assert!(log
        .iter()
        .any(|e| e["user"] == ALICE && e["path"] == "/v1/people/me/connections"));
    assert_eq!(
        c.delete(format!("{}/_sim/requests", sim.google_base))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert!(sim.requests(Provider::Google).is_empty());
    sim.stop().await;
}

#[tokio::test]
async fn control_api_users_and_star() {
    let sim = sim_with(0).await;
    let c = client();
    let r: Value = c
        .post(format!("{}/_sim/users", sim.google_base))
        .json(
            &json!({"user": "carol@example.com", "contacts": 40, "seed": 5, "starred_share": 0.5}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["user"], "carol@example.com");
    let rt = r["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        sim.refresh_token(Provider::Google, "carol@example.com"),
        Some(rt)
    );
    let all: Vec<Value> = c
        .get(format!(
            "{}/_sim/users/carol@example.com/contacts",
            sim.google_base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 40);
    let unstarred = all.iter().find(|p| p["starred"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .post(format!(
            "{}/_sim/users/carol@example.com/contacts/people%2F{unstarred}/star",
            sim.google_base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let all2: Vec<Value> = c
        .get(format!(
            "{}/_sim/users/carol@example.com/contacts",
            sim.google_base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(all2
        .iter()
        .any(|p| p["id"] == json!(unstarred) && p["starred"] == true));
    // In-process control calls, with or without the /_sim prefix.
    let (s, v) = sim.control(
        Provider::Google,
        "POST",
        &format!("/_sim/users/carol@example.com/contacts/{unstarred}/unstar"),
        None,
    );
    assert_eq!((s, v), (200, json!({})));
    let (s, v) = sim.control(Provider::Google, "GET", "users/carol@example.com", None);
    assert_eq!((s, v["contacts"].clone()), (200, json!(40)));
    assert_eq!(sim.control(Provider::Google, "GET", "", None).0, 404);
    let (s, v) = sim.control(
        Provider::Google,
        "POST",
        "/_sim/quota",
        Some(json!({"max_concurrent": 2})),
    );
    assert_eq!((s, v), (200, json!({})));
    let r = c
        .delete(format!(
            "{}/_sim/users/nobody@example.com/contacts/c1",
            sim.google_base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    sim.stop().await;
}
