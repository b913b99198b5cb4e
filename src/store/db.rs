//! The typed database over a [`Store`]: key layouts, versioned values, indexes, and
//! [`Db::commit`], which applies a [`Batch`] in one transaction.
//!
//! Key layouts (numeric parts big-endian, so key order is numeric order):
//! - `contacts`: contact id → [`Contact`]
//! - `companies`: company id → [`Company`]; `company_names`: normalised name → company id
//! - `links` / `bases`: `account \0 provider id` → [`LinkRecord`] / [`Fields`]
//! - `cursors`: account → provider cursor (opaque bytes); `accounts`: account → status
//! - `metrics`: `account \0 YYYY-MM-DD` → [`DayMetrics`]
//! - `index`: `kind name-key \0 value \0 contact id` → empty (matching lookups)
//! - `outbox`: entry id → [`OutboxEntry`]; `tombstones`: contact id → [`Tombstone`]
//! - `photos`: contact id → JPEG bytes; `grants`: account → encrypted refresh token

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::filter::{FillHandle, IndexFilter};
use super::{Store, StoreError, Tree, TxView};
use crate::model::{
    AccountStatus, Company, CompanyId, Contact, ContactId, DayMetrics, Fields, LinkRecord,
};
use crate::normalize;

/// The schema this build writes and reads. 2: index keys hash their name and value
/// ([`index_prefix`]); a store of schema 1 has its index rebuilt when it is opened.
pub const SCHEMA_VERSION: u32 = 2;
/// First byte of every stored value: the encoding version of that value.
const VALUE_V1: u8 = 1;

/// The `meta` key of the last audit `seq` given.
const AUDIT_SEQ: &[u8] = b"audit_seq";
/// The `meta` key of the number of CRM contacts, kept by every transaction that adds or
/// removes one (so counting never scans the `contacts` tree).
const CONTACT_COUNT: &[u8] = b"contact_count";

fn be_u64(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0)
}

/// What a transaction accumulates over its operations and writes once at its end.
#[derive(Default)]
struct TxState {
    /// The last audit `seq` given in this transaction (read on the first event).
    audit_seq: Option<u64>,
    /// Contacts added minus contacts removed.
    contacts: i64,
    /// Links added minus links removed, by account.
    links: std::collections::BTreeMap<String, i64>,
}

/// One operation of a batch, with what could be computed before its transaction.
enum Prepared<'a> {
    /// Applied as it is, inside the transaction.
    Op(&'a Op),
    /// One encoded value to insert.
    Put(Tree, Vec<u8>, Vec<u8>),
    /// A link (counted when new).
    Link {
        account: &'a str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Contact {
        contact: &'a Contact,
        value: Vec<u8>,
        /// Its index keys (`None`: its company must be read inside the transaction).
        new_keys: Option<Vec<Vec<u8>>>,
    },
    /// An audit event's line without its `seq` (and without the opening brace).
    Audit {
        event: &'a crate::audit::AuditEvent,
        millis: [u8; 8],
        rest: String,
    },
}

/// The `meta` key of an account's number of links (kept like [`CONTACT_COUNT`]).
fn link_count_key(account: &str) -> Vec<u8> {
    let mut k = b"link_count/".to_vec();
    k.extend_from_slice(account.as_bytes());
    k
}

/// Present once every account's link count is kept in `meta`.
const LINK_COUNTS: &[u8] = b"link_counts_kept";

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![VALUE_V1];
    // Serialising our own plain data types into a Vec cannot fail.
    bincode::serialize_into(&mut out, v).unwrap_or_default();
    out
}

fn dec<T: DeserializeOwned>(tree: Tree, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&VALUE_V1, rest)) => bincode::deserialize(rest).map_err(|e| StoreError::Corrupt {
            tree: tree.name(),
            message: e.to_string(),
        }),
        Some((v, _)) => Err(StoreError::Corrupt {
            tree: tree.name(),
            message: format!("unknown value version {v}"),
        }),
        None => Err(StoreError::Corrupt {
            tree: tree.name(),
            message: "empty value".into(),
        }),
    }
}

fn pair_key(account: &str, provider_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(account.len() + provider_id.len() + 1);
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k.extend_from_slice(provider_id.as_bytes());
    k
}

fn account_prefix(account: &str) -> Vec<u8> {
    let mut k = account.as_bytes().to_vec();
    k.push(0);
    k
}

/// The kinds of matching index (SPEC §4's three rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexKind {
    NameEmail,
    NamePhone,
    NameOrg,
}

impl IndexKind {
    fn tag(self) -> u8 {
        match self {
            IndexKind::NameEmail => b'e',
            IndexKind::NamePhone => b'p',
            IndexKind::NameOrg => b'o',
        }
    }
}

/// The prefix of the index entries for (kind, name, value): the kind's tag, then 16 bytes of
/// SHA-256 over the name and value. Entries are that prefix and the contact id. Hashing
/// keeps every key 25 bytes whatever the name and email: the index, the tree written at a
/// random place for every new contact, is a third of the size it would be with the text
/// in it, and so fits sled's page cache for a much larger CRM.
fn index_prefix(kind: IndexKind, name: &str, value: &str) -> Vec<u8> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(value.as_bytes());
    let digest = h.finalize();
    let mut k = Vec::with_capacity(1 + 16 + 8);
    k.push(kind.tag());
    k.extend_from_slice(&digest[..16]);
    k
}

