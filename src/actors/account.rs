//! The account actor: one per connected account. It drives rounds: read the account's
//! delta cursor from the store, fetch every change since it from the provider, check the
//! contact limit, then hand the changes to the matcher in chunks. The cursor is the
//! store's: the last chunk carries the new one and the writer commits it in that chunk's
//! transaction, so the cursor only moves once everything it covers is committed (the
//! supervisor clears it when the account's group changes). The actor keeps no copy.
//!
//! It never retries on its own: when a round fails it stops and tells the supervisor why
//! ([`AccountExit`]); the supervisor decides about restarts and backoff.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use chrono::Utc;

use super::matcher::{CommitPush, MarkSent, Matcher, SyncChunk};
use crate::audit::{self, AuditEvent};
use crate::config::{AccountConfig, Direction};
use crate::model::{AccountState, Change, DayMetrics, Progress};
use crate::providers::{Provider, ProviderError, PushOp, PushResult, MAX_PHOTO_BYTES};
use crate::runtime::Runtime;
use crate::store::{Batch, Op, StoreError};
use crate::sync::{self, eligibility, outbox, PlanContext};

/// Changes per matcher message (and per store transaction).
pub const CHUNK: usize = 500;

/// Why an account actor stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum ExitReason {
    /// Stopped by the supervisor (removed, disabled, or restarting with a new group).
    Removed,
    ReauthRequired(String),
    NotConnected(String),
    LimitExceeded(String),
    /// A round would delete too many contacts; `approve` or a higher threshold releases it.
    DeletionHeld(String),
    /// Worth another try later.
    Transient(String),
    /// Retrying will not fix it (the provider refused a request we built, a mailbox the
    /// API cannot reach, a setting the provider rejects): the account stays in `error`
    /// until its configuration changes or an operator asks for a sync.
    Permanent(String),
}

#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct AccountExit {
    pub account: String,
    pub reason: ExitReason,
}

/// Run a round now (sent by the actor to itself on its poll timer).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Poll;

/// Run a round soon (CRM changes are waiting for a two-way provider): debounced, so a
/// burst of edits is pushed in few batches.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PollSoon;

/// How long a burst of CRM edits may grow before it is pushed.
pub const PUSH_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Stop now; the supervisor is not told (it asked).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAccount;

pub struct AccountActor {
    cfg: AccountConfig,
    rt: Arc<Runtime>,
    provider: Arc<dyn Provider>,
    matcher: Addr<Matcher>,
    supervisor: Recipient<AccountExit>,
    busy: bool,
    /// Another round is wanted as soon as this one ends.
    again: bool,
    soon: Option<SpawnHandle>,
    next_poll: Option<SpawnHandle>,
}

impl AccountActor {
    pub fn new(
        cfg: AccountConfig,
        rt: Arc<Runtime>,
        provider: Arc<dyn Provider>,
        matcher: Addr<Matcher>,
        supervisor: Recipient<AccountExit>,
    ) -> Self {
        AccountActor {
            cfg,
            rt,
            provider,
            matcher,
            supervisor,
            busy: false,
            again: false,
            soon: None,
            next_poll: None,
        }
    }

    fn persist_status(&self) {
        if let Some(a) = self.rt.account(&self.cfg.id) {
            let mut batch = Batch::default();
            batch.push(Op::PutStatus {
                account: self.cfg.id.clone(),
                status: a.status,
            });
            if let Err(e) = self.rt.db.commit(&batch) {
                tracing::warn!(account = %self.cfg.id, error = %e, "Cannot persist account status.");
            }
        }
    }

    fn exit(&mut self, ctx: &mut Context<Self>, reason: ExitReason) {
        self.supervisor.do_send(AccountExit {
            account: self.cfg.id.clone(),
            reason,
        });
        ctx.stop();
    }
}

impl Actor for AccountActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(account = %self.cfg.id, provider = %self.cfg.provider, group = self.cfg.group.as_str(), direction = self.cfg.direction.as_str(), "Account started.");
        ctx.notify(Poll);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        tracing::info!(account = %self.cfg.id, "Account stopped.");
    }
}

impl Handler<PollSoon> for AccountActor {
    type Result = ();
    fn handle(&mut self, _: PollSoon, ctx: &mut Self::Context) {
        if self.busy {
            self.again = true;
        } else if self.soon.is_none() {
            self.soon = Some(ctx.run_later(PUSH_DEBOUNCE, |act, ctx| {
                act.soon = None;
                ctx.notify(Poll);
            }));
        }
    }
}

