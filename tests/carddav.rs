//! CardDAV accounts against real servers: Radicale and Xandikos (both from PyPI, installed
//! by `.ci/install-test-deps.sh`), each on a loopback port with a temporary storage folder
//! and an HTTP Basic user. Cards are seeded by PUTting .vcf files to the server; the real
//! daemon then syncs them.
//!
//! Radicale checks HTTP Basic itself (htpasswd, plain). Xandikos only does Basic auth over
//! its own self-signed TLS (`--htpasswd` needs `--autocert`); its documentation puts it
//! behind a reverse proxy for authentication, so the test does the same: a small
//! Basic-checking reverse proxy in front of it.
//!
//! Without the server binaries a test prints why and passes on a developer machine; with
//! `CI=true` it fails.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const USER: &str = "ops";
const PASS: &str = "app-password-1234";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Radicale,
    Xandikos,
}

struct DavServer {
    kind: Kind,
    child: Child,
    dir: tempfile::TempDir,
    /// What the account's `url` is set to (the server root: discovery finds the book).
    root: String,
    /// The address book, for seeding.
    book: String,
    http: reqwest::Client,
    _proxy: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DavServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's command: its script on PATH, else `python3 -m NAME` (pip may install
/// scripts outside PATH).
fn server_command(name: &str) -> Option<Command> {
    let works = |mut c: Command| {
        c.arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(Command::new(name)) {
        return Some(Command::new(name));
    }
    let module = || {
        let mut c = Command::new("python3");
        c.args(["-m", name]);
        c
    };
    works(module()).then(module)
}

/// The server's command, or `None` (with a printed note) when it is not installed,
/// outside CI.
fn available(bin: &str) -> Option<Command> {
    if let Some(c) = server_command(bin) {
        return Some(c);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{bin} is not installed; run .ci/install-test-deps.sh");
    }
    eprintln!(
        "SKIPPED: {bin} is not installed (pip install radicale xandikos); CardDAV test not run."
    );
    None
}

async fn wait_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited early with {st}");
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start(kind: Kind) -> Option<DavServer> {
    match kind {
        Kind::Radicale => start_radicale().await,
        Kind::Xandikos => start_xandikos(false).await,
    }
}

async fn start_radicale() -> Option<DavServer> {
    let mut cmd = available("radicale")?;
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("collections");
    let book_dir = storage.join("collection-root").join(USER).join("contacts");
    std::fs::create_dir_all(&book_dir).unwrap();
    std::fs::write(
        book_dir.join(".Radicale.props"),
        r#"{"tag": "VADDRESSBOOK", "D:displayname": "Work contacts"}"#,
    )
    .unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, format!("{USER}:{PASS}\n")).unwrap();
    let port = free_port();
    let mut child = cmd
        .args(["--config", ""])
        .arg("--server-hosts")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--storage-filesystem-folder")
        .arg(&storage)
        .args([
            "--auth-type",
            "htpasswd",
            "--auth-htpasswd-encryption",
            "plain",
        ])
        .arg("--auth-htpasswd-filename")
        .arg(&users)
        .args(["--rights-type", "owner_only"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("radicale.log")).unwrap())
        .spawn()
        .expect("radicale starts");
    wait_port(port, &mut child, "radicale").await;
    Some(DavServer {
        kind: Kind::Radicale,
        child,
        root: format!("http://127.0.0.1:{port}/"),
        book: format!("http://127.0.0.1:{port}/{USER}/contacts/"),
        dir,
        http: reqwest::Client::new(),
        _proxy: None,
    })
}

/// Xandikos behind the Basic-auth proxy; with `refuse_sync`, the proxy answers every
/// `sync-collection` REPORT with 403, like a server without RFC 6578.
async fn start_xandikos(refuse_sync: bool) -> Option<DavServer> {
    let mut cmd = available("xandikos")?;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = cmd
        .arg("serve")
        .arg("-d")
        .arg(dir.path().join("dav"))
        .args(["--defaults", "-l", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("xandikos.log")).unwrap())
        .spawn()
        .expect("xandikos starts");
    wait_port(port, &mut child, "xandikos").await;
    let proxy_port = free_port();
    let proxy = basic_auth_proxy(proxy_port, port, refuse_sync);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", proxy_port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "proxy did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(DavServer {
        kind: Kind::Xandikos,
        child,
        root: format!("http://127.0.0.1:{proxy_port}/"),
        book: format!("http://127.0.0.1:{proxy_port}/user/contacts/addressbook/"),
        dir,
        http: reqwest::Client::new(),
        _proxy: Some(proxy),
    })
}

/// A reverse proxy on `port` that answers 401 without the right HTTP Basic credentials
/// and forwards everything else to `upstream` (as Xandikos' docs recommend).
fn basic_auth_proxy(port: u16, upstream: u16, refuse_sync: bool) -> std::thread::JoinHandle<()> {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
    );
    std::thread::spawn(move || {
        let sys = actix_web::rt::System::new();
        sys.block_on(async move {
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let server = HttpServer::new(move || {
                let client = client.clone();
                let expected = expected.clone();
                App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                    let client = client.clone();
                    let expected = expected.clone();
                    async move {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok());
                        if auth != Some(expected.as_str()) {
                            return HttpResponse::Unauthorized()
                                .insert_header(("WWW-Authenticate", "Basic realm=\"dav\""))
                                .finish();
                        }
                        if refuse_sync
                            && req.method().as_str() == "REPORT"
                            && String::from_utf8_lossy(&body).contains("sync-collection")
                        {
                            return HttpResponse::Forbidden()
                                .content_type("application/xml")
                                .body(r#"<?xml version="1.0"?><d:error xmlns:d="DAV:"><d:supported-report/></d:error>"#);
                        }
                        let url = format!("http://127.0.0.1:{upstream}{}", req.uri());
                        let method = Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
                        let mut r = client.request(method, url).body(body.to_vec());
                        for (k, v) in req.headers() {
                            let k = k.as_str();
                            if !matches!(
                                k,
                                "host" | "authorization" | "content-length" | "connection"
                            ) {
                                r = r.header(k, v.as_bytes());
                            }
                        }
                        let resp = match r.send().await {
                            Ok(resp) => resp,
                            Err(_) => return HttpResponse::BadGateway().finish(),
                        };
                        let mut out = HttpResponse::build(
                            actix_web::http::StatusCode::from_u16(resp.status().as_u16()).unwrap(),
                        );
                        for (k, v) in resp.headers() {
                            let k = k.as_str();
                            if !matches!(k, "content-length" | "transfer-encoding" | "connection") {
                                out.insert_header((k, v.as_bytes()));
                            }
                        }
                        let bytes = resp.bytes().await.unwrap_or_default();
                        out.body(bytes.to_vec())
                    }
                }))
            })
            .workers(1)
            .bind(("127.0.0.1", port))
            .unwrap()
            .run();
            let _ = server.await;
        });
    })
}

