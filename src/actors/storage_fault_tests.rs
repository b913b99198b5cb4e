//! A full disk under the real actors (account, matcher, writer): the store's commits fail
//! with "No space left on device" for one round. The account ends in `error` with a clear
//! message, the CRM and the cursor are exactly as before the round, and the round after
//! space returns applies everything.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::BoxFuture;
use phonenumber::country::Id;

use super::account::{AccountActor, AccountExit, ExitReason};
use super::matcher::Matcher;
use super::writer::Writer;
use crate::model::{AccountState, Change, Fields, ProviderContact};
use crate::providers::{Jpeg, ProgressFn, Provider, ProviderError, Round};
use crate::runtime::Runtime;
use crate::store::memory::MemoryStore;
use crate::store::{Db, Entries, Store, StoreError, Tree, TxFn};

const ENOSPC: &str = "No space left on device (os error 28)";

/// How the disk fails.
const OK: u8 = 0;
/// Transactions fail before anything is written (the engine cannot append to its log).
const TX_FAILS: u8 = 1;
/// Transactions apply in memory but the flush that makes them durable fails.
const FLUSH_FAILS: u8 = 2;

/// The in-memory engine with a switchable full disk.
struct FullDisk {
    inner: MemoryStore,
    mode: Arc<AtomicU8>,
}

impl Store for FullDisk {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Entries, StoreError> {
        self.inner.scan_prefix(tree, prefix)
    }
    fn range_after(
        &self,
        tree: Tree,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.inner.range_after(tree, after, limit)
    }
    fn len(&self, tree: Tree) -> Result<usize, StoreError> {
        self.inner.len(tree)
    }
    fn count_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<usize, StoreError> {
        self.inner.count_prefix(tree, prefix)
    }
    fn transaction(&self, f: TxFn<'_>) -> Result<(), StoreError> {
        if self.mode.load(Ordering::SeqCst) == TX_FAILS {
            return Err(StoreError::Io(ENOSPC.into()));
        }
        self.inner.transaction(f)
    }
    fn next_id(&self) -> Result<u64, StoreError> {
        self.inner.next_id()
    }
    fn flush(&self) -> Result<(), StoreError> {
        if self.mode.load(Ordering::SeqCst) == FLUSH_FAILS {
            return Err(StoreError::Io(ENOSPC.into()));
        }
        self.inner.flush()
    }
}

/// Hands out scripted rounds, one per fetch.
struct Scripted {
    rounds: Mutex<Vec<Round>>,
}

impl Provider for Scripted {
    fn fetch_round<'a>(
        &'a self,
        _cursor: Option<&'a [u8]>,
        _progress: &'a ProgressFn,
    ) -> BoxFuture<'a, Result<Round, ProviderError>> {
        let r = self.rounds.lock().unwrap_or_else(|p| p.into_inner()).pop();
        Box::pin(async move { r.ok_or_else(|| ProviderError::Transient("no more rounds".into())) })
    }
    fn fetch_photo<'a>(
        &'a self,
        _contact: &'a ProviderContact,
    ) -> BoxFuture<'a, Result<Option<Jpeg>, ProviderError>> {
        Box::pin(async { Ok(None) })
    }
    fn push<'a>(
        &'a self,
        ops: &'a [crate::providers::PushOp],
    ) -> BoxFuture<'a, Vec<crate::providers::PushResult>> {
        // These accounts are one-way: nothing is ever pushed.
        Box::pin(async move {
            ops.iter()
                .map(|_| {
                    crate::providers::PushResult::Failed(ProviderError::Permanent(
                        "one-way test provider".into(),
                    ))
                })
                .collect()
        })
    }
}

/// Stands in for the supervisor: records why accounts stopped.
struct Exits(Arc<Mutex<Vec<ExitReason>>>);

impl Actor for Exits {
    type Context = Context<Self>;
}

impl Handler<AccountExit> for Exits {
    type Result = ();
    fn handle(&mut self, msg: AccountExit, _: &mut Self::Context) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(msg.reason);
    }
}

fn person(i: u32) -> Change {
    Change::Upsert(ProviderContact {
        provider_id: format!("people/c{i}"),
        etag: Some(format!("e{i}")),
        scope: String::new(),
        fields: Fields {
            first_name: format!("First{i}"),
            last_name: format!("Last{i}"),
            emails: vec![format!("p{i}@example.org")],
            ..Fields::default()
        },
        photo_url: None,
    })
}

fn round(range: std::ops::Range<u32>, cursor: &str, full: bool) -> Round {
    Round {
        changes: range.map(person).collect(),
        complete_scopes: if full { vec![String::new()] } else { vec![] },
        gone_scopes: vec![],
        cursor: cursor.as_bytes().to_vec(),
        full,
        pages: 1,
    }
}

const CONFIG: &str = r#"
[daemon]
data_dir = "/nonexistent/contact-sync-test"
listen = "127.0.0.1:0"

[providers.google]
client_id = "abc"

[[accounts]]
id = "g"
provider = "google"
group = "all"
direction = "one-way"
"#;

struct Harness {
    rt: Arc<Runtime>,
    matcher: Addr<Matcher>,
    exits: Arc<Mutex<Vec<ExitReason>>>,
    recorder: Addr<Exits>,
}

