//! What an administrator touches, run as real processes against the simulated providers:
//! `connect` (loopback redirect and device code), `disconnect`, `preview`, `demo`,
//! `/metrics` through promtool, and no secret in logs, audit or `status --json`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use contact_sync::sim::{Provider, SeedUser, Sim, SimOptions};
use reqwest::Method;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const ALICE: &str = "alice@example.com";
const OLGA: &str = "olga@example.com";

async fn sim(contacts: usize) -> Sim {
    Sim::start(SimOptions {
        google_users: vec![SeedUser::new(ALICE, contacts, 7)],
        outlook_users: vec![SeedUser::new(OLGA, contacts, 7)],
        ..SimOptions::default()
    })
    .await
    .expect("sim starts")
}

fn providers(sim: &Sim) -> String {
    let g = &sim.google_base;
    let m = &sim.graph_base;
    format!(
        "[providers.google]\nclient_id = \"gcid\"\napi_base = \"{g}\"\nauth_url = \"{g}/o/oauth2/v2/auth\"\ntoken_url = \"{g}/token\"\nrevoke_url = \"{g}/revoke\"\n\n\
         [providers.outlook]\nclient_id = \"ocid\"\ntenant = \"common\"\napi_base = \"{m}/v1.0\"\nauth_url = \"{m}/common/oauth2/v2.0/authorize\"\ntoken_url = \"{m}/common/oauth2/v2.0/token\"\ndevice_code_url = \"{m}/common/oauth2/v2.0/devicecode\"\n"
    )
}

fn account(id: &str, provider: &str, enabled: bool) -> String {
    format!("\n[[accounts]]\nid = \"{id}\"\nprovider = \"{provider}\"\ngroup = \"all\"\ndirection = \"one-way\"\nenabled = {enabled}\n")
}

fn cli(d: &TestDaemon) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin());
    c.arg("--config")
        .arg(d.config_path())
        .env("CONTACT_SYNC_FAST_RETRY", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs `connect ACCOUNT --no-browser`, reads the printed URL, follows it like a browser
/// (the simulator approves and redirects to the loopback listener), returns the output.
async fn connect_by_browser(d: &TestDaemon, account: &str) -> String {
    let mut child = cli(d)
        .args(["connect", account, "--no-browser", "--timeout", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let url = loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line))
            .await
            .expect("connect prints the URL")
            .unwrap();
        assert!(n > 0, "connect ended without a URL: {seen}");
        seen.push_str(&line);
        if line.trim_start().starts_with("http") {
            break line.trim().to_string();
        }
    };
    let q: std::collections::HashMap<String, String> = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(q["code_challenge_method"], "S256", "{url}");
    assert!(q["state"].len() >= 16);
    let browser = reqwest::Client::new();
    let page = browser.get(&url).send().await.unwrap();
    assert!(page.status().is_success(), "{}", page.status());
    assert!(page.text().await.unwrap().contains("close this window"));
    let st = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("connect exits")
        .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).await.unwrap();
    seen.push_str(&rest);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(st.success(), "connect failed: {seen}{err}");
    format!("{seen}{err}")
}

async fn wait_synced(d: &TestDaemon, account: &str) -> serde_json::Value {
    d.wait_for(
        &format!("{account} synced"),
        Duration::from_secs(60),
        || async {
            let a = d.get(&format!("/api/v1/accounts/{account}")).await;
            a["last_sync"].is_string() && a["state"] == "idle"
        },
    )
    .await;
    d.get(&format!("/api/v1/accounts/{account}")).await
}

fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!s.is_empty());
        assert!(!text.contains(s), "a secret appears in {what}");
    }
}

async fn status_json(d: &TestDaemon) -> String {
    let out = cli(d).args(["status", "--json"]).output().await.unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).to_string()
}

