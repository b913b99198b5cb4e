//! One conformance suite, run against every engine (Garage's `test_suite(db)` pattern).

use std::sync::Arc;

use chrono::Utc;
use phonenumber::country::Id;
use proptest::prelude::*;

use super::memory::MemoryStore;
use super::sled::SledStore;
use super::*;
use crate::model::*;

fn contact(id: u64, first: &str, email: &str, phone: &str, company: Option<u64>) -> Contact {
    Contact {
        id,
        first_name: first.into(),
        last_name: "Doe".into(),
        emails: vec![email.into()],
        phones: vec![phone.into()],
        address: None,
        company_id: company,
        job_title: None,
        birthday: None,
        has_photo: false,
        links: vec![],
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

/// The suite proper.
fn store_conformance(kv: Arc<dyn Store>) {
    // Raw engine: transactions are atomic and read their own writes.
    kv.transaction(&|tx| {
        tx.insert(Tree::Meta, b"a", b"1".to_vec())?;
        assert_eq!(tx.get(Tree::Meta, b"a")?, Some(b"1".to_vec()));
        tx.remove(Tree::Meta, b"a")?;
        assert_eq!(tx.get(Tree::Meta, b"a")?, None);
        tx.insert(Tree::Meta, b"b", b"2".to_vec())
    })
    .unwrap();
    assert_eq!(kv.get(Tree::Meta, b"b").unwrap(), Some(b"2".to_vec()));
    let failed = kv.transaction(&|tx| {
        tx.insert(Tree::Meta, b"c", b"3".to_vec())?;
        Err(StoreError::Aborted("test".into()))
    });
    assert!(failed.is_err());
    assert_eq!(
        kv.get(Tree::Meta, b"c").unwrap(),
        None,
        "aborted write leaked"
    );
    // Trees are separate key spaces.
    assert_eq!(kv.get(Tree::Contacts, b"b").unwrap(), None);
    let a = kv.next_id().unwrap();
    let b = kv.next_id().unwrap();
    assert!(b > a && a > 0);

    // Typed layer.
    let db = Db::with_store(kv, Id::US).unwrap();
    let now = Utc::now();
    let mut batch = Batch::default();
    batch.push(Op::PutCompany(Company {
        id: 7,
        name: "ACME Corp".into(),
        created_at: now,
    }));
    batch.push(Op::PutContact(contact(
        10,
        "Ann",
        "Ann@Example.com",
        "(201) 555-0123",
        Some(7),
    )));
    batch.push(Op::PutContact(contact(
        11,
        "ann",
        "ann@example.com",
        "+1 201 555 0123",
        None,
    )));
    batch.push(Op::PutLink {
        account: "g".into(),
        provider_id: "people/c1".into(),
        link: LinkRecord {
            contact_id: 10,
            etag: Some("e1".into()),
            scope: String::new(),
        },
    });
    batch.push(Op::SetCursor {
        account: "g".into(),
        cursor: Some(b"tok".to_vec()),
    });
    let mut delta = DayMetrics {
        added_to_crm: 2,
        ..Default::default()
    };
    delta.skipped.insert(SkipReason::NoName, 1);
    batch.push(Op::AddMetrics {
        account: "g".into(),
        day: "2026-01-01".into(),
        delta: delta.clone(),
    });
    batch.push(Op::AddMetrics {
        account: "g".into(),
        day: "2026-01-01".into(),
        delta,
    });
    db.commit_durable(&batch).unwrap();

    assert_eq!(db.contact(10).unwrap().unwrap().first_name, "Ann");
    assert_eq!(db.contact_count().unwrap(), 2);
    assert_eq!(db.company_by_name(" acme   CORP").unwrap(), Some(7));
    let name = crate::normalize::name_key("ANN", "doe");
    assert_eq!(
        db.candidates(IndexKind::NameEmail, &name, "ann@example.com")
            .unwrap(),
        vec![10, 11]
    );
    assert_eq!(
        db.candidates(IndexKind::NamePhone, &name, "+12015550123")
            .unwrap(),
        vec![10, 11]
    );
    assert_eq!(
        db.candidates(IndexKind::NameOrg, &name, "acme corp")
            .unwrap(),
        vec![10]
    );
    assert_eq!(db.link("g", "people/c1").unwrap().unwrap().contact_id, 10);
    assert_eq!(db.links_of("g").unwrap().len(), 1);
    assert_eq!(db.link_count("g").unwrap(), 1);
    assert_eq!(db.link_count("gx").unwrap(), 0);
    assert!(db.links_of("gx").unwrap().is_empty());
    assert_eq!(db.cursor("g").unwrap(), Some(b"tok".to_vec()));
    let m = db.metrics("g", "2026-01-01").unwrap();
    assert_eq!(m.added_to_crm, 4);
    assert_eq!(m.skipped[&SkipReason::NoName], 2);
    assert!(db.metrics("g", "2026-01-02").unwrap().is_zero());
    assert_eq!(
        db.contacts_page(Some(10), 10).unwrap().len(),
        1,
        "paging after id"
    );

    // Updating a contact moves its index entries.
    let mut c = db.contact(10).unwrap().unwrap();
    c.emails = vec!["new@example.com".into()];
    db.commit(&Batch {
        ops: vec![Op::PutContact(c)],
    })
    .unwrap();
    assert_eq!(
        db.candidates(IndexKind::NameEmail, &name, "ann@example.com")
            .unwrap(),
        vec![11]
    );
    // Deleting removes indexes and keeps a tombstone.
    db.commit(&Batch {
        ops: vec![Op::DeleteContact(11)],
    })
    .unwrap();
    assert!(db.contact(11).unwrap().is_none());
    assert!(db
        .candidates(IndexKind::NameEmail, &name, "ann@example.com")
        .unwrap()
        .is_empty());
    assert_eq!(db.tombstone(11).unwrap().unwrap().contact.id, 11);
}

#[test]
fn store_conformance_memory() {
    store_conformance(Arc::new(MemoryStore::new()));
}

#[test]
fn store_conformance_sled() {
    let dir = tempfile::tempdir().unwrap();
    store_conformance(Arc::new(SledStore::open(dir.path()).unwrap()));
}

#[test]
fn store_sled_survives_reopen_and_rejects_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), Id::US).unwrap();
        db.commit_durable(&Batch {
            ops: vec![Op::PutContact(contact(1, "Bo", "bo@x.org", "1", None))],
        })
        .unwrap();
    }
    {
        let db = Db::open(dir.path(), Id::US).unwrap();
        assert_eq!(db.contact(1).unwrap().unwrap().first_name, "Bo");
    }
    let kv = SledStore::open(dir.path()).unwrap();
    kv.transaction(&|tx| tx.insert(Tree::Meta, b"schema_version", 99u32.to_be_bytes().to_vec()))
        .unwrap();
    kv.flush().unwrap();
    drop(kv);
    let e = Db::open(dir.path(), Id::US).err().expect("must refuse");
    assert!(matches!(e, StoreError::Schema { found: 99, .. }), "{e}");
}

