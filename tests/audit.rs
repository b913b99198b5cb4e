//! The audit trail (SPEC §7, §8): events are stored with the change they describe and drained
//! to the daily files; a full disk makes a backlog that drains when space returns; a real
//! shipper (rsyslog with imfile) receives every event across daemon and shipper restarts and
//! a change of the day's file.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use contact_sync::sim::{Provider, SeedUser};
use serde_json::{json, Value};

fn person(i: usize, tag: &str) -> Value {
    json!({
        "names": [{"givenName": format!("{tag}{i}"), "familyName": "Audit"}],
        "emailAddresses": [{"value": format!("{tag}{i}@audit.example")}],
    })
}

fn add_people(sim: &contact_sync::sim::Sim, user: &str, tag: &str, n: usize) {
    for i in 0..n {
        let (s, v) = sim.control(
            Provider::Google,
            "POST",
            &format!("/_sim/users/{user}/contacts"),
            Some(person(i, tag)),
        );
        assert_eq!(s, 201, "{v}");
    }
}

/// The distinct `seq`s of the audit files, checked to run from 1 without a gap.
fn seqs_without_gaps(lines: &[Value]) -> BTreeSet<u64> {
    let seqs: BTreeSet<u64> = lines
        .iter()
        .map(|l| l["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {l}")))
        .collect();
    let max = seqs.iter().next_back().copied().unwrap_or(0);
    assert_eq!(
        seqs.len() as u64,
        max,
        "every seq from 1 to {max} is in the audit files"
    );
    seqs
}

async fn audit_status(d: &TestDaemon) -> (u64, Option<String>) {
    let v = d.get("/api/v1/accounts").await;
    (
        v["audit_backlog"].as_u64().unwrap_or(0),
        v["audit_error"].as_str().map(str::to_string),
    )
}

// ---------------------------------------------------------------------------------------
// A full audit disk: the backlog grows, syncing goes on, and the backlog drains.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn audit_full_disk_grows_a_backlog_that_drains_when_space_returns() {
    const USER: &str = "auditdisk@example.com";
    let mut d = TestDaemon::new();
    let Some(_mount) = Tmpfs::mount(&d.audit_dir(), "2m") else {
        if std::env::var_os("CI").is_some() {
            panic!("cannot mount a tmpfs for the full-disk test (CI runs as root)");
        }
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let sim = start_sim(vec![SeedUser::new(USER, 40, 3)], vec![]).await;
    d.write_config(&d.config_text(
        "",
        &format!(
            "{}{}",
            providers_for(&sim),
            account_toml("g", "google", "all", "one-way")
        ),
    ));
    d.start().await;
    d.connect("g", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    let first = d.wait_synced("g", None).await;
    let before = d.audit_lines().len();
    assert!(before > 0);

    // The audit disk fills up; 200 new provider contacts arrive and sync.
    let filler = fill(&d.audit_dir());
    add_people(&sim, USER, "Full", 200);
    let a = d.sync_now("g").await;
    assert_eq!(a["state"], "idle", "syncing goes on with a full audit disk");
    let added = today(&a, &["added", "to_crm"]) - today(&first, &["added", "to_crm"]);
    assert_eq!(added, 200, "the new contacts are in the CRM");
    let (backlog, error) = audit_status(&d).await;
    assert!(backlog >= 200, "the events wait in the store: {backlog}");
    let error = error.expect("the write error is shown");
    assert!(error.contains("No space left on device"), "{error}");
    let metrics = d
        .http
        .get(format!("{}/metrics", d.base()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("contact_sync_audit_backlog {backlog}")),
        "{metrics}"
    );
    // The status command shows the backlog and the reason.
    let out = Command::new(bin())
        .arg("--config")
        .arg(d.config_path())
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("The audit log cannot be written"),
        "status: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Space returns: the backlog drains, in order, without a gap or a repeat.
    std::fs::remove_file(filler).unwrap();
    d.wait_for(
        "the audit backlog to drain",
        Duration::from_secs(60),
        || async { audit_status(&d).await == (0, None) },
    )
    .await;
    let lines = d.audit_lines();
    let seqs = seqs_without_gaps(&lines);
    assert_eq!(seqs.len(), lines.len(), "no line repeated without a crash");
    let added_lines = lines
        .iter()
        .filter(|l| l["action"] == "added" && l["provider_id"].is_string())
        .count() as u64;
    assert_eq!(
        added_lines,
        today(&d.account("g").await, &["added", "to_crm"]),
        "every contact added has its event"
    );
}

// ---------------------------------------------------------------------------------------
// rsyslog's imfile ships every event to a listener.
// ---------------------------------------------------------------------------------------

/// rsyslogd by its Debian path (root's PATH may lack /usr/sbin), else from PATH.
fn rsyslogd() -> &'static str {
    if Path::new("/usr/sbin/rsyslogd").exists() {
        "/usr/sbin/rsyslogd"
    } else {
        "rsyslogd"
    }
}

struct Rsyslog {
    child: Option<Child>,
    conf: PathBuf,
    pid: PathBuf,
}

