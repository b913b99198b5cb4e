//! Storage faults with the real binary and the real store (SPEC §8): a store that cannot be
//! opened stops `contact-sync run` with exit code 73 and a message naming the data_dir; a
//! full disk puts the account in `error` without losing CRM data, and the daemon recovers
//! when space returns.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use contact_sync::sim::{Provider, SeedUser};

/// `EX_CANTCREAT`, documented in docs/reliability.md.
const EXIT_STORE: i32 = 73;

/// Runs `contact-sync run` and expects it to stop at once with exit 73; returns stderr.
fn run_expecting_store_failure(d: &TestDaemon) -> String {
    let out = Command::new(bin())
        .arg("--config")
        .arg(d.config_path())
        .arg("run")
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(EXIT_STORE), "{stderr}");
    let data_dir = d.data_dir().display().to_string();
    assert!(
        stderr.contains(&format!("cannot open the store in {data_dir}")),
        "the message names the data_dir: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn a_file_where_the_data_dir_should_be_is_a_clear_error() {
    let d = TestDaemon::new();
    d.write_config(&d.config_text("", ""));
    std::fs::write(d.data_dir(), b"not a directory").unwrap();
    let err = run_expecting_store_failure(&d);
    assert!(
        err.contains("File exists") || err.contains("Not a directory"),
        "{err}"
    );
}

#[tokio::test]
async fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text("", ""));
    d.start().await;
    // Same data_dir, another port.
    let other = d.dir.path().join("other.toml");
    let text = std::fs::read_to_string(d.config_path())
        .unwrap()
        .replace(&format!(":{}\"", d.port), &format!(":{}\"", free_port()));
    std::fs::write(&other, text).unwrap();
    let out = Command::new(bin())
        .arg("--config")
        .arg(&other)
        .arg("run")
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_STORE), "{stderr}");
    assert!(
        stderr.contains("another contact-sync running with this data_dir"),
        "{stderr}"
    );
    // The first one is unaffected.
    let r = d
        .http
        .get(format!("{}/healthz", d.base()))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(d.stop().await.success());
}

#[tokio::test]
async fn a_store_damaged_from_its_start_is_refused_not_replaced_by_an_empty_one() {
    let mut d = TestDaemon::new();
    d.write_config(&d.config_text("", ""));
    d.start().await;
    for i in 0..20 {
        let (s, v) = d
            .api(
                reqwest::Method::POST,
                "/api/v1/contacts",
                Some(serde_json::json!({"first_name": format!("P{i}"), "emails": [format!("p{i}@x.org")]})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    assert!(d.stop().await.success());
    let log = d.data_dir().join("store").join("db");
    let mut bytes = std::fs::read(&log).unwrap();
    let n = bytes.len().min(4096);
    bytes[..n].fill(0xA5);
    std::fs::write(&log, bytes).unwrap();
    let err = run_expecting_store_failure(&d);
    assert!(err.contains("the store is damaged"), "{err}");
}

// ---------------------------------------------------------------------------------------
// A full disk: an 8 MiB tmpfs as the data_dir (needs root; skipped otherwise).
// ---------------------------------------------------------------------------------------

fn person(i: usize) -> serde_json::Value {
    serde_json::json!({
        "names": [{"givenName": format!("Disk{i}"), "familyName": "Full"}],
        "emailAddresses": [{"value": format!("disk{i}@full.example")}],
    })
}

#[tokio::test]
async fn a_full_disk_fails_rounds_cleanly_and_the_daemon_recovers_when_space_returns() {
    const USER: &str = "disk@example.com";
    let mut d = TestDaemon::new();
    let Some(_mount) = Tmpfs::mount(&d.data_dir(), "8m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the in-memory full-disk test covers the logic");
        return;
    };
    let sim = start_sim(vec![SeedUser::new(USER, 150, 21)], vec![]).await;
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
    let before = d.contacts().await;
    assert!(!before.is_empty());

    // The disk fills up; 400 new provider contacts arrive.
    let filler = fill(&d.data_dir());
    for i in 0..400 {
        let (s, v) = sim.control(
            Provider::Google,
            "POST",
            &format!("/_sim/users/{USER}/contacts"),
            Some(person(i)),
        );
        assert_eq!(s, 201, "{v}");
    }
    let (s, _) = d.admin(reqwest::Method::POST, "/api/v1/sync", None).await;
    assert_eq!(s, 202);
    let a = d.wait_state("g", "error").await;
    let msg = a["last_error"].as_str().unwrap_or_default();
    assert!(msg.contains("No space left on device"), "{msg}");
    // The API still answers, and a CRM edit is refused with the reason.
    let r = d
        .http
        .get(format!("{}/healthz", d.base()))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (s, v) = d
        .api(
            reqwest::Method::POST,
            "/api/v1/contacts",
            Some(serde_json::json!({"first_name": "Nospace", "emails": ["n@x.org"]})),
        )
        .await;
    assert_eq!(s, 503, "{v}");
    // Reads may fail too while the store is in error (sled stops after an I/O error), but
    // with a clear 503, never a wrong answer.
    let (s, v) = d
        .api(reqwest::Method::GET, "/api/v1/contacts?limit=1000", None)
        .await;
    if s == 200 {
        let during = v["contacts"].as_array().cloned().unwrap_or_default();
        for c in &before {
            assert!(during.iter().any(|x| x["id"] == c["id"]), "lost {c}");
        }
    } else {
        assert_eq!(s, 503, "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap_or_default()
                .contains("No space left"),
            "{v}"
        );
    }

    // Space returns: the next rounds apply everything.
    std::fs::remove_file(&filler).unwrap();
    d.wait_for(
        "a clean round after space returned",
        Duration::from_secs(120),
        || async {
            let a = d.account("g").await;
            a["state"] == "idle"
                && a["last_error"].is_null()
                && a["last_sync"] != first["last_sync"]
        },
    )
    .await;
    let (eligible, _) = expected(&google_changes(&sim, USER));
    let after = d.contacts().await;
    assert_eq!(check_no_duplicates(&after, "g").len(), eligible.len());

    // sled stops for good after an I/O error: the store was reopened in place.
    assert!(
        d.log().contains("Store reopened after an I/O error"),
        "{}",
        d.log()
    );
    // And it is durable: a restart finds the same CRM.
    assert!(d.stop().await.success());
    d.start().await;
    let reopened = d.contacts().await;
    assert_eq!(reopened, after);
}
