use super::map::{drop_renamed_deletions, renames};
use super::*;
use crate::model::{Address, Fields, Progress};
use crate::providers::oauth::OAuthClient;
use crate::providers::{MAX_FIELD_BYTES, MAX_PHOTO_BYTES};
use chrono::{NaiveDate, Utc};
use secrecy::SecretString;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn person(v: serde_json::Value) -> PersonJson {
    serde_json::from_value(v).expect("fixture parses")
}

fn upsert(c: Change) -> ProviderContact {
    match c {
        Change::Upsert(p) => p,
        other => panic!("expected an upsert, got {other:?}"),
    }
}

/// A contact as `people.connections.list` returns it, with two names (primary second),
/// two addresses (primary second), a default photo before a real one.
fn ada() -> serde_json::Value {
    json!({
      "resourceName": "people/c100",
      "etag": "%EgoBAgMEBQYHCAkKGgQBAgUHIgxBQUFBQUFBQUFBQT0=",
      "metadata": {
        "sources": [{"type": "CONTACT", "id": "100", "etag": "#src-etag",
                     "updateTime": "2026-11-20T10:00:00.123Z"}],
        "objectType": "PERSON"
      },
      "names": [
        {"metadata": {"primary": false, "source": {"type": "PROFILE", "id": "9"}},
         "displayName": "Countess Lovelace", "givenName": "Augusta", "familyName": "Byron"},
        {"metadata": {"primary": true, "source": {"type": "CONTACT", "id": "100"}},
         "displayName": "Ada Lovelace", "familyName": "Lovelace", "givenName": "Ada",
         "displayNameLastFirst": "Lovelace, Ada", "unstructuredName": "Ada Lovelace"}
      ],
      "emailAddresses": [
        {"metadata": {"primary": true}, "value": "ada@example.org", "type": "home",
         "formattedType": "Home"},
        {"metadata": {}, "value": "  "},
        {"value": "ada@work.example"}
      ],
      "phoneNumbers": [
        {"value": "+44 20 7946 0018", "canonicalForm": "+442079460018", "type": "mobile"}
      ],
      "addresses": [
        {"metadata": {"source": {"type": "CONTACT"}}, "streetAddress": "1 Old St",
         "city": "Bath", "countryCode": "GB", "type": "home"},
        {"metadata": {"primary": true, "source": {"type": "CONTACT"}},
         "formattedValue": "12 St James's Sq\nLondon SW1Y 4JH\nUK",
         "streetAddress": "12 St James's Sq", "city": "London", "postalCode": "SW1Y 4JH",
         "countryCode": "GB", "type": "work"}
      ],
      "organizations": [
        {"name": "Analytical Engines Ltd", "title": "Programmer", "type": "work",
         "current": true, "metadata": {"primary": true}}
      ],
      "birthdays": [
        {"metadata": {"primary": true}, "date": {"year": 1815, "month": 12, "day": 10},
         "text": "10 Dec 1815"}
      ],
      "photos": [
        {"metadata": {"primary": true}, "url": "https://lh3.googleusercontent.com/cm/default",
         "default": true},
        {"url": "https://lh3.googleusercontent.com/contacts/real"}
      ],
      "memberships": [
        {"metadata": {"source": {"type": "CONTACT", "id": "100"}},
         "contactGroupMembership": {"contactGroupId": "myContacts",
                                    "contactGroupResourceName": "contactGroups/myContacts"}}
      ],
      "someFutureField": [{"x": 1}]
    })
}

#[test]
fn primary_name_is_used_not_the_first() {
    let c = upsert(map_person(&person(ada()), Group::All));
    assert_eq!(c.fields.first_name, "Ada");
    assert_eq!(c.fields.last_name, "Lovelace");
    assert_eq!(c.provider_id, "people/c100");
    // The link keeps the CONTACT source's etag (what updates need), not the person's.
    assert_eq!(c.etag.as_deref(), Some("#src-etag"));
    assert_eq!(c.scope, "");
}

#[test]
fn first_name_entry_is_used_when_none_is_primary() {
    let p = person(json!({"resourceName": "people/c1", "names": [
        {"givenName": "Grace", "familyName": "Hopper"},
        {"givenName": "Amazing", "familyName": "Grace"}]}));
    let c = upsert(map_person(&p, Group::All));
    assert_eq!(
        (c.fields.first_name.as_str(), c.fields.last_name.as_str()),
        ("Grace", "Hopper")
    );
}

#[test]
fn display_name_fallback_splits_last_word_as_last_name() {
    let p = person(json!({"resourceName": "people/c2", "names": [
        {"metadata": {"primary": true}, "displayName": "  Jean  Claude Van Damme "}]}));
    let c = upsert(map_person(&p, Group::All));
    assert_eq!(c.fields.first_name, "Jean Claude Van");
    assert_eq!(c.fields.last_name, "Damme");

    let p = person(json!({"resourceName": "people/c3", "names": [
        {"displayName": "Cher", "givenName": "", "familyName": " "}]}));
    let c = upsert(map_person(&p, Group::All));
    assert_eq!(
        (c.fields.first_name.as_str(), c.fields.last_name.as_str()),
        ("Cher", "")
    );

    let p = person(json!({"resourceName": "people/c4"}));
    let c = upsert(map_person(&p, Group::All));
    assert_eq!(
        (c.fields.first_name.as_str(), c.fields.last_name.as_str()),
        ("", "")
    );
}

#[test]
fn given_name_alone_does_not_use_display_name() {
    let p = person(json!({"resourceName": "people/c5", "names": [
        {"displayName": "Madonna Louise Ciccone", "givenName": "Madonna"}]}));
    let c = upsert(map_person(&p, Group::All));
    assert_eq!(
        (c.fields.first_name.as_str(), c.fields.last_name.as_str()),
        ("Madonna", "")
    );
}

#[test]
fn primary_address_is_used_even_when_not_first() {
    let c = upsert(map_person(&person(ada()), Group::All));
    assert_eq!(
        c.fields.address,
        Some(Address {
            street: Some("12 St James's Sq".into()),
            city: Some("London".into()),
            region: None,
            postal_code: Some("SW1Y 4JH".into()),
            country: Some("GB".into()),
        })
    );
}

