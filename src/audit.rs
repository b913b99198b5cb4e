//! The audit log (SPEC §7): one JSON object per line, daily files in `audit_dir`.
//!
//! The trail loses nothing (see `docs/operations.md`, "The audit trail"):
//! - every event is first written into the store's `audit` tree, in the same transaction as
//!   the change it describes ([`crate::store::Op::Audit`]), where it gets its `seq`: one
//!   counter for the whole store, increasing by one per event, kept in the JSON line;
//! - the [`AuditLog`] drainer (one at a time) appends pending events, in `seq` order, to the
//!   file of their day (`audit.YYYY-MM-DD.jsonl`, the date in the configured `timezone`),
//!   fsyncs the file, and only then removes them from the store. A crash between the fsync
//!   and the removal repeats those lines, with the same `seq`: delivery is at least once,
//!   and shippers drop a `seq` they have seen;
//! - a failed write (a full disk) is undone (the file is cut back to its length before the
//!   append), reported in `status`, `/metrics` and the log, and retried; the daemon keeps
//!   syncing and the backlog waits in the store.
//!
//! This is our own writer rather than tracing-appender's rolling file: the trail needs an
//! fsync before events leave the store, dates in the configured time zone, a failed append
//! that is undone and reported, and retention, none of which the appender offers.
//!
//! Events carry field *names*; values only when `audit_values` is on. The last events are
//! also kept in memory for the dashboard.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use serde::Serialize;

use crate::store::{Batch, Db, Op, StoreError};

/// Audit actions of SPEC §7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Added,
    Updated,
    Deleted,
    Skipped,
    Unlinked,
    Conflict,
    AmbiguousMatch,
    LimitExceeded,
    /// A round's deletions were held by the deletion guard.
    DeletionHeld,
    /// A CRM change the provider refused for good (two-way).
    Rejected,
    /// A deleted CRM contact was brought back.
    Restored,
    /// An operator connected an account (stored its first grant).
    Connected,
    /// An operator disconnected an account (forgot its grant).
    Disconnected,
    /// An operator replaced the grant of a connected account.
    GrantReplaced,
    /// An operator approved the deletions the deletion guard held.
    Approved,
    /// The configuration was reloaded; `reason` summarises what changed.
    ConfigReloaded,
    /// The daemon started.
    Started,
    /// The daemon stopped.
    Stopped,
    /// An operator asked to send a failed CRM change again.
    RetryRequested,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    ToCrm,
    ToProvider,
}

/// One audit line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    /// Unique and increasing over the life of the store; given when the event is stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub time: DateTime<Utc>,
    pub account: String,
    pub provider: String,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crm_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Other CRM contacts involved (the losers of an ambiguous match).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub others: Vec<u64>,
    /// Field values, only when the configuration asks for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<serde_json::Value>,
}

impl AuditEvent {
    pub fn new(account: &str, provider: &str, action: Action) -> Self {
        AuditEvent {
            seq: None,
            time: Utc::now(),
            account: account.to_string(),
            provider: provider.to_string(),
            action,
            direction: None,
            crm_id: None,
            provider_id: None,
            fields: vec![],
            reason: None,
            others: vec![],
            values: None,
        }
    }
    pub fn direction(mut self, d: Direction) -> Self {
        self.direction = Some(d);
        self
    }
    pub fn crm_id(mut self, id: u64) -> Self {
        self.crm_id = Some(id);
        self
    }
    pub fn provider_id(mut self, id: &str) -> Self {
        self.provider_id = Some(id.to_string());
        self
    }
    pub fn fields(mut self, f: Vec<&'static str>) -> Self {
        self.fields = f;
        self
    }
    pub fn reason(mut self, r: impl Into<String>) -> Self {
        self.reason = Some(r.into());
        self
    }

    /// An event of the daemon itself (start, stop, reload) or of an operator.
    pub fn daemon(action: Action) -> Self {
        AuditEvent::new("", "", action)
    }

    /// An operator's grant change for `account`: `Connected` when it had no grant,
    /// `GrantReplaced` when it had one.
    pub fn grant_stored(account: &str, provider: &str, had_grant: bool) -> Self {
        let action = if had_grant {
            Action::GrantReplaced
        } else {
            Action::Connected
        };
        AuditEvent::new(account, provider, action)
    }

