//! SPEC §3–§5 rules, each as a test named after it, plus property tests.

use super::*;
use crate::model::Address;
use chrono::{Duration, NaiveDate};
use phonenumber::country::Id;
use proptest::prelude::*;

fn db() -> Db {
    Db::in_memory(Id::US)
}

fn ctx(account: &str) -> PlanContext {
    PlanContext {
        account: account.into(),
        provider: ProviderKind::Google,
        direction: Direction::OneWay,
        audit_values: false,
        now: Utc::now(),
        two_way: vec![],
    }
}

fn pc(pid: &str, first: &str, last: &str, emails: &[&str], phones: &[&str]) -> ProviderContact {
    ProviderContact {
        provider_id: pid.into(),
        etag: Some(format!("etag-{pid}")),
        scope: String::new(),
        fields: Fields {
            first_name: first.into(),
            last_name: last.into(),
            emails: emails.iter().map(|s| s.to_string()).collect(),
            phones: phones.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
        photo_url: None,
    }
}

fn up(p: ProviderContact) -> Change {
    Change::Upsert(p)
}

fn run(db: &Db, account: &str, changes: &[Change]) -> Plan {
    let plan = plan(db, ctx(account), changes, &HashMap::new()).unwrap();
    db.commit(&plan.batch).unwrap();
    plan
}

fn all(db: &Db) -> Vec<Contact> {
    db.contacts_page(None, usize::MAX).unwrap()
}

/// A CRM contact created through the API (no links).
fn crm_contact(
    db: &Db,
    first: &str,
    last: &str,
    emails: &[&str],
    phones: &[&str],
    org: Option<&str>,
    age_days: i64,
) -> ContactId {
    let id = db.next_id().unwrap();
    let mut batch = Batch::default();
    let company_id = org.map(|o| {
        let cid = db.next_id().unwrap();
        batch.push(Op::PutCompany(Company {
            id: cid,
            name: o.into(),
            created_at: Utc::now(),
        }));
        cid
    });
    batch.push(Op::PutContact(Contact {
        id,
        first_name: first.into(),
        last_name: last.into(),
        emails: emails.iter().map(|s| s.to_string()).collect(),
        phones: phones.iter().map(|s| s.to_string()).collect(),
        address: None,
        company_id,
        job_title: None,
        birthday: None,
        has_photo: false,
        links: vec![],
        created_at: Utc::now() - Duration::days(age_days),
        updated_at: Utc::now(),
    }));
    db.commit(&batch).unwrap();
    id
}

#[test]
fn new_provider_contact_creates_crm_contact_and_counts_added() {
    let db = db();
    let p = run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    assert!(matches!(p.actions[0], Action::Create { .. }));
    assert_eq!(p.metrics.added_to_crm, 1);
    let c = &all(&db)[0];
    assert_eq!(c.first_name, "Ann");
    assert_eq!(
        c.links,
        vec![LinkRef {
            account: "g".into(),
            provider_id: "people/c1".into()
        }]
    );
    assert_eq!(p.audit[0].action, audit::Action::Added);
}

#[test]
fn ineligible_contacts_are_skipped_counted_and_audited() {
    let db = db();
    let eleven: Vec<String> = (0..11).map(|i| format!("e{i}@x.org")).collect();
    let eleven: Vec<&str> = eleven.iter().map(|s| s.as_str()).collect();
    let p = run(
        &db,
        "g",
        &[
            up(pc("people/c1", "", "", &["a@x.org"], &[])),
            up(pc("people/c2", "Bo", "", &[], &[])),
            up(pc("people/c3", "Cy", "", &eleven, &[])),
            up(pc(
                "people/c4",
                "Di",
                "",
                &[],
                &[
                    "+1 201 555 0100",
                    "+1 201 555 0101",
                    "+1 201 555 0102",
                    "+1 201 555 0103",
                    "+1 201 555 0104",
                    "+1 201 555 0105",
                    "+1 201 555 0106",
                    "+1 201 555 0107",
                    "+1 201 555 0108",
                    "+1 201 555 0109",
                    "+1 201 555 0110",
                ],
            )),
            Change::Unparseable {
                provider_id: "/ab/broken.vcf".into(),
                etag: Some("\"e1\"".into()),
            },
        ],
    );
    assert!(all(&db).is_empty(), "skipping writes nothing");
    for r in SkipReason::ALL
        .into_iter()
        .filter(|r| *r != SkipReason::Unreadable)
    {
        assert_eq!(p.metrics.skipped.get(&r), Some(&1), "{r:?}");
    }
    assert!(p
        .audit
        .iter()
        .all(|e| e.action == audit::Action::Skipped && e.reason.is_some()));
}

#[test]
fn skip_reason_unparseable_counts_once_per_version_and_keeps_the_link() {
    let db = db();
    run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    let broken = |etag: &str| Change::Unparseable {
        provider_id: "people/c1".into(),
        etag: Some(etag.into()),
    };
    let p = run(&db, "g", &[broken("e2")]);
    assert_eq!(p.metrics.skipped.get(&SkipReason::Unparseable), Some(&1));
    assert!(p
        .audit
        .iter()
        .any(|e| e.reason.as_deref() == Some("unparseable")));
    assert_eq!(all(&db).len(), 1, "nothing deleted");
    assert!(db.link("g", "people/c1").unwrap().is_some(), "still linked");
    let again = run(&db, "g", &[broken("e2")]);
    assert_eq!(
        again.metrics.skipped.get(&SkipReason::Unparseable),
        None,
        "same version: not counted again"
    );
}

#[test]
fn skipping_never_deletes_anything() {
    let db = db();
    run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    let p = run(&db, "g", &[up(pc("people/c1", "Ann", "Lee", &[], &[]))]);
    assert!(matches!(
        p.actions[0],
        Action::Skip {
            reason: SkipReason::NoEmailOrPhone,
            ..
        }
    ));
    assert_eq!(all(&db).len(), 1);
    assert!(db.link("g", "people/c1").unwrap().is_some());
}

#[test]
fn match_rule_1_same_name_and_shared_email() {
    let db = db();
    let id = crm_contact(&db, "ANN", "lee", &["Ann@X.org"], &[], None, 1);
    let p = run(
        &db,
        "g",
        &[up(pc(
            "people/c1",
            "Ann",
            "Lee",
            &["ann@x.org"],
            &["+12015550100"],
        ))],
    );
    assert!(matches!(&p.actions[0], Action::Link { crm_id, .. } if *crm_id == id));
    assert_eq!(all(&db).len(), 1, "no duplicate");
    assert_eq!(
        all(&db)[0].phones,
        ["+12015550100"],
        "merge added the phone"
    );
    assert_eq!(
        p.metrics.updated_in_crm, 1,
        "a match merged at initial sync counts as updated"
    );
    assert_eq!(p.metrics.added_to_crm, 0);
}

#[test]
fn match_rule_2_same_name_and_shared_phone_in_e164() {
    let db = db();
    let id = crm_contact(&db, "Ann", "Lee", &[], &["(201) 555-0100"], None, 1);
    let p = run(
        &db,
        "g",
        &[up(pc(
            "people/c1",
            "Ann",
            "Lee",
            &["ann@x.org"],
            &["+1 201 555 0100"],
        ))],
    );
    assert!(matches!(&p.actions[0], Action::Link { crm_id, .. } if *crm_id == id));
}

#[test]
fn match_rule_3_same_name_and_same_organisation() {
    let db = db();
    let id = crm_contact(
        &db,
        "Ann",
        "Lee",
        &["other@y.org"],
        &[],
        Some("ACME  Corp"),
        1,
    );
    let mut p1 = pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]);
    p1.fields.organization = Some("acme corp".into());
    let p = run(&db, "g", &[up(p1)]);
    assert!(matches!(&p.actions[0], Action::Link { crm_id, .. } if *crm_id == id));
}