#[test]
fn first_address_is_used_without_primary_and_country_beats_country_code() {
    let p = person(json!({"resourceName": "people/c6", "addresses": [
        {"city": "Lyon", "country": "France", "countryCode": "FR", "region": "ARA"},
        {"city": "Paris"}]}));
    let c = upsert(map_person(&p, Group::All));
    let a = c.fields.address.expect("address");
    assert_eq!(a.city.as_deref(), Some("Lyon"));
    assert_eq!(a.country.as_deref(), Some("France"));
    assert_eq!(a.region.as_deref(), Some("ARA"));
}

#[test]
fn empty_address_is_no_address() {
    let p = person(json!({"resourceName": "people/c7", "addresses": [
        {"metadata": {"primary": true}, "type": "home", "formattedValue": ""}]}));
    assert_eq!(upsert(map_person(&p, Group::All)).fields.address, None);
}

#[test]
fn emails_and_phones_keep_order_and_drop_blanks() {
    let c = upsert(map_person(&person(ada()), Group::All));
    assert_eq!(c.fields.emails, vec!["ada@example.org", "ada@work.example"]);
    assert_eq!(c.fields.phones, vec!["+44 20 7946 0018"]);
}

#[test]
fn eleven_emails_are_all_kept_for_the_eligibility_check() {
    let emails: Vec<_> = (0..11)
        .map(|i| json!({"value": format!("p{i}@example.com")}))
        .collect();
    let phones: Vec<_> = (0..12)
        .map(|i| json!({"value": format!("+1555000{i:04}")}))
        .collect();
    let p = person(json!({"resourceName": "people/c8",
        "names": [{"givenName": "Many"}], "emailAddresses": emails, "phoneNumbers": phones}));
    let c = upsert(map_person(&p, Group::All));
    assert_eq!(c.fields.emails.len(), 11);
    assert_eq!(c.fields.emails[10], "p10@example.com");
    assert_eq!(c.fields.phones.len(), 12);
}

#[test]
fn primary_organization_gives_company_and_job_title() {
    let c = upsert(map_person(&person(ada()), Group::All));
    assert_eq!(
        c.fields.organization.as_deref(),
        Some("Analytical Engines Ltd")
    );
    assert_eq!(c.fields.job_title.as_deref(), Some("Programmer"));

    let p = person(json!({"resourceName": "people/c9", "organizations": [
        {"name": "Old Co", "title": "Intern", "current": false},
        {"name": "New Co", "metadata": {"primary": true}}]}));
    let c = upsert(map_person(&p, Group::All));
    assert_eq!(c.fields.organization.as_deref(), Some("New Co"));
    assert_eq!(c.fields.job_title, None);
}

#[test]
fn birthday_with_year_month_and_day_is_kept() {
    let c = upsert(map_person(&person(ada()), Group::All));
    assert_eq!(c.fields.birthday, NaiveDate::from_ymd_opt(1815, 12, 10));
}

#[test]
fn birthday_without_year_is_none() {
    for date in [
        json!({"month": 3, "day": 14}),
        json!({"year": 0, "month": 3, "day": 14}),
        json!({"year": 1990, "month": 3}),
        json!({"year": 1990, "month": 3, "day": 0}),
        json!({"year": 1990}),
        json!({"year": 2023, "month": 2, "day": 30}),
        json!({"year": 2023, "month": 13, "day": 1}),
    ] {
        let p = person(json!({"resourceName": "people/c10",
            "birthdays": [{"date": date, "text": "someday"}]}));
        assert_eq!(
            upsert(map_person(&p, Group::All)).fields.birthday,
            None,
            "{date}"
        );
    }
    let p = person(json!({"resourceName": "people/c10",
        "birthdays": [{"text": "March 14th"}]}));
    assert_eq!(upsert(map_person(&p, Group::All)).fields.birthday, None);
}

