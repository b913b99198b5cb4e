//! Simulated providers: a Google People API server and a Microsoft Graph contacts server.
//!
//! # Key concepts
//!
//! - Each provider runs its own actix-web server on loopback. Both serve the provider's wire
//!   format (paths, parameters, JSON field names, error shapes) so that a client that works
//!   against the simulator should work against the real service.
//! - State lives in memory, per provider, behind one mutex (`ProvState`). Every handler is
//!   synchronous over that state; only fault injection (latency, hangs) awaits.
//! - Change tracking uses a per-user, monotonically increasing change sequence. Every
//!   contact carries the sequence number of its last change and every deletion leaves a
//!   tombstone with its sequence number. Cursors (Google sync tokens, Graph delta tokens)
//!   encode a sequence number, and a round of paging lists the changes in
//!   `(cursor_seq, snapshot_seq]`, where the snapshot is taken on the first page. A change
//!   made while a client pages therefore lands in the next round: nothing is lost.
//! - A control API under `/_sim/` on each server seeds users, edits contacts as if a person
//!   used the provider's own UI, expires cursors, revokes grants, injects faults and exposes
//!   a log of the requests served. It is never subject to faults and never logged.
//!
//! See `docs/simulator.md` for what is faithful and what is knowingly simplified.

pub mod cli;
pub(crate) mod common;
pub(crate) mod google;
pub(crate) mod graph;
pub mod jpeg;
pub mod script;
pub mod seed;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};

pub use cli::{run_cli, SimArgs};
pub use common::{FaultConfig, FaultKind, LogEntry};
pub use graph::BatchPart;
pub use script::{Cut, Script, ScriptBody};
pub use seed::{people, user_salt, SeedAddress, SeedPerson, SeedPhone};

use common::{Shared, SharedRef};

/// The two simulated providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Google People API.
    Google,
    /// Microsoft Graph (Outlook personal contacts).
    Outlook,
}

/// A user to seed at start-up.
#[derive(Debug, Clone)]
pub struct SeedUser {
    /// Login of the user, e.g. `alice@example.com`.
    pub user: String,
    /// Number of contacts to generate.
    pub contacts: usize,
    /// Seed of the generator. Users of both providers seeded with the same seed share
    /// about a fifth of their people (see [`seed`]).
    pub seed: u64,
    /// Google only: fraction of contacts that are starred.
    pub starred_share: f64,
    /// Outlook only: contacts are spread over the default folder and this many child folders.
    pub child_folders: usize,
}

impl SeedUser {
    /// A user with `contacts` contacts, no starred share and no child folders.
    pub fn new(user: &str, contacts: usize, seed: u64) -> SeedUser {
        SeedUser {
            user: user.to_string(),
            contacts,
            seed,
            starred_share: 0.0,
            child_folders: 0,
        }
    }
}

/// Options for [`Sim::start`].
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Seed for ids and fault injection.
    pub seed: u64,
    /// Users of the Google simulator.
    pub google_users: Vec<SeedUser>,
    /// Users of the Graph simulator.
    pub outlook_users: Vec<SeedUser>,
    /// Lifetime of issued access tokens.
    pub access_token_ttl: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 1,
            google_users: Vec::new(),
            outlook_users: Vec::new(),
            access_token_ttl: Duration::from_secs(3600),
        }
    }
}

/// A running pair of simulated providers.
pub struct Sim {
    /// Base URL of the Google simulator, `http://127.0.0.1:PORT`.
    pub google_base: String,
    /// Base URL of the Graph simulator, `http://127.0.0.1:PORT2`. The Graph API base is
    /// `{graph_base}/v1.0`.
    pub graph_base: String,
    shared: SharedRef,
    handles: Vec<ServerHandle>,
}

impl Sim {
    /// Starts both servers on `127.0.0.1:0` (free ports).
    pub async fn start(opts: SimOptions) -> anyhow::Result<Sim> {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Sim::start_on(any, any, opts).await
    }

