//! Sync health against the real binary and the simulator: an operator answers "why is X not
//! in the CRM?" and "what happened to X?" from the API and `contact-sync explain`, reads a
//! known history with an unusual day of deletions, and retries a failed push.

mod common;

use std::process::Command;

use common::*;
use contact_sync::model::{Contact, DayMetrics};
use contact_sync::sim::{Provider, SeedUser};
use contact_sync::store::{Batch, Db, Op, OutboxEntry, OutboxOp};
use serde_json::{json, Value};

const USER: &str = "health@example.com";

fn explain(d: &TestDaemon, query: &str) -> (i32, String) {
    let out = Command::new(bin())
        .arg("--config")
        .arg(d.config_path())
        .args(["explain", query])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A GET with the operator's token (the sync-health lists are the operator's).
async fn op_get(d: &TestDaemon, path: &str) -> Value {
    let (s, v) = d.admin(reqwest::Method::GET, path, None).await;
    assert_eq!(s, 200, "GET {path}: {v}");
    v
}

fn day(n: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(n))
        .format("%Y-%m-%d")
        .to_string()
}

/// Before the daemon starts: 20 days of ordinary history with one day of mass deletions,
/// and a CRM contact whose push to the provider failed.
fn seed_store(d: &TestDaemon) -> u64 {
    let db = Db::open(&d.data_dir(), contact_sync::normalize::region("US")).unwrap();
    let mut b = Batch::default();
    for n in 1..=20 {
        b.push(Op::AddMetrics {
            account: "g".into(),
            day: day(n),
            delta: DayMetrics {
                added_to_crm: 3,
                updated_in_crm: 2,
                deleted_from_provider: if n == 4 { 140 } else { n as u64 % 3 },
                ..Default::default()
            },
        });
    }
    let id = db.next_id().unwrap();
    let now = chrono::Utc::now();
    b.push(Op::PutContact(Contact {
        id,
        first_name: "Retry".into(),
        last_name: "Me".into(),
        emails: vec!["retry.me@example.org".into()],
        phones: vec![],
        address: None,
        company_id: None,
        job_title: None,
        birthday: None,
        has_photo: false,
        links: vec![],
        created_at: now,
        updated_at: now,
    }));
    b.push(Op::PutOutbox(OutboxEntry {
        account: "g".into(),
        contact_id: id,
        op: OutboxOp::Create,
        attempts: 3,
        not_before: None,
        last_error: Some("The provider refused the contact.".into()),
        failed: true,
        created_at: now,
    }));
    db.commit_durable(&b).unwrap();
    id
}

/// The scenario both tests read: Jane Doe is skipped (no email or phone), Bob Story is added
/// and then changed in Google, a known history is in the store, and a push has failed.
struct Scenario {
    sim: contact_sync::sim::Sim,
    d: TestDaemon,
    retry_id: u64,
}

async fn scenario() -> Scenario {
    let sim = start_sim(vec![SeedUser::new(USER, 20, 17)], vec![]).await;
    // Jane Doe has no email and no phone: she is skipped.
    let (s, _) = sim.control(
        Provider::Google,
        "POST",
        &format!("/_sim/users/{USER}/contacts"),
        Some(
            json!({"names": [{"givenName": "Jane", "familyName": "Doe"}],
                    "organizations": [{"name": "Acme"}]}),
        ),
    );
    assert_eq!(s, 201);
    let (s, bob) = sim.control(
        Provider::Google,
        "POST",
        &format!("/_sim/users/{USER}/contacts"),
        Some(
            json!({"names": [{"givenName": "Bob", "familyName": "Story"}],
                    "emailAddresses": [{"value": "bob.story@example.org"}]}),
        ),
    );
    assert_eq!(s, 201);
    let bob_id = bob["id"].as_str().unwrap().to_string();

    let mut d = TestDaemon::new();
    d.write_config(&d.config_text(
        "",
        &format!(
            "{}{}",
            providers_for(&sim),
            account_toml("g", "google", "all", "two-way")
        ),
    ));
    let retry_id = seed_store(&d);
    d.start().await;
    d.connect("g", &sim.refresh_token(Provider::Google, USER).unwrap())
        .await;
    d.wait_synced("g", None).await;

    // Bob's job title changes in Google.
    let (s, _) = sim.control(
        Provider::Google,
        "PATCH",
        &format!("/_sim/users/{USER}/contacts/{bob_id}"),
        Some(json!({"organizations": [{"name": "Initech", "title": "Engineer"}]})),
    );
    assert_eq!(s, 200);
    d.sync_now("g").await;
    Scenario { sim, d, retry_id }
}

