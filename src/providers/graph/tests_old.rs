use super::exec::ApiError;
use super::map::photo_url;
use super::read::dedupe;
use super::wire::error_codes;
use super::*;
use crate::model::{Address, Change, Fields, Progress};
use crate::providers::MAX_PHOTO_BYTES;
use chrono::NaiveDate;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::providers::oauth::{GrantSink, OAuthClient};

// ---------------------------------------------------------------------------------------
// Mapping
// ---------------------------------------------------------------------------------------

fn contact(v: Value) -> GraphContact {
    serde_json::from_value(v).expect("fixture parses")
}

#[test]
fn over_long_values_count_as_absent() {
    let long = "x".repeat(crate::providers::MAX_FIELD_BYTES + 1);
    let c = contact(json!({
        "id": "AAA1",
        "givenName": long,
        "surname": "Hopper",
        "emailAddresses": [{"address": format!("{long}@example.org")}, {"address": "g@example.org"}],
        "businessPhones": [long],
        "mobilePhone": "+1 202 555 0100",
        "homeAddress": {"street": long, "city": "Arlington"},
        "companyName": long,
    }));
    let pc = map_contact(&c, "f");
    assert_eq!(pc.fields.first_name, "");
    assert_eq!(pc.fields.last_name, "Hopper");
    assert_eq!(pc.fields.emails, vec!["g@example.org".to_string()]);
    assert_eq!(pc.fields.phones, vec!["+1 202 555 0100".to_string()]);
    let a = pc.fields.address.expect("city kept");
    assert_eq!((a.street, a.city.as_deref()), (None, Some("Arlington")));
    assert_eq!(pc.fields.organization, None);
}

