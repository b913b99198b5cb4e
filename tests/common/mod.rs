//! Helpers for tests that run the real `contact-sync` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The CRM's token (`api_token_file`).
pub const TOKEN: &str = "test-token-0123456789";
/// The operator's token (`admin_token_file`).
pub const ADMIN_TOKEN: &str = "test-admin-token-9876543210";
/// The key that seals refresh tokens (`token_key_file`), 64 hex characters.
pub const TOKEN_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// Writes `data` to `path` with mode 0600 (the daemon refuses a key others can read).
pub fn write_private(path: &Path, data: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_contact-sync")
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct TestDaemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub http: reqwest::Client,
    pub env: Vec<(String, String)>,
}

impl TestDaemon {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    /// The `[daemon]` section for this test's directory and port, plus `rest`.
    pub fn config_text(&self, daemon_extra: &str, rest: &str) -> String {
        let d = self.dir.path().display();
        format!(
            "[daemon]\ndata_dir = \"{d}/data\"\nlisten = \"127.0.0.1:{}\"\napi_token_file = \"{d}/api-token\"\nadmin_token_file = \"{d}/admin-token\"\ntoken_key_file = \"{d}/token-key\"\naudit_dir = \"{d}/audit\"\npoll_interval = \"1s\"\n{daemon_extra}\n{rest}",
            self.port
        )
    }