impl Handler<StopAccount> for AccountActor {
    type Result = ();
    fn handle(&mut self, _: StopAccount, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// How a round ended.
#[derive(Debug)]
enum RoundError {
    Provider(ProviderError),
    Store(String),
    Limit(String),
    Held(String),
}

impl From<StoreError> for RoundError {
    fn from(e: StoreError) -> Self {
        RoundError::Store(e.to_string())
    }
}

impl Handler<Poll> for AccountActor {
    type Result = ();

    fn handle(&mut self, _: Poll, ctx: &mut Self::Context) {
        if self.busy {
            return;
        }
        self.busy = true;
        let id = self.cfg.id.clone();
        self.rt.set_state(&id, AccountState::Syncing, None);
        let fut = run_round(
            self.rt.clone(),
            self.provider.clone(),
            self.matcher.clone(),
            self.cfg.clone(),
        );
        let started = Instant::now();
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.busy = false;
            let secs = started.elapsed().as_secs_f64();
            match res {
                Ok((summary, again)) => {
                    // Changes the provider refused for good stay visible in status.
                    let rejected = outbox::failed_summary(&act.rt.db, &act.cfg.id)
                        .unwrap_or_else(|e| Some(format!("Store error: {e}")));
                    act.rt.update(&act.cfg.id, |a| {
                        a.status.state = AccountState::Idle;
                        a.status.last_sync = Some(Utc::now());
                        a.status.last_error = rejected;
                        a.status.progress = None;
                        a.consecutive_errors = 0;
                        a.last_success = Some(Utc::now());
                        a.last_sync_seconds = secs;
                    });
                    act.persist_status();
                    tracing::info!(account = %act.cfg.id, added = summary.added_to_crm, updated = summary.updated_in_crm, deleted = summary.deleted_from_provider, skipped = summary.skipped.values().sum::<u64>(), seconds = secs, "Sync round committed.");
                    let interval = act.rt.config().daemon.poll_interval;
                    if let Some(h) = act.next_poll.take() {
                        ctx.cancel_future(h);
                    }
                    act.next_poll = Some(ctx.run_later(interval, |_, ctx| ctx.notify(Poll)));
                    if again || std::mem::take(&mut act.again) {
                        ctx.notify(PollSoon);
                    }
                }
                Err(e) => {
                    let (state, reason) = match e {
                        RoundError::Provider(e @ ProviderError::ReauthRequired(_)) => (
                            AccountState::ReauthRequired,
                            ExitReason::ReauthRequired(e.to_string()),
                        ),
                        RoundError::Provider(e @ ProviderError::NotConnected(_)) => (
                            AccountState::NotConnected,
                            ExitReason::NotConnected(e.to_string()),
                        ),
                        RoundError::Limit(m) => {
                            (AccountState::LimitExceeded, ExitReason::LimitExceeded(m))
                        }
                        RoundError::Held(m) => {
                            (AccountState::DeletionHeld, ExitReason::DeletionHeld(m))
                        }
                        RoundError::Provider(e @ ProviderError::Permanent(_)) => {
                            (AccountState::Error, ExitReason::Permanent(e.to_string()))
                        }
                        RoundError::Provider(e) => {
                            if matches!(e, ProviderError::Throttled { .. }) {
                                act.rt.update(&act.cfg.id, |a| a.throttled += 1);
                            }
                            (AccountState::Error, ExitReason::Transient(e.to_string()))
                        }
                        RoundError::Store(m) => (
                            AccountState::Error,
                            ExitReason::Transient(format!("Store error: {m}")),
                        ),
                    };
                    let message = match &reason {
                        ExitReason::ReauthRequired(m)
                        | ExitReason::NotConnected(m)
                        | ExitReason::LimitExceeded(m)
                        | ExitReason::DeletionHeld(m)
                        | ExitReason::Transient(m)
                        | ExitReason::Permanent(m) => m.clone(),
                        ExitReason::Removed => String::new(),
                    };
                    act.rt.set_state(&act.cfg.id, state, Some(message.clone()));
                    act.persist_status();
                    tracing::warn!(account = %act.cfg.id, state = state.as_str(), error = %message, "Sync round failed.");
                    act.exit(ctx, reason);
                }
            }
        }));
    }
}

/// Adds the deletions a round reveals without naming them: links of the account in a
/// completely listed scope that the listing did not mention, and every link in a scope the
/// provider says is gone.
pub fn with_listing_deletions(
    db: &crate::store::Db,
    account: &str,
    changes: Vec<Change>,
    complete_scopes: &[String],
    gone_scopes: &[String],
) -> Result<Vec<Change>, StoreError> {
    if complete_scopes.is_empty() && gone_scopes.is_empty() {
        return Ok(changes);
    }
    Ok(with_listing_deletions_among(
        &db.links_of(account)?,
        changes,
        complete_scopes,
        gone_scopes,
    ))
}

