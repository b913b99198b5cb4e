//! State and plumbing shared by both simulated providers: the request/response types the
//! handlers work on, OAuth grant bookkeeping, fault injection, the concurrency quota, the
//! request log and the provider-independent part of the control API.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::google::GUser;
use super::graph::MUser;
use super::script::{Cut, Script, Scripts};
use super::{Provider, SeedUser};

pub(crate) type SharedRef = Arc<Shared>;

/// A parsed HTTP request, as the provider handlers see it. `$batch` builds these too.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub method: String,
    /// Percent-decoded path segments (empty segments dropped).
    pub segs: Vec<String>,
    pub path: String,
    pub raw_query: String,
    pub query: Vec<(String, String)>,
    /// Lower-case header names.
    pub headers: HashMap<String, String>,
    pub body: web::Bytes,
}

impl Req {
    pub fn new(
        method: &str,
        path_and_query: &str,
        headers: HashMap<String, String>,
        body: web::Bytes,
    ) -> Req {
        let (path, raw_query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (path_and_query.to_string(), String::new()),
        };
        let segs = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect();
        let query = url::form_urlencoded::parse(raw_query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Req {
            method: method.to_ascii_uppercase(),
            segs,
            path,
            raw_query,
            query,
            headers,
            body,
        }
    }

    fn from_http(req: &HttpRequest, body: web::Bytes) -> Req {
        let headers = req
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_ascii_lowercase(), v.to_string()))
            })
            .collect();
        let pq = match req.uri().query() {
            Some(q) => format!("{}?{}", req.path(), q),
            None => req.path().to_string(),
        };
        Req::new(req.method().as_str(), &pq, headers, body)
    }

    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn bearer(&self) -> Option<&str> {
        let h = self.header("authorization")?;
        let (scheme, tok) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| tok.trim())
    }

    pub fn json(&self) -> Result<Value, String> {
        if self.body.is_empty() {
            return Err("empty body".into());
        }
        serde_json::from_slice(&self.body).map_err(|e| e.to_string())
    }

    /// Form fields of an `application/x-www-form-urlencoded` body, then the query string.
    pub fn form(&self) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = self.query.iter().cloned().collect();
        for (k, v) in url::form_urlencoded::parse(&self.body) {
            m.insert(k.into_owned(), v.into_owned());
        }
        m
    }
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as it is.
pub(crate) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A response produced by a handler.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_type: String,
    pub body: web::Bytes,
}

impl Resp {
    pub fn json(status: u16, v: &Value) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            content_type: "application/json; charset=utf-8".into(),
            body: web::Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
        }
    }

    pub fn empty(status: u16) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            content_type: String::new(),
            body: web::Bytes::new(),
        }
    }

    pub fn text(status: u16, body: &str) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8".into(),
            body: web::Bytes::from(body.to_string()),
        }
    }

    pub fn bytes(status: u16, content_type: &str, body: &'static [u8]) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            content_type: content_type.into(),
            body: web::Bytes::from_static(body),
        }
    }

    pub fn redirect(location: &str) -> Resp {
        Resp::empty(302).with_header("Location", location)
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Resp {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn into_http(self, cut: Option<BodyCut>) -> HttpResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut b = HttpResponse::build(status);
        for (k, v) in &self.headers {
            b.append_header((k.as_str(), v.as_str()));
        }
        if !self.content_type.is_empty() {
            b.content_type(self.content_type.as_str());
        }
        match cut {
            Some(BodyCut::Drop) => b.body(FaultBody {
                chunk: None,
                declared: self.body.len().max(1) as u64,
                wait: None,
            }),
            Some(BodyCut::At(n)) => {
                let n = n.min(self.body.len());
                b.body(FaultBody {
                    chunk: Some(self.body.slice(..n)),
                    declared: self.body.len().max(1) as u64,
                    wait: None,
                })
            }
            None => b.body(self.body),
        }
    }
}

/// How an answer's body is cut short: not sent at all, or sent up to a byte offset.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BodyCut {
    Drop,
    At(usize),
}