#[test]
fn page_rows_are_read_without_requests() {
    let body = serde_json::to_vec(&json!({
        "value": [
            full_row("A1", "Ada", "Lovelace"),
            {"id": "A2", "@removed": {"reason": "deleted"}},
            {"id": "A3", "givenName": "Partial"},
            {"givenName": "No id"},
        ],
        "@odata.deltaLink": "https://graph.example/delta?token=x",
    }))
    .unwrap();
    let page = parse_page(&body, true).expect("page");
    let out: Vec<RowOutcome> = page
        .value
        .into_iter()
        .map(|r| row_outcome(r, "f", DEFAULT_API_BASE).expect("row"))
        .collect();
    let RowOutcome::Ready(first) = &out[0] else {
        panic!("{:?}", out[0]);
    };
    assert!(matches!(&**first, Change::Upsert(c) if c.provider_id == "A1"));
    assert_eq!(
        out[1],
        RowOutcome::Ready(Box::new(Change::Deleted {
            provider_id: "A2".into()
        }))
    );
    assert_eq!(out[2], RowOutcome::Fetch("A3".into()));
    assert_eq!(out[3], RowOutcome::Skip);
    assert!(parse_page(br#"{"value": []}"#, true).is_err());
    assert!(row_outcome(json!(7), "f", DEFAULT_API_BASE).is_err());
}

/// A full row shaped like Graph's output for the `$select` we send.
fn full_row(id: &str, given: &str, surname: &str) -> Value {
    json!({
        "@odata.type": "#microsoft.graph.contact",
        "@odata.etag": format!("W/\"EQAAABYAAAC{id}\""),
        "id": id,
        "changeKey": format!("EQAAABYAAAC{id}"),
        "parentFolderId": "AAMkAGI2AAEOAAA=",
        "birthday": null,
        "displayName": format!("{given} {surname}"),
        "givenName": given,
        "surname": surname,
        "emailAddresses": [{"name": given, "address": format!("{}@contoso.com", given.to_lowercase())}],
        "businessPhones": ["+1 918 555 0101"],
        "homePhones": [],
        "mobilePhone": null,
        "homeAddress": {},
        "businessAddress": {},
        "otherAddress": {},
        "companyName": null,
        "jobTitle": null
    })
}

#[test]
fn display_name_is_split_when_given_and_surname_are_empty() {
    let c = contact(json!({
        "id": "AAMk1", "givenName": "", "surname": null,
        "displayName": "Mary Ann  van Dyke",
        "emailAddresses": [], "businessPhones": [], "homePhones": [], "mobilePhone": null
    }));
    let p = map_contact(&c, "F");
    assert_eq!(p.fields.first_name, "Mary Ann van");
    assert_eq!(p.fields.last_name, "Dyke");

    let c = contact(json!({"id": "AAMk1", "displayName": "Cher"}));
    let p = map_contact(&c, "F");
    assert_eq!(
        (p.fields.first_name.as_str(), p.fields.last_name.as_str()),
        ("", "Cher")
    );

    // Given names win over the display name.
    let c =
        contact(json!({"id": "AAMk1", "givenName": "Garth", "surname": "", "displayName": "G F"}));
    let p = map_contact(&c, "F");
    assert_eq!(
        (p.fields.first_name.as_str(), p.fields.last_name.as_str()),
        ("Garth", "")
    );
}

#[test]
fn phones_come_from_business_home_and_mobile_in_that_order() {
    let c = contact(json!({
        "id": "AAMk2", "givenName": "Garth", "surname": "Fort",
        "businessPhones": ["+1 918 555 0101", " ", "+1 918 555 0102"],
        "homePhones": ["+1 425 555 0100"],
        "mobilePhone": "+1 206 555 0199",
        "emailAddresses": [
            {"name": "Garth", "address": "garth@contoso.com"},
            {"name": "empty", "address": ""},
            {"name": "Work", "address": "g.fort@fabrikam.com"}
        ]
    }));
    let p = map_contact(&c, "F");
    assert_eq!(
        p.fields.phones,
        vec![
            "+1 918 555 0101",
            "+1 918 555 0102",
            "+1 425 555 0100",
            "+1 206 555 0199"
        ]
    );
    assert_eq!(
        p.fields.emails,
        vec!["garth@contoso.com", "g.fort@fabrikam.com"]
    );
}

#[test]
fn emails_are_not_truncated() {
    let emails: Vec<Value> = (0..12)
        .map(|i| json!({"name": "x", "address": format!("x{i}@contoso.com")}))
        .collect();
    let c = contact(json!({"id": "AAMk3", "givenName": "X", "emailAddresses": emails}));
    assert_eq!(map_contact(&c, "F").fields.emails.len(), 12);
}

#[test]
fn home_address_is_preferred_over_business_address() {
    let c = contact(json!({
        "id": "AAMk4", "givenName": "Garth",
        "homeAddress": {"street": "123 Some street", "city": "Seattle", "state": "WA", "postalCode": "98121"},
        "businessAddress": {"street": "10 Contoso Way", "city": "Redmond", "state": "WA", "countryOrRegion": "USA", "postalCode": "98075"},
        "otherAddress": {}
    }));
    let a = map_contact(&c, "F").fields.address.expect("address");
    assert_eq!(a.street.as_deref(), Some("123 Some street"));
    assert_eq!(a.city.as_deref(), Some("Seattle"));
    assert_eq!(a.region.as_deref(), Some("WA"));
    assert_eq!(a.postal_code.as_deref(), Some("98121"));
    assert_eq!(a.country, None);
}

#[test]
fn business_address_is_used_when_home_address_is_empty_then_other_address() {
    let c = contact(json!({
        "id": "AAMk5", "givenName": "Garth",
        "homeAddress": {"street": "  ", "city": null},
        "businessAddress": {"street": "10 Contoso Way", "city": "Redmond", "state": "WA", "countryOrRegion": "USA", "postalCode": "98075"},
        "otherAddress": {"city": "Elsewhere"}
    }));
    let a = map_contact(&c, "F").fields.address.expect("address");
    assert_eq!(a.street.as_deref(), Some("10 Contoso Way"));
    assert_eq!(a.country.as_deref(), Some("USA"));
    assert_eq!(a.postal_code.as_deref(), Some("98075"));

    let c = contact(json!({
        "id": "AAMk5", "givenName": "Garth",
        "homeAddress": {}, "businessAddress": {}, "otherAddress": {"city": "Elsewhere"}
    }));
    let a = map_contact(&c, "F").fields.address.expect("address");
    assert_eq!(a.city.as_deref(), Some("Elsewhere"));

    let c = contact(
        json!({"id": "AAMk5", "givenName": "Garth", "homeAddress": {}, "businessAddress": {}, "otherAddress": {}}),
    );
    assert_eq!(map_contact(&c, "F").fields.address, None);
}

#[test]
fn birthday_in_year_1604_means_no_year_and_is_dropped() {
    let c = contact(json!({"id": "AAMk6", "givenName": "A", "birthday": "1604-07-22T00:00:00Z"}));
    assert_eq!(map_contact(&c, "F").fields.birthday, None);
}

#[test]
fn complete_birthday_is_kept_from_timestamp_or_date() {
    let c = contact(json!({"id": "AAMk7", "givenName": "A", "birthday": "1974-07-22T11:59:00Z"}));
    assert_eq!(
        map_contact(&c, "F").fields.birthday,
        NaiveDate::from_ymd_opt(1974, 7, 22)
    );
    let c = contact(json!({"id": "AAMk7", "givenName": "A", "birthday": "1974-07-22"}));
    assert_eq!(
        map_contact(&c, "F").fields.birthday,
        NaiveDate::from_ymd_opt(1974, 7, 22)
    );
    let c = contact(json!({"id": "AAMk7", "givenName": "A", "birthday": "garbage"}));
    assert_eq!(map_contact(&c, "F").fields.birthday, None);
}

#[test]
fn etag_scope_company_job_and_photo_url_are_mapped() {
    let mut row = full_row("AAMk8=", "Garth", "Fort");
    row["companyName"] = json!(" Contoso, Inc. ");
    row["jobTitle"] = json!("Web Marketing Manager");
    let p = map_contact_with_base(&contact(row), "FOLDER", "http://127.0.0.1:1/v1.0/");
    assert_eq!(p.provider_id, "AAMk8=");
    assert_eq!(p.scope, "FOLDER");
    assert_eq!(p.etag.as_deref(), Some("W/\"EQAAABYAAACAAMk8=\""));
    assert_eq!(p.fields.organization.as_deref(), Some("Contoso, Inc."));
    assert_eq!(p.fields.job_title.as_deref(), Some("Web Marketing Manager"));
    assert_eq!(
        p.photo_url.as_deref(),
        Some("http://127.0.0.1:1/v1.0/me/contacts/AAMk8%3D/photo/$value")
    );
    // Without @odata.etag the changeKey is the etag.
    let c = contact(json!({"id": "X", "changeKey": "CK1", "givenName": "A"}));
    assert_eq!(map_contact(&c, "F").etag.as_deref(), Some("CK1"));
}

#[test]
fn removed_row_and_partial_rows_are_recognised() {
    let removed = json!({"@odata.type": "#microsoft.graph.contact", "id": "AAMk9", "@removed": {"reason": "deleted"}});
    assert!(contact(removed).removed.is_some());
    let full = full_row("AAMk9", "A", "B");
    assert!(!is_partial(full.as_object().unwrap()));
    let partial = json!({"id": "AAMk9", "jobTitle": "CTO", "parentFolderId": "P"});
    assert!(is_partial(partial.as_object().unwrap()));
    let no_phones = json!({"id": "AAMk9", "givenName": "A", "emailAddresses": []});
    assert!(is_partial(no_phones.as_object().unwrap()));
}

#[test]
fn delta_row_missing_any_selected_property_is_partial_and_null_is_not_missing() {
    // The row of the report: names, email and phone present, first name, address,
    // company and birthday not sent.
    let mut row = full_row("AAMk9", "Ada", "Lovelace");
    let m = row.as_object_mut().unwrap();
    for k in ["givenName", "homeAddress", "companyName", "birthday"] {
        let mut one = full_row("AAMk9", "Ada", "Lovelace");
        one.as_object_mut().unwrap().remove(k);
        assert!(is_partial(one.as_object().unwrap()), "{k} missing");
        m.remove(k);
    }
    assert!(is_partial(m));
    assert_eq!(
        row_outcome(row, "f", DEFAULT_API_BASE).unwrap(),
        RowOutcome::Fetch("AAMk9".into())
    );
    // Every selected property present, some of them null or empty: complete, and cleared.
    let nulls = full_row("AAMk9", "Ada", "Lovelace");
    assert!(!is_partial(nulls.as_object().unwrap()));
    let RowOutcome::Ready(c) = row_outcome(nulls, "f", DEFAULT_API_BASE).unwrap() else {
        panic!("a complete row is mapped without a fetch");
    };
    let Change::Upsert(pc) = *c else {
        panic!("an upsert")
    };
    assert_eq!(pc.fields.organization, None);
    assert_eq!(pc.fields.birthday, None);
    assert_eq!(pc.fields.address, None);
}

#[tokio::test]
async fn removed_row_in_a_page_becomes_a_deletion() {
    let (client, _, _srv) = setup(Arc::new(|_: &Req| Resp::json(500, json!({})))).await;
    let rows = vec![
        json!({"@odata.type": "#microsoft.graph.contact", "id": "AAMk9", "@removed": {"reason": "changed"}}),
        full_row("AAMk10", "A", "B"),
    ];
    let changes = client.page_changes("F", rows).await.unwrap();
    assert_eq!(
        changes[0],
        Change::Deleted {
            provider_id: "AAMk9".into()
        }
    );
    assert!(
        matches!(&changes[1], Change::Upsert(p) if p.provider_id == "AAMk10" && p.scope == "F")
    );
}

#[test]
fn a_move_between_folders_is_not_a_deletion_but_a_removal_in_the_same_folder_is() {
    let up = |id: &str, scope: &str| {
        (
            scope.to_string(),
            Change::Upsert(map_contact(&contact(full_row(id, "A", "B")), scope)),
        )
    };
    let del = |id: &str, scope: &str| {
        (
            scope.to_string(),
            Change::Deleted {
                provider_id: id.into(),
            },
        )
    };
    let out = dedupe(vec![
        up("m", "B"),
        del("x", "B"),
        del("m", "A"), // m moved from A to B, B listed first
        up("x", "A"),  // x moved from B to A, B listed first
        up("y", "A"),
        up("y", "B"), // replay: the last wins
        up("z", "A"),
        del("z", "A"), // listed, then deleted while paging
    ]);
    let ids: Vec<(&str, bool)> = out
        .iter()
        .map(|c| (c.provider_id(), matches!(c, Change::Upsert(_))))
        .collect();
    assert_eq!(
        ids,
        vec![("m", true), ("x", true), ("y", true), ("z", false)]
    );
    assert!(matches!(&out[2], Change::Upsert(p) if p.scope == "B"));
}

#[test]
fn cursor_round_trips_and_garbage_is_rejected() {
    let mut c = GraphCursor::default();
    c.folders
        .insert("F1".into(), "https://x/delta?$deltatoken=1".into());
    assert_eq!(GraphCursor::decode(&c.encode()), Some(c));
    assert_eq!(GraphCursor::decode(b"\x00\x01"), None);
}

#[test]
fn error_codes_are_found_nested_and_compared_case_insensitively() {
    let body = br#"{"error":{"code":"BadRequest","message":"m","innerError":{"code":"syncStateNotFound"}}}"#;
    let e = ApiError {
        status: StatusCode::BAD_REQUEST,
        codes: error_codes(body),
    };
    assert_eq!(e.codes[0], "BadRequest");
    assert!(e.sync_state_lost());
    let e = ApiError {
        status: StatusCode::BAD_REQUEST,
        codes: error_codes(br#"{"error":{"code":"RESYNCREQUIRED"}}"#),
    };
    assert!(e.sync_state_lost());
    let e = ApiError {
        status: StatusCode::NOT_FOUND,
        codes: error_codes(b"<html>not found</html>"),
    };
    assert!(
        !e.item_not_found(),
        "a bare 404 is not proof a folder is gone"
    );
}

// ---------------------------------------------------------------------------------------
// A loopback HTTP server (raw tokio, one request per connection)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(super) struct Req {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Debug, Clone)]
pub(super) struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl Resp {
    pub fn json(status: u16, v: Value) -> Resp {
        Resp::raw(status, serde_json::to_vec(&v).unwrap())
    }
    pub fn raw(status: u16, body: Vec<u8>) -> Resp {
        Resp {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body,
            delay: Duration::ZERO,
        }
    }
    fn with_header(mut self, k: &str, v: &str) -> Resp {
        self.headers.push((k.into(), v.into()));
        self
    }
}

type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

pub(super) struct Server {
    pub base: String,
    pub log: Arc<Mutex<Vec<Req>>>,
    pub max_in_flight: Arc<AtomicUsize>,
}

impl Server {
    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
    fn graph_requests(&self) -> Vec<Req> {
        self.requests()
            .into_iter()
            .filter(|r| r.path() != "/token")
            .collect()
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Req> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Req {
        method,
        target,
        headers,
        body,
    })
}

pub(super) async fn serve(handler: Handler) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let (log2, inf, maxf) = (log.clone(), in_flight.clone(), max_in_flight.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (handler, log, inf, maxf) =
                (handler.clone(), log2.clone(), inf.clone(), maxf.clone());
            tokio::spawn(async move {
                let Some(req) = read_request(&mut sock).await else {
                    return;
                };
                let now = inf.fetch_add(1, Ordering::SeqCst) + 1;
                maxf.fetch_max(now, Ordering::SeqCst);
                log.lock().unwrap().push(req.clone());
                let resp = handler(&req);
                if !resp.delay.is_zero() {
                    tokio::time::sleep(resp.delay).await;
                }
                let mut out = format!(
                    "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    resp.status,
                    resp.body.len()
                );
                for (k, v) in &resp.headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = sock.write_all(out.as_bytes()).await;
                let _ = sock.write_all(&resp.body).await;
                let _ = sock.shutdown().await;
                inf.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Server {
        base,
        log,
        max_in_flight,
    }
}

/// Answers the token endpoint like Microsoft does (rotating the refresh token), everything
/// else through `graph`.
fn with_token_endpoint(graph: Handler) -> Handler {
    Arc::new(move |r: &Req| {
        if r.path() == "/token" {
            Resp::json(
                200,
                json!({"access_token": "a", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "r2"}),
            )
        } else {
            graph(r)
        }
    })
}

type Stored = Arc<Mutex<Vec<String>>>;

fn token_source(base: &str) -> (Arc<TokenSource>, Stored) {
    let stored: Stored = Arc::new(Mutex::new(Vec::new()));
    let s2 = stored.clone();
    let sink: GrantSink = Arc::new(move |t: &SecretString| {
        s2.lock().unwrap().push(t.expose_secret().to_string());
        Ok(())
    });
    let ts = TokenSource::new(
        OAuthClient {
            client_id: "client".into(),
            client_secret: None,
            token_url: format!("{base}/token"),
            scopes: vec!["offline_access".into(), "Contacts.Read".into()],
        },
        SecretString::from("r1".to_string()),
        sink,
    );
    (Arc::new(ts), stored)
}

async fn setup(graph: Handler) -> (GraphClient, Stored, Server) {
    setup_raw(with_token_endpoint(graph)).await
}

async fn setup_raw(handler: Handler) -> (GraphClient, Stored, Server) {
    let srv = serve(handler).await;
    let (ts, stored) = token_source(&srv.base);
    let client = GraphClient::new(format!("{}/v1.0", srv.base), ts, RetryPolicy::fast());
    (client, stored, srv)
}

fn no_progress() -> ProgressFn {
    Box::new(|_| {})
}

fn upserts(r: &Round) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Upsert(p) => Some((p.provider_id.clone(), p.scope.clone())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn deletions(r: &Round) -> Vec<String> {
    r.changes
        .iter()
        .filter_map(|c| match c {
            Change::Deleted { provider_id } => Some(provider_id.clone()),
            _ => None,
        })
        .collect()
}

fn page(base: &str, rows: Vec<Value>, next: Option<&str>, delta: Option<&str>) -> Resp {
    let mut v = json!({"@odata.context": format!("{base}/v1.0/$metadata#Collection(contact)"), "value": rows});
    if let Some(n) = next {
        v["@odata.nextLink"] = json!(format!("{base}{n}"));
    }
    if let Some(d) = delta {
        v["@odata.deltaLink"] = json!(format!("{base}{d}"));
    }
    Resp::json(200, v)
}

fn not_found() -> Resp {
    Resp::json(
        404,
        json!({"error": {"code": "ErrorItemNotFound", "message": "The specified object was not found in the store."}}),
    )
}

/// A mailbox with the default folder `ROOT` and one child `KIDS`, two delta pages each.
/// `ROOT`'s stored delta link `rD1` has expired (410 SyncStateNotFound); `KIDS`'s `kD1`
/// answers with one partial row (fetched in full by id), one removal and a fresh link.
fn two_folder_mailbox(base: String) -> Handler {
    Arc::new(move |r: &Req| {
        let b = base.as_str();
        let t = r.target.as_str();
        let p = r.path();
        match p {
            "/v1.0/me/contactFolders/contacts" => Resp::json(
                200,
                json!({"id": "ROOT", "displayName": "Contacts", "parentFolderId": "TOP"}),
            ),
            "/v1.0/me/contactFolders/ROOT/childFolders" if t.contains("skiptoken=f2") => {
                page(b, vec![], None, None)
            }
            "/v1.0/me/contactFolders/ROOT/childFolders" => page(
                b,
                vec![json!({"id": "KIDS", "displayName": "Kids", "parentFolderId": "ROOT"})],
                Some("/v1.0/me/contactFolders/ROOT/childFolders?$skiptoken=f2"),
                None,
            ),
            "/v1.0/me/contactFolders/KIDS/childFolders" => page(b, vec![], None, None),
            "/v1.0/me/contactFolders/ROOT/contacts/delta" => {
                if t.contains("deltatoken=rD1") {
                    Resp::json(
                        410,
                        json!({"error": {"code": "SyncStateNotFound", "message": "The sync state generation is not found; generation=149;"}}),
                    )
                } else if t.contains("skiptoken=r2") {
                    page(
                        b,
                        vec![
                            full_row("bob", "Bob", "Root"),
                            json!({"id": "gone1", "@removed": {"reason": "deleted"}}),
                        ],
                        None,
                        Some("/v1.0/me/contactFolders/ROOT/contacts/delta?$deltatoken=rD1"),
                    )
                } else {
                    page(
                        b,
                        vec![full_row("alice", "Alice", "Root")],
                        Some("/v1.0/me/contactFolders/ROOT/contacts/delta?$skiptoken=r2"),
                        None,
                    )
                }
            }
            "/v1.0/me/contactFolders/KIDS/contacts/delta" => {
                if t.contains("deltatoken=kD1") {
                    page(
                        b,
                        vec![
                            json!({"id": "carol", "jobTitle": "CTO", "parentFolderId": "KIDS"}),
                            json!({"id": "dave", "@removed": {"reason": "changed"}}),
                        ],
                        None,
                        Some("/v1.0/me/contactFolders/KIDS/contacts/delta?$deltatoken=kD2"),
                    )
                } else if t.contains("skiptoken=k2") {
                    page(
                        b,
                        vec![full_row("dave", "Dave", "Kid")],
                        None,
                        Some("/v1.0/me/contactFolders/KIDS/contacts/delta?$deltatoken=kD1"),
                    )
                } else {
                    page(
                        b,
                        vec![full_row("carol", "Carol", "Kid")],
                        Some("/v1.0/me/contactFolders/KIDS/contacts/delta?$skiptoken=k2"),
                        None,
                    )
                }
            }
            "/v1.0/me/contacts/carol" => {
                let mut c = full_row("carol", "Carol", "Kid");
                c["jobTitle"] = json!("CTO");
                Resp::json(200, c)
            }
            _ => Resp::json(404, json!({"error": {"code": "UnknownPath", "message": p}})),
        }
    })
}

async fn lazy_server<F>(make: F) -> (GraphClient, Stored, Server)
where
    F: FnOnce(String) -> Handler,
{
    // The handler needs the server's address; route through a cell filled after binding.
    let cell: Arc<Mutex<Option<Handler>>> = Arc::new(Mutex::new(None));
    let c2 = cell.clone();
    let (client, stored, srv) = setup(Arc::new(move |r: &Req| {
        let h = c2.lock().unwrap().clone().expect("handler set");
        h(r)
    }))
    .await;
    *cell.lock().unwrap() = Some(make(srv.base.clone()));
    (client, stored, srv)
}

fn assert_prefer_on_every_request(srv: &Server) {
    let reqs = srv.graph_requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        let prefer = r.header("prefer").unwrap_or_default();
        assert!(
            prefer.contains("odata.maxpagesize=200") && prefer.contains("IdType=\"ImmutableId\""),
            "Prefer missing on {} {}",
            r.method,
            r.target
        );
        assert_eq!(r.header("authorization"), Some("Bearer a"), "{}", r.target);
    }
}

// ---------------------------------------------------------------------------------------
// fetch_round against the loopback server
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn first_round_lists_default_and_child_folders_in_full_with_prefer_on_every_request() {
    let (client, stored, srv) = lazy_server(two_folder_mailbox).await;
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let progress: ProgressFn = Box::new(move |p| s2.lock().unwrap().push(p));

    let round = client.fetch_round(None, &progress).await.unwrap();

    assert!(round.full);
    assert_eq!(round.complete_scopes, vec!["ROOT", "KIDS"]);
    assert!(round.gone_scopes.is_empty());
    assert_eq!(round.pages, 4);
    assert_eq!(
        upserts(&round),
        vec![
            ("alice".into(), "ROOT".into()),
            ("bob".into(), "ROOT".into()),
            ("carol".into(), "KIDS".into()),
            ("dave".into(), "KIDS".into()),
        ]
    );
    assert_eq!(deletions(&round), vec!["gone1"]);
    let cursor = GraphCursor::decode(&round.cursor).expect("cursor decodes");
    assert_eq!(cursor.folders.len(), 2);
    assert!(cursor.folders["ROOT"].ends_with("deltatoken=rD1"));
    assert!(cursor.folders["KIDS"].ends_with("deltatoken=kD1"));
    // Progress after each page.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen.last().map(|p| (p.pages, p.contacts)), Some((4, 5)));
    // Every request, follow-ups included, carries Prefer and the bearer token.
    assert_prefer_on_every_request(&srv);
    let follow_ups = srv
        .graph_requests()
        .iter()
        .filter(|r| r.target.contains("skiptoken"))
        .count();
    assert_eq!(follow_ups, 3, "two delta follow-ups and one folder page");
    let initial_deltas: Vec<_> = srv
        .graph_requests()
        .into_iter()
        .filter(|r| r.path().ends_with("/contacts/delta") && !r.target.contains("token"))
        .collect();
    assert_eq!(initial_deltas.len(), 2);
    for r in initial_deltas {
        assert!(r
            .target
            .contains("$select=id,givenName,surname,displayName,emailAddresses"));
        assert!(r.target.contains("parentFolderId,changeKey"));
    }
    // The rotated refresh token was stored.
    assert_eq!(stored.lock().unwrap().clone(), vec!["r2"]);
}

#[tokio::test]
async fn expired_delta_link_410_relists_only_that_folder_in_full() {
    let (client, _, srv) = lazy_server(two_folder_mailbox).await;
    let first = client.fetch_round(None, &no_progress()).await.unwrap();
    srv.log.lock().unwrap().clear();

    let round = client
        .fetch_round(Some(&first.cursor), &no_progress())
        .await
        .unwrap();

    // ROOT's link answered 410 SyncStateNotFound: listed again in full, within the round.
    assert_eq!(round.complete_scopes, vec!["ROOT"]);
    assert!(!round.full);
    let up = upserts(&round);
    assert!(up.contains(&("alice".into(), "ROOT".into())));
    assert!(up.contains(&("bob".into(), "ROOT".into())));
    // KIDS went on incrementally: the partial row was fetched in full by id.
    let carol = round
        .changes
        .iter()
        .find_map(|c| match c {
            Change::Upsert(p) if p.provider_id == "carol" => Some(p.clone()),
            _ => None,
        })
        .expect("carol upserted");
    assert_eq!(carol.scope, "KIDS");
    assert_eq!(carol.fields.first_name, "Carol");
    assert_eq!(carol.fields.emails, vec!["carol@contoso.com"]);
    assert_eq!(carol.fields.job_title.as_deref(), Some("CTO"));
    assert!(deletions(&round).contains(&"dave".to_string()));
    let cursor = GraphCursor::decode(&round.cursor).unwrap();
    assert!(cursor.folders["ROOT"].ends_with("deltatoken=rD1"));
    assert!(cursor.folders["KIDS"].ends_with("deltatoken=kD2"));
    let reqs = srv.graph_requests();
    assert!(reqs.iter().any(|r| r.path() == "/v1.0/me/contacts/carol"));
    assert_eq!(
        reqs.iter()
            .filter(
                |r| r.path() == "/v1.0/me/contactFolders/ROOT/contacts/delta"
                    && r.target.contains("$select=")
                    && !r.target.contains("token")
            )
            .count(),
        1,
        "ROOT restarted from the initial delta URL once"
    );
    assert_prefer_on_every_request(&srv);
}

#[tokio::test]
async fn resync_required_code_in_a_400_is_compared_case_insensitively() {
    let (client, _, _srv) = lazy_server(|base| {
        let inner = two_folder_mailbox(base);
        Arc::new(move |r: &Req| {
            if r.target.contains("deltatoken=kD1") {
                Resp::json(400, json!({"error": {"code": "BadRequest", "innerError": {"code": "RESYNCREQUIRED"}}}))
            } else {
                inner(r)
            }
        })
    })
    .await;
    let first = client.fetch_round(None, &no_progress()).await.unwrap();
    let round = client
        .fetch_round(Some(&first.cursor), &no_progress())
        .await
        .unwrap();
    assert_eq!(round.complete_scopes, vec!["ROOT", "KIDS"]);
    assert!(round.full);
}

fn vanished_folder_mailbox(lookup: Resp) -> impl FnOnce(String) -> Handler {
    move |base| {
        let inner = two_folder_mailbox(base);
        Arc::new(move |r: &Req| {
            if r.path() == "/v1.0/me/contactFolders/OLD" {
                lookup.clone()
            } else {
                inner(r)
            }
        })
    }
}

fn cursor_with_old_folder(base: &str) -> Vec<u8> {
    let mut c = GraphCursor::default();
    for (f, tok) in [("ROOT", "rD1"), ("KIDS", "kD1"), ("OLD", "oD1")] {
        c.folders.insert(
            f.into(),
            format!("{base}/v1.0/me/contactFolders/{f}/contacts/delta?$deltatoken={tok}"),
        );
    }
    c.encode()
}

#[tokio::test]
async fn vanished_folder_confirmed_by_404_item_not_found_is_a_gone_scope() {
    let (client, _, srv) = lazy_server(vanished_folder_mailbox(not_found())).await;
    let round = client
        .fetch_round(Some(&cursor_with_old_folder(&srv.base)), &no_progress())
        .await
        .unwrap();
    assert_eq!(round.gone_scopes, vec!["OLD"]);
    let cursor = GraphCursor::decode(&round.cursor).unwrap();
    assert!(!cursor.folders.contains_key("OLD"));
    assert_eq!(cursor.folders.len(), 2);
    assert!(srv
        .graph_requests()
        .iter()
        .all(|r| !r.path().starts_with("/v1.0/me/contactFolders/OLD/")));
}

#[tokio::test]
async fn folder_found_by_id_outside_the_default_tree_is_a_gone_scope() {
    // Outlook moves a folder the user deletes to Deleted Items; Graph still finds it.
    let (client, _, srv) = lazy_server(vanished_folder_mailbox(Resp::json(
        200,
        json!({"id": "OLD", "displayName": "Old", "parentFolderId": "DELETEDITEMS"}),
    )))
    .await;
    let round = client
        .fetch_round(Some(&cursor_with_old_folder(&srv.base)), &no_progress())
        .await
        .unwrap();
    assert_eq!(round.gone_scopes, vec!["OLD"]);
    assert!(!GraphCursor::decode(&round.cursor)
        .unwrap()
        .folders
        .contains_key("OLD"));
    assert!(srv
        .graph_requests()
        .iter()
        .all(|r| !r.path().starts_with("/v1.0/me/contactFolders/OLD/")));
}

#[tokio::test]
async fn vanished_folder_whose_lookup_fails_with_500_fails_the_round() {
    let (client, _, srv) = lazy_server(vanished_folder_mailbox(Resp::json(
        500,
        json!({"error": {"code": "InternalServerError"}}),
    )))
    .await;
    let err = client
        .fetch_round(Some(&cursor_with_old_folder(&srv.base)), &no_progress())
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    // Retried per policy before giving up.
    let lookups = srv
        .graph_requests()
        .iter()
        .filter(|r| r.path() == "/v1.0/me/contactFolders/OLD")
        .count();
    assert_eq!(lookups as u32, RetryPolicy::fast().max_attempts);
}

#[tokio::test]
async fn vanished_folder_with_a_bare_404_is_not_treated_as_gone() {
    let (client, _, srv) = lazy_server(vanished_folder_mailbox(Resp::raw(
        404,
        b"<html>no</html>".to_vec(),
    )))
    .await;
    let err = client
        .fetch_round(Some(&cursor_with_old_folder(&srv.base)), &no_progress())
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Permanent(_)), "{err:?}");
}

#[tokio::test]
async fn throttled_429_with_fractional_retry_after_is_retried_then_succeeds() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let (client, _, srv) = lazy_server(move |base| {
        let inner = two_folder_mailbox(base);
        Arc::new(move |r: &Req| {
            if r.path() == "/v1.0/me/contactFolders/KIDS/contacts/delta"
                && h2.fetch_add(1, Ordering::SeqCst) == 0
            {
                Resp::json(
                    429,
                    json!({"error": {"code": "ApplicationThrottled", "message": "Application is over its MailboxConcurrency limit."}}),
                )
                .with_header("Retry-After", "0.01")
            } else {
                inner(r)
            }
        })
    })
    .await;
    let round = client.fetch_round(None, &no_progress()).await.unwrap();
    assert_eq!(upserts(&round).len(), 4);
    assert_eq!(
        srv.graph_requests()
            .iter()
            .filter(
                |r| r.path() == "/v1.0/me/contactFolders/KIDS/contacts/delta"
                    && !r.target.contains("token")
            )
            .count(),
        2
    );
}

#[tokio::test]
async fn throttling_that_never_ends_is_reported_as_throttled() {
    let (client, _, _srv) = setup(Arc::new(|_: &Req| {
        Resp::json(429, json!({"error": {"code": "TooManyRequests"}}))
            .with_header("Retry-After", "0.001")
    }))
    .await;
    let err = client.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Throttled { .. }), "{err:?}");
    // A Retry-After beyond the policy's maximum ends the round at once.
    let (client, _, srv) = setup(Arc::new(|_: &Req| {
        Resp::json(429, json!({})).with_header("Retry-After", "3600")
    }))
    .await;
    let err = client.fetch_round(None, &no_progress()).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Throttled {
            retry_after: Some(Duration::from_secs(3600))
        }
    );
    assert_eq!(srv.graph_requests().len(), 1);
}