/// A change to send to a provider (two-way), committed with the CRM write that caused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub account: String,
    pub contact_id: ContactId,
    pub op: OutboxOp,
    pub attempts: u32,
    pub not_before: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Set once the provider rejected the entry for good; it is kept for status, not retried.
    pub failed: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboxOp {
    /// Create the CRM contact in the provider.
    Create,
    /// Write these fields (names of [`crate::model::field`]) of a linked contact.
    Update { fields: Vec<String> },
    /// Delete the linked provider contact.
    Delete { provider_id: String },
}

fn outbox_key(account: &str, contact: ContactId) -> Vec<u8> {
    let mut k = account_prefix(account);
    k.extend_from_slice(&contact.to_be_bytes());
    k
}

/// A deleted CRM contact, kept for a retention period so it can be restored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tombstone {
    pub contact: Contact,
    pub deleted_at: DateTime<Utc>,
}

/// One typed write. A [`Batch`] of them is applied atomically by [`Db::commit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    PutContact(Contact),
    /// Deletes the contact, its indexes and photo, and keeps a tombstone.
    DeleteContact(ContactId),
    PutCompany(Company),
    PutLink {
        account: String,
        provider_id: String,
        link: LinkRecord,
    },
    DeleteLink {
        account: String,
        provider_id: String,
    },
    PutBase {
        account: String,
        provider_id: String,
        base: Fields,
    },
    DeleteBase {
        account: String,
        provider_id: String,
    },
    SetCursor {
        account: String,
        cursor: Option<Vec<u8>>,
    },
    AddMetrics {
        account: String,
        day: String,
        delta: DayMetrics,
    },
    PutStatus {
        account: String,
        status: AccountStatus,
    },
    /// One entry per account and contact: later edits coalesce into it.
    PutOutbox(OutboxEntry),
    DeleteOutbox {
        account: String,
        contact: ContactId,
    },
    PutPhoto {
        contact: ContactId,
        jpeg: Vec<u8>,
    },
    PutGrant {
        account: String,
        sealed: Vec<u8>,
    },
    DeleteGrant(String),
    DeleteTombstone(ContactId),
    /// Drops an expired tombstone and the photo it kept.
    PurgeTombstone(ContactId),
    /// A small daemon record in the `meta` tree (approvals of held deletions).
    SetMeta {
        key: String,
        value: Option<Vec<u8>>,
    },
    /// Remembers that a provider contact was skipped, so a replay does not count it again.
    PutSkip {
        account: String,
        provider_id: String,
        skip: SkipMark,
    },
    DeleteSkip {
        account: String,
        provider_id: String,
    },
    /// An audit event describing this batch: stored with the next `seq`, for the drainer
    /// (see [`crate::audit`]), and in the story of the CRM contact it names.
    Audit(crate::audit::AuditEvent),
    /// Who a skipped provider contact is (removed with its skip mark).
    PutSkipLabel {
        account: String,
        provider_id: String,
        label: SkipLabel,
    },
}

/// Who a skipped provider contact is, so an operator can find it by name or email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipLabel {
    pub name: String,
    pub emails: Vec<String>,
    pub phones: Vec<String>,
}

/// A skipped provider contact as the sync-health view lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedContact {
    pub provider_id: String,
    pub mark: SkipMark,
    pub label: Option<SkipLabel>,
}

/// Events of a contact's story kept at the most (older ones are dropped by the drainer).
pub const CONTACT_EVENTS_KEPT: usize = 500;

/// Why and in which version a provider contact was last skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipMark {
    pub reason: crate::model::SkipReason,
    pub etag: Option<String>,
}

/// Writes applied together or not at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The typed database. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    kv: Arc<dyn Store>,
    region: phonenumber::country::Id,
    /// Company names by id. A company record never changes once written, so this never
    /// goes stale; index maintenance reads it instead of decoding the company.
    company_names: Arc<std::sync::RwLock<std::collections::HashMap<CompanyId, Arc<str>>>>,
    /// Company ids by normalised name, for names found in the store (a company, once
    /// stored, keeps its name and id; a name not found is never cached).
    /// Kept with the store's [`Store::generation`] it was read in: a company whose commit a
    /// reopen took back must not be found here.
    company_ids: Arc<std::sync::RwLock<(u64, std::collections::HashMap<String, CompanyId>)>>,
    /// Which index prefixes may be stored ([`super::filter`]).
    index_filter: Arc<IndexFilter>,
    /// The thread filling `index_filter`, stopped when the last clone is dropped. Declared
    /// after `kv`: the store's last handle may be the thread's.
    _filling: Arc<FillHandle>,
}

impl Db {
    /// Opens the sled store in `dir`, checking the schema version.
    ///
    /// sled reads a damaged log up to the first bad checksum and drops the rest, as it would
    /// a torn write. When that leaves nothing at all of a store that existed (no schema
    /// version), opening fails instead of silently starting with an empty CRM.
    pub fn open(dir: &std::path::Path, region: phonenumber::country::Id) -> Result<Db, StoreError> {
        let log = dir.join("store").join("db");
        let existed = std::fs::metadata(&log).is_ok_and(|m| m.len() > 0);
        let kv = Arc::new(super::sled::SledStore::open(dir)?);
        if existed && kv.get(Tree::Meta, b"schema_version")?.is_none() {
            return Err(StoreError::Corrupt {
                tree: "meta",
                message: format!(
                    "{} exists but holds no readable data (no schema version): the store is damaged. \
                     Restore the data_dir from a backup, or move it away to start with an empty store",
                    log.display()
                ),
            });
        }
        Db::with_store_filled(kv, region, true)
    }

    pub fn in_memory(region: phonenumber::country::Id) -> Db {
        // The in-memory store cannot fail to initialise.
        match Db::with_store(Arc::new(super::memory::MemoryStore::new()), region) {
            Ok(db) => db,
            Err(e) => panic!("in-memory store failed to initialise: {e}"),
        }
    }