    /// Starts both servers on the given addresses.
    pub async fn start_on(
        google_addr: SocketAddr,
        graph_addr: SocketAddr,
        opts: SimOptions,
    ) -> anyhow::Result<Sim> {
        // Loading the phone-number metadata takes a while in debug builds; do it now, in the
        // background, rather than in the first request that renders a phone number.
        std::thread::spawn(|| google::canonical_phone("+1 415 555 0100"));
        let shared = Arc::new(Shared::new(opts.seed, opts.access_token_ttl));
        let (google_server, google_bound) = bind(google_addr, shared.clone(), Provider::Google)?;
        let (graph_server, graph_bound) = bind(graph_addr, shared.clone(), Provider::Outlook)?;
        let google_base = format!("http://{google_bound}");
        let graph_base = format!("http://{graph_bound}");
        shared.set_bases(&google_base, &graph_base);
        // Seed both providers in parallel: large seeds (25k contacts) dominate start-up.
        std::thread::scope(|s| {
            s.spawn(|| {
                for u in &opts.google_users {
                    shared.add_user(Provider::Google, u);
                }
            });
            for u in &opts.outlook_users {
                shared.add_user(Provider::Outlook, u);
            }
        });
        let handles = vec![google_server.handle(), graph_server.handle()];
        tokio::spawn(google_server);
        tokio::spawn(graph_server);
        Ok(Sim {
            google_base,
            graph_base,
            shared,
            handles,
        })
    }

    /// `{graph_base}/v1.0`, the Graph `api_base`.
    pub fn graph_api_base(&self) -> String {
        format!("{}/v1.0", self.graph_base)
    }

    /// Google's token endpoint on the simulator.
    pub fn google_token_url(&self) -> String {
        format!("{}/token", self.google_base)
    }

    /// Google's authorization endpoint on the simulator.
    pub fn google_auth_url(&self) -> String {
        format!("{}/o/oauth2/v2/auth", self.google_base)
    }