#[tokio::test]
async fn truncated_body_is_retried_and_never_read_as_an_empty_page() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let (client, _, _srv) = lazy_server(move |base| {
        let inner = two_folder_mailbox(base);
        Arc::new(move |r: &Req| {
            if r.path() == "/v1.0/me/contactFolders/ROOT/contacts/delta"
                && r.target.contains("skiptoken=r2")
                && h2.fetch_add(1, Ordering::SeqCst) == 0
            {
                Resp::raw(200, br#"{"value":[{"id":"bob","givenName":"Bo"#.to_vec())
            } else {
                inner(r)
            }
        })
    })
    .await;
    let round = client.fetch_round(None, &no_progress()).await.unwrap();
    assert_eq!(upserts(&round).len(), 4);
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // Always truncated: the round fails (Transient), it does not come back empty.
    let (client, _, _srv) = lazy_server(|base| {
        let inner = two_folder_mailbox(base);
        Arc::new(move |r: &Req| {
            if r.target.contains("skiptoken=r2") {
                Resp::raw(200, br#"{"value":[{"id":"#.to_vec())
            } else {
                inner(r)
            }
        })
    })
    .await;
    let err = client.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn delta_page_without_next_or_delta_link_is_a_failed_fetch() {
    let (client, _, _srv) = lazy_server(|base| {
        let inner = two_folder_mailbox(base);
        Arc::new(move |r: &Req| {
            if r.path().ends_with("/contacts/delta") {
                Resp::json(200, json!({"value": []}))
            } else {
                inner(r)
            }
        })
    })
    .await;
    let err = client.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn paging_link_to_another_host_is_refused() {
    let (client, _, _srv) = lazy_server(|base| {
        let inner = two_folder_mailbox(base);
        Arc::new(move |r: &Req| {
            if r.path() == "/v1.0/me/contactFolders/ROOT/contacts/delta" {
                Resp::json(
                    200,
                    json!({"value": [], "@odata.nextLink": "http://evil.example/steal"}),
                )
            } else {
                inner(r)
            }
        })
    })
    .await;
    let err = client.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Permanent(_)), "{err:?}");
}

#[tokio::test]
async fn unauthorized_401_refreshes_the_token_once_and_retries() {
    let tokens = Arc::new(AtomicUsize::new(0));
    let t2 = tokens.clone();
    let cell: Arc<Mutex<Option<Handler>>> = Arc::new(Mutex::new(None));
    let c2 = cell.clone();
    let (client, stored, srv) = setup_raw(Arc::new(move |r: &Req| {
        if r.path() == "/token" {
            let n = t2.fetch_add(1, Ordering::SeqCst);
            let access = if n == 0 { "stale" } else { "a" };
            return Resp::json(
                200,
                json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600, "refresh_token": format!("r{}", n + 2)}),
            );
        }
        if r.header("authorization") != Some("Bearer a") {
            return Resp::json(401, json!({"error": {"code": "InvalidAuthenticationToken"}}));
        }
        let h = c2.lock().unwrap().clone().unwrap();
        h(r)
    }))
    .await;
    *cell.lock().unwrap() = Some(two_folder_mailbox(srv.base.clone()));
    let round = client.fetch_round(None, &no_progress()).await.unwrap();
    assert_eq!(upserts(&round).len(), 4);
    assert_eq!(tokens.load(Ordering::SeqCst), 2);
    assert_eq!(stored.lock().unwrap().clone(), vec!["r2", "r3"]);
}