/// A body that announces its full length, sends at most a part of it, then fails, which
/// makes actix close the connection. With no chunk the client gets no response at all.
struct FaultBody {
    chunk: Option<web::Bytes>,
    declared: u64,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl MessageBody for FaultBody {
    type Error = std::io::Error;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.declared)
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<web::Bytes, Self::Error>>> {
        if let Some(chunk) = self.chunk.take() {
            // Let the dispatcher flush the partial body before failing.
            self.wait = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
            return Poll::Ready(Some(Ok(chunk)));
        }
        if let Some(w) = self.wait.as_mut() {
            if w.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "simulated connection fault",
        ))))
    }
}

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// 429 with `Retry-After`, in the provider's error shape.
    #[serde(rename = "429")]
    TooMany,
    /// 500 in the provider's error shape.
    #[serde(rename = "500")]
    Internal,
    /// 503 with `Retry-After`, in the provider's error shape.
    #[serde(rename = "503")]
    Unavailable,
    /// The connection is closed without a response.
    #[serde(rename = "drop")]
    Drop,
    /// The answer comes after `hang_ms`.
    #[serde(rename = "hang")]
    Hang,
    /// Status and headers are sent, the body is cut in half and the connection closed.
    #[serde(rename = "truncate")]
    Truncate,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::TooMany => "429",
            FaultKind::Internal => "500",
            FaultKind::Unavailable => "503",
            FaultKind::Drop => "drop",
            FaultKind::Hang => "hang",
            FaultKind::Truncate => "truncate",
        }
    }
}

/// Fault injection settings of one provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultConfig {
    /// Probability that an API request gets one of `kinds` (0 disables).
    pub probability: f64,
    /// Fault kinds to choose from, uniformly.
    pub kinds: Vec<FaultKind>,
    /// Delay of a `hang` fault.
    pub hang_ms: u64,
    /// Latency added to every API request (independent of `probability`).
    pub latency_ms: u64,
    /// Seed of the fault generator: the same sequence of requests gets the same faults.
    pub seed: u64,
    /// `Retry-After` of 429 and 503 answers, in seconds (Google rounds it up).
    pub retry_after: f64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            probability: 0.0,
            kinds: Vec::new(),
            hang_ms: 30_000,
            latency_ms: 0,
            seed: 1,
            retry_after: 1.0,
        }
    }
}

/// Entries kept in the request log; the oldest tenth goes when it is full.
const LOG_CAP: usize = 200_000;

/// One entry of the request log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    pub user: Option<String>,
    pub fault: Option<String>,
    /// The request's `Prefer` header, as sent (detailed log only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer: Option<String>,
    /// The request's bearer token (detailed log only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<String>,
    /// The request's body, as text (detailed log only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct AccessTok {
    pub user: String,
    pub expires: DateTime<Utc>,
    /// The scopes granted (space-separated; empty where the provider does not model them).
    pub scope: String,
}

#[derive(Debug, Clone)]
pub(crate) struct RefreshTok {
    pub user: String,
    pub revoked: bool,
    pub scope: String,
}

