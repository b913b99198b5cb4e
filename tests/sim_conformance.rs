//! Conformance of the Google simulator with Google's discovery document.
//!
//! The document comes from the `google-api-python-client` package (it ships
//! `googleapiclient/discovery_cache/documents/people.v1.json`), so the project needs no
//! copy of it. Without the package the tests fail when `CI` is set and are skipped (with a
//! message) otherwise.

use std::path::PathBuf;
use std::process::Command;

use contact_sync::sim::{Provider, SeedUser, Sim, SimOptions};
use serde_json::{json, Value};

const USER: &str = "conf@example.com";

/// Path of people.v1.json from the installed Python package, or None (after deciding
/// whether that is a failure or a skip).
fn discovery_doc() -> Option<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import googleapiclient, os; print(os.path.join(os.path.dirname(googleapiclient.__file__), 'discovery_cache', 'documents', 'people.v1.json'))",
        ])
        .output();
    let path = match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("google-api-python-client is not installed (pip install google-api-python-client)");
            }
            eprintln!("SKIPPED: google-api-python-client is not installed; `pip install google-api-python-client` to run the conformance tests");
            return None;
        }
    };
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Some(serde_json::from_str(&text).expect("discovery document is JSON"))
}

/// Checks `v` against a discovery schema; pushes every mismatch to `errs`.
fn check(doc: &Value, schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        match doc["schemas"].get(r) {
            Some(s) => return check(doc, s, v, path, errs),
            None => return errs.push(format!("{path}: unknown schema {r}")),
        }
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("any");
    let ok = match ty {
        "object" => {
            let Some(o) = v.as_object() else {
                errs.push(format!("{path}: expected object, got {v}"));
                return;
            };
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, val) in o {
                    match props.get(k) {
                        Some(p) => check(doc, p, val, &format!("{path}.{k}"), errs),
                        None => errs.push(format!("{path}.{k}: not in the discovery schema")),
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties") {
                for (k, val) in o {
                    check(doc, ap, val, &format!("{path}[{k}]"), errs);
                }
            }
            true
        }
        "array" => {
            let Some(a) = v.as_array() else {
                errs.push(format!("{path}: expected array, got {v}"));
                return;
            };
            for (i, item) in a.iter().enumerate() {
                check(doc, &schema["items"], item, &format!("{path}[{i}]"), errs);
            }
            true
        }
        // int64 and friends travel as strings in Google's JSON; int32 as numbers.
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !ok {
        errs.push(format!("{path}: expected {ty}, got {v}"));
    }
}

fn schema(name: &str) -> Value {
    json!({"$ref": name})
}

async fn start() -> (Sim, String) {
    let mut u = SeedUser::new(USER, 150, 4);
    u.starred_share = 0.2;
    let sim = Sim::start(SimOptions {
        google_users: vec![u],
        ..SimOptions::default()
    })
    .await
    .expect("sim");
    let rt = sim.refresh_token(Provider::Google, USER).expect("token");
    let t: Value = reqwest::Client::new()
        .post(format!("{}/token", sim.google_base))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("client_id", "c"),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let tok = t["access_token"]
        .as_str()
        .expect("access token")
        .to_string();
    (sim, tok)
}

#[tokio::test]
async fn paths_and_parameters_exist_in_discovery_document() {
    let Some(doc) = discovery_doc() else { return };
    let mut methods: Vec<(String, String, Vec<String>)> = Vec::new();
    fn walk(r: &Value, out: &mut Vec<(String, String, Vec<String>)>) {
        for m in r
            .get("methods")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(_, m)| m)
        {
            let params = m
                .get("parameters")
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            out.push((
                m["httpMethod"].as_str().unwrap_or("").into(),
                m["path"].as_str().unwrap_or("").into(),
                params,
            ));
        }
        for sub in r
            .get("resources")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(_, s)| s)
        {
            walk(sub, out);
        }
    }
    walk(&doc, &mut methods);
    // (method, path template, parameters the simulator reads)
    let served: &[(&str, &str, &[&str])] = &[
        (
            "GET",
            "v1/{+resourceName}/connections",
            &[
                "personFields",
                "pageSize",
                "pageToken",
                "requestSyncToken",
                "syncToken",
            ],
        ),
        ("GET", "v1/{+resourceName}", &["personFields"]),
        ("POST", "v1/people:createContact", &["personFields"]),
        (
            "PATCH",
            "v1/{+resourceName}:updateContact",
            &["updatePersonFields", "personFields"],
        ),
        ("DELETE", "v1/{+resourceName}:deleteContact", &[]),
        ("POST", "v1/people:batchCreateContacts", &[]),
        ("POST", "v1/people:batchUpdateContacts", &[]),
        ("POST", "v1/people:batchDeleteContacts", &[]),
        ("GET", "v1/contactGroups", &[]),
        ("GET", "v1/{+resourceName}", &["maxMembers"]),
    ];
    for (m, p, params) in served {
        let found = methods.iter().any(|(hm, hp, hparams)| {
            hm == m && hp == p && params.iter().all(|x| hparams.iter().any(|h| h == x))
        });
        assert!(found, "{m} {p} {params:?} not in the discovery document");
    }
    // Request body fields the simulator reads.
    for (schema, fields) in [
        ("BatchCreateContactsRequest", &["contacts", "readMask"][..]),
        ("ContactToCreate", &["contactPerson"][..]),
        (
            "BatchUpdateContactsRequest",
            &["contacts", "updateMask", "readMask"][..],
        ),
        ("BatchDeleteContactsRequest", &["resourceNames"][..]),
        (
            "Person",
            &[
                "etag",
                "metadata",
                "memberships",
                "names",
                "emailAddresses",
                "phoneNumbers",
            ][..],
        ),
        (
            "ContactGroupMembership",
            &["contactGroupResourceName", "contactGroupId"][..],
        ),
    ] {
        for f in fields {
            assert!(
                doc["schemas"][schema]["properties"].get(*f).is_some(),
                "{schema}.{f} not in the discovery document"
            );
        }
    }
    // The person fields the simulator accepts in masks are Person properties.
    let person = doc["schemas"]["Person"]["properties"]
        .as_object()
        .expect("Person");
    for f in [
        "addresses",
        "birthdays",
        "emailAddresses",
        "memberships",
        "metadata",
        "names",
        "organizations",
        "phoneNumbers",
        "photos",
    ] {
        assert!(person.contains_key(f), "{f}");
    }
}

