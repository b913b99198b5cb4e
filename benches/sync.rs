//! Benchmarks of contact-sync (`harness = false`).
//!
//! `cargo bench --bench sync -- <case>...` runs the named cases (all when none is named);
//! `scripts/bench.sh` builds once, runs every case and regenerates `docs/benchmarks.md`.
//!
//! Every case repeats `--runs N` times (default 5, or `BENCH_RUNS`) and reports the median,
//! min and max of each measurement. Peak memory never accumulates across runs or cases:
//! - `plan_write_25k` runs each repetition in a fresh child process (this binary re-executed
//!   with `BENCH_CHILD` naming the case) that reports its own wall time, CPU time
//!   (`getrusage(RUSAGE_SELF)`) and peak RSS (`VmHWM`).
//! - The daemon cases run the real `contact-sync` binary (release, built by `cargo bench`)
//!   against the simulator, which runs in this process; the daemon's CPU time and peak RSS
//!   are read from `/proc/<pid>/stat` and `/proc/<pid>/status` (`VmHWM`), one fresh daemon
//!   per repetition (the steady-state cases share one daemon across their repetitions).
//!
//! Without `--bench` (e.g. `cargo test --all-targets`) the binary only prints how to run it.
//!
//! Sizes: `BENCH_CONTACTS` (default 25000) for every case but the ten-account one, which
//! uses `BENCH_TEN_CONTACTS` (default 25000) per account. The case names keep their nominal
//! size; the reports say the size used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use contact_sync::config::{Direction, Group, ProviderKind};
use contact_sync::model::{Address, Change, Company, Contact, Fields, ProviderContact};
use contact_sync::providers::google::GoogleClient;
use contact_sync::providers::graph::GraphClient;
use contact_sync::providers::http::RetryPolicy;
use contact_sync::providers::oauth::{OAuthClient, TokenSource};
use contact_sync::providers::ProgressFn;
use contact_sync::sim::{FaultConfig, Provider, SeedUser, Sim, SimOptions};
use contact_sync::store::{Batch, Db, Op};
use contact_sync::sync::{self, Action, PlanContext};
use secrecy::SecretString;
use serde_json::{json, Value};

const CASES: &[&str] = &[
    "plan_write_25k",
    "plan_write_250k",
    "google_initial_25k",
    "outlook_initial_25k",
    "google_initial_25k_50ms",
    "outlook_initial_25k_50ms",
    "ten_accounts_25k",
    "incremental_1pct",
    "no_change_poll",
];

/// Set in a re-executed child: the case it measures.
/// The daemon's allocator (src/main.rs), so that the in-process cases (plan_write, the
/// fetch-only clients) measure what the daemon runs.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHILD_ENV: &str = "BENCH_CHILD";
/// The daemon's chunk size.
use contact_sync::actors::account::CHUNK;
use contact_sync::actors::writer::FLUSH_EVERY_CHUNKS;
/// Printed by a child before its JSON result.
const RESULT_TAG: &str = "BENCH_RESULT ";
const API_TOKEN: &str = "bench-api-token-0123456789";
/// The operator's token: the bench asks for rounds (`POST /api/v1/sync`), an operator action.
const ADMIN_TOKEN: &str = "bench-admin-token-9876543210";

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn contacts_per_account() -> usize {
    env_usize("BENCH_CONTACTS", 25_000)
}

// ---------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------