#[derive(Debug, Clone)]
pub(crate) struct AuthCode {
    pub user: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub challenge: Option<String>,
    pub method: String,
    pub scope: String,
    pub used: bool,
    pub expires: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub(crate) struct DeviceCode {
    pub user_code: String,
    pub user: Option<String>,
    pub approved: bool,
    pub polls: u32,
    pub last_poll: Option<DateTime<Utc>>,
    pub expires: DateTime<Utc>,
    pub scope: String,
    pub done: bool,
}

/// OAuth grants of one provider.
#[derive(Debug, Default)]
pub(crate) struct Auth {
    pub access: HashMap<String, AccessTok>,
    pub refresh: HashMap<String, RefreshTok>,
    pub codes: HashMap<String, AuthCode>,
    pub devices: HashMap<String, DeviceCode>,
    pub latest_refresh: HashMap<String, String>,
    /// (client_id, client_secret) pairs seen at the token endpoint.
    pub clients: Vec<(String, Option<String>)>,
}

impl Auth {
    pub fn issue_access(
        &mut self,
        prefix: &str,
        user: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> String {
        self.issue_access_scoped(prefix, user, now, ttl, "")
    }

    /// An access token that carries the scopes it was granted.
    pub fn issue_access_scoped(
        &mut self,
        prefix: &str,
        user: &str,
        now: DateTime<Utc>,
        ttl: Duration,
        scope: &str,
    ) -> String {
        let tok = format!("{prefix}{}", random_token());
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
        self.access.insert(
            tok.clone(),
            AccessTok {
                user: user.to_string(),
                expires: now + ttl,
                scope: scope.to_string(),
            },
        );
        tok
    }

    pub fn issue_refresh(&mut self, prefix: &str, user: &str, scope: &str) -> String {
        let tok = format!("{prefix}{}", random_token());
        self.refresh.insert(
            tok.clone(),
            RefreshTok {
                user: user.to_string(),
                revoked: false,
                scope: scope.to_string(),
            },
        );
        self.latest_refresh.insert(user.to_string(), tok.clone());
        tok
    }

    /// The user of a valid, unexpired access token.
    /// The scopes of a live access token.
    pub fn scope_of(&self, tok: Option<&str>) -> Option<&str> {
        self.access.get(tok?).map(|t| t.scope.as_str())
    }

    pub fn user_of(&self, tok: Option<&str>, now: DateTime<Utc>) -> Option<String> {
        let t = self.access.get(tok?)?;
        (t.expires > now).then(|| t.user.clone())
    }

    pub fn revoke_user(&mut self, user: &str) {
        for t in self.refresh.values_mut() {
            if t.user == user {
                t.revoked = true;
            }
        }
        self.access.retain(|_, t| t.user != user);
        self.latest_refresh.remove(user);
    }

    pub fn record_client(&mut self, form: &HashMap<String, String>) {
        if let Some(id) = form.get("client_id") {
            let pair = (id.clone(), form.get("client_secret").cloned());
            if !self.clients.contains(&pair) {
                self.clients.push(pair);
            }
        }
    }
}

pub(crate) fn random_token() -> String {
    let mut b = [0u8; 24];
    rand::thread_rng().fill(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// PKCE check: S256 or plain.
pub(crate) fn pkce_ok(challenge: &Option<String>, method: &str, verifier: Option<&String>) -> bool {
    match (challenge, verifier) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(c), Some(v)) => {
            if method.eq_ignore_ascii_case("S256") {
                let d = Sha256::digest(v.as_bytes());
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d) == *c
            } else {
                v == c
            }
        }
    }
}

/// Everything one provider server keeps.
pub(crate) struct ProvState<U> {
    pub users: BTreeMap<String, U>,
    pub auth: Auth,
    pub faults: FaultConfig,
    pub fault_rng: StdRng,
    pub quota: Option<usize>,
    pub inflight: HashMap<String, usize>,
    pub log: Vec<LogEntry>,
    pub base: String,
    pub id_seed: u64,
    /// Closed gates: API requests whose path contains all of a gate's texts wait, before they are
    /// served, until the gate is opened (tests that need two clients' requests in a set
    /// order).
    pub gates: Vec<Gate>,
    next_gate: u64,
    /// Scripted answers (tests).
    pub scripts: Scripts,
    /// Whether the request log keeps bearer tokens and bodies.
    pub detailed_log: bool,
    /// The most items a listing page holds, whatever page size the client asks for (as
    /// the services may serve fewer than asked).
    pub page_cap: Option<usize>,
    /// The most API requests each user had in flight at once.
    pub peak_inflight: HashMap<String, usize>,
}

/// A closed gate (see [`ProvState::gates`]).
#[derive(Debug)]
pub(crate) struct Gate {
    pub id: u64,
    pub contains: Vec<String>,
    open: tokio::sync::watch::Sender<bool>,
    /// Requests that reached the gate.
    held: Arc<AtomicUsize>,
}

impl<U> ProvState<U> {
    /// Closes a new gate for paths containing every text of `contains`; returns its id.
    pub fn close_gate(&mut self, contains: Vec<String>) -> u64 {
        self.next_gate += 1;
        let (open, _) = tokio::sync::watch::channel(false);
        self.gates.push(Gate {
            id: self.next_gate,
            contains,
            open,
            held: Arc::new(AtomicUsize::new(0)),
        });
        self.next_gate
    }

    /// How many requests reached gate `id`.
    pub fn gate_held(&self, id: u64) -> Option<usize> {
        self.gates
            .iter()
            .find(|g| g.id == id)
            .map(|g| g.held.load(Ordering::SeqCst))
    }

    /// Opens and removes gate `id`: the requests waiting at it go on.
    pub fn open_gate(&mut self, id: u64) -> bool {
        match self.gates.iter().position(|g| g.id == id) {
            Some(i) => {
                let g = self.gates.remove(i);
                let _ = g.open.send(true);
                true
            }
            None => false,
        }
    }

    /// The gate a request to `path` must wait at, if any.
    fn gate_for(
        &self,
        path: &str,
    ) -> Option<(tokio::sync::watch::Receiver<bool>, Arc<AtomicUsize>)> {
        self.gates
            .iter()
            .find(|g| g.contains.iter().all(|c| path.contains(c.as_str())))
            .map(|g| (g.open.subscribe(), g.held.clone()))
    }

    fn new(id_seed: u64) -> Self {
        ProvState {
            users: BTreeMap::new(),
            auth: Auth::default(),
            faults: FaultConfig::default(),
            fault_rng: StdRng::seed_from_u64(1),
            quota: None,
            inflight: HashMap::new(),
            log: Vec::new(),
            base: String::new(),
            id_seed,
            gates: Vec::new(),
            next_gate: 0,
            scripts: Scripts::default(),
            detailed_log: false,
            page_cap: None,
            peak_inflight: HashMap::new(),
        }
    }