impl DavServer {
    fn card_url(&self, name: &str) -> String {
        format!("{}{name}", self.book)
    }

    async fn put(&self, name: &str, text: &str) {
        let r = self
            .http
            .put(self.card_url(name))
            .basic_auth(USER, Some(PASS))
            .header("Content-Type", "text/vcard; charset=utf-8")
            .body(text.to_string())
            .send()
            .await
            .unwrap();
        let s = r.status();
        assert!(
            s.is_success(),
            "{:?} PUT {name}: {s} {}",
            self.kind,
            r.text().await.unwrap_or_default()
        );
    }

    async fn delete(&self, name: &str) {
        let r = self
            .http
            .delete(self.card_url(name))
            .basic_auth(USER, Some(PASS))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "{:?} DELETE {name}: {}",
            self.kind,
            r.status()
        );
    }

    async fn get(&self, href_or_name: &str) -> Option<String> {
        let url = if href_or_name.starts_with('/') {
            let u = url::Url::parse(&self.root).unwrap();
            u.join(href_or_name).unwrap().to_string()
        } else {
            self.card_url(href_or_name)
        };
        let r = self
            .http
            .get(url)
            .basic_auth(USER, Some(PASS))
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            return None;
        }
        assert!(
            r.status().is_success(),
            "GET {href_or_name}: {}",
            r.status()
        );
        Some(r.text().await.unwrap())
    }

    /// Every card in the book: (href, text), via a PROPFIND listing.
    async fn cards(&self) -> Vec<(String, String)> {
        let r = self
            .http
            .request(Method::from_bytes(b"PROPFIND").unwrap(), &self.book)
            .basic_auth(USER, Some(PASS))
            .header("Depth", "1")
            .header("Content-Type", "application/xml; charset=utf-8")
            .body(r#"<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop></d:propfind>"#)
            .send()
            .await
            .unwrap();
        let body = r.text().await.unwrap();
        let ms = contact_sync::providers::carddav::wire::parse_multistatus(body.as_bytes())
            .unwrap_or_else(|e| panic!("{e}: {body}"));
        let book_path = url::Url::parse(&self.book).unwrap().path().to_string();
        let mut out = vec![];
        for e in ms.responses {
            let path = contact_sync::providers::carddav::wire::href_key(&e.href);
            if path.trim_end_matches('/') == book_path.trim_end_matches('/') {
                continue;
            }
            if let Some(t) = self.get(&e.href).await {
                out.push((path, t));
            }
        }
        out
    }

    /// Makes every sync token the server handed out invalid.
    fn expire_tokens(&self) -> bool {
        match self.kind {
            Kind::Radicale => {
                // Radicale keeps tokens in the book's cache; without it, every token is invalid.
                let cache = self
                    .dir
                    .path()
                    .join("collections/collection-root")
                    .join(USER)
                    .join("contacts/.Radicale.cache");
                let _ = std::fs::remove_dir_all(cache);
                true
            }
            Kind::Xandikos => {
                // Xandikos' tokens name git trees of the book: rewrite the last commit with
                // another tree (Ada's FN, which N overrides, gets a second space) and prune
                // the old objects, and the token names a tree that no longer exists.
                let git = |args: &[&str]| {
                    let st = Command::new("git")
                        .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
                        .args(args)
                        .current_dir(self.dir.path().join("dav/user/contacts/addressbook"))
                        .stdout(Stdio::null())
                        .status()
                        .expect("git runs");
                    assert!(st.success(), "git {args:?}");
                };
                let ada = self
                    .dir
                    .path()
                    .join("dav/user/contacts/addressbook/ada.vcf");
                let text = std::fs::read_to_string(&ada).unwrap();
                std::fs::write(&ada, text.replace("FN:Ada Lovelace", "FN:Ada  Lovelace")).unwrap();
                git(&["commit", "-a", "--amend", "-m", "rewritten"]);
                git(&["reflog", "expire", "--expire=now", "--all"]);
                git(&["gc", "--prune=now", "--quiet"]);
                true
            }
        }
    }

    /// Stores a card the server would refuse (no END:VCARD) behind its back. Radicale
    /// hides such files itself; Xandikos serves them.
    fn plant_broken_card(&self) -> bool {
        match self.kind {
            Kind::Radicale => false,
            Kind::Xandikos => {
                let book = self.dir.path().join("dav/user/contacts/addressbook");
                std::fs::write(
                    book.join("broken.vcf"),
                    "BEGIN:VCARD\r\nVERSION:3.0\r\nN:Broken;Bob;;;\r\nEMAIL:bob@example.org\r\n",
                )
                .unwrap();
                for args in [
                    &["add", "broken.vcf"][..],
                    &[
                        "-c",
                        "user.name=t",
                        "-c",
                        "user.email=t@example.org",
                        "commit",
                        "-q",
                        "-m",
                        "broken",
                    ][..],
                ] {
                    let st = Command::new("git")
                        .args(args)
                        .current_dir(&book)
                        .status()
                        .expect("git runs");
                    assert!(st.success());
                }
                true
            }
        }
    }
}