#[tokio::test]
async fn unauthorized_twice_in_a_row_needs_reauth() {
    let (client, _, _srv) = setup(Arc::new(|_: &Req| {
        Resp::json(
            401,
            json!({"error": {"code": "InvalidAuthenticationToken"}}),
        )
    }))
    .await;
    let err = client.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::ReauthRequired(_)), "{err:?}");
}

#[tokio::test]
async fn invalid_grant_from_the_token_endpoint_is_reauth_required() {
    let (client, stored, srv) = setup_raw(Arc::new(|r: &Req| {
        if r.path() == "/token" {
            Resp::json(
                400,
                json!({"error": "invalid_grant", "error_description": "AADSTS70000: The refresh token isn't valid.", "error_codes": [70000]}),
            )
        } else {
            Resp::json(500, json!({}))
        }
    }))
    .await;
    let err = client.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::ReauthRequired(_)), "{err:?}");
    assert!(stored.lock().unwrap().is_empty());
    assert!(
        srv.graph_requests().is_empty(),
        "no Graph call without a token"
    );
    let token_req = &srv.requests()[0];
    assert!(token_req.body_str().contains("grant_type=refresh_token"));
    assert!(token_req.body_str().contains("refresh_token=r1"));
}

// ---------------------------------------------------------------------------------------
// Photos and the in-flight limit
// ---------------------------------------------------------------------------------------