    /// The JSON line of the event (without the newline).
    pub fn line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Writes an event that goes with no other store change: it is stored durably on its own
    /// (and so gets its `seq`) and drained to the file at once. Events that describe a store
    /// change travel in that change's [`Batch`] instead ([`Op::Audit`]). Without a running
    /// audit log (unit tests) the event is only kept in the recent list.
    pub fn emit(&self) {
        match installed() {
            Some(log) => {
                if let Err(e) = log.append(std::slice::from_ref(self)) {
                    tracing::error!(error = %e, action = ?self.action, "Cannot store an audit event.");
                }
            }
            None => self.remember(),
        }
    }

    /// Keeps the event in the in-memory list the dashboard shows.
    pub fn remember(&self) {
        let mut r = recent().lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= RECENT {
            r.pop_front();
        }
        r.push_back(self.clone());
    }
}

/// Events committed with `batch` once it is durable: remembered for the dashboard, and
/// drained to the file.
pub fn committed(events: &[AuditEvent]) {
    committed_unflushed(events);
    if let Some(log) = installed() {
        if !events.is_empty() {
            log.drain_now();
        }
    }
}

/// Events committed with a batch that is not flushed yet (a chunk of a round): remembered
/// for the dashboard. The drainer thread writes them out when [`wake_drainer`] wakes it (the
/// writer does after its next flush) or on its own round, at most a second later; it makes
/// them durable first. The committing thread does not wait for the disk.
pub fn committed_unflushed(events: &[AuditEvent]) {
    for e in events {
        e.remember();
    }
}

/// Wakes the drainer thread of the process's audit log, if one runs.
pub fn wake_drainer() {
    if let Some(log) = installed() {
        log.poke();
    }
}

const RECENT: usize = 200;

fn recent() -> &'static Mutex<VecDeque<AuditEvent>> {
    static R: OnceLock<Mutex<VecDeque<AuditEvent>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(VecDeque::new()))
}

/// The most recent events, newest last.
pub fn recent_events(n: usize) -> Vec<AuditEvent> {
    let r = recent().lock().unwrap_or_else(|p| p.into_inner());
    r.iter().rev().take(n).rev().cloned().collect()
}

/// A contact's story is counted (and trimmed to [`crate::store::db::CONTACT_EVENTS_KEPT`])
/// on about one of its events in this many, so a story can run this far past the bound
/// (on average) before it is trimmed.
pub const STORY_CHECK_EVERY: u64 = 64;

/// Whether draining event `seq` of `contact` counts the contact's story: a hash of both, so
/// the choice is spread evenly over any contact's events and the same on every run.
fn story_checked_at(contact: u64, seq: u64) -> bool {
    // splitmix64's finaliser over both numbers.
    let mut z = contact.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31) ^ seq;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z % STORY_CHECK_EVERY == 0
}

/// The CRM ids an audit line names.
#[derive(serde::Deserialize)]
struct Named {
    crm_id: Option<u64>,
    #[serde(default)]
    others: Vec<u64>,
}

/// The file name of a day's audit log.
pub fn file_name(day: &str) -> String {
    format!("audit.{day}.jsonl")
}

/// Parses `audit.YYYY-MM-DD.jsonl`.
fn day_of_file(name: &str) -> Option<chrono::NaiveDate> {
    let d = name.strip_prefix("audit.")?.strip_suffix(".jsonl")?;
    chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()
}

/// The drainer: moves stored events to the daily files. One per daemon.
pub struct AuditLog {
    db: Db,
    dir: PathBuf,
    tz: Mutex<chrono_tz::Tz>,
    retention: Mutex<Option<Duration>>,
    /// Held while draining: one drainer at a time keeps the files in `seq` order.
    drain: Mutex<()>,
    last_error: Mutex<Option<String>>,
    write_errors: AtomicU64,
    backlog: AtomicU64,
    wake: (Mutex<bool>, Condvar),
}

static INSTALLED: OnceLock<Arc<AuditLog>> = OnceLock::new();

/// The audit log of this process, once the daemon has started one.
pub fn installed() -> Option<&'static Arc<AuditLog>> {
    INSTALLED.get()
}

/// Events drained per store read.
const DRAIN_CHUNK: usize = 1024;