/// A card's content lines, unfolded.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for l in text.split("\r\n").flat_map(|l| l.split('\n')) {
        if let Some(rest) = l.strip_prefix(' ').or_else(|| l.strip_prefix('\t')) {
            if let Some(last) = out.last_mut() {
                last.push_str(rest);
            }
        } else if !l.is_empty() {
            out.push(l.to_string());
        }
    }
    out
}

fn v3(uid: &str, body: &str) -> String {
    format!("BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uid}\r\n{body}END:VCARD\r\n")
}

fn v4(uid: &str, body: &str) -> String {
    format!("BEGIN:VCARD\r\nVERSION:4.0\r\nUID:{uid}\r\n{body}END:VCARD\r\n")
}

/// A 1×1 JPEG, base64.
const JPEG_B64: &str = "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAP//////////////////////////////////////////////////////////////////////////////////////wgALCAABAAEBAREA/8QAFBABAAAAAAAAAAAAAAAAAAAAAP/aAAgBAQABPxA=";

async fn daemon_for(server: &DavServer, direction: &str, extra: &str) -> TestDaemon {
    let d = TestDaemon::new();
    let pw: PathBuf = d.dir.path().join("dav-password");
    std::fs::write(&pw, format!("{PASS}\n")).unwrap();
    let account = format!(
        "\n[[accounts]]\nid = \"dav\"\nprovider = \"carddav\"\nurl = \"{}\"\nusername = \"{USER}\"\npassword_file = \"{}\"\ngroup = \"all\"\ndirection = \"{direction}\"\n{extra}",
        server.root,
        path_str(&pw)
    );
    d.write_config(&d.config_text("", &account));
    d
}