fn pc(id: &str) -> ProviderContact {
    ProviderContact {
        provider_id: id.into(),
        etag: None,
        scope: "F".into(),
        fields: Fields::default(),
        photo_url: None,
    }
}

#[tokio::test]
async fn photo_is_fetched_with_auth_404_is_none_and_oversized_is_none() {
    let (client, _, srv) = setup(Arc::new(|r: &Req| match r.path() {
        "/v1.0/me/contacts/has/photo/$value" => Resp {
            headers: vec![("Content-Type".into(), "image/jpeg".into())],
            ..Resp::raw(200, vec![0xFF, 0xD8, 0xFF, 0xD9])
        },
        "/v1.0/me/contacts/big/photo/$value" => Resp::raw(200, vec![0u8; MAX_PHOTO_BYTES + 1]),
        _ => not_found(),
    }))
    .await;
    let mut with_url = pc("has");
    with_url.photo_url = Some(photo_url(client.api_base(), "has"));
    assert_eq!(
        client.fetch_photo(&with_url).await.unwrap(),
        Some(vec![0xFF, 0xD8, 0xFF, 0xD9])
    );
    assert_eq!(client.fetch_photo(&pc("none")).await.unwrap(), None);
    assert_eq!(client.fetch_photo(&pc("big")).await.unwrap(), None);
    assert_prefer_on_every_request(&srv);
}