impl AuditLog {
    /// Opens the audit log in `dir` (created if missing). Nothing is drained yet.
    pub fn new(
        db: Db,
        dir: &Path,
        tz: chrono_tz::Tz,
        retention: Option<Duration>,
    ) -> Result<Arc<AuditLog>, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create audit_dir {}: {e}", dir.display()))?;
        let log = Arc::new(AuditLog {
            db,
            dir: dir.to_path_buf(),
            tz: Mutex::new(tz),
            retention: Mutex::new(retention),
            drain: Mutex::new(()),
            last_error: Mutex::new(None),
            write_errors: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            wake: (Mutex::new(false), Condvar::new()),
        });
        log.refresh_backlog();
        Ok(log)
    }

    /// Makes this the process's audit log (what [`AuditEvent::emit`] writes to) and starts
    /// the background drainer, which retries after failures and applies retention. The
    /// caller drains once first, so a start writes the backlog before anything else.
    pub fn install(self: &Arc<Self>) -> Arc<AuditLog> {
        let log = INSTALLED.get_or_init(|| self.clone()).clone();
        let bg = log.clone();
        let spawned = std::thread::Builder::new()
            .name("audit-drainer".into())
            .spawn(move || bg.run());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "Cannot start the audit drainer thread; events are drained after each commit only.");
        }
        log
    }

    /// New settings from a reloaded configuration.
    pub fn reconfigure(&self, tz: chrono_tz::Tz, retention: Option<Duration>) {
        *self.tz.lock().unwrap_or_else(|p| p.into_inner()) = tz;
        *self.retention.lock().unwrap_or_else(|p| p.into_inner()) = retention;
    }

    /// Events stored and not yet in a file.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// The last failed append, until an append succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Appends that failed since the start.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    fn refresh_backlog(&self) {
        if let Ok(n) = self.db.audit_backlog() {
            self.backlog.store(n as u64, Ordering::Relaxed);
        }
    }

    /// Stores events durably on their own, then drains.
    pub fn append(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let mut b = Batch::default();
        for e in events {
            b.push(Op::Audit(e.clone()));
        }
        self.db.commit_durable(&b)?;
        for e in events {
            e.remember();
        }
        self.drain_now();
        Ok(())
    }

    /// Drains now on this thread; a failure is recorded and left to the background drainer.
    pub fn drain_now(&self) {
        if self.drain().is_err() {
            self.poke();
        }
    }

    /// Wakes the background drainer.
    pub fn poke(&self) {
        let (m, c) = &self.wake;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        c.notify_one();
    }

    fn run(&self) {
        let mut delay = Duration::from_secs(1);
        let mut last_retention = std::time::Instant::now() - Duration::from_secs(3600);
        loop {
            {
                let (m, c) = &self.wake;
                let mut woken = m.lock().unwrap_or_else(|p| p.into_inner());
                if !*woken {
                    woken = c
                        .wait_timeout(woken, delay)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
                *woken = false;
            }
            delay = match self.drain() {
                Ok(_) => Duration::from_secs(1),
                Err(_) => (delay * 2).min(Duration::from_secs(30)),
            };
            if last_retention.elapsed() >= Duration::from_secs(3600) {
                last_retention = std::time::Instant::now();
                self.apply_retention();
            }
        }
    }

    /// Makes the stored events durable, appends them to their files, fsyncs, and removes
    /// what was written from the store. Returns how many events were written.
    pub fn drain(&self) -> Result<usize, String> {
        let _one = self.drain.lock().unwrap_or_else(|p| p.into_inner());
        let tz = *self.tz.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0;
        let result = loop {
            let pending = match self.db.audit_pending(DRAIN_CHUNK) {
                Ok(p) => p,
                Err(e) => break Err(format!("cannot read stored audit events: {e}")),
            };
            if pending.is_empty() {
                break Ok(total);
            }
            // The events read are made durable before any is written out: a chunk of a round
            // is committed without waiting for the disk, and a crash may still take such a
            // commit back (the round is then fetched again); its events must not be in the
            // file by then, since their `seq`s would be given again to other events.
            if let Err(e) = self.db.flush() {
                break Err(format!("cannot make stored audit events durable: {e}"));
            }
            // Lines grouped by file, in seq order within each.
            let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for (_, millis, line) in &pending {
                let day = tz
                    .timestamp_millis_opt(*millis)
                    .single()
                    .map(|t| t.format("%Y-%m-%d").to_string())
                    .unwrap_or_else(|| crate::runtime::day_of(Utc::now(), tz));
                let buf = files.entry(day).or_default();
                buf.extend_from_slice(line);
                buf.push(b'\n');
            }
            if let Err(e) = files
                .iter()
                .try_for_each(|(day, bytes)| self.append_file(day, bytes))
            {
                break Err(e);
            }
            let seqs: Vec<u64> = pending.iter().map(|(s, _, _)| *s).collect();
            // Keep each contact's story bounded: counted on about one of its events in
            // `STORY_CHECK_EVERY` (most stories are a handful of events, never near the bound).
            let mut named = std::collections::BTreeSet::new();
            for (seq, _, line) in &pending {
                if let Ok(ids) = serde_json::from_slice::<Named>(line) {
                    named.extend(
                        ids.crm_id
                            .into_iter()
                            .chain(ids.others)
                            .filter(|id| story_checked_at(*id, *seq)),
                    );
                }
            }
            for id in named {
                if let Err(e) = self.db.trim_contact_events(id) {
                    tracing::warn!(contact = id, error = %e, "Cannot trim a contact's story.");
                }
            }
            // Not flushed on purpose: if this removal is lost in a crash, the lines are
            // written again with the same seq (at least once).
            if let Err(e) = self.db.audit_remove(&seqs) {
                break Err(format!("cannot remove drained audit events: {e}"));
            }
            total += seqs.len();
        };
        self.refresh_backlog();
        match &result {
            Ok(_) => {
                let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
                if last.take().is_some() {
                    tracing::info!(
                        dir = %self.dir.display(),
                        "The audit log is writable again; the backlog was written."
                    );
                }
            }
            Err(e) => {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
                if last.as_deref() != Some(e.as_str()) {
                    tracing::error!(error = %e, backlog = self.backlog(), "Cannot write the audit log; events wait in the store and are retried.");
                }
                *last = Some(e.clone());
            }
        }
        result
    }

    /// Appends `bytes` to a day's file and fsyncs it; a failed append is cut back off.
    fn append_file(&self, day: &str, bytes: &[u8]) -> Result<(), String> {
        let path = self.dir.join(file_name(day));
        let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
        let existed = path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| fail("cannot open", e))?;
        let before = f.metadata().map_err(|e| fail("cannot stat", e))?.len();
        let written = f.write_all(bytes).and_then(|()| f.sync_data());
        if let Err(e) = written {
            // Leave no partial line behind: the next attempt writes these lines whole.
            let _ = f.set_len(before).and_then(|()| f.sync_data());
            return Err(fail("cannot append to", e));
        }
        if !existed {
            // The new file's name must survive a power loss too.
            if let Ok(d) = std::fs::File::open(&self.dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Removes daily files older than `audit_retention` (none when it is not set).
    pub fn apply_retention(&self) -> usize {
        let Some(keep) = *self.retention.lock().unwrap_or_else(|p| p.into_inner()) else {
            return 0;
        };
        let tz = *self.tz.lock().unwrap_or_else(|p| p.into_inner());
        let today = Utc::now().with_timezone(&tz).date_naive();
        let keep_days = i64::try_from(keep.as_secs() / 86_400).unwrap_or(i64::MAX);
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(day) = day_of_file(&name) else {
                continue;
            };
            if (today - day).num_days() > keep_days {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {
                        removed += 1;
                        tracing::info!(file = %name, "Removed an audit file older than audit_retention.");
                    }
                    Err(e) => {
                        tracing::warn!(file = %name, error = %e, "Cannot remove an old audit file.")
                    }
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Db {
        Db::in_memory(crate::normalize::region("US"))
    }

    fn lines(dir: &Path) -> Vec<serde_json::Value> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        names.sort();
        names
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn commit(db: &Db, events: &[AuditEvent]) {
        let mut b = Batch::default();
        for e in events {
            b.push(Op::Audit(e.clone()));
        }
        db.commit_durable(&b).unwrap();
    }

    #[test]
    fn audit_events_get_increasing_seq_in_their_transaction_and_drain_to_the_file() {
        let db = db();
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(db.clone(), dir.path(), chrono_tz::UTC, None).unwrap();
        commit(
            &db,
            &[
                AuditEvent::new("a", "google", Action::Added).crm_id(1),
                AuditEvent::new("a", "google", Action::Updated).crm_id(2),
            ],
        );
        commit(&db, &[AuditEvent::new("a", "google", Action::Deleted)]);
        assert_eq!(db.audit_backlog().unwrap(), 3);
        assert_eq!(log.drain().unwrap(), 3);
        assert_eq!(db.audit_backlog().unwrap(), 0);
        assert_eq!(log.backlog(), 0);
        let l = lines(dir.path());
        let seqs: Vec<u64> = l.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(l[0]["action"], "added");
        assert_eq!(l[2]["action"], "deleted");
        // Nothing left: a second drain writes nothing.
        assert_eq!(log.drain().unwrap(), 0);
        assert_eq!(lines(dir.path()).len(), 3);
        assert_eq!(db.audit_seq().unwrap(), 3);
    }

    #[test]
    fn audit_stored_lines_are_the_events_serialised_with_their_seq() {
        let db = db();
        let mut full = AuditEvent::new("a", "google", Action::AmbiguousMatch).crm_id(7);
        full.others = vec![8, 9];
        full.provider_id = Some("people/c1 \"quoted\"".into());
        full.fields = vec!["emails", "phones"];
        full.reason = Some("two candidates".into());
        full.values = Some(serde_json::json!({"emails": ["ada@example.com"]}));
        full.direction = Some(Direction::ToCrm);
        let bare = AuditEvent::new("b", "outlook", Action::Deleted);
        commit(&db, &[bare.clone(), full.clone()]);
        let pending = db.audit_pending(10).unwrap();
        assert_eq!(pending.len(), 2);
        for ((seq, millis, line), mut e) in pending.into_iter().zip([bare, full]) {
            e.seq = Some(seq);
            assert_eq!(String::from_utf8(line).unwrap(), e.line());
            assert_eq!(millis, e.time.timestamp_millis());
        }
        // Each contact the event names keeps the same line in its story.
        for id in [7, 8, 9] {
            let story = db.contact_events(id).unwrap();
            assert_eq!(story.len(), 1);
            let v: serde_json::Value = serde_json::from_slice(&story[0]).unwrap();
            assert_eq!(v["seq"], 2);
            assert_eq!(v["others"], serde_json::json!([8, 9]));
        }
    }

    #[test]
    fn audit_contact_story_is_trimmed_to_about_the_kept_number_of_events() {
        use crate::store::db::CONTACT_EVENTS_KEPT;
        let db = db();
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(db.clone(), dir.path(), chrono_tz::UTC, None).unwrap();
        let events = 4 * CONTACT_EVENTS_KEPT;
        for chunk in (0..events).collect::<Vec<_>>().chunks(100) {
            let batch: Vec<AuditEvent> = chunk
                .iter()
                .map(|_| AuditEvent::new("a", "google", Action::Updated).crm_id(1))
                .collect();
            commit(&db, &batch);
            log.drain().unwrap();
        }
        // A contact with one event is left alone.
        commit(
            &db,
            &[AuditEvent::new("a", "google", Action::Added).crm_id(2)],
        );
        log.drain().unwrap();
        let story = db.contact_events(1).unwrap().len();
        assert!(
            story >= CONTACT_EVENTS_KEPT
                && story <= CONTACT_EVENTS_KEPT + 4 * STORY_CHECK_EVERY as usize,
            "{story} events kept of {events}"
        );
        assert_eq!(db.contact_events(2).unwrap().len(), 1);
        // The newest are the ones kept.
        let last: serde_json::Value =
            serde_json::from_slice(db.contact_events(1).unwrap().last().unwrap()).unwrap();
        assert_eq!(last["seq"], events as u64);
        // Every event still reached the file.
        assert_eq!(lines(dir.path()).len(), events + 1);
    }

    #[test]
    fn audit_story_checks_are_spread_over_a_contacts_events() {
        for contact in [1u64, 2, 77, 123_456] {
            let checked = (1..=64_000u64)
                .filter(|seq| story_checked_at(contact, *seq))
                .count();
            assert!((800..1200).contains(&checked), "{contact}: {checked}");
        }
    }

    #[test]
    fn audit_a_failed_append_keeps_the_events_and_reports_until_the_directory_is_writable() {
        let db = db();
        let dir = tempfile::tempdir().unwrap();
        let audit_dir = dir.path().join("audit");
        let log = AuditLog::new(db.clone(), &audit_dir, chrono_tz::UTC, None).unwrap();
        // The audit directory is replaced by a file: every append fails.
        std::fs::remove_dir(&audit_dir).unwrap();
        std::fs::write(&audit_dir, b"not a directory").unwrap();
        commit(&db, &[AuditEvent::new("a", "google", Action::Added)]);
        assert!(log.drain().is_err());
        assert_eq!(log.backlog(), 1, "the event waits in the store");
        assert!(log.last_error().is_some());
        assert_eq!(log.write_errors(), 1);
        commit(&db, &[AuditEvent::new("a", "google", Action::Updated)]);
        assert!(log.drain().is_err());
        assert_eq!(log.backlog(), 2, "the backlog grows");
        // Room again: the backlog drains in order and the error clears.
        std::fs::remove_file(&audit_dir).unwrap();
        std::fs::create_dir(&audit_dir).unwrap();
        assert_eq!(log.drain().unwrap(), 2);
        assert_eq!(log.backlog(), 0);
        assert_eq!(log.last_error(), None);
        let seqs: Vec<u64> = lines(&audit_dir)
            .iter()
            .map(|v| v["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, vec![1, 2]);
    }

    #[test]
    fn audit_file_dates_follow_the_configured_timezone() {
        let db = db();
        let dir = tempfile::tempdir().unwrap();
        let tz: chrono_tz::Tz = "Pacific/Auckland".parse().unwrap();
        let log = AuditLog::new(db.clone(), dir.path(), tz, None).unwrap();
        // 2026-03-01 20:00 UTC is already 2 March in Auckland (UTC+13).
        let mut e = AuditEvent::new("a", "google", Action::Added);
        e.time = Utc.with_ymd_and_hms(2026, 3, 1, 20, 0, 0).unwrap();
        commit(&db, &[e]);
        log.drain().unwrap();
        assert!(dir.path().join("audit.2026-03-02.jsonl").exists());
        assert!(!dir.path().join("audit.2026-03-01.jsonl").exists());
    }

    #[test]
    fn audit_retention_removes_only_files_older_than_it() {
        let db = db();
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(
            db,
            dir.path(),
            chrono_tz::UTC,
            Some(Duration::from_secs(10 * 86_400)),
        )
        .unwrap();
        let today = Utc::now().date_naive();
        let day = |n: i64| {
            (today - chrono::Duration::days(n))
                .format("%Y-%m-%d")
                .to_string()
        };
        for n in [0, 10, 11, 400] {
            std::fs::write(dir.path().join(file_name(&day(n))), b"{}\n").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"kept").unwrap();
        assert_eq!(log.apply_retention(), 2);
        assert!(dir.path().join(file_name(&day(0))).exists());
        assert!(dir.path().join(file_name(&day(10))).exists());
        assert!(!dir.path().join(file_name(&day(11))).exists());
        assert!(!dir.path().join(file_name(&day(400))).exists());
        assert!(dir.path().join("notes.txt").exists());
        // Without audit_retention, files are kept forever.
        log.reconfigure(chrono_tz::UTC, None);
        std::fs::write(dir.path().join(file_name(&day(900))), b"{}\n").unwrap();
        assert_eq!(log.apply_retention(), 0);
    }

    #[test]
    fn audit_a_drain_cut_before_the_removal_repeats_lines_with_the_same_seq() {
        let db = db();
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(db.clone(), dir.path(), chrono_tz::UTC, None).unwrap();
        commit(&db, &[AuditEvent::new("a", "google", Action::Added)]);
        // A crash after the append and before the removal: simulated by appending the
        // pending lines the way the drainer does, then draining again.
        let pending = db.audit_pending(10).unwrap();
        let day = crate::runtime::day_of(Utc::now(), chrono_tz::UTC);
        let mut bytes = pending[0].2.clone();
        bytes.push(b'\n');
        log.append_file(&day, &bytes).unwrap();
        log.drain().unwrap();
        let seqs: Vec<u64> = lines(dir.path())
            .iter()
            .map(|v| v["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, vec![1, 1], "repeated at the crash boundary, same seq");
    }
}