/// [`with_listing_deletions`] among `links`: the account's links as they were when the
/// listing started. A link made while the listing ran (a push of this account committed
/// meanwhile) is not in the listing's view, so it can never be read as a deletion.
pub fn with_listing_deletions_among(
    links: &[(String, crate::model::LinkRecord)],
    mut changes: Vec<Change>,
    complete_scopes: &[String],
    gone_scopes: &[String],
) -> Vec<Change> {
    if complete_scopes.is_empty() && gone_scopes.is_empty() {
        return changes;
    }
    let seen: HashSet<String> = changes
        .iter()
        .map(|c| c.provider_id().to_string())
        .collect();
    for (pid, link) in links {
        let missing = complete_scopes.contains(&link.scope) && !seen.contains(pid);
        if missing || gone_scopes.contains(&link.scope) {
            changes.push(Change::Deleted {
                provider_id: pid.clone(),
            });
        }
    }
    changes
}

/// Pushes an account's due outbox entries and commits the answers. Returns the metrics and
/// whether another round is wanted soon (more entries, or conflicts to merge first).
async fn push_outbox(
    rt: Arc<Runtime>,
    provider: Arc<dyn Provider>,
    matcher: Addr<Matcher>,
    cfg: AccountConfig,
) -> Result<(DayMetrics, bool), RoundError> {
    let lock = rt.push_lock(&cfg.id);
    let _held = lock.lock().await;
    let (items, dropped) = outbox::prepare(&rt.db, &cfg, Utc::now())?;
    if items.is_empty() && dropped.is_empty() {
        return Ok((DayMetrics::default(), false));
    }
    let gone = |_| RoundError::Store("the matcher is gone".into());
    // Creations are marked as sent before they leave, so that a creation whose answer is
    // lost is adopted from the provider's listing rather than sent again.
    let creates: Vec<_> = items
        .iter()
        .filter(|i| matches!(i.op, PushOp::Create { .. }))
        .map(|i| i.entry.contact_id)
        .collect();
    if !creates.is_empty() {
        matcher
            .send(MarkSent {
                account: cfg.id.clone(),
                contacts: creates,
            })
            .await
            .map_err(gone)?
            .map_err(|e| RoundError::Store(e.to_string()))?;
    }
    let ops: Vec<PushOp> = items.iter().map(|i| i.op.clone()).collect();
    let results = if ops.is_empty() {
        vec![]
    } else {
        provider.push(&ops).await
    };
    // Refused as stale: fetch the latest version and merge it now, so that the retry (in a
    // later round, never sooner than the poll interval) carries the new etag.
    let stale: Vec<String> = items
        .iter()
        .zip(&results)
        .filter_map(|(i, r)| match (&i.op, r) {
            (PushOp::Update { provider_id, .. }, PushResult::Conflict) => Some(provider_id.clone()),
            _ => None,
        })
        .collect();
    if !stale.is_empty() {
        match provider.refetch(&stale).await {
            Ok(changes) if !changes.is_empty() => {
                let config = rt.config();
                let ctx = PlanContext {
                    account: cfg.id.clone(),
                    provider: cfg.provider.clone(),
                    direction: cfg.direction,
                    audit_values: config.daemon.audit_values,
                    now: Utc::now(),
                    two_way: two_way_accounts(&config),
                };
                matcher
                    .send(SyncChunk {
                        ctx,
                        changes,
                        photos: HashMap::new(),
                        cursor: None,
                    })
                    .await
                    .map_err(gone)?
                    .map_err(|e| RoundError::Store(e.to_string()))?;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(account = %cfg.id, error = %e, "Could not fetch contacts refused as stale; the next round's fetch brings them.")
            }
        }
    }
    let again = items.len() >= outbox::MAX_PUSH;
    // A write refused for want of a permission stops the account until a new grant; the
    // entries stay queued (see `outbox::apply_results`).
    let reauth = results.iter().find_map(|r| match r {
        PushResult::Failed(e @ ProviderError::ReauthRequired(_)) => Some(e.clone()),
        _ => None,
    });
    let pushed = results.len();
    let stale_count = stale.len();
    let failed = results
        .iter()
        .filter(|r| matches!(r, PushResult::Failed(_)))
        .count();
    let m = matcher
        .send(CommitPush {
            account: cfg.clone(),
            items,
            results,
            dropped,
        })
        .await
        .map_err(gone)?
        .map_err(|e| RoundError::Store(e.to_string()))?;
    if pushed > 0 {
        tracing::info!(account = %cfg.id, pushed, added = m.added_to_provider, updated = m.updated_in_provider, stale = stale_count, failed, "CRM changes pushed to the provider.");
    }
    if let Some(e) = reauth {
        return Err(RoundError::Provider(e));
    }
    Ok((m, again))
}