    pub fn with_store(
        kv: Arc<dyn Store>,
        region: phonenumber::country::Id,
    ) -> Result<Db, StoreError> {
        Db::with_store_filled(kv, region, false)
    }

    /// `background_fill`: the index filter is filled by a thread of its own (a large store
    /// opens without waiting for it), else before this returns.
    fn with_store_filled(
        kv: Arc<dyn Store>,
        region: phonenumber::country::Id,
        background_fill: bool,
    ) -> Result<Db, StoreError> {
        match kv.get(Tree::Meta, b"schema_version")? {
            Some(v) => {
                let found = u32::from_be_bytes(v.as_slice().try_into().map_err(|_| {
                    StoreError::Corrupt {
                        tree: "meta",
                        message: "bad schema_version".into(),
                    }
                })?);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::Schema {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
            None => {
                kv.transaction(&|tx| {
                    tx.insert(
                        Tree::Meta,
                        b"schema_version",
                        SCHEMA_VERSION.to_be_bytes().to_vec(),
                    )?;
                    tx.insert(Tree::Meta, CONTACT_COUNT, 0u64.to_be_bytes().to_vec())?;
                    tx.insert(Tree::Meta, LINK_COUNTS, vec![])
                })?;
                // A new store is marked at once: a store file without it is a damaged one.
                kv.flush()?;
            }
        }
        let mut db = Db {
            kv,
            region,
            company_names: Default::default(),
            company_ids: Default::default(),
            // Never filled: every lookup goes to the store until the real one is made.
            index_filter: Arc::new(IndexFilter::new(0)),
            _filling: Default::default(),
        };
        db.count_contacts_once()?;
        db.count_links_once()?;
        db.reindex_if_stale()?;
        let filter = Arc::new(IndexFilter::new(db.contact_count()?));
        db.index_filter = filter.clone();
        if background_fill {
            db._filling = Arc::new(filter.fill_in_background(db.kv.clone()));
        } else {
            filter.fill(db.kv.as_ref(), &Default::default())?;
        }
        Ok(db)
    }

    pub fn region(&self) -> phonenumber::country::Id {
        self.region
    }

    /// A store written before the contact count was kept: count once (a scan), then every
    /// transaction keeps it.
    fn count_contacts_once(&self) -> Result<(), StoreError> {
        if self.kv.get(Tree::Meta, CONTACT_COUNT)?.is_some() {
            return Ok(());
        }
        let n = self.kv.len(Tree::Contacts)? as u64;
        self.kv.transaction(&|tx| {
            // Nothing else writes while the store opens.
            tx.insert(Tree::Meta, CONTACT_COUNT, n.to_be_bytes().to_vec())
        })
    }

    /// The same for the links of each account.
    fn count_links_once(&self) -> Result<(), StoreError> {
        if self.kv.get(Tree::Meta, LINK_COUNTS)?.is_some() {
            return Ok(());
        }
        let mut counts: std::collections::BTreeMap<Vec<u8>, u64> = Default::default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let rows = self.kv.range_after(Tree::Links, after.as_deref(), 10_000)?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.clone());
            for (k, _) in &rows {
                let account = k.split(|b| *b == 0).next().unwrap_or_default();
                *counts.entry(account.to_vec()).or_default() += 1;
            }
        }
        self.kv.transaction(&|tx| {
            for (account, n) in &counts {
                let mut k = b"link_count/".to_vec();
                k.extend_from_slice(account);
                tx.insert(Tree::Meta, &k, n.to_be_bytes().to_vec())?;
            }
            tx.insert(Tree::Meta, LINK_COUNTS, vec![])
        })
    }

    /// The index is rebuilt from the contacts when the default region changed (phone keys
    /// depend on it) or when it was written in an older format (schema 1 kept the name and
    /// value in the key). Until the last step the old markers stay, so a rebuild cut short
    /// starts over at the next open.
    fn reindex_if_stale(&self) -> Result<(), StoreError> {
        let code = format!("{:?}", self.region);
        let region = self.kv.get(Tree::Meta, b"index_region")?;
        let schema = self.kv.get(Tree::Meta, b"schema_version")?;
        let current = SCHEMA_VERSION.to_be_bytes();
        if region.as_deref() == Some(code.as_bytes()) && schema.as_deref() == Some(&current[..]) {
            return Ok(());
        }
        if region.is_some() {
            tracing::info!(region = %code, "Rebuilding the matching index (default region or index format changed).");
        }
        // Every entry goes, whatever its format.
        loop {
            let rows = self.kv.range_after(Tree::Index, None, 2_000)?;
            if rows.is_empty() {
                break;
            }
            self.kv.transaction(&|tx| {
                for (k, _) in &rows {
                    tx.remove(Tree::Index, k)?;
                }
                Ok(())
            })?;
        }
        let mut after: Option<Vec<u8>> = None;
        loop {
            let rows = self.kv.range_after(Tree::Contacts, after.as_deref(), 500)?;
            if rows.is_empty() {
                break;
            }
            after = rows.last().map(|(k, _)| k.clone());
            let contacts: Vec<Contact> = rows
                .iter()
                .map(|(_, v)| dec(Tree::Contacts, v))
                .collect::<Result<_, _>>()?;
            self.kv.transaction(&|tx| {
                for c in &contacts {
                    for key in self.index_keys(tx, c)? {
                        tx.insert(Tree::Index, &key, vec![])?;
                    }
                }
                Ok(())
            })?;
        }
        self.kv.transaction(&|tx| {
            tx.insert(Tree::Meta, b"index_region", code.as_bytes().to_vec())?;
            tx.insert(Tree::Meta, b"schema_version", current.to_vec())
        })?;
        self.kv.flush()
    }

