//! The in-memory engine: a `BTreeMap` per tree behind one lock. Used by unit tests and as
//! the reference model of the conformance suite.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{Store, StoreError, Tree, TxFn, TxView};

type Trees = HashMap<Tree, BTreeMap<Vec<u8>, Vec<u8>>>;
/// Staged writes of a transaction: `None` removes.
type Writes = HashMap<(Tree, Vec<u8>), Option<Vec<u8>>>;

#[derive(Default)]
pub struct MemoryStore {
    trees: Mutex<Trees>,
    ids: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Trees> {
        // A panic while holding the lock cannot leave a half-applied transaction (writes are
        // staged first), so a poisoned lock still guards consistent data.
        self.trees.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Staged<'a> {
    base: &'a Trees,
    writes: Mutex<Writes>,
}

impl TxView for Staged<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let w = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = w.get(&(tree, key.to_vec())) {
            return Ok(v.clone());
        }
        Ok(self.base.get(&tree).and_then(|t| t.get(key)).cloned())
    }
    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        let mut w = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        w.insert((tree, key.to_vec()), Some(value));
        Ok(())
    }
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError> {
        let mut w = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        w.insert((tree, key.to_vec()), None);
        Ok(())
    }
}

impl Store for MemoryStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(&tree).and_then(|t| t.get(key)).cloned())
    }

    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<super::Entries, StoreError> {
        let g = self.lock();
        let Some(t) = g.get(&tree) else {
            return Ok(vec![]);
        };
        Ok(t.range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn range_after(
        &self,
        tree: Tree,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<super::Entries, StoreError> {
        use std::ops::Bound;
        let g = self.lock();
        let Some(t) = g.get(&tree) else {
            return Ok(vec![]);
        };
        let lower = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Unbounded,
        };
        Ok(t.range((lower, Bound::Unbounded))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn len(&self, tree: Tree) -> Result<usize, StoreError> {
        Ok(self.lock().get(&tree).map_or(0, |t| t.len()))
    }

    fn count_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<usize, StoreError> {
        let g = self.lock();
        Ok(g.get(&tree).map_or(0, |t| {
            t.range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .count()
        }))
    }

    fn transaction(&self, f: TxFn<'_>) -> Result<(), StoreError> {
        let mut g = self.lock();
        let writes = {
            let staged = Staged {
                base: &g,
                writes: Mutex::new(HashMap::new()),
            };
            f(&staged)?;
            staged
                .writes
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
        };
        for ((tree, key), value) in writes {
            let t = g.entry(tree).or_default();
            match value {
                Some(v) => {
                    t.insert(key, v);
                }
                None => {
                    t.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.ids.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
