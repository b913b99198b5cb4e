//! A push committed while a full listing runs is not a deletion (issue 13, item 5).
//!
//! The real actors (account, matcher, writer) run one round whose provider, while it
//! "lists", lets a push of the same account commit a new link, as the old actor's push
//! task does after a restart. The listing is complete and does not mention that contact
//! (it was created in the provider after the listing passed it). Only links that existed
//! when the listing started may become deletions, so the new link and its CRM contact stay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use futures_util::future::BoxFuture;
use phonenumber::country::Id;

use super::account::{AccountActor, AccountExit, ExitReason, StopAccount};
use super::matcher::Matcher;
use super::writer::Writer;
use crate::model::{AccountState, Change, Contact, Fields, LinkRecord, LinkRef, ProviderContact};
use crate::providers::{Jpeg, ProgressFn, Provider, ProviderError, PushOp, PushResult, Round};
use crate::runtime::Runtime;
use crate::store::{Batch, Db, Op};

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

fn person(i: u32) -> ProviderContact {
    ProviderContact {
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
    }
}

/// Lists `listed` in full; while listing, commits `during` (the concurrent push).
struct ListingWithPush {
    db: Db,
    listed: Vec<ProviderContact>,
    during: Mutex<Option<Batch>>,
}

impl Provider for ListingWithPush {
    fn fetch_round<'a>(
        &'a self,
        _cursor: Option<&'a [u8]>,
        _progress: &'a ProgressFn,
    ) -> BoxFuture<'a, Result<Round, ProviderError>> {
        Box::pin(async move {
            let push = self.during.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(b) = push {
                self.db
                    .commit_durable(&b)
                    .map_err(|e| ProviderError::Transient(e.to_string()))?;
            }
            Ok(Round {
                changes: self.listed.iter().cloned().map(Change::Upsert).collect(),
                complete_scopes: vec![String::new()],
                gone_scopes: vec![],
                cursor: b"c2".to_vec(),
                full: true,
                pages: 1,
            })
        })
    }
    fn fetch_photo<'a>(
        &'a self,
        _contact: &'a ProviderContact,
    ) -> BoxFuture<'a, Result<Option<Jpeg>, ProviderError>> {
        Box::pin(async { Ok(None) })
    }
    fn push<'a>(&'a self, ops: &'a [PushOp]) -> BoxFuture<'a, Vec<PushResult>> {
        Box::pin(async move {
            ops.iter()
                .map(|_| PushResult::Failed(ProviderError::Permanent("not pushed".into())))
                .collect()
        })
    }
}

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

async fn run_one_round(rt: &Arc<Runtime>, matcher: &Addr<Matcher>, provider: Arc<dyn Provider>) {
    let cfg = rt.config().accounts[0].clone();
    rt.register(&cfg);
    let before = rt.account("g").and_then(|a| a.status.last_sync);
    let exits: Arc<Mutex<Vec<ExitReason>>> = Arc::default();
    let recorder = Exits(exits.clone()).start();
    let addr = AccountActor::new(
        cfg,
        rt.clone(),
        provider,
        matcher.clone(),
        recorder.recipient(),
    )
    .start();
    for _ in 0..500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Some(e) = exits.lock().unwrap_or_else(|p| p.into_inner()).first() {
            panic!("the round failed: {e:?}");
        }
        let a = rt.account("g").expect("registered");
        if a.status.state == AccountState::Idle && a.status.last_sync != before {
            addr.do_send(StopAccount);
            return;
        }
    }
    panic!("the round did not end");
}

#[actix_rt::test]
async fn link_committed_by_a_push_during_a_full_listing_is_not_a_deletion() {
    let config = crate::config::parse(CONFIG).expect("test config");
    let db = Db::in_memory(Id::US);
    let rt = Runtime::new(db.clone(), config);
    let writer = Writer::start(rt.clone());
    let matcher = Matcher::start(rt.clone(), writer);

    // First round: three contacts, linked.
    let first = Arc::new(ListingWithPush {
        db: db.clone(),
        listed: (0..3).map(person).collect(),
        during: Mutex::new(None),
    });
    run_one_round(&rt, &matcher, first).await;
    assert_eq!(db.link_count("g").unwrap(), 3);

    // A CRM contact the old actor pushed: created in the provider after the listing below
    // passed it, its link committed while the listing runs.
    let now = Utc::now();
    let pushed = Contact {
        id: 9_999,
        first_name: "Pushed".into(),
        last_name: "Meanwhile".into(),
        emails: vec!["pushed@example.org".into()],
        phones: vec![],
        address: None,
        company_id: None,
        job_title: None,
        birthday: None,
        has_photo: false,
        links: vec![LinkRef {
            account: "g".into(),
            provider_id: "people/c99".into(),
        }],
        created_at: now,
        updated_at: now,
    };
    let mut push = Batch::default();
    push.push(Op::PutContact(pushed));
    push.push(Op::PutLink {
        account: "g".into(),
        provider_id: "people/c99".into(),
        link: LinkRecord {
            contact_id: 9_999,
            etag: Some("e99".into()),
            scope: String::new(),
        },
    });
    let second = Arc::new(ListingWithPush {
        db: db.clone(),
        listed: (0..3).map(person).collect(),
        during: Mutex::new(Some(push)),
    });
    run_one_round(&rt, &matcher, second).await;

    assert!(
        db.link("g", "people/c99").unwrap().is_some(),
        "the pushed contact's link was read as a deletion"
    );
    assert!(
        db.contact(9_999).unwrap().is_some(),
        "the pushed contact was deleted"
    );
    assert_eq!(db.link_count("g").unwrap(), 4);
    // A link that existed before the listing and is missing from it is still a deletion.
    let third = Arc::new(ListingWithPush {
        db: db.clone(),
        listed: (0..2).map(person).collect(),
        during: Mutex::new(None),
    });
    run_one_round(&rt, &matcher, third).await;
    assert!(db.link("g", "people/c2").unwrap().is_none());
    assert!(db.link("g", "people/c99").unwrap().is_none());
}