    /// The user to approve an authorization for: the login hint when it names a user,
    /// else the first user.
    pub fn pick_user(&self, hint: Option<&str>) -> Option<String> {
        if let Some(h) = hint {
            if self.users.contains_key(h) {
                return Some(h.to_string());
            }
        }
        self.users.keys().next().cloned()
    }
}

/// Context handed to handlers.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub now: DateTime<Utc>,
    pub ttl: Duration,
    /// [`ProvState::page_cap`] of the provider serving the request.
    pub page_cap: Option<usize>,
}

/// Both providers' state and the simulator clock.
pub(crate) struct Shared {
    pub google: Mutex<ProvState<GUser>>,
    pub graph: Mutex<ProvState<MUser>>,
    clock_offset_ms: AtomicI64,
    pub ttl: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a handler panicked mid-update; the simulator keeps going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn new(seed: u64, ttl: Duration) -> Shared {
        Shared {
            google: Mutex::new(ProvState::new(seed)),
            graph: Mutex::new(ProvState::new(seed)),
            clock_offset_ms: AtomicI64::new(0),
            ttl,
        }
    }

    pub fn google(&self) -> MutexGuard<'_, ProvState<GUser>> {
        lock(&self.google)
    }

    pub fn graph(&self) -> MutexGuard<'_, ProvState<MUser>> {
        lock(&self.graph)
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.clock_offset_ms.load(Ordering::SeqCst))
    }

    pub fn ctx(&self) -> Ctx {
        Ctx {
            now: self.now(),
            ttl: self.ttl,
            page_cap: None,
        }
    }

    pub fn advance_clock(&self, by: Duration) {
        self.clock_offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    pub fn set_bases(&self, google: &str, graph: &str) {
        self.google().base = google.to_string();
        self.graph().base = graph.to_string();
    }

    pub fn add_user(&self, provider: Provider, u: &SeedUser) -> String {
        let now = self.now();
        match provider {
            Provider::Google => {
                let mut st = self.google();
                let mut user = GUser::seeded(u, st.id_seed, now);
                // Re-seeding replaces the user; cursors issued before must not match.
                if let Some(old) = st.users.get(&u.user) {
                    user.epoch = old.epoch + 1;
                }
                st.users.insert(u.user.clone(), user);
                st.auth.revoke_user(&u.user);
                st.auth.issue_refresh(
                    "1//sim-",
                    &u.user,
                    "https://www.googleapis.com/auth/contacts",
                )
            }
            Provider::Outlook => {
                let mut st = self.graph();
                let mut user = MUser::seeded(u, st.id_seed, now);
                if let Some(old) = st.users.get(&u.user) {
                    user.epoch = old.epoch + 1;
                }
                st.users.insert(u.user.clone(), user);
                st.auth.revoke_user(&u.user);
                st.auth
                    .issue_refresh("M.C5-sim-", &u.user, "offline_access Contacts.ReadWrite")
            }
        }
    }

    pub fn refresh_token(&self, provider: Provider, user: &str) -> Option<String> {
        match provider {
            Provider::Google => self.google().auth.latest_refresh.get(user).cloned(),
            Provider::Outlook => self.graph().auth.latest_refresh.get(user).cloned(),
        }
    }

    pub fn set_faults(&self, provider: Provider, f: FaultConfig) {
        match provider {
            Provider::Google => {
                let mut st = self.google();
                st.fault_rng = StdRng::seed_from_u64(f.seed);
                st.faults = f;
            }
            Provider::Outlook => {
                let mut st = self.graph();
                st.fault_rng = StdRng::seed_from_u64(f.seed);
                st.faults = f;
            }
        }
    }

    pub fn set_quota(&self, provider: Provider, q: Option<usize>) {
        match provider {
            Provider::Google => self.google().quota = q,
            Provider::Outlook => self.graph().quota = q,
        }
    }

    pub fn requests(&self, provider: Provider) -> Vec<LogEntry> {
        match provider {
            Provider::Google => self.google().log.clone(),
            Provider::Outlook => self.graph().log.clone(),
        }
    }

    pub fn clients(&self, provider: Provider) -> Vec<(String, Option<String>)> {
        match provider {
            Provider::Google => self.google().auth.clients.clone(),
            Provider::Outlook => self.graph().auth.clients.clone(),
        }
    }

    pub fn clear_requests(&self, provider: Provider) {
        match provider {
            Provider::Google => self.google().log.clear(),
            Provider::Outlook => self.graph().log.clear(),
        }
    }

    pub fn expire_cursors(&self, provider: Provider, user: &str) -> bool {
        match provider {
            Provider::Google => self
                .google()
                .users
                .get_mut(user)
                .map(|u| u.epoch += 1)
                .is_some(),
            Provider::Outlook => self
                .graph()
                .users
                .get_mut(user)
                .map(|u| u.epoch += 1)
                .is_some(),
        }
    }

    pub fn revoke(&self, provider: Provider, user: &str) -> bool {
        match provider {
            Provider::Google => {
                let mut st = self.google();
                st.auth.revoke_user(user);
                st.users.contains_key(user)
            }
            Provider::Outlook => {
                let mut st = self.graph();
                st.auth.revoke_user(user);
                st.users.contains_key(user)
            }
        }
    }

    pub fn expire_access_tokens(&self) {
        let past = self.now() - chrono::Duration::seconds(1);
        for t in self.google().auth.access.values_mut() {
            t.expires = past;
        }
        for t in self.graph().auth.access.values_mut() {
            t.expires = past;
        }
    }

    /// Resolves the bearer token of a request (for the log and the quota), checks the
    /// quota and draws a fault, all under one lock.
    fn admit(&self, provider: Provider, req: &Req) -> Admission {
        let now = self.now();
        match provider {
            Provider::Google => admit_in(&mut self.google(), req, now),
            Provider::Outlook => admit_in(&mut self.graph(), req, now),
        }
    }

    /// Runs `f` on a provider's scripts and detailed-log switch.
    pub(crate) fn with_state<T>(
        &self,
        provider: Provider,
        f: impl FnOnce(&mut Scripts, bool) -> T,
    ) -> T {
        match provider {
            Provider::Google => {
                let mut st = self.google();
                let d = st.detailed_log;
                f(&mut st.scripts, d)
            }
            Provider::Outlook => {
                let mut st = self.graph();
                let d = st.detailed_log;
                f(&mut st.scripts, d)
            }
        }
    }

    pub fn set_detailed_log(&self, provider: Provider, on: bool) {
        match provider {
            Provider::Google => self.google().detailed_log = on,
            Provider::Outlook => self.graph().detailed_log = on,
        }
    }

    pub fn set_page_cap(&self, provider: Provider, cap: Option<usize>) {
        match provider {
            Provider::Google => self.google().page_cap = cap,
            Provider::Outlook => self.graph().page_cap = cap,
        }
    }

    fn release(&self, provider: Provider, user: &str) {
        let dec = |m: &mut HashMap<String, usize>| {
            if let Some(n) = m.get_mut(user) {
                *n = n.saturating_sub(1);
            }
        };
        match provider {
            Provider::Google => dec(&mut self.google().inflight),
            Provider::Outlook => dec(&mut self.graph().inflight),
        }
    }

    fn log(&self, provider: Provider, e: LogEntry) {
        // Bounded, so that long benchmark runs do not grow without limit.
        fn push(log: &mut Vec<LogEntry>, e: LogEntry) {
            if log.len() >= LOG_CAP {
                log.drain(..LOG_CAP / 10);
            }
            log.push(e);
        }
        match provider {
            Provider::Google => push(&mut self.google().log, e),
            Provider::Outlook => push(&mut self.graph().log, e),
        }
    }
}

