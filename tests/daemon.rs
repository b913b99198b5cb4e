//! The daemon's skeleton, run as a real process: config errors, the API's auth and
//! validation, durability across restarts, reload, and clean shutdown.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::json;

const GOOGLE: &str =
    "[providers.google]\nclient_id = \"cid\"\n\n[providers.outlook]\nclient_id = \"oid\"\n";

fn account(id: &str, provider: &str, group: &str, direction: &str) -> String {
    format!("\n[[accounts]]\nid = \"{id}\"\nprovider = \"{provider}\"\ngroup = \"{group}\"\ndirection = \"{direction}\"\n")
}

#[test]
fn check_config_names_line_and_key_and_exits_78() {
    let d = TestDaemon::new();
    let text = d.config_text(
        "",
        &format!("{GOOGLE}{}", account("a", "google", "sometimes", "one-way")),
    );
    d.write_config(&text);
    let out = std::process::Command::new(bin())
        .args(["check-config", &path_str(&d.config_path())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = text.lines().position(|l| l.contains("sometimes")).unwrap() + 1;
    assert!(err.contains(&format!(":{line}:")), "{err}");
    assert!(err.contains("group"), "{err}");

    // The daemon refuses to start on it, with the same exit code.
    let out = std::process::Command::new(bin())
        .args(["--config", &path_str(&d.config_path()), "run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));

    let ok = d.config_text(
        "",
        &format!("{GOOGLE}{}", account("a", "google", "all", "one-way")),
    );
    d.write_config(&ok);
    let out = std::process::Command::new(bin())
        .args(["check-config", &path_str(&d.config_path())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn api_rejects_missing_or_wrong_token_with_401() {
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text("", ""));
    d.start().await;
    for path in ["/api/v1/contacts", "/api/v1/accounts", "/api/v1/companies"] {
        let r = d
            .http
            .get(format!("{}{path}", d.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} without token");
        let r = d
            .http
            .get(format!("{}{path}", d.base()))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("token"));
    }
    // /healthz and /metrics need no token.
    let r = d
        .http
        .get(format!("{}/healthz", d.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(d.stop().await.code(), Some(0));
}

#[tokio::test]
async fn api_rejects_bad_bodies_with_400_naming_the_field() {
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text("", ""));
    d.start().await;
    let cases = [
        (json!({"first_name": "Ann"}), "emails"),
        (json!({"emails": ["a@x.org"]}), "first_name"),
        (
            json!({"first_name": "Ann", "emails": ["not-an-email"]}),
            "emails[0]",
        ),
        (
            json!({"first_name": "Ann", "emails": (0..11).map(|i| format!("e{i}@x.org")).collect::<Vec<_>>()}),
            "emails",
        ),
        (
            json!({"first_name": "Ann", "phones": (0..11).map(|i| format!("+1201555010{i}")).collect::<Vec<_>>()}),
            "phones",
        ),
        (
            json!({"first_name": "Ann", "emails": ["a@x.org"], "birthday": "1990-02-30"}),
            "birthday",
        ),
        (
            json!({"first_name": "Ann", "emails": ["a@x.org"], "colour": "red"}),
            "colour",
        ),
        (json!({"first_name": 5, "emails": ["a@x.org"]}), ""),
    ];
    for (body, field) in cases {
        let (s, v) = d
            .api(Method::POST, "/api/v1/contacts", Some(body.clone()))
            .await;
        assert_eq!(s, 400, "{body} -> {v}");
        if !field.is_empty() {
            assert_eq!(v["field"], field, "{body} -> {v}");
        }
    }
    // Malformed JSON.
    let r = d
        .http
        .post(format!("{}/api/v1/contacts", d.base()))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"first_name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // An oversized body.
    let big = "x".repeat(300 * 1024);
    let (s, _) = d
        .api(
            Method::POST,
            "/api/v1/contacts",
            Some(json!({"first_name": big, "emails": ["a@x.org"]})),
        )
        .await;
    assert_eq!(s, 413);
    assert!(
        d.get("/api/v1/contacts").await["contacts"]
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing was written"
    );
}

#[tokio::test]
async fn contacts_created_through_the_api_survive_a_restart() {
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text("", ""));
    d.start().await;
    let (s, created) = d
        .api(
            Method::POST,
            "/api/v1/contacts",
            Some(json!({
                "first_name": "Ann", "last_name": "Lee", "emails": ["ann@x.org"],
                "phones": ["+1 201 555 0100"], "company_name": "ACME",
                "address": {"street": "1 Main St", "city": "Springfield", "region": null, "postal_code": "12345", "country": "US"},
                "job_title": "CEO", "birthday": "1980-05-06"
            })),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_u64().unwrap();
    assert_eq!(created["company"]["name"], "ACME");
    assert_eq!(created["birthday"], "1980-05-06");
    assert_eq!(created["links"], json!([]));
    // Patch: absent keys stay, null clears.
    let (s, patched) = d
        .api(
            Method::PATCH,
            &format!("/api/v1/contacts/{id}"),
            Some(json!({"job_title": null, "last_name": "Lee-Smith"})),
        )
        .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["job_title"], serde_json::Value::Null);
    assert_eq!(patched["emails"], json!(["ann@x.org"]));
    let (s, second) = d
        .api(
            Method::POST,
            "/api/v1/contacts",
            Some(json!({"first_name": "Bo", "phones": ["+12015550101"], "company_name": "acme"})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(
        second["company"]["id"], created["company"]["id"],
        "one company per normalised name"
    );
    let (s, _) = d
        .api(
            Method::DELETE,
            &format!("/api/v1/contacts/{}", second["id"]),
            None,
        )
        .await;
    assert_eq!(s, 204);

    assert_eq!(
        d.stop().await.code(),
        Some(0),
        "clean exit on SIGTERM: {}",
        d.log()
    );
    d.start().await;
    let got = d.get(&format!("/api/v1/contacts/{id}")).await;
    assert_eq!(got["last_name"], "Lee-Smith");
    assert_eq!(got["address"]["city"], "Springfield");
    let all = d.get("/api/v1/contacts").await;
    assert_eq!(all["contacts"].as_array().unwrap().len(), 1);
    let (s, _) = d.api(Method::GET, "/api/v1/contacts/999999", None).await;
    assert_eq!(s, 404);
    let companies = d.get("/api/v1/companies").await;
    assert_eq!(companies["companies"].as_array().unwrap().len(), 1);
    // Paging.
    for i in 0..5 {
        d.api(
            Method::POST,
            "/api/v1/contacts",
            Some(json!({"first_name": format!("P{i}"), "emails": [format!("p{i}@x.org")]})),
        )
        .await;
    }
    let p1 = d.get("/api/v1/contacts?limit=4").await;
    assert_eq!(p1["contacts"].as_array().unwrap().len(), 4);
    let next = p1["next"].as_u64().unwrap();
    let p2 = d
        .get(&format!("/api/v1/contacts?limit=4&after={next}"))
        .await;
    assert_eq!(p2["contacts"].as_array().unwrap().len(), 2);
    assert!(p2["next"].is_null());
    // The CRM deletion is in the audit log.
    assert!(d.audit_lines().iter().any(|l| l["action"] == "deleted"));
}

async fn accounts(d: &TestDaemon) -> Vec<serde_json::Value> {
    d.get("/api/v1/accounts").await["accounts"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn reload_adds_removes_and_changes_accounts_and_keeps_config_on_error() {
    let mut d = TestDaemon::new();
    let head = d.config_text("", GOOGLE);
    let base = |accts: &str| format!("{head}{accts}");
    let v1 = base(&format!(
        "{}{}",
        account("a", "google", "all", "one-way"),
        account("b", "outlook", "all", "one-way")
    ));
    d.write_config(&v1);
    d.start().await;
    let a = accounts(&d).await;
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["state"], "not_connected");

    // Add c, remove b, change a's direction.
    let v2 = base(&format!(
        "{}{}",
        account("a", "google", "all", "two-way"),
        account("c", "google", "starred", "one-way")
    ));
    d.write_config(&v2);
    d.wait_for("reload v2", Duration::from_secs(10), || async {
        let a = accounts(&d).await;
        let ids: Vec<_> = a
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect();
        ids == ["a", "c"] && a[0]["direction"] == "two-way"
    })
    .await;

    // Disable c: it stays listed, stopped.
    let v3 = v2.replace(
        "group = \"starred\"\ndirection = \"one-way\"\n",
        "group = \"starred\"\ndirection = \"one-way\"\nenabled = false\n",
    );
    d.write_config(&v3);
    d.wait_for("c stopped", Duration::from_secs(10), || async {
        accounts(&d)
            .await
            .iter()
            .any(|x| x["id"] == "c" && x["state"] == "stopped")
    })
    .await;

    // A broken file is rejected; the running config stays and the error is visible.
    d.write_config(&format!(
        "{v3}\n[[accounts]]\nid = \"zz\"\nprovider = \"yahoo\"\n"
    ));
    d.wait_for("reload error", Duration::from_secs(10), || async {
        let v = d.get("/api/v1/accounts").await;
        v["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("provider") && e.contains("yahoo"))
    })
    .await;
    assert_eq!(accounts(&d).await.len(), 2);
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
        metrics.contains("contact_sync_config_reload_failures_total 1"),
        "{metrics}"
    );
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
        page.contains("failed to reload"),
        "dashboard shows the notice"
    );

    // A change of a key that needs a restart is rejected by name.
    d.write_config(&v3.replace(
        &format!("listen = \"127.0.0.1:{}\"", d.port),
        "listen = \"127.0.0.1:1\"",
    ));
    d.wait_for("listen rejected", Duration::from_secs(10), || async {
        d.get("/api/v1/accounts").await["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("daemon.listen"))
    })
    .await;

    // SIGHUP reloads too: fix the file and signal.
    d.write_config(&v1);
    d.signal("HUP");
    d.wait_for("reload v1", Duration::from_secs(10), || async {
        let v = d.get("/api/v1/accounts").await;
        v["config_error"].is_null()
            && v["accounts"].as_array().unwrap().len() == 2
            && v["accounts"][1]["id"] == "b"
    })
    .await;
    assert_eq!(d.stop().await.code(), Some(0));
}

#[tokio::test]
async fn status_command_reads_the_running_daemon() {
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text(
        "",
        &format!(
            "{GOOGLE}{}",
            account("sales", "google", "starred", "two-way")
        ),
    ));
    d.start().await;
    let out = tokio::process::Command::new(bin())
        .args(["--config", &path_str(&d.config_path()), "status"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("sales") && text.contains("starred") && text.contains("not_connected"),
        "{text}"
    );
    let out = tokio::process::Command::new(bin())
        .args([
            "--config",
            &path_str(&d.config_path()),
            "status",
            "sales",
            "--json",
        ])
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["today"]["added"]["to_crm"], 0);
    d.stop().await;
    let out = tokio::process::Command::new(bin())
        .args(["--config", &path_str(&d.config_path()), "status"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "daemon down");
}

#[test]
fn a_taken_listen_address_is_a_clean_start_up_error() {
    let d = TestDaemon::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = d.config_text("", "").replace(
        &format!("127.0.0.1:{}", d.port),
        &format!("127.0.0.1:{port}"),
    );
    d.write_config(&text);
    let out = std::process::Command::new(bin())
        .args(["--config", &path_str(&d.config_path()), "run"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// The config watcher survives its directory being replaced: after the directory holding
/// the file is removed and created again, it is re-created (and says so in the log), and a
/// later edit is still applied without SIGHUP.
#[tokio::test]
async fn config_watcher_is_recreated_after_its_directory_is_replaced_and_edits_still_apply() {
    let mut d = TestDaemon::new();
    let conf = d.dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let path = conf.join("config.toml");
    let head = d.config_text("", GOOGLE);
    let v1 = format!("{head}{}", account("a", "google", "all", "one-way"));
    std::fs::write(&path, &v1).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(d.dir.path().join("daemon.log"))
        .unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("--config")
        .arg(&path)
        .arg("run")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .env("RUST_LOG", "info,contact_sync=debug");
    for (k, v) in &d.env {
        cmd.env(k, v);
    }
    d.child = Some(cmd.spawn().unwrap());
    d.wait_for("healthz", Duration::from_secs(30), || async {
        d.http
            .get(format!("{}/healthz", d.base()))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert_eq!(accounts(&d).await.len(), 1);

    // The directory is replaced: removed, then created again with the same file.
    std::fs::remove_dir_all(&conf).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(&path, &v1).unwrap();
    d.wait_for(
        "the watcher re-created",
        Duration::from_secs(15),
        || async { d.log().contains("config watcher re-created") },
    )
    .await;

    // An edit in the new directory, saved the way editors do, is applied.
    let v2 = format!(
        "{head}{}{}",
        account("a", "google", "all", "one-way"),
        account("b", "outlook", "all", "one-way")
    );
    let tmp = conf.join(".config.toml.tmp");
    std::fs::write(&tmp, &v2).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    d.wait_for("the edit applied", Duration::from_secs(15), || async {
        accounts(&d).await.len() == 2
    })
    .await;
    let reloads = d
        .log()
        .matches("Configuration file changed; reloading.")
        .count();
    assert!(reloads >= 1, "{}", d.log());

    // A deployment that swaps the directory by renames: a new directory is prepared next
    // to it and moved into place.
    let recreated = d.log().matches("config watcher re-created").count();
    let staged = d.dir.path().join("conf.new");
    std::fs::create_dir(&staged).unwrap();
    std::fs::write(staged.join("config.toml"), &v2).unwrap();
    std::fs::rename(&conf, d.dir.path().join("conf.old")).unwrap();
    std::fs::rename(&staged, &conf).unwrap();
    d.wait_for(
        "the watcher re-created again",
        Duration::from_secs(15),
        || async { d.log().matches("config watcher re-created").count() > recreated },
    )
    .await;
    let v3 = format!("{head}{}", account("c", "google", "starred", "one-way"));
    std::fs::write(&tmp, &v3).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    d.wait_for(
        "the edit after the swap applied",
        Duration::from_secs(15),
        || async {
            let a = accounts(&d).await;
            a.len() == 1 && a[0]["id"] == "c"
        },
    )
    .await;
}