#[tokio::test]
async fn every_emitted_field_exists_with_its_type() {
    let Some(doc) = discovery_doc() else { return };
    let (sim, tok) = start().await;
    let c = reqwest::Client::new();
    let all_fields = "addresses,ageRanges,biographies,birthdays,calendarUrls,clientData,coverPhotos,emailAddresses,events,externalIds,genders,imClients,interests,locales,locations,memberships,metadata,miscKeywords,names,nicknames,occupations,organizations,phoneNumbers,photos,relations,sipAddresses,skills,urls,userDefined";
    let get = |path: String| {
        let c = c.clone();
        let tok = tok.clone();
        let url = format!("{}{path}", sim.google_base);
        async move {
            c.get(url)
                .bearer_auth(tok)
                .send()
                .await
                .expect("get")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let post = |path: &str, body: Value| {
        let c = c.clone();
        let tok = tok.clone();
        let url = format!("{}{path}", sim.google_base);
        async move {
            c.post(url)
                .bearer_auth(tok)
                .json(&body)
                .send()
                .await
                .expect("post")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let mut samples: Vec<(&str, Value)> = Vec::new();
    let list = get(format!(
        "/v1/people/me/connections?pageSize=1000&requestSyncToken=true&personFields={all_fields}"
    ))
    .await;
    let sync = list["nextSyncToken"].as_str().expect("sync").to_string();
    let first = list["connections"][0]["resourceName"]
        .as_str()
        .expect("rn")
        .to_string();
    samples.push(("ListConnectionsResponse", list));
    let paged = get(format!(
        "/v1/people/me/connections?pageSize=3&personFields={all_fields}"
    ))
    .await;
    samples.push(("ListConnectionsResponse", paged));
    samples.push((
        "Person",
        get(format!("/v1/{first}?personFields={all_fields}")).await,
    ));
    let created = post(
        &format!("/v1/people:createContact?personFields={all_fields}"),
        json!({"names": [{"givenName": "Conf"}], "birthdays": [{"date": {"month": 2, "day": 29}}], "phoneNumbers": [{"value": "+49 30 1234567"}]}),
    )
    .await;
    let rn = created["resourceName"].as_str().expect("rn").to_string();
    let etag = created["metadata"]["sources"][0]["etag"].clone();
    samples.push(("Person", created));
    let batch = post("/v1/people:batchCreateContacts", json!({"contacts": [{"contactPerson": {"names": [{"givenName": "B"}]}}], "readMask": all_fields})).await;
    let brn = batch["createdPeople"][0]["person"]["resourceName"]
        .as_str()
        .expect("rn")
        .to_string();
    let betag = batch["createdPeople"][0]["person"]["metadata"]["sources"][0]["etag"].clone();
    samples.push(("BatchCreateContactsResponse", batch));
    let upd = post(
        "/v1/people:batchUpdateContacts",
        json!({"contacts": {brn.clone(): {"metadata": {"sources": [{"type": "CONTACT", "etag": betag}]}, "names": [{"givenName": "C"}]}}, "updateMask": "names", "readMask": all_fields}),
    )
    .await;
    samples.push(("BatchUpdateContactsResponse", upd));
    let r = c
        .patch(format!(
            "{}/v1/{rn}:updateContact?updatePersonFields=names&personFields={all_fields}",
            sim.google_base
        ))
        .bearer_auth(&tok)
        .json(&json!({"metadata": {"sources": [{"type": "CONTACT", "etag": etag}]}, "names": [{"givenName": "Conf", "familyName": "Ormance"}]}))
        .send()
        .await
        .expect("patch");
    samples.push(("Person", r.json().await.expect("json")));
    c.delete(format!("{}/v1/{rn}:deleteContact", sim.google_base))
        .bearer_auth(&tok)
        .send()
        .await
        .expect("delete");
    let delta = get(format!(
        "/v1/people/me/connections?personFields={all_fields}&requestSyncToken=true&syncToken={}",
        url::form_urlencoded::byte_serialize(sync.as_bytes()).collect::<String>()
    ))
    .await;
    assert!(delta["connections"]
        .as_array()
        .expect("changes")
        .iter()
        .any(|p| p["metadata"]["deleted"] == true));
    samples.push(("ListConnectionsResponse", delta));
    samples.push((
        "ContactGroup",
        get("/v1/contactGroups/starred?maxMembers=10".into()).await,
    ));
    samples.push((
        "ListContactGroupsResponse",
        get("/v1/contactGroups".into()).await,
    ));
    samples.push((
        "Empty",
        post(
            "/v1/people:batchDeleteContacts",
            json!({"resourceNames": [brn]}),
        )
        .await,
    ));

    let mut errs = Vec::new();
    for (name, v) in &samples {
        check(&doc, &schema(name), v, name, &mut errs);
    }
    assert!(
        errs.is_empty(),
        "fields not in Google's discovery document:\n{}",
        errs.join("\n")
    );
    // The checker itself rejects what it should.
    let mut bad = Vec::new();
    check(
        &doc,
        &schema("Person"),
        &json!({"names": [{"givenName": 1}], "nickName": "x"}),
        "Person",
        &mut bad,
    );
    assert_eq!(bad.len(), 2, "{bad:?}");
    sim.stop().await;
}

#[tokio::test]
async fn google_python_client_lists_syncs_and_writes() {
    if discovery_doc().is_none() {
        return;
    }
    let (sim, tok) = start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/conformance/google_client.py"
    );
    let out = tokio::process::Command::new("python3")
        .args([
            script,
            "--base",
            &sim.google_base,
            "--token",
            &tok,
            "--expect",
            "150",
        ])
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "google_client.py failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report: Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).expect("report JSON");
    assert_eq!(report["listed"], 150);
    assert_eq!(report["synced_deletions"], 4);
    // The client really talked to the simulator.
    let log = sim.requests(Provider::Google);
    assert!(
        log.iter()
            .filter(|e| e.path == "/v1/people/me/connections")
            .count()
            >= 22
    );
    sim.stop().await;
}

/// Microsoft's msgraph-sdk (optional: skipped with a message when not installed, also in
/// CI, which does not install it) parses the Graph simulator's delta, contact, folder and
/// error payloads without finding properties it does not model.
#[tokio::test]
async fn msgraph_sdk_parses_graph_payloads() {
    let have = Command::new("python3")
        .args(["-c", "import msgraph, kiota_serialization_json"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        eprintln!(
            "SKIPPED: msgraph-sdk is not installed; `pip install msgraph-sdk` to run this test"
        );
        return;
    }
    let user = "sdk@example.com";
    let mut u = SeedUser::new(user, 40, 6);
    u.child_folders = 2;
    let sim = Sim::start(SimOptions {
        outlook_users: vec![u],
        ..SimOptions::default()
    })
    .await
    .expect("sim");
    let rt = sim.refresh_token(Provider::Outlook, user).expect("token");
    let c = reqwest::Client::new();
    let t: Value = c
        .post(sim.graph_token_url("common"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("client_id", "c"),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let tok = t["access_token"].as_str().expect("access").to_string();
    let api = sim.graph_api_base();
    let get = |url: String| {
        let c = c.clone();
        let tok = tok.clone();
        async move {
            c.get(url)
                .bearer_auth(tok)
                .header("Prefer", "odata.maxpagesize=5, IdType=\"ImmutableId\"")
                .send()
                .await
                .expect("get")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let mut pages = Vec::new();
    let mut url = format!("{api}/me/contactFolders/contacts/contacts/delta");
    let delta_link = loop {
        let p = get(url).await;
        pages.push(p.clone());
        match p["@odata.nextLink"].as_str() {
            Some(n) => url = n.to_string(),
            None => {
                break p["@odata.deltaLink"]
                    .as_str()
                    .expect("delta link")
                    .to_string()
            }
        }
    };
    let first_id = pages[0]["value"][0]["id"].as_str().expect("id").to_string();
    let second_id = pages[0]["value"][1]["id"].as_str().expect("id").to_string();
    c.delete(format!("{api}/me/contacts/{first_id}"))
        .bearer_auth(&tok)
        .send()
        .await
        .expect("delete");
    c.patch(format!("{api}/me/contacts/{second_id}"))
        .bearer_auth(&tok)
        .json(&json!({"homeAddress": {"street": "1 Way", "city": "Oslo", "countryOrRegion": "Norway"}}))
        .send()
        .await
        .expect("patch");
    let p = get(delta_link).await;
    assert!(p["value"]
        .as_array()
        .expect("rows")
        .iter()
        .any(|r| r.get("@removed").is_some()));
    pages.push(p);
    let created: Value = c
        .post(format!("{api}/me/contacts"))
        .bearer_auth(&tok)
        .json(&json!({"givenName": "Yearless", "birthday": "1604-02-03", "emailAddresses": [{"name": "Y", "address": "y@example.com"}]}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let contact = get(format!(
        "{api}/me/contacts/{}",
        created["id"].as_str().expect("id")
    ))
    .await;
    let folders = get(format!("{api}/me/contactFolders")).await;
    let error = get(format!(
        "{api}/me/contactFolders/contacts/contacts/delta?$deltatoken=stale"
    ))
    .await;
    let payloads =
        json!({"delta_pages": pages, "contact": contact, "folders": folders, "error": error});
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), serde_json::to_vec(&payloads).expect("json")).expect("write");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/conformance/graph_sdk.py"
    );
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(file.path())
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "graph_sdk.py failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report: Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).expect("report");
    assert!(report["rows"].as_u64().unwrap_or(0) > 10);
    assert_eq!(report["removed"], 1);
    sim.stop().await;
}
