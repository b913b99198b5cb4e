//! Operator subcommands: `status`, `connect`, `disconnect`, `preview`, `demo`, `sim`.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};

use crate::app::{EXIT_CONFIG, EXIT_UNAVAILABLE};
use crate::cli::{ConnectArgs, DemoArgs};
use crate::config::{self, Config};
use crate::logging::Logging;
use crate::store::{Batch, Db, Op};

fn load(path: &Path) -> Result<Config, i32> {
    config::load(path).map_err(|e| {
        eprintln!("{e}");
        EXIT_CONFIG
    })
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Cannot start the async runtime: {e}");
            std::process::exit(1)
        }
    }
}

/// A client for the running daemon's API, with the operator's token (`admin_token_file`):
/// the CLI is the operator's tool. (A token file rather than a Unix socket: one
/// authenticated interface, and the file's owner and mode decide who may use the CLI.)
struct DaemonApi {
    base: String,
    token: Option<SecretString>,
    http: reqwest::Client,
}

impl DaemonApi {
    fn new(config: &Config) -> DaemonApi {
        let token = config.daemon.admin_token_file.as_ref().and_then(|p| {
            match config::read_secret_file(p) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("Cannot read the operator token: {e}.");
                    None
                }
            }
        });
        if config.daemon.admin_token_file.is_none() {
            eprintln!("Note: [daemon] admin_token_file is not set; the daemon will refuse operator requests.");
        }
        DaemonApi {
            base: daemon_base(config),
            token,
            http: cli_client(config, std::time::Duration::from_secs(30)),
        }
    }

    /// One request; its JSON answer, or the exit code after printing why it failed.
    fn call(&self, method: reqwest::Method, path: &str) -> Result<serde_json::Value, i32> {
        let res = runtime().block_on(async {
            let r = self.req(method, path).send().await?;
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            Ok::<_, reqwest::Error>((status, body))
        });
        match res {
            Ok((s, body)) if s.is_success() => Ok(body),
            Ok((s, body)) => {
                eprintln!(
                    "The daemon answered {s}: {}",
                    body["error"].as_str().unwrap_or("")
                );
                Err(1)
            }
            Err(e) => {
                eprintln!(
                    "Cannot reach the daemon at {}: {e}. Is `contact-sync run` running?",
                    self.base
                );
                Err(EXIT_UNAVAILABLE)
            }
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(t) => r.bearer_auth(t.expose_secret()),
            None => r,
        }
    }
}

/// The daemon's base URL as the CLI on the same host reaches it.
fn daemon_base(config: &Config) -> String {
    let mut listen = config.daemon.listen;
    if listen.ip().is_unspecified() {
        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if config.tls() { "https" } else { "http" };
    format!("{scheme}://{listen}")
}

/// An HTTP client that trusts the daemon's own certificate when it serves TLS.
fn cli_client(config: &Config, timeout: std::time::Duration) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout);
    if let Some(cert) = &config.daemon.tls_cert_file {
        match std::fs::read(config::secret_path(cert))
            .ok()
            .and_then(|pem| reqwest::Certificate::from_pem(&pem).ok())
        {
            Some(c) => b = b.add_root_certificate(c),
            None => eprintln!("Cannot read {} as a PEM certificate.", cert.display()),
        }
    }
    b.build().unwrap_or_else(|_| reqwest::Client::new())
}