#[tokio::test]
async fn at_most_four_requests_are_in_flight_per_mailbox() {
    let (client, _, srv) = setup(Arc::new(|_: &Req| Resp {
        delay: Duration::from_millis(40),
        ..Resp::raw(200, vec![1, 2, 3])
    }))
    .await;
    let contacts: Vec<ProviderContact> = (0..12).map(|i| pc(&format!("c{i}"))).collect();
    let results =
        futures_util::future::join_all(contacts.iter().map(|c| client.fetch_photo(c))).await;
    assert!(results.iter().all(|r| r.as_ref().unwrap().is_some()));
    let max = srv.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= MAX_IN_FLIGHT, "{max} requests in flight");
    assert!(max >= 2, "requests did run concurrently ({max})");
}

#[tokio::test]
async fn default_folder_falls_back_to_the_parent_of_a_top_level_folder() {
    let (client, _, srv) = lazy_server(|base| {
        let inner = two_folder_mailbox(base);
        Arc::new(move |r: &Req| match r.path() {
            "/v1.0/me/contactFolders/contacts" => Resp::json(
                400,
                json!({"error": {"code": "ErrorInvalidIdMalformed", "message": "Id is malformed."}}),
            ),
            "/v1.0/me/contactFolders" => Resp::json(
                200,
                json!({"value": [{"id": "KIDS", "displayName": "Kids", "parentFolderId": "ROOT"}]}),
            ),
            _ => inner(r),
        })
    })
    .await;
    let round = client.fetch_round(None, &no_progress()).await.unwrap();
    assert_eq!(round.complete_scopes, vec!["ROOT", "KIDS"]);
    assert_prefer_on_every_request(&srv);
}

