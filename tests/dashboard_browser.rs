//! The dashboard in a real browser: headless Chromium loads `/` of a demo daemon synced
//! from the simulator, the numbers must equal `/api/v1/accounts`, the hover text (title
//! attributes) must carry the breakdowns, and a screenshot is saved under the target dir.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium() -> Option<PathBuf> {
    let p = Path::new(CHROMIUM);
    if p.exists() {
        return Some(p.to_path_buf());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{CHROMIUM} is missing in CI (.ci/install-test-deps.sh installs Debian's chromium)"
    );
    eprintln!("SKIP: {CHROMIUM} is not installed");
    None
}

async fn run_chromium(exe: &Path, profile: &Path, args: &[&str]) -> Vec<u8> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finishes")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The attribute `title` and the text of the first element with `class="metric KIND"` in
/// `row`.
fn metric(row: &str, kind: &str) -> (String, String) {
    let at = row
        .find(&format!("class=\"metric {kind}\""))
        .unwrap_or_else(|| panic!("no {kind} cell in {row}"));
    let cell = &row[at..];
    let t = cell.find("title=\"").expect("title") + 7;
    let title = &cell[t..t + cell[t..].find('"').expect("title end")];
    let body = &cell[cell.find('>').expect(">") + 1..];
    let text: String = body.chars().take_while(|c| *c != '<').collect();
    (title.to_string(), text.trim().to_string())
}

struct Demo(tokio::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            // SIGTERM so the demo removes its temporary directory.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            for _ in 0..100 {
                if matches!(self.0.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium_shows_the_api_numbers_and_breakdowns() {
    let Some(exe) = chromium() else { return };
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("demo.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = tokio::process::Command::new(bin())
        .args([
            "demo",
            "--listen",
            // Port 0: the demo binds a free port and prints it (no race with other tests).
            "127.0.0.1:0",
            "--contacts",
            "60",
            "--seed",
            "3",
        ])
        .env("CONTACT_SYNC_FAST_RETRY", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let demo = Demo(child);
    let mut token = None;
    let mut login = None;
    let mut base = None;
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(180), out.read_line(&mut line))
            .await
            .expect("demo prints its summary")
            .unwrap();
        assert!(
            n > 0,
            "demo ended: {seen}\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        seen.push_str(&line);
        if let Some(rest) = line.strip_prefix("Dashboard:") {
            base = Some(rest.trim().trim_end_matches('/').to_string());
        }
        if let Some(rest) = line.strip_prefix("CRM token:") {
            token = rest.split_whitespace().next().map(str::to_string);
        }
        if let Some(rest) = line.strip_prefix("Log in:") {
            login = rest.split_whitespace().next().map(str::to_string);
        }
        if line.starts_with("CRM contacts:") {
            break;
        }
    }
    let token = token.expect("CRM token printed");
    // The dashboard needs an operator session: each Chromium run opens the login link the
    // demo printed (`/login#token=…`), which posts the login form and lands on `/`.
    let login = login.expect("login link printed");
    let base = base.expect("dashboard URL printed");
    let http = reqwest::Client::new();
    let read_today = || async {
        let api: serde_json::Value = http
            .get(format!("{base}/api/v1/accounts"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        api["accounts"].as_array().unwrap().clone()
    };
    let profile = tempfile::tempdir().unwrap();
    // Two-way pushes may still move today's numbers after the first sync: compare the page
    // with the API read just before and just after it, until both reads agree.
    let mut attempt = 0;
    let (accounts, dom) = loop {
        attempt += 1;
        let before = read_today().await;
        let dom = run_chromium(
            &exe,
            profile.path(),
            &["--virtual-time-budget=5000", "--dump-dom", &login],
        )
        .await;
        let after = read_today().await;
        let today =
            |v: &[serde_json::Value]| v.iter().map(|a| a["today"].clone()).collect::<Vec<_>>();
        if today(&before) == today(&after) || attempt == 10 {
            break (after, String::from_utf8_lossy(&dom).to_string());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(accounts.len(), 3, "{accounts:?}");
    assert!(dom.contains("<h1>contact-sync</h1>"), "{dom}");
    for a in &accounts {
        let id = a["id"].as_str().unwrap();
        let start = dom
            .find(&format!("data-account=\"{id}\""))
            .unwrap_or_else(|| panic!("row of {id} in {dom}"));
        let row = &dom[start..start + dom[start..].find("</tr>").unwrap()];
        let t = &a["today"];
        let n = |v: &serde_json::Value| v.as_u64().unwrap();
        let (title, text) = metric(row, "added");
        assert_eq!(
            text,
            (n(&t["added"]["to_crm"]) + n(&t["added"]["to_provider"])).to_string(),
            "{id} added"
        );
        assert!(
            title.contains(&format!(
                "Created in the CRM from the provider: {}",
                t["added"]["to_crm"]
            )),
            "{title}"
        );
        assert!(title.contains(&format!(
            "Created in the provider from the CRM: {}",
            t["added"]["to_provider"]
        )));
        let (title, text) = metric(row, "updated");
        assert_eq!(
            text,
            (n(&t["updated"]["in_crm"]) + n(&t["updated"]["in_provider"])).to_string()
        );
        assert!(title.contains(&format!("Updated in the CRM: {}", t["updated"]["in_crm"])));
        assert!(title.contains(&format!(
            "Updated in the provider: {}",
            t["updated"]["in_provider"]
        )));
        let (title, text) = metric(row, "deleted");
        assert_eq!(text, t["deleted"]["from_provider"].to_string());
        assert!(title.contains(id), "{title}");
        let (title, text) = metric(row, "skipped");
        let skipped: u64 = t["skipped"].as_object().unwrap().values().map(n).sum();
        assert_eq!(text, skipped.to_string());
        for (reason, count) in t["skipped"].as_object().unwrap() {
            assert!(title.contains(&format!("{reason}: {count}")), "{title}");
        }
        assert!(n(&t["added"]["to_crm"]) > 0, "{a}");
    }
    assert!(dom.contains("Recent events"));
    assert!(dom.contains("<b>added</b>"), "audit events are listed");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &exe,
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,800",
            "--virtual-time-budget=5000",
            &login,
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.len() > 1000, "screenshot is {} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    eprintln!("Screenshot: {}", shot.display());
    drop(demo);
}