    // ---- reads ----

    fn get<T: DeserializeOwned>(&self, tree: Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.kv.get(tree, key)?.map(|v| dec(tree, &v)).transpose()
    }

    pub fn contact(&self, id: ContactId) -> Result<Option<Contact>, StoreError> {
        self.get(Tree::Contacts, &id.to_be_bytes())
    }

    /// Contacts in id order (creation order), after `after`, at most `limit`.
    pub fn contacts_page(
        &self,
        after: Option<ContactId>,
        limit: usize,
    ) -> Result<Vec<Contact>, StoreError> {
        let after = after.map(|a| a.to_be_bytes());
        self.kv
            .range_after(Tree::Contacts, after.as_ref().map(|a| a.as_slice()), limit)?
            .iter()
            .map(|(_, v)| dec(Tree::Contacts, v))
            .collect()
    }

    /// How many contacts the CRM holds: a counter kept by the transactions that add and
    /// remove contacts, not a scan.
    pub fn contact_count(&self) -> Result<usize, StoreError> {
        Ok(be_u64(self.kv.get(Tree::Meta, CONTACT_COUNT)?) as usize)
    }

    pub fn company(&self, id: CompanyId) -> Result<Option<Company>, StoreError> {
        self.get(Tree::Companies, &id.to_be_bytes())
    }

    pub fn companies_page(
        &self,
        after: Option<CompanyId>,
        limit: usize,
    ) -> Result<Vec<Company>, StoreError> {
        let after = after.map(|a| a.to_be_bytes());
        self.kv
            .range_after(Tree::Companies, after.as_ref().map(|a| a.as_slice()), limit)?
            .iter()
            .map(|(_, v)| dec(Tree::Companies, v))
            .collect()
    }

