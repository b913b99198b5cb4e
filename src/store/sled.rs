//! The sled engine: one sled tree per [`Tree`], multi-tree transactions through sled's
//! `Transactional` impl for a slice of trees.

use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::{Store, StoreError, Tree, TxFn, TxView};

pub struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir.join("store"))
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(|e| StoreError::Io(format!("cannot open store in {}: {e}", dir.display())))?;
        let trees = Tree::ALL
            .iter()
            .map(|t| db.open_tree(t.name()).map_err(io))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SledStore { db, trees })
    }

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
        self.tree(tree)
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(io)
    }

    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<super::Entries, StoreError> {
        self.tree(tree)
            .scan_prefix(prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io))
            .collect()
    }

    fn range_after(
        &self,
        tree: Tree,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<super::Entries, StoreError> {
        use std::ops::Bound;
        let t = self.tree(tree);
        let iter = match after {
            Some(a) => t.range::<&[u8], _>((Bound::Excluded(a), Bound::Unbounded)),
            None => t.iter(),
        };
        iter.take(limit)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io))
            .collect()
    }

    fn len(&self, tree: Tree) -> Result<usize, StoreError> {
        Ok(self.tree(tree).len())
    }

    fn count_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<usize, StoreError> {
        let mut n = 0;
        for r in self.tree(tree).scan_prefix(prefix).keys() {
            r.map_err(io)?;
            n += 1;
        }
        Ok(n)
    }

    fn transaction(&self, f: TxFn<'_>) -> Result<(), StoreError> {
        let res = self.trees.as_slice().transaction(|view| {
            CONFLICT.with(|c| c.set(false));
            match f(&SledTx(view)) {
                Ok(()) => Ok(()),
                Err(_) if CONFLICT.with(|c| c.get()) => Err(ConflictableTransactionError::Conflict),
                Err(e) => Err(abort(e)),
            }
        });
        match res {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(io(e)),
        }
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        // sled's ids start at 0; ours start at 1 so that 0 never names a record.
        self.db.generate_id().map(|i| i + 1).map_err(io)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(io)
    }
}

use sled::Transactional;