struct Admission {
    user: Option<String>,
    over_quota: bool,
    counted: bool,
    fault: Option<FaultKind>,
    latency_ms: u64,
    hang_ms: u64,
    retry_after: f64,
}

fn admit_in<U>(st: &mut ProvState<U>, req: &Req, now: DateTime<Utc>) -> Admission {
    let user = st.auth.user_of(req.bearer(), now);
    let mut over_quota = false;
    let mut counted = false;
    if let Some(u) = user.as_ref() {
        let n = st.inflight.entry(u.clone()).or_insert(0);
        if st.quota.is_some_and(|max| *n >= max) {
            over_quota = true;
        } else {
            *n += 1;
            counted = true;
            let now_in = *n;
            let peak = st.peak_inflight.entry(u.clone()).or_insert(0);
            *peak = (*peak).max(now_in);
        }
    }
    let f = &st.faults;
    let mut fault = None;
    if f.probability > 0.0 && !f.kinds.is_empty() {
        let p = f.probability.min(1.0);
        let kinds = f.kinds.clone();
        if st.fault_rng.gen::<f64>() < p {
            let i = st.fault_rng.gen_range(0..kinds.len());
            fault = Some(kinds[i]);
        }
    }
    Admission {
        user,
        over_quota,
        counted,
        fault,
        latency_ms: st.faults.latency_ms,
        hang_ms: st.faults.hang_ms,
        retry_after: st.faults.retry_after,
    }
}

