//! The sled engine: one sled tree per [`Tree`], multi-tree transactions through sled's
//! `Transactional` impl for a slice of trees.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::{Store, StoreError, Tree, TxFn, TxView};

/// The sled engine. sled stops for good after an I/O error (a full disk): every later call,
/// reads included, returns that error. So after one, the store is reopened (at most once
/// every [`REOPEN_EVERY`]) from what is durable on disk; until that succeeds calls fail with
/// the original error.
pub struct SledStore {
    dir: PathBuf,
    inner: RwLock<Option<Arc<Inner>>>,
    /// The I/O error that stopped the current instance, and when we last tried to reopen.
    broken: Mutex<Option<(StoreError, Option<Instant>)>>,
    /// Whether `broken` is set: keeps the mutex off the path of a healthy store.
    is_broken: AtomicBool,
    /// Reopens so far ([`Store::generation`]).
    reopened: AtomicU64,
}

struct Inner {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

/// Shortest time between two attempts to reopen a store stopped by an I/O error.
pub const REOPEN_EVERY: Duration = Duration::from_secs(1);

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

/// sled's page cache. sled's own accounting undercounts what the cache holds, and the
/// process's peak memory follows it: 24 MiB against 64 MiB saves about 50 MiB of peak RSS
/// for ten accounts of 25,000 at about 5 % of their time (docs/benchmarks.md).
/// `CONTACT_SYNC_STORE_CACHE_MIB` overrides it (benchmarks, very large CRMs).
fn cache_bytes() -> u64 {
    std::env::var("CONTACT_SYNC_STORE_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(24)
        * 1024
        * 1024
}

/// How long opening waits for sled's file lock to be released. sled 0.34 does not join its
/// background flusher thread when the last handle of a store is dropped, and that thread
/// holds the lock until it exits (spacejam/sled#1234, #1289): a store closed and opened
/// again at once (a reopen after an I/O error, a test) may find the lock still held by
/// itself.
const LOCK_WAIT: Duration = Duration::from_secs(2);

fn open_inner(dir: &Path) -> Result<Inner, StoreError> {
    let started = Instant::now();
    loop {
        match open_once(dir) {
            Err(StoreError::Io(m))
                if m.contains("could not acquire lock") && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn open_once(dir: &Path) -> Result<Inner, StoreError> {
    let db = sled::Config::new()
        .path(dir.join("store"))
        .mode(sled::Mode::HighThroughput)
        .cache_capacity(cache_bytes())
        .open()
        .map_err(|e| {
            let hint = if e.to_string().contains("could not acquire lock") {
                " (is another contact-sync running with this data_dir?)"
            } else {
                ""
            };
            StoreError::Io(format!("cannot open store in {}: {e}{hint}", dir.display()))
        })?;
    let trees = Tree::ALL
        .iter()
        .map(|t| db.open_tree(t.name()).map_err(io))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Inner { db, trees })
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let inner = open_inner(dir)?;
        Ok(SledStore {
            dir: dir.to_path_buf(),
            inner: RwLock::new(Some(Arc::new(inner))),
            broken: Mutex::new(None),
            is_broken: AtomicBool::new(false),
            reopened: AtomicU64::new(0),
        })
    }

    /// The live instance, reopening a stopped one when it is time to try again.
    fn inner(&self) -> Result<Arc<Inner>, StoreError> {
        if !self.is_broken.load(Ordering::Acquire) {
            if let Some(inner) = self.inner.read().unwrap_or_else(|p| p.into_inner()).clone() {
                return Ok(inner);
            }
        }
        let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((err, last)) = broken.as_mut() {
            if last.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
                return Err(err.clone());
            }
            *last = Some(Instant::now());
            // Drop our handle first: sled holds a file lock until its last handle is gone.
            let old = self.inner.write().unwrap_or_else(|p| p.into_inner()).take();
            drop(old);
            match open_inner(&self.dir) {
                Ok(inner) => {
                    tracing::info!(dir = %self.dir.display(), "Store reopened after an I/O error.");
                    *broken = None;
                    self.reopened.fetch_add(1, Ordering::AcqRel);
                    self.is_broken.store(false, Ordering::Release);
                    let inner = Arc::new(inner);
                    *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Some(inner.clone());
                    return Ok(inner);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Store still cannot be reopened.");
                    return Err(err.clone());
                }
            }
        }
        drop(broken);
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Io("the store is closed".into()))
    }

    /// Notes an I/O error: sled will not recover from it in this instance.
    fn seen<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e @ StoreError::Io(_)) = &r {
            let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
            if broken.is_none() {
                tracing::error!(error = %e, dir = %self.dir.display(), "Store I/O failed; it will be reopened from disk.");
                *broken = Some((e.clone(), None));
                self.is_broken.store(true, Ordering::Release);
            }
        }
        r
    }
}