/// The `meta` key that asks an account's next round for a full listing (group change).
pub fn resync_key(account: &str) -> String {
    format!("resync:{account}")
}

/// The `meta` key recording an operator's approval of an account's held deletions.
/// The `meta` key of the deletions the guard holds for an account: JSON
/// `[[provider_id, crm_id], …]`.
pub fn held_key(account: &str) -> String {
    format!("held_deletions/{account}")
}

/// The deletions the guard holds for an account: `(provider id, CRM id)`.
pub fn held_deletions(db: &crate::store::Db, account: &str) -> Vec<(String, u64)> {
    db.meta(&held_key(account))
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_slice(&v).ok())
        .unwrap_or_default()
}

pub fn approval_key(account: &str) -> String {
    format!("approve:{account}")
}

/// Ids of the enabled two-way accounts.
pub fn two_way_accounts(config: &crate::config::Config) -> Vec<String> {
    config
        .accounts
        .iter()
        .filter(|a| a.enabled && a.direction == Direction::TwoWay)
        .map(|a| a.id.clone())
        .collect()
}

/// One round: fetch, check, commit chunk by chunk; then, two-way, push the outbox. Returns
/// the round's metrics and whether another round is wanted soon.
async fn run_round(
    rt: Arc<Runtime>,
    provider: Arc<dyn Provider>,
    matcher: Addr<Matcher>,
    cfg: AccountConfig,
) -> Result<(DayMetrics, bool), RoundError> {
    let resync = rt.db.meta(&resync_key(&cfg.id))?.is_some();
    let cursor = if resync { None } else { rt.db.cursor(&cfg.id)? };
    let initial = cursor.is_none() && rt.db.link_count(&cfg.id)? == 0;
    let progress_rt = rt.clone();
    let progress_id = cfg.id.clone();
    let progress: crate::providers::ProgressFn = Box::new(move |p: Progress| {
        if p.pages % 5 == 1 {
            tracing::info!(account = %progress_id, pages = p.pages, contacts = p.contacts, total = ?p.total, "Fetching.");
        }
        progress_rt.set_progress(&progress_id, p);
    });
    // The links as they are before the listing starts: a push of this account (the old
    // actor's, after a restart) may commit links while the listing runs, and the listing
    // cannot have seen those contacts. Only links older than the listing can be missing
    // from it.
    let links_before = rt.db.links_of(&cfg.id)?;
    let round = provider
        .fetch_round(cursor.as_deref(), &progress)
        .await
        .map_err(RoundError::Provider)?;
    let changes = with_listing_deletions_among(
        &links_before,
        round.changes,
        &round.complete_scopes,
        &round.gone_scopes,
    );
    drop(links_before);

    // Deletion guard: a round that would delete a large share of the account's contacts at
    // once is held until an operator approves it.
    let config = rt.config();
    let approval_key = approval_key(&cfg.id);
    let approved = rt.db.meta(&approval_key)?.is_some();
    let doomed: Vec<(String, u64)> = sync::collapse(&changes)
        .iter()
        .filter(|c| matches!(c, Change::Deleted { .. }))
        .filter_map(|c| match rt.db.link(&cfg.id, c.provider_id()) {
            Ok(Some(l)) => Some((c.provider_id().to_string(), l.contact_id)),
            _ => None,
        })
        .collect();
    let deletions = doomed.len();
    let linked = rt.db.link_count(&cfg.id)?;
    let share = config.daemon.deletion_guard_share;
    if !approved
        && deletions as u64 >= config.daemon.deletion_guard_min
        && deletions as f64 > share * linked as f64
    {
        let msg = format!(
            "This round would delete {deletions} of {linked} contacts (more than {:.0} %); held. Run `contact-sync approve {}` to apply it, or raise deletion_guard_share / deletion_guard_min.",
            share * 100.0,
            cfg.id
        );
        // What is held, for the sync-health view (replaced by every held round).
        let mut b = Batch::default();
        b.push(Op::SetMeta {
            key: held_key(&cfg.id),
            value: Some(serde_json::to_vec(&doomed).unwrap_or_default()),
        });
        rt.db.commit_durable(&b)?;
        AuditEvent::new(&cfg.id, cfg.provider.as_str(), audit::Action::DeletionHeld)
            .reason(format!("{deletions} deletions of {linked}"))
            .emit();
        return Err(RoundError::Held(msg));
    }

    if rt.db.meta(&held_key(&cfg.id))?.is_some() {
        // This round passed the guard: nothing is held any more.
        let mut b = Batch::default();
        b.push(Op::SetMeta {
            key: held_key(&cfg.id),
            value: None,
        });
        rt.db.commit_durable(&b)?;
    }

    // SPEC §5: a round that would take the account over its limit writes nothing.
    let limit = config.daemon.contact_limit as usize;
    let projected = sync::projected_links(&rt.db, &cfg.id, &changes)?;
    if projected > limit {
        let msg = format!(
            "Account {} would have {projected} synced contacts, over contact_limit {limit}; sync stopped. Raise contact_limit in the config to resume.",
            cfg.id
        );
        AuditEvent::new(&cfg.id, cfg.provider.as_str(), audit::Action::LimitExceeded)
            .reason(format!("{projected} > {limit}"))
            .emit();
        return Err(RoundError::Limit(msg));
    }

    let ctx = PlanContext {
        account: cfg.id.clone(),
        provider: cfg.provider.clone(),
        direction: cfg.direction,
        audit_values: config.daemon.audit_values,
        now: Utc::now(),
        two_way: two_way_accounts(&config),
    };
    // Photos: only during the initial sync of a one-way account, only for contacts that
    // sync creates (SPEC §3). A dry run of the plan says which those are, so the photo of
    // a contact that matches an existing CRM contact is never downloaded.
    let mut photos = HashMap::new();
    if initial && cfg.direction == Direction::OneWay {
        let creates = sync::creations(&rt.db, ctx.clone(), &changes)?;
        let wanted: Vec<_> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Upsert(pc)
                    if pc.photo_url.is_some()
                        && eligibility::check(&pc.fields).is_ok()
                        && creates.contains(&pc.provider_id) =>
                {
                    Some(pc.clone())
                }
                _ => None,
            })
            .collect();
        let fetched = provider.fetch_photos(&wanted).await;
        for (pid, res) in wanted.iter().map(|pc| pc.provider_id.clone()).zip(fetched) {
            match res {
                Ok(Some(jpeg)) if jpeg.len() <= MAX_PHOTO_BYTES => {
                    photos.insert(pid, jpeg);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(account = %cfg.id, provider_id = %pid, error = %e, "Photo not fetched; contact synced without it.")
                }
            }
        }
    }

    let mut total = DayMetrics::default();
    let chunks: Vec<&[Change]> = if changes.is_empty() {
        vec![&[]]
    } else {
        changes.chunks(CHUNK).collect()
    };
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let chunk_photos = chunk
            .iter()
            .filter_map(|c| {
                photos
                    .remove(c.provider_id())
                    .map(|p| (c.provider_id().to_string(), p))
            })
            .collect();
        let summary = matcher
            .send(SyncChunk {
                ctx: ctx.clone(),
                changes: chunk.to_vec(),
                photos: chunk_photos,
                cursor: (i + 1 == n).then(|| round.cursor.clone()),
            })
            .await
            .map_err(|_| RoundError::Store("the matcher is gone".into()))?
            .map_err(|e| RoundError::Store(e.to_string()))?;
        total.add(&summary.metrics);
    }
    if resync {
        let mut b = Batch::default();
        b.push(Op::SetMeta {
            key: resync_key(&cfg.id),
            value: None,
        });
        rt.db.commit_durable(&b)?;
    }
    if approved {
        let mut b = Batch::default();
        b.push(Op::SetMeta {
            key: approval_key,
            value: None,
        });
        rt.db.commit_durable(&b)?;
        tracing::info!(account = %cfg.id, deletions, "Held deletions applied after approval.");
    }
    let mut again = false;
    if cfg.direction == Direction::TwoWay {
        // The push runs as a task of its own: stopping the account (group change, connect,
        // approve) must not cut it between the provider's answer and its commit. The
        // account's lock keeps a restarted actor from pushing the same entries meanwhile.
        let task = push_outbox(rt.clone(), provider.clone(), matcher.clone(), cfg.clone());
        let (m, more) = actix::spawn(task)
            .await
            .map_err(|e| RoundError::Store(format!("push task failed: {e}")))??;
        again = more;
        total.add(&m);
    }
    Ok((total, again))
}