#[test]
fn match_needs_the_same_name() {
    let db = db();
    crm_contact(&db, "Anna", "Lee", &["ann@x.org"], &[], None, 1);
    let p = run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    assert!(matches!(p.actions[0], Action::Create { .. }));
}

#[test]
fn match_rules_apply_in_order() {
    let db = db();
    let _by_org = crm_contact(&db, "Ann", "Lee", &[], &["+12015550999"], Some("ACME"), 10);
    let by_email = crm_contact(&db, "Ann", "Lee", &["ann@x.org"], &[], None, 1);
    let mut p1 = pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]);
    p1.fields.organization = Some("ACME".into());
    let p = run(&db, "g", &[up(p1)]);
    assert!(matches!(&p.actions[0], Action::Link { crm_id, .. } if *crm_id == by_email));
}

#[test]
fn ambiguous_match_oldest_wins_and_audit_names_the_others() {
    let db = db();
    let newer = crm_contact(&db, "Ann", "Lee", &["ann@x.org"], &[], None, 1);
    let oldest = crm_contact(&db, "Ann", "Lee", &["ann@x.org"], &[], None, 30);
    let p = run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    assert!(
        matches!(&p.actions[0], Action::Link { crm_id, others, .. } if *crm_id == oldest && others == &vec![newer])
    );
    let amb = p
        .audit
        .iter()
        .find(|e| e.action == audit::Action::AmbiguousMatch)
        .unwrap();
    assert_eq!(amb.others, vec![newer]);
    assert_eq!(amb.crm_id, Some(oldest));
}