impl Inner {
    fn tree(&self, t: Tree) -> &sled::Tree {
        &self.trees[t.index()]
    }
}

struct SledTx<'a>(&'a [TransactionalTree]);

/// Carries a `StoreError` out of the sled transaction closure.
fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

thread_local! {
    // sled's closure returns ConflictableTransactionError; TxView returns StoreError. A
    // conflict must be propagated as a conflict so sled retries, so we remember it here.
    static CONFLICT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn tx_err(e: sled::transaction::UnabortableTransactionError) -> StoreError {
    match e {
        sled::transaction::UnabortableTransactionError::Conflict => {
            CONFLICT.with(|c| c.set(true));
            StoreError::Aborted("conflict".into())
        }
        sled::transaction::UnabortableTransactionError::Storage(e) => io(e),
    }
}

impl TxView for SledTx<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0[tree.index()]
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(tx_err)
    }
    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.0[tree.index()]
            .insert(key, value)
            .map(|_| ())
            .map_err(tx_err)
    }
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError> {
        self.0[tree.index()].remove(key).map(|_| ()).map_err(tx_err)
    }
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let inner = self.inner()?;
        self.seen(
            inner
                .tree(tree)
                .get(key)
                .map(|v| v.map(|v| v.to_vec()))
                .map_err(io),
        )
    }

    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<super::Entries, StoreError> {
        let inner = self.inner()?;
        self.seen(
            inner
                .tree(tree)
                .scan_prefix(prefix)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io))
                .collect(),
        )
    }

    fn range_after(
        &self,
        tree: Tree,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<super::Entries, StoreError> {
        use std::ops::Bound;
        let inner = self.inner()?;
        let t = inner.tree(tree);
        let iter = match after {
            Some(a) => t.range::<&[u8], _>((Bound::Excluded(a), Bound::Unbounded)),
            None => t.iter(),
        };
        self.seen(
            iter.take(limit)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io))
                .collect(),
        )
    }

    fn len(&self, tree: Tree) -> Result<usize, StoreError> {
        Ok(self.inner()?.tree(tree).len())
    }

    fn count_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<usize, StoreError> {
        let inner = self.inner()?;
        let counted: Result<usize, StoreError> = inner
            .tree(tree)
            .scan_prefix(prefix)
            .keys()
            .try_fold(0, |n, r| r.map(|_| n + 1).map_err(io));
        self.seen(counted)
    }

    fn transaction(&self, f: TxFn<'_>) -> Result<(), StoreError> {
        let inner = self.inner()?;
        let res = inner.trees.as_slice().transaction(|view| {
            CONFLICT.with(|c| c.set(false));
            match f(&SledTx(view)) {
                Ok(()) => Ok(()),
                Err(_) if CONFLICT.with(|c| c.get()) => Err(ConflictableTransactionError::Conflict),
                Err(e) => Err(abort(e)),
            }
        });
        self.seen(match res {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(io(e)),
        })
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        // sled's ids start at 0; ours start at 1 so that 0 never names a record.
        let inner = self.inner()?;
        self.seen(inner.db.generate_id().map(|i| i + 1).map_err(io))
    }

    fn flush(&self) -> Result<(), StoreError> {
        let inner = self.inner()?;
        self.seen(inner.db.flush().map(|_| ()).map_err(io))
    }

    fn generation(&self) -> u64 {
        self.reopened.load(Ordering::Acquire)
    }
}

use sled::Transactional;