    /// The company with this name (compared after normalisation), if any.
    pub fn company_by_name(&self, name: &str) -> Result<Option<CompanyId>, StoreError> {
        let key = normalize::text_key(name);
        let generation = self.kv.generation();
        {
            let ids = self.company_ids.read().unwrap_or_else(|p| p.into_inner());
            if ids.0 == generation {
                if let Some(id) = ids.1.get(&key) {
                    return Ok(Some(*id));
                }
            }
        }
        let found = self
            .kv
            .get(Tree::CompanyNames, key.as_bytes())?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes));
        if let Some(id) = found {
            let mut ids = self.company_ids.write().unwrap_or_else(|p| p.into_inner());
            if ids.0 != generation {
                *ids = (generation, Default::default());
            }
            ids.1.insert(key, id);
        }
        Ok(found)
    }

    pub fn link(&self, account: &str, provider_id: &str) -> Result<Option<LinkRecord>, StoreError> {
        self.get(Tree::Links, &pair_key(account, provider_id))
    }

    /// Every link of an account: `(provider id, link)`.
    pub fn links_of(&self, account: &str) -> Result<Vec<(String, LinkRecord)>, StoreError> {
        let prefix = account_prefix(account);
        self.kv
            .scan_prefix(Tree::Links, &prefix)?
            .into_iter()
            .map(|(k, v)| {
                let pid = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((pid, dec(Tree::Links, &v)?))
            })
            .collect()
    }

    /// How many links the account has: a counter kept by the transactions that add and
    /// remove links, not a scan.
    pub fn link_count(&self, account: &str) -> Result<usize, StoreError> {
        Ok(be_u64(self.kv.get(Tree::Meta, &link_count_key(account))?) as usize)
    }

    pub fn skip(&self, account: &str, provider_id: &str) -> Result<Option<SkipMark>, StoreError> {
        self.get(Tree::Skips, &pair_key(account, provider_id))
    }

    pub fn base(&self, account: &str, provider_id: &str) -> Result<Option<Fields>, StoreError> {
        self.get(Tree::Bases, &pair_key(account, provider_id))
    }

    pub fn cursor(&self, account: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(Tree::Cursors, account.as_bytes())
    }

    pub fn metrics(&self, account: &str, day: &str) -> Result<DayMetrics, StoreError> {
        Ok(self
            .get(Tree::Metrics, &pair_key(account, day))?
            .unwrap_or_default())
    }

    pub fn status(&self, account: &str) -> Result<Option<AccountStatus>, StoreError> {
        self.get(Tree::Accounts, account.as_bytes())
    }

    pub fn photo(&self, contact: ContactId) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(Tree::Photos, &contact.to_be_bytes())
    }

    pub fn grant(&self, account: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(Tree::Grants, account.as_bytes())
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(Tree::Meta, key.as_bytes())
    }

    /// Every stored grant: (account, sealed refresh token).
    pub fn grants(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .kv
            .scan_prefix(Tree::Grants, b"")?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }

    pub fn grant_count(&self) -> Result<usize, StoreError> {
        self.kv.len(Tree::Grants)
    }

    pub fn tombstone(&self, id: ContactId) -> Result<Option<Tombstone>, StoreError> {
        self.get(Tree::Tombstones, &id.to_be_bytes())
    }

    pub fn tombstones(&self) -> Result<Vec<Tombstone>, StoreError> {
        self.kv
            .range_after(Tree::Tombstones, None, usize::MAX)?
            .iter()
            .map(|(_, v)| dec(Tree::Tombstones, v))
            .collect()
    }

    /// The pending (and failed) outbox entries of an account, in contact order.
    pub fn outbox_for(&self, account: &str) -> Result<Vec<OutboxEntry>, StoreError> {
        self.kv
            .scan_prefix(Tree::Outbox, &account_prefix(account))?
            .iter()
            .map(|(_, v)| dec(Tree::Outbox, v))
            .collect()
    }

    pub fn outbox_entry(
        &self,
        account: &str,
        contact: ContactId,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        self.get(Tree::Outbox, &outbox_key(account, contact))
    }

    /// Contacts whose index entry of `kind` matches the normalised name and value, oldest
    /// first.
    pub fn candidates(
        &self,
        kind: IndexKind,
        name_key: &str,
        value_key: &str,
    ) -> Result<Vec<ContactId>, StoreError> {
        let prefix = index_prefix(kind, name_key, value_key);
        if !self.index_filter.may_contain(&prefix) {
            return Ok(vec![]);
        }
        let mut ids: Vec<ContactId> = self
            .kv
            .scan_prefix(Tree::Index, &prefix)?
            .into_iter()
            .filter_map(|(k, _)| {
                k.get(prefix.len()..)
                    .and_then(|s| s.try_into().ok())
                    .map(u64::from_be_bytes)
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    pub fn next_id(&self) -> Result<u64, StoreError> {
        self.kv.next_id()
    }

    /// Whether the matching index's filter, filled from the store in the background after
    /// opening, answers lookups yet (until then every lookup reads the store).
    pub fn index_filter_ready(&self) -> bool {
        self.index_filter.is_ready()
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.kv.flush()
    }

    // ---- writes ----

    /// The index keys of a contact, reading its company name inside the transaction.
    fn index_keys(&self, tx: &dyn TxView, c: &Contact) -> Result<Vec<Vec<u8>>, StoreError> {
        self.index_keys_with(c, |cid| self.company_name_in(tx, cid))
    }

    /// The index keys of a contact, with its company's name from `company`.
    fn index_keys_with(
        &self,
        c: &Contact,
        company: impl FnOnce(CompanyId) -> Result<Option<Arc<str>>, StoreError>,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let name = normalize::name_key(&c.first_name, &c.last_name);
        let mut keys = vec![];
        let mut push = |kind, value: &str| {
            let mut k = index_prefix(kind, &name, value);
            k.extend_from_slice(&c.id.to_be_bytes());
            keys.push(k);
        };
        for e in &c.emails {
            push(IndexKind::NameEmail, &normalize::email_key(e));
        }
        for p in &c.phones {
            if let Some(v) = normalize::phone_key(p, self.region) {
                push(IndexKind::NamePhone, &v);
            }
        }
        if let Some(cid) = c.company_id {
            if let Some(name) = company(cid)? {
                push(IndexKind::NameOrg, &normalize::text_key(&name));
            }
        }
        Ok(keys)
    }

    /// A company's name, from the cache or read (and cached) inside the transaction.
    fn company_name_in(
        &self,
        tx: &dyn TxView,
        id: CompanyId,
    ) -> Result<Option<Arc<str>>, StoreError> {
        if let Some(n) = self.cached_company_name(id) {
            return Ok(Some(n));
        }
        let Some(v) = tx.get(Tree::Companies, &id.to_be_bytes())? else {
            return Ok(None);
        };
        let company: Company = dec(Tree::Companies, &v)?;
        // Cached even if this transaction is retried or fails: the id is never given to
        // another company, so the name can never be wrong for it.
        Ok(Some(self.cache_company_name(id, &company.name)))
    }

    fn cached_company_name(&self, id: CompanyId) -> Option<Arc<str>> {
        self.company_names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    fn cache_company_name(&self, id: CompanyId, name: &str) -> Arc<str> {
        let name: Arc<str> = Arc::from(name);
        self.company_names
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, name.clone());
        name
    }

    /// A company's name (cached: company records never change).
    pub fn company_name(&self, id: CompanyId) -> Result<Option<Arc<str>>, StoreError> {
        if let Some(n) = self.cached_company_name(id) {
            return Ok(Some(n));
        }
        Ok(self
            .company(id)?
            .map(|c| self.cache_company_name(id, &c.name)))
    }

    fn apply_op(&self, tx: &dyn TxView, op: &Op, st: &mut TxState) -> Result<(), StoreError> {
        match op {
            // Prepared by `prepare`; this is the same write with nothing worked out before.
            Op::PutContact(c) => self.apply_prepared(
                tx,
                &Prepared::Contact {
                    contact: c,
                    value: enc(c),
                    new_keys: None,
                },
                st,
            )?,
            Op::DeleteContact(id) => {
                let key = id.to_be_bytes();
                if let Some(old) = tx.get(Tree::Contacts, &key)? {
                    let old: Contact = dec(Tree::Contacts, &old)?;
                    for k in self.index_keys(tx, &old)? {
                        tx.remove(Tree::Index, &k)?;
                    }
                    // The photo stays with the tombstone until it is purged.
                    tx.remove(Tree::Contacts, &key)?;
                    st.contacts -= 1;
                    let t = Tombstone {
                        contact: old,
                        deleted_at: Utc::now(),
                    };
                    tx.insert(Tree::Tombstones, &key, enc(&t))?;
                }
            }
            Op::PutCompany(c) => {
                tx.insert(Tree::Companies, &c.id.to_be_bytes(), enc(c))?;
                tx.insert(
                    Tree::CompanyNames,
                    normalize::text_key(&c.name).as_bytes(),
                    c.id.to_be_bytes().to_vec(),
                )?;
            }
            Op::PutLink {
                account,
                provider_id,
                link,
            } => {
                let key = pair_key(account, provider_id);
                if tx.get(Tree::Links, &key)?.is_none() {
                    *st.links.entry(account.clone()).or_default() += 1;
                }
                tx.insert(Tree::Links, &key, enc(link))?
            }
            Op::DeleteLink {
                account,
                provider_id,
            } => {
                let key = pair_key(account, provider_id);
                if tx.get(Tree::Links, &key)?.is_some() {
                    *st.links.entry(account.clone()).or_default() -= 1;
                    tx.remove(Tree::Links, &key)?
                }
            }
            Op::PutBase {
                account,
                provider_id,
                base,
            } => tx.insert(Tree::Bases, &pair_key(account, provider_id), enc(base))?,
            Op::DeleteBase {
                account,
                provider_id,
            } => tx.remove(Tree::Bases, &pair_key(account, provider_id))?,
            Op::SetCursor { account, cursor } => match cursor {
                Some(c) => tx.insert(Tree::Cursors, account.as_bytes(), c.clone())?,
                None => tx.remove(Tree::Cursors, account.as_bytes())?,
            },
            Op::AddMetrics {
                account,
                day,
                delta,
            } => {
                let key = pair_key(account, day);
                let mut m: DayMetrics = match tx.get(Tree::Metrics, &key)? {
                    Some(v) => dec(Tree::Metrics, &v)?,
                    None => DayMetrics::default(),
                };
                m.add(delta);
                tx.insert(Tree::Metrics, &key, enc(&m))?;
            }
            Op::PutStatus { account, status } => {
                tx.insert(Tree::Accounts, account.as_bytes(), enc(status))?
            }
            Op::PutOutbox(entry) => tx.insert(
                Tree::Outbox,
                &outbox_key(&entry.account, entry.contact_id),
                enc(entry),
            )?,
            Op::DeleteOutbox { account, contact } => {
                tx.remove(Tree::Outbox, &outbox_key(account, *contact))?
            }
            Op::PutPhoto { contact, jpeg } => {
                tx.insert(Tree::Photos, &contact.to_be_bytes(), jpeg.clone())?
            }
            Op::PutGrant { account, sealed } => {
                tx.insert(Tree::Grants, account.as_bytes(), sealed.clone())?
            }
            Op::DeleteGrant(account) => tx.remove(Tree::Grants, account.as_bytes())?,
            Op::DeleteTombstone(id) => tx.remove(Tree::Tombstones, &id.to_be_bytes())?,
            Op::PurgeTombstone(id) => {
                tx.remove(Tree::Tombstones, &id.to_be_bytes())?;
                tx.remove(Tree::Photos, &id.to_be_bytes())?;
            }
            Op::SetMeta { key, value } => match value {
                Some(v) => tx.insert(Tree::Meta, key.as_bytes(), v.clone())?,
                None => tx.remove(Tree::Meta, key.as_bytes())?,
            },
            Op::PutSkip {
                account,
                provider_id,
                skip,
            } => tx.insert(Tree::Skips, &pair_key(account, provider_id), enc(skip))?,
            Op::PutSkipLabel {
                account,
                provider_id,
                label,
            } => tx.insert(
                Tree::SkipLabels,
                &pair_key(account, provider_id),
                enc(label),
            )?,
            Op::Audit(event) => {
                let last = match st.audit_seq {
                    Some(s) => s,
                    None => be_u64(tx.get(Tree::Meta, AUDIT_SEQ)?),
                };
                let seq = last + 1;
                st.audit_seq = Some(seq);
                let mut e = event.clone();
                e.seq = Some(seq);
                let mut v = e.time.timestamp_millis().to_be_bytes().to_vec();
                v.extend_from_slice(e.line().as_bytes());
                if let Some(id) = e.crm_id {
                    let mut k = id.to_be_bytes().to_vec();
                    k.extend_from_slice(&seq.to_be_bytes());
                    tx.insert(Tree::ContactEvents, &k, v[8..].to_vec())?;
                }
                for other in &e.others {
                    let mut k = other.to_be_bytes().to_vec();
                    k.extend_from_slice(&seq.to_be_bytes());
                    tx.insert(Tree::ContactEvents, &k, v[8..].to_vec())?;
                }
                tx.insert(Tree::Audit, &seq.to_be_bytes(), v)?;
            }
            Op::DeleteSkip {
                account,
                provider_id,
            } => {
                tx.remove(Tree::Skips, &pair_key(account, provider_id))?;
                tx.remove(Tree::SkipLabels, &pair_key(account, provider_id))?;
            }
        }
        Ok(())
    }

    /// Every provider contact of `account` skipped in its current version, with who it is.
    pub fn skipped_of(&self, account: &str) -> Result<Vec<SkippedContact>, StoreError> {
        let prefix = account_prefix(account);
        let labels: std::collections::HashMap<Vec<u8>, Vec<u8>> = self
            .kv
            .scan_prefix(Tree::SkipLabels, &prefix)?
            .into_iter()
            .collect();
        self.kv
            .scan_prefix(Tree::Skips, &prefix)?
            .into_iter()
            .map(|(k, v)| {
                Ok(SkippedContact {
                    provider_id: String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                    mark: dec(Tree::Skips, &v)?,
                    label: labels
                        .get(&k)
                        .map(|l| dec(Tree::SkipLabels, l))
                        .transpose()?,
                })
            })
            .collect()
    }

    /// Metrics of `account` for each day from `from` to `to` (inclusive, `YYYY-MM-DD`) that
    /// has any.
    pub fn metrics_range(
        &self,
        account: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, DayMetrics)>, StoreError> {
        let prefix = account_prefix(account);
        self.kv
            .scan_prefix(Tree::Metrics, &prefix)?
            .into_iter()
            .filter_map(|(k, v)| {
                let day = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                (day.as_str() >= from && day.as_str() <= to).then_some((day, v))
            })
            .map(|(day, v)| Ok((day, dec(Tree::Metrics, &v)?)))
            .collect()
    }

    /// The audit events that named `contact`, oldest first (JSON lines with their `seq`).
    pub fn contact_events(&self, contact: ContactId) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self
            .kv
            .scan_prefix(Tree::ContactEvents, &contact.to_be_bytes())?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Drops the oldest story events of `contact` beyond [`CONTACT_EVENTS_KEPT`].
    pub fn trim_contact_events(&self, contact: ContactId) -> Result<(), StoreError> {
        let n = self
            .kv
            .count_prefix(Tree::ContactEvents, &contact.to_be_bytes())?;
        if n <= CONTACT_EVENTS_KEPT {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = self
            .kv
            .scan_prefix(Tree::ContactEvents, &contact.to_be_bytes())?
            .into_iter()
            .take(n - CONTACT_EVENTS_KEPT)
            .map(|(k, _)| k)
            .collect();
        self.kv.transaction(&|tx| {
            for k in &keys {
                tx.remove(Tree::ContactEvents, k)?;
            }
            Ok(())
        })
    }

    /// Up to `limit` stored audit events not yet drained, in `seq` order:
    /// `(seq, time in Unix milliseconds, JSON line)`.
    pub fn audit_pending(&self, limit: usize) -> Result<Vec<(u64, i64, Vec<u8>)>, StoreError> {
        let corrupt = |m: &str| StoreError::Corrupt {
            tree: Tree::Audit.name(),
            message: m.to_string(),
        };
        self.kv
            .range_after(Tree::Audit, None, limit)?
            .into_iter()
            .map(|(k, v)| {
                let seq =
                    u64::from_be_bytes(k.as_slice().try_into().map_err(|_| corrupt("bad key"))?);
                if v.len() < 8 {
                    return Err(corrupt("short value"));
                }
                let (t, line) = v.split_at(8);
                let millis = i64::from_be_bytes(t.try_into().map_err(|_| corrupt("bad time"))?);
                Ok((seq, millis, line.to_vec()))
            })
            .collect()
    }

    /// Forgets drained audit events. Not flushed: a lost removal only repeats lines.
    pub fn audit_remove(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.kv.transaction(&|tx| {
            for s in seqs {
                tx.remove(Tree::Audit, &s.to_be_bytes())?;
            }
            Ok(())
        })
    }

    /// How many audit events wait for the drainer.
    pub fn audit_backlog(&self) -> Result<usize, StoreError> {
        self.kv.len(Tree::Audit)
    }

    /// The last `seq` given to an audit event (0: none yet).
    pub fn audit_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .kv
            .get(Tree::Meta, AUDIT_SEQ)?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Applies every operation of `batch` in one transaction. It is not durable until
    /// [`Db::flush`] returns.
    ///
    /// sled runs a transaction's closure under a process-wide write lock that every read
    /// (an API request, another account's matching) waits for. So what does not depend on
    /// the store's state at commit time (encoding values, index keys, audit lines) is done
    /// first, by [`Db::prepare`], and the closure only reads what it must and writes bytes.
    pub fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let prepared = self.prepare(batch)?;
        self.kv.transaction(&|tx| {
            let mut st = TxState::default();
            for p in &prepared {
                self.apply_prepared(tx, p, &mut st)?;
            }
            if let Some(seq) = st.audit_seq {
                tx.insert(Tree::Meta, AUDIT_SEQ, seq.to_be_bytes().to_vec())?;
            }
            if st.contacts != 0 {
                let n = be_u64(tx.get(Tree::Meta, CONTACT_COUNT)?) as i64 + st.contacts;
                tx.insert(
                    Tree::Meta,
                    CONTACT_COUNT,
                    (n.max(0) as u64).to_be_bytes().to_vec(),
                )?;
            }
            for (account, d) in st.links.iter().filter(|(_, d)| **d != 0) {
                let key = link_count_key(account);
                let n = be_u64(tx.get(Tree::Meta, &key)?) as i64 + d;
                tx.insert(Tree::Meta, &key, (n.max(0) as u64).to_be_bytes().to_vec())?;
            }
            Ok(())
        })
    }

    /// The work of `batch` that can be done before its transaction.
    fn prepare<'a>(&self, batch: &'a Batch) -> Result<Vec<Prepared<'a>>, StoreError> {
        // Companies this batch creates, for the index keys of its contacts.
        let created: HashMap<CompanyId, &str> = batch
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::PutCompany(c) => Some((c.id, c.name.as_str())),
                _ => None,
            })
            .collect();
        // A company's name outside the transaction: company records never change once
        // written, so one read now is the one the transaction would read. `None` when it
        // is not found: the transaction then looks for itself.
        let company = |cid: CompanyId| -> Result<Option<Arc<str>>, StoreError> {
            match created.get(&cid) {
                Some(name) => Ok(Some(Arc::from(*name))),
                None => self.company_name(cid),
            }
        };
        let keys_of = |c: &Contact| -> Result<Option<Vec<Vec<u8>>>, StoreError> {
            let mut missing = false;
            let keys = self.index_keys_with(c, |cid| {
                let name = company(cid)?;
                missing = name.is_none();
                Ok(name)
            })?;
            Ok((!missing).then_some(keys))
        };
        let mut out = Vec::with_capacity(batch.ops.len());
        for op in &batch.ops {
            out.push(match op {
                Op::PutContact(c) => {
                    let new_keys = keys_of(c)?;
                    // In the filter before they can be read from the store.
                    for k in new_keys.iter().flatten() {
                        self.index_filter.add_key(k);
                    }
                    Prepared::Contact {
                        contact: c,
                        value: enc(c),
                        new_keys,
                    }
                }
                Op::PutLink {
                    account,
                    provider_id,
                    link,
                } => Prepared::Link {
                    account,
                    key: pair_key(account, provider_id),
                    value: enc(link),
                },
                Op::PutBase {
                    account,
                    provider_id,
                    base,
                } => Prepared::Put(Tree::Bases, pair_key(account, provider_id), enc(base)),
                Op::PutSkip {
                    account,
                    provider_id,
                    skip,
                } => Prepared::Put(Tree::Skips, pair_key(account, provider_id), enc(skip)),
                Op::PutSkipLabel {
                    account,
                    provider_id,
                    label,
                } => Prepared::Put(Tree::SkipLabels, pair_key(account, provider_id), enc(label)),
                Op::PutOutbox(entry) => Prepared::Put(
                    Tree::Outbox,
                    outbox_key(&entry.account, entry.contact_id),
                    enc(entry),
                ),
                Op::Audit(event) => {
                    let mut e = event.clone();
                    e.seq = None;
                    let line = e.line();
                    // `seq` is the line's first member: the transaction puts it in front.
                    let rest = line.strip_prefix('{').map(str::to_string);
                    match rest {
                        Some(rest) if rest.starts_with('"') => Prepared::Audit {
                            event,
                            millis: e.time.timestamp_millis().to_be_bytes(),
                            rest,
                        },
                        _ => Prepared::Op(op),
                    }
                }
                other => Prepared::Op(other),
            });
        }
        Ok(out)
    }

    fn apply_prepared(
        &self,
        tx: &dyn TxView,
        p: &Prepared<'_>,
        st: &mut TxState,
    ) -> Result<(), StoreError> {
        match p {
            Prepared::Op(op) => self.apply_op(tx, op, st),
            Prepared::Put(tree, key, value) => tx.insert(*tree, key, value.clone()),
            Prepared::Link {
                account,
                key,
                value,
            } => {
                if tx.get(Tree::Links, key)?.is_none() {
                    *st.links.entry(account.to_string()).or_default() += 1;
                }
                tx.insert(Tree::Links, key, value.clone())
            }
            Prepared::Contact {
                contact,
                value,
                new_keys,
            } => {
                let key = contact.id.to_be_bytes();
                let new_keys = match new_keys {
                    Some(k) => std::borrow::Cow::Borrowed(k),
                    None => {
                        let keys = self.index_keys(tx, contact)?;
                        for k in &keys {
                            self.index_filter.add_key(k);
                        }
                        std::borrow::Cow::Owned(keys)
                    }
                };
                // The keys of the version it replaces: what the store holds now (this same
                // batch may have written it), so they are read here.
                let old_keys = match tx.get(Tree::Contacts, &key)? {
                    Some(old) => {
                        let old: Contact = dec(Tree::Contacts, &old)?;
                        self.index_keys(tx, &old)?
                    }
                    None => {
                        st.contacts += 1;
                        // Only a contact that is not stored can have a tombstone (restore).
                        if tx.get(Tree::Tombstones, &key)?.is_some() {
                            tx.remove(Tree::Tombstones, &key)?;
                        }
                        vec![]
                    }
                };
                // Only the keys that changed are written: an update that keeps the name and
                // email leaves that index entry alone.
                for k in old_keys.iter().filter(|k| !new_keys.contains(k)) {
                    tx.remove(Tree::Index, k)?;
                }
                for k in new_keys.iter().filter(|k| !old_keys.contains(k)) {
                    tx.insert(Tree::Index, k, vec![])?;
                }
                tx.insert(Tree::Contacts, &key, value.clone())
            }
            Prepared::Audit {
                event,
                millis,
                rest,
            } => {
                let seq = match st.audit_seq {
                    Some(s) => s,
                    None => be_u64(tx.get(Tree::Meta, AUDIT_SEQ)?),
                } + 1;
                st.audit_seq = Some(seq);
                let seq_member = format!("{{\"seq\":{seq},");
                let mut v = Vec::with_capacity(8 + seq_member.len() + rest.len());
                v.extend_from_slice(millis);
                v.extend_from_slice(seq_member.as_bytes());
                v.extend_from_slice(rest.as_bytes());
                for id in event.crm_id.iter().chain(&event.others) {
                    let mut k = id.to_be_bytes().to_vec();
                    k.extend_from_slice(&seq.to_be_bytes());
                    tx.insert(Tree::ContactEvents, &k, v[8..].to_vec())?;
                }
                tx.insert(Tree::Audit, &seq.to_be_bytes(), v)
            }
        }
    }

    /// Commits and flushes: once this returns, the batch survives a crash.
    pub fn commit_durable(&self, batch: &Batch) -> Result<(), StoreError> {
        self.commit(batch)?;
        self.flush()
    }

    /// [`Db::commit_durable`] for callers on an async thread (an HTTP worker, the System
    /// arbiter): the commit, its fsync and the audit drain that follows (file appends) run
    /// on the blocking pool, so they never stall the other tasks of that thread. `events`
    /// are the batch's `Op::Audit` events, handed to [`crate::audit::committed`] once the
    /// batch is durable.
    pub async fn commit_durable_blocking(
        &self,
        batch: Batch,
        events: Vec<crate::audit::AuditEvent>,
    ) -> Result<(), StoreError> {
        let db = self.clone();
        self.blocking(move || {
            db.commit_durable(&batch)?;
            crate::audit::committed(&events);
            Ok(())
        })
        .await
    }

    /// Runs store work (reads that scan or decode much, writes) on the blocking pool.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Io(format!("blocking store task failed: {e}")))?
    }
}