#[test]
fn no_duplicate_within_one_page() {
    let db = db();
    let p = run(
        &db,
        "g",
        &[
            up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[])),
            up(pc("people/c2", "ann", "LEE", &["ANN@x.org"], &[])),
        ],
    );
    assert_eq!(all(&db).len(), 1);
    assert_eq!(p.metrics.added_to_crm, 1);
    assert_eq!(all(&db)[0].links.len(), 2);
}

#[test]
fn contact_in_two_accounts_ends_as_one_crm_contact_linked_to_both() {
    let db = db();
    run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    let p = run(
        &db,
        "o",
        &[up(pc("AAMk1", "Ann", "Lee", &[], &["+12015550100"]))],
    );
    // No shared email or phone yet: the Outlook copy has only a phone the CRM lacks.
    assert!(matches!(p.actions[0], Action::Create { .. }));
    let db = self::db();
    run(
        &db,
        "g",
        &[up(pc(
            "people/c1",
            "Ann",
            "Lee",
            &["ann@x.org"],
            &["+12015550100"],
        ))],
    );
    run(
        &db,
        "o",
        &[up(pc("AAMk1", "Ann", "Lee", &[], &["(201) 555-0100"]))],
    );
    let cs = all(&db);
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].links.len(), 2);
}

#[test]
fn provider_deletion_deletes_crm_contact_and_counts_it() {
    let db = db();
    run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    let p = run(
        &db,
        "g",
        &[Change::Deleted {
            provider_id: "people/c1".into(),
        }],
    );
    assert_eq!(p.metrics.deleted_from_provider, 1);
    assert!(all(&db).is_empty());
    assert!(db.link("g", "people/c1").unwrap().is_none());
}