#[test]
fn person_breaking_the_schema_is_unreadable_versioned_by_its_source_etag_else_a_hash() {
    let broken = json!({"resourceName": "people/c5", "etag": "%Ep5",
        "metadata": {"sources": [{"type": "CONTACT", "etag": "#s5"}]},
        "names": "Broken Person", "emailAddresses": [{"value": 42}]});
    match decode_person(&broken, Group::All) {
        Change::Unreadable {
            provider_id,
            version,
            error,
        } => {
            assert_eq!(provider_id, "people/c5");
            assert_eq!(version, "#s5");
            assert!(!error.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // No readable name or etag: a stable hash of what was sent stands in for both.
    let nameless = json!({"resourceName": 7, "names": [{"givenName": ["x"]}]});
    let (a, b) = (
        decode_person(&nameless, Group::All),
        decode_person(&nameless, Group::All),
    );
    assert_eq!(a, b);
    assert!(
        matches!(&a, Change::Unreadable { provider_id, version, .. }
            if provider_id.starts_with("unreadable:") && version.starts_with("sha256:")),
        "{a:?}"
    );
    // A deletion is still a deletion, whatever else is wrong with it.
    let gone = json!({"resourceName": "people/c6", "metadata": {"deleted": true}, "names": 1});
    assert_eq!(
        decode_person(&gone, Group::All),
        Change::Deleted {
            provider_id: "people/c6".into()
        }
    );
    assert!(matches!(
        decode_person(&ada(), Group::All),
        Change::Upsert(_)
    ));
}

#[test]
fn previous_resource_names_become_renames_and_their_deletions_are_dropped() {
    let mut p = ada();
    p["metadata"]["previousResourceNames"] = json!(["people/c1", "people/c100"]);
    let change = decode_person(&p, Group::All);
    let mut changes = vec![Change::Deleted {
        provider_id: "people/c1".into(),
    }];
    changes.extend(renames(&p, &change));
    changes.push(change.clone());
    changes.push(Change::Deleted {
        provider_id: "people/c2".into(),
    });
    drop_renamed_deletions(&mut changes);
    assert_eq!(
        changes,
        vec![
            Change::Renamed {
                from: "people/c1".into(),
                to: "people/c100".into()
            },
            change,
            Change::Deleted {
                provider_id: "people/c2".into()
            },
        ]
    );
}

#[test]
fn deleted_person_is_a_deletion() {
    let p = person(json!({"resourceName": "people/c11", "etag": "%Eh",
        "metadata": {"sources": [{"type": "CONTACT", "id": "11"}], "deleted": true}}));
    for g in [Group::All, Group::Starred] {
        assert_eq!(
            map_person(&p, g),
            Change::Deleted {
                provider_id: "people/c11".into()
            }
        );
    }
}

#[test]
fn group_starred_keeps_starred_and_marks_others_left() {
    let not_starred = person(ada());
    assert_eq!(
        map_person(&not_starred, Group::Starred),
        Change::Left {
            provider_id: "people/c100".into()
        }
    );
    assert!(matches!(
        map_person(&not_starred, Group::All),
        Change::Upsert(_)
    ));

    let mut v = ada();
    v["memberships"].as_array_mut().unwrap().push(json!({
        "metadata": {"source": {"type": "CONTACT", "id": "100"}},
        "contactGroupMembership": {"contactGroupId": "starred",
                                   "contactGroupResourceName": "contactGroups/starred"}}));
    let starred = person(v);
    let c = upsert(map_person(&starred, Group::Starred));
    assert_eq!(c.fields.first_name, "Ada");
}

#[test]
fn default_photo_is_ignored() {
    let c = upsert(map_person(&person(ada()), Group::All));
    assert_eq!(
        c.photo_url.as_deref(),
        Some("https://lh3.googleusercontent.com/contacts/real")
    );
    let p = person(json!({"resourceName": "people/c12", "photos": [
        {"url": "https://lh3.googleusercontent.com/cm/x", "default": true}]}));
    assert_eq!(upsert(map_person(&p, Group::All)).photo_url, None);
}

#[test]
fn cursor_round_trips_and_rejects_garbage() {
    let c = Cursor {
        v: 1,
        sync_token: "tok".into(),
        full_sync_at: Utc::now(),
    };
    assert_eq!(Cursor::decode(&c.encode()), Some(c.clone()));
    assert_eq!(Cursor::decode(b"\x00\x01garbage"), None);
    assert_eq!(
        Cursor::decode(br#"{"v":99,"sync_token":"t","full_sync_at":"2026-01-01T00:00:00Z"}"#),
        None
    );
}

// -----------------------------------------------------------------------------------
// A loopback HTTP server speaking just enough HTTP/1.1 to script answers, including
// bodies cut off mid-way.
// -----------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn q(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }
    fn bearer(&self) -> Option<&str> {
        self.header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
    }
    /// The query without the paging parameter, sorted: what must not change in a chain.
    fn fixed_query(&self) -> Vec<(String, String)> {
        let mut q: Vec<_> = self
            .query
            .iter()
            .filter(|(k, _)| k != "pageToken")
            .cloned()
            .collect();
        q.sort();
        q
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then close (Content-Length stays the full size).
    cut: Option<usize>,
}

impl Resp {
    fn json(status: u16, v: serde_json::Value) -> Resp {
        Resp {
            status,
            headers: vec![(
                "Content-Type".into(),
                "application/json; charset=UTF-8".into(),
            )],
            body: serde_json::to_vec(&v).unwrap(),
            cut: None,
        }
    }
    fn raw(status: u16, body: &[u8]) -> Resp {
        Resp {
            status,
            headers: vec![],
            body: body.to_vec(),
            cut: None,
        }
    }
    fn header(mut self, k: &str, v: &str) -> Resp {
        self.headers.push((k.into(), v.into()));
        self
    }
}

type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

struct TestServer {
    base: String,
    log: Arc<Mutex<Vec<Req>>>,
    token_calls: Arc<AtomicUsize>,
}

impl TestServer {
    /// API requests (the token endpoint excluded).
    fn api_requests(&self) -> Vec<Req> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path != "/token")
            .cloned()
            .collect()
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Req> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
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
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, qs) = target.split_once('?').unwrap_or((&target, ""));
    let query = url::form_urlencoded::parse(qs.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    Some(Req {
        method,
        path: path.to_string(),
        query,
        headers,
        body,
    })
}

/// Serves `api` on a loopback port, plus `/token`: access tokens `t1`, `t2`, ... or,
/// when `revoked`, `invalid_grant`.
async fn serve(revoked: bool, api: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log: Arc<Mutex<Vec<Req>>> = Arc::default();
    let token_calls = Arc::new(AtomicUsize::new(0));
    let api: Handler = Arc::new(api);
    let (log2, calls2) = (log.clone(), token_calls.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (log, calls, api) = (log2.clone(), calls2.clone(), api.clone());
            tokio::spawn(async move {
                let Some(req) = read_request(&mut sock).await else {
                    return;
                };
                log.lock().unwrap().push(req.clone());
                let resp = if req.path == "/token" {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    if revoked {
                        Resp::json(
                            400,
                            json!({"error": "invalid_grant",
                                   "error_description": "Token has been expired or revoked."}),
                        )
                    } else {
                        Resp::json(
                            200,
                            json!({"access_token": format!("t{n}"), "token_type": "Bearer",
                                   "expires_in": 3600}),
                        )
                    }
                } else {
                    api(&req)
                };
                let mut head = format!(
                    "HTTP/1.1 {} Scripted\r\nContent-Length: {}\r\nConnection: close\r\n",
                    resp.status,
                    resp.body.len()
                );
                for (k, v) in &resp.headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let _ = sock.write_all(head.as_bytes()).await;
                let end = resp.cut.unwrap_or(resp.body.len()).min(resp.body.len());
                let _ = sock.write_all(&resp.body[..end]).await;
                let _ = sock.flush().await;
                let _ = sock.shutdown().await;
            });
        }
    });
    TestServer {
        base,
        log,
        token_calls,
    }
}

fn client_for(srv: &TestServer, group: Group) -> GoogleClient {
    let tokens = Arc::new(TokenSource::new(
        OAuthClient {
            client_id: "test-client".into(),
            client_secret: Some(SecretString::from("shh")),
            token_url: format!("{}/token", srv.base),
            scopes: vec!["https://www.googleapis.com/auth/contacts".into()],
        },
        SecretString::from("refresh-1"),
        Arc::new(|_| Ok(())),
    ));
    GoogleClient::new(srv.base.clone(), group, tokens, RetryPolicy::fast())
}

fn recording_progress() -> (ProgressFn, Arc<Mutex<Vec<Progress>>>) {
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let s = seen.clone();
    (Box::new(move |p| s.lock().unwrap().push(p)), seen)
}

fn no_progress() -> ProgressFn {
    Box::new(|_| {})
}

fn contact(id: u32, starred: bool) -> serde_json::Value {
    let mut groups = vec![json!({"contactGroupMembership": {
        "contactGroupId": "myContacts", "contactGroupResourceName": "contactGroups/myContacts"}})];
    if starred {
        groups.push(json!({"contactGroupMembership": {
            "contactGroupId": "starred", "contactGroupResourceName": "contactGroups/starred"}}));
    }
    json!({
        "resourceName": format!("people/c{id}"),
        "etag": format!("%E{id}"),
        "metadata": {"sources": [{"type": "CONTACT", "id": format!("{id}"), "etag": format!("#{id}")}],
                     "objectType": "PERSON"},
        "names": [{"metadata": {"primary": true}, "givenName": format!("Given{id}"),
                   "familyName": "Family", "displayName": format!("Given{id} Family")}],
        "emailAddresses": [{"value": format!("c{id}@example.com")}],
        "memberships": groups
    })
}

/// Full listing: page 1 (c1, c2) and page 2 (c3, the sync token). Incremental with
/// `sync-1`: c2 changed, c3 deleted, token `sync-2`.
fn two_page_book(req: &Req) -> Resp {
    assert_eq!(req.path, "/v1/people/me/connections");
    match (req.q("syncToken"), req.q("pageToken")) {
        (None, None) => Resp::json(
            200,
            json!({"connections": [contact(1, true), contact(2, false)],
                   "nextPageToken": "page-2", "totalPeople": 3, "totalItems": 3}),
        ),
        (None, Some("page-2")) => Resp::json(
            200,
            json!({"connections": [contact(3, true)], "nextSyncToken": "sync-1",
                   "totalPeople": 3, "totalItems": 3}),
        ),
        (Some("sync-1"), None) => Resp::json(
            200,
            json!({"connections": [contact(2, false),
                {"resourceName": "people/c3", "etag": "%E3x",
                 "metadata": {"sources": [{"type": "CONTACT", "id": "3"}], "deleted": true}}],
                "nextSyncToken": "sync-2", "totalItems": 2}),
        ),
        other => Resp::json(
            400,
            json!({"error": {"code": 400,
            "message": format!("unexpected {other:?}"), "status": "INVALID_ARGUMENT"}}),
        ),
    }
}

fn ids(r: &Round) -> Vec<String> {
    r.changes
        .iter()
        .map(|c| c.provider_id().to_string())
        .collect()
}

fn expired_sync_token() -> Resp {
    Resp::json(
        400,
        json!({"error": {
            "code": 400,
            "message": "Sync token is expired. Clear local cache and retry call without the sync token.",
            "status": "FAILED_PRECONDITION",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                         "reason": "EXPIRED_SYNC_TOKEN",
                         "domain": "people.googleapis.com"}]}}),
    )
}

