//! The writer actor: the one place where CRM contacts, companies, links, base snapshots and
//! sync cursors change. Sync rounds, two-way push answers and API edits of CRM contacts are
//! all planned by the matcher and committed here as [`CommitPage`], one at a time, so they
//! never interleave. Other records are committed directly by their owner, each in one
//! durable store transaction: account status and the held-deletion, resync and approval
//! flags (the account actor), the cursor reset after a group change (the supervisor),
//! grants, approvals, disconnects and retry requests with their outbox entries (the API and
//! the CLI), and the audit log's own records.
//!
//! It owns the durability contract of SPEC §8: a page's CRM writes, links, base snapshots,
//! metrics, the new cursor and the page's audit events are committed in one store
//! transaction. The commit that ends a round (it carries the cursor) and every API edit
//! are flushed before the reply; the chunks before it in a round are not, since a crash
//! that takes them back leaves the cursor where it was and the round is done again (sled
//! recovers a prefix of its transactions). The audit drainer flushes the store before it
//! writes events to the daily file, so no line ever describes a commit a crash could undo.
//! It runs on its own thread (a `SyncArbiter`), since commits and flushes block.

use std::sync::Arc;

use actix::prelude::*;

use crate::audit::AuditEvent;
use crate::model::DayMetrics;
use crate::runtime::Runtime;
use crate::store::{Batch, Op, StoreError};

/// Commit a planned page. The sender may advance its cursor only on `Ok`.
#[derive(Message)]
#[rtype(result = "Result<PageCommitted, StoreError>")]
pub struct CommitPage {
    pub account: Option<String>,
    pub batch: Batch,
    pub metrics: DayMetrics,
    /// The account's new cursor, stored in the same transaction.
    pub cursor: Option<Vec<u8>>,
    pub audit: Vec<AuditEvent>,
    /// Flushed before the reply. A chunk of a round that does not end it is not: until the
    /// round's last commit (which carries the cursor) is durable, a crash only sends the
    /// round back to its old cursor, and the chunks are fetched and planned again.
    pub durable: bool,
}

/// The page is durable.
#[derive(Debug, Clone, Copy)]
pub struct PageCommitted {
    pub ops: usize,
}

pub struct Writer {
    rt: Arc<Runtime>,
    /// Commits made since the last flush.
    unflushed: usize,
}

/// Chunks a round commits between two flushes (800 contacts). Not one per chunk: an fsync
/// per chunk was a large part of an initial sync's commits. Not one per round either: this
/// bounds what a crash takes back (and must be fetched and planned again) to 800 contacts.
/// The audit drainer is woken after these flushes, not after every chunk: it flushes the
/// store before it writes events out, and a flush on its thread while this one commits
/// holds sled's commit lock off (sled 0.34 flushes under its read lock), so CRM API reads,
/// queued behind the waiting commit, waited for both (docs/benchmarks.md).
pub const FLUSH_EVERY_CHUNKS: usize = 800 / crate::actors::account::CHUNK;

impl Writer {
    pub fn start(rt: Arc<Runtime>) -> Addr<Writer> {
        SyncArbiter::start(1, move || Writer {
            rt: rt.clone(),
            unflushed: 0,
        })
    }
}

impl Actor for Writer {
    type Context = SyncContext<Self>;
}

impl Handler<CommitPage> for Writer {
    type Result = Result<PageCommitted, StoreError>;

    fn handle(&mut self, mut msg: CommitPage, _: &mut Self::Context) -> Self::Result {
        // The commit that stores a round's cursor.
        let ends_round = msg.account.is_some() && msg.cursor.is_some();
        if let Some(account) = &msg.account {
            if !msg.metrics.is_zero() {
                msg.batch.push(Op::AddMetrics {
                    account: account.clone(),
                    day: self.rt.today(),
                    delta: msg.metrics.clone(),
                });
            }
            if let Some(cursor) = msg.cursor.take() {
                msg.batch.push(Op::SetCursor {
                    account: account.clone(),
                    cursor: Some(cursor),
                });
            }
        }
        // The audit events are stored with the change they describe (and get their seq
        // there); the drainer writes them to the daily file after the commit.
        for e in &msg.audit {
            msg.batch.push(Op::Audit(e.clone()));
        }
        let ops = msg.batch.ops.len();
        if msg.durable && self.unflushed > 0 && ends_round {
            // The chunks before this one must be on disk before the cursor that covers them
            // is committed, even in memory: a failed flush here ends the round before the
            // cursor moves.
            self.rt.db.flush()?;
            self.unflushed = 0;
        }
        self.rt.db.commit(&msg.batch)?;
        self.unflushed += 1;
        let flushed = msg.durable || self.unflushed >= FLUSH_EVERY_CHUNKS;
        if flushed {
            self.rt.db.flush()?;
            self.unflushed = 0;
        }
        // Side effects only after the commit.
        if let Some(account) = &msg.account {
            self.rt.update(account, |a| a.totals.add(&msg.metrics));
        }
        if msg.durable {
            crate::audit::committed(&msg.audit);
        } else {
            // Remembered now; written out after the next flush (or by the drainer's own
            // round within a second). A drainer woken with nothing stored stops before it
            // flushes.
            crate::audit::committed_unflushed(&msg.audit);
            if flushed {
                crate::audit::wake_drainer();
            }
        }
        Ok(PageCommitted { ops })
    }
}
