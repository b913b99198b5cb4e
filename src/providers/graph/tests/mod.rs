//! Tests of the Graph client. The pure layers (wire types and mapping) are tested on recorded
//! JSON fixtures in `map.rs`; everything that makes requests runs against the project's Graph
//! simulator (`crate::sim`), in `read.rs`, `http.rs` and `write.rs`.

mod http;
mod map;
mod read;
mod write;

use std::sync::{Arc, Mutex};

use chrono::NaiveDate;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::map::seg;
use super::{GraphClient, GraphContact};
use crate::model::{Address, Change, Fields};
use crate::providers::http::RetryPolicy;
use crate::providers::oauth::{GrantSink, OAuthClient, TokenSource};
use crate::providers::{ProgressFn, Provider as _, ProviderError, Round};
use crate::sim::{LogEntry, Provider as SimProvider, Script, SeedUser, Sim, SimOptions};

/// The mailbox every simulator test uses.
const OLGA: &str = "olga@example.com";

/// A recorded contact row, as Graph's delta sends it for the `$select` we send.
const CONTACT_ROW: &str = include_str!("fixtures/contact_row.json");

fn contact(v: Value) -> GraphContact {
    serde_json::from_value(v).expect("fixture parses")
}

/// The recorded row with another id and name.
fn full_row(id: &str, given: &str, surname: &str) -> Value {
    let mut v: Value = serde_json::from_str(CONTACT_ROW).expect("fixture is JSON");
    v["id"] = json!(id);
    v["@odata.etag"] = json!(format!("W/\"EQAAABYAAAC{id}\""));
    v["changeKey"] = json!(format!("EQAAABYAAAC{id}"));
    v["displayName"] = json!(format!("{given} {surname}"));
    v["givenName"] = json!(given);
    v["surname"] = json!(surname);
    v["emailAddresses"] =
        json!([{"name": given, "address": format!("{}@contoso.com", given.to_lowercase())}]);
    v
}

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

/// A token source for `token_url` holding `refresh`; the refresh tokens it is handed are
/// kept in the returned list.
fn token_source(token_url: String, refresh: &str) -> (Arc<TokenSource>, Arc<Mutex<Vec<String>>>) {
    let stored = Arc::new(Mutex::new(Vec::new()));
    let s2 = stored.clone();
    let sink: GrantSink = Arc::new(move |t: &SecretString| {
        s2.lock().unwrap().push(t.expose_secret().to_string());
        Ok(())
    });
    let ts = TokenSource::new(
        OAuthClient {
            client_id: "client".into(),
            client_secret: None,
            token_url,
            scopes: vec!["offline_access".into(), "Contacts.ReadWrite".into()],
        },
        SecretString::from(refresh.to_string()),
        sink,
    );
    (Arc::new(ts), stored)
}

/// A client that never reaches a server (for tests that make no request).
fn offline_client() -> GraphClient {
    let (ts, _) = token_source("http://127.0.0.1:9/token".into(), "r1");
    GraphClient::new("http://127.0.0.1:9/v1.0".into(), ts, RetryPolicy::fast())
}

/// A mailbox on the simulator: the default folder `root` and one child folder `kids`, with
/// `contacts` spread evenly over them, and a client for it.
struct Mailbox {
    sim: Sim,
    client: GraphClient,
    tokens: Arc<TokenSource>,
    /// Refresh tokens the client was handed (rotation).
    stored: Arc<Mutex<Vec<String>>>,
    /// The refresh token the client started with.
    refresh: String,
    root: String,
    kids: String,
}

/// 600 contacts: 300 per folder, two pages of 200 each.
async fn mailbox() -> Mailbox {
    mailbox_with(600).await
}

async fn mailbox_with(contacts: usize) -> Mailbox {
    let mut u = SeedUser::new(OLGA, contacts, 7);
    u.child_folders = 1;
    let sim = Sim::start(SimOptions {
        outlook_users: vec![u],
        ..SimOptions::default()
    })
    .await
    .expect("sim starts");
    let (_, folders) = sim.control(
        SimProvider::Outlook,
        "GET",
        &format!("/users/{OLGA}/folders"),
        None,
    );
    let root = folders["default"]
        .as_str()
        .expect("default folder")
        .to_string();
    let kids = folders["folders"]
        .as_array()
        .expect("folders")
        .iter()
        .filter_map(|f| f["id"].as_str())
        .find(|id| *id != root)
        .expect("a child folder")
        .to_string();
    // Prefer headers and whole `$batch` parts in the request log.
    sim.set_detailed_log(SimProvider::Outlook, true);
    let refresh = sim
        .refresh_token(SimProvider::Outlook, OLGA)
        .expect("seeded");
    let (client, tokens, stored) = client_for(&sim, &refresh);
    Mailbox {
        sim,
        client,
        tokens,
        stored,
        refresh,
        root,
        kids,
    }
}