#[tokio::test]
async fn full_listing_pages_through_to_the_sync_token_with_identical_parameters() {
    let srv = serve(false, two_page_book).await;
    let gc = client_for(&srv, Group::All);
    let (progress, seen) = recording_progress();
    let r = gc.fetch_round(None, &progress).await.expect("round");
    assert!(r.full);
    assert_eq!(r.complete_scopes, vec![String::new()]);
    assert_eq!(r.pages, 2);
    assert_eq!(ids(&r), vec!["people/c1", "people/c2", "people/c3"]);
    assert!(r.changes.iter().all(|c| matches!(c, Change::Upsert(_))));
    let cur = Cursor::decode(&r.cursor).expect("our cursor");
    assert_eq!(cur.sync_token, "sync-1");
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

    let reqs = srv.api_requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.method == "GET"));
    assert_eq!(reqs[0].q("personFields"), Some(PERSON_FIELDS));
    assert_eq!(reqs[0].q("pageSize"), Some("1000"));
    assert_eq!(reqs[0].q("requestSyncToken"), Some("true"));
    assert_eq!(reqs[0].q("syncToken"), None);
    assert_eq!(reqs[1].q("pageToken"), Some("page-2"));
    assert_eq!(reqs[0].fixed_query(), reqs[1].fixed_query());
    assert_eq!(reqs[0].bearer(), Some("t1"));
}

#[tokio::test]
async fn incremental_round_sends_the_sync_token_and_reports_deletions() {
    let srv = serve(false, two_page_book).await;
    let gc = client_for(&srv, Group::All);
    let first = gc.fetch_round(None, &no_progress()).await.expect("full");
    let r = gc
        .fetch_round(Some(&first.cursor), &no_progress())
        .await
        .expect("incremental");
    assert!(!r.full);
    assert!(r.complete_scopes.is_empty());
    assert_eq!(r.pages, 1);
    assert!(matches!(&r.changes[0], Change::Upsert(c) if c.provider_id == "people/c2"));
    assert_eq!(
        r.changes[1],
        Change::Deleted {
            provider_id: "people/c3".into()
        }
    );
    let cur = Cursor::decode(&r.cursor).unwrap();
    assert_eq!(cur.sync_token, "sync-2");
    // The chain keeps the time of the full listing that began it.
    assert_eq!(
        cur.full_sync_at,
        Cursor::decode(&first.cursor).unwrap().full_sync_at
    );
    let reqs = srv.api_requests();
    assert_eq!(reqs[2].q("syncToken"), Some("sync-1"));
    // Every other parameter is the one of the full listing.
    let without_sync = |r: &Req| {
        r.fixed_query()
            .into_iter()
            .filter(|(k, _)| k != "syncToken")
            .collect::<Vec<_>>()
    };
    assert_eq!(without_sync(&reqs[2]), without_sync(&reqs[0]));
}

#[tokio::test]
async fn group_starred_lists_everyone_and_marks_unstarred_as_left() {
    let srv = serve(false, two_page_book).await;
    let gc = client_for(&srv, Group::Starred);
    let r = gc.fetch_round(None, &no_progress()).await.unwrap();
    assert!(matches!(&r.changes[0], Change::Upsert(c) if c.provider_id == "people/c1"));
    assert_eq!(
        r.changes[1],
        Change::Left {
            provider_id: "people/c2".into()
        }
    );
    assert!(matches!(&r.changes[2], Change::Upsert(c) if c.provider_id == "people/c3"));
}

#[tokio::test]
async fn expired_sync_token_restarts_the_round_as_a_full_listing() {
    let srv = serve(false, |req: &Req| match req.q("syncToken") {
        Some("old") => expired_sync_token(),
        _ => two_page_book(req),
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let stale = Cursor {
        v: 1,
        sync_token: "old".into(),
        full_sync_at: Utc::now(),
    }
    .encode();
    let (progress, seen) = recording_progress();
    let r = gc
        .fetch_round(Some(&stale), &progress)
        .await
        .expect("resync");
    assert!(r.full);
    assert_eq!(r.complete_scopes, vec![String::new()]);
    assert_eq!(ids(&r), vec!["people/c1", "people/c2", "people/c3"]);
    assert_eq!(Cursor::decode(&r.cursor).unwrap().sync_token, "sync-1");
    assert_eq!(seen.lock().unwrap().last().unwrap().contacts, 3);
    let reqs = srv.api_requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].q("syncToken"), Some("old"));
    assert_eq!(reqs[1].q("syncToken"), None);
}