pub fn status(path: &Path, account: Option<&str>, json: bool) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let api = DaemonApi::new(&config);
    let res = runtime().block_on(async {
        let url = match account {
            Some(a) => format!("/api/v1/accounts/{a}"),
            None => "/api/v1/accounts".to_string(),
        };
        let resp = api.req(reqwest::Method::GET, &url).send().await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    let (code, body) = match res {
        Ok(x) => x,
        Err(e) => {
            eprintln!(
                "Cannot reach the daemon at {}: {e}. Is `contact-sync run` running?",
                api.base
            );
            return EXIT_UNAVAILABLE;
        }
    };
    if !code.is_success() {
        eprintln!(
            "The daemon answered {code}: {}",
            body["error"].as_str().unwrap_or("")
        );
        return 1;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
        return 0;
    }
    let accounts = match body.get("accounts").and_then(|a| a.as_array()) {
        Some(list) => list.clone(),
        None => vec![body.clone()],
    };
    if let Some(e) = body.get("config_error").and_then(|e| e.as_str()) {
        println!("Configuration reload failed (previous configuration in force): {e}\n");
    }
    print!(
        "{}",
        status_table(&accounts, config.tz(), chrono::Utc::now())
    );
    if let Some(e) = body.get("audit_error").and_then(|e| e.as_str()) {
        println!(
            "\nThe audit log cannot be written ({} events wait in the store): {e}",
            body["audit_backlog"].as_u64().unwrap_or(0)
        );
    } else if let Some(n) = body["audit_backlog"].as_u64().filter(|n| *n > 0) {
        println!("\n{n} audit events wait to be written to the audit files.");
    }
    0
}

/// The `status` table: one row per account, times in the configured time zone with how long
/// ago they were, then each account's skip reasons and last error.
pub fn status_table(
    accounts: &[serde_json::Value],
    tz: chrono_tz::Tz,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    use comfy_table::{presets::UTF8_BORDERS_ONLY, CellAlignment, Table};
    use std::fmt::Write;
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "ACCOUNT",
        "PROVIDER",
        "GROUP",
        "DIRECTION",
        "STATE",
        "LAST SYNC",
        "ADDED crm/prov",
        "UPDATED crm/prov",
        "DELETED",
        "SKIPPED",
    ]);
    let mut notes = String::new();
    for a in accounts {
        let t = &a["today"];
        let skipped: u64 = t["skipped"]
            .as_object()
            .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
            .unwrap_or(0);
        let last = a["last_sync"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| crate::health::when(t.with_timezone(&chrono::Utc), tz, now))
            .unwrap_or_else(|| "never".into());
        table.add_row(vec![
            a["id"].as_str().unwrap_or("").to_string(),
            a["provider"].as_str().unwrap_or("").to_string(),
            a["group"].as_str().unwrap_or("").to_string(),
            a["direction"].as_str().unwrap_or("").to_string(),
            a["state"].as_str().unwrap_or("").to_string(),
            last,
            format!("{}/{}", t["added"]["to_crm"], t["added"]["to_provider"]),
            format!("{}/{}", t["updated"]["in_crm"], t["updated"]["in_provider"]),
            t["deleted"]["from_provider"].to_string(),
            skipped.to_string(),
        ]);
        let id = a["id"].as_str().unwrap_or("");
        if let Some(reasons) = t["skipped"].as_object() {
            let nonzero: Vec<String> = reasons
                .iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !nonzero.is_empty() {
                let _ = writeln!(notes, "{id}: skipped: {}", nonzero.join(", "));
            }
        }
        if let Some(e) = a["last_error"].as_str() {
            let _ = writeln!(notes, "{id}: last error: {e}");
        }
    }
    for i in 6..10 {
        if let Some(c) = table.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = table.to_string();
    out.push('\n');
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes);
    }
    out
}

/// `explain CONTACT|EMAIL|PHONE`: why a person is or is not in the CRM, and what happened
/// to them, from the running daemon.
pub fn explain(path: &Path, query: &str, json: bool) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let api = DaemonApi::new(&config);
    let q: String = url::form_urlencoded::byte_serialize(query.as_bytes()).collect();
    let found = match api.call(reqwest::Method::GET, &format!("/api/v1/search?q={q}")) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let empty = vec![];
    let contacts = found["contacts"].as_array().unwrap_or(&empty);
    let skipped = found["skipped"].as_array().unwrap_or(&empty);
    let story = if contacts.len() == 1 {
        match api.call(
            reqwest::Method::GET,
            &format!("/api/v1/contacts/{}/history", contacts[0]["id"]),
        ) {
            Ok(v) => Some(v),
            Err(code) => return code,
        }
    } else {
        None
    };
    if json {
        let out = serde_json::json!({"search": found, "story": story});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return 0;
    }
    print!(
        "{}",
        explain_text(query, contacts, skipped, story.as_ref(), config.tz())
    );
    if contacts.is_empty() && skipped.is_empty() {
        1
    } else {
        0
    }
}