#[tokio::test]
async fn skiptoken_expiring_mid_listing_restarts_that_folder_and_keeps_no_half_round() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let (client, _, srv) = lazy_server(move |base| {
        let inner = two_folder_mailbox(base);
        Arc::new(move |r: &Req| {
            if r.target.contains("skiptoken=k2") && h2.fetch_add(1, Ordering::SeqCst) == 0 {
                Resp::json(410, json!({"error": {"code": "syncStateNotFound"}}))
            } else {
                inner(r)
            }
        })
    })
    .await;
    let round = client.fetch_round(None, &no_progress()).await.unwrap();
    assert_eq!(round.complete_scopes, vec!["ROOT", "KIDS"]);
    // carol was on the page before the failure and again after the restart: one change.
    assert_eq!(
        round
            .changes
            .iter()
            .filter(|c| c.provider_id() == "carol")
            .count(),
        1
    );
    assert_eq!(upserts(&round).len(), 4);
    let kids_starts = srv
        .graph_requests()
        .iter()
        .filter(|r| {
            r.path() == "/v1.0/me/contactFolders/KIDS/contacts/delta" && !r.target.contains("token")
        })
        .count();
    assert_eq!(kids_starts, 2);
    let cursor = GraphCursor::decode(&round.cursor).unwrap();
    assert!(cursor.folders["KIDS"].ends_with("deltatoken=kD1"));
}

// ---------------------------------------------------------------------------------------
// Two-way writes
// ---------------------------------------------------------------------------------------

fn sample_fields(emails: usize, phones: usize) -> Fields {
    Fields {
        first_name: "Garth".into(),
        last_name: "Fort".into(),
        emails: (0..emails).map(|i| format!("g{i}@contoso.com")).collect(),
        phones: (0..phones).map(|i| format!("+1 918 555 010{i}")).collect(),
        address: Some(Address {
            street: Some("123 Some street".into()),
            city: Some("Seattle".into()),
            region: Some("WA".into()),
            postal_code: Some("98121".into()),
            country: None,
        }),
        organization: Some("Contoso, Inc.".into()),
        job_title: Some("Web Marketing Manager".into()),
        birthday: NaiveDate::from_ymd_opt(1974, 7, 22),
    }
}

#[test]
fn fields_to_contact_keeps_graph_multi_value_limits_and_reports_dropped_values() {
    let (body, dropped) = fields_to_contact(&sample_fields(5, 7));
    assert_eq!(body["emailAddresses"].as_array().unwrap().len(), 3);
    assert_eq!(body["businessPhones"].as_array().unwrap().len(), 2);
    assert_eq!(body["homePhones"].as_array().unwrap().len(), 2);
    assert_eq!(body["mobilePhone"], json!("+1 918 555 0104"));
    assert_eq!(dropped.emails, vec!["g3@contoso.com", "g4@contoso.com"]);
    assert_eq!(dropped.phones, vec!["+1 918 555 0105", "+1 918 555 0106"]);
    assert_eq!(body["displayName"], json!("Garth Fort"));
    assert_eq!(body["birthday"], json!("1974-07-22T12:00:00Z"));

    let (_, dropped) = fields_to_contact(&sample_fields(3, 5));
    assert!(dropped.is_empty());
}

#[test]
fn fields_within_limits_survive_a_round_trip_through_the_graph_shape() {
    let f = sample_fields(3, 5);
    let (mut body, _) = fields_to_contact(&f);
    body["id"] = json!("AAMkNEW");
    let back = map_contact(&contact(body), "F");
    assert_eq!(back.fields, f);
}

