//! A Bloom filter of the matching index's prefixes (kind, name, value), so that a lookup
//! that finds nothing — the common case when an account brings people the CRM has never
//! seen — is answered in memory instead of by a sled range scan. In a CRM larger than
//! sled's page cache those scans land on cold pages, which is what made planning cost grow
//! with the CRM (docs/benchmarks.md).
//!
//! The filter never forgets: a prefix is added before the transaction that writes it
//! commits, and removed index entries stay in it (a false positive only costs the scan the
//! store would have done anyway). It is filled from the store by a background thread at
//! open; until that pass ends every lookup goes to the store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fastbloom::AtomicBloomFilter;

use super::{Store, Tree};

/// False positives wanted at the sized number of prefixes.
const FALSE_POSITIVES: f64 = 0.01;
/// Prefixes the filter is sized for at the least (about 1.2 MB).
const MIN_ITEMS: usize = 1 << 20;
/// Index prefixes sized for per stored contact (emails, phones and the organisation, with
/// room for growth).
const ITEMS_PER_CONTACT: usize = 8;

pub struct IndexFilter {
    bloom: AtomicBloomFilter<foldhash::fast::RandomState>,
    /// Every prefix stored when the filter was made has been added.
    ready: AtomicBool,
}

impl IndexFilter {
    /// An empty filter sized for a store of `contacts` contacts.
    pub fn new(contacts: usize) -> IndexFilter {
        IndexFilter {
            bloom: AtomicBloomFilter::with_false_pos(FALSE_POSITIVES)
                .hasher(foldhash::fast::RandomState::default())
                .expected_items(MIN_ITEMS.max(contacts.saturating_mul(ITEMS_PER_CONTACT))),
            ready: AtomicBool::new(false),
        }
    }

    /// Adds an index key's prefix (the key without its trailing contact id).
    pub fn add_key(&self, key: &[u8]) {
        self.bloom.insert(prefix_of(key));
    }

    /// Whether the fill from the store has finished (lookups are answered in memory).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether entries with this prefix may be stored: `false` only when they surely are
    /// not.
    pub fn may_contain(&self, prefix: &[u8]) -> bool {
        !self.ready.load(Ordering::Acquire) || self.bloom.contains(prefix)
    }

    /// Adds every index key stored in `kv`, then answers lookups. Keys written meanwhile
    /// are added by their writers, so none is missed. Gives up, leaving the filter unused,
    /// when `stop` is set.
    pub fn fill(&self, kv: &dyn Store, stop: &AtomicBool) -> Result<(), super::StoreError> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let rows = kv.range_after(Tree::Index, after.as_deref(), 2_000)?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.clone());
            for (k, _) in &rows {
                self.add_key(k);
            }
        }
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Fills the filter on a thread of its own. Dropping the handle stops the thread and
    /// waits for it, so the store is not held open after its last user is gone.
    pub fn fill_in_background(self: &Arc<Self>, kv: Arc<dyn Store>) -> FillHandle {
        let filter = self.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("index-filter".into())
            .spawn(move || {
                if let Err(e) = filter.fill(kv.as_ref(), &stopped) {
                    tracing::warn!(error = %e, "Cannot read the matching index into memory; lookups go to the store.");
                }
            });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot start the index filter thread; lookups go to the store.");
                None
            }
        };
        FillHandle { stop, thread }
    }
}

/// The thread filling an [`IndexFilter`]; stopped and joined when dropped.
#[derive(Default)]
pub struct FillHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FillHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An index key is `prefix ++ contact id (8 bytes)`.
fn prefix_of(key: &[u8]) -> &[u8] {
    &key[..key.len().saturating_sub(8)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[test]
    fn index_filter_answers_only_after_it_is_filled_and_never_misses_a_stored_prefix() {
        let kv = MemoryStore::default();
        let stored: Vec<Vec<u8>> = (0u64..5_000)
            .map(|i| {
                let mut k = format!("ename{i}\0mail{i}\0").into_bytes();
                k.extend_from_slice(&i.to_be_bytes());
                k
            })
            .collect();
        kv.transaction(&|tx| {
            for k in &stored {
                tx.insert(Tree::Index, k, vec![])?;
            }
            Ok(())
        })
        .unwrap();
        let f = IndexFilter::new(5_000);
        // Not filled yet: every lookup goes to the store.
        assert!(f.may_contain(b"eunknown\0nobody\0"));
        f.fill(&kv, &AtomicBool::new(false)).unwrap();
        for k in &stored {
            assert!(f.may_contain(prefix_of(k)));
        }
        // Written after the fill, by a writer that adds its keys.
        let mut late = b"elate\0late\0".to_vec();
        late.extend_from_slice(&9u64.to_be_bytes());
        f.add_key(&late);
        assert!(f.may_contain(b"elate\0late\0"));
        let misses = (0..10_000)
            .filter(|i| f.may_contain(format!("eother{i}\0x\0").as_bytes()))
            .count();
        assert!(misses < 300, "false positives: {misses} of 10000");
    }
}