/// The text `explain` prints.
pub fn explain_text(
    query: &str,
    contacts: &[serde_json::Value],
    skipped: &[serde_json::Value],
    story: Option<&serde_json::Value>,
    tz: chrono_tz::Tz,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let list = |v: &serde_json::Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    if contacts.is_empty() {
        let _ = writeln!(out, "No CRM contact matches \"{query}\".");
    } else if contacts.len() > 1 {
        let _ = writeln!(
            out,
            "{} CRM contacts match \"{query}\"; explain one by its id:",
            contacts.len()
        );
        for c in contacts {
            let _ = writeln!(
                out,
                "  #{}  {}  {}",
                c["id"],
                c["name"].as_str().unwrap_or(""),
                list(&c["emails"])
            );
        }
    }
    if let Some(s) = story {
        let c = &s["contact"];
        let _ = writeln!(
            out,
            "{} (CRM #{}){}",
            s["name"].as_str().unwrap_or(""),
            s["id"],
            if s["deleted"] == true {
                " — deleted from the CRM"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "  emails:  {}", list(&c["emails"]));
        let _ = writeln!(out, "  phones:  {}", list(&c["phones"]));
        if let Some(co) = c["company"].as_str() {
            let _ = writeln!(out, "  company: {co}");
        }
        for l in s["links"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  linked to {} as {}",
                l["account"].as_str().unwrap_or(""),
                l["provider_id"].as_str().unwrap_or("")
            );
        }
        let _ = writeln!(out, "History:");
        for e in s["events"].as_array().into_iter().flatten() {
            let when = e["time"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| {
                    t.with_timezone(&tz)
                        .format("%Y-%m-%d %H:%M:%S %Z")
                        .to_string()
                })
                .unwrap_or_default();
            let mut line = format!(
                "  {when}  {:<16} {}",
                e["action"].as_str().unwrap_or(""),
                e["account"].as_str().unwrap_or("")
            );
            if let Some(d) = e["direction"].as_str() {
                let _ = write!(line, " ({d})");
            }
            let fields = list(&e["fields"]);
            if !fields.is_empty() {
                let _ = write!(line, " fields: {fields}");
            }
            if let Some(r) = e["reason"].as_str() {
                let _ = write!(line, " — {r}");
            }
            let _ = writeln!(out, "{line}");
        }
    }
    if !skipped.is_empty() {
        let _ = writeln!(out, "Not synced into the CRM (skipped):");
        for r in skipped {
            let _ = writeln!(
                out,
                "  {}: {} — account {}, provider id {} {}",
                r["reason"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or(""),
                r["account"].as_str().unwrap_or(""),
                r["provider_id"].as_str().unwrap_or(""),
                list(&r["emails"])
            );
        }
    }
    out
}

/// Stores a grant directly in the store (the daemon is not running).
fn store_grant_offline(config: &Config, account: &str, token: &SecretString) -> Result<(), String> {
    let db = Db::open(
        &config.daemon.data_dir,
        crate::normalize::region(&config.daemon.default_region),
    )
    .map_err(|e| format!("cannot open the store (is the daemon running elsewhere?): {e}"))?;
    let sealer = crate::app::load_sealer(config, &db).map_err(|e| e.to_string())?;
    let had_grant = db.grant(account).map_err(|e| e.to_string())?.is_some();
    let provider = config
        .account(account)
        .map(|a| a.provider.as_str())
        .unwrap_or("");
    let mut b = Batch::default();
    b.push(Op::PutGrant {
        account: account.to_string(),
        sealed: sealer.seal(account, token),
    });
    for op in
        crate::sync::outbox::requeue_after_new_grant(&db, account).map_err(|e| e.to_string())?
    {
        b.push(op);
    }
    // Written to the audit file by the daemon's drainer when it next starts.
    b.push(Op::Audit(crate::audit::AuditEvent::grant_stored(
        account, provider, had_grant,
    )));
    db.commit_durable(&b).map_err(|e| e.to_string())
}

/// Hands a refresh token to the running daemon, or stores it directly when none runs.
pub fn store_grant(
    config: &Config,
    account: &str,
    token: &SecretString,
) -> Result<&'static str, String> {
    let api = DaemonApi::new(config);
    let sent = runtime().block_on(async {
        api.req(
            reqwest::Method::PUT,
            &format!("/api/v1/accounts/{account}/grant"),
        )
        .json(&serde_json::json!({ "refresh_token": token.expose_secret() }))
        .send()
        .await
    });
    match sent {
        Ok(r) if r.status().is_success() => Ok("handed to the running daemon"),
        Ok(r) => Err(format!(
            "the running daemon refused the grant: HTTP {}",
            r.status()
        )),
        Err(e) if e.is_connect() => store_grant_offline(config, account, token).map(|_| "stored"),
        Err(e) => Err(format!("cannot reach the daemon: {e}")),
    }
}

