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

/// A client for the running daemon's API.
struct DaemonApi {
    base: String,
    token: Option<SecretString>,
    http: reqwest::Client,
}

impl DaemonApi {
    fn new(config: &Config) -> DaemonApi {
        let token = config
            .daemon
            .api_token_file
            .as_ref()
            .and_then(|p| config::read_secret_file(p).ok());
        DaemonApi {
            base: format!("http://{}", config.daemon.listen),
            token,
            http: crate::providers::http::client(std::time::Duration::from_secs(30)),
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
    print!("{}", status_table(&accounts));
    0
}

/// The `status` table.
pub fn status_table(accounts: &[serde_json::Value]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:<8} {:<8} {:<16} {:<26} {:>16} {:>18} {:>9} {:>8}",
        "ACCOUNT",
        "PROVIDER",
        "GROUP",
        "DIRECT.",
        "STATE",
        "LAST SYNC",
        "ADDED crm/prov",
        "UPDATED crm/prov",
        "DELETED",
        "SKIPPED"
    );
    for a in accounts {
        let t = &a["today"];
        let skipped: u64 = t["skipped"]
            .as_object()
            .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:<8} {:<8} {:<16} {:<26} {:>16} {:>18} {:>9} {:>8}",
            a["id"].as_str().unwrap_or(""),
            a["provider"].as_str().unwrap_or(""),
            a["group"].as_str().unwrap_or(""),
            a["direction"].as_str().unwrap_or(""),
            a["state"].as_str().unwrap_or(""),
            a["last_sync"].as_str().unwrap_or("never"),
            format!("{}/{}", t["added"]["to_crm"], t["added"]["to_provider"]),
            format!("{}/{}", t["updated"]["in_crm"], t["updated"]["in_provider"]),
            t["deleted"]["from_provider"],
            skipped
        );
        if let Some(reasons) = t["skipped"].as_object() {
            let nonzero: Vec<String> = reasons
                .iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !nonzero.is_empty() {
                let _ = writeln!(out, "{:<16} skipped: {}", "", nonzero.join(", "));
            }
        }
        if let Some(e) = a["last_error"].as_str() {
            let _ = writeln!(out, "{:<16} last error: {e}", "");
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
    let mut b = Batch::default();
    b.push(Op::PutGrant {
        account: account.to_string(),
        sealed: sealer.seal(token),
    });
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
    if config.account(&args.account).is_none() {
        eprintln!(
            "Account {:?} is not in {}; add an [[accounts]] entry first.",
            args.account,
            path.display()
        );
        return EXIT_CONFIG;
    }
    let Some(file) = &args.refresh_token_file else {
        eprintln!("The interactive OAuth flow is not available in this build yet; use --refresh-token-file FILE to import a refresh token.");
        return 2;
    };
    let token = match config::read_secret_file(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    match store_grant(&config, &args.account, &token) {
        Ok(how) => {
            println!(
                "Refresh token for {} {how} (encrypted at rest).",
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

pub fn disconnect(path: &Path, account: &str) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let api = DaemonApi::new(&config);
    let sent = runtime().block_on(async {
        api.req(
            reqwest::Method::DELETE,
            &format!("/api/v1/accounts/{account}/grant"),
        )
        .send()
        .await
    });
    let res = match sent {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("the running daemon answered HTTP {}", r.status())),
        Err(e) if e.is_connect() => Db::open(
            &config.daemon.data_dir,
            crate::normalize::region(&config.daemon.default_region),
        )
        .map_err(|e| e.to_string())
        .and_then(|db| {
            db.commit_durable(&Batch {
                ops: vec![Op::DeleteGrant(account.to_string())],
            })
            .map_err(|e| e.to_string())
        }),
        Err(e) => Err(e.to_string()),
    };
    match res {
        Ok(()) => {
            println!("Grant of {account} forgotten; its synced contacts stay in the CRM.");
            0
        }
        Err(e) => {
            eprintln!("Cannot disconnect {account}: {e}");
            1
        }
    }
}

/// Sends one request to the running daemon and prints its answer.
fn daemon_call(path: &Path, method: reqwest::Method, url: &str, done: &str) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let api = DaemonApi::new(&config);
    let res = runtime().block_on(async {
        let r = api.req(method, url).send().await?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        Ok::<_, reqwest::Error>((status, body))
    });
    match res {
        Ok((s, _)) if s.is_success() => {
            println!("{done}");
            0
        }
        Ok((s, body)) => {
            eprintln!(
                "The daemon answered {s}: {}",
                body["error"].as_str().unwrap_or("")
            );
            1
        }
        Err(e) => {
            eprintln!(
                "Cannot reach the daemon at {}: {e}. Is `contact-sync run` running?",
                api.base
            );
            EXIT_UNAVAILABLE
        }
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

pub fn preview(_path: &Path, _account: &str, _limit: usize) -> i32 {
    eprintln!("`preview` is not available in this build yet.");
    2
}

pub fn demo(_args: DemoArgs, _logging: &Logging) -> i32 {
    eprintln!("`demo` is not available in this build yet.");
    2
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