/// Entry point of every request on either server.
pub(crate) async fn entry(
    provider: Provider,
    req: HttpRequest,
    body: web::Bytes,
    data: web::Data<SharedRef>,
) -> HttpResponse {
    let shared: SharedRef = data.get_ref().clone();
    let r = Req::from_http(&req, body);
    if r.segs.first().map(String::as_str) == Some("_sim") {
        return control(&shared, provider, &r).into_http(None);
    }
    // The work runs in its own task so that a client that gives up (timeouts, hangs) does
    // not cancel it: the request is still logged and its quota slot released.
    let task = tokio::spawn(async move { serve(&shared, provider, r).await });
    match task.await {
        Ok((resp, fault)) => resp.into_http(fault),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

async fn serve(shared: &Shared, provider: Provider, r: Req) -> (Resp, Option<BodyCut>) {
    let adm = shared.admit(provider, &r);
    let (script, detailed) =
        shared.with_state(provider, |scripts, detailed| (scripts.take(&r), detailed));
    let mut cut = None;
    let mut fault_name = None;
    let resp = if adm.over_quota {
        fault_name = Some("quota".to_string());
        throttled(provider, adm.retry_after, true)
    } else {
        if adm.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(adm.latency_ms)).await;
        }
        let gate = match provider {
            Provider::Google => shared.google().gate_for(&r.path),
            Provider::Outlook => shared.graph().gate_for(&r.path),
        };
        if let Some((mut open, held)) = gate {
            held.fetch_add(1, Ordering::SeqCst);
            let _ = open.wait_for(|o| *o).await;
        }
        if let Some(k) = adm.fault {
            fault_name = Some(k.name().to_string());
        }
        let resp = match (&script, adm.fault) {
            (Some(s), _) => {
                let own = s.needs_own().then(|| dispatch(shared, provider, &r));
                let (resp, c) = s.answer(own);
                fault_name = Some("script".into());
                cut = c.map(|c| match c {
                    Cut::Bytes(n) => BodyCut::At(n),
                    Cut::Half => BodyCut::At(resp.body.len() / 2),
                });
                resp
            }
            (None, fault) => match fault {
                Some(FaultKind::TooMany) => throttled(provider, adm.retry_after, false),
                Some(FaultKind::Internal) => server_error(provider, 500, None),
                Some(FaultKind::Unavailable) => server_error(provider, 503, Some(adm.retry_after)),
                Some(FaultKind::Hang) => {
                    tokio::time::sleep(Duration::from_millis(adm.hang_ms)).await;
                    dispatch(shared, provider, &r)
                }
                _ => dispatch(shared, provider, &r),
            },
        };
        if adm.counted {
            if let Some(u) = &adm.user {
                shared.release(provider, u);
            }
        }
        resp
    };
    shared.log(
        provider,
        LogEntry {
            method: r.method.clone(),
            path: r.path.clone(),
            query: r.raw_query.clone(),
            status: resp.status,
            user: adm.user.clone(),
            fault: fault_name,
            prefer: detailed
                .then(|| r.header("prefer").map(String::from))
                .flatten(),
            bearer: detailed.then(|| r.bearer().map(str::to_string)).flatten(),
            body: detailed.then(|| String::from_utf8_lossy(&r.body).into_owned()),
        },
    );
    if script.is_some() {
        return (resp, cut);
    }
    let body_cut = match adm.fault {
        Some(FaultKind::Drop) => Some(BodyCut::Drop),
        Some(FaultKind::Truncate) => Some(BodyCut::At(resp.body.len() / 2)),
        _ => None,
    };
    (resp, body_cut)
}

pub(crate) fn dispatch(shared: &Shared, provider: Provider, r: &Req) -> Resp {
    match provider {
        Provider::Google => super::google::handle(shared, r),
        Provider::Outlook => super::graph::handle(shared, r),
    }
}

fn retry_after_header(provider: Provider, secs: f64) -> String {
    match provider {
        Provider::Google => format!("{}", secs.ceil().max(0.0) as u64),
        Provider::Outlook => {
            if secs.fract() == 0.0 {
                format!("{}", secs as u64)
            } else {
                format!("{secs}")
            }
        }
    }
}