    pub fn write_config(&self, text: &str) {
        // Write then rename, as editors do.
        let tmp = self.dir.path().join(".config.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_private(&dir.path().join("api-token"), &format!("{TOKEN}\n"));
        write_private(&dir.path().join("admin-token"), &format!("{ADMIN_TOKEN}\n"));
        write_private(&dir.path().join("token-key"), &format!("{TOKEN_KEY}\n"));
        TestDaemon {
            child: None,
            dir,
            port: free_port(),
            http: reqwest::Client::new(),
            env: vec![
                ("CONTACT_SYNC_FAST_RETRY".into(), "1".into()),
                ("CONTACT_SYNC_FAST_BACKOFF".into(), "1".into()),
            ],
        }
    }

    /// Starts `contact-sync run` and waits for /healthz.
    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(self.config_path())
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env("RUST_LOG", "info,contact_sync=debug");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/healthz", self.base()))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("daemon exited early with {st}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (TERM, HUP, KILL).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// SIGTERM and wait for the exit.
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(15)).await
    }

    /// SIGKILL, no cleanup.
    pub async fn kill(&mut self) -> ExitStatus {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(15)).await
    }

    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A request with the CRM's token.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.api_as(TOKEN, method, path, body).await
    }

    /// A request with the operator's token (approve, restore, preview, sync, grants).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.api_as(ADMIN_TOKEN, method, path, body).await
    }

    pub async fn api_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut r = self
            .http
            .request(method, format!("{}{}", self.base(), path))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, json)
    }

    pub async fn get(&self, path: &str) -> serde_json::Value {
        let (s, v) = self.api(reqwest::Method::GET, path, None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    /// Polls `f` until it returns true.
    pub async fn wait_for<F, Fut>(&self, what: &str, limit: Duration, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + limit;
        while !f().await {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every audit line written so far.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        let mut out = vec![];
        if let Ok(rd) = std::fs::read_dir(self.audit_dir()) {
            let mut files: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            files.sort();
            for f in files {
                for line in std::fs::read_to_string(&f).unwrap_or_default().lines() {
                    if !line.trim().is_empty() {
                        out.push(
                            serde_json::from_str(line)
                                .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line}")),
                        );
                    }
                }
            }
        }
        out
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

// ---- provider simulator helpers ----

use contact_sync::sim::{Provider, SeedUser, Sim, SimOptions};

pub async fn start_sim(google: Vec<SeedUser>, outlook: Vec<SeedUser>) -> Sim {
    Sim::start(SimOptions {
        seed: 5,
        google_users: google,
        outlook_users: outlook,
        ..Default::default()
    })
    .await
    .expect("sim starts")
}

/// `[providers.*]` sections pointing at the simulator.
pub fn providers_for(sim: &Sim) -> String {
    let g = &sim.google_base;
    let o = &sim.graph_base;
    format!(
        "[providers.google]\nclient_id = \"test-client.apps.googleusercontent.com\"\napi_base = \"{g}\"\nauth_url = \"{g}/o/oauth2/v2/auth\"\ntoken_url = \"{g}/token\"\nrevoke_url = \"{g}/revoke\"\n\n\
         [providers.outlook]\nclient_id = \"00000000-0000-0000-0000-00000000abcd\"\ntenant = \"common\"\napi_base = \"{o}/v1.0\"\nauth_url = \"{o}/common/oauth2/v2.0/authorize\"\ntoken_url = \"{o}/common/oauth2/v2.0/token\"\ndevice_code_url = \"{o}/common/oauth2/v2.0/devicecode\"\n"
    )
}

pub fn account_toml(id: &str, provider: &str, group: &str, direction: &str) -> String {
    format!("\n[[accounts]]\nid = \"{id}\"\nprovider = \"{provider}\"\ngroup = \"{group}\"\ndirection = \"{direction}\"\n")
}

/// A client that does not follow redirects.
pub fn no_redirect() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A logged-in dashboard session: the `Cookie` header value and the page's CSRF token.
pub struct OperatorSession {
    pub cookie: String,
    pub csrf: String,
}

impl TestDaemon {
    /// Logs in to the dashboard with the operator token.
    pub async fn login(&self) -> OperatorSession {
        let c = no_redirect();
        let r = c
            .post(format!("{}/login", self.base()))
            .form(&[("token", ADMIN_TOKEN)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "login");
        let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap().to_string();
        let page = c
            .get(format!("{}/", self.base()))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let marker = "name=\"csrf\" value=\"";
        let at = page.find(marker).expect("a CSRF field") + marker.len();
        let csrf = page[at..at + page[at..].find('"').unwrap()].to_string();
        OperatorSession { cookie, csrf }
    }

    /// Imports a refresh token with `contact-sync connect ACCOUNT --refresh-token-file`.
    pub async fn connect(&self, account: &str, refresh_token: &str) {
        let f = self.dir.path().join(format!("{account}.refresh"));
        std::fs::write(&f, refresh_token).unwrap();
        let out = tokio::process::Command::new(bin())
            .arg("--config")
            .arg(self.config_path())
            .args(["connect", account, "--refresh-token-file"])
            .arg(&f)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "connect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub async fn account(&self, id: &str) -> serde_json::Value {
        self.get(&format!("/api/v1/accounts/{id}")).await
    }

    /// Waits until the account finished a round after `after` (an RFC 3339 `last_sync`, or
    /// `None` for the first round) and is idle.
    pub async fn wait_synced(&self, id: &str, after: Option<&str>) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let a = self.account(id).await;
            let last = a["last_sync"].as_str().map(str::to_string);
            if a["state"] == "idle" && last.is_some() && last.as_deref() != after {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "account {id} did not sync: {a}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_state(&self, id: &str, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = self.account(id).await;
            if a["state"] == state {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "account {id} never reached {state}: {a}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks every account for a round now and waits until `id` finished one.
    pub async fn sync_now(&self, id: &str) -> serde_json::Value {
        let before = self.account(id).await["last_sync"]
            .as_str()
            .map(str::to_string);
        let (s, _) = self
            .admin(reqwest::Method::POST, "/api/v1/sync", None)
            .await;
        assert_eq!(s, 202);
        self.wait_synced(id, before.as_deref()).await
    }

    /// Every CRM contact.
    pub async fn contacts(&self) -> Vec<serde_json::Value> {
        let mut out = vec![];
        let mut after: Option<u64> = None;
        loop {
            let path = match after {
                Some(a) => format!("/api/v1/contacts?limit=1000&after={a}"),
                None => "/api/v1/contacts?limit=1000".to_string(),
            };
            let v = self.get(&path).await;
            out.extend(v["contacts"].as_array().unwrap().iter().cloned());
            match v["next"].as_u64() {
                Some(n) => after = Some(n),
                None => return out,
            }
        }
    }
}

/// The simulator's contacts of a user, as the daemon maps them (provider id → change).
pub fn google_changes(sim: &Sim, user: &str) -> Vec<contact_sync::model::Change> {
    use contact_sync::config::Group;
    let (s, v) = sim.control(
        Provider::Google,
        "GET",
        &format!("/_sim/users/{user}/contacts"),
        None,
    );
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let p: contact_sync::providers::google::PersonJson =
                serde_json::from_value(c["person"].clone()).unwrap();
            contact_sync::providers::google::map_person(&p, Group::All)
        })
        .collect()
}

pub fn graph_changes(sim: &Sim, user: &str) -> Vec<contact_sync::model::Change> {
    let (s, v) = sim.control(
        Provider::Outlook,
        "GET",
        &format!("/_sim/users/{user}/contacts"),
        None,
    );
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let g: contact_sync::providers::graph::GraphContact =
                serde_json::from_value(c["contact"].clone()).unwrap();
            contact_sync::model::Change::Upsert(contact_sync::providers::graph::map_contact(
                &g,
                c["folderId"].as_str().unwrap_or(""),
            ))
        })
        .collect()
}

/// Eligible provider ids and skip counts by reason.
pub fn expected(
    changes: &[contact_sync::model::Change],
) -> (Vec<String>, std::collections::BTreeMap<String, u64>) {
    let mut eligible = vec![];
    let mut skipped = std::collections::BTreeMap::new();
    for c in changes {
        if let contact_sync::model::Change::Upsert(pc) = c {
            let cleaned =
                contact_sync::sync::merge::clean(&pc.fields, phonenumber::country::Id::US);
            match contact_sync::sync::eligibility::check(&cleaned) {
                Ok(()) => eligible.push(pc.provider_id.clone()),
                Err(r) => *skipped.entry(r.as_str().to_string()).or_insert(0) += 1,
            }
        }
    }
    (eligible, skipped)
}

/// Checks the CRM has no two contacts that SPEC §4 would have matched (same name and a
/// shared email), and returns provider id → CRM id for one account.
pub fn check_no_duplicates(
    contacts: &[serde_json::Value],
    account: &str,
) -> std::collections::HashMap<String, u64> {
    use contact_sync::normalize::{email_key, name_key};
    let mut seen = std::collections::HashMap::new();
    let mut links = std::collections::HashMap::new();
    for c in contacts {
        let name = name_key(
            c["first_name"].as_str().unwrap(),
            c["last_name"].as_str().unwrap(),
        );
        for e in c["emails"].as_array().unwrap() {
            let k = (name.clone(), email_key(e.as_str().unwrap()));
            if let Some(other) = seen.insert(k.clone(), c["id"].as_u64().unwrap()) {
                panic!("duplicate CRM contacts {other} and {} for {k:?}", c["id"]);
            }
        }
        for l in c["links"].as_array().unwrap() {
            if l["account"] == account {
                let pid = l["provider_id"].as_str().unwrap().to_string();
                assert!(
                    links
                        .insert(pid.clone(), c["id"].as_u64().unwrap())
                        .is_none(),
                    "{pid} linked twice"
                );
            }
        }
    }
    links
}

pub fn today(a: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = &a["today"];
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or(0)
}

// ---- a small tmpfs, for full-disk tests (needs root) ----

/// A tmpfs mounted on a directory for the length of a test (root only).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "8m") on `dir`; `None` when that is not allowed here.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with one file; returns its path.
pub fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let small = vec![0u8; 64];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    p
}