#[test]
fn provider_deletion_only_unlinks_when_another_account_still_links() {
    let db = db();
    run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    run(
        &db,
        "o",
        &[up(pc("AAMk1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    let p = run(
        &db,
        "g",
        &[Change::Deleted {
            provider_id: "people/c1".into(),
        }],
    );
    assert!(matches!(p.actions[0], Action::Unlink { .. }));
    assert_eq!(p.metrics.deleted_from_provider, 0);
    let cs = all(&db);
    assert_eq!(cs.len(), 1);
    assert_eq!(
        cs[0].links,
        vec![LinkRef {
            account: "o".into(),
            provider_id: "AAMk1".into()
        }]
    );
}

#[test]
fn contact_leaving_the_synced_group_is_unlinked_not_deleted() {
    let db = db();
    run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    let p = run(
        &db,
        "g",
        &[Change::Left {
            provider_id: "people/c1".into(),
        }],
    );
    assert!(matches!(p.actions[0], Action::Unlink { .. }));
    assert_eq!(all(&db).len(), 1);
    assert!(all(&db)[0].links.is_empty());
    assert_eq!(p.audit[0].action, audit::Action::Unlinked);
}

#[test]
fn one_way_crm_deletion_is_not_recreated_until_the_provider_contact_changes() {
    let db = db();
    run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    let id = all(&db)[0].id;
    db.commit(&Batch {
        ops: vec![Op::DeleteContact(id)],
    })
    .unwrap();
    let p = run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    assert!(matches!(p.actions[0], Action::Ignore { .. }));
    assert!(all(&db).is_empty());
    let p = run(
        &db,
        "g",
        &[up(pc(
            "people/c1",
            "Ann",
            "Lee",
            &["ann@x.org", "a2@x.org"],
            &[],
        ))],
    );
    assert!(matches!(p.actions[0], Action::Create { .. }));
    assert_eq!(all(&db).len(), 1);
}

#[test]
fn replaying_a_page_changes_nothing_and_counts_nothing() {
    let db = db();
    let page = vec![
        up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[])),
        up(pc("people/c2", "Bo", "Ek", &[], &["+12015550100"])),
        Change::Deleted {
            provider_id: "people/c9".into(),
        },
    ];
    run(&db, "g", &page);
    let before = all(&db);
    let p = run(&db, "g", &page);
    assert!(p.batch.is_empty(), "{:?}", p.batch);
    assert!(p.metrics.is_zero());
    assert!(p.audit.is_empty());
    assert_eq!(all(&db), before);
}

#[test]
fn organisation_finds_or_creates_one_company_per_normalised_name() {
    let db = db();
    let mut a = pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]);
    a.fields.organization = Some("ACME Corp".into());
    let mut b = pc("people/c2", "Bo", "Ek", &["bo@x.org"], &[]);
    b.fields.organization = Some("  acme   corp ".into());
    run(&db, "g", &[up(a)]);
    run(&db, "g", &[up(b)]);
    let cs = all(&db);
    assert_eq!(cs[0].company_id, cs[1].company_id);
    assert_eq!(db.companies_page(None, 10).unwrap().len(), 1);
}

#[test]
fn provider_updates_apply_on_the_next_page() {
    let db = db();
    run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    let mut changed = pc("people/c1", "Ann", "Lee-Smith", &["ann@x.org"], &[]);
    changed.fields.address = Some(Address {
        city: Some("Oslo".into()),
        ..Default::default()
    });
    changed.fields.birthday = NaiveDate::from_ymd_opt(1980, 5, 6);
    let p = run(&db, "g", &[up(changed)]);
    assert!(
        matches!(&p.actions[0], Action::Update { changed, .. } if changed.contains(&field::NAME) && changed.contains(&field::ADDRESS))
    );
    assert_eq!(p.metrics.updated_in_crm, 1);
    assert_eq!(all(&db)[0].last_name, "Lee-Smith");
}

#[test]
fn photo_is_stored_only_for_contacts_the_sync_creates() {
    let db = db();
    let id = crm_contact(&db, "Ann", "Lee", &["ann@x.org"], &[], None, 1);
    let mut photos = HashMap::new();
    photos.insert("people/c1".to_string(), vec![0xff, 0xd8, 0xff]);
    photos.insert("people/c2".to_string(), vec![0xff, 0xd8, 0xff]);
    let changes = vec![
        up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[])),
        up(pc("people/c2", "Bo", "Ek", &["bo@x.org"], &[])),
    ];
    let p = plan(&db, ctx("g"), &changes, &photos).unwrap();
    db.commit(&p.batch).unwrap();
    assert!(db.photo(id).unwrap().is_none());
    let created = all(&db).into_iter().find(|c| c.first_name == "Bo").unwrap();
    assert!(created.has_photo);
    assert!(db.photo(created.id).unwrap().is_some());
}