pub(crate) fn throttled(provider: Provider, retry_after: f64, concurrency: bool) -> Resp {
    let ra = retry_after_header(provider, retry_after);
    match provider {
        Provider::Google => super::google::error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute per user' of service 'people.googleapis.com'.",
            Some("RATE_LIMIT_EXCEEDED"),
        )
        .with_header("Retry-After", &ra),
        Provider::Outlook => {
            let (code, msg) = if concurrency {
                (
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                )
            } else {
                ("TooManyRequests", "Please retry again later.")
            };
            super::graph::error(429, code, msg, None).with_header("Retry-After", &ra)
        }
    }
}

pub(crate) fn server_error(provider: Provider, status: u16, retry_after: Option<f64>) -> Resp {
    let r = match provider {
        Provider::Google => {
            if status == 503 {
                super::google::error(
                    503,
                    "UNAVAILABLE",
                    "The service is currently unavailable.",
                    None,
                )
            } else {
                super::google::error(500, "INTERNAL", "Internal error encountered.", None)
            }
        }
        Provider::Outlook => {
            if status == 503 {
                super::graph::error(503, "ServiceUnavailable", "Service unavailable.", None)
            } else {
                super::graph::error(
                    500,
                    "InternalServerError",
                    "An internal server error occurred.",
                    None,
                )
            }
        }
    };
    match retry_after {
        Some(s) => {
            let ra = retry_after_header(provider, s);
            r.with_header("Retry-After", &ra)
        }
        None => r,
    }
}

/// A control-API error: `{"error": msg}`.
pub(crate) fn control_err(status: u16, msg: &str) -> Resp {
    Resp::json(status, &json!({"error": msg}))
}

#[derive(Deserialize)]
struct UserBody {
    user: String,
    #[serde(default = "default_contacts")]
    contacts: usize,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default)]
    starred_share: f64,
    #[serde(default)]
    child_folders: usize,
}

fn default_contacts() -> usize {
    0
}
fn default_seed() -> u64 {
    1
}

#[derive(Deserialize)]
struct QuotaBody {
    max_concurrent: Option<usize>,
}

#[derive(Deserialize)]
struct ClockBody {
    advance_secs: f64,
}

/// The control API, common part. Provider-specific routes go to the provider modules.
/// A control-API JSON body.
fn parse_body<T: serde::de::DeserializeOwned>(r: &Req) -> Result<T, Resp> {
    r.json()
        .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
        .map_err(|e| control_err(400, &e))
}

