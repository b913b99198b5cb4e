//! Security (SPEC §8, docs/security.md): each test runs the real binary and shows an
//! attack failing.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use contact_sync::sim::{Provider, SeedUser};
use reqwest::Method;

fn google_account(id: &str, direction: &str) -> String {
    account_toml(id, "google", "all", direction)
}

/// A daemon with one Google account `acc` on the simulator, connected and started.
async fn daemon_with_account(sim: &contact_sync::sim::Sim, daemon_extra: &str) -> TestDaemon {
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text(
        daemon_extra,
        &format!("{}{}", providers_for(sim), google_account("acc", "one-way")),
    ));
    let token = sim
        .refresh_token(Provider::Google, "alice@example.com")
        .unwrap();
    d.connect("acc", &token).await;
    d.start().await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_start_is_refused_without_an_operator_session() {
    let sim = start_sim(vec![SeedUser::new("alice@example.com", 3, 1)], vec![]).await;
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text(
        "",
        &format!(
            "{}{}",
            providers_for(&sim),
            google_account("acc", "two-way")
        ),
    ));
    d.start().await;
    let c = no_redirect();
    let url = format!("{}/oauth/google/start", d.base());
    // The attack of issue 14: open the start URL with no credentials at all.
    let r = c.get(format!("{url}?account=acc")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("operator"));
    let r = c
        .post(&url)
        .form(&[("account", "acc")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Neither the CRM token nor a made-up session cookie opens it.
    let r = c
        .post(&url)
        .bearer_auth(TOKEN)
        .header("cookie", "contact_sync_session=0123456789abcdef")
        .form(&[("account", "acc"), ("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The CRM token cannot log in to the dashboard.
    let r = c
        .post(format!("{}/login", d.base()))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("set-cookie").is_none());
    // A callback with a state this daemon never issued is refused before anything else.
    let r = c
        .get(format!(
            "{}/oauth/google/callback?state=forged&code=attacker-code",
            d.base()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // No authorization ever reached the provider, and no grant was stored.
    assert!(sim
        .requests(Provider::Google)
        .iter()
        .all(|r| !r.path.contains("/token")));
    assert_eq!(d.account("acc").await["state"], "not_connected");
    // With an operator session (and its CSRF token) the same start redirects.
    let op = d.login().await;
    let r = c
        .post(&url)
        .header("cookie", &op.cookie)
        .form(&[("account", "acc"), ("csrf", op.csrf.as_str())])
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 303, "{}", r.text().await.unwrap());
    d.stop().await;
}

#[tokio::test]
async fn a_foreign_host_header_is_refused_on_every_route() {
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text("allowed_hosts = [\"crm-sync.example.com\"]", ""));
    d.start().await;
    let port = d.port;
    for path in [
        "/",
        "/login",
        "/healthz",
        "/metrics",
        "/api/v1/contacts",
        "/api/v1/accounts",
        "/oauth/google/callback?state=x",
    ] {
        // DNS rebinding: the browser sends the attacker's name in Host.
        let r = d
            .http
            .get(format!("{}{path}", d.base()))
            .header("host", format!("rebind.attacker.example:{port}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 421, "{path}");
        assert!(r.text().await.unwrap().contains("allowed_hosts"), "{path}");
        for ok in [
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            "crm-sync.example.com".to_string(),
        ] {
            let r = d
                .http
                .get(format!("{}{path}", d.base()))
                .header("host", &ok)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_ne!(r.status(), 421, "{path} with Host {ok}");
        }
    }
    // A write sent by another site's page (its Origin) is refused too.
    let r = d
        .http
        .post(format!("{}/api/v1/contacts", d.base()))
        .header("origin", "https://attacker.example")
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"first_name": "A", "last_name": "B", "emails": ["a@b.c"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        d.get("/api/v1/contacts").await["contacts"],
        serde_json::json!([])
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_token_cannot_approve_connect_restore_preview_or_sync() {
    let sim = start_sim(vec![SeedUser::new("alice@example.com", 5, 2)], vec![]).await;
    let mut d = daemon_with_account(&sim, "").await;
    d.wait_synced("acc", None).await;
    let forbidden = [
        (
            Method::PUT,
            "/api/v1/accounts/acc/grant",
            Some(serde_json::json!({"refresh_token": "attacker-grant"})),
        ),
        (Method::DELETE, "/api/v1/accounts/acc/grant", None),
        (Method::POST, "/api/v1/accounts/acc/approve", None),
        (Method::POST, "/api/v1/accounts/acc/preview", None),
        (Method::POST, "/api/v1/accounts/acc/revoke", None),
        (Method::POST, "/api/v1/contacts/1/restore", None),
        (Method::POST, "/api/v1/sync", None),
    ];
    for (m, path, body) in forbidden {
        let (s, v) = d.api(m.clone(), path, body).await;
        assert_eq!(s, 403, "{m} {path}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains("operator") && msg.contains("admin_token_file"),
            "{msg}"
        );
    }
    // The grant is the one the operator connected: the account still syncs.
    let a = d.account("acc").await;
    assert_eq!(a["state"], "idle", "{a}");
    // The CRM token keeps its own role: contacts, companies, account status.
    let (s, _) = d
        .api(
            Method::POST,
            "/api/v1/contacts",
            Some(serde_json::json!({"first_name": "Ann", "last_name": "Lee", "emails": ["ann@example.com"]})),
        )
        .await;
    assert_eq!(s, 201);
    d.get("/api/v1/companies").await;
    // The operator token may do what the CRM token may not.
    let (s, v) = d
        .admin(Method::POST, "/api/v1/accounts/acc/approve", None)
        .await;
    assert_eq!(s, 202, "{v}");
    // The CLI uses the operator token.
    let out = tokio::process::Command::new(bin())
        .arg("--config")
        .arg(d.config_path())
        .args(["status", "acc"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.stop().await;
}

/// A loopback listener that counts connections: the "other host" a hostile photo URL names.
fn trap() -> (u16, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            h.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: image/jpeg\r\ncontent-length: 4\r\n\r\n\xff\xd8\xff\xd9");
        }
    });
    (port, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photo_urls_on_link_local_or_other_hosts_are_not_fetched() {
    let sim = start_sim(vec![SeedUser::new("alice@example.com", 0, 1)], vec![]).await;
    let (trap_port, hits) = trap();
    let mut ids = vec![];
    for (first, url) in [
        (
            "Metadata",
            "http://169.254.169.254/latest/meta-data/photo.jpg".to_string(),
        ),
        (
            "Elsewhere",
            format!("http://127.0.0.1:{trap_port}/photo.jpg"),
        ),
        (
            "Plainhttp",
            format!("http://lh3.googleusercontent.com:{trap_port}/a.jpg"),
        ),
    ] {
        let (s, v) = sim.control(
            Provider::Google,
            "POST",
            "/_sim/users/alice@example.com/contacts",
            Some(serde_json::json!({
                "names": [{"givenName": first, "familyName": "Photo"}],
                "emailAddresses": [{"value": format!("{}@example.com", first.to_lowercase())}],
            })),
        );
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let (s, v) = sim.control(
            Provider::Google,
            "PUT",
            &format!("/_sim/users/alice@example.com/contacts/{id}/photo-url"),
            Some(serde_json::json!({ "url": url })),
        );
        assert_eq!(s, 204, "{v}");
        ids.push(id);
    }
    let d = daemon_with_account(&sim, "").await;
    d.wait_synced("acc", None).await;
    let contacts = d.contacts().await;
    assert_eq!(contacts.len(), 3, "{contacts:?}");
    for c in &contacts {
        assert_eq!(c["has_photo"], false, "{c}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the other host was contacted"
    );
    assert!(d.log().contains("not fetched"), "{}", d.log());
    drop(ids);
}

#[tokio::test]
async fn run_without_a_token_key_refuses_and_creates_none() {
    let d = TestDaemon::new();
    let text = d.config_text("", "").replace(
        &format!(
            "token_key_file = \"{}/token-key\"\n",
            d.dir.path().display()
        ),
        "",
    );
    assert!(!text.contains("token_key_file"));
    d.write_config(&text);
    let out = tokio::process::Command::new(bin())
        .arg("--config")
        .arg(d.config_path())
        .arg("run")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("No token key") && err.contains("contact-sync gen-key"),
        "{err}"
    );
    // Nothing was made next to the grants.
    let made: Vec<_> = std::fs::read_dir(d.data_dir())
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !made.iter().any(|n| n.to_string_lossy().contains("key")),
        "{made:?}"
    );

    // A key that others can read is refused, naming the file.
    use std::os::unix::fs::PermissionsExt;
    let key = d.dir.path().join("token-key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    d.write_config(&d.config_text("", ""));
    let out = tokio::process::Command::new(bin())
        .arg("--config")
        .arg(d.config_path())
        .arg("run")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains(&key.display().to_string()) && err.contains("chmod 600"),
        "{err}"
    );

    // `gen-key` makes one (0600) and never overwrites it.
    let fresh = d.dir.path().join("fresh-key");
    let out = std::process::Command::new(bin())
        .args(["gen-key"])
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&fresh).unwrap();
    let out = std::process::Command::new(bin())
        .args(["gen-key"])
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&fresh).unwrap(), before);
}

fn open_store(d: &TestDaemon) -> contact_sync::store::Db {
    // sled lets go of its lock a moment after the previous handle is dropped.
    for _ in 0..100 {
        if let Ok(db) = contact_sync::store::Db::open(&d.data_dir(), phonenumber::country::Id::US) {
            return db;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("store stays locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_moved_to_another_account_does_not_decrypt() {
    use contact_sync::store::{Batch, Op};
    let sim = start_sim(
        vec![
            SeedUser::new("alice@example.com", 4, 1),
            SeedUser::new("mallory@example.com", 4, 2),
        ],
        vec![],
    )
    .await;
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text(
        "",
        &format!(
            "{}{}{}",
            providers_for(&sim),
            google_account("sales", "two-way"),
            google_account("intern", "one-way")
        ),
    ));
    d.connect(
        "sales",
        &sim.refresh_token(Provider::Google, "alice@example.com")
            .unwrap(),
    )
    .await;
    d.connect(
        "intern",
        &sim.refresh_token(Provider::Google, "mallory@example.com")
            .unwrap(),
    )
    .await;
    // Someone with write access to the store copies the intern's grant over the sales one.
    {
        let db = open_store(&d);
        let theirs = db.grant("intern").unwrap().unwrap();
        let mut b = Batch::default();
        b.push(Op::PutGrant {
            account: "sales".into(),
            sealed: theirs,
        });
        db.commit_durable(&b).unwrap();
        db.flush().unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    d.start().await;
    let a = d.wait_state("sales", "error").await;
    assert!(
        a["last_error"]
            .as_str()
            .unwrap()
            .contains("another account"),
        "{a}"
    );
    d.wait_synced("intern", None).await;
    // Nothing of mallory's address book reached the CRM through the sales account.
    for c in d.contacts().await {
        assert!(
            c["links"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["account"] != "sales"),
            "{c}"
        );
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_sealed_before_binding_are_resealed_to_their_account_at_start() {
    use contact_sync::store::{Batch, Op};
    use secrecy::SecretString;
    let sim = start_sim(vec![SeedUser::new("alice@example.com", 3, 1)], vec![]).await;
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text(
        "",
        &format!(
            "{}{}",
            providers_for(&sim),
            google_account("acc", "one-way")
        ),
    ));
    {
        let db = open_store(&d);
        let sealer = contact_sync::secrets::Sealer::load(&d.dir.path().join("token-key")).unwrap();
        let token = sim
            .refresh_token(Provider::Google, "alice@example.com")
            .unwrap();
        let mut b = Batch::default();
        b.push(Op::PutGrant {
            account: "acc".into(),
            sealed: sealer.seal_legacy(&SecretString::from(token)),
        });
        db.commit_durable(&b).unwrap();
        db.flush().unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    d.start().await;
    d.wait_synced("acc", None).await;
    d.stop().await;
    let db = open_store(&d);
    let sealed = db.grant("acc").unwrap().unwrap();
    assert_eq!(sealed[0], contact_sync::secrets::SEALED_V2);
}

#[tokio::test]
async fn non_loopback_listen_needs_allow_remote_and_tls() {
    let d = TestDaemon::new();
    let check = |text: String| {
        d.write_config(&text);
        std::process::Command::new(bin())
            .arg("--config")
            .arg(d.config_path())
            .arg("check-config")
            .output()
            .unwrap()
    };
    let remote = d.config_text("", "").replace(
        &format!("127.0.0.1:{}", d.port),
        &format!("0.0.0.0:{}", d.port),
    );
    let out = check(remote.clone());
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_remote"));
    let out = check(remote.replace("[daemon]\n", "[daemon]\nallow_remote = true\n"));
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls_cert_file"));
    let out = check(remote.replace(
        "[daemon]\n",
        "[daemon]\nallow_remote = true\ntls_cert_file = \"/etc/c.pem\"\ntls_key_file = \"/etc/k.pem\"\n",
    ));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_key_rotation_reseals_grants_under_the_new_key() {
    let sim = start_sim(vec![SeedUser::new("alice@example.com", 3, 1)], vec![]).await;
    let mut d = daemon_with_account(&sim, "").await;
    d.wait_synced("acc", None).await;
    d.stop().await;
    // The documented rotation: the old key becomes the previous one, a new key takes its
    // place, and the daemon re-seals at start.
    let key = d.dir.path().join("token-key");
    let previous = d.dir.path().join("token-key.previous");
    std::fs::rename(&key, &previous).unwrap();
    let out = std::process::Command::new(bin())
        .arg("gen-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let rest = format!(
        "{}{}",
        providers_for(&sim),
        google_account("acc", "one-way")
    );
    d.write_config(&d.config_text(
        &format!("previous_token_key_file = \"{}\"", previous.display()),
        &rest,
    ));
    d.start().await;
    let before = d.account("acc").await["last_sync"]
        .as_str()
        .map(str::to_string);
    d.wait_synced("acc", before.as_deref()).await;
    assert!(d.log().contains("Re-sealed grants"), "{}", d.log());
    d.stop().await;
    // The previous key is no longer needed: remove it from the config and destroy it.
    std::fs::remove_file(&previous).unwrap();
    d.write_config(&d.config_text("", &rest));
    d.start().await;
    let a = d.wait_synced("acc", before.as_deref()).await;
    assert_eq!(a["state"], "idle", "{a}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_the_api_with_secure_cookies_and_the_cli_follows() {
    use std::os::unix::fs::PermissionsExt;
    let d = TestDaemon::new();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    for f in ["tls-cert.pem", "tls-key.pem"] {
        let to = d.dir.path().join(f);
        std::fs::copy(format!("{data}/{f}"), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let dir = d.dir.path().display().to_string();
    d.write_config(&d.config_text(
        &format!("tls_cert_file = \"{dir}/tls-cert.pem\"\ntls_key_file = \"{dir}/tls-key.pem\""),
        "",
    ));
    let log = std::fs::File::create(d.dir.path().join("daemon.log")).unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(
        std::process::Command::new(bin())
            .arg("--config")
            .arg(d.config_path())
            .arg("run")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let cert =
        reqwest::Certificate::from_pem(&std::fs::read(format!("{data}/tls-cert.pem")).unwrap())
            .unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(cert)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{}", d.port);
    let mut last = None;
    for _ in 0..200 {
        match https.get(format!("{base}/healthz")).send().await {
            Ok(r) => {
                last = Some(Ok(r.status()));
                break;
            }
            Err(e) => last = Some(Err(format!("{e:?}"))),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        matches!(last, Some(Ok(s)) if s.is_success()),
        "{last:?}\n{}",
        d.log()
    );
    // Plain http gets nowhere.
    assert!(d
        .http
        .get(format!("http://127.0.0.1:{}/healthz", d.port))
        .send()
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true));
    let r = https
        .post(format!("{base}/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("; Secure") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let out = std::process::Command::new(bin())
        .arg("--config")
        .arg(d.config_path())
        .arg("status")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// This machine's first non-loopback IPv4 address, if it has one (no packet is sent).
fn lan_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_remote_peers_only_with_the_metrics_token() {
    use std::os::unix::fs::PermissionsExt;
    let Some(ip) = lan_ip() else {
        eprintln!("SKIP: no non-loopback address on this machine");
        return;
    };
    let d = TestDaemon::new();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    for f in ["tls-cert.pem", "tls-key.pem"] {
        let to = d.dir.path().join(f);
        std::fs::copy(format!("{data}/{f}"), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    write_private(&d.dir.path().join("metrics-token"), "scrape-token-42\n");
    // A CRM token readable by everyone: started, with a warning naming the file.
    std::fs::set_permissions(
        d.dir.path().join("api-token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let dir = d.dir.path().display().to_string();
    let text = d
        .config_text(
            &format!(
                "allow_remote = true\ntls_cert_file = \"{dir}/tls-cert.pem\"\ntls_key_file = \"{dir}/tls-key.pem\"\nmetrics_token_file = \"{dir}/metrics-token\"\nallowed_hosts = [\"{ip}\"]"
            ),
            "",
        )
        .replace(&format!("127.0.0.1:{}", d.port), &format!("0.0.0.0:{}", d.port));
    d.write_config(&text);
    let log = std::fs::File::create(d.dir.path().join("daemon.log")).unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(
        std::process::Command::new(bin())
            .arg("--config")
            .arg(d.config_path())
            .arg("run")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // The test certificate names localhost and 127.0.0.1 only; the peer address is what
    // this test is about, so the client skips name checks for the LAN address.
    let https = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let remote = format!("https://{ip}:{}/metrics", d.port);
    let local = format!("https://127.0.0.1:{}/metrics", d.port);
    let mut status = None;
    for _ in 0..200 {
        if let Ok(r) = https.get(&local).send().await {
            status = Some(r.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status.map(|s| s.as_u16()), Some(200), "{}", d.log());
    let r = https.get(&remote).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = https
        .get(&remote)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = https
        .get(&remote)
        .bearer_auth("scrape-token-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("contact_sync_crm_contacts"));
    let log = d.log();
    assert!(
        log.contains("readable by group or others") && log.contains(&format!("{dir}/api-token")),
        "{log}"
    );
}