fn client_for(
    sim: &Sim,
    refresh: &str,
) -> (GraphClient, Arc<TokenSource>, Arc<Mutex<Vec<String>>>) {
    let (ts, stored) = token_source(sim.graph_token_url("common"), refresh);
    let client = GraphClient::new(sim.graph_api_base(), ts.clone(), RetryPolicy::fast());
    (client, ts, stored)
}

impl Mailbox {
    /// Another client for the same mailbox (fresh pauses and tokens).
    fn new_client(&self) -> GraphClient {
        client_for(&self.sim, &self.refresh).0
    }

    /// `(id, folder id, contact JSON)` of every contact, as the simulator holds them.
    fn contacts(&self) -> Vec<(String, String, Value)> {
        let (_, v) = self.sim.control(
            SimProvider::Outlook,
            "GET",
            &format!("/users/{OLGA}/contacts"),
            None,
        );
        v.as_array()
            .expect("contacts")
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap_or_default().to_string(),
                    c["folderId"].as_str().unwrap_or_default().to_string(),
                    c["contact"].clone(),
                )
            })
            .collect()
    }

    /// Sorted `(id, folder)` of every contact.
    fn all_ids(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .contacts()
            .into_iter()
            .map(|(i, f, _)| (i, f))
            .collect();
        v.sort();
        v
    }

    fn ids_in(&self, folder: &str) -> Vec<String> {
        self.contacts()
            .into_iter()
            .filter(|(_, f, _)| f == folder)
            .map(|(i, _, _)| i)
            .collect()
    }

    fn control(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.sim.control(
            SimProvider::Outlook,
            method,
            &format!("/users/{OLGA}{path}"),
            body,
        )
    }

    fn script(&self, script: Script) {
        self.sim.script(SimProvider::Outlook, script);
    }

    /// Requests the simulator logged whose path passes `keep`.
    fn requests_where(&self, keep: impl Fn(&str) -> bool) -> Vec<LogEntry> {
        let mut log = self.sim.requests(SimProvider::Outlook);
        log.retain(|e| keep(&e.path));
        log
    }

    /// Requests to the Graph API (the token endpoint left out).
    fn graph_requests(&self) -> Vec<LogEntry> {
        self.requests_where(|p| p.starts_with("/v1.0/"))
    }

    fn token_requests(&self) -> Vec<LogEntry> {
        self.requests_where(|p| p.ends_with("/token"))
    }

    /// A round from `cursor` that succeeds.
    async fn round(&self, cursor: Option<&[u8]>) -> Round {
        let r = self.client.fetch_round(cursor, &no_progress()).await;
        r.expect("the round succeeds")
    }

    /// A round from `cursor` that fails: its error.
    async fn failed_round(&self, cursor: Option<&[u8]>) -> ProviderError {
        let r = self.client.fetch_round(cursor, &no_progress()).await;
        r.expect_err("the round fails")
    }

    /// Every request carried `Prefer` with the page size and immutable ids, and a bearer
    /// token the simulator accepted for the mailbox.
    fn assert_prefer_on_every_request(&self) {
        let reqs = self.graph_requests();
        assert!(!reqs.is_empty());
        for r in &reqs {
            let prefer = r.prefer.as_deref().unwrap_or_default();
            assert!(
                prefer.contains("odata.maxpagesize=200")
                    && prefer.contains("IdType=\"ImmutableId\""),
                "Prefer missing on {} {}?{}",
                r.method,
                r.path,
                r.query
            );
            assert_eq!(r.user.as_deref(), Some(OLGA), "{}", r.path);
        }
    }
}

/// Graph's error answer (`{"error": {"code", "message"}}`) with `status` for requests whose
/// path contains `path`.
fn graph_error(path: &str, status: u16, code: &str, message: &str) -> Script {
    Script::on(path).json(status, json!({"error": {"code": code, "message": message}}))
}

/// The part of a simulator id that reads the same in a path whether or not the client
/// percent-encoded it (ids end in `=`).
fn bare(id: &str) -> &str {
    id.trim_end_matches('=')
}

/// An id as the client puts it in a path.
fn enc(id: &str) -> String {
    seg(id)
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