#[tokio::test]
async fn http_410_on_a_sync_token_is_treated_as_expired() {
    let srv = serve(false, |req: &Req| match req.q("syncToken") {
        Some("old") => Resp::json(
            410,
            json!({"error": {"code": 410, "message": "Gone",
                                                        "status": "NOT_FOUND"}}),
        ),
        _ => two_page_book(req),
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let stale = Cursor {
        v: 1,
        sync_token: "old".into(),
        full_sync_at: Utc::now(),
    }
    .encode();
    let r = gc
        .fetch_round(Some(&stale), &no_progress())
        .await
        .expect("resync");
    assert!(r.full);
    assert_eq!(r.changes.len(), 3);
}

#[tokio::test]
async fn other_400_is_permanent_not_a_resync() {
    let srv = serve(false, |_: &Req| {
        Resp::json(
            400,
            json!({"error": {"code": 400, "message": "Invalid personFields mask path",
                                         "status": "INVALID_ARGUMENT"}}),
        )
    })
    .await;
    let gc = client_for(&srv, Group::All);
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
    assert_eq!(srv.api_requests().len(), 1);
}

#[tokio::test]
async fn chain_older_than_six_days_is_refreshed_with_a_full_listing() {
    let srv = serve(false, two_page_book).await;
    let gc = client_for(&srv, Group::All);
    let old = Cursor {
        v: 1,
        sync_token: "sync-1".into(),
        full_sync_at: Utc::now() - chrono::Duration::hours(6 * 24 + 1),
    }
    .encode();
    let r = gc.fetch_round(Some(&old), &no_progress()).await.unwrap();
    assert!(r.full);
    assert!(srv
        .api_requests()
        .iter()
        .all(|r| r.q("syncToken").is_none()));
    let fresh = Cursor::decode(&r.cursor).unwrap();
    assert!(Utc::now() - fresh.full_sync_at < chrono::Duration::minutes(1));

    // Five days old is still used incrementally.
    let young = Cursor {
        v: 1,
        sync_token: "sync-1".into(),
        full_sync_at: Utc::now() - chrono::Duration::days(5),
    }
    .encode();
    let r = gc.fetch_round(Some(&young), &no_progress()).await.unwrap();
    assert!(!r.full);
}

#[tokio::test]
async fn undecodable_cursor_does_a_full_listing() {
    let srv = serve(false, two_page_book).await;
    let gc = client_for(&srv, Group::All);
    let r = gc
        .fetch_round(Some(b"\x01\x02not-a-cursor"), &no_progress())
        .await
        .unwrap();
    assert!(r.full);
    assert_eq!(r.complete_scopes, vec![String::new()]);
    assert_eq!(r.changes.len(), 3);
}

#[tokio::test]
async fn throttled_429_honours_retry_after_then_succeeds() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let srv = serve(false, move |req: &Req| {
        if n2.fetch_add(1, Ordering::SeqCst) == 0 {
            Resp::json(
                429,
                json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                "message": "Quota exceeded for quota metric 'Read requests'"}}),
            )
            .header("Retry-After", "0")
        } else {
            two_page_book(req)
        }
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let r = gc
        .fetch_round(None, &no_progress())
        .await
        .expect("after 429");
    assert_eq!(r.changes.len(), 3);
    let reqs = srv.api_requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].fixed_query(), reqs[1].fixed_query());
    assert_eq!(reqs[1].q("pageToken"), None);
}

