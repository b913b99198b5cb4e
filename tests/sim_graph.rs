//! Integration tests of the Microsoft Graph contacts simulator, over HTTP.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::Engine;
use contact_sync::sim::{FaultConfig, FaultKind, Provider, SeedUser, Sim, SimOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const OLGA: &str = "olga@example.com";

async fn sim_with(contacts: usize, child_folders: usize) -> Sim {
    let mut u = SeedUser::new(OLGA, contacts, 21);
    u.child_folders = child_folders;
    Sim::start(SimOptions {
        outlook_users: vec![u, SeedUser::new("otto@example.com", 3, 22)],
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

async fn token_req(sim: &Sim, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let r = client()
        .post(format!("{}/common/oauth2/v2.0/token", sim.graph_base))
        .form(form)
        .send()
        .await
        .expect("token");
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn access_token(sim: &Sim, user: &str) -> String {
    let rt = sim.refresh_token(Provider::Outlook, user).expect("seeded");
    let (s, v) = token_req(
        sim,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("client_id", "cid"),
            ("scope", "offline_access Contacts.ReadWrite"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["access_token"].as_str().expect("access").to_string()
}

struct Api<'a> {
    sim: &'a Sim,
    tok: String,
}

impl Api<'_> {
    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let url = if url.starts_with("http") {
            url.to_string()
        } else {
            format!("{}/v1.0{url}", self.sim.graph_base)
        };
        let mut b = client().request(method, url).bearer_auth(&self.tok);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if let Some(j) = body {
            b = b.json(&j);
        }
        let r = b.send().await.expect("request");
        let (s, h) = (r.status(), r.headers().clone());
        (s, h, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.call(reqwest::Method::GET, url, headers, None).await
    }
}

/// Runs a delta round; returns (rows, deltaLink, pages).
async fn round(api: &Api<'_>, first: &str, prefer: &str) -> (Vec<Value>, String, usize) {
    let mut url = first.to_string();
    let mut rows = Vec::new();
    let mut pages = 0;
    loop {
        let (s, h, v) = api.get(&url, &[("Prefer", prefer)]).await;
        assert_eq!(s, 200, "{v}");
        assert!(h.get("preference-applied").is_some());
        pages += 1;
        rows.extend(v["value"].as_array().cloned().unwrap_or_default());
        let next = v["@odata.nextLink"].as_str();
        let delta = v["@odata.deltaLink"].as_str();
        assert!(
            next.is_some() != delta.is_some(),
            "exactly one link per page"
        );
        if let Some(d) = delta {
            return (rows, d.to_string(), pages);
        }
        url = next.unwrap_or_default().to_string();
        assert!(
            url.starts_with(&api.sim.graph_base),
            "absolute links on the simulator"
        );
    }
}

#[tokio::test]
async fn folders_and_default_folder() {
    let sim = sim_with(30, 2).await;
    let api = Api {
        tok: access_token(&sim, OLGA).await,
        sim: &sim,
    };
    let (s, _, v) = api.get("/me/contactFolders", &[]).await;
    assert_eq!(s, 200);
    let folders = v["value"].as_array().expect("folders").clone();
    assert_eq!(folders.len(), 2, "children of the default folder only: {v}");
    let (s, _, def) = api.get("/me/contactFolders/contacts", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(def["displayName"], "Contacts");
    assert!(folders.iter().all(|f| f["parentFolderId"] == def["id"]));
    let child = folders[0]["id"].as_str().unwrap().to_string();
    let (_, _, kids) = api
        .get(&format!("/me/contactFolders/{child}/childFolders"), &[])
        .await;
    assert_eq!(kids["value"].as_array().map(Vec::len), Some(0));
    // Plain listing of the default folder, with $top paging and $select.
    let (s, _, page) = api
        .get("/me/contacts?$top=4&$select=parentFolderId", &[])
        .await;
    assert_eq!(s, 200);
    assert_eq!(page["value"].as_array().map(Vec::len), Some(4));
    assert_eq!(page["value"][0]["parentFolderId"], def["id"]);
    assert!(page["value"][0].get("givenName").is_none());
    let mut listed = 4;
    let mut next = page["@odata.nextLink"].as_str().map(String::from);
    while let Some(n) = next {
        let (_, _, p) = api.get(&n, &[]).await;
        listed += p["value"].as_array().map(Vec::len).unwrap_or(0);
        next = p["@odata.nextLink"].as_str().map(String::from);
    }
    assert_eq!(
        listed, 10,
        "30 contacts over the default folder and two children"
    );
    // Nested folder through the control API, then deletion.
    let c = client();
    let nf: Value = c
        .post(format!("{}/_sim/users/{OLGA}/folders", sim.graph_base))
        .json(&json!({"name": "Nested", "parent": child}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (_, _, kids) = api
        .get(&format!("/me/contactFolders/{child}/childFolders"), &[])
        .await;
    assert_eq!(kids["value"][0]["id"], nf["id"]);
    let r = c
        .delete(format!(
            "{}/_sim/users/{OLGA}/folders/{child}",
            sim.graph_base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (s, _, e) = api.get(&format!("/me/contactFolders/{child}"), &[]).await;
    assert_eq!(s, 404);
    assert_eq!(e["error"]["code"], "ErrorItemNotFound");
    assert!(
        e["error"]["innerError"]["request-id"].is_string()
            && e["error"]["innerError"]["date"].is_string()
    );
    let (s, _, _) = api
        .get(
            &format!("/me/contactFolders/{}", nf["id"].as_str().unwrap()),
            &[],
        )
        .await;
    assert_eq!(s, 404, "descendants go too");
    sim.stop().await;
}

#[tokio::test]
async fn delta_paging_select_removed_and_410() {
    let sim = sim_with(45, 0).await;
    let api = Api {
        tok: access_token(&sim, OLGA).await,
        sim: &sim,
    };
    let first = "/me/contactFolders/contacts/contacts/delta?$select=displayName,givenName,surname,emailAddresses";
    let (rows, delta_link, pages) =
        round(&api, first, "odata.maxpagesize=10, IdType=\"ImmutableId\"").await;
    assert_eq!(rows.len(), 45);
    assert_eq!(pages, 5);
    for r in &rows {
        let o = r.as_object().unwrap();
        assert_eq!(r["@odata.type"], "#microsoft.graph.contact");
        assert!(
            o.keys().all(|k| [
                "@odata.type",
                "@odata.etag",
                "id",
                "displayName",
                "givenName",
                "surname",
                "emailAddresses"
            ]
            .contains(&k.as_str())),
            "{r}"
        );
    }
    // Default page size is 10 without the header.
    let (_, _, v) = api.get(first, &[]).await;
    assert_eq!(v["value"].as_array().map(Vec::len), Some(10));
    let (_, h, v) = api.get(first, &[("Prefer", "odata.maxpagesize=20")]).await;
    assert_eq!(v["value"].as_array().map(Vec::len), Some(20));
    assert_eq!(h["preference-applied"], "odata.maxpagesize=20");

    // Changes: one update, one delete, one create (via the control API and the API).
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let c = client();
    let r = c
        .patch(format!(
            "{}/_sim/users/{OLGA}/contacts/{}",
            sim.graph_base, ids[0]
        ))
        .json(&json!({"jobTitle": "Boss"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, _, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/me/contacts/{}", ids[1]),
            &[],
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _, created) = api.call(reqwest::Method::POST, "/me/contacts", &[], Some(json!({"givenName": "Neu", "surname": "Kontakt", "emailAddresses": [{"address": "neu@example.de", "name": "Neu"}]}))).await;
    assert_eq!(s, 201);
    assert_eq!(created["displayName"], "Neu Kontakt");
    let (rows2, delta2, _) = round(&api, &delta_link, "odata.maxpagesize=2").await;
    assert_eq!(rows2.len(), 3, "{rows2:?}");
    let removed: Vec<&Value> = rows2
        .iter()
        .filter(|r| r.get("@removed").is_some())
        .collect();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["id"], json!(ids[1]));
    assert_eq!(removed[0]["@removed"]["reason"], "deleted");
    assert!(rows2.iter().any(|r| r["id"] == json!(ids[0])));
    assert!(
        rows2
            .iter()
            .any(|r| r["id"] == created["id"] && r.get("jobTitle").is_none()),
        "$select carried by the link"
    );
    let (rows3, _, _) = round(&api, &delta2, "odata.maxpagesize=50").await;
    assert!(rows3.is_empty());

    // Unknown or expired tokens: 410 SyncStateNotFound.
    let (s, h, e) = api
        .get(
            "/me/contactFolders/contacts/contacts/delta?$deltatoken=bogus",
            &[],
        )
        .await;
    assert_eq!(s, 410);
    assert_eq!(e["error"]["code"], "SyncStateNotFound");
    assert!(h.get("location").is_some());
    let r = c
        .post(format!(
            "{}/_sim/users/{OLGA}/expire-cursors",
            sim.graph_base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, _, e) = api.get(&delta2, &[]).await;
    assert_eq!(
        (s.as_u16(), e["error"]["code"].as_str()),
        (410, Some("SyncStateNotFound"))
    );
    // $select of an unknown property.
    let (s, _, _) = api
        .get(
            "/me/contactFolders/contacts/contacts/delta?$select=nope",
            &[],
        )
        .await;
    assert_eq!(s, 400);
    sim.stop().await;
}

#[tokio::test]
async fn delta_changes_during_paging_are_not_lost() {
    let sim = sim_with(30, 0).await;
    let api = Api {
        tok: access_token(&sim, OLGA).await,
        sim: &sim,
    };
    let (s, _, p1) = api
        .get(
            "/me/contactFolders/contacts/contacts/delta",
            &[("Prefer", "odata.maxpagesize=10")],
        )
        .await;
    assert_eq!(s, 200);
    let first_ids: HashSet<String> = p1["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let all: Vec<Value> = client()
        .get(format!("{}/_sim/users/{OLGA}/contacts", sim.graph_base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen = first_ids.iter().next().unwrap().clone();
    let unseen = all
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .find(|id| !first_ids.contains(id))
        .unwrap();
    for id in [&seen, &unseen] {
        let r = client()
            .patch(format!(
                "{}/_sim/users/{OLGA}/contacts/{id}",
                sim.graph_base
            ))
            .json(&json!({"nickName": "changed"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (rest, link, _) = round(
        &api,
        p1["@odata.nextLink"].as_str().unwrap(),
        "odata.maxpagesize=10",
    )
    .await;
    let mut ids: HashSet<String> = first_ids.clone();
    ids.extend(rest.iter().map(|r| r["id"].as_str().unwrap().to_string()));
    // The contact changed before it was listed moves to the next round; nothing is lost.
    let (next, _, _) = round(&api, &link, "odata.maxpagesize=10").await;
    let next_ids: HashSet<String> = next
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(next_ids.contains(&seen) && next_ids.contains(&unseen));
    ids.extend(next_ids);
    assert_eq!(ids.len(), 30);
    sim.stop().await;
}

#[tokio::test]
async fn crud_if_match_limits_photo_and_batch() {
    let sim = sim_with(60, 0).await;
    let api = Api {
        tok: access_token(&sim, OLGA).await,
        sim: &sim,
    };
    let (s, _, c) = api
        .call(reqwest::Method::POST, "/me/contacts", &[], Some(json!({"givenName": "Pavel", "surname": "Bansky", "birthday": "1974-07-22", "businessPhones": ["+1 732 555 0102"]})))
        .await;
    assert_eq!(s, 201);
    assert_eq!(c["birthday"], "1974-07-22T11:59:00Z");
    assert_eq!(c["homeAddress"], json!({}));
    assert_eq!(c["mobilePhone"], Value::Null);
    let id = c["id"].as_str().unwrap().to_string();
    let etag = c["@odata.etag"].as_str().unwrap().to_string();
    assert_eq!(etag, format!("W/\"{}\"", c["changeKey"].as_str().unwrap()));
    let (s, _, u) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/me/contacts/{id}"),
            &[("If-Match", &etag)],
            Some(json!({"jobTitle": "CTO"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(u["jobTitle"], "CTO");
    assert_eq!(u["givenName"], "Pavel");
    let (s, _, e) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/me/contacts/{id}"),
            &[("If-Match", &etag)],
            Some(json!({"jobTitle": "CEO"})),
        )
        .await;
    assert_eq!(s, 412);
    assert_eq!(e["error"]["code"], "ErrorIrresolvableConflict");
    // Multi-value limits.
    let four: Vec<Value> = (0..4)
        .map(|i| json!({"address": format!("p{i}@example.com")}))
        .collect();
    let (s, _, e) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/me/contacts/{id}"),
            &[],
            Some(json!({"emailAddresses": four})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("EmailAddresses has 4 entries"));
    let (s, _, _) = api
        .call(
            reqwest::Method::POST,
            "/me/contacts",
            &[],
            Some(json!({"businessPhones": ["1", "2", "3"]})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _, _) = api
        .call(
            reqwest::Method::POST,
            "/me/contacts",
            &[],
            Some(json!({"favouriteColour": "red"})),
        )
        .await;
    assert_eq!(s, 400);
    // $select on GET.
    let (s, _, g) = api
        .get(&format!("/me/contacts/{id}?$select=surname"), &[])
        .await;
    assert_eq!(s, 200);
    assert!(g.get("givenName").is_none() && g["surname"] == "Bansky" && g["id"] == json!(id));
    // Photos.
    let r = client()
        .get(format!(
            "{}/v1.0/me/contacts/{id}/photo/$value",
            sim.graph_base
        ))
        .bearer_auth(&api.tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "ImageNotFound");
    let all: Vec<Value> = client()
        .get(format!("{}/_sim/users/{OLGA}/contacts", sim.graph_base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let with_photo = all
        .iter()
        .find(|c| c["hasPhoto"] == true)
        .expect("a seeded contact with a photo")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = client()
        .get(format!(
            "{}/v1.0/me/contacts/{with_photo}/photo/$value",
            sim.graph_base
        ))
        .bearer_auth(&api.tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(&r.bytes().await.unwrap()[..2], &[0xFF, 0xD8]);
    // Batch: 21 rejected, a small one with dependsOn served.
    let reqs: Vec<Value> = (0..21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": "/me/contactFolders"}))
        .collect();
    let (s, _, e) = api
        .call(
            reqwest::Method::POST,
            "/$batch",
            &[],
            Some(json!({"requests": reqs})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(e["error"]["code"].is_string());
    let (_, _, cur) = api.get(&format!("/me/contacts/{id}"), &[]).await;
    let body = json!({"requests": [
        {"id": "1", "method": "PATCH", "url": format!("/me/contacts/{id}"), "headers": {"Content-Type": "application/json", "If-Match": cur["@odata.etag"]}, "body": {"jobTitle": "CFO"}},
        {"id": "2", "method": "GET", "url": format!("/me/contacts/{id}?$select=jobTitle"), "dependsOn": ["1"]},
        {"id": "3", "method": "PATCH", "url": format!("/me/contacts/{id}"), "headers": {"Content-Type": "application/json", "If-Match": "W/\"stale\""}, "body": {"jobTitle": "X"}},
        {"id": "4", "method": "GET", "url": "/me/contacts/nope", "dependsOn": ["3"]},
        {"id": "5", "method": "DELETE", "url": format!("/me/contacts/{id}")},
    ]});
    let (s, _, b) = api
        .call(reqwest::Method::POST, "/$batch", &[], Some(body))
        .await;
    assert_eq!(s, 200);
    let by: HashMap<String, Value> = b["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
        .collect();
    assert_eq!(by["1"]["status"], 200);
    assert_eq!(by["2"]["body"]["jobTitle"], "CFO");
    assert_eq!(by["3"]["status"], 412);
    assert_eq!(by["4"]["status"], 424);
    assert_eq!(by["5"]["status"], 204);
    let (s, _, _) = api.get(&format!("/me/contacts/{id}"), &[]).await;
    assert_eq!(s, 404);
    sim.stop().await;
}

fn s256(v: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes()))
}

async fn authorize(sim: &Sim, challenge: &str, scope: &str) -> String {
    let r = client()
        .get(format!(
            "{}/consumers/oauth2/v2.0/authorize",
            sim.graph_base
        ))
        .query(&[
            ("client_id", "app"),
            ("response_type", "code"),
            ("redirect_uri", "http://localhost:53682/"),
            ("response_mode", "query"),
            ("scope", scope),
            ("state", "s1"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let q: HashMap<_, _> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["state"], "s1");
    q["code"].clone()
}

#[tokio::test]
async fn identity_code_pkce_rotation_revoke_device_code() {
    let sim = sim_with(2, 0).await;
    let v = "verifier-verifier-verifier-verifier-verifier-1";
    let code = authorize(&sim, &s256(v), "offline_access Contacts.ReadWrite").await;
    let exchange = |code: String, verifier: &'static str| {
        let sim = &sim;
        async move {
            token_req(
                sim,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("client_id", "app"),
                    ("redirect_uri", "http://localhost:53682/"),
                    ("code_verifier", verifier),
                ],
            )
            .await
        }
    };
    let (s, e) = exchange(code, "wrong").await;
    assert_eq!(s, 400);
    assert_eq!(e["error"], "invalid_grant");
    assert!(e["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS501481"));
    assert_eq!(e["error_codes"], json!([501481]));
    let code = authorize(&sim, &s256(v), "offline_access Contacts.ReadWrite").await;
    let (s, t) = exchange(code.clone(), v).await;
    assert_eq!(s, 200, "{t}");
    let rt1 = t["refresh_token"].as_str().unwrap().to_string();
    let (s, e) = exchange(code, v).await;
    assert_eq!(s, 400);
    assert!(e["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS54005"));
    // Without offline_access there is no refresh token.
    let code = authorize(&sim, &s256(v), "Contacts.Read").await;
    let (_, t) = exchange(code, v).await;
    assert!(t.get("refresh_token").is_none());
    // Rotation: every refresh returns a new refresh token; the old one is not revoked.
    let refresh = |rt: String| {
        let sim = &sim;
        async move {
            token_req(
                sim,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    ("client_id", "app"),
                ],
            )
            .await
        }
    };
    let (s, t2) = refresh(rt1.clone()).await;
    assert_eq!(s, 200);
    let rt2 = t2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    let (s, _) = refresh(rt1.clone()).await;
    assert_eq!(s, 200);
    // Revoked grant: invalid_grant with an AADSTS code.
    let r = client()
        .post(format!("{}/_sim/users/{OLGA}/revoke", sim.graph_base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, e) = refresh(rt2).await;
    assert_eq!(s, 400);
    assert_eq!(e["error"], "invalid_grant");
    assert!(e["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS"));
    let (s, _) = refresh("never-issued".into()).await;
    assert_eq!(s, 400);

    // Device code.
    let d: Value = client()
        .post(format!("{}/common/oauth2/v2.0/devicecode", sim.graph_base))
        .form(&[
            ("client_id", "app"),
            ("scope", "offline_access Contacts.Read"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dc = d["device_code"].as_str().unwrap().to_string();
    assert!(
        d["user_code"].is_string()
            && d["verification_uri"].is_string()
            && d["interval"].is_number()
    );
    let poll = || {
        let sim = &sim;
        let dc = dc.clone();
        async move {
            token_req(
                sim,
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("client_id", "app"),
                    ("device_code", &dc),
                ],
            )
            .await
        }
    };
    let (s, e) = poll().await;
    assert_eq!(
        (s.as_u16(), e["error"].as_str()),
        (400, Some("authorization_pending"))
    );
    let (_, e) = poll().await;
    assert_eq!(e["error"], "slow_down");
    let r = client()
        .post(format!("{}/_sim/devicecode/approve", sim.graph_base))
        .json(&json!({"user_code": d["user_code"], "user": "otto@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, t) = poll().await;
    assert_eq!(s, 200, "{t}");
    let api = Api {
        tok: t["access_token"].as_str().unwrap().to_string(),
        sim: &sim,
    };
    let (_, _, me) = api.get("/me", &[]).await;
    assert_eq!(me["userPrincipalName"], "otto@example.com");
    let (_, e) = poll().await;
    assert_eq!(e["error"], "invalid_grant");
    // Expiry.
    let d: Value = client()
        .post(format!("{}/common/oauth2/v2.0/devicecode", sim.graph_base))
        .form(&[("client_id", "app")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    sim.advance_clock(Duration::from_secs(901));
    let (_, e) = token_req(
        &sim,
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", "app"),
            ("device_code", d["device_code"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(e["error"], "expired_token");
    // API with an expired token.
    sim.advance_clock(Duration::from_secs(3600));
    let (s, _, e) = api.get("/me/contactFolders", &[]).await;
    assert_eq!(s, 401, "access token expired with the clock");
    assert_eq!(e["error"]["code"], "InvalidAuthenticationToken");
    sim.stop().await;
}

#[tokio::test]
async fn concurrency_quota_and_faults() {
    let sim = sim_with(5, 0).await;
    let tok = access_token(&sim, OLGA).await;
    let c = client();
    let r = c
        .post(format!("{}/_sim/quota", sim.graph_base))
        .json(&json!({"max_concurrent": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    sim.set_faults(
        Provider::Outlook,
        FaultConfig {
            latency_ms: 500,
            ..FaultConfig::default()
        },
    );
    let url = format!("{}/v1.0/me/contactFolders", sim.graph_base);
    let futs: Vec<_> = (0..10)
        .map(|_| c.get(&url).bearer_auth(&tok).send())
        .collect();
    let results = futures_util::future::join_all(futs).await;
    let mut ok = 0;
    let mut throttled = 0;
    for r in results {
        let r = r.unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                throttled += 1;
                assert!(r.headers().contains_key("retry-after"));
                let e: Value = r.json().await.unwrap();
                assert_eq!(e["error"]["code"], "ApplicationThrottled");
                assert!(e["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("MailboxConcurrency"));
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok, 4);
    assert_eq!(throttled, 6);
    // Another mailbox is not affected; slots are released afterwards.
    sim.set_quota(Provider::Outlook, None);
    sim.set_faults(
        Provider::Outlook,
        FaultConfig {
            probability: 1.0,
            kinds: vec![FaultKind::TooMany],
            retry_after: 2.5,
            ..FaultConfig::default()
        },
    );
    let r = c.get(&url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2.5");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "TooManyRequests");
    sim.set_faults(
        Provider::Outlook,
        FaultConfig {
            probability: 1.0,
            kinds: vec![FaultKind::Unavailable],
            ..FaultConfig::default()
        },
    );
    assert_eq!(
        c.get(&url).bearer_auth(&tok).send().await.unwrap().status(),
        503
    );
    sim.set_faults(
        Provider::Outlook,
        FaultConfig {
            probability: 1.0,
            kinds: vec![FaultKind::Truncate],
            ..FaultConfig::default()
        },
    );
    let r = c.get(&url).bearer_auth(&tok).send().await.unwrap();
    assert!(r.json::<Value>().await.is_err());
    sim.set_faults(Provider::Outlook, FaultConfig::default());
    let log = sim.requests(Provider::Outlook);
    assert_eq!(
        log.iter()
            .filter(|e| e.fault.as_deref() == Some("quota"))
            .count(),
        6
    );
    assert!(log
        .iter()
        .any(|e| e.status == 429 && e.fault.as_deref() == Some("429")));
    sim.stop().await;
}

/// Graph documents that an updated item in a delta response carries at least the changed
/// properties. With `partialDelta` the simulator sends exactly those (plus `id`, the etag,
/// `changeKey` and `parentFolderId`); a cleared property comes as `null`; a contact
/// created since the last round comes whole. A Contacts.Read token cannot write.
#[tokio::test]
async fn partial_delta_rows_carry_only_changed_properties_and_read_tokens_cannot_write() {
    let sim = sim_with(5, 0).await;
    let api = Api {
        tok: access_token(&sim, OLGA).await,
        sim: &sim,
    };
    let first = "/me/contactFolders/contacts/contacts/delta?$select=id,givenName,surname,displayName,companyName,jobTitle,birthday,changeKey,parentFolderId";
    let (rows, delta, _) = round(&api, first, "odata.maxpagesize=50").await;
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r.get("givenName").is_some()));
    let id = rows[0]["id"].as_str().unwrap().to_string();
    let (s, v) = sim.control(
        Provider::Outlook,
        "PATCH",
        &format!("/_sim/users/{OLGA}/options"),
        Some(json!({"partialDelta": true})),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = sim.control(
        Provider::Outlook,
        "PATCH",
        &format!("/_sim/users/{OLGA}/contacts/{id}"),
        Some(json!({"jobTitle": "Partial", "companyName": null})),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = sim.control(
        Provider::Outlook,
        "POST",
        &format!("/_sim/users/{OLGA}/contacts"),
        Some(json!({"givenName": "New", "surname": "Whole", "emailAddresses": [{"address": "new@example.org"}]})),
    );
    assert_eq!(s, 201, "{v}");
    let (rows, _, _) = round(&api, &delta, "odata.maxpagesize=50").await;
    let changed = rows.iter().find(|r| r["id"] == id.as_str()).unwrap();
    let mut keys: Vec<&str> = changed
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "@odata.etag",
            "@odata.type",
            "changeKey",
            "companyName",
            "id",
            "jobTitle",
            "parentFolderId"
        ]
    );
    assert!(changed["companyName"].is_null());
    assert_eq!(changed["jobTitle"], "Partial");
    let created = rows.iter().find(|r| r["id"] != id.as_str()).unwrap();
    assert_eq!(created["givenName"], "New");
    assert!(
        created.get("birthday").is_some(),
        "a new contact comes whole"
    );

    // A token granted Contacts.Read only: reads work, writes get 403 ErrorAccessDenied.
    let (s, v) = sim.control(
        Provider::Outlook,
        "POST",
        &format!("/_sim/users/{OLGA}/grants"),
        Some(json!({"scope": "https://graph.microsoft.com/Contacts.Read"})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, t) = token_req(
        &sim,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", v["refresh_token"].as_str().unwrap()),
            ("client_id", "cid"),
            (
                "scope",
                "offline_access https://graph.microsoft.com/Contacts.ReadWrite",
            ),
        ],
    )
    .await;
    assert_eq!(s, 200, "{t}");
    let scope = t["scope"].as_str().unwrap();
    assert!(
        scope.contains("Contacts.Read") && !scope.contains("ReadWrite"),
        "{scope}"
    );
    let read_only = Api {
        tok: t["access_token"].as_str().unwrap().to_string(),
        sim: &sim,
    };
    let (s, _, _) = read_only.get(&format!("/me/contacts/{id}"), &[]).await;
    assert_eq!(s, 200);
    let (s, _, v) = read_only
        .call(
            reqwest::Method::PATCH,
            &format!("/me/contacts/{id}"),
            &[],
            Some(json!({"jobTitle": "Nope"})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "ErrorAccessDenied");
}

use contact_sync::providers::graph::HAS_PICTURE;

fn has_picture_filter() -> String {
    format!(
        "singleValueExtendedProperties/Any(ep: ep/id eq '{HAS_PICTURE}' and ep/value eq 'true')"
    )
}

/// PidLidHasPicture: the contacts that have a photo carry it (`true`); the listing filters on
/// it (paged, with the filter kept in the next link), `$expand` reads it on a listing and on
/// one contact, and a filter the simulator does not know is refused as Graph refuses it.
#[tokio::test]
async fn has_picture_property_filter_and_expand() {
    let sim = sim_with(60, 1).await;
    let api = Api {
        sim: &sim,
        tok: access_token(&sim, OLGA).await,
    };
    let (_, _, root) = api.get("/me/contactFolders/contacts", &[]).await;
    let root = root["id"].as_str().unwrap().to_string();
    let (_, _, kids) = api
        .get(&format!("/me/contactFolders/{root}/childFolders"), &[])
        .await;
    let mut folders = vec![root];
    folders.extend(
        kids["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_string()),
    );
    let mut total_with_photo = 0;
    for f in &folders {
        let (s, _, all) = api
            .get(
                &format!("/me/contactFolders/{f}/contacts?$top=1000&$select=id"),
                &[],
            )
            .await;
        assert_eq!(s, 200);
        // The truth: which contacts have a photo, asked one by one.
        let mut truth = HashSet::new();
        for c in all["value"].as_array().unwrap() {
            let id = c["id"].as_str().unwrap();
            let r = client()
                .get(format!(
                    "{}/v1.0/me/contacts/{id}/photo/$value",
                    sim.graph_base
                ))
                .bearer_auth(&api.tok)
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                truth.insert(id.to_string());
            }
            // $expand on one contact.
            let (s, _, one) = api
                .get(
                    &format!(
                        "/me/contacts/{id}?$select=id&$expand=singleValueExtendedProperties($filter=id eq '{HAS_PICTURE}')"
                    ),
                    &[],
                )
                .await;
            assert_eq!(s, 200, "{one}");
            let props = one["singleValueExtendedProperties"].as_array().unwrap();
            if truth.contains(id) {
                assert_eq!(props.len(), 1, "{one}");
                assert_eq!(props[0]["value"], "true");
                assert_eq!(props[0]["id"], HAS_PICTURE);
            } else {
                assert!(props.is_empty(), "{one}");
            }
        }
        total_with_photo += truth.len();
        // The filtered listing, three per page.
        let mut url = format!(
            "/me/contactFolders/{f}/contacts?$filter={}&$select=id&$top=3",
            has_picture_filter()
        );
        let mut listed = HashSet::new();
        let mut pages = 0;
        loop {
            let (s, _, v) = api.get(&url, &[]).await;
            assert_eq!(s, 200, "{v}");
            pages += 1;
            for c in v["value"].as_array().unwrap() {
                assert!(c.get("givenName").is_none(), "$select=id is kept");
                listed.insert(c["id"].as_str().unwrap().to_string());
            }
            match v["@odata.nextLink"].as_str() {
                Some(n) => url = n.to_string(),
                None => break,
            }
        }
        assert_eq!(listed, truth, "folder {f}");
        assert_eq!(pages, truth.len().div_ceil(3).max(1));
        // `$expand` on a listing.
        let (s, _, v) = api
            .get(
                &format!("/me/contactFolders/{f}/contacts?$top=1000&$select=id&$expand=singleValueExtendedProperties($filter=id eq '{HAS_PICTURE}')"),
                &[],
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let expanded: HashSet<String> = v["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["singleValueExtendedProperties"][0]["value"] == "true")
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(expanded, truth);
    }
    assert!(total_with_photo > 0, "some seeded contacts have a photo");
    // Filters on a value nobody has, and on another property, find nothing.
    let f = &folders[0];
    let (s, _, v) = api
        .get(
            &format!("/me/contactFolders/{f}/contacts?$filter=singleValueExtendedProperties/any(x: x/id eq 'String {{66f5a359-4659-4830-9070-00047ec6ac6e}} Name Color' and x/value eq 'Green')"),
            &[],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["value"].as_array().unwrap().is_empty());
    // Bad input: a filter the simulator does not know, a broken expand.
    let (s, _, v) = api
        .get(
            &format!("/me/contactFolders/{f}/contacts?$filter=startswith(givenName,'A')"),
            &[],
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "ErrorInvalidUrlQueryFilter");
    let (s, _, v) = api
        .get(
            &format!("/me/contactFolders/{f}/contacts?$expand=photo"),
            &[],
        )
        .await;
    assert_eq!(s, 400, "{v}");
}

/// Contact `delta` takes `$select` only (plus its state tokens): Graph answers `$filter`,
/// `$expand`, `$top`, `$orderby`, `$search` and friends with 400 `ErrorInvalidUrlQuery`
/// naming them, on a first request and on a followed link alike.
#[tokio::test]
async fn delta_refuses_the_query_options_graph_refuses() {
    let sim = sim_with(30, 0).await;
    let api = Api {
        sim: &sim,
        tok: access_token(&sim, OLGA).await,
    };
    let base = "/me/contactFolders/contacts/contacts/delta";
    let expand = format!("singleValueExtendedProperties($filter=id eq '{HAS_PICTURE}')");
    for (k, v) in [
        ("$filter", has_picture_filter()),
        ("$expand", expand),
        ("$top", "5".to_string()),
        ("$orderby", "displayName".to_string()),
        ("$search", "\"Anna\"".to_string()),
        ("$skip", "5".to_string()),
        ("$count", "true".to_string()),
    ] {
        let (s, _, body) = api
            .get(&format!("{base}?$select=id,givenName&{k}={v}"), &[])
            .await;
        assert_eq!(s, 400, "{k}: {body}");
        assert_eq!(body["error"]["code"], "ErrorInvalidUrlQuery", "{k}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("not supported with change tracking over the 'Contacts' resource")
                && msg.contains(k),
            "{msg}"
        );
    }
    // `$select` alone is fine; a next link with `$top` added is refused too.
    let (s, _, v) = api
        .get(
            &format!("{base}?$select=id,givenName"),
            &[("Prefer", "odata.maxpagesize=10")],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let next = v["@odata.nextLink"].as_str().unwrap();
    let (s, _, v) = api.get(&format!("{next}&$top=2"), &[]).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "ErrorInvalidUrlQuery");
}

/// The per-mailbox request budget: a token bucket; a request over it gets Graph's 429
/// `TooManyRequests` with `Retry-After`; `$batch` parts count one by one; another mailbox
/// is not affected.
#[tokio::test]
async fn request_budget_is_enforced_per_mailbox() {
    let sim = sim_with(5, 0).await;
    let api = Api {
        sim: &sim,
        tok: access_token(&sim, OLGA).await,
    };
    let otto = Api {
        sim: &sim,
        tok: access_token(&sim, "otto@example.com").await,
    };
    sim.set_graph_budget(Some((5, Duration::from_secs(600))));
    for _ in 0..5 {
        let (s, _, v) = api.get("/me/contacts?$select=id", &[]).await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, h, v) = api.get("/me/contacts?$select=id", &[]).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "TooManyRequests");
    let ra: f64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        ra > 100.0 && ra <= 120.5,
        "one request's share of 10 minutes: {ra}"
    );
    let (s, _, _) = otto.get("/me/contacts?$select=id", &[]).await;
    assert_eq!(s, 200, "another mailbox has its own budget");
    assert_eq!(sim.graph_budget_refusals(), 1);

    // A batch of three parts needs three requests of budget.
    sim.set_graph_budget(Some((3, Duration::from_secs(600))));
    let batch = json!({"requests": [
        {"id": "1", "method": "GET", "url": "/me/contacts?$select=id"},
        {"id": "2", "method": "GET", "url": "/me/contacts?$select=id"},
        {"id": "3", "method": "GET", "url": "/me/contacts?$select=id"},
    ]});
    let (s, _, v) = api
        .call(reqwest::Method::POST, "/$batch", &[], Some(batch.clone()))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = api.get("/me/contacts?$select=id", &[]).await;
    assert_eq!(s, 429, "{v}");
    sim.set_graph_budget(None);
    let (s, _, _) = api.get("/me/contacts?$select=id", &[]).await;
    assert_eq!(s, 200);
}