pub fn connect(path: &Path, args: ConnectArgs) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(account) = config.account(&args.account).cloned() else {
        eprintln!(
            "Account {:?} is not in {}; add an [[accounts]] entry first.",
            args.account,
            path.display()
        );
        return EXIT_CONFIG;
    };
    let token = if let Some(file) = &args.refresh_token_file {
        match config::read_secret_file(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{e}");
                return 1;
            }
        }
    } else {
        let ep = match crate::oauth_flow::endpoints(&config, &account) {
            Ok(ep) => ep,
            Err(e) => {
                eprintln!("{e}");
                return EXIT_CONFIG;
            }
        };
        if args.device_code && account.provider != crate::config::ProviderKind::Outlook {
            eprintln!(
                "--device-code is for Outlook accounts; Google accounts use the browser flow."
            );
            return 2;
        }
        let system = actix::System::new();
        let got = system.block_on(async {
            if args.device_code {
                crate::oauth_flow::device_code(&ep, args.timeout).await
            } else {
                crate::oauth_flow::loopback(&ep, !args.no_browser, args.timeout).await
            }
        });
        match got {
            Ok(t) => t,
            Err(e) => {
                eprintln!("Authorization of {} failed: {e}.", args.account);
                return 1;
            }
        }
    };
    match store_grant(&config, &args.account, &token) {
        Ok(how) => {
            println!(
                "Refresh token for {} {how} (encrypted at rest). Any previous grant of this account is replaced.",
                args.account
            );
            0
        }
        Err(e) => {
            eprintln!("Cannot store the refresh token: {e}");
            1
        }
    }
}

/// Revokes a grant at the provider where that exists (Google). Returns what happened.
pub async fn revoke_grant(
    config: &Config,
    account: &crate::config::AccountConfig,
    token: &SecretString,
) -> Result<&'static str, String> {
    match account.provider {
        crate::config::ProviderKind::Google => {
            let url = config
                .providers
                .google
                .as_ref()
                .map(|g| g.revoke_url.clone())
                .ok_or("[providers.google] is not configured")?;
            crate::oauth_flow::revoke_google(&url, token).await?;
            Ok("revoked at Google")
        }
        crate::config::ProviderKind::CardDav => Ok("nothing to revoke: CardDAV accounts use a password file"),
        crate::config::ProviderKind::Outlook => Ok(
            "not revoked: Microsoft has no endpoint to revoke one refresh token; remove the app's consent at https://account.live.com/consent/Manage or in Entra ID if needed",
        ),
    }
}

/// Reads, revokes and forgets a grant in the store directly (the daemon is not running).
fn disconnect_offline(config: &Config, account: &str) -> Result<String, String> {
    let db = Db::open(
        &config.daemon.data_dir,
        crate::normalize::region(&config.daemon.default_region),
    )
    .map_err(|e| e.to_string())?;
    let mut note = String::from("no grant was stored");
    if let Some(sealed) = db.grant(account).map_err(|e| e.to_string())? {
        note = match (
            crate::app::load_sealer(config, &db),
            config.account(account),
        ) {
            (Ok(sealer), Some(acc)) => match sealer.open(account, &sealed) {
                Ok(token) => match runtime().block_on(revoke_grant(config, acc, &token)) {
                    Ok(n) => n.to_string(),
                    Err(e) => format!("not revoked ({e})"),
                },
                Err(e) => format!("not revoked ({e})"),
            },
            (Err(e), _) => format!("not revoked ({e})"),
            (_, None) => "not revoked (the account is no longer in the configuration)".into(),
        };
    }
    let provider = config
        .account(account)
        .map(|a| a.provider.as_str())
        .unwrap_or("");
    db.commit_durable(&Batch {
        ops: vec![
            Op::DeleteGrant(account.to_string()),
            // Written to the audit file by the daemon's drainer when it next starts.
            Op::Audit(crate::audit::AuditEvent::new(
                account,
                provider,
                crate::audit::Action::Disconnected,
            )),
        ],
    })
    .map_err(|e| e.to_string())?;
    Ok(note)
}