#[tokio::test]
async fn endless_429_ends_as_throttled_and_long_retry_after_is_not_waited() {
    let srv = serve(false, |_: &Req| {
        Resp::json(
            429,
            json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}),
        )
        .header("Retry-After", "0")
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Throttled {
            retry_after: Some(Duration::ZERO)
        }
    );
    assert_eq!(
        srv.api_requests().len(),
        RetryPolicy::fast().max_attempts as usize
    );

    let srv = serve(false, |_: &Req| {
        Resp::json(429, json!({})).header("Retry-After", "3600")
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Throttled {
            retry_after: Some(Duration::from_secs(3600))
        }
    );
    assert_eq!(srv.api_requests().len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let srv = serve(false, move |req: &Req| {
        match n2.fetch_add(1, Ordering::SeqCst) {
            0 => Resp::raw(500, b"oops"),
            1 => Resp::json(
                503,
                json!({"error": {"code": 503, "status": "UNAVAILABLE"}}),
            ),
            _ => two_page_book(req),
        }
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let r = gc
        .fetch_round(None, &no_progress())
        .await
        .expect("after 5xx");
    assert_eq!(r.changes.len(), 3);
}

#[tokio::test]
async fn truncated_or_malformed_page_is_refetched_not_read_as_deletions() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let srv = serve(false, move |req: &Req| {
        let page2 = req.q("pageToken").is_some();
        if page2 {
            match n2.fetch_add(1, Ordering::SeqCst) {
                // Cut off by the connection: fewer bytes than Content-Length.
                0 => {
                    let mut r = two_page_book(req);
                    r.cut = Some(r.body.len() / 2);
                    r
                }
                // Complete HTTP, but the JSON stops half-way.
                1 => {
                    let full = two_page_book(req).body;
                    Resp::raw(200, &full[..full.len() / 2])
                }
                // Not JSON at all.
                2 => Resp::raw(200, b"<html>Bad gateway</html>"),
                _ => two_page_book(req),
            }
        } else {
            two_page_book(req)
        }
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let r = gc.fetch_round(None, &no_progress()).await.expect("round");
    assert_eq!(ids(&r), vec!["people/c1", "people/c2", "people/c3"]);
    assert_eq!(r.pages, 2);
    let reqs = srv.api_requests();
    assert_eq!(reqs.len(), 5);
    assert!(reqs[1..].iter().all(|r| r.q("pageToken") == Some("page-2")));
}

#[tokio::test]
async fn oversized_page_is_a_failed_fetch_and_is_not_read() {
    let srv = serve(false, |_req: &Req| {
        // Content-Length announces one byte over the cap; only a few bytes follow.
        let mut r = Resp::raw(200, &vec![b' '; MAX_PAGE_BYTES + 1]);
        r.cut = Some(16);
        r
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Transient(m) if m.contains("larger than 64 MiB")),
        "{err:?}"
    );
    // The same request would get the same answer: it is not retried inside the round.
    assert_eq!(srv.api_requests().len(), 1);
}

#[test]
fn over_long_values_count_as_absent_and_the_limit_itself_is_kept() {
    let long = "x".repeat(MAX_FIELD_BYTES + 1);
    let at_limit = format!("{}@example.org", "a".repeat(MAX_FIELD_BYTES - 12));
    assert_eq!(at_limit.len(), MAX_FIELD_BYTES);
    let p = person(json!({
        "resourceName": "people/c9",
        "names": [{"givenName": long, "familyName": "Lovelace"}],
        "emailAddresses": [{"value": format!("{long}@example.org")}, {"value": at_limit}],
        "phoneNumbers": [{"value": long}],
        "organizations": [{"name": long, "title": "Countess"}],
    }));
    let c = upsert(map_person(&p, Group::All));
    assert_eq!(c.fields.first_name, "");
    assert_eq!(c.fields.last_name, "Lovelace");
    assert_eq!(c.fields.emails, vec![at_limit]);
    assert!(c.fields.phones.is_empty());
    assert_eq!(c.fields.organization, None);
    assert_eq!(c.fields.job_title.as_deref(), Some("Countess"));
}

#[tokio::test]
async fn persistently_truncated_page_is_a_transient_error() {
    let srv = serve(false, |req: &Req| {
        let mut r = two_page_book(req);
        if req.q("pageToken").is_some() {
            r.cut = Some(10);
        }
        r
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn last_page_without_sync_token_is_not_trusted() {
    let srv = serve(false, |_: &Req| Resp::json(200, json!({}))).await;
    let gc = client_for(&srv, Group::All);
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn empty_address_book_is_a_complete_empty_listing() {
    let srv = serve(false, |_: &Req| {
        Resp::json(200, json!({"nextSyncToken": "empty-1", "totalItems": 0}))
    })
    .await;
    let gc = client_for(&srv, Group::All);
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
async fn unauthorized_401_refreshes_the_token_once_and_retries() {
    let srv = serve(false, |req: &Req| match req.bearer() {
        Some("t1") => Resp::json(
            401,
            json!({"error": {"code": 401,
            "message": "Request had invalid authentication credentials.",
            "status": "UNAUTHENTICATED"}}),
        ),
        Some("t2") => two_page_book(req),
        other => panic!("unexpected bearer {other:?}"),
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let r = gc
        .fetch_round(None, &no_progress())
        .await
        .expect("after refresh");
    assert_eq!(r.changes.len(), 3);
    assert_eq!(srv.token_calls.load(Ordering::SeqCst), 2);
    let bearers: Vec<_> = srv
        .api_requests()
        .iter()
        .map(|r| r.bearer().unwrap_or("").to_string())
        .collect();
    assert_eq!(bearers, vec!["t1", "t2", "t2"]);
    let token_reqs: Vec<Req> = srv
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "/token")
        .cloned()
        .collect();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&token_reqs[1].body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert!(form.contains(&("grant_type".into(), "refresh_token".into())));
    assert!(form.contains(&("refresh_token".into(), "refresh-1".into())));
}

#[tokio::test]
async fn second_401_after_refresh_is_reauth_required() {
    let srv = serve(false, |_: &Req| {
        Resp::json(
            401,
            json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
        )
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    // The same answer as every provider gives to a refused fresh token.
    assert!(matches!(err, ProviderError::ReauthRequired(_)), "{err:?}");
    assert_eq!(srv.api_requests().len(), 2);
    assert_eq!(srv.token_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn revoked_grant_is_reauth_required() {
    let srv = serve(true, two_page_book).await;
    let gc = client_for(&srv, Group::All);
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::ReauthRequired(_)), "{err:?}");
    assert!(srv.api_requests().is_empty());
}

fn with_photo(url: String) -> ProviderContact {
    ProviderContact {
        provider_id: "people/c1".into(),
        etag: None,
        scope: String::new(),
        fields: Fields::default(),
        photo_url: Some(url),
    }
}

#[tokio::test]
async fn photo_is_fetched_and_missing_or_oversized_photos_are_none() {
    let srv = serve(false, |req: &Req| match req.path.as_str() {
        "/photo/small" => {
            Resp::raw(200, b"\xff\xd8\xff\xe0JFIF").header("Content-Type", "image/jpeg")
        }
        "/photo/big" => Resp::raw(200, &vec![7u8; MAX_PHOTO_BYTES + 1]),
        "/photo/flaky" if req.header("x-never").is_none() => Resp::raw(503, b""),
        _ => Resp::raw(404, b"not found"),
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let got = gc
        .fetch_photo(&with_photo(format!("{}/photo/small", srv.base)))
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"\xff\xd8\xff\xe0JFIF"[..]));
    assert_eq!(
        gc.fetch_photo(&with_photo(format!("{}/photo/big", srv.base)))
            .await,
        Ok(None)
    );
    assert_eq!(
        gc.fetch_photo(&with_photo(format!("{}/photo/gone", srv.base)))
            .await,
        Ok(None)
    );
    let err = gc
        .fetch_photo(&with_photo(format!("{}/photo/flaky", srv.base)))
        .await
        .unwrap_err();
    assert!(err.is_retryable());
    let mut none = with_photo(String::new());
    none.photo_url = None;
    assert_eq!(gc.fetch_photo(&none).await, Ok(None));
}

// ---- two-way writes ----

fn full_fields() -> Fields {
    Fields {
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
        emails: vec!["ada@example.org".into(), "ada@work.example".into()],
        phones: vec!["+44 20 7946 0018".into()],
        address: Some(Address {
            street: Some("12 St James's Sq".into()),
            city: Some("London".into()),
            region: None,
            postal_code: Some("SW1Y 4JH".into()),
            country: Some("United Kingdom".into()),
        }),
        organization: Some("Analytical Engines Ltd".into()),
        job_title: Some("Programmer".into()),
        birthday: NaiveDate::from_ymd_opt(1815, 12, 10),
    }
}

fn body_json(r: &Req) -> serde_json::Value {
    serde_json::from_slice(&r.body).expect("JSON request body")
}

#[test]
fn fields_to_person_round_trips_through_map_person() {
    for starred in [false, true] {
        let f = full_fields();
        let v = fields_to_person(&f, starred);
        let p: PersonJson = serde_json::from_value(
            json!({"resourceName": "people/c1", "etag": "e"})
                .as_object()
                .unwrap()
                .clone()
                .into_iter()
                .chain(v.as_object().unwrap().clone())
                .collect::<serde_json::Map<_, _>>()
                .into(),
        )
        .unwrap();
        assert_eq!(is_starred(&p), starred);
        let group = if starred { Group::Starred } else { Group::All };
        assert_eq!(upsert(map_person(&p, group)).fields, f);
    }
    let empty = fields_to_person(&Fields::default(), false);
    assert_eq!(empty["addresses"], json!([]));
    assert_eq!(empty["organizations"], json!([]));
    assert_eq!(empty["birthdays"], json!([]));
    assert_eq!(
        empty["memberships"],
        json!([{"contactGroupMembership": {"contactGroupResourceName": "contactGroups/myContacts"}}])
    );
}

#[test]
fn update_mask_maps_crm_fields_to_person_fields() {
    use crate::model::field;
    assert_eq!(
        update_mask(&[field::JOB_TITLE, field::NAME, field::COMPANY, field::PHOTO]),
        "names,organizations"
    );
    assert_eq!(
        update_mask(&[
            field::BIRTHDAY,
            field::ADDRESS,
            field::PHONES,
            field::EMAILS
        ]),
        "emailAddresses,phoneNumbers,addresses,birthdays"
    );
    assert_eq!(update_mask(&[field::PHOTO]), "");
}

#[tokio::test]
async fn batch_create_sends_at_most_200_per_call_and_answers_in_input_order() {
    let made = Arc::new(AtomicUsize::new(0));
    let m2 = made.clone();
    let srv = serve(false, move |req: &Req| {
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/v1/people:batchCreateContacts")
        );
        let b = body_json(req);
        assert_eq!(b["readMask"], "metadata");
        let people: Vec<_> = b["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let n = m2.fetch_add(1, Ordering::SeqCst);
                json!({"httpStatusCode": 200, "requestedResourceName": "",
                       "person": {"resourceName": format!("people/n{n}"),
                                  "etag": format!("%Person{n}"),
                                  "metadata": {"sources": [{"type": "CONTACT", "etag": format!("#N{n}")}]},
                                  "names": c["contactPerson"]["names"]}})
            })
            .collect();
        Resp::json(200, json!({"createdPeople": people}))
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let items: Vec<(u64, Fields, bool)> = (0..450u64)
        .map(|i| {
            let mut f = full_fields();
            f.first_name = format!("P{i}");
            (1000 + i, f, i == 7)
        })
        .collect();
    let out = gc.batch_create(&items).await;
    assert_eq!(out.len(), 450);
    for (i, c) in out.iter().enumerate() {
        assert_eq!(c.crm_id, 1000 + i as u64);
        assert_eq!(
            c.result,
            Ok((format!("people/n{i}"), Some(format!("#N{i}")))),
            "the CONTACT source's etag is kept, not the person's"
        );
    }
    let reqs = srv.api_requests();
    let sizes: Vec<usize> = reqs
        .iter()
        .map(|r| body_json(r)["contacts"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![200, 200, 50]);
    let first = body_json(&reqs[0]);
    let starred = &first["contacts"][7]["contactPerson"]["memberships"];
    assert_eq!(starred.as_array().unwrap().len(), 2);
    assert_eq!(
        starred[1]["contactGroupMembership"]["contactGroupResourceName"],
        "contactGroups/starred"
    );
    assert_eq!(
        first["contacts"][8]["contactPerson"]["memberships"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn batch_create_rejected_as_a_whole_is_retried_one_by_one() {
    let srv = serve(false, |req: &Req| {
        let b = body_json(req);
        let contacts = b["contacts"].as_array().unwrap();
        if contacts
            .iter()
            .any(|c| c["contactPerson"]["names"][0]["givenName"] == "Bad")
        {
            return Resp::json(
                400,
                json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                "message": "Invalid contact"}}),
            );
        }
        let people: Vec<_> = contacts
            .iter()
            .map(|c| {
                json!({"person": {"resourceName": format!("people/{}",
                c["contactPerson"]["names"][0]["givenName"].as_str().unwrap())}})
            })
            .collect();
        Resp::json(200, json!({"createdPeople": people}))
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let mk = |id: u64, name: &str| {
        let mut f = full_fields();
        f.first_name = name.into();
        (id, f, false)
    };
    let out = gc
        .batch_create(&[mk(1, "Good"), mk(2, "Bad"), mk(3, "Fine")])
        .await;
    assert_eq!(out[0].result, Ok(("people/Good".into(), None)));
    assert!(
        matches!(&out[1].result, Err(ProviderError::Permanent(m)) if m.contains("INVALID_ARGUMENT"))
    );
    assert_eq!(out[2].result, Ok(("people/Fine".into(), None)));
    assert_eq!(srv.api_requests().len(), 4);
}

#[tokio::test]
async fn batch_create_is_not_resent_after_a_server_error_but_is_after_429() {
    let srv = serve(false, |_: &Req| Resp::raw(500, b"internal")).await;
    let gc = client_for(&srv, Group::All);
    let out = gc.batch_create(&[(1, full_fields(), false)]).await;
    assert!(matches!(out[0].result, Err(ProviderError::Transient(_))));
    assert_eq!(
        srv.api_requests().len(),
        1,
        "a create that may have landed is not resent"
    );

    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let srv = serve(false, move |_: &Req| {
        if n2.fetch_add(1, Ordering::SeqCst) == 0 {
            Resp::json(429, json!({})).header("Retry-After", "0")
        } else {
            Resp::json(
                200,
                json!({"createdPeople": [{"person": {"resourceName": "people/x"}}]}),
            )
        }
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let out = gc.batch_create(&[(1, full_fields(), false)]).await;
    assert_eq!(out[0].result, Ok(("people/x".into(), None)));
}

#[tokio::test]
async fn batch_update_sends_the_contact_source_etag_and_masks_and_reports_stale_etag_as_conflict() {
    use crate::model::field;
    let srv = serve(false, |req: &Req| {
        assert_eq!(req.path, "/v1/people:batchUpdateContacts");
        let b = body_json(req);
        let contacts = b["contacts"].as_object().unwrap();
        let src = |p: &serde_json::Value| {
            p["metadata"]["sources"][0]["etag"]
                .as_str()
                .unwrap()
                .to_string()
        };
        for (id, p) in contacts {
            assert_eq!(p["resourceName"], json!(id));
            assert_eq!(p["metadata"]["sources"][0]["type"], "CONTACT");
            assert!(
                p.get("etag").is_none(),
                "the person etag is a cache tag, not sent"
            );
            assert!(p.get("memberships").is_none());
        }
        if contacts.values().any(|p| src(p).starts_with("stale")) {
            return Resp::json(400, json!({"error": {"code": 400, "status": "FAILED_PRECONDITION",
                "message": "Request person.metadata.sources.etag is different than the current person.metadata.sources.etag. Clear local cache and get the latest person."}}));
        }
        // The answer's person etag differs from its source etag; the source one counts.
        let result: serde_json::Map<String, serde_json::Value> = contacts
            .iter()
            .map(|(id, p)| (id.clone(), json!({"httpStatusCode": 200, "requestedResourceName": id,
                "person": {"resourceName": id, "etag": "%EgPersonTag",
                    "metadata": {"sources": [{"type": "CONTACT", "id": "1", "etag": format!("{}+", src(p))}]}}})))
            .collect();
        Resp::json(200, json!({"updateResult": result}))
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let items = vec![
        (
            "people/c1".to_string(),
            "e1".to_string(),
            full_fields(),
            vec![field::NAME, field::JOB_TITLE],
        ),
        (
            "people/c2".to_string(),
            "stale2".to_string(),
            full_fields(),
            vec![field::COMPANY, field::NAME],
        ),
        (
            "people/c3".to_string(),
            "e3".to_string(),
            full_fields(),
            vec![field::PHOTO],
        ),
        (
            "people/c4".to_string(),
            "e4".to_string(),
            full_fields(),
            vec![field::EMAILS],
        ),
    ];
    let out = gc.batch_update(&items).await;
    let got: Vec<_> = out
        .iter()
        .map(|u| (u.provider_id.as_str(), u.outcome.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "people/c1",
                UpdateOutcome::Updated {
                    etag: Some("e1+".into())
                }
            ),
            ("people/c2", UpdateOutcome::Conflict),
            (
                "people/c3",
                UpdateOutcome::Updated {
                    etag: Some("e3".into())
                }
            ),
            (
                "people/c4",
                UpdateOutcome::Updated {
                    etag: Some("e4+".into())
                }
            ),
        ]
    );
    let reqs = srv.api_requests();
    let masks: Vec<(String, usize)> = reqs
        .iter()
        .map(|r| {
            let b = body_json(r);
            (
                b["updateMask"].as_str().unwrap().to_string(),
                b["contacts"].as_object().unwrap().len(),
            )
        })
        .collect();
    // c1 and c2 share a mask; the batch fails on c2's etag and is retried one by one.
    assert_eq!(
        masks,
        vec![
            ("names,organizations".to_string(), 2),
            ("names,organizations".to_string(), 1),
            ("names,organizations".to_string(), 1),
            ("emailAddresses".to_string(), 1),
        ]
    );
    assert_eq!(body_json(&reqs[1])["readMask"], "metadata");
}

#[tokio::test]
async fn batch_update_per_item_status_maps_to_conflict_and_gone() {
    use crate::model::field;
    let srv = serve(false, |_: &Req| {
        Resp::json(200, json!({"updateResult": {
            "people/c1": {"status": {"code": 9, "message": "etag mismatch"}},
            "people/c2": {"status": {"code": 5, "message": "not found"}},
            "people/c3": {"status": {"code": 3, "message": "bad phone"}},
            "people/c4": {"status": {"code": 0}, "person": {"resourceName": "people/c4", "etag": "%Ep4",
                "metadata": {"sources": [{"type": "CONTACT", "etag": "n4"}]}}}
        }}))
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let items: Vec<_> = (1..=4)
        .map(|i| {
            (
                format!("people/c{i}"),
                format!("e{i}"),
                full_fields(),
                vec![field::PHONES],
            )
        })
        .collect();
    let out = gc.batch_update(&items).await;
    assert_eq!(out[0].outcome, UpdateOutcome::Conflict);
    assert_eq!(out[1].outcome, UpdateOutcome::Gone);
    assert!(matches!(
        out[2].outcome,
        UpdateOutcome::Failed(ProviderError::Permanent(_))
    ));
    assert_eq!(
        out[3].outcome,
        UpdateOutcome::Updated {
            etag: Some("n4".into())
        }
    );
}

#[tokio::test]
async fn batch_delete_sends_at_most_500_per_call_and_gone_counts_as_deleted() {
    let srv = serve(false, |req: &Req| {
        assert_eq!(req.path, "/v1/people:batchDeleteContacts");
        let b = body_json(req);
        let names = b["resourceNames"].as_array().unwrap();
        if names.iter().any(|n| n == "people/missing") {
            return Resp::json(
                404,
                json!({"error": {"code": 404, "status": "NOT_FOUND",
                "message": "Requested entity was not found."}}),
            );
        }
        if names.iter().any(|n| n == "people/locked") {
            return Resp::json(
                400,
                json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                "message": "Not a contact"}}),
            );
        }
        // Google's Empty answer; an empty body is accepted too.
        if names.len() == 1 {
            Resp::raw(200, b"")
        } else {
            Resp::json(200, json!({}))
        }
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let ids: Vec<String> = (0..1200).map(|i| format!("people/c{i}")).collect();
    let out = gc.batch_delete(&ids).await;
    assert_eq!(out.len(), 1200);
    assert!(out.iter().all(|d| d.result.is_ok()));
    let sizes: Vec<usize> = srv
        .api_requests()
        .iter()
        .map(|r| body_json(r)["resourceNames"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![500, 500, 200]);

    let out = gc
        .batch_delete(&[
            "people/a".into(),
            "people/missing".into(),
            "people/locked".into(),
        ])
        .await;
    assert_eq!(out[0].result, Ok(()));
    assert_eq!(out[1].result, Ok(()));
    assert!(matches!(out[2].result, Err(ProviderError::Permanent(_))));
}

#[tokio::test]
async fn repeated_page_token_stops_instead_of_looping() {
    let srv = serve(false, |_: &Req| {
        Resp::json(
            200,
            json!({"connections": [contact(1, false)], "nextPageToken": "same"}),
        )
    })
    .await;
    let gc = client_for(&srv, Group::All);
    let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    assert_eq!(srv.api_requests().len(), 2);
}