#[test]
fn update_body_holds_only_the_changed_fields() {
    use crate::model::field;
    let (body, dropped) = update_body(&sample_fields(4, 1), &[field::JOB_TITLE, field::PHONES]);
    let keys: BTreeSet<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["jobTitle", "businessPhones", "homePhones", "mobilePhone"])
    );
    assert!(
        dropped.emails.is_empty(),
        "emails were not written, so none were dropped"
    );
    let (body, dropped) = update_body(&sample_fields(4, 1), &[field::EMAILS, field::ADDRESS]);
    assert_eq!(dropped.emails, vec!["g3@contoso.com"]);
    assert_eq!(body["homeAddress"]["postalCode"], json!("98121"));
}

/// A `$batch` endpoint: creates get ids, `stale` conflicts, `throttled` is throttled once,
/// `missing` is gone.
fn batch_mailbox(throttled_once: Arc<AtomicUsize>) -> Handler {
    Arc::new(move |r: &Req| {
        if r.path() != "/v1.0/$batch" || r.method != "POST" {
            return Resp::json(404, json!({"error": {"code": "UnknownPath"}}));
        }
        let body: Value = serde_json::from_slice(&r.body).expect("batch body is JSON");
        let mut responses = Vec::new();
        for q in body["requests"].as_array().unwrap() {
            let id = q["id"].clone();
            let url = q["url"].as_str().unwrap();
            let resp = match (q["method"].as_str().unwrap(), url) {
                ("POST", "/me/contacts") => json!({"id": id, "status": 201,
                    "body": {"id": format!("new-{}", id.as_str().unwrap()), "@odata.etag": "W/\"c1\""}}),
                ("PATCH", "/me/contacts/stale") => json!({"id": id, "status": 412,
                    "body": {"error": {"code": "ErrorIrresolvableConflict"}}}),
                ("PATCH", "/me/contacts/throttled")
                    if throttled_once.fetch_add(1, Ordering::SeqCst) == 0 =>
                {
                    json!({"id": id, "status": 429, "headers": {"Retry-After": "0.01"},
                        "body": {"error": {"code": "ApplicationThrottled"}}})
                }
                ("PATCH", _) => json!({"id": id, "status": 200,
                    "body": {"id": url, "@odata.etag": "W/\"c2\""}}),
                ("DELETE", "/me/contacts/missing") => json!({"id": id, "status": 404,
                    "body": {"error": {"code": "ErrorItemNotFound"}}}),
                ("DELETE", _) => json!({"id": id, "status": 204}),
                _ => json!({"id": id, "status": 400}),
            };
            responses.push(resp);
        }
        responses.reverse(); // Graph may answer in any order.
        Resp::json(200, json!({"responses": responses}))
    })
}

#[tokio::test]
async fn writes_go_through_batch_in_chunks_of_twenty_with_if_match_and_conflicts() {
    let throttled = Arc::new(AtomicUsize::new(0));
    let (client, _, srv) = setup(batch_mailbox(throttled.clone())).await;
    let mut ops: Vec<WriteOp> = (0..21)
        .map(|i| WriteOp::Create {
            fields: sample_fields(if i == 0 { 4 } else { 1 }, 1),
        })
        .collect();
    let upd = |id: &str| WriteOp::Update {
        id: id.into(),
        etag: Some(format!("W/\"{id}\"")),
        fields: sample_fields(1, 1),
        changed: vec!["job_title".into()],
    };
    ops.extend([upd("ok"), upd("stale"), upd("throttled")]);
    ops.push(WriteOp::Delete {
        id: "missing".into(),
    });
    ops.push(WriteOp::Delete { id: "gone".into() });

    let results = client.write(&ops).await;

    assert_eq!(results.len(), ops.len());
    match &results[0] {
        WriteResult::Created {
            id, etag, dropped, ..
        } => {
            assert_eq!(id, "new-0");
            assert_eq!(etag.as_deref(), Some("W/\"c1\""));
            assert_eq!(dropped.emails, vec!["g3@contoso.com"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&results[20], WriteResult::Created { id, .. } if id == "new-20"));
    assert!(matches!(&results[21], WriteResult::Updated { etag: Some(e), .. } if e == "W/\"c2\""));
    assert_eq!(results[22], WriteResult::Conflict);
    assert!(matches!(&results[23], WriteResult::Updated { .. }));
    assert_eq!(results[24], WriteResult::NotFound);
    assert_eq!(results[25], WriteResult::Deleted);

    let batches: Vec<Value> = srv
        .graph_requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let sizes: Vec<usize> = batches
        .iter()
        .map(|b| b["requests"].as_array().unwrap().len())
        .collect();
    assert_eq!(
        sizes,
        vec![20, 6, 1],
        "20, then the rest, then the throttled item again"
    );
    for b in &batches {
        for q in b["requests"].as_array().unwrap() {
            assert!(q["headers"]["Prefer"]
                .as_str()
                .unwrap()
                .contains("IdType=\"ImmutableId\""));
            if q["method"] == "PATCH" {
                assert!(q["headers"]["If-Match"].is_string());
                assert_eq!(q["headers"]["Content-Type"], "application/json");
                assert_eq!(
                    q["body"].as_object().unwrap().keys().collect::<Vec<_>>(),
                    vec!["jobTitle"]
                );
            }
        }
    }
    assert_eq!(throttled.load(Ordering::SeqCst), 2);
    assert_prefer_on_every_request(&srv);
}

#[tokio::test]
async fn a_batch_with_creates_is_not_sent_twice_after_a_server_error() {
    let (client, _, srv) = setup(Arc::new(|_: &Req| {
        Resp::json(502, json!({"error": {"code": "BadGateway"}}))
    }))
    .await;
    let err = client.create(&sample_fields(1, 1)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    assert_eq!(srv.graph_requests().len(), 1);
    // Deletes are safe to repeat.
    let err = client.delete("x").await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    assert_eq!(
        srv.graph_requests().len() as u32,
        1 + RetryPolicy::fast().max_attempts
    );
}

#[tokio::test]
async fn stored_link_to_another_host_is_not_followed_and_the_folder_is_relisted() {
    let (client, _, srv) = lazy_server(two_folder_mailbox).await;
    let mut c = GraphCursor::default();
    c.folders.insert(
        "ROOT".into(),
        "http://old-proxy.invalid/v1.0/me/contactFolders/ROOT/contacts/delta?$deltatoken=x".into(),
    );
    c.folders.insert(
        "KIDS".into(),
        format!(
            "{}/v1.0/me/contactFolders/KIDS/contacts/delta?$deltatoken=kD1",
            srv.base
        ),
    );
    let round = client
        .fetch_round(Some(&c.encode()), &no_progress())
        .await
        .unwrap();
    assert_eq!(round.complete_scopes, vec!["ROOT"]);
    let cursor = GraphCursor::decode(&round.cursor).unwrap();
    assert!(cursor.folders["ROOT"].starts_with(&srv.base));
}