/// CPU time (user + system) of this process, all threads, in seconds.
fn cpu_self() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A `kB` line of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in MiB.
fn proc_status_mb(pid: &str, key: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU time (user + system) of another process, from `/proc/<pid>/stat`, in seconds.
fn proc_cpu(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses: state is field 3, utime 14,
    // stime 15.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// One repetition's measurements, in report order.
#[derive(Debug, Default, Clone)]
struct Sample(Vec<(String, f64)>);

impl Sample {
    fn put(&mut self, key: &str, v: f64) {
        self.0.push((key.to_string(), v));
    }
}

/// A case's report: per measurement the values of every repetition.
struct Summary {
    case: String,
    params: String,
    rows: Vec<(String, Vec<f64>)>,
    /// (label, numerator, denominator) over medians.
    ratios: Vec<(String, String, String)>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

impl Summary {
    fn new(case: &str, params: String, samples: &[Sample]) -> Summary {
        let mut rows: Vec<(String, Vec<f64>)> = vec![];
        for s in samples {
            for (k, v) in &s.0 {
                match rows.iter_mut().find(|(rk, _)| rk == k) {
                    Some((_, vs)) => vs.push(*v),
                    None => rows.push((k.clone(), vec![*v])),
                }
            }
        }
        Summary {
            case: case.to_string(),
            params,
            rows,
            ratios: vec![],
        }
    }

    fn ratio(mut self, label: &str, num: &str, den: &str) -> Self {
        self.ratios
            .push((label.to_string(), num.to_string(), den.to_string()));
        self
    }

    fn med(&self, key: &str) -> f64 {
        self.rows
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| median(v))
            .unwrap_or(f64::NAN)
    }

    fn markdown(&self) -> String {
        let runs = self.rows.first().map(|(_, v)| v.len()).unwrap_or(0);
        let mut out = format!(
            "### `{}`\n\n{}\n\nReproduce: `cargo bench --bench sync -- {}` ({runs} runs; median, min, max).\n\n| measurement | median | min | max |\n|---|---:|---:|---:|\n",
            self.case, self.params, self.case
        );
        for (k, v) in &self.rows {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            out.push_str(&format!(
                "| {k} | {} | {} | {} |\n",
                fmt(median(v)),
                fmt(min),
                fmt(max)
            ));
        }
        if !self.ratios.is_empty() {
            out.push('\n');
            for (label, n, d) in &self.ratios {
                out.push_str(&format!(
                    "- {label}: **{}**\n",
                    fmt(self.med(n) / self.med(d))
                ));
            }
        }
        out.push('\n');
        out
    }
}

// ---------------------------------------------------------------------------------------
// Case 1: plan + write against a store of CRM contacts
// ---------------------------------------------------------------------------------------

const FIRST: &[&str] = &[
    "Anna", "Ben", "Chloé", "David", "Elif", "Femi", "Grace", "Hiroshi", "Ines", "Jonas", "Kavya",
    "Liam", "Maja", "Nikolai", "Olga", "Pedro", "Qing", "Rosa", "Sven", "Tariq", "Ursula",
    "Viktor", "Wen", "Ximena", "Yusuf", "Zoë", "Aoife", "Björn", "Carmen", "Dmitri", "Eva",
    "Farid",
];
const LAST: &[&str] = &[
    "Adams",
    "Baker",
    "Carter",
    "Dubois",
    "Evans",
    "Fischer",
    "García",
    "Hughes",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "López",
    "Müller",
    "Nakamura",
    "O'Brien",
    "Petrov",
    "Quinn",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Uddin",
    "Varga",
    "Weber",
    "Xu",
    "Yilmaz",
    "Zimmermann",
    "Andersson",
    "Bianchi",
    "Costa",
    "Dijkstra",
    "Eriksen",
    "Fontaine",
    "Gupta",
    "Horvat",
    "Ibrahim",
    "Jovanović",
    "Kim",
    "Lindqvist",
    "Moreau",
    "Novak",
    "Okafor",
    "Papadopoulos",
    "Rahman",
    "Silva",
    "Torres",
    "Ueda",
    "Vasquez",
    "Walsh",
    "Yamamoto",
    "Zhang",
    "Ahmed",
    "Bauer",
    "Chen",
    "Duarte",
    "Engel",
    "Ferreira",
    "Gallo",
    "Haas",
    "Ito",
    "Jung",
    "Kaur",
    "Larsen",
    "Meyer",
    "Nowak",
];
const COMPANIES: usize = 500;

/// Person `i` of the synthetic population: names repeat every 2048 people (so name keys
/// collide as in a real address book), emails and phones are unique, companies repeat
/// every 500 people. No two people share name and company below index 256,000.
fn person(i: usize) -> Fields {
    Fields {
        first_name: FIRST[i % FIRST.len()].to_string(),
        last_name: LAST[(i / FIRST.len()) % LAST.len()].to_string(),
        emails: vec![format!("person{i}@example.com")],
        phones: vec![format!(
            "(415) {:03}-{:04}",
            200 + (i / 10_000) % 800,
            i % 10_000
        )],
        address: Some(Address {
            street: Some(format!("{} Market Street", i % 997 + 1)),
            city: Some("San Francisco".into()),
            region: Some("CA".into()),
            postal_code: Some(format!("94{:03}", i % 200)),
            country: Some("US".into()),
        }),
        organization: Some(format!("Company {:03}", i % COMPANIES)),
        job_title: Some("Engineer".into()),
        birthday: None,
    }
}

fn region() -> phonenumber::country::Id {
    contact_sync::normalize::region("US")
}

/// Writes `n` CRM contacts (persons `0..n`) and their companies into a fresh store.
fn build_crm_store(dir: &Path, n: usize) -> Res<()> {
    let db = Db::open(dir, region())?;
    let now = Utc::now();
    let mut batch = Batch::default();
    let mut company_ids = vec![];
    for c in 0..COMPANIES {
        let id = db.next_id()?;
        company_ids.push(id);
        batch.push(Op::PutCompany(Company {
            id,
            name: format!("Company {c:03}"),
            created_at: now,
        }));
    }
    db.commit(&batch)?;
    for start in (0..n).step_by(CHUNK) {
        let mut batch = Batch::default();
        for i in start..(start + CHUNK).min(n) {
            let f = person(i);
            batch.push(Op::PutContact(Contact {
                id: db.next_id()?,
                first_name: f.first_name,
                last_name: f.last_name,
                emails: f.emails,
                phones: f.phones,
                address: f.address,
                company_id: Some(company_ids[i % COMPANIES]),
                job_title: f.job_title,
                birthday: None,
                has_photo: false,
                links: vec![],
                created_at: now,
                updated_at: now,
            }));
        }
        db.commit(&batch)?;
    }
    db.flush()?;
    Ok(())
}

/// `n` provider contacts: persons `0..n/2` (same name and email as CRM contacts, with a new
/// job title and a second phone) interleaved with persons `crm..crm + n/2` (new to the CRM of
/// `crm` contacts). Past person 256,000 names and companies repeat together, so when the new
/// persons reach that far their last names get a suffix: they stay new to the CRM.
fn provider_changes(n: usize, crm: usize) -> Vec<Change> {
    let half = n / 2;
    let mut out = Vec::with_capacity(2 * half);
    let upsert = |pid: String, fields: Fields| {
        Change::Upsert(ProviderContact {
            provider_id: pid,
            etag: Some("\"e1\"".into()),
            scope: String::new(),
            fields,
            photo_url: None,
        })
    };
    for k in 0..half {
        let mut matched = person(k);
        matched.job_title = Some("Senior Engineer".into());
        matched
            .phones
            .push(format!("+1 628 {:03} {:04}", 200 + k / 10_000, k % 10_000));
        out.push(upsert(format!("people/m{k}"), matched));
        let mut new = person(crm + k);
        if crm + half > 256_000 {
            new.last_name.push_str("-Neu");
        }
        out.push(upsert(format!("people/n{k}"), new));
    }
    out
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// The measured part of `plan_write_25k` / `plan_write_250k`, in a fresh child process.
fn child_plan_write() -> Res<Value> {
    let dir = PathBuf::from(std::env::var("BENCH_STORE")?);
    let n = contacts_per_account();
    let crm = env_usize("BENCH_CRM_SIZE", n);
    let changes = provider_changes(n, crm);
    let rss_before = proc_status_mb("self", "VmRSS");
    let (cpu0, t0) = (cpu_self(), Instant::now());
    let db = Db::open(&dir, region())?;
    let open_s = t0.elapsed().as_secs_f64();
    // The matching index's filter is filled from the store after opening, in the
    // background (a daemon's first round usually waits for the network meanwhile). Waited
    // for here, so that planning is measured with it, as in a running daemon.
    let t_fill = Instant::now();
    while !db.index_filter_ready() {
        if t_fill.elapsed() > Duration::from_secs(120) {
            return Err("the index filter was not filled within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let fill_s = t_fill.elapsed().as_secs_f64();
    let ctx = PlanContext {
        account: "bench".into(),
        provider: ProviderKind::Google,
        direction: Direction::OneWay,
        audit_values: false,
        now: Utc::now(),
        two_way: vec![],
    };
    let (mut created, mut linked, mut ops) = (0, 0, 0);
    let (mut plan_s, mut write_s) = (0.0, 0.0);
    let chunks: Vec<&[Change]> = changes.chunks(CHUNK).collect();
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.into_iter().enumerate() {
        let t = Instant::now();
        let mut plan = sync::plan(&db, ctx.clone(), chunk, &HashMap::new())?;
        plan_s += t.elapsed().as_secs_f64();
        created += plan.count(|a| matches!(a, Action::Create { .. }));
        linked += plan.count(|a| matches!(a, Action::Link { .. }));
        // What the writer actor adds to every page.
        plan.batch.push(Op::AddMetrics {
            account: "bench".into(),
            day: "2026-01-01".into(),
            delta: std::mem::take(&mut plan.metrics),
        });
        if i == last {
            plan.batch.push(Op::SetCursor {
                account: "bench".into(),
                cursor: Some(b"cursor".to_vec()),
            });
        }
        ops += plan.batch.ops.len();
        let t = Instant::now();
        // As the writer does: the chunk with the cursor is flushed before and after, the
        // others every FLUSH_EVERY_CHUNKS.
        if i == last {
            db.flush()?;
            db.commit_durable(&plan.batch)?;
        } else {
            db.commit(&plan.batch)?;
            if i % FLUSH_EVERY_CHUNKS == FLUSH_EVERY_CHUNKS - 1 {
                db.flush()?;
            }
        }
        write_s += t.elapsed().as_secs_f64();
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_self() - cpu0;
    Ok(json!([
        ["plan + write time (s)", wall],
        ["↳ of which open store (s)", open_s],
        ["↳ of which index filter fill after the open (s)", fill_s],
        [
            "plan + commit, store open and filter filled (s)",
            plan_s + write_s
        ],
        ["↳ of which plan (s)", plan_s],
        ["↳ of which commit (s)", write_s],
        ["µs per provider contact", wall / n as f64 * 1e6],
        ["CPU time (s)", cpu],
        [
            "peak RSS, whole child (MiB)",
            proc_status_mb("self", "VmHWM")
        ],
        ["RSS before opening the store (MiB)", rss_before],
        ["contacts created", created],
        ["contacts matched + linked", linked],
        ["store ops written", ops],
    ]))
}

fn run_child(case: &str, envs: &[(&str, String)]) -> Res<Sample> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(CHILD_ENV, case).stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix(RESULT_TAG)) else {
        return Err(format!(
            "child {case} failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    };
    // An array of [name, value] pairs keeps the report order.
    let v: Vec<(String, f64)> = serde_json::from_str(line)?;
    let mut s = Sample::default();
    for (k, v) in v {
        s.put(&k, v);
    }
    Ok(s)
}

/// `plan_write_25k` (a CRM as large as the account) and `plan_write_250k` (the same 25,000
/// provider contacts against a CRM ten times larger).
fn plan_write(case: &str, crm_factor: usize, runs: usize) -> Res<Summary> {
    let n = contacts_per_account();
    let crm = n * crm_factor;
    let template = tempfile::tempdir()?;
    let t = Instant::now();
    build_crm_store(&template.path().join("store"), crm)?;
    eprintln!(
        "{case}: CRM store of {crm} contacts built in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let mut samples = vec![];
    for r in 0..runs {
        let run_dir = tempfile::tempdir()?;
        let store = run_dir.path().join("store");
        copy_dir(&template.path().join("store"), &store)?;
        let s = run_child(
            "plan_write",
            &[
                ("BENCH_STORE", store.display().to_string()),
                ("BENCH_CRM_SIZE", crm.to_string()),
            ],
        )?;
        eprintln!("{case} run {}: {:?}", r + 1, s.0.first());
        samples.push(s);
    }
    let params = format!(
        "A sled store (tempdir) holding {crm} CRM contacts ({COMPANIES} companies); {n} provider contacts, half matching CRM contacts by name + email, half new, planned with `sync::plan` and written with `Db::commit` in chunks of {CHUNK} (flushed every {FLUSH_EVERY_CHUNKS} chunks and after the last, as the writer does), in a fresh process per run. Planning starts once the store is open and its index filter filled (both timed, within plan + write time)."
    );
    Ok(Summary::new(case, params, &samples).ratio(
        "share of the time in commit",
        "↳ of which commit (s)",
        "plan + write time (s)",
    ))
}

// ---------------------------------------------------------------------------------------
// The daemon: the real binary against the simulator
// ---------------------------------------------------------------------------------------

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// An account of the daemon under test: id, provider, and the sim user behind it.
struct Acct {
    id: String,
    provider: Provider,
    user: String,
}

/// Times CRM API reads (`GET /api/v1/contacts?limit=20`, the CRM's token) every 50 ms
/// while a sync runs, as the CRM would poll: one request at a time, so the probe itself
/// adds no load worth naming.
struct ApiProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<f64>>,
}

impl ApiProbe {
    fn start(port: u16) -> ApiProbe {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let url = format!("http://127.0.0.1:{port}/api/v1/contacts?limit=20");
            let mut ms = vec![];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let ok = match http.get(&url).bearer_auth(API_TOKEN).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    ms.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ms
        });
        ApiProbe { stop, task }
    }

    async fn stop(self) -> Vec<f64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// The `q` quantile (0..=1) of `v`, nearest rank; NaN when empty.
fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    http: reqwest::Client,
    accounts: Vec<String>,
}

impl Daemon {
    /// Writes the config, imports each account's grant with `connect`, starts `run` and
    /// returns at once (the initial sync starts with the daemon).
    fn start(sim: &Sim, accounts: &[Acct]) -> Res<Daemon> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().display().to_string();
        let port = free_port()?;
        std::fs::write(dir.path().join("api-token"), format!("{API_TOKEN}\n"))?;
        std::fs::write(dir.path().join("admin-token"), format!("{ADMIN_TOKEN}\n"))?;
        contact_sync::secrets::generate_key(&dir.path().join("token-key"))?;
        std::fs::write(dir.path().join("google-secret"), "bench-secret\n")?;
        let mut text = format!(
            "[daemon]\ndata_dir = \"{d}/data\"\nlisten = \"127.0.0.1:{port}\"\napi_token_file = \"{d}/api-token\"\nadmin_token_file = \"{d}/admin-token\"\ntoken_key_file = \"{d}/token-key\"\naudit_dir = \"{d}/audit\"\npoll_interval = \"1h\"\n\n[providers.google]\nclient_id = \"bench-google\"\nclient_secret_file = \"{d}/google-secret\"\napi_base = \"{g}\"\ntoken_url = \"{g}/token\"\n\n[providers.outlook]\nclient_id = \"bench-outlook\"\napi_base = \"{o}/v1.0\"\ntoken_url = \"{o}/common/oauth2/v2.0/token\"\n",
            g = sim.google_base,
            o = sim.graph_base
        );
        for a in accounts {
            let provider = match a.provider {
                Provider::Google => "google",
                Provider::Outlook => "outlook",
            };
            text.push_str(&format!(
                "\n[[accounts]]\nid = \"{}\"\nprovider = \"{provider}\"\ngroup = \"all\"\ndirection = \"one-way\"\nenabled = true\n",
                a.id
            ));
        }
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text)?;
        for a in accounts {
            let token = sim
                .refresh_token(a.provider, &a.user)
                .ok_or("no refresh token for a seeded user")?;
            let file = dir.path().join(format!("refresh-{}", a.id));
            std::fs::write(&file, token)?;
            let out = Command::new(env!("CARGO_BIN_EXE_contact-sync"))
                .arg("--config")
                .arg(&config)
                .args(["connect", &a.id, "--refresh-token-file"])
                .arg(&file)
                .output()?;
            if !out.status.success() {
                return Err(format!(
                    "connect {} failed: {}",
                    a.id,
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
        }
        let log = std::fs::File::create(dir.path().join("daemon.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_contact-sync"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env_remove("RUST_LOG")
            .env_remove("CONTACT_SYNC_FAST_RETRY")
            .env_remove("CONTACT_SYNC_FAST_BACKOFF")
            .spawn()?;
        Ok(Daemon {
            child: Some(child),
            dir,
            port,
            http: reqwest::Client::new(),
            accounts: accounts.iter().map(|a| a.id.clone()).collect(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
    fn cpu(&self) -> f64 {
        proc_cpu(self.pid())
    }
    fn peak_rss_mb(&self) -> f64 {
        proc_status_mb(&self.pid().to_string(), "VmHWM")
    }
    fn rss_mb(&self) -> f64 {
        proc_status_mb(&self.pid().to_string(), "VmRSS")
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// `seconds=` of every "Sync round committed." line logged so far.
    fn committed_rounds(&self) -> Vec<f64> {
        self.log()
            .lines()
            .filter(|l| l.contains("Sync round committed."))
            .map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("seconds="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN)
            })
            .collect()
    }

    async fn api(&self, method: reqwest::Method, path: &str) -> Res<Value> {
        let r = self
            .http
            .request(method, format!("http://127.0.0.1:{}{path}", self.port))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?;
        Ok(r.json().await?)
    }

    async fn last_syncs(&self) -> Res<Vec<Option<String>>> {
        let mut out = vec![];
        for id in &self.accounts {
            let a = self
                .api(reqwest::Method::GET, &format!("/api/v1/accounts/{id}"))
                .await?;
            out.push(a["last_sync"].as_str().map(String::from));
        }
        Ok(out)
    }

    /// Waits until `rounds` rounds in all have been committed and every account's
    /// `last_sync` differs from `before`. Watching the log keeps the wait from loading the
    /// daemon (`GET /api/v1/accounts/{id}` counts the account's links); the API confirms.
    async fn wait_rounds(&mut self, rounds: usize, before: &[Option<String>]) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            if self.committed_rounds().len() >= rounds {
                let now = self.last_syncs().await?;
                if now.iter().zip(before).all(|(n, b)| n.is_some() && n != b) {
                    return Ok(());
                }
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("daemon exited with {st}: {}", tail(&self.log())).into());
            }
            if self.log().contains("Sync round failed.") {
                return Err(format!("a sync round failed: {}", tail(&self.log())).into());
            }
            if Instant::now() > deadline {
                return Err(format!("timed out: {}", tail(&self.log())).into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_healthy(&mut self) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = format!("http://127.0.0.1:{}/healthz", self.port);
            if let Ok(r) = self.http.get(url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("daemon not ready: {}", tail(&self.log())).into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // BENCH_KEEP_LOG=FILE keeps the daemon's log (the last run's) for a closer look.
        if let Ok(keep) = std::env::var("BENCH_KEEP_LOG") {
            let _ = std::fs::copy(self.dir.path().join("daemon.log"), keep);
        }
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Requests the sim served since the last clear: (all, contact pages, photos, token).
/// Outlook photos may come as `$batch` parts: those count one by one (as Graph's budget
/// counts them) and their `$batch` requests are not listing requests.
fn request_counts(sim: &Sim, p: Provider) -> (usize, usize, usize, usize) {
    let log = sim.requests(p);
    let photos = log.iter().filter(|e| e.path.contains("photo")).count();
    let token = log.iter().filter(|e| e.path.contains("token")).count();
    let batches = log.iter().filter(|e| e.path.ends_with("$batch")).count();
    let parts = match p {
        Provider::Outlook => sim
            .graph_batch_parts("bench-outlook@example.com")
            .iter()
            .filter(|p| p.contains("photo"))
            .count(),
        Provider::Google => 0,
    };
    (
        log.len() - batches + parts,
        log.len() - photos - token - batches,
        photos + parts,
        token,
    )
}

fn put_requests(s: &mut Sample, prefix: &str, c: (usize, usize, usize, usize)) {
    s.put(&format!("{prefix}requests, all"), c.0 as f64);
    s.put(&format!("{prefix}requests, contact listing"), c.1 as f64);
    s.put(&format!("{prefix}requests, photos"), c.2 as f64);
    s.put(&format!("{prefix}requests, token"), c.3 as f64);
}

/// What fetching alone costs, with the daemon's client in this process.
struct FetchOnly {
    /// `fetch_round(None, ..)`.
    round_s: f64,
    listed: usize,
    /// The photos the daemon's initial one-way sync asks for (eligible contacts with a
    /// photo URL), through `Provider::fetch_photos` as `actors::account::run_round` does.
    photos_s: f64,
    photos_asked: usize,
}

/// Fetches a full round alone with the daemon's client, in this process.
async fn fetch_only(sim: &Sim, p: Provider, user: &str) -> Res<FetchOnly> {
    let refresh = sim.refresh_token(p, user).ok_or("no refresh token")?;
    let provider: Box<dyn contact_sync::providers::Provider> = match p {
        Provider::Google => {
            let tokens = Arc::new(TokenSource::new(
                OAuthClient {
                    client_id: "bench-google".into(),
                    client_secret: Some(SecretString::from("bench-secret")),
                    token_url: format!("{}/token", sim.google_base),
                    scopes: vec![],
                },
                SecretString::from(refresh),
                Arc::new(|_| Ok(())),
            ));
            Box::new(GoogleClient::new(
                sim.google_base.clone(),
                Group::All,
                tokens,
                RetryPolicy::default(),
            ))
        }
        Provider::Outlook => {
            let tokens = Arc::new(TokenSource::new(
                OAuthClient {
                    client_id: "bench-outlook".into(),
                    client_secret: None,
                    token_url: format!("{}/common/oauth2/v2.0/token", sim.graph_base),
                    scopes: contact_sync::providers::build::outlook_scopes(Direction::OneWay),
                },
                SecretString::from(refresh),
                Arc::new(|_| Ok(())),
            ));
            Box::new(GraphClient::new(
                format!("{}/v1.0", sim.graph_base),
                tokens,
                RetryPolicy::default(),
            ))
        }
    };
    let progress: ProgressFn = Box::new(|_| {});
    let t = Instant::now();
    let round = provider.fetch_round(None, &progress).await?;
    let round_s = t.elapsed().as_secs_f64();
    let wanted: Vec<&ProviderContact> = round
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Upsert(pc)
                if pc.photo_url.is_some() && sync::eligibility::check(&pc.fields).is_ok() =>
            {
                Some(pc)
            }
            _ => None,
        })
        .collect();
    let photos_asked = wanted.len();
    let wanted: Vec<ProviderContact> = wanted.into_iter().cloned().collect();
    let t = Instant::now();
    // As the account actor does: `fetch_photos` (Graph: `$batch`, 20 per request).
    let _ = provider.fetch_photos(&wanted).await;
    Ok(FetchOnly {
        round_s,
        listed: round.changes.len(),
        photos_s: t.elapsed().as_secs_f64(),
        photos_asked,
    })
}

fn runtime() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

// ---------------------------------------------------------------------------------------
// Cases 2 and 3: initial syncs
// ---------------------------------------------------------------------------------------

/// Latency of the `_50ms` cases: closer to what a user sees than loopback.
const REAL_LATENCY_MS: u64 = 50;

/// Outlook's documented budget per app and mailbox, enforced by the simulator in the
/// Outlook cases (the daemon's default `request_budget` is the same).
const GRAPH_BUDGET: (u32, Duration) = (10_000, Duration::from_secs(600));

fn initial(case: &str, p: Provider, runs: usize, latency_ms: u64) -> Res<Summary> {
    let n = contacts_per_account();
    let user = match p {
        Provider::Google => "bench-google@example.com",
        Provider::Outlook => "bench-outlook@example.com",
    };
    runtime()?.block_on(async {
        let seed = SeedUser::new(user, n, 7);
        let opts = match p {
            Provider::Google => SimOptions {
                google_users: vec![seed],
                ..SimOptions::default()
            },
            Provider::Outlook => SimOptions {
                outlook_users: vec![seed],
                ..SimOptions::default()
            },
        };
        let sim = Sim::start(opts).await?;
        if latency_ms > 0 {
            sim.set_faults(
                p,
                FaultConfig {
                    latency_ms,
                    ..FaultConfig::default()
                },
            );
        }
        // Which seeded contacts have a photo (the simulator's own view).
        let with_photo = match p {
            Provider::Outlook => {
                let (_, all) = sim.control(p, "GET", &format!("/_sim/users/{user}/contacts"), None);
                all.as_array()
                    .map(|a| a.iter().filter(|c| c["hasPhoto"] == true).count())
                    .unwrap_or(0)
            }
            Provider::Google => 0,
        };
        let mut samples = vec![];
        for r in 0..runs {
            let mut s = Sample::default();
            sim.clear_requests(p);
            sim.clear_graph_batch_parts();
            // A fresh budget for each client: each starts with a full bucket of its own.
            if p == Provider::Outlook {
                sim.set_graph_budget(Some(GRAPH_BUDGET));
            }
            let f = fetch_only(&sim, p, user).await?;
            let fetch_s = f.round_s;
            let fetch_requests = request_counts(&sim, p);
            sim.clear_requests(p);
            sim.clear_graph_batch_parts();
            if p == Provider::Outlook {
                sim.set_graph_budget(Some(GRAPH_BUDGET));
            }
            let acct = Acct {
                id: "acct".into(),
                provider: p,
                user: user.into(),
            };
            let t0 = Instant::now();
            let mut d = Daemon::start(&sim, &[acct])?;
            d.wait_healthy().await?;
            let boot_s = t0.elapsed().as_secs_f64();
            let probe = ApiProbe::start(d.port);
            d.wait_rounds(1, &[None]).await?;
            let wall = t0.elapsed().as_secs_f64();
            let reads = probe.stop().await;
            s.put("API reads during the sync (count)", reads.len() as f64);
            s.put("↳ API read median (ms)", percentile(&reads, 0.5));
            s.put("↳ API read p95 (ms)", percentile(&reads, 0.95));
            s.put("↳ API read max (ms)", percentile(&reads, 1.0));
            s.put("initial sync, daemon start to last_sync (s)", wall);
            s.put(
                "↳ round as logged by the daemon (s)",
                d.committed_rounds().first().copied().unwrap_or(f64::NAN),
            );
            s.put("↳ of which boot to /healthz (s)", boot_s);
            s.put("fetch-only time, same client in-process (s)", fetch_s);
            s.put(
                "photo-fetch-only time, same client in-process (s)",
                f.photos_s,
            );
            s.put("daemon CPU time (s)", d.cpu());
            s.put("daemon peak RSS (MiB)", d.peak_rss_mb());
            s.put("daemon RSS after the sync (MiB)", d.rss_mb());
            if std::env::var_os("BENCH_SMAPS").is_some() {
                let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", d.pid()))
                    .unwrap_or_default();
                let mut name = String::new();
                let mut by: HashMap<String, u64> = HashMap::new();
                for l in smaps.lines() {
                    if l.split_whitespace().next().is_some_and(|w| w.contains('-') && !w.ends_with(':')) {
                        name = l.split_whitespace().nth(5).unwrap_or("[anon]").to_string();
                    } else if let Some(v) = l.strip_prefix("Rss:") {
                        *by.entry(name.clone()).or_default() +=
                            v.trim().trim_end_matches(" kB").parse::<u64>().unwrap_or(0);
                    }
                }
                let mut v: Vec<_> = by.into_iter().collect();
                v.sort_by_key(|(_, k)| std::cmp::Reverse(*k));
                eprintln!("smaps Rss by mapping (kB): {:?}", &v[..v.len().min(8)]);
            }
            put_requests(&mut s, "daemon ", request_counts(&sim, p));
            let log = sim.requests(p);
            s.put(
                "daemon 429 responses",
                log.iter().filter(|e| e.status == 429).count() as f64,
            );
            if p == Provider::Outlook {
                s.put(
                    "↳ of which photo-id listing pages (PidLidHasPicture)",
                    log.iter()
                        .filter(|e| e.query.contains("singleValueExtendedProperties"))
                        .count() as f64,
                );
                s.put("seeded contacts with a photo", with_photo as f64);
                s.put(
                    "daemon $batch requests (photos, 20 per request)",
                    log.iter().filter(|e| e.path.ends_with("$batch")).count() as f64,
                );
            }
            put_requests(&mut s, "fetch-only ", fetch_requests);
            s.put("fetch + photos alone (s)", f.round_s + f.photos_s);
            s.put("contacts listed", f.listed as f64);
            s.put("photos asked for (fetch-only)", f.photos_asked as f64);
            let a = d
                .api(reqwest::Method::GET, "/api/v1/accounts/acct")
                .await?;
            s.put("linked after sync", a["linked"].as_f64().unwrap_or(f64::NAN));
            if p == Provider::Outlook {
                let mut n = 0;
                let mut after: Option<u64> = None;
                loop {
                    let path = match after {
                        Some(a) => format!("/api/v1/contacts?limit=1000&after={a}"),
                        None => "/api/v1/contacts?limit=1000".to_string(),
                    };
                    let page = d.api(reqwest::Method::GET, &path).await?;
                    n += page["contacts"]
                        .as_array()
                        .map(|a| a.iter().filter(|c| c["has_photo"] == true).count())
                        .unwrap_or(0);
                    match page["next"].as_u64() {
                        Some(a) => after = Some(a),
                        None => break,
                    }
                }
                s.put("contacts created with a photo", n as f64);
            }
            d.stop().await;
            eprintln!("{case} run {}: {wall:.2}s (fetch-only {fetch_s:.2}s)", r + 1);
            samples.push(s);
        }
        sim.stop().await;
        let what = match p {
            Provider::Google => "Google simulator (People API)",
            Provider::Outlook => "Graph simulator (Outlook contacts, default folder only)",
        };
        let lat = if latency_ms > 0 {
            format!("The simulator adds {latency_ms} ms to every request (token requests included). ")
        } else {
            "Loopback, no added latency. ".to_string()
        };
        let budget = match p {
            Provider::Outlook => "The simulator enforces Outlook's budget of 10,000 requests per 10 minutes per mailbox (a fresh bucket for each client), and the daemon runs with its default `request_budget` (the same). ",
            Provider::Google => "",
        };
        let params = format!(
            "{lat}{budget}The {what} seeded with one user of {n} generated contacts (about 10 % with a photo); the release `contact-sync run` (default retry policy, `poll_interval = \"1h\"`, one one-way account, grant imported with `connect --refresh-token-file`) does its initial sync, photos included. Fetch-only: `fetch_round(None, ..)` of the same client type in the benchmark process against the same simulator, no photos, no store."
        );
        Ok(Summary::new(case, params, &samples)
            .ratio(
                "initial sync / fetch-only time",
                "initial sync, daemon start to last_sync (s)",
                "fetch-only time, same client in-process (s)",
            )
            .ratio(
                "initial sync / (fetch-only + photo-fetch-only time)",
                "initial sync, daemon start to last_sync (s)",
                "fetch + photos alone (s)",
            )
            .ratio(
                "daemon CPU / wall time",
                "daemon CPU time (s)",
                "initial sync, daemon start to last_sync (s)",
            ))
    })
}

fn ten_accounts(runs: usize) -> Res<Summary> {
    let n = env_usize("BENCH_TEN_CONTACTS", 25_000);
    runtime()?.block_on(async {
        let users: Vec<String> = (0..10).map(|i| format!("user{i}@example.com")).collect();
        let sim = Sim::start(SimOptions {
            google_users: users
                .iter()
                .enumerate()
                .map(|(i, u)| SeedUser::new(u, n, 100 + i as u64))
                .collect(),
            ..SimOptions::default()
        })
        .await?;
        // BENCH_TEN_LATENCY_MS adds latency to every request, as the `_50ms` cases do.
        let latency_ms = env_usize("BENCH_TEN_LATENCY_MS", 0) as u64;
        if latency_ms > 0 {
            sim.set_faults(
                Provider::Google,
                FaultConfig {
                    latency_ms,
                    ..FaultConfig::default()
                },
            );
        }
        let accts: Vec<Acct> = users
            .iter()
            .enumerate()
            .map(|(i, u)| Acct {
                id: format!("g{i}"),
                provider: Provider::Google,
                user: u.clone(),
            })
            .collect();
        let mut samples = vec![];
        for r in 0..runs {
            let mut s = Sample::default();
            sim.clear_requests(Provider::Google);
            let t0 = Instant::now();
            let mut d = Daemon::start(&sim, &accts)?;
            d.wait_healthy().await?;
            let probe = ApiProbe::start(d.port);
            // When the first account finished (its round's log line), then all ten.
            let mut first = f64::NAN;
            let deadline = Instant::now() + Duration::from_secs(1800);
            while d.committed_rounds().len() < 10 && Instant::now() < deadline {
                if first.is_nan() && !d.committed_rounds().is_empty() {
                    first = t0.elapsed().as_secs_f64();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            d.wait_rounds(10, &[None, None, None, None, None, None, None, None, None, None])
                .await?;
            let wall = t0.elapsed().as_secs_f64();
            let reads = probe.stop().await;
            let rounds = d.committed_rounds();
            s.put("first account finished, from daemon start (s)", first);
            s.put("↳ API read median during the syncs (ms)", percentile(&reads, 0.5));
            s.put("↳ API read p95 during the syncs (ms)", percentile(&reads, 0.95));
            s.put("all ten initial syncs, daemon start to last last_sync (s)", wall);
            s.put(
                "↳ longest round as logged by the daemon (s)",
                rounds.iter().copied().fold(0.0, f64::max),
            );
            s.put(
                "↳ shortest round as logged by the daemon (s)",
                rounds.iter().copied().fold(f64::INFINITY, f64::min),
            );
            s.put("daemon CPU time (s)", d.cpu());
            s.put("daemon peak RSS (MiB)", d.peak_rss_mb());
            s.put("daemon RSS after the syncs (MiB)", d.rss_mb());
            put_requests(&mut s, "daemon ", request_counts(&sim, Provider::Google));
            let mut linked = 0.0;
            for a in &d.accounts {
                let v = d
                    .api(reqwest::Method::GET, &format!("/api/v1/accounts/{a}"))
                    .await?;
                linked += v["linked"].as_f64().unwrap_or(f64::NAN);
            }
            s.put("links after sync, all accounts", linked);
            d.stop().await;
            eprintln!("ten_accounts_25k run {}: {wall:.2}s", r + 1);
            samples.push(s);
        }
        sim.stop().await;
        let params = format!(
            "Ten Google simulator users of {n} generated contacts each (different seeds), ten one-way accounts in one release daemon, all starting at boot; photos included."
        );
        Ok(Summary::new("ten_accounts_25k", params, &samples).ratio(
            "daemon CPU / wall time",
            "daemon CPU time (s)",
            "all ten initial syncs, daemon start to last last_sync (s)",
        ))
    })
}

// ---------------------------------------------------------------------------------------
// Case 4: steady state (one daemon after its initial sync)
// ---------------------------------------------------------------------------------------

fn steady(incremental: bool, no_change: bool, runs: usize) -> Res<Vec<Summary>> {
    let n = contacts_per_account();
    let user = "bench-google@example.com";
    runtime()?.block_on(async {
        let sim = Sim::start(SimOptions {
            google_users: vec![SeedUser::new(user, n, 7)],
            ..SimOptions::default()
        })
        .await?;
        let acct = Acct {
            id: "acct".into(),
            provider: Provider::Google,
            user: user.into(),
        };
        let mut d = Daemon::start(&sim, &[acct])?;
        d.wait_healthy().await?;
        d.wait_rounds(1, &[None]).await?;
        eprintln!("steady state: initial sync done");
        let http = reqwest::Client::new();
        let ctl = format!("{}/_sim/users/{user}/contacts", sim.google_base);
        let listed: Vec<Value> = http.get(&ctl).send().await?.json().await?;
        let ids: Vec<String> = listed
            .iter()
            .filter_map(|c| c["id"].as_str().map(String::from))
            .collect();
        let step = 100;
        let mut out = vec![];

        // One round after a trigger; returns its sample (without the change's own cost).
        async fn round(d: &mut Daemon, sim: &Sim) -> Res<Sample> {
            let mut s = Sample::default();
            let before = d.last_syncs().await?;
            let rounds = d.committed_rounds().len();
            let in_crm0 = d.api(reqwest::Method::GET, "/api/v1/accounts/acct").await?["today"]
                ["updated"]["in_crm"]
                .as_f64()
                .unwrap_or(0.0);
            sim.clear_requests(Provider::Google);
            let (cpu0, t0) = (d.cpu(), Instant::now());
            d.api(reqwest::Method::POST, "/api/v1/sync").await?;
            d.wait_rounds(rounds + 1, &before).await?;
            let wall = t0.elapsed().as_secs_f64();
            let cpu = d.cpu() - cpu0;
            let in_crm = d.api(reqwest::Method::GET, "/api/v1/accounts/acct").await?["today"]
                ["updated"]["in_crm"]
                .as_f64()
                .unwrap_or(0.0);
            s.put("round, POST /api/v1/sync to new last_sync (s)", wall);
            s.put(
                "↳ round as logged by the daemon (s)",
                d.committed_rounds().last().copied().unwrap_or(f64::NAN),
            );
            s.put("daemon CPU time in the round (s)", cpu);
            put_requests(&mut s, "", request_counts(sim, Provider::Google));
            s.put("CRM contacts updated", in_crm - in_crm0);
            let t = Instant::now();
            d.api(reqwest::Method::GET, "/api/v1/accounts/acct").await?;
            s.put(
                "one GET /api/v1/accounts/{id} after the round (ms)",
                t.elapsed().as_secs_f64() * 1e3,
            );
            s.put("daemon RSS after the round (MiB)", d.rss_mb());
            s.put("daemon peak RSS since start (MiB)", d.peak_rss_mb());
            Ok(s)
        }

        if incremental {
            let mut samples = vec![];
            for r in 0..runs {
                let mut changed = 0;
                for id in ids.iter().step_by(step) {
                    let body = json!({"addresses": [{
                        "streetAddress": format!("{} Bench Road", r + 1),
                        "city": "Benchton", "postalCode": "10001", "country": "US",
                        "metadata": {"primary": true}}]});
                    let resp = http.patch(format!("{ctl}/{id}")).json(&body).send().await?;
                    if !resp.status().is_success() {
                        return Err(format!("PATCH {id}: {}", resp.status()).into());
                    }
                    changed += 1;
                }
                let mut s = round(&mut d, &sim).await?;
                s.put("contacts changed in the provider", changed as f64);
                eprintln!("incremental_1pct run {}: {:?}", r + 1, s.0.first());
                samples.push(s);
            }
            let params = format!(
                "After the initial sync of one Google user of {n} contacts (one release daemon, `poll_interval = \"1h\"`), every 100th contact ({} contacts) gets a new primary address through the simulator's control API (`PATCH /_sim/users/{{user}}/contacts/c<N>`); then `POST /api/v1/sync` triggers the round measured. Every run changes the same contacts to a new value.",
                ids.len().div_ceil(step)
            );
            out.push(Summary::new("incremental_1pct", params, &samples));
        }
        if no_change {
            let mut samples = vec![];
            for r in 0..runs {
                let s = round(&mut d, &sim).await?;
                eprintln!("no_change_poll run {}: {:?}", r + 1, s.0.first());
                samples.push(s);
            }
            let params = format!(
                "After the initial sync of one Google user of {n} contacts, with nothing changed in the provider, `POST /api/v1/sync` triggers the round measured."
            );
            out.push(Summary::new("no_change_poll", params, &samples));
        }
        d.stop().await;
        sim.stop().await;
        Ok(out)
    })
}

// ---------------------------------------------------------------------------------------

fn usage() {
    println!(
        "usage: cargo bench --bench sync -- [--runs N] [CASE...]\ncases: {}\nenv: BENCH_RUNS (default 5), BENCH_CONTACTS (default 25000), BENCH_TEN_CONTACTS (default 25000), BENCH_TEN_LATENCY_MS (default 0), BENCH_MD (append Markdown reports to this file), BENCH_KEEP_LOG (copy the daemon's log to this file)",
        CASES.join(", ")
    );
}

fn main() {
    contact_sync::alloc::tune();
    if let Ok(case) = std::env::var(CHILD_ENV) {
        let res = match case.as_str() {
            "plan_write" => child_plan_write(),
            other => Err(format!("unknown child case {other}").into()),
        };
        match res {
            Ok(v) => println!("{RESULT_TAG}{v}"),
            Err(e) => {
                eprintln!("{case}: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let mut runs = env_usize("BENCH_RUNS", 5);
    let mut cases: Vec<String> = vec![];
    let mut bench_mode = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => bench_mode = true,
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "-h" | "--help" => {
                usage();
                return;
            }
            other if other.starts_with('-') => {}
            other if CASES.contains(&other) => cases.push(other.to_string()),
            other => {
                eprintln!("unknown case {other:?}");
                usage();
                std::process::exit(2);
            }
        }
    }
    if !bench_mode {
        println!("Benchmarks run with `cargo bench --bench sync` (see scripts/bench.sh); nothing to do in test mode.");
        return;
    }
    if cases.is_empty() {
        cases = CASES.iter().map(|c| c.to_string()).collect();
    }
    let runs = runs.max(1);
    let has = |c: &str| cases.iter().any(|x| x == c);
    let mut failed = false;
    let mut report = |res: Res<Vec<Summary>>| match res {
        Ok(summaries) => {
            for s in summaries {
                let md = s.markdown();
                println!("{md}");
                if let Ok(path) = std::env::var("BENCH_MD") {
                    use std::io::Write as _;
                    let appended = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .and_then(|mut f| f.write_all(md.as_bytes()));
                    if let Err(e) = appended {
                        eprintln!("cannot append to {path}: {e}");
                    }
                }
            }
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            failed = true;
        }
    };
    for case in CASES {
        if !has(case) {
            continue;
        }
        match *case {
            "plan_write_25k" => report(plan_write(case, 1, runs).map(|s| vec![s])),
            "plan_write_250k" => report(plan_write(case, 10, runs).map(|s| vec![s])),
            "google_initial_25k" => {
                report(initial(case, Provider::Google, runs, 0).map(|s| vec![s]))
            }
            "outlook_initial_25k" => {
                report(initial(case, Provider::Outlook, runs, 0).map(|s| vec![s]))
            }
            "google_initial_25k_50ms" => {
                report(initial(case, Provider::Google, runs, REAL_LATENCY_MS).map(|s| vec![s]))
            }
            "outlook_initial_25k_50ms" => {
                report(initial(case, Provider::Outlook, runs, REAL_LATENCY_MS).map(|s| vec![s]))
            }
            "ten_accounts_25k" => report(ten_accounts(runs).map(|s| vec![s])),
            "incremental_1pct" => report(steady(true, has("no_change_poll"), runs)),
            "no_change_poll" if !has("incremental_1pct") => report(steady(false, true, runs)),
            _ => {}
        }
    }
    if failed {
        std::process::exit(1);
    }
}
