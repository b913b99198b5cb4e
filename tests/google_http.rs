//! The Google People API client's HTTP behaviour, against the Google simulator: paging and
//! sync tokens, expired and old cursors, retries of throttled, failing, cut-off and
//! malformed answers, token refresh, photos and the two-way batch writes. Where the
//! simulator's own behaviour cannot produce a case (a 429 at a set moment, a body cut
//! after some bytes, Google's per-item statuses), a scripted answer
//! ([`contact_sync::sim::Script`]) stands in for it.

mod google_http {
    pub mod auth;
    pub mod listing;
    pub mod retries;
    pub mod writes;
}

use std::sync::{Arc, Mutex};

use contact_sync::config::Group;
use contact_sync::model::{Change, Progress};
use contact_sync::providers::google::GoogleClient;
use contact_sync::providers::http::RetryPolicy;
use contact_sync::providers::oauth::{OAuthClient, TokenSource};
use contact_sync::providers::{ProgressFn, Round};
use contact_sync::sim::{LogEntry, Provider, SeedUser, Sim, SimOptions};
use secrecy::SecretString;
use serde_json::{json, Value};

pub const ALICE: &str = "alice@example.com";

/// A simulator with Alice's empty address book, pages capped at two people and the
/// detailed request log on.
pub async fn empty_book() -> Sim {
    let sim = Sim::start(SimOptions {
        google_users: vec![SeedUser::new(ALICE, 0, 7)],
        ..SimOptions::default()
    })
    .await
    .expect("sim starts");
    sim.set_page_cap(Provider::Google, Some(2));
    sim.set_detailed_log(Provider::Google, true);
    sim
}

/// Adds a contact through the control API (as if Alice typed it in); its resource name.
pub fn add_contact(sim: &Sim, given: &str, starred: bool) -> String {
    let (status, body) = sim.control(
        Provider::Google,
        "POST",
        &format!("/_sim/users/{ALICE}/contacts"),
        Some(json!({
            "names": [{"givenName": given, "familyName": "Family"}],
            "emailAddresses": [{"value": format!("{}@example.com", given.to_lowercase())}],
            "starred": starred,
        })),
    );
    assert_eq!(status, 201, "{body}");
    format!("people/{}", body["id"].as_str().expect("id"))
}

/// Three contacts, the first and the third starred: a full listing is two pages.
pub async fn three_page_book() -> (Sim, Vec<String>) {
    let sim = empty_book().await;
    let ids = vec![
        add_contact(&sim, "Given1", true),
        add_contact(&sim, "Given2", false),
        add_contact(&sim, "Given3", true),
    ];
    (sim, ids)
}

pub fn refresh_token(sim: &Sim) -> String {
    sim.refresh_token(Provider::Google, ALICE)
        .expect("seeded refresh token")
}

pub fn client(sim: &Sim, group: Group) -> GoogleClient {
    let tokens = Arc::new(TokenSource::new(
        OAuthClient {
            client_id: "test-client".into(),
            client_secret: Some(SecretString::from("shh")),
            token_url: format!("{}/token", sim.google_base),
            scopes: vec!["https://www.googleapis.com/auth/contacts".into()],
        },
        SecretString::from(refresh_token(sim)),
        Arc::new(|_| Ok(())),
    ));
    GoogleClient::new(sim.google_base.clone(), group, tokens, RetryPolicy::fast())
}

/// API requests served (the token endpoint excluded).
pub fn api_requests(sim: &Sim) -> Vec<LogEntry> {
    sim.requests(Provider::Google)
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/") || r.path.starts_with("/photos/"))
        .collect()
}

/// Requests to the token endpoint.
pub fn token_requests(sim: &Sim) -> Vec<LogEntry> {
    sim.requests(Provider::Google)
        .into_iter()
        .filter(|r| r.path == "/token")
        .collect()
}

pub fn q(r: &LogEntry, k: &str) -> Option<String> {
    url::form_urlencoded::parse(r.query.as_bytes())
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.into_owned())
}

/// The query without the paging parameter, sorted: what must not change in a chain.
pub fn fixed_query(r: &LogEntry) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = url::form_urlencoded::parse(r.query.as_bytes())
        .filter(|(k, _)| k != "pageToken")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    v.sort();
    v
}

pub fn body_json(r: &LogEntry) -> Value {
    serde_json::from_str(r.body.as_deref().expect("detailed log")).expect("JSON request body")
}

pub fn recording_progress() -> (ProgressFn, Arc<Mutex<Vec<Progress>>>) {
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let s = seen.clone();
    (Box::new(move |p| s.lock().unwrap().push(p)), seen)
}

pub fn no_progress() -> ProgressFn {
    Box::new(|_| {})
}

pub fn ids(r: &Round) -> Vec<String> {
    r.changes
        .iter()
        .map(|c| c.provider_id().to_string())
        .collect()
}

pub fn is_upsert_of(c: &Change, id: &str) -> bool {
    matches!(c, Change::Upsert(p) if p.provider_id == id)
}

/// A person as `people.connections.list` shows it, for scripted pages.
pub fn person(id: u32) -> Value {
    json!({
        "resourceName": format!("people/c{id}"),
        "etag": format!("%E{id}"),
        "metadata": {"sources": [{"type": "CONTACT", "id": format!("{id}"), "etag": format!("#{id}")}]},
        "names": [{"metadata": {"primary": true}, "givenName": format!("Given{id}"), "familyName": "Family"}]
    })
}

/// Google's error JSON.
pub fn google_error(code: u16, status: &str, message: &str) -> Value {
    json!({"error": {"code": code, "status": status, "message": message}})
}