pub(crate) fn control(shared: &Shared, provider: Provider, r: &Req) -> Resp {
    let all: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    // Routes below are relative to `/_sim`.
    let segs = all.get(1..).unwrap_or(&[]);
    let m = r.method.as_str();
    match (m, segs) {
        ("POST", ["users"]) => {
            let b: UserBody = match parse_body(r) {
                Ok(b) => b,
                Err(e) => return e,
            };
            let su = SeedUser {
                user: b.user.clone(),
                contacts: b.contacts,
                seed: b.seed,
                starred_share: b.starred_share,
                child_folders: b.child_folders,
            };
            let tok = shared.add_user(provider, &su);
            Resp::json(201, &json!({"user": b.user, "refresh_token": tok}))
        }
        ("GET", ["users"]) => {
            let users: Vec<Value> = match provider {
                Provider::Google => {
                    let st = shared.google();
                    st.users
                        .keys()
                        .map(|u| json!({"user": u, "refresh_token": st.auth.latest_refresh.get(u)}))
                        .collect()
                }
                Provider::Outlook => {
                    let st = shared.graph();
                    st.users
                        .keys()
                        .map(|u| json!({"user": u, "refresh_token": st.auth.latest_refresh.get(u)}))
                        .collect()
                }
            };
            Resp::json(200, &Value::Array(users))
        }
        ("POST", ["users", user, "expire-cursors"]) => {
            if shared.expire_cursors(provider, user) {
                Resp::json(200, &json!({}))
            } else {
                control_err(404, "no such user")
            }
        }
        ("POST", ["users", user, "revoke"]) => {
            if shared.revoke(provider, user) {
                Resp::json(200, &json!({}))
            } else {
                control_err(404, "no such user")
            }
        }
        ("POST", ["scripts"]) => {
            let s: Script = match parse_body(r) {
                Ok(s) => s,
                Err(e) => return e,
            };
            shared.with_state(provider, |scripts, _| scripts.add(s));
            Resp::json(201, &json!({}))
        }
        ("DELETE", ["scripts"]) => {
            shared.with_state(provider, |scripts, _| scripts.clear());
            Resp::empty(204)
        }
        ("POST", ["detailed-log"]) => {
            let on = r
                .json()
                .ok()
                .and_then(|b| b.get("on").and_then(Value::as_bool))
                .unwrap_or(true);
            shared.set_detailed_log(provider, on);
            Resp::json(200, &json!({"on": on}))
        }
        ("POST", ["page-cap"]) => {
            let cap = r
                .json()
                .ok()
                .and_then(|b| b.get("max").and_then(Value::as_u64))
                .map(|n| n as usize);
            shared.set_page_cap(provider, cap);
            Resp::json(200, &json!({"max": cap}))
        }
        ("POST", ["gates"]) => {
            let body = r.json().unwrap_or(Value::Null);
            let contains: Vec<String> = match body.get("contains") {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
                _ => vec![],
            };
            if contains.is_empty() || contains.iter().any(String::is_empty) {
                return control_err(
                    400,
                    "body must be {\"contains\": \"part of a path\" | [\"parts\", …]}",
                );
            }
            let id = match provider {
                Provider::Google => shared.google().close_gate(contains),
                Provider::Outlook => shared.graph().close_gate(contains),
            };
            Resp::json(201, &json!({"id": id}))
        }
        ("GET", ["gates", id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let held = match provider {
                Provider::Google => shared.google().gate_held(id),
                Provider::Outlook => shared.graph().gate_held(id),
            };
            match held {
                Some(n) => Resp::json(200, &json!({"id": id, "held": n})),
                None => control_err(404, "no such gate"),
            }
        }
        ("DELETE", ["gates", id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let opened = match provider {
                Provider::Google => shared.google().open_gate(id),
                Provider::Outlook => shared.graph().open_gate(id),
            };
            if opened {
                Resp::empty(204)
            } else {
                control_err(404, "no such gate")
            }
        }
        ("GET", ["in-flight"]) => {
            let peak = match provider {
                Provider::Google => shared.google().peak_inflight.clone(),
                Provider::Outlook => shared.graph().peak_inflight.clone(),
            };
            Resp::json(200, &json!({ "peak": peak }))
        }
        ("POST", ["expire-access-tokens"]) => {
            shared.expire_access_tokens();
            Resp::json(200, &json!({}))
        }
        ("POST", ["clock"]) => {
            let b: ClockBody = match parse_body(r) {
                Ok(b) => b,
                Err(e) => return e,
            };
            shared.advance_clock(Duration::from_secs_f64(b.advance_secs.max(0.0)));
            Resp::json(200, &json!({"now": shared.now().to_rfc3339()}))
        }
        ("POST", ["faults"]) => {
            let f: FaultConfig = match parse_body(r) {
                Ok(b) => b,
                Err(e) => return e,
            };
            shared.set_faults(provider, f);
            Resp::json(200, &json!({}))
        }
        ("POST", ["quota"]) => {
            let q: QuotaBody = match parse_body(r) {
                Ok(b) => b,
                Err(e) => return e,
            };
            shared.set_quota(provider, q.max_concurrent.filter(|n| *n > 0));
            Resp::json(200, &json!({}))
        }
        ("GET", ["requests"]) => Resp::json(200, &json!(shared.requests(provider))),
        ("GET", ["clients"]) => {
            let v: Vec<Value> = shared
                .clients(provider)
                .into_iter()
                .map(|(id, secret)| json!({"client_id": id, "client_secret": secret}))
                .collect();
            Resp::json(200, &Value::Array(v))
        }
        ("DELETE", ["requests"]) => {
            shared.clear_requests(provider);
            Resp::empty(204)
        }
        _ => {
            let res = match provider {
                Provider::Google => super::google::control(shared, r, segs),
                Provider::Outlook => super::graph::control(shared, r, segs),
            };
            res.unwrap_or_else(|| control_err(404, "no such control route"))
        }
    }
}

/// Deterministic 64-bit mix (splitmix64), for ids and seeds.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Stable hash of a string (FNV-1a), for salts.
pub(crate) fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub(crate) fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

pub(crate) fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("people%2Fc12"), "people/c12");
        assert_eq!(percent_decode("a%"), "a%");
        assert_eq!(percent_decode("%41%4"), "A%4");
        assert_eq!(percent_decode("alice@example.com"), "alice@example.com");
    }

    #[test]
    fn pkce_s256() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_string();
        let d = Sha256::digest(verifier.as_bytes());
        let c = b64(&d);
        assert!(pkce_ok(&Some(c.clone()), "S256", Some(&verifier)));
        assert!(!pkce_ok(&Some(c), "S256", Some(&"wrong".to_string())));
        assert!(!pkce_ok(&Some("x".into()), "S256", None));
        assert!(pkce_ok(&None, "", None));
    }
}