fn named<'a>(contacts: &'a [Value], first: &str) -> Vec<&'a Value> {
    contacts
        .iter()
        .filter(|c| c["first_name"] == first)
        .collect()
}

async fn initial_incremental_and_expired_token(kind: Kind) {
    let Some(server) = start(kind).await else {
        return;
    };
    // vCard 3.0 and 4.0, a data: photo, an inline photo, skips, and a card that merges.
    server
        .put(
            "ada.vcf",
            &v3(
                "ada",
                "N:Lovelace;Ada;;;\r\nFN:Ada Lovelace\r\nEMAIL;TYPE=INTERNET:ada@example.org\r\nORG:Analytical Engines;R&D\r\nTITLE:Programmer\r\nBDAY:1815-12-10\r\nADR;TYPE=home:;;1 Home St;London;;N1;UK\r\nADR;TYPE=work,pref:;;2 Work Rd;Cambridge;;CB1;UK\r\n",
            ),
        )
        .await;
    server
        .put(
            "grace.vcf",
            &v4(
                "grace",
                &format!("N:Hopper;Grace;;;\r\nFN:Grace Hopper\r\nTEL;VALUE=uri;TYPE=cell:tel:+1-202-555-0100\r\nBDAY:--1209\r\nPHOTO:data:image/jpeg;base64,{JPEG_B64}\r\n"),
            ),
        )
        .await;
    server
        .put(
            "alan.vcf",
            &v3(
                "alan",
                "FN:Alan Turing\r\nEMAIL:alan@example.org\r\nBDAY:1604-06-23\r\n",
            ),
        )
        .await;
    server
        .put(
            "nomail.vcf",
            &v4("nomail", "N:Nobody;Nora;;;\r\nFN:Nora Nobody\r\n"),
        )
        .await;
    server
        .put(
            "noname.vcf",
            &v3("noname", "N:;;;;\r\nFN:\r\nEMAIL:anon@example.org\r\n"),
        )
        .await;

    let broken = server.plant_broken_card();
    let mut d = daemon_for(&server, "one-way", "").await;
    d.start().await;
    // A CRM contact that the provider's Ada matches (same name, shared email).
    let (s, crm_ada) = d
        .api(
            Method::POST,
            "/api/v1/contacts",
            Some(json!({"first_name": "Ada", "last_name": "Lovelace", "emails": ["ADA@example.org"], "phones": ["+44 20 7946 0000"]})),
        )
        .await;
    assert_eq!(s, 201, "{crm_ada}");
    let a = d.sync_now("dav").await;
    assert_eq!(a["provider"], "carddav", "{a}");
    assert_eq!(a["last_error"], Value::Null, "{a}");
    assert_eq!(today(&a, &["added", "to_crm"]), 2, "{a}");
    assert_eq!(today(&a, &["updated", "in_crm"]), 1, "{a}");
    assert_eq!(today(&a, &["skipped", "no_email_or_phone"]), 1, "{a}");
    assert_eq!(today(&a, &["skipped", "no_name"]), 1, "{a}");
    if broken {
        assert_eq!(today(&a, &["skipped", "unparseable"]), 1, "{a}");
        assert!(d
            .audit_lines()
            .iter()
            .any(|l| l["action"] == "skipped" && l["reason"] == "unparseable"));
    }

    let cs = d.contacts().await;
    assert_eq!(cs.len(), 3, "{cs:?}");
    let ada = named(&cs, "Ada")[0];
    assert_eq!(ada["id"], crm_ada["id"], "merged into the CRM contact");
    assert_eq!(ada["emails"].as_array().unwrap().len(), 1);
    assert_eq!(ada["company"]["name"], "Analytical Engines");
    assert_eq!(ada["job_title"], "Programmer");
    assert_eq!(ada["birthday"], "1815-12-10");
    assert_eq!(ada["address"]["city"], "Cambridge", "the preferred ADR");
    assert_eq!(ada["links"][0]["account"], "dav");
    let grace = named(&cs, "Grace")[0];
    assert_eq!(grace["last_name"], "Hopper");
    assert_eq!(grace["phones"].as_array().unwrap().len(), 1);
    assert_eq!(
        grace["birthday"],
        Value::Null,
        "--MMDD is not a complete date"
    );
    assert_eq!(
        grace["has_photo"], true,
        "data: photo on the initial one-way sync"
    );
    let alan = named(&cs, "Alan")[0];
    assert_eq!(alan["last_name"], "Turing", "FN when there is no N");
    assert_eq!(
        alan["birthday"],
        Value::Null,
        "year 1604 is not a complete date"
    );

    // Incremental: an edit, a deletion, a new card.
    server
        .put(
            "grace.vcf",
            &v4("grace", "N:Hopper;Grace;;;\r\nFN:Grace Hopper\r\nTEL:+1-202-555-0100\r\nTITLE:Rear Admiral\r\n"),
        )
        .await;
    server.delete("alan.vcf").await;
    server
        .put(
            "kat.vcf",
            &v3(
                "kat",
                "N:Johnson;Katherine;;;\r\nFN:Katherine Johnson\r\nEMAIL:kat@example.org\r\n",
            ),
        )
        .await;
    let a = d.sync_now("dav").await;
    assert_eq!(a["last_error"], Value::Null, "{a}");
    let cs = d.contacts().await;
    assert_eq!(named(&cs, "Grace")[0]["job_title"], "Rear Admiral");
    assert!(named(&cs, "Alan").is_empty(), "deleted in the provider");
    assert_eq!(named(&cs, "Katherine").len(), 1);
    assert_eq!(today(&a, &["deleted", "from_provider"]), 1);
    assert_eq!(today(&a, &["added", "to_crm"]), 3);

    // A round with no change changes nothing.
    let before = d.contacts().await;
    let a2 = d.sync_now("dav").await;
    assert_eq!(d.contacts().await, before);
    assert_eq!(
        today(&a2, &["updated", "in_crm"]),
        today(&a, &["updated", "in_crm"])
    );

    // An expired sync token: a full listing matched by link (no duplicates), and a card
    // deleted meanwhile is found missing.
    if server.expire_tokens() {
        server.delete("kat.vcf").await;
        let a = d.sync_now("dav").await;
        assert_eq!(a["last_error"], Value::Null, "{a}");
        let cs = d.contacts().await;
        assert_eq!(cs.len(), 2, "no duplicates after the resync: {cs:?}");
        assert!(named(&cs, "Katherine").is_empty());
        assert_eq!(today(&a, &["added", "to_crm"]), 3);
        assert!(
            d.log().contains("rejected the sync token"),
            "the token was really rejected"
        );
    } else {
        eprintln!(
            "{kind:?}: no way to expire its sync tokens from outside; expired-token phase not run."
        );
    }
    d.stop().await;
}