#[tokio::test]
async fn health_an_operator_finds_why_a_contact_is_missing_and_what_happened_to_one() {
    let Scenario { sim, d, retry_id } = scenario().await;
    // Why is Jane Doe not in the CRM? The excluded list finds her by name.
    let (s, v) = d
        .api(reqwest::Method::GET, "/api/v1/accounts/g/skipped", None)
        .await;
    assert_eq!(s, 403, "the excluded list is the operator's: {v}");
    let skipped = op_get(&d, "/api/v1/accounts/g/skipped?q=jane").await;
    assert_eq!(skipped["total"], 1, "{skipped}");
    assert_eq!(skipped["items"][0]["name"], "Jane Doe");
    assert_eq!(skipped["items"][0]["reason"], "no_email_or_phone");
    let (code, text) = explain(&d, "Jane Doe");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("No CRM contact matches") && text.contains("no_email_or_phone: Jane Doe"),
        "{text}"
    );

    // What happened to Bob? He was added, then his job title changed in Google.
    let found = op_get(&d, "/api/v1/search?q=bob.story%40example.org").await;
    assert_eq!(found["contacts"].as_array().unwrap().len(), 1, "{found}");
    let id = found["contacts"][0]["id"].as_u64().unwrap();
    let story = op_get(&d, &format!("/api/v1/contacts/{id}/history")).await;
    assert_eq!(story["name"], "Bob Story");
    assert_eq!(story["links"][0]["account"], "g");
    assert_eq!(story["links"][0]["base"]["job_title"], "Engineer");
    let actions: Vec<&str> = story["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, vec!["added", "updated"], "{story}");
    let updated = &story["events"][1];
    assert!(updated["fields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "job_title"));
    // The story agrees with the audit files, event for event.
    let from_files: Vec<Value> = d
        .audit_lines()
        .into_iter()
        .filter(|l| l["crm_id"] == id)
        .collect();
    assert_eq!(&from_files, story["events"].as_array().unwrap());
    let (code, text) = explain(&d, "bob.story@example.org");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("Bob Story (CRM #"), "{text}");
    assert!(
        text.contains("added") && text.contains("fields: ") && text.contains("job_title"),
        "{text}"
    );

    // A known history: 20 ordinary days and one with 140 deletions that stands out.
    let h = d.get("/api/v1/accounts/g/history?days=30").await;
    let days = h["days"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    let mass = days.iter().find(|x| x["date"] == day(4)).unwrap();
    assert_eq!(mass["deleted"]["from_provider"], 140);
    assert_eq!(mass["unusual_deletions"], true);
    assert_eq!(
        days.iter()
            .filter(|x| x["unusual_deletions"] == true)
            .count(),
        1
    );
    assert_eq!(
        days.last().unwrap()["added"],
        d.account("g").await["today"]["added"],
        "today's entry equals today's metrics"
    );
    let (s, v) = d
        .api(
            reqwest::Method::GET,
            "/api/v1/accounts/g/history?days=0",
            None,
        )
        .await;
    assert_eq!(s, 400, "{v}");

    // A failed push is listed by name, and a retry sends it.
    let failing = op_get(&d, "/api/v1/accounts/g/failing?q=retry").await;
    assert_eq!(failing["total"], 1, "{failing}");
    assert_eq!(failing["items"][0]["name"], "Retry Me");
    let (s, v) = d
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/accounts/g/outbox/{retry_id}/retry"),
            None,
        )
        .await;
    assert_eq!(s, 202, "{v}");
    d.wait_for(
        "the retried push",
        std::time::Duration::from_secs(30),
        || async {
            op_get(&d, "/api/v1/accounts/g/failing").await["total"] == 0
                && d.account("g").await["outbox"]["pending"] == 0
        },
    )
    .await;
    let people = sim
        .control(
            Provider::Google,
            "GET",
            &format!("/_sim/users/{USER}/contacts"),
            None,
        )
        .1;
    assert!(
        people
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["person"]["names"][0]["familyName"] == "Me"),
        "the retried contact reached Google"
    );
    let retry_story = op_get(&d, &format!("/api/v1/contacts/{retry_id}/history")).await;
    let actions: Vec<&str> = retry_story["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"retry_requested"), "{retry_story}");
    assert!(actions.contains(&"added"), "{retry_story}");

    // The dashboard shows the chart, the counts by name, and the stories, to an operator.
    let r = d
        .http
        .get(format!("{}/accounts/g/health?q=jane", d.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no session, no health page");
    let session = d.login().await;
    let page = d
        .http
        .get(format!("{}/accounts/g/health?q=jane", d.base()))
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("no_email_or_phone: Jane Doe"), "{page}");
    let story_page = d
        .http
        .get(format!("{}/contacts/{id}", d.base()))
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(story_page.contains("Bob Story"), "{story_page}");
    assert!(story_page.contains("job_title"), "{story_page}");
}

/// The same answers through the dashboard in headless Chromium (driven by
/// `tests/browser/health.mjs` with playwright-core): log in, read the chart of a known
/// history, find a skipped contact by name, retry a failed push, open a contact's story and
/// check it agrees with the API. Screenshots are saved under `target/tmp/`.
#[tokio::test]
async fn health_browser_operator_reads_the_chart_finds_a_skipped_contact_retries_and_reads_a_story()
{
    let chromium = std::path::Path::new("/usr/bin/chromium");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/health.mjs");
    let playwright = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser/node_modules/playwright-core");
    if !chromium.exists() || !playwright.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium or playwright-core is missing in CI (.ci/install-test-deps.sh installs both)"
        );
        eprintln!("SKIP: /usr/bin/chromium or tests/browser/node_modules is missing");
        return;
    }
    let Scenario { sim, d, retry_id } = scenario().await;
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(d.base())
        .arg(ADMIN_TOKEN)
        .arg(&out_dir)
        .args(["g", "Jane Doe", "Retry Me", "bob.story@example.org"])
        .output()
        .await
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let got: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "browser script output ({e}): {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        got["error"].is_null(),
        "browser script failed: {}",
        got["error"]
    );
    assert_eq!(got["before_login_status"], 401, "{got}");
    assert_eq!(got["logged_in"], true, "{got}");

    // The chart shows the known history, and the day of mass deletions stands out.
    let bars: Vec<&str> = got["bars"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b.as_str())
        .collect();
    let mass = format!("{}: 140 deleted", day(4));
    assert!(bars.contains(&mass.as_str()), "{bars:?}");
    assert!(
        bars.contains(&format!("{}: 3 added", day(5)).as_str()),
        "{bars:?}"
    );
    assert_eq!(
        got["unusual"],
        json!([format!("{}: unusual number of deletions", day(4))])
    );
    assert_eq!(got["unusual_labels"], json!(["140 deleted"]));

    // The skipped contact, found by name.
    assert_eq!(got["excluded"], json!(["no_email_or_phone: Jane Doe"]));

    // The failed push, retried from the page, reaches Google.
    assert_eq!(got["failing_before"], 1, "{got}");
    assert!(got["after_retry_url"]
        .as_str()
        .unwrap()
        .ends_with("/accounts/g/health#failing"));
    d.wait_for(
        "the retried push",
        std::time::Duration::from_secs(30),
        || async { d.account("g").await["outbox"]["pending"] == 0 },
    )
    .await;
    let failing = op_get(&d, "/api/v1/accounts/g/failing").await;
    assert_eq!(failing["total"], 0, "{failing}");
    let people = sim
        .control(
            Provider::Google,
            "GET",
            &format!("/_sim/users/{USER}/contacts"),
            None,
        )
        .1;
    assert!(people
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["person"]["names"][0]["familyName"] == "Me"));
    let retry_story = op_get(&d, &format!("/api/v1/contacts/{retry_id}/history")).await;
    assert!(retry_story["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "retry_requested"));

    // The story page agrees with the API, event for event.
    let found = op_get(&d, "/api/v1/search?q=bob.story%40example.org").await;
    let id = found["contacts"][0]["id"].as_u64().unwrap();
    let story = op_get(&d, &format!("/api/v1/contacts/{id}/history")).await;
    let seqs: Vec<Value> = story["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].clone())
        .collect();
    let actions: Vec<Value> = story["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].clone())
        .collect();
    assert_eq!(got["story_seqs"], Value::Array(seqs), "{got}");
    assert_eq!(got["story_actions"], Value::Array(actions), "{got}");
    assert_eq!(got["story_title"], format!("Bob Story (CRM #{id})"));
    for shot in [
        "health-dashboard",
        "health-excluded",
        "health-failing",
        "health-story",
    ] {
        let p = out_dir.join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&p)
                .map(|m| m.len() > 10_000)
                .unwrap_or(false),
            "{shot} saved"
        );
    }
}