pub fn disconnect(path: &Path, account: &str) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let api = DaemonApi::new(&config);
    let sent = runtime().block_on(async {
        let r = api
            .req(
                reqwest::Method::POST,
                &format!("/api/v1/accounts/{account}/revoke"),
            )
            .send()
            .await?;
        let note = if r.status().is_success() {
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            v["result"].as_str().unwrap_or("").to_string()
        } else {
            format!("not revoked (the daemon answered HTTP {})", r.status())
        };
        let r = api
            .req(
                reqwest::Method::DELETE,
                &format!("/api/v1/accounts/{account}/grant"),
            )
            .send()
            .await?;
        Ok::<_, reqwest::Error>((r.status(), note))
    });
    let res = match sent {
        Ok((s, note)) if s.is_success() => Ok(note),
        Ok((s, _)) => Err(format!("the running daemon answered HTTP {s}")),
        Err(e) if e.is_connect() => disconnect_offline(&config, account),
        Err(e) => Err(e.to_string()),
    };
    match res {
        Ok(note) => {
            println!("Grant of {account} forgotten ({note}); its synced contacts stay in the CRM.");
            0
        }
        Err(e) => {
            eprintln!("Cannot disconnect {account}: {e}");
            1
        }
    }
}

pub fn preview(path: &Path, account: &str, limit: usize) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if config.account(account).is_none() {
        eprintln!("Account {account:?} is not in {}.", path.display());
        return EXIT_CONFIG;
    }
    let mut api = DaemonApi::new(&config);
    // A full listing of a large address book takes a while.
    api.http = cli_client(&config, std::time::Duration::from_secs(600));
    let url = format!("/api/v1/accounts/{account}/preview?limit={limit}");
    match api.call(reqwest::Method::POST, &url) {
        Ok(body) => {
            print!("{}", preview_text(&body));
            0
        }
        Err(code) => code,
    }
}

/// Sends one request to the running daemon and prints `done` when it succeeds.
fn daemon_call(path: &Path, method: reqwest::Method, url: &str, done: &str) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match DaemonApi::new(&config).call(method, url) {
        Ok(_) => {
            println!("{done}");
            0
        }
        Err(code) => code,
    }
}

pub fn approve(path: &Path, account: &str) -> i32 {
    daemon_call(
        path,
        reqwest::Method::POST,
        &format!("/api/v1/accounts/{account}/approve"),
        &format!("Held deletions of {account} approved; the next round applies them."),
    )
}

pub fn restore(path: &Path, contact: u64) -> i32 {
    daemon_call(
        path,
        reqwest::Method::POST,
        &format!("/api/v1/contacts/{contact}/restore"),
        &format!("Contact {contact} restored."),
    )
}