async fn promtool_check(metrics: &str) {
    let Ok(mut child) = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing in CI (.ci/install-test-deps.sh installs the prometheus package)"
        );
        eprintln!("SKIP promtool check: promtool is not installed");
        return;
    };
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(metrics.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_google_by_loopback_then_disconnect_revokes_and_no_secret_leaks() {
    let sim = sim(30).await;
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text(
        "",
        &format!("{}{}", providers(&sim), account("acc", "google", true)),
    ));
    d.start().await;
    assert_eq!(
        d.get("/api/v1/accounts/acc").await["state"],
        "not_connected"
    );

    let out = connect_by_browser(&d, "acc").await;
    assert!(out.contains("handed to the running daemon"), "{out}");
    let a = wait_synced(&d, "acc").await;
    assert!(a["today"]["added"]["to_crm"].as_u64().unwrap() > 0, "{a}");
    let first_token = sim.refresh_token(Provider::Google, ALICE).unwrap();

    // Connecting again replaces the grant (a new refresh token is issued and used).
    let out2 = connect_by_browser(&d, "acc").await;
    let second_token = sim.refresh_token(Provider::Google, ALICE).unwrap();
    assert_ne!(first_token, second_token);
    d.admin(Method::POST, "/api/v1/sync", None).await;
    wait_synced(&d, "acc").await;

    // /metrics is valid Prometheus text.
    let metrics = d
        .http
        .get(format!("{}/metrics", d.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("contact_sync_added_total{account=\"acc\""),
        "{metrics}"
    );
    promtool_check(&metrics).await;

    // No secret in the daemon log, the audit files, `status --json` or connect's output.
    let secrets = [first_token.as_str(), second_token.as_str(), TOKEN];
    let status = status_json(&d).await;
    assert!(status.contains("\"acc\""));
    assert_no_secret("status --json", &status, &secrets);
    assert_no_secret("connect output", &format!("{out}{out2}"), &secrets);
    let audit: String = std::fs::read_dir(d.audit_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(!audit.is_empty(), "the sync was audited");
    assert_no_secret("the audit log", &audit, &secrets);

    // Disconnect: revoked at Google, grant forgotten, contacts kept.
    sim.clear_requests(Provider::Google);
    let out = cli(&d).args(["disconnect", "acc"]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("revoked at Google"), "{text}");
    assert!(sim
        .requests(Provider::Google)
        .iter()
        .any(|r| r.method == "POST" && r.path.ends_with("/revoke") && r.status == 200));
    d.wait_for("not connected", Duration::from_secs(10), || async {
        d.get("/api/v1/accounts/acc").await["state"] == "not_connected"
    })
    .await;
    let contacts = d.get("/api/v1/contacts").await;
    assert!(
        !contacts["contacts"].as_array().unwrap().is_empty(),
        "synced data stays"
    );
    assert_eq!(d.stop().await.code(), Some(0));
    assert_no_secret("the daemon log", &d.log(), &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_outlook_by_loopback_and_by_device_code() {
    let sim = sim(10).await;
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text(
        "",
        &format!("{}{}", providers(&sim), account("ol", "outlook", true)),
    ));
    d.start().await;
    let out = connect_by_browser(&d, "ol").await;
    assert!(
        out.contains("http://localhost:"),
        "Microsoft's loopback redirect: {out}"
    );
    wait_synced(&d, "ol").await;

    // The device authorization grant: the simulator answers authorization_pending twice,
    // then approves.
    let out = cli(&d)
        .args(["connect", "ol", "--device-code", "--timeout", "60s"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("devicelogin") && text.contains("enter the code"),
        "{text}"
    );
    assert!(text.contains("handed to the running daemon"), "{text}");
    let token = sim.refresh_token(Provider::Outlook, OLGA).unwrap();
    assert_no_secret("connect output", &text, &[token.as_str()]);

    // Microsoft cannot revoke: disconnect says so and still forgets the grant.
    let out = cli(&d).args(["disconnect", "ol"]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("Microsoft has no endpoint"), "{text}");
    // A Google-only option is refused for Outlook's sibling and vice versa.
    d.write_config(&d.config_text(
        "",
        &format!(
            "{}{}{}",
            providers(&sim),
            account("ol", "outlook", true),
            account("g", "google", true)
        ),
    ));
    d.wait_for("reload", Duration::from_secs(10), || async {
        d.get("/api/v1/accounts").await["accounts"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    let out = cli(&d)
        .args(["connect", "g", "--device-code"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_counts_what_the_first_sync_then_does() {
    let sim = sim(40).await;
    let token = sim.refresh_token(Provider::Google, ALICE).unwrap();
    let mut d = TestDaemon::new();
    let head = d.config_text("", &providers(&sim));
    d.write_config(&format!("{head}{}", account("acc", "google", false)));
    d.start().await;
    let file = d.dir.path().join("rt");
    std::fs::write(&file, &token).unwrap();
    let out = cli(&d)
        .args(["connect", "acc", "--refresh-token-file"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());

    // The API: counts by kind and skip reason, first N of each.
    let (s, p) = d
        .admin(Method::POST, "/api/v1/accounts/acc/preview?limit=3", None)
        .await;
    assert_eq!(s, 200, "{p}");
    let count = |k: &str| p["counts"][k].as_u64().unwrap();
    assert_eq!(count("create") + count("link") + count("skip"), 40, "{p}");
    assert!(count("create") > 0);
    assert_eq!(p["full"], true);
    assert!(p["examples"]["create"].as_array().unwrap().len() <= 3);
    let skipped_by_reason: u64 = p["skipped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(skipped_by_reason, count("skip"));
    // Nothing was written.
    assert!(d.get("/api/v1/contacts").await["contacts"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(d.get("/api/v1/accounts/acc").await["linked"], 0);

    // The CLI prints the same counts.
    let out = cli(&d)
        .args(["preview", "acc", "--limit", "2"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("create:    {}", count("create"))),
        "{text}"
    );
    assert!(text.contains("nothing was written"), "{text}");

    // The real sync does what the preview said.
    d.write_config(&format!("{head}{}", account("acc", "google", true)));
    let a = wait_synced(&d, "acc").await;
    assert_eq!(
        a["today"]["added"]["to_crm"].as_u64().unwrap(),
        count("create"),
        "{a} vs {p}"
    );
    for (reason, n) in p["skipped"].as_object().unwrap() {
        assert_eq!(&a["today"]["skipped"][reason], n, "{reason}");
    }
    // A second preview finds nothing new.
    let (_, p2) = d
        .admin(Method::POST, "/api/v1/accounts/acc/preview", None)
        .await;
    assert_eq!(p2["counts"]["create"], 0, "{p2}");
    let (s, _) = d
        .admin(Method::POST, "/api/v1/accounts/nope/preview", None)
        .await;
    assert_eq!(s, 404);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_add_account_flow_stores_the_grant() {
    let sim = sim(10).await;
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text(
        "",
        &format!("{}{}", providers(&sim), account("acc", "google", true)),
    ));
    d.start().await;
    // Without a session the dashboard is the login form.
    let r = d.http.get(format!("{}/", d.base())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("action=\"/login\""));
    let op = d.login().await;
    let page = d
        .http
        .get(format!("{}/", d.base()))
        .header("cookie", &op.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("action=\"/oauth/google/start\"")
            && page.contains("name=\"account\" value=\"acc\""),
        "Add account form"
    );

    let no_redirect = no_redirect();
    let start = |account: &str, csrf: &str| {
        no_redirect
            .post(format!("{}/oauth/google/start", d.base()))
            .header("cookie", &op.cookie)
            .form(&[("account", account), ("csrf", csrf)])
            .send()
    };
    // Unknown accounts are refused.
    let r = start("zz", &op.csrf).await.unwrap();
    assert_eq!(r.status(), 404);
    // A form without the session's CSRF token is refused.
    let r = start("acc", "forged").await.unwrap();
    assert_eq!(r.status(), 403);
    let r = start("acc", &op.csrf).await.unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let to_provider = r.headers()["location"].to_str().unwrap().to_string();
    assert!(to_provider.contains("code_challenge_method=S256"));
    let r = no_redirect.get(&to_provider).send().await.unwrap();
    let callback = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        callback.starts_with(&format!("{}/oauth/google/callback?", d.base())),
        "{callback}"
    );
    // Without the browser's cookie, the callback is refused.
    let r = no_redirect.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // A full, proper round trip.
    let r = start("acc", &op.csrf).await.unwrap();
    let cookie2 = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(cookie, cookie2);
    let r = no_redirect
        .get(r.headers()["location"].to_str().unwrap())
        .send()
        .await
        .unwrap();
    let callback = r.headers()["location"].to_str().unwrap().to_string();
    let r = no_redirect
        .get(&callback)
        .header("cookie", &cookie2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("connected"));
    wait_synced(&d, "acc").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_once_syncs_and_prints_a_summary() {
    let out = tokio::process::Command::new(bin())
        .args([
            "demo",
            "--once",
            "--listen",
            "127.0.0.1:0",
            "--contacts",
            "50",
        ])
        .env("CONTACT_SYNC_FAST_RETRY", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), out)
        .await
        .expect("demo --once ends")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Dashboard:  http://127.0.0.1:"), "{text}");
    assert!(
        !text.contains("127.0.0.1:0/"),
        "the bound port is printed: {text}"
    );
    for acc in ["alice-gmail", "bob-gmail-starred", "carol-outlook"] {
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with(acc))
            .unwrap_or_else(|| panic!("{acc}: {text}"));
        let added: u64 = row.split_whitespace().nth(4).unwrap().parse().unwrap();
        assert!(added > 0, "{row}");
    }
    let crm: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("CRM contacts: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(crm > 50, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_disconnect_without_a_running_daemon_use_the_store() {
    let sim = sim(10).await;
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text(
        "",
        &format!("{}{}", providers(&sim), account("acc", "google", true)),
    ));
    let out = connect_by_browser(&d, "acc").await;
    assert!(out.contains("stored (encrypted at rest)"), "{out}");
    let token = sim.refresh_token(Provider::Google, ALICE).unwrap();
    let store: Vec<u8> = walk(&d.data_dir());
    assert!(
        !store.windows(token.len()).any(|w| w == token.as_bytes()),
        "the refresh token is not in the store in clear"
    );
    d.start().await;
    wait_synced(&d, "acc").await;
    d.stop().await;
    let out = cli(&d).args(["disconnect", "acc"]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("revoked at Google"), "{text}");
    d.start().await;
    d.wait_for("not connected", Duration::from_secs(10), || async {
        d.get("/api/v1/accounts/acc").await["state"] == "not_connected"
    })
    .await;
    d.stop().await;
}

/// Every byte of every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<u8> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.extend(std::fs::read(&p).unwrap_or_default());
        }
    }
    out
}