#[test]
fn store_corrupt_value_is_an_error_not_a_panic() {
    let kv = Arc::new(MemoryStore::new());
    let db = Db::with_store(kv.clone(), Id::US).unwrap();
    kv.transaction(&|tx| tx.insert(Tree::Contacts, &5u64.to_be_bytes(), vec![9, 9, 9]))
        .unwrap();
    assert!(matches!(db.contact(5), Err(StoreError::Corrupt { .. })));
}

#[derive(Debug, Clone)]
enum ModelOp {
    Put(u8, u8),
    Remove(u8),
    TxPair(u8, u8, u8),
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        (0u8..16, any::<u8>()).prop_map(|(k, v)| ModelOp::Put(k, v)),
        (0u8..16).prop_map(ModelOp::Remove),
        (0u8..16, 0u8..16, any::<u8>()).prop_map(|(a, b, v)| ModelOp::TxPair(a, b, v)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Random operation sequences give the same state on sled as on the in-memory model.
    #[test]
    fn store_model_check_sled_against_memory(ops in proptest::collection::vec(model_op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let sled_kv = SledStore::open(dir.path()).unwrap();
        let mem = MemoryStore::new();
        for op in &ops {
            for kv in [&sled_kv as &dyn Store, &mem as &dyn Store] {
                match op {
                    ModelOp::Put(k, v) => kv.transaction(&|tx| tx.insert(Tree::Links, &[*k], vec![*v])).unwrap(),
                    ModelOp::Remove(k) => kv.transaction(&|tx| tx.remove(Tree::Links, &[*k])).unwrap(),
                    ModelOp::TxPair(a, b, v) => kv.transaction(&|tx| {
                        tx.insert(Tree::Links, &[*a], vec![*v])?;
                        tx.insert(Tree::Bases, &[*b], vec![*v])
                    }).unwrap(),
                }
            }
        }
        for tree in [Tree::Links, Tree::Bases] {
            prop_assert_eq!(sled_kv.scan_prefix(tree, &[]).unwrap(), mem.scan_prefix(tree, &[]).unwrap());
            prop_assert_eq!(sled_kv.range_after(tree, Some(&[3]), 5).unwrap(), mem.range_after(tree, Some(&[3]), 5).unwrap());
        }
    }
}

#[test]
fn changing_default_region_rebuilds_the_phone_index_without_stale_keys() {
    let kv: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let gb = Db::with_store(kv.clone(), Id::GB).unwrap();
    gb.commit(&Batch {
        ops: vec![Op::PutContact(contact(
            1,
            "Ann",
            "a@x.org",
            "020 7946 0018",
            None,
        ))],
    })
    .unwrap();
    let name = crate::normalize::name_key("Ann", "Doe");
    assert_eq!(
        gb.candidates(IndexKind::NamePhone, &name, "+442079460018")
            .unwrap(),
        vec![1]
    );
    let de = Db::with_store(kv, Id::DE).unwrap();
    assert!(
        de.candidates(IndexKind::NamePhone, &name, "+442079460018")
            .unwrap()
            .is_empty(),
        "stale GB key removed"
    );
    let key = crate::normalize::phone_key("020 7946 0018", Id::DE).unwrap();
    assert_eq!(
        de.candidates(IndexKind::NamePhone, &name, &key).unwrap(),
        vec![1]
    );
}

#[test]
fn contact_count_is_kept_by_transactions_not_scanned() {
    let dir = tempfile::tempdir().unwrap();
    for kv in [
        Arc::new(MemoryStore::new()) as Arc<dyn Store>,
        Arc::new(SledStore::open(dir.path()).unwrap()),
    ] {
        let db = Db::with_store(kv.clone(), Id::US).unwrap();
        assert_eq!(db.contact_count().unwrap(), 0);
        let put = |c| Batch {
            ops: vec![Op::PutContact(c)],
        };
        db.commit(&put(contact(1, "Ann", "a@x.org", "1", None)))
            .unwrap();
        db.commit(&put(contact(2, "Bo", "b@x.org", "2", None)))
            .unwrap();
        // An update is not a new contact; one batch may write the same contact twice.
        db.commit(&Batch {
            ops: vec![
                Op::PutContact(contact(2, "Bob", "b@x.org", "2", None)),
                Op::PutContact(contact(2, "Bobby", "b@x.org", "2", None)),
            ],
        })
        .unwrap();
        assert_eq!(db.contact_count().unwrap(), 2);
        db.commit(&Batch {
            ops: vec![
                Op::DeleteContact(1),
                Op::DeleteContact(1),
                Op::DeleteContact(9),
            ],
        })
        .unwrap();
        assert_eq!(db.contact_count().unwrap(), 1);
        // Restoring a deleted contact counts it again.
        db.commit(&put(contact(1, "Ann", "a@x.org", "1", None)))
            .unwrap();
        assert_eq!(db.contact_count().unwrap(), kv.len(Tree::Contacts).unwrap());
    }
}

#[test]
fn contact_count_of_a_store_written_before_it_was_kept_is_counted_once_at_open() {
    let kv: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let db = Db::with_store(kv.clone(), Id::US).unwrap();
    for id in 1..=3 {
        db.commit(&Batch {
            ops: vec![Op::PutContact(contact(id, "Ann", "a@x.org", "1", None))],
        })
        .unwrap();
    }
    // An older build kept no count.
    kv.transaction(&|tx| tx.remove(Tree::Meta, b"contact_count"))
        .unwrap();
    let reopened = Db::with_store(kv.clone(), Id::US).unwrap();
    assert_eq!(reopened.contact_count().unwrap(), 3);
    reopened
        .commit(&Batch {
            ops: vec![Op::PutContact(contact(4, "Bo", "b@x.org", "2", None))],
        })
        .unwrap();
    assert_eq!(reopened.contact_count().unwrap(), 4);
}

#[test]
fn link_count_is_kept_per_account_and_counted_once_for_an_older_store() {
    let kv: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let db = Db::with_store(kv.clone(), Id::US).unwrap();
    let link = |account: &str, pid: &str| Op::PutLink {
        account: account.into(),
        provider_id: pid.into(),
        link: LinkRecord {
            contact_id: 1,
            etag: None,
            scope: String::new(),
        },
    };
    db.commit(&Batch {
        ops: vec![
            link("g", "a"),
            link("g", "b"),
            link("g", "a"),
            link("gx", "a"),
        ],
    })
    .unwrap();
    assert_eq!(db.link_count("g").unwrap(), 2);
    assert_eq!(db.link_count("gx").unwrap(), 1);
    assert_eq!(db.link_count("none").unwrap(), 0);
    db.commit(&Batch {
        ops: vec![
            Op::DeleteLink {
                account: "g".into(),
                provider_id: "a".into(),
            },
            Op::DeleteLink {
                account: "g".into(),
                provider_id: "never".into(),
            },
        ],
    })
    .unwrap();
    assert_eq!(db.link_count("g").unwrap(), 1);
    // An older build kept no counts: they are counted once when the store opens.
    kv.transaction(&|tx| {
        tx.remove(Tree::Meta, b"link_counts_kept")?;
        tx.remove(Tree::Meta, b"link_count/g")?;
        tx.remove(Tree::Meta, b"link_count/gx")
    })
    .unwrap();
    let reopened = Db::with_store(kv.clone(), Id::US).unwrap();
    assert_eq!(reopened.link_count("g").unwrap(), 1);
    assert_eq!(reopened.link_count("gx").unwrap(), 1);
}

#[test]
fn store_of_schema_1_has_its_index_rebuilt_in_the_hashed_format_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let name = crate::normalize::name_key("Ann", "Doe");
    {
        let db = Db::open(dir.path(), Id::US).unwrap();
        db.commit_durable(&Batch {
            ops: vec![Op::PutContact(contact(
                1,
                "Ann",
                "a@x.org",
                "+1 201 555 0123",
                None,
            ))],
        })
        .unwrap();
    }
    // What schema 1 wrote: the index key spelled out (tag, name, 0, value, 0, id) and no
    // hashed entries.
    let kv = SledStore::open(dir.path()).unwrap();
    let mut old_key = b"e".to_vec();
    old_key.extend_from_slice(name.as_bytes());
    old_key.push(0);
    old_key.extend_from_slice(b"a@x.org");
    old_key.push(0);
    old_key.extend_from_slice(&1u64.to_be_bytes());
    let hashed: Vec<Vec<u8>> = kv
        .scan_prefix(Tree::Index, b"")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(!hashed.is_empty());
    assert!(hashed.iter().all(|k| k.len() == 25), "tag + 16 + id");
    kv.transaction(&|tx| {
        for k in &hashed {
            tx.remove(Tree::Index, k)?;
        }
        tx.insert(Tree::Index, &old_key, vec![])?;
        tx.insert(Tree::Meta, b"schema_version", 1u32.to_be_bytes().to_vec())
    })
    .unwrap();
    kv.flush().unwrap();
    drop(kv);

    let db = Db::open(dir.path(), Id::US).unwrap();
    assert_eq!(
        db.candidates(IndexKind::NameEmail, &name, "a@x.org")
            .unwrap(),
        vec![1]
    );
    assert_eq!(
        db.candidates(IndexKind::NamePhone, &name, "+12015550123")
            .unwrap(),
        vec![1]
    );
    drop(db);
    let kv = SledStore::open(dir.path()).unwrap();
    let mut keys: Vec<Vec<u8>> = kv
        .scan_prefix(Tree::Index, b"")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    let mut expected = hashed.clone();
    expected.sort();
    assert_eq!(
        keys, expected,
        "the old key is gone, the hashed ones are back"
    );
    assert_eq!(
        kv.get(Tree::Meta, b"schema_version").unwrap(),
        Some(crate::store::db::SCHEMA_VERSION.to_be_bytes().to_vec())
    );
}

fn found(db: &Db, kind: IndexKind, first: &str, value: &str) -> Vec<ContactId> {
    let name = crate::normalize::name_key(first, "Doe");
    db.candidates(kind, &name, value).unwrap()
}

/// Index keys are worked out before the transaction; a contact written twice in one
/// batch, or tied to a company the same batch creates, still ends with exactly the keys
/// of its last version.
fn index_keys_follow_the_last_write_of_a_batch(db: &Db) {
    let company = Company {
        id: 50,
        name: "Analytical Engines".into(),
        created_at: Utc::now(),
    };
    let mut b = Batch::default();
    b.push(Op::PutCompany(company));
    b.push(Op::PutContact(contact(
        1,
        "Ada",
        "ada@one.example",
        "+1 415 555 0100",
        Some(50),
    )));
    b.push(Op::PutContact(contact(
        1,
        "Ada",
        "ada@two.example",
        "+1 415 555 0100",
        Some(50),
    )));
    db.commit(&b).unwrap();
    let org = crate::normalize::text_key("Analytical Engines");
    assert_eq!(found(db, IndexKind::NameOrg, "Ada", &org), vec![1]);
    assert_eq!(
        found(db, IndexKind::NameEmail, "Ada", "ada@two.example"),
        vec![1]
    );
    assert!(found(db, IndexKind::NameEmail, "Ada", "ada@one.example").is_empty());
    assert_eq!(db.contact_count().unwrap(), 1);
    // Renamed in a later batch: the old name's keys go, the new name's come.
    let mut b = Batch::default();
    b.push(Op::PutContact(contact(
        1,
        "Augusta",
        "ada@two.example",
        "+1 415 555 0100",
        Some(50),
    )));
    db.commit(&b).unwrap();
    assert!(found(db, IndexKind::NameOrg, "Ada", &org).is_empty());
    assert!(found(db, IndexKind::NameEmail, "Ada", "ada@two.example").is_empty());
    assert_eq!(found(db, IndexKind::NameOrg, "Augusta", &org), vec![1]);
    // Deleted and written again in one batch: counted once, indexed once.
    let mut b = Batch::default();
    b.push(Op::DeleteContact(1));
    b.push(Op::PutContact(contact(
        1,
        "Ada",
        "ada@three.example",
        "+1 415 555 0100",
        None,
    )));
    db.commit(&b).unwrap();
    assert_eq!(db.contact_count().unwrap(), 1);
    assert!(found(db, IndexKind::NameOrg, "Augusta", &org).is_empty());
    assert!(found(db, IndexKind::NameEmail, "Augusta", "ada@two.example").is_empty());
    assert_eq!(
        found(db, IndexKind::NameEmail, "Ada", "ada@three.example"),
        vec![1]
    );
}

/// An engine that can "reopen" and lose what was not flushed, as sled does after an
/// I/O error: here, the trees are replaced by an earlier copy.
struct Reopening {
    now: std::sync::RwLock<Arc<MemoryStore>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Store for Reopening {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.now.read().unwrap().get(tree, key)
    }
    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Entries, StoreError> {
        self.now.read().unwrap().scan_prefix(tree, prefix)
    }
    fn range_after(
        &self,
        tree: Tree,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.now.read().unwrap().range_after(tree, after, limit)
    }
    fn len(&self, tree: Tree) -> Result<usize, StoreError> {
        self.now.read().unwrap().len(tree)
    }
    fn count_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<usize, StoreError> {
        self.now.read().unwrap().count_prefix(tree, prefix)
    }
    fn transaction(&self, f: TxFn<'_>) -> Result<(), StoreError> {
        self.now.read().unwrap().transaction(f)
    }
    fn next_id(&self) -> Result<u64, StoreError> {
        self.now.read().unwrap().next_id()
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn a_company_a_reopen_took_back_is_not_found_in_the_cache() {
    let empty = Arc::new(MemoryStore::new());
    let kv = Arc::new(Reopening {
        now: std::sync::RwLock::new(empty.clone()),
        generation: Default::default(),
    });
    let db = Db::with_store(kv.clone(), Id::US).unwrap();
    // What is on disk: the store as it is now, before the company.
    let on_disk = Arc::new(MemoryStore::new());
    for tree in Tree::ALL {
        let rows = empty.range_after(tree, None, usize::MAX).unwrap();
        on_disk
            .transaction(&|tx| {
                for (k, v) in &rows {
                    tx.insert(tree, k, v.clone())?;
                }
                Ok(())
            })
            .unwrap();
    }
    let mut b = Batch::default();
    b.push(Op::PutCompany(Company {
        id: 9,
        name: "Analytical Engines".into(),
        created_at: Utc::now(),
    }));
    db.commit(&b).unwrap();
    assert_eq!(db.company_by_name("analytical engines").unwrap(), Some(9));
    // The commit was not flushed and the engine reopens from disk.
    *kv.now.write().unwrap() = on_disk;
    kv.generation
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(db.company_by_name("analytical engines").unwrap(), None);
}

#[test]
fn index_keys_follow_the_last_write_of_a_batch_in_memory() {
    index_keys_follow_the_last_write_of_a_batch(&Db::in_memory(Id::US));
}

#[test]
fn index_keys_follow_the_last_write_of_a_batch_in_sled() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Id::US).unwrap();
    index_keys_follow_the_last_write_of_a_batch(&db);
}