/// The text `preview` prints for the daemon's answer.
pub fn preview_text(body: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Dry run of {} ({}, {}): {} provider changes; nothing was written.",
        body["account"].as_str().unwrap_or(""),
        body["direction"].as_str().unwrap_or(""),
        if body["full"].as_bool().unwrap_or(false) {
            "full listing"
        } else {
            "changes since the last sync"
        },
        body["changes"]
    );
    if body["over_limit"].as_bool().unwrap_or(false) {
        let _ = writeln!(
            out,
            "WARNING: the account would have {} synced contacts, over contact_limit {}; a real sync would stop in state limit_exceeded.",
            body["projected_links"], body["contact_limit"]
        );
    }
    let _ = writeln!(out);
    for kind in crate::api::ops::KINDS {
        let n = body["counts"][kind].as_u64().unwrap_or(0);
        let _ = writeln!(out, "{:<10} {n}", format!("{kind}:"));
        if kind == "skip" && n > 0 {
            if let Some(reasons) = body["skipped"].as_object() {
                for (r, c) in reasons {
                    if c.as_u64().unwrap_or(0) > 0 {
                        let _ = writeln!(out, "{:<10}   {r}: {c}", "");
                    }
                }
            }
        }
        for e in body["examples"][kind].as_array().into_iter().flatten() {
            let mut line = format!("    {}", e["provider_id"].as_str().unwrap_or(""));
            if let Some(name) = e["name"].as_str().filter(|n| !n.is_empty()) {
                let _ = write!(line, " ({name})");
            }
            if let Some(id) = e["crm_id"].as_u64() {
                let _ = write!(line, " -> CRM #{id}");
            }
            let fields: Vec<&str> = e["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str())
                .collect();
            if !fields.is_empty() {
                let _ = write!(line, " [{}]", fields.join(", "));
            }
            if let Some(r) = e["reason"].as_str() {
                let _ = write!(line, " [{r}]");
            }
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// The demo's temporary directory, removed when the demo ends.
struct DemoDir(std::path::PathBuf);

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn demo_config(dir: &Path, listen: std::net::SocketAddr, g: &str, m: &str) -> String {
    let d = dir.display();
    format!(
        r#"# contact-sync demo: simulated providers, temporary data. Edit me: the daemon reloads.
[daemon]
data_dir = "{d}/data"
listen = "{listen}"
api_token_file = "{d}/api-token"
admin_token_file = "{d}/admin-token"
token_key_file = "{d}/token-key"
audit_dir = "{d}/audit"
poll_interval = "10s"
timezone = "UTC"

[providers.google]
client_id = "demo.apps.googleusercontent.com"
api_base = "{g}"
auth_url = "{g}/o/oauth2/v2/auth"
token_url = "{g}/token"
revoke_url = "{g}/revoke"

[providers.outlook]
client_id = "00000000-0000-0000-0000-00000000dem0"
tenant = "common"
api_base = "{m}/v1.0"
auth_url = "{m}/common/oauth2/v2.0/authorize"
token_url = "{m}/common/oauth2/v2.0/token"
device_code_url = "{m}/common/oauth2/v2.0/devicecode"

[[accounts]]
id = "alice-gmail"
provider = "google"
group = "all"
direction = "two-way"

[[accounts]]
id = "bob-gmail-starred"
provider = "google"
group = "starred"
direction = "one-way"

[[accounts]]
id = "carol-outlook"
provider = "outlook"
group = "all"
direction = "one-way"
"#
    )
}

/// Demo accounts: (account id, simulated provider, simulated user).
const DEMO_USERS: [(&str, crate::sim::Provider, &str); 3] = [
    (
        "alice-gmail",
        crate::sim::Provider::Google,
        "alice@example.com",
    ),
    (
        "bob-gmail-starred",
        crate::sim::Provider::Google,
        "bob@example.com",
    ),
    (
        "carol-outlook",
        crate::sim::Provider::Outlook,
        "carol@example.com",
    ),
];

/// The summary `demo` prints after the first sync.
pub fn demo_summary(rt: &crate::runtime::Runtime) -> String {
    use std::fmt::Write;
    let today = rt.today();
    let mut out = String::from("First sync done:\n");
    let _ = writeln!(
        out,
        "  {:<18} {:<8} {:<8} {:<8} {:>6} {:>8} {:>8} {:>8}",
        "ACCOUNT", "PROVIDER", "GROUP", "DIRECT.", "ADDED", "UPDATED", "SKIPPED", "DELETED"
    );
    for a in rt.accounts() {
        let m = rt.db.metrics(&a.config.id, &today).unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<18} {:<8} {:<8} {:<8} {:>6} {:>8} {:>8} {:>8}",
            a.config.id,
            a.config.provider.as_str(),
            a.config.group.as_str(),
            a.config.direction.as_str(),
            m.added_to_crm + m.added_to_provider,
            m.updated_in_crm + m.updated_in_provider,
            m.skipped.values().sum::<u64>(),
            m.deleted_from_provider
        );
        if let Some(e) = &a.status.last_error {
            let _ = writeln!(out, "  {:<18} last error: {e}", "");
        }
    }
    let _ = writeln!(out, "CRM contacts: {}", rt.db.contact_count().unwrap_or(0));
    out
}

async fn run_demo(args: DemoArgs, logging: &Logging, dir: &Path) -> Result<i32, String> {
    use crate::sim::{SeedUser, Sim, SimOptions};
    let mut starred = SeedUser::new("bob@example.com", args.contacts, args.seed);
    starred.starred_share = 0.3;
    let mut outlook = SeedUser::new("carol@example.com", args.contacts, args.seed);
    outlook.child_folders = 2;
    let sim = Sim::start(SimOptions {
        seed: args.seed,
        google_users: vec![
            SeedUser::new("alice@example.com", args.contacts, args.seed),
            starred,
        ],
        outlook_users: vec![outlook],
        ..SimOptions::default()
    })
    .await
    .map_err(|e| format!("cannot start the simulator: {e:#}"))?;
    std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
    // Both tokens and the token key, made for this demo and removed with it.
    let api_token = crate::secrets::random_hex(24);
    let admin_token = crate::secrets::random_hex(24);
    crate::secrets::write_private(&dir.join("api-token"), api_token.as_bytes())
        .map_err(|e| format!("cannot write the API token file: {e}"))?;
    crate::secrets::write_private(&dir.join("admin-token"), admin_token.as_bytes())
        .map_err(|e| format!("cannot write the operator token file: {e}"))?;
    crate::secrets::generate_key(&dir.join("token-key")).map_err(|e| e.to_string())?;
    let config_path = dir.join("config.toml");
    std::fs::write(
        &config_path,
        demo_config(dir, args.listen, &sim.google_base, &sim.graph_base),
    )
    .map_err(|e| format!("cannot write the demo configuration: {e}"))?;
    let config = config::load(&config_path).map_err(|e| e.to_string())?;
    // The three grants, sealed, before the daemon starts.
    {
        let db = Db::open(
            &config.daemon.data_dir,
            crate::normalize::region(&config.daemon.default_region),
        )
        .map_err(|e| e.to_string())?;
        let sealer = crate::app::load_sealer(&config, &db).map_err(|e| e.to_string())?;
        let mut b = Batch::default();
        for (account, provider, user) in DEMO_USERS {
            let token = sim
                .refresh_token(provider, user)
                .ok_or_else(|| format!("the simulator issued no token for {user}"))?;
            b.push(Op::PutGrant {
                account: account.to_string(),
                sealed: sealer.seal(account, &SecretString::from(token)),
            });
        }
        db.commit_durable(&b).map_err(|e| e.to_string())?;
        db.flush().map_err(|e| e.to_string())?;
    }
    // sled releases its file lock a moment after the handle above is dropped (its flusher
    // thread holds the last reference): retry while the store is still locked.
    let mut attempt = 0;
    let daemon = loop {
        attempt += 1;
        let started = crate::app::start(crate::app::Boot {
            config: config.clone(),
            config_path: Some(config_path.clone()),
            logging: Some(logging),
            factory: None,
        })
        .await;
        match started {
            Ok(d) => break d,
            Err(e) if e.code == crate::app::EXIT_STORE && attempt < 50 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    println!("contact-sync demo: simulated Google and Outlook accounts, no credentials needed.");
    println!("Dashboard:  http://{}/", daemon.addr);
    println!(
        "Log in:     http://{}/login#token={admin_token}   (opens an operator session)",
        daemon.addr
    );
    println!(
        "Operator token: {admin_token}   (dashboard login; the CLI reads it from admin_token_file)"
    );
    println!("CRM token:      {api_token}   (e.g. curl -H 'Authorization: Bearer {api_token}' http://{}/api/v1/contacts)", daemon.addr);
    println!(
        "Config:     {} (edit it: the daemon reloads)",
        config_path.display()
    );
    println!(
        "Simulator:  Google {}  Microsoft {}",
        sim.google_base, sim.graph_base
    );
    println!("Waiting for the first sync of every account ...");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let synced = loop {
        let accounts = daemon.rt.accounts();
        let done = |a: &crate::runtime::AccountRuntime| a.status.last_sync.is_some();
        if !accounts.is_empty() && accounts.iter().all(done) {
            break true;
        }
        let stuck = accounts.iter().any(|a| {
            !done(a)
                && matches!(
                    a.status.state,
                    crate::model::AccountState::ReauthRequired
                        | crate::model::AccountState::NotConnected
                        | crate::model::AccountState::LimitExceeded
                )
        });
        if stuck || std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    print!("{}", demo_summary(&daemon.rt));
    if !synced {
        eprintln!("Not every account finished its first sync; see the log above.");
    }
    let _ = std::io::stdout().flush();
    if args.once {
        daemon.shutdown().await;
        sim.stop().await;
        return Ok(if synced { 0 } else { 1 });
    }
    println!("Running until Ctrl-C.");
    let _ = std::io::stdout().flush();
    daemon.wait_for_shutdown().await;
    sim.stop().await;
    Ok(0)
}

pub fn demo(args: DemoArgs, logging: &Logging) -> i32 {
    let dir = std::env::temp_dir().join(format!(
        "contact-sync-demo-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let guard = DemoDir(dir.clone());
    let system = actix::System::new();
    let res = system.block_on(run_demo(args, logging, &dir));
    drop(guard);
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("The demo failed: {e}");
            1
        }
    }
}

pub fn sim(args: crate::sim::SimArgs) -> i32 {
    let system = actix::System::new();
    match system.block_on(crate::sim::run_cli(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Simulator failed: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SkipReason;
    use crate::sync::Action;

    #[test]
    fn demo_config_is_valid_and_declares_three_accounts() {
        let text = demo_config(
            Path::new("/tmp/x"),
            "127.0.0.1:8631".parse().unwrap(),
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
        );
        let c = config::parse(&text).unwrap();
        let ids: Vec<_> = c.accounts.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, DEMO_USERS.map(|u| u.0));
        assert_eq!(
            c.providers.outlook.unwrap().token_url(),
            "http://127.0.0.1:2/common/oauth2/v2.0/token"
        );
    }

    #[test]
    fn preview_prints_counts_reasons_and_examples() {
        let actions = vec![
            Action::Create {
                provider_id: "people/c1".into(),
                crm_id: 7,
            },
            Action::Create {
                provider_id: "people/c2".into(),
                crm_id: 8,
            },
            Action::Skip {
                provider_id: "people/c3".into(),
                reason: SkipReason::NoName,
            },
            Action::Update {
                provider_id: "people/c4".into(),
                crm_id: 3,
                changed: vec!["emails"],
            },
        ];
        let names = [("people/c1".to_string(), "Ann Lee".to_string())].into();
        let mut v = crate::api::ops::summarise(&actions, &names, 1);
        assert_eq!(v["counts"]["create"], 2);
        assert_eq!(v["counts"]["delete"], 0);
        assert_eq!(v["skipped"]["no_name"], 1);
        assert_eq!(v["examples"]["create"].as_array().unwrap().len(), 1);
        v["account"] = serde_json::json!("acc");
        v["changes"] = serde_json::json!(4);
        v["full"] = serde_json::json!(true);
        let text = preview_text(&v);
        assert!(text.contains("create:    2"), "{text}");
        assert!(text.contains("people/c1 (Ann Lee) -> CRM #7"), "{text}");
        assert!(!text.contains("people/c2"), "limit 1: {text}");
        assert!(text.contains("no_name: 1"), "{text}");
        assert!(text.contains("people/c4 -> CRM #3 [emails]"), "{text}");
        assert!(text.contains("full listing"), "{text}");
    }

    #[test]
    fn status_table_lists_breakdowns() {
        let a = serde_json::json!({
            "id": "acc", "provider": "google", "group": "all", "direction": "one-way",
            "state": "idle", "last_sync": null, "last_error": "boom",
            "today": {"added": {"to_crm": 3, "to_provider": 1}, "updated": {"in_crm": 2, "in_provider": 0},
                      "deleted": {"from_provider": 4}, "skipped": {"no_name": 2, "too_many_phones": 0}}
        });
        let t = status_table(&[a], chrono_tz::UTC, chrono::Utc::now());
        assert!(t.contains("3/1") && t.contains("2/0"), "{t}");
        assert!(
            t.contains("skipped: no_name=2") && !t.contains("too_many_phones="),
            "{t}"
        );
        assert!(t.contains("last error: boom"), "{t}");
    }

    #[test]
    fn status_table_prints_times_in_the_timezone_with_how_long_ago_and_aligns_long_ids() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T15:07:05Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let row = |id: &str| {
            serde_json::json!({
                "id": id, "provider": "google", "group": "all", "direction": "one-way",
                "state": "idle", "last_sync": "2026-11-29T15:04:04.114602794+00:00",
                "today": {"added": {"to_crm": 3, "to_provider": 1}, "updated": {"in_crm": 2, "in_provider": 0},
                          "deleted": {"from_provider": 4}, "skipped": {}}
            })
        };
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let t = status_table(
            &[row("a"), row("a-very-long-account-id-for-the-sales-team")],
            berlin,
            now,
        );
        assert!(t.contains("2026-11-29 16:04:04 CET (3 min ago)"), "{t}");
        assert!(!t.contains(".114602794"), "{t}");
        // Every row of the table is as wide as the header: the columns line up.
        let widths: std::collections::BTreeSet<usize> = t
            .lines()
            .take_while(|l| !l.is_empty())
            .map(|l| l.chars().count())
            .collect();
        assert_eq!(widths.len(), 1, "{t}");
    }

    #[test]
    fn explain_says_why_a_person_is_not_in_the_crm() {
        let skipped = vec![serde_json::json!({
            "account": "sales", "provider_id": "people/c1", "reason": "no_email_or_phone",
            "name": "Jane Doe", "emails": [], "phones": []
        })];
        let t = explain_text("Jane Doe", &[], &skipped, None, chrono_tz::UTC);
        assert!(t.contains("No CRM contact matches \"Jane Doe\""), "{t}");
        assert!(
            t.contains("no_email_or_phone: Jane Doe — account sales"),
            "{t}"
        );
    }
}