async fn two_way_keeps_unknown_properties(kind: Kind) {
    let Some(server) = start(kind).await else {
        return;
    };
    let unknown = [
        "X-CUSTOM-THING;X-PARAM=a:keep me\r\n",
        "IMPP;TYPE=work:xmpp:ada@example.org\r\n",
        "CATEGORIES:Friends,Work\r\n",
        "item1.X-ABLabel:_$!<Other>!$_\r\n",
        "NOTE:A note long enough to be folded by the writer at seventy-five octet\r\n s.\r\n",
    ];
    server
        .put(
            "ada.vcf",
            &v3(
                "ada",
                &format!(
                    "N:Lovelace;Ada;;;\r\nFN:Ada Lovelace\r\nEMAIL;TYPE=INTERNET;TYPE=WORK:ada@example.org\r\n{}TITLE:Programmer\r\n",
                    unknown.concat()
                ),
            ),
        )
        .await;
    server
        .put(
            "grace.vcf",
            &v4(
                "grace",
                "N:Hopper;Grace;;;\r\nFN:Grace Hopper\r\nTEL:+12025550100\r\nX-FOO:bar\r\n",
            ),
        )
        .await;
    // The card as the server keeps it (Radicale normalises cards when they are stored).
    let served = server.get("ada.vcf").await.unwrap();
    let mut d = daemon_for(&server, "two-way", "").await;
    d.start().await;
    let a = d.sync_now("dav").await;
    assert_eq!(a["last_error"], Value::Null, "{a}");
    let cs = d.contacts().await;
    assert_eq!(cs.len(), 2);
    let ada = named(&cs, "Ada")[0].clone();
    let grace = named(&cs, "Grace")[0].clone();

    // Update in the CRM: only TITLE changes; everything else stays byte for byte.
    let (s, _) = d
        .api(
            Method::PATCH,
            &format!("/api/v1/contacts/{}", ada["id"]),
            Some(json!({"job_title": "Chief Programmer"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = d
        .api(
            Method::PATCH,
            &format!("/api/v1/contacts/{}", grace["id"]),
            Some(json!({"emails": ["grace@navy.example"]})),
        )
        .await;
    assert_eq!(s, 200);
    wait_outbox_empty(&d).await;
    let card = server.get("ada.vcf").await.unwrap();
    assert!(card.contains("TITLE:Chief Programmer"), "{card}");
    assert!(!card.contains("TITLE:Programmer\r\n"), "{card}");
    // Every line but TITLE is as the server served it before the edit.
    let after = logical_lines(&card);
    for l in logical_lines(&served) {
        if !l.starts_with("TITLE") {
            assert!(after.contains(&l), "{kind:?} lost {l:?}:\n{card}");
        }
    }
    for u in [
        "X-CUSTOM-THING",
        "IMPP",
        "CATEGORIES:Friends,Work",
        "X-ABLABEL",
        "NOTE:",
    ] {
        assert!(
            card.to_uppercase().contains(&u.to_uppercase()),
            "{kind:?} lost {u}:\n{card}"
        );
    }
    let gcard = server.get("grace.vcf").await.unwrap();
    assert!(gcard.contains("VERSION:4.0"), "{gcard}");
    assert!(gcard.contains("grace@navy.example"), "{gcard}");
    assert!(gcard.contains("X-FOO:bar"), "{gcard}");
    let a = d.account("dav").await;
    assert_eq!(today(&a, &["updated", "in_provider"]), 2, "{a}");

    // No echo: the next rounds change nothing in the CRM.
    let before = d.get(&format!("/api/v1/contacts/{}", ada["id"])).await;
    let updated_in_crm = today(&a, &["updated", "in_crm"]);
    d.sync_now("dav").await;
    let a = d.sync_now("dav").await;
    assert_eq!(today(&a, &["updated", "in_crm"]), updated_in_crm, "no echo");
    assert_eq!(
        d.get(&format!("/api/v1/contacts/{}", ada["id"])).await["updated_at"],
        before["updated_at"]
    );

    // Create in the CRM: a new card with a fresh UID, exactly once.
    let (s, c) = d
        .api(
            Method::POST,
            "/api/v1/contacts",
            Some(json!({"first_name": "Katherine", "last_name": "Johnson", "emails": ["kat@example.org"], "company_name": "NASA", "birthday": "1918-08-26"})),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    wait_outbox_empty(&d).await;
    let cards = server.cards().await;
    let kat: Vec<&(String, String)> = cards
        .iter()
        .filter(|(_, t)| t.contains("kat@example.org"))
        .collect();
    assert_eq!(kat.len(), 1, "created once: {cards:?}");
    let kt = &kat[0].1;
    assert!(kt.contains("UID:urn:uuid:"), "{kt}");
    assert!(kt.contains("N:Johnson;Katherine;;;"), "{kt}");
    assert!(kt.contains("ORG:NASA"), "{kt}");
    let a = d.sync_now("dav").await;
    assert_eq!(today(&a, &["added", "to_provider"]), 1, "{a}");
    assert_eq!(today(&a, &["added", "to_crm"]), 2, "{a}");
    let linked = d.get(&format!("/api/v1/contacts/{}", c["id"])).await;
    assert_eq!(linked["links"][0]["provider_id"], kat[0].0.as_str());
    assert_eq!(d.contacts().await.len(), 3, "no echo of the created card");

    // Delete in the CRM: the card goes, with If-Match.
    let (s, _) = d
        .api(
            Method::DELETE,
            &format!("/api/v1/contacts/{}", grace["id"]),
            None,
        )
        .await;
    assert_eq!(s, 204);
    wait_outbox_empty(&d).await;
    assert!(
        server.get("grace.vcf").await.is_none(),
        "deleted in the provider"
    );
    let a = d.sync_now("dav").await;
    assert_eq!(today(&a, &["deleted", "from_provider"]), 0);
    assert_eq!(d.contacts().await.len(), 2);

    // A provider edit meanwhile (412 on our PUT): fetched, merged, pushed next round.
    server
        .put(
            "ada.vcf",
            &server
                .get("ada.vcf")
                .await
                .unwrap()
                .replace("TITLE:Chief Programmer", "TITLE:Countess"),
        )
        .await;
    let (s, _) = d
        .api(
            Method::PATCH,
            &format!("/api/v1/contacts/{}", ada["id"]),
            Some(json!({"phones": ["+44 20 7946 0001"]})),
        )
        .await;
    assert_eq!(s, 200);
    wait_outbox_empty(&d).await;
    d.sync_now("dav").await;
    let card = server.get("ada.vcf").await.unwrap();
    assert!(card.contains("TITLE:Countess"), "{card}");
    assert!(card.contains("+44 20 7946 0001"), "{card}");
    let now = d.get(&format!("/api/v1/contacts/{}", ada["id"])).await;
    assert_eq!(now["job_title"], "Countess");
    d.stop().await;
}

async fn wait_outbox_empty(d: &TestDaemon) -> Value {
    d.wait_for("outbox drained", Duration::from_secs(60), || async {
        let a = d.account("dav").await;
        a["outbox"]["pending"] == 0 && a["state"] == "idle"
    })
    .await;
    d.account("dav").await
}

#[tokio::test]
async fn carddav_radicale_initial_incremental_and_expired_token() {
    initial_incremental_and_expired_token(Kind::Radicale).await;
}

#[tokio::test]
async fn carddav_xandikos_initial_incremental_and_expired_token() {
    initial_incremental_and_expired_token(Kind::Xandikos).await;
}

#[tokio::test]
async fn carddav_radicale_two_way_keeps_unknown_properties() {
    two_way_keeps_unknown_properties(Kind::Radicale).await;
}

#[tokio::test]
async fn carddav_xandikos_two_way_keeps_unknown_properties() {
    two_way_keeps_unknown_properties(Kind::Xandikos).await;
}

#[tokio::test]
async fn carddav_wrong_password_and_missing_password_file_are_clear_errors() {
    let Some(server) = start(Kind::Radicale).await else {
        return;
    };
    server
        .put(
            "ada.vcf",
            &v3(
                "ada",
                "N:Lovelace;Ada;;;\r\nFN:Ada Lovelace\r\nEMAIL:ada@example.org\r\n",
            ),
        )
        .await;
    let mut d = daemon_for(&server, "one-way", "").await;
    let good = std::fs::read_to_string(d.config_path()).unwrap();
    std::fs::write(d.dir.path().join("dav-password"), "wrong\n").unwrap();
    d.start().await;
    let a = d.wait_state("dav", "error").await;
    let e = a["last_error"].as_str().unwrap_or_default();
    assert!(e.contains("401") && e.contains("password_file"), "{a}");

    // A new password file in the config: the account signs in again, no restart.
    let fixed = d.dir.path().join("dav-password-2");
    std::fs::write(&fixed, format!("{PASS}\n")).unwrap();
    d.write_config(&good.replace("dav-password", "dav-password-2"));
    d.wait_for(
        "the account syncs with the new password",
        Duration::from_secs(60),
        || async {
            let a = d.account("dav").await;
            a["state"] == "idle" && today(&a, &["added", "to_crm"]) == 1
        },
    )
    .await;
    d.stop().await;

    std::fs::remove_file(&fixed).unwrap();
    d.start().await;
    let a = d.wait_state("dav", "error").await;
    let e = a["last_error"].as_str().unwrap_or_default();
    assert!(
        e.contains("password_file") && e.contains("dav-password-2"),
        "{a}"
    );
    d.stop().await;
}

#[tokio::test]
async fn carddav_address_book_selects_one_book_by_name() {
    let Some(server) = start(Kind::Radicale).await else {
        return;
    };
    server
        .put(
            "ada.vcf",
            &v3(
                "ada",
                "N:Lovelace;Ada;;;\r\nFN:Ada Lovelace\r\nEMAIL:ada@example.org\r\n",
            ),
        )
        .await;
    let mut d = daemon_for(&server, "one-way", "address_book = \"Work contacts\"\n").await;
    d.start().await;
    let a = d.sync_now("dav").await;
    assert_eq!(today(&a, &["added", "to_crm"]), 1, "{a}");
    d.stop().await;

    let mut d = daemon_for(&server, "one-way", "address_book = \"private\"\n").await;
    d.start().await;
    let a = d.wait_state("dav", "error").await;
    let e = a["last_error"].as_str().unwrap_or_default();
    assert!(
        e.contains("No address book named \"private\"") && e.contains("contacts"),
        "{a}"
    );
    d.stop().await;
}

#[tokio::test]
async fn carddav_url_that_is_an_address_book_is_used_as_is() {
    let Some(server) = start(Kind::Xandikos).await else {
        return;
    };
    server
        .put(
            "ada.vcf",
            &v3(
                "ada",
                "N:Lovelace;Ada;;;\r\nFN:Ada Lovelace\r\nEMAIL:ada@example.org\r\n",
            ),
        )
        .await;
    let mut d = TestDaemon::new();
    let pw = d.dir.path().join("dav-password");
    std::fs::write(&pw, PASS).unwrap();
    let account = format!(
        "\n[[accounts]]\nid = \"dav\"\nprovider = \"carddav\"\nurl = \"{}\"\nusername = \"{USER}\"\npassword_file = \"{}\"\ngroup = \"all\"\ndirection = \"one-way\"\n",
        server.book,
        path_str(&pw)
    );
    d.write_config(&d.config_text("", &account));
    d.start().await;
    let a = d.sync_now("dav").await;
    assert_eq!(a["last_error"], Value::Null, "{a}");
    assert_eq!(today(&a, &["added", "to_crm"]), 1, "{a}");
    let cs = d.contacts().await;
    assert_eq!(
        cs[0]["links"][0]["provider_id"],
        "/user/contacts/addressbook/ada.vcf"
    );
    d.stop().await;
}

#[tokio::test]
async fn carddav_server_without_sync_collection_falls_back_to_etag_listing() {
    let Some(server) = start_xandikos(true).await else {
        return;
    };
    for (name, first) in [("ada", "Ada"), ("grace", "Grace"), ("alan", "Alan")] {
        server
            .put(
                &format!("{name}.vcf"),
                &v3(
                    name,
                    &format!(
                        "N:Test;{first};;;\r\nFN:{first} Test\r\nEMAIL:{name}@example.org\r\n"
                    ),
                ),
            )
            .await;
    }
    let mut d = daemon_for(&server, "one-way", "").await;
    d.start().await;
    let a = d.sync_now("dav").await;
    assert_eq!(a["last_error"], Value::Null, "{a}");
    assert_eq!(today(&a, &["added", "to_crm"]), 3, "{a}");
    assert!(
        d.log().contains("does not support sync-collection"),
        "{}",
        d.log()
    );

    // An edit, a deletion and a new card, found by comparing etag listings.
    server
        .put(
            "grace.vcf",
            &v3(
                "grace",
                "N:Test;Grace;;;\r\nFN:Grace Test\r\nEMAIL:grace@example.org\r\nTITLE:Admiral\r\n",
            ),
        )
        .await;
    server.delete("alan.vcf").await;
    server
        .put(
            "kat.vcf",
            &v3(
                "kat",
                "N:Test;Katherine;;;\r\nFN:Katherine Test\r\nEMAIL:kat@example.org\r\n",
            ),
        )
        .await;
    let a = d.sync_now("dav").await;
    assert_eq!(a["last_error"], Value::Null, "{a}");
    let cs = d.contacts().await;
    assert_eq!(cs.len(), 3, "{cs:?}");
    assert_eq!(named(&cs, "Grace")[0]["job_title"], "Admiral");
    assert!(named(&cs, "Alan").is_empty());
    assert_eq!(named(&cs, "Katherine").len(), 1);
    assert_eq!(today(&a, &["deleted", "from_provider"]), 1);
    assert_eq!(today(&a, &["added", "to_crm"]), 4);

    // Nothing changed: nothing written.
    let updated = today(&a, &["updated", "in_crm"]);
    let a = d.sync_now("dav").await;
    assert_eq!(today(&a, &["updated", "in_crm"]), updated);
    assert_eq!(d.contacts().await.len(), 3);
    d.stop().await;
}