impl Rsyslog {
    fn config(work: &Path, audit_dir: &Path, port: u16) -> String {
        format!(
            r#"global(workDirectory="{work}")
module(load="imfile" mode="inotify")
input(type="imfile" File="{audit}/audit.*.jsonl" Tag="contact-sync-audit"
      persistStateInterval="1" reopenOnTruncate="on")
template(name="line" type="string" string="%msg%\n")
action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp" template="line"
       queue.type="LinkedList" queue.filename="forward" queue.saveOnShutdown="on"
       action.resumeRetryCount="-1" action.resumeInterval="1")
"#,
            work = work.display(),
            audit = audit_dir.display(),
        )
    }

    fn start(dir: &Path, audit_dir: &Path, port: u16) -> Rsyslog {
        let work = dir.join("rsyslog-work");
        std::fs::create_dir_all(&work).unwrap();
        let conf = dir.join("rsyslog.conf");
        std::fs::write(&conf, Self::config(&work, audit_dir, port)).unwrap();
        let mut r = Rsyslog {
            child: None,
            conf,
            pid: dir.join("rsyslog.pid"),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let out = Command::new(rsyslogd())
            .arg("-N1")
            .arg("-f")
            .arg(&self.conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rsyslog rejects the config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.child = Some(
            Command::new(rsyslogd())
                .arg("-n")
                .arg("-f")
                .arg(&self.conf)
                .arg("-i")
                .arg(&self.pid)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }

    /// SIGTERM (rsyslog saves its file offsets and queue), then start again.
    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TCP listener collecting the JSON lines rsyslog forwards.
fn listener() -> (u16, Arc<Mutex<Vec<Value>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { break };
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    if let Ok(v) = serde_json::from_str::<Value>(line) {
                        sink.lock().unwrap().push(v);
                    }
                }
            });
        }
    });
    (port, got)
}

fn received_seqs(got: &Arc<Mutex<Vec<Value>>>) -> BTreeSet<u64> {
    got.lock()
        .unwrap()
        .iter()
        .filter_map(|v| v["seq"].as_u64())
        .collect()
}

#[tokio::test]
async fn audit_rsyslog_imfile_ships_every_event_across_restarts_and_a_new_day_file() {
    const USER: &str = "ship@example.com";
    if Command::new(rsyslogd()).arg("-v").output().is_err() {
        if std::env::var_os("CI").is_some() {
            panic!("rsyslogd is not installed (.ci/install-test-deps.sh installs it)");
        }
        eprintln!("SKIPPED: rsyslogd is not installed (apt-get install rsyslog)");
        return;
    }
    let sim = start_sim(vec![SeedUser::new(USER, 30, 8)], vec![]).await;
    let mut d = TestDaemon::new();
    // Two zones whose dates always differ (UTC-11 and UTC+14): switching between them moves
    // the events to the next day's file, as midnight does.
    let config = |tz: &str| {
        d.config_text(
            &format!("timezone = \"{tz}\""),
            &format!(
                "{}{}",
                providers_for(&sim),
                account_toml("g", "google", "all", "one-way")
            ),
        )
    };
    let (first_tz, second_tz) = (config("Pacific/Pago_Pago"), config("Pacific/Kiritimati"));
    d.write_config(&first_tz);
    std::fs::create_dir_all(d.audit_dir()).unwrap();
    let (port, got) = listener();
    let mut rsyslog = Rsyslog::start(d.dir.path(), &d.audit_dir(), port);

    d.start().await;
    d.connect("g", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    d.wait_synced("g", None).await;

    // A daemon restart in the middle.
    assert!(d.stop().await.success());
    add_people(&sim, USER, "Restart", 10);
    d.start().await;
    d.sync_now("g").await;

    // An rsyslog restart while events are being written.
    rsyslog.stop();
    add_people(&sim, USER, "Shipper", 10);
    d.sync_now("g").await;
    rsyslog.spawn();

    // The day's file changes.
    let jsonl_files = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
            .count()
    };
    let files_before = jsonl_files(&d.audit_dir());
    d.write_config(&second_tz);
    d.wait_for("the reload", Duration::from_secs(20), || async {
        d.audit_lines()
            .iter()
            .any(|l| l["action"] == "config_reloaded")
    })
    .await;
    add_people(&sim, USER, "NewDay", 10);
    d.sync_now("g").await;
    assert_eq!(
        jsonl_files(&d.audit_dir()),
        files_before + 1,
        "a new day's file was started"
    );
    rsyslog.restart();

    d.wait_for(
        "the audit backlog to drain",
        Duration::from_secs(30),
        || async { audit_status(&d).await.0 == 0 },
    )
    .await;
    let lines = d.audit_lines();
    let written = seqs_without_gaps(&lines);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got_seqs = received_seqs(&got);
        if written.is_subset(&got_seqs) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rsyslog did not deliver seqs {:?}",
            written.difference(&got_seqs).take(20).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The shipped events are the ones written, field for field.
    let received = got.lock().unwrap().clone();
    for l in &lines {
        assert!(received.contains(l), "shipped as written: {l}");
    }
    for action in [
        "started",
        "stopped",
        "added",
        "config_reloaded",
        "connected",
    ] {
        assert!(
            received.iter().any(|l| l["action"] == action),
            "a {action} event was shipped"
        );
    }
}
