//! The matcher actor: plans every CRM change — provider pages from account actors and
//! edits from the HTTP API — and hands the plan to the writer. It handles one message at a
//! time *including* the commit (an `AtomicResponse`), so no two plans are ever made against
//! the same CRM state: two accounts that find the same new person create it once.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use super::writer::{CommitPage, Writer};
use crate::audit::{self, AuditEvent};
use crate::config::AccountConfig;
use crate::crm::{self, CrmEdit, EditError};
use crate::model::{Change, Contact, DayMetrics};
use crate::providers::PushResult;
use crate::runtime::Runtime;
use crate::store::{Op, StoreError};
use crate::sync::outbox::{self, PushItem};
use crate::sync::{self, Action, PlanContext};

/// Plan and commit one chunk of an account's round. `cursor` is set on the last chunk.
#[derive(Message)]
#[rtype(result = "Result<ChunkSummary, SyncFailure>")]
pub struct SyncChunk {
    pub ctx: PlanContext,
    pub changes: Vec<Change>,
    pub photos: HashMap<String, Vec<u8>>,
    pub cursor: Option<Vec<u8>>,
    /// Flush the commit before replying: the last chunk of a round (see [`CommitPage`]).
    pub durable: bool,
}

/// What a committed chunk did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkSummary {
    pub metrics: DayMetrics,
    pub writes: usize,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SyncFailure {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("The writer is gone (daemon shutting down).")]
    Mailbox,
}

/// Plan without writing (`preview`).
#[derive(Message)]
#[rtype(result = "Result<Vec<Action>, SyncFailure>")]
pub struct PreviewChunk {
    pub ctx: PlanContext,
    pub changes: Vec<Change>,
}

/// An edit made through the API. Replies with the contact after the edit (none after a
/// delete).
#[derive(Message)]
#[rtype(result = "Result<Option<Contact>, EditError>")]
pub struct EditCrm(pub CrmEdit);

pub struct Matcher {
    rt: Arc<Runtime>,
    writer: Addr<Writer>,
}

impl Matcher {
    /// Starts the matcher on an arbiter of its own, so planning never stalls the others.
    pub fn start(rt: Arc<Runtime>, writer: Addr<Writer>) -> Addr<Matcher> {
        let arbiter = Arbiter::new();
        Matcher::start_in_arbiter(&arbiter.handle(), move |_| Matcher { rt, writer })
    }
}

impl Actor for Matcher {
    type Context = Context<Self>;
}

impl Handler<SyncChunk> for Matcher {
    type Result = AtomicResponse<Self, Result<ChunkSummary, SyncFailure>>;

    fn handle(&mut self, msg: SyncChunk, _: &mut Self::Context) -> Self::Result {
        let account = msg.ctx.account.clone();
        let planned = sync::plan(&self.rt.db, msg.ctx, &msg.changes, &msg.photos);
        let writer = self.writer.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let plan = planned?;
                let writes = plan.batch.ops.len();
                let metrics = plan.metrics.clone();
                writer
                    .send(CommitPage {
                        account: Some(account),
                        batch: plan.batch,
                        metrics: plan.metrics,
                        cursor: msg.cursor,
                        audit: plan.audit,
                        durable: msg.durable,
                    })
                    .await
                    .map_err(|_| SyncFailure::Mailbox)??;
                Ok(ChunkSummary { metrics, writes })
            }
            .into_actor(self),
        ))
    }
}

/// Record what a provider did with an account's outbox entries (two-way).
#[derive(Message)]
#[rtype(result = "Result<DayMetrics, SyncFailure>")]
pub struct CommitPush {
    pub account: AccountConfig,
    pub items: Vec<PushItem>,
    pub results: Vec<PushResult>,
    /// Entries found pointless while preparing the push.
    pub dropped: Vec<Op>,
}

impl Handler<CommitPush> for Matcher {
    type Result = AtomicResponse<Self, Result<DayMetrics, SyncFailure>>;

