//! Durable state.
//!
//! [`Store`] is the seam: an ordered key-value store with named trees and atomic
//! multi-tree transactions. [`sled::SledStore`] is the production engine and
//! [`memory::MemoryStore`] the in-memory one; both run through one conformance suite.
//! [`Db`] is the typed layer every other module uses: it owns key layouts, value
//! encoding (bincode behind a version byte) and secondary indexes, and applies a [`Batch`]
//! of typed operations in a single transaction — the durability contract of SPEC §8.

pub mod db;
pub mod filter;
pub mod memory;
pub mod sled;

#[cfg(test)]
mod conformance;

pub use db::{Batch, Db, IndexKind, Op, OutboxEntry, OutboxOp, SkipLabel, SkipMark, Tombstone};

/// The trees (key spaces) of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    Meta,
    Contacts,
    Companies,
    CompanyNames,
    Links,
    Bases,
    Cursors,
    Metrics,
    Outbox,
    Index,
    Accounts,
    Photos,
    Grants,
    Tombstones,
    Skips,
    /// Audit events not yet written to the daily files, by `seq`.
    Audit,
    /// Who a skipped provider contact is (name, emails, phones), for the sync-health view.
    SkipLabels,
    /// Audit events that name a CRM contact, by contact and `seq` (its story).
    ContactEvents,
}

impl Tree {
    pub const ALL: [Tree; 18] = [
        Tree::Meta,
        Tree::Contacts,
        Tree::Companies,
        Tree::CompanyNames,
        Tree::Links,
        Tree::Bases,
        Tree::Cursors,
        Tree::Metrics,
        Tree::Outbox,
        Tree::Index,
        Tree::Accounts,
        Tree::Photos,
        Tree::Grants,
        Tree::Tombstones,
        Tree::Skips,
        Tree::Audit,
        Tree::SkipLabels,
        Tree::ContactEvents,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Contacts => "contacts",
            Tree::Companies => "companies",
            Tree::CompanyNames => "company_names",
            Tree::Links => "links",
            Tree::Bases => "bases",
            Tree::Cursors => "cursors",
            Tree::Metrics => "metrics",
            Tree::Outbox => "outbox",
            Tree::Index => "index",
            Tree::Accounts => "accounts",
            Tree::Photos => "photos",
            Tree::Grants => "grants",
            Tree::Tombstones => "tombstones",
            Tree::Skips => "skips",
            Tree::Audit => "audit",
            Tree::SkipLabels => "skip_labels",
            Tree::ContactEvents => "contact_events",
        }
    }

    pub fn index(&self) -> usize {
        *self as usize
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("Storage I/O failed: {0}.")]
    Io(String),
    #[error("Stored value in tree {tree} is unreadable: {message}.")]
    Corrupt { tree: &'static str, message: String },
    #[error("The store was written by a newer contact-sync (schema {found}, this one reads up to {supported}).")]
    Schema { found: u32, supported: u32 },
    #[error("Transaction aborted: {0}.")]
    Aborted(String),
}

/// Key-value pairs, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The view a transaction closure gets. Reads see the transaction's own writes.
pub trait TxView {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), StoreError>;
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError>;
}

/// A transaction body. It may run more than once (optimistic engines retry on conflict), so
/// it must do no I/O and have no side effect but through the view.
pub type TxFn<'a> = &'a dyn Fn(&dyn TxView) -> Result<(), StoreError>;

/// An ordered key-value store with trees and atomic multi-tree transactions.
pub trait Store: Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Entries, StoreError>;
    /// Up to `limit` entries with key strictly greater than `after` (or from the start).
    fn range_after(
        &self,
        tree: Tree,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError>;
    fn len(&self, tree: Tree) -> Result<usize, StoreError>;
    /// How many keys start with `prefix`, without copying values out.
    fn count_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<usize, StoreError>;
    /// Runs `f` atomically: all its writes land, or none.
    fn transaction(&self, f: TxFn<'_>) -> Result<(), StoreError>;
    /// A new unique id, increasing over the life of the store.
    fn next_id(&self) -> Result<u64, StoreError>;
    /// Makes every committed transaction durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Changes when the engine drops state it had in memory (sled reopened from disk after an
    /// I/O error, losing commits that were not flushed yet): caches of what was read must
    /// then be read again.
    fn generation(&self) -> u64 {
        0
    }
}