    /// Microsoft's token endpoint on the simulator, for a tenant (`common`, ...).
    pub fn graph_token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.graph_base)
    }

    /// Microsoft's authorization endpoint on the simulator, for a tenant.
    pub fn graph_auth_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/authorize", self.graph_base)
    }

    /// A valid refresh token for a seeded user (the most recently issued one).
    pub fn refresh_token(&self, provider: Provider, user: &str) -> Option<String> {
        self.shared.refresh_token(provider, user)
    }

    /// Seeds (or re-seeds) a user and returns its refresh token.
    pub fn add_user(&self, provider: Provider, user: &SeedUser) -> String {
        self.shared.add_user(provider, user)
    }

    /// Sets the fault injection of one provider. Probability 0 disables it.
    pub fn set_faults(&self, provider: Provider, faults: FaultConfig) {
        self.shared.set_faults(provider, faults);
    }

    /// Limits concurrent API requests per user (mailbox). `None` lifts the limit.
    pub fn set_quota(&self, provider: Provider, max_concurrent: Option<usize>) {
        self.shared.set_quota(provider, max_concurrent);
    }

    /// Enforces Outlook's per-mailbox request budget on every existing Outlook user: at most
    /// `budget` requests per `window` (a token bucket, full at first), each over it answered
    /// 429 `TooManyRequests` with `Retry-After`. `None` lifts it.
    pub fn set_graph_budget(&self, budget: Option<(u32, Duration)>) {
        let mut st = self.shared.graph();
        for u in st.users.values_mut() {
            u.budget = budget.and_then(|(n, w)| graph::SimBudget::new(n, w));
            u.budget_refusals = 0;
        }
    }

    /// Requests the Outlook budget refused, over all users.
    pub fn graph_budget_refusals(&self) -> u64 {
        self.shared
            .graph()
            .users
            .values()
            .map(|u| u.budget_refusals)
            .sum()
    }

    /// `METHOD url` of every `$batch` part an Outlook user's requests carried (the request
    /// log counts a `$batch` once).
    pub fn graph_batch_parts(&self, user: &str) -> Vec<String> {
        self.shared
            .graph()
            .users
            .get(user)
            .map(|u| u.batch_parts.clone())
            .unwrap_or_default()
    }

    /// Every `$batch` part an Outlook user's requests carried while the detailed log was on
    /// ([`Sim::set_detailed_log`]), with its headers and body (the newest 10,000).
    pub fn graph_batch_log(&self, user: &str) -> Vec<BatchPart> {
        self.shared
            .graph()
            .users
            .get(user)
            .map(|u| u.batch_log.clone())
            .unwrap_or_default()
    }

    /// Makes every delta and skip token of one Outlook contact folder expire (410
    /// `SyncStateNotFound`), as Graph does for one folder whose sync state it dropped.
    pub fn expire_graph_folder_delta(&self, user: &str, folder: &str) -> bool {
        let mut st = self.shared.graph();
        match st.users.get_mut(user) {
            Some(u) if u.folders.contains_key(folder) => {
                *u.folder_epochs.entry(folder.to_string()).or_insert(0) += 1;
                true
            }
            _ => false,
        }
    }

    /// The most API requests one user had in flight at once.
    pub fn peak_in_flight(&self, provider: Provider, user: &str) -> usize {
        let get = |m: &std::collections::HashMap<String, usize>| m.get(user).copied().unwrap_or(0);
        match provider {
            Provider::Google => get(&self.shared.google().peak_inflight),
            Provider::Outlook => get(&self.shared.graph().peak_inflight),
        }
    }

    /// Clears the `$batch` parts of every Outlook user.
    pub fn clear_graph_batch_parts(&self) {
        for u in self.shared.graph().users.values_mut() {
            u.batch_parts.clear();
            u.batch_log.clear();
        }
    }

    /// The log of API and OAuth requests served by one provider.
    pub fn requests(&self, provider: Provider) -> Vec<LogEntry> {
        self.shared.requests(provider)
    }

    /// The (client_id, client_secret) pairs seen at a provider's token endpoint.
    pub fn clients(&self, provider: Provider) -> Vec<(String, Option<String>)> {
        self.shared.clients(provider)
    }

    /// Clears the request log of one provider.
    pub fn clear_requests(&self, provider: Provider) {
        self.shared.clear_requests(provider);
    }

    /// Invalidates every cursor (sync token, delta token) of a user.
    pub fn expire_cursors(&self, provider: Provider, user: &str) -> bool {
        self.shared.expire_cursors(provider, user)
    }

    /// Revokes every grant (refresh and access token) of a user.
    pub fn revoke(&self, provider: Provider, user: &str) -> bool {
        self.shared.revoke(provider, user)
    }

    /// Expires every access token issued so far, on both providers.
    pub fn expire_access_tokens(&self) {
        self.shared.expire_access_tokens();
    }

    /// Adds a scripted answer ([`Script`]) for a provider's API requests.
    pub fn script(&self, provider: Provider, s: Script) {
        self.shared
            .with_state(provider, |scripts, _| scripts.add(s));
    }

    /// Removes a provider's scripted answers.
    pub fn clear_scripts(&self, provider: Provider) {
        self.shared
            .with_state(provider, |scripts, _| scripts.clear());
    }

    /// Whether the request log keeps each request's bearer token and body.
    pub fn set_detailed_log(&self, provider: Provider, on: bool) {
        self.shared.set_detailed_log(provider, on);
    }

    /// The most items a listing page holds, whatever the client asks for (`None`: the
    /// provider's own limit).
    pub fn set_page_cap(&self, provider: Provider, cap: Option<usize>) {
        self.shared.set_page_cap(provider, cap);
    }

    /// Moves the simulator's clock forward (token and cursor expiry use it).
    pub fn advance_clock(&self, by: Duration) {
        self.shared.advance_clock(by);
    }

    /// Calls a control-API route in process (the `/_sim` prefix is optional), e.g.
    /// `control(Provider::Google, "POST", "/_sim/users/alice@example.com/contacts/c12/star", None)`.
    /// Returns the HTTP status and the JSON body (`Null` when empty).
    pub fn control(
        &self,
        provider: Provider,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).unwrap_or_default())
            .unwrap_or_default();
        let path = if path.starts_with("/_sim/") {
            path.to_string()
        } else {
            format!("/_sim/{}", path.trim_start_matches('/'))
        };
        let req = common::Req::new(method, &path, Default::default(), bytes.into());
        let resp = common::control(&self.shared, provider, &req);
        (resp.status, resp.body_json())
    }

    /// Stops both servers.
    pub async fn stop(self) {
        for h in self.handles {
            h.stop(false).await;
        }
    }
}

fn bind(
    addr: SocketAddr,
    shared: SharedRef,
    provider: Provider,
) -> anyhow::Result<(actix_web::dev::Server, SocketAddr)> {
    let data = web::Data::new(shared);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(32 * 1024 * 1024))
            .default_service(web::to(move |req, body, data| {
                common::entry(provider, req, body, data)
            }))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(addr)?;
    let bound = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("server bound no address"))?;
    Ok((server.run(), bound))
}