    fn handle(&mut self, msg: CommitPush, _: &mut Self::Context) -> Self::Result {
        let outcome = outbox::apply_results(
            &self.rt.db,
            &msg.account,
            &msg.items,
            &msg.results,
            chrono::Utc::now(),
            chrono::Duration::from_std(self.rt.config().daemon.poll_interval)
                .unwrap_or_else(|_| chrono::Duration::seconds(60)),
            self.rt.config().daemon.audit_values,
        );
        let writer = self.writer.clone();
        let account = msg.account.id.clone();
        let dropped = msg.dropped;
        AtomicResponse::new(Box::pin(
            async move {
                let mut out = outcome?;
                out.batch.ops.extend(dropped);
                let metrics = out.metrics.clone();
                writer
                    .send(CommitPage {
                        account: Some(account),
                        batch: out.batch,
                        metrics: out.metrics,
                        cursor: None,
                        audit: out.audit,
                        durable: true,
                    })
                    .await
                    .map_err(|_| SyncFailure::Mailbox)??;
                Ok(metrics)
            }
            .into_actor(self),
        ))
    }
}

/// Two-way: these accounts' pending creations are about to be sent (`attempts` + 1).
#[derive(Message)]
#[rtype(result = "Result<(), SyncFailure>")]
pub struct MarkSent {
    pub account: String,
    pub contacts: Vec<crate::model::ContactId>,
}

impl Handler<MarkSent> for Matcher {
    type Result = AtomicResponse<Self, Result<(), SyncFailure>>;

    fn handle(&mut self, msg: MarkSent, _: &mut Self::Context) -> Self::Result {
        let mut batch = crate::store::Batch::default();
        let mut failed = None;
        for c in &msg.contacts {
            match self.rt.db.outbox_entry(&msg.account, *c) {
                Ok(Some(mut e)) if e.op == crate::store::OutboxOp::Create => {
                    e.attempts += 1;
                    batch.push(Op::PutOutbox(e));
                }
                Ok(_) => {}
                Err(err) => failed = Some(err),
            }
        }
        let writer = self.writer.clone();
        AtomicResponse::new(Box::pin(
            async move {
                if let Some(e) = failed {
                    return Err(SyncFailure::Store(e));
                }
                writer
                    .send(CommitPage {
                        account: None,
                        batch,
                        metrics: DayMetrics::default(),
                        cursor: None,
                        audit: vec![],
                        durable: true,
                    })
                    .await
                    .map_err(|_| SyncFailure::Mailbox)??;
                Ok(())
            }
            .into_actor(self),
        ))
    }
}

impl Handler<PreviewChunk> for Matcher {
    type Result = Result<Vec<Action>, SyncFailure>;

    fn handle(&mut self, msg: PreviewChunk, _: &mut Self::Context) -> Self::Result {
        Ok(sync::plan(&self.rt.db, msg.ctx, &msg.changes, &HashMap::new())?.actions)
    }
}

impl Handler<EditCrm> for Matcher {
    type Result = AtomicResponse<Self, Result<Option<Contact>, EditError>>;

    fn handle(&mut self, msg: EditCrm, _: &mut Self::Context) -> Self::Result {
        let two_way = super::account::two_way_accounts(&self.rt.config());
        let restore = matches!(msg.0, CrmEdit::Restore(_));
        let planned = crm::plan_edit(&self.rt.db, msg.0, &two_way);
        let writer = self.writer.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let edit = planned?;
                let mut events = vec![];
                if let (true, Some(c)) = (restore && !edit.batch.is_empty(), &edit.contact) {
                    events.push(
                        AuditEvent::new("crm", "crm", audit::Action::Restored)
                            .crm_id(c.id)
                            .reason("restored through the API"),
                    );
                }
                if edit.contact.is_none() {
                    if let Some(before) = &edit.before {
                        // CRM deletions are audited too (they are not provider deletions).
                        events.push(
                            AuditEvent::new("crm", "crm", audit::Action::Deleted)
                                .crm_id(before.id)
                                .reason("deleted through the API"),
                        );
                    }
                }
                writer
                    .send(CommitPage {
                        account: None,
                        batch: edit.batch,
                        metrics: DayMetrics::default(),
                        cursor: None,
                        audit: events,
                        durable: true,
                    })
                    .await
                    .map_err(|_| EditError::Unavailable)??;
                Ok(edit.contact)
            }
            .into_actor(self),
        ))
    }
}