impl Harness {
    fn new(mode: Arc<AtomicU8>) -> Harness {
        let config = crate::config::parse(CONFIG).expect("test config");
        let store = FullDisk {
            inner: MemoryStore::new(),
            mode,
        };
        let db = Db::with_store(Arc::new(store), Id::US).expect("store opens");
        let rt = Runtime::new(db, config);
        let writer = Writer::start(rt.clone());
        let matcher = Matcher::start(rt.clone(), writer);
        let exits: Arc<Mutex<Vec<ExitReason>>> = Arc::default();
        let recorder = Exits(exits.clone()).start();
        Harness {
            rt,
            matcher,
            exits,
            recorder,
        }
    }

    /// Runs one account actor over `r` and waits for its first round to end: `Ok(())` when
    /// it committed, the exit reason when it stopped.
    async fn round(&self, r: Round) -> Result<(), ExitReason> {
        let cfg = self.rt.config().accounts[0].clone();
        self.rt.register(&cfg);
        let before = self.rt.account("g").and_then(|a| a.status.last_sync);
        let exits_before = self.exits.lock().unwrap_or_else(|p| p.into_inner()).len();
        let provider = Arc::new(Scripted {
            rounds: Mutex::new(vec![r]),
        });
        let addr = AccountActor::new(
            cfg,
            self.rt.clone(),
            provider,
            self.matcher.clone(),
            self.recorder.clone().recipient(),
        )
        .start();
        for _ in 0..500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Some(e) = self
                .exits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(exits_before)
            {
                return Err(e.clone());
            }
            let a = self.rt.account("g").expect("registered");
            if a.status.state == AccountState::Idle && a.status.last_sync != before {
                addr.do_send(super::account::StopAccount);
                return Ok(());
            }
        }
        panic!("the round neither committed nor failed");
    }

    fn contacts(&self) -> Vec<crate::model::Contact> {
        self.rt.db.contacts_page(None, 10_000).expect("read")
    }
}

fn snapshot(h: &Harness) -> (Vec<crate::model::Contact>, Option<Vec<u8>>, usize) {
    (
        h.contacts(),
        h.rt.db.cursor("g").expect("read"),
        h.rt.db.link_count("g").expect("read"),
    )
}

#[actix_rt::test]
async fn full_disk_fails_the_round_cleanly_and_the_next_round_recovers() {
    let mode = Arc::new(AtomicU8::new(OK));
    let h = Harness::new(mode.clone());
    h.round(round(0..700, "c1", true))
        .await
        .expect("first round");
    let before = snapshot(&h);
    assert_eq!(before.0.len(), 700);
    assert_eq!(before.1.as_deref(), Some(&b"c1"[..]));

    // The disk is full: the round's first chunk cannot be written.
    mode.store(TX_FAILS, Ordering::SeqCst);
    let err = h.round(round(600..1300, "c2", false)).await.unwrap_err();
    let ExitReason::Transient(msg) = &err else {
        panic!("{err:?}");
    };
    assert!(msg.contains("No space left on device"), "{msg}");
    let a = h.rt.account("g").expect("registered");
    assert_eq!(a.status.state, AccountState::Error);
    assert!(
        a.status
            .last_error
            .as_deref()
            .is_some_and(|m| m.starts_with("Store error") && m.contains("No space left")),
        "{:?}",
        a.status.last_error
    );
    assert_eq!(
        snapshot(&h),
        before,
        "no contact, link or cursor written or lost"
    );

    // Space is back: the same changes apply, and the cursor moves.
    mode.store(OK, Ordering::SeqCst);
    h.round(round(600..1300, "c2", false))
        .await
        .expect("round after space returned");
    let (contacts, cursor, links) = snapshot(&h);
    assert_eq!(contacts.len(), 1300);
    assert_eq!(links, 1300);
    assert_eq!(cursor.as_deref(), Some(&b"c2"[..]));
    let a = h.rt.account("g").expect("registered");
    assert_eq!(a.status.state, AccountState::Idle);
    assert_eq!(a.status.last_error, None);
}

#[actix_rt::test]
async fn a_failing_flush_never_splits_a_chunk_from_its_cursor() {
    let mode = Arc::new(AtomicU8::new(OK));
    let h = Harness::new(mode.clone());
    h.round(round(0..10, "c1", true))
        .await
        .expect("first round");
    // Commits land in memory but cannot be made durable. The chunks before the last are
    // committed without a flush; the flush before the last chunk (the one with the cursor)
    // fails, so the in-memory state has whole chunks (each contact with its link) and no
    // new cursor.
    mode.store(FLUSH_FAILS, Ordering::SeqCst);
    let err = h.round(round(10..1010, "c2", false)).await.unwrap_err();
    assert!(
        matches!(&err, ExitReason::Transient(m) if m.contains("No space left")),
        "{err:?}"
    );
    let (contacts, cursor, links) = snapshot(&h);
    assert_eq!(
        cursor.as_deref(),
        Some(&b"c1"[..]),
        "the cursor did not advance"
    );
    assert_eq!(contacts.len(), links, "every contact has its link");
    mode.store(OK, Ordering::SeqCst);
    h.round(round(10..1010, "c2", false))
        .await
        .expect("recovers");
    let (contacts, cursor, links) = snapshot(&h);
    assert_eq!(
        (contacts.len(), links),
        (1010, 1010),
        "no duplicate on replay"
    );
    assert_eq!(cursor.as_deref(), Some(&b"c2"[..]));
}