#[test]
fn contact_limit_projection_counts_new_links_and_removals() {
    let db = db();
    run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    let changes = vec![
        up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[])),
        up(pc("people/c2", "Bo", "Ek", &["bo@x.org"], &[])),
        up(pc("people/c3", "", "", &["x@x.org"], &[])),
        Change::Deleted {
            provider_id: "people/c1".into(),
        },
    ];
    assert_eq!(projected_links(&db, "g", &changes).unwrap(), 1);
}

#[test]
fn two_way_crm_changes_are_planned_for_the_provider() {
    let db = db();
    run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    let mut c = all(&db)[0].clone();
    c.job_title = Some("CEO".into());
    db.commit(&Batch {
        ops: vec![Op::PutContact(c)],
    })
    .unwrap();
    let mut two = ctx("g");
    two.direction = Direction::TwoWay;
    let p = plan(
        &db,
        two,
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
        &HashMap::new(),
    )
    .unwrap();
    assert!(p
        .actions
        .iter()
        .any(|a| matches!(a, Action::Push { fields, .. } if fields == &vec![field::JOB_TITLE])));
    assert!(p.metrics.is_zero());
}

fn arb_change() -> impl Strategy<Value = Change> {
    let pid = (0u8..6).prop_map(|i| format!("people/c{i}"));
    let name = prop_oneof![Just("Ann"), Just("ann"), Just("Bo"), Just("")];
    let email = prop_oneof![Just("a@x.org"), Just("A@X.org"), Just("b@x.org")];
    let phone = prop_oneof![
        Just("+12015550100"),
        Just("(201) 555-0100"),
        Just("+12015550101")
    ];
    prop_oneof![
        4 => (pid.clone(), name, proptest::collection::vec(email, 0..3), proptest::collection::vec(phone, 0..2)).prop_map(|(pid, n, e, p)| {
            up(pc(&pid, n, "Lee", &e, &p))
        }),
        1 => pid.clone().prop_map(|provider_id| Change::Deleted { provider_id }),
        1 => pid.prop_map(|provider_id| Change::Left { provider_id }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// No sequence of provider pages creates two CRM contacts for one provider contact, and
    /// every link points at a contact that links back.
    #[test]
    fn no_page_sequence_creates_two_crm_contacts_for_one_provider_contact(
        pages in proptest::collection::vec(proptest::collection::vec(arb_change(), 1..6), 1..6)
    ) {
        let db = db();
        for page in &pages {
            run(&db, "g", page);
        }
        let contacts = all(&db);
        let mut owners: HashMap<String, ContactId> = HashMap::new();
        for c in &contacts {
            for l in &c.links {
                prop_assert!(owners.insert(l.provider_id.clone(), c.id).is_none(), "{} linked twice", l.provider_id);
                let link = db.link(&l.account, &l.provider_id).unwrap();
                prop_assert_eq!(link.map(|x| x.contact_id), Some(c.id));
            }
        }
        for (pid, link) in db.links_of("g").unwrap() {
            if let Some(c) = db.contact(link.contact_id).unwrap() {
                prop_assert!(c.links.iter().any(|l| l.provider_id == pid));
            }
        }
        // Replaying the last page is a no-op.
        let again = plan(&db, ctx("g"), pages.last().unwrap(), &HashMap::new()).unwrap();
        prop_assert!(again.metrics.added_to_crm == 0 && again.metrics.updated_in_crm == 0);
    }
}

#[test]
fn a_skipped_contact_is_counted_once_per_version() {
    let db = db();
    let page = vec![up(pc("people/c1", "", "", &["a@x.org"], &[]))];
    assert_eq!(run(&db, "g", &page).metrics.skipped[&SkipReason::NoName], 1);
    let again = run(&db, "g", &page);
    assert!(
        again.metrics.is_zero() && again.audit.is_empty(),
        "a replay is not a new skip"
    );
    let mut changed = pc("people/c1", "", "", &["b@x.org"], &[]);
    changed.etag = Some("etag-2".into());
    assert_eq!(
        run(&db, "g", &[up(changed)]).metrics.skipped[&SkipReason::NoName],
        1
    );
}

#[test]
fn our_own_creation_seen_in_a_listing_is_adopted_not_duplicated() {
    let db = db();
    let id = crm_contact(&db, "Ann", "Lee", &["ann@x.org"], &[], None, 0);
    let mut entry =
        outbox::coalesce(None, "g", id, crate::store::OutboxOp::Create, Utc::now()).unwrap();
    entry.attempts = 1; // sent, answer lost
    db.commit(&Batch {
        ops: vec![Op::PutOutbox(entry)],
    })
    .unwrap();
    let p = run(
        &db,
        "g",
        &[up(pc("people/c9", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    assert_eq!(p.metrics.added_to_provider, 1);
    assert_eq!(p.metrics.updated_in_crm, 0);
    assert!(
        db.outbox_entry("g", id).unwrap().is_none(),
        "the pending create is done"
    );
    assert_eq!(db.link("g", "people/c9").unwrap().unwrap().contact_id, id);
}

#[test]
fn a_matching_provider_contact_is_merged_not_adopted_when_our_creation_was_never_sent() {
    let db = db();
    let id = crm_contact(&db, "Ann", "Lee", &["ann@x.org"], &[], None, 0);
    let mut b = Batch::default();
    b.push(outbox::enqueue(
        None,
        "g",
        id,
        crate::store::OutboxOp::Create,
        Utc::now(),
    ));
    db.commit(&b).unwrap();
    let mut p1 = pc("people/c9", "Ann", "Lee", &["ann@x.org"], &["+12015550100"]);
    p1.fields.job_title = Some("CTO".into());
    let p = run(&db, "g", &[up(p1)]);
    assert_eq!(p.metrics.added_to_provider, 0);
    assert_eq!(p.metrics.updated_in_crm, 1, "a real match, merged");
    let c = db.contact(id).unwrap().unwrap();
    assert_eq!(c.job_title.as_deref(), Some("CTO"));
    assert_eq!(c.phones, ["+12015550100"]);
}

#[test]
fn eligibility_is_judged_on_cleaned_values() {
    let db = db();
    // The only phone has no digit: after cleaning there is neither email nor phone.
    let p = run(
        &db,
        "g",
        &[up(pc("people/c1", "Ann", "Lee", &[], &["n/a"]))],
    );
    assert!(matches!(
        p.actions[0],
        Action::Skip {
            reason: SkipReason::NoEmailOrPhone,
            ..
        }
    ));
    // Eleven emails of which two are the same address: ten distinct, eligible.
    let mut emails: Vec<String> = (0..10).map(|i| format!("e{i}@x.org")).collect();
    emails.push("E0@X.org".into());
    let emails: Vec<&str> = emails.iter().map(|s| s.as_str()).collect();
    let p = run(&db, "g", &[up(pc("people/c2", "Bo", "Ek", &emails, &[]))]);
    assert!(matches!(p.actions[0], Action::Create { .. }));
}

#[test]
fn a_crm_deleted_contact_that_comes_back_is_matched_not_duplicated() {
    let db = db();
    run(
        &db,
        "a",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    run(
        &db,
        "b",
        &[up(pc("people/c1", "Ann", "Lee", &["ann@x.org"], &[]))],
    );
    let id = all(&db)[0].id;
    db.commit(&Batch {
        ops: vec![Op::DeleteContact(id)],
    })
    .unwrap();
    run(
        &db,
        "a",
        &[up(pc(
            "people/c1",
            "Ann",
            "Lee",
            &["ann@x.org", "a2@x.org"],
            &[],
        ))],
    );
    run(
        &db,
        "b",
        &[up(pc(
            "people/c1",
            "Ann",
            "Lee",
            &["ann@x.org", "b2@x.org"],
            &[],
        ))],
    );
    assert_eq!(all(&db).len(), 1, "one person, one CRM contact");
}
