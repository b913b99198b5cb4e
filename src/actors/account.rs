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
use crate::providers::{Page, Provider, ProviderError, PushOp, PushResult, Round, MAX_PHOTO_BYTES};
use crate::runtime::Runtime;
use crate::store::{Batch, Op, StoreError};
use crate::sync::{self, eligibility, outbox, PlanContext};

/// Changes per matcher message (and per store transaction). Smaller chunks hold sled's
/// commit lock for less time: CRM API reads wait for it (p95 during a 25,000-contact
/// initial sync about 5 ms at 50, 9 ms at 100, 8–14 ms at 200, 20 ms at 500;
/// docs/benchmarks.md). The writer flushes every 800 contacts, not after each chunk
/// (`writer::FLUSH_EVERY_CHUNKS`), so this costs no fsyncs.
pub const CHUNK: usize = 50;

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
                let ctx = plan_context(&cfg, &rt.config());
                matcher
                    .send(SyncChunk {
                        ctx,
                        changes,
                        photos: HashMap::new(),
                        cursor: None,
                        durable: true,
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

/// What the planner needs to know of `cfg` and the running configuration, now.
pub fn plan_context(cfg: &AccountConfig, config: &crate::config::Config) -> PlanContext {
    PlanContext {
        account: cfg.id.clone(),
        provider: cfg.provider.clone(),
        direction: cfg.direction,
        audit_values: config.daemon.audit_values,
        now: Utc::now(),
        two_way: two_way_accounts(config),
    }
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

/// The `meta` key marking an account's initial sync as under way: set before its first
/// chunk, cleared with the round's end, so that a round cut short (a fetch error after some
/// chunks were committed) resumes as the initial sync, photos included.
pub fn initial_key(account: &str) -> String {
    format!("initial_round:{account}")
}

/// The photos of the contacts in `chunk` that the initial sync will create (SPEC §3: only
/// created contacts get the provider's photo). A dry run of the chunk's plan against the
/// store says which those are, so the photo of a contact that matches an existing CRM
/// contact is never downloaded. A photo that cannot be fetched is left out (the contact
/// syncs without it).
async fn chunk_photos(
    rt: &Arc<Runtime>,
    provider: &Arc<dyn Provider>,
    ctx: &PlanContext,
    chunk: Vec<Change>,
) -> HashMap<String, Vec<u8>> {
    let candidate = |c: &Change| match c {
        Change::Upsert(pc) => pc.photo_url.is_some() && eligibility::check(&pc.fields).is_ok(),
        _ => false,
    };
    if !chunk.iter().any(candidate) {
        return HashMap::new();
    }
    let (db, plan_ctx) = (rt.db.clone(), ctx.clone());
    let (creates, chunk) = match rt
        .db
        .blocking(move || Ok((sync::creations(&db, plan_ctx, &chunk)?, chunk)))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(account = %ctx.account, error = %e, "Cannot plan the chunk's creations; its photos are not fetched.");
            return HashMap::new();
        }
    };
    let wanted: Vec<_> = chunk
        .into_iter()
        .filter(candidate)
        .filter_map(|c| match c {
            Change::Upsert(pc) if creates.contains(&pc.provider_id) => Some(pc),
            _ => None,
        })
        .collect();
    let mut photos = HashMap::new();
    if wanted.is_empty() {
        return photos;
    }
    let fetched = provider.fetch_photos(&wanted).await;
    for (pc, res) in wanted.iter().zip(fetched) {
        match res {
            Ok(Some(jpeg)) if jpeg.len() <= MAX_PHOTO_BYTES => {
                photos.insert(pc.provider_id.clone(), jpeg);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(account = %ctx.account, provider_id = %pc.provider_id, error = %e, "Photo not fetched; contact synced without it.")
            }
        }
    }
    photos
}

/// Commits a store record of the round's bookkeeping (`meta`), durably, off the arbiter.
async fn set_meta(rt: &Runtime, key: String, value: Option<Vec<u8>>) -> Result<(), RoundError> {
    let mut b = Batch::default();
    b.push(Op::SetMeta { key, value });
    rt.db.commit_durable_blocking(b, vec![]).await?;
    Ok(())
}

/// One round: fetch, check, commit chunk by chunk; then, two-way, push the outbox. Returns
/// the round's metrics and whether another round is wanted soon.
///
/// A full listing of an account with no links is streamed ([`stream_round`]): planned and
/// committed while it is fetched. Any other round is fetched whole first, because its
/// deletions (a complete listing names only what still exists) and the deletion guard
/// need the whole round.
async fn run_round(
    rt: Arc<Runtime>,
    provider: Arc<dyn Provider>,
    matcher: Addr<Matcher>,
    cfg: AccountConfig,
) -> Result<(DayMetrics, bool), RoundError> {
    let resync = rt.db.meta(&resync_key(&cfg.id))?.is_some();
    let cursor = if resync { None } else { rt.db.cursor(&cfg.id)? };
    let resuming = cursor.is_none() && rt.db.meta(&initial_key(&cfg.id))?.is_some();
    let initial = cursor.is_none() && (resuming || rt.db.link_count(&cfg.id)? == 0);
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
    // from it. Reading and decoding every link is blocking work: it runs on the blocking
    // pool, not on the arbiter every account shares (so do the checks below).
    // A full listing waits for one of the daemon's full-listing slots (see
    // `Runtime::full_listings`); it is held until the round's last chunk is committed.
    let _slot = match cursor {
        None => {
            if rt.full_listings.available_permits() == 0 {
                tracing::info!(account = %cfg.id, "Full listing waits for another account's to finish.");
            }
            Some(
                rt.full_listings
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| RoundError::Store("the daemon is stopping".into()))?,
            )
        }
        Some(_) => None,
    };
    let (db, id) = (rt.db.clone(), cfg.id.clone());
    let links_before = rt.db.blocking(move || db.links_of(&id)).await?;
    let config = rt.config();
    let ctx = plan_context(&cfg, &config);
    let limit = config.daemon.contact_limit as usize;
    // Photos: only during the initial sync of a one-way account, only for contacts that
    // sync creates (SPEC §3); fetched chunk by chunk, a few chunks ahead of their commit
    // (`Pipeline`), so at most five chunks' photos are held.
    let want_photos = initial && cfg.direction == Direction::OneWay;
    if want_photos && !resuming {
        set_meta(&rt, initial_key(&cfg.id), Some(vec![])).await?;
    }
    let approval_key = approval_key(&cfg.id);
    let approved = rt.db.meta(&approval_key)?.is_some();
    let mut round = if cursor.is_none() && links_before.is_empty() {
        let streamed = stream_round(
            &rt,
            &provider,
            &matcher,
            &ctx,
            &progress,
            limit,
            want_photos,
        )
        .await?;
        match streamed {
            Streamed::Committed(total) => {
                return finish_round(rt, provider, matcher, cfg, total, resync, approved, 0).await;
            }
            Streamed::Whole(round) => round,
        }
    } else {
        provider
            .fetch_round(cursor.as_deref(), &progress)
            .await
            .map_err(RoundError::Provider)?
    };
    let (db, id) = (rt.db.clone(), cfg.id.clone());
    let listed = std::mem::take(&mut round.changes);
    let (complete, gone) = (round.complete_scopes.clone(), round.gone_scopes.clone());
    let (changes, doomed, projected) = rt
        .db
        .blocking(move || {
            let changes = with_listing_deletions_among(&links_before, listed, &complete, &gone);
            drop(links_before);
            let doomed: Vec<(String, u64)> = sync::collapse(&changes)
                .iter()
                .filter(|c| matches!(c, Change::Deleted { .. }))
                .filter_map(|c| match db.link(&id, c.provider_id()) {
                    Ok(Some(l)) => Some((c.provider_id().to_string(), l.contact_id)),
                    _ => None,
                })
                .collect();
            let projected = sync::projected_links(&db, &id, &changes)?;
            Ok((changes, doomed, projected))
        })
        .await?;

    // Deletion guard: a round that would delete a large share of the account's contacts at
    // once is held until an operator approves it.
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
        set_meta(
            &rt,
            held_key(&cfg.id),
            Some(serde_json::to_vec(&doomed).unwrap_or_default()),
        )
        .await?;
        AuditEvent::new(&cfg.id, cfg.provider.as_str(), audit::Action::DeletionHeld)
            .reason(format!("{deletions} deletions of {linked}"))
            .emit();
        return Err(RoundError::Held(msg));
    }
    if rt.db.meta(&held_key(&cfg.id))?.is_some() {
        // This round passed the guard: nothing is held any more.
        set_meta(&rt, held_key(&cfg.id), None).await?;
    }

    // SPEC §5: a round that would take the account over its limit writes nothing.
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

    let total = Pipeline::new(&rt, &provider, &matcher, &ctx, want_photos)
        .finish(changes, round.cursor.clone())
        .await?;
    finish_round(
        rt, provider, matcher, cfg, total, resync, approved, deletions,
    )
    .await
}

/// Plans and commits one chunk (the matcher hands the plan to the writer).
async fn send_chunk(
    matcher: &Addr<Matcher>,
    ctx: &PlanContext,
    changes: Vec<Change>,
    photos: HashMap<String, Vec<u8>>,
    cursor: Option<Vec<u8>>,
) -> Result<super::matcher::ChunkSummary, RoundError> {
    matcher
        .send(SyncChunk {
            ctx: ctx.clone(),
            changes,
            photos,
            // Only the round's last chunk, which stores its cursor, must be on disk before
            // the round goes on (see `CommitPage::durable`).
            durable: cursor.is_some(),
            cursor,
        })
        .await
        .map_err(|_| RoundError::Store("the matcher is gone".into()))?
        .map_err(|e| RoundError::Store(e.to_string()))
}

/// A chunk's photos by provider id.
type Photos = HashMap<String, Vec<u8>>;

/// Changes whose photos are fetched together: two chunks. Graph sends a fetch's photos 20
/// to a `$batch` request, and a slice has about 10; per chunk of 50 there would be twice
/// the round trips for the same photos.
const PHOTO_SLICE: usize = 2 * CHUNK;

/// Slices whose photos may be fetched ahead of their commit (400 contacts). A slice has
/// only a few contacts with a photo (about 10 of 100), so one slice at a time would leave
/// most of the provider's photo slots idle while every slice waits a round trip or two.
const PHOTO_SLICES_AHEAD: usize = 400 / PHOTO_SLICE;

/// The photos of `changes` among `photos`.
fn photos_of(changes: &[Change], photos: &Photos) -> Photos {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Upsert(pc) => photos.get_key_value(&pc.provider_id),
            _ => None,
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Slices of a round on their way to the matcher. With photos wanted, the photos of the
/// next [`PHOTO_SLICES_AHEAD`] slices are fetched (as tasks of their own) while the slice
/// in front is planned and committed, [`CHUNK`] changes at a time; without, each slice is
/// committed as it comes.
struct Pipeline<'a> {
    rt: &'a Arc<Runtime>,
    provider: &'a Arc<dyn Provider>,
    matcher: &'a Addr<Matcher>,
    ctx: &'a PlanContext,
    want_photos: bool,
    /// Slices waiting for their commit, with their photo fetch.
    ahead: std::collections::VecDeque<(Vec<Change>, Option<tokio::task::JoinHandle<Photos>>)>,
    total: DayMetrics,
}

impl<'a> Pipeline<'a> {
    fn new(
        rt: &'a Arc<Runtime>,
        provider: &'a Arc<dyn Provider>,
        matcher: &'a Addr<Matcher>,
        ctx: &'a PlanContext,
        want_photos: bool,
    ) -> Self {
        Pipeline {
            rt,
            provider,
            matcher,
            ctx,
            want_photos,
            ahead: Default::default(),
            total: DayMetrics::default(),
        }
    }

    /// Starts fetching `slice`'s photos, when photos are wanted.
    fn start_photos(&self, slice: &[Change]) -> Option<tokio::task::JoinHandle<Photos>> {
        if !self.want_photos {
            return None;
        }
        let (rt, provider, ctx) = (self.rt.clone(), self.provider.clone(), self.ctx.clone());
        let slice = slice.to_vec();
        Some(tokio::spawn(async move {
            chunk_photos(&rt, &provider, &ctx, slice).await
        }))
    }

    /// Plans and commits the slice in front, once its photos are in, [`CHUNK`] changes at a
    /// time; the last chunk carries `cursor` (and is sent, empty, even when the slice is).
    async fn commit_front(&mut self, mut cursor: Option<Vec<u8>>) -> Result<(), RoundError> {
        let Some((mut changes, fetch)) = self.ahead.pop_front() else {
            return Ok(());
        };
        let photos = match fetch {
            Some(h) => h.await.unwrap_or_else(|e| {
                tracing::warn!(account = %self.ctx.account, error = %e, "Photo fetch task failed; chunk synced without photos.");
                HashMap::new()
            }),
            None => HashMap::new(),
        };
        loop {
            let rest = if changes.len() > CHUNK {
                changes.split_off(CHUNK)
            } else {
                Vec::new()
            };
            let last = rest.is_empty();
            let part_photos = photos_of(&changes, &photos);
            let part_cursor = if last { cursor.take() } else { None };
            let s = send_chunk(self.matcher, self.ctx, changes, part_photos, part_cursor).await?;
            self.total.add(&s.metrics);
            if last {
                return Ok(());
            }
            changes = rest;
        }
    }

    /// Queues `slice` (its photos start at once) and commits what is due.
    async fn push(&mut self, slice: Vec<Change>) -> Result<(), RoundError> {
        let fetch = self.start_photos(&slice);
        self.ahead.push_back((slice, fetch));
        let depth = if self.want_photos {
            PHOTO_SLICES_AHEAD
        } else {
            0
        };
        while self.ahead.len() > depth {
            self.commit_front(None).await?;
        }
        Ok(())
    }

    /// Queues the rest of the round in slices (moved, not copied) and commits everything,
    /// the last chunk (empty when `rest` is) with the round's cursor.
    async fn finish(
        mut self,
        rest: Vec<Change>,
        cursor: Vec<u8>,
    ) -> Result<DayMetrics, RoundError> {
        let mut rest = rest.into_iter().peekable();
        let last = loop {
            let slice: Vec<Change> = rest.by_ref().take(PHOTO_SLICE).collect();
            if rest.peek().is_none() {
                break slice;
            }
            self.push(slice).await?;
        };
        let fetch = self.start_photos(&last);
        self.ahead.push_back((last, fetch));
        while self.ahead.len() > 1 {
            self.commit_front(None).await?;
        }
        self.commit_front(Some(cursor)).await?;
        Ok(std::mem::take(&mut self.total))
    }
}

impl Drop for Pipeline<'_> {
    /// A round that stops early (an error, the account stopped) abandons its photo fetches.
    fn drop(&mut self) {
        for (_, fetch) in self.ahead.drain(..) {
            if let Some(h) = fetch {
                h.abort();
            }
        }
    }
}

/// How a streamed round went.
enum Streamed {
    /// Planned and committed page by page; the last commit stored the cursor.
    Committed(DayMetrics),
    /// The provider did not announce a total that fits under the contact limit: the round
    /// was collected whole, nothing written, for the checks of a whole round.
    Whole(Round),
}

/// Pages a streamed round keeps in flight between the provider and the planner.
const PAGES_IN_FLIGHT: usize = 2;

/// A full listing of an account with no links, planned and committed while it is fetched:
/// page *n* is planned and committed while page *n + 1* is fetched, with the photos of the
/// next chunks fetched while the chunk in front is committed; the last chunk waits for the end
/// of the listing and carries the cursor. Such a round deletes nothing (there are no
/// links), so the deletion guard has nothing to hold.
///
/// The contact limit (SPEC §5): the round streams only when the first page announces a
/// total that fits under `limit`, so that a listing that crosses the limit is never half
/// written; otherwise (or when the provider announces nothing) every page is collected
/// and the round goes through the whole-round checks before anything is written. A
/// provider that lists more than it announced is caught too: the eligible contacts are
/// counted as they arrive, and from the moment the count passes the announced total the
/// rest of the listing is collected instead of committed, so the limit check of the end
/// sees all of it before any of the surplus is written.
async fn stream_round(
    rt: &Arc<Runtime>,
    provider: &Arc<dyn Provider>,
    matcher: &Addr<Matcher>,
    ctx: &PlanContext,
    progress: &crate::providers::ProgressFn,
    limit: usize,
    want_photos: bool,
) -> Result<Streamed, RoundError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Page>(PAGES_IN_FLIGHT);
    let fetch = provider.fetch_pages(None, progress, tx);
    let region = rt.db.region();
    // The receiver moves into the consumer: if planning fails, dropping it stops the fetch.
    let consume = async move {
        let mut whole: Vec<Change> = vec![];
        let mut announced: Option<Option<u64>> = None;
        let mut pending: Vec<Change> = vec![];
        let mut counted: HashSet<String> = HashSet::new();
        let mut surplus = false;
        let mut pipe = Pipeline::new(rt, provider, matcher, ctx, want_photos);
        while let Some(page) = rx.recv().await {
            let total = *announced.get_or_insert(page.total.filter(|t| *t <= limit as u64));
            let Some(total) = total else {
                whole.extend(page.changes);
                continue;
            };
            count_eligible(&mut counted, &page.changes, region);
            pending.extend(page.changes);
            if surplus || counted.len() as u64 > total {
                // More than announced: keep the rest for the check at the end.
                surplus = true;
                continue;
            }
            // The last slice is kept back: it is committed with the cursor.
            while pending.len() > PHOTO_SLICE {
                let slice: Vec<Change> = pending.drain(..PHOTO_SLICE).collect();
                pipe.push(slice).await?;
            }
        }
        let streamed = announced.flatten().is_some();
        Ok::<_, RoundError>((streamed, whole, pending, pipe, surplus.then_some(counted)))
    };
    let (fetched, consumed) = futures_util::join!(fetch, consume);
    let (streamed, whole, pending, pipe, surplus) = consumed?;
    let mut round = fetched.map_err(RoundError::Provider)?;
    if !streamed {
        round.changes = whole;
        return Ok(Streamed::Whole(round));
    }
    if let Some(counted) = surplus {
        // The account had no links when the listing started: every eligible contact
        // listed, committed, queued or held back, becomes one.
        let projected = counted.len();
        if projected > limit {
            AuditEvent::new(
                &ctx.account,
                ctx.provider.as_str(),
                audit::Action::LimitExceeded,
            )
            .reason(format!("{projected} > {limit}"))
            .emit();
            return Err(RoundError::Limit(format!(
                "Account {} would have {projected} synced contacts (the provider listed more than the {limit} or fewer it announced), over contact_limit {limit}; sync stopped. Raise contact_limit in the config to resume.",
                ctx.account
            )));
        }
    }
    let total = pipe.finish(pending, round.cursor.clone()).await?;
    tracing::info!(account = %ctx.account, pages = round.pages, "Round streamed: planned and committed while it was fetched.");
    if rt.db.meta(&held_key(&ctx.account))?.is_some() {
        // This round deletes nothing: nothing is held any more.
        set_meta(rt, held_key(&ctx.account), None).await?;
    }
    Ok(Streamed::Committed(total))
}

/// Adds the provider ids of the eligible contacts among `changes` to `counted`.
fn count_eligible(
    counted: &mut HashSet<String>,
    changes: &[Change],
    region: phonenumber::country::Id,
) {
    for c in changes {
        if let Change::Upsert(pc) = c {
            if eligibility::check(&sync::merge::clean(&pc.fields, region)).is_ok() {
                counted.insert(pc.provider_id.clone());
            }
        }
    }
}

/// The end of a round, once its last chunk is committed: clears the one-shot records, and
/// for a two-way account pushes the outbox.
#[allow(clippy::too_many_arguments)]
async fn finish_round(
    rt: Arc<Runtime>,
    provider: Arc<dyn Provider>,
    matcher: Addr<Matcher>,
    cfg: AccountConfig,
    mut total: DayMetrics,
    resync: bool,
    approved: bool,
    deletions: usize,
) -> Result<(DayMetrics, bool), RoundError> {
    if rt.db.meta(&initial_key(&cfg.id))?.is_some() {
        set_meta(&rt, initial_key(&cfg.id), None).await?;
    }
    if resync {
        set_meta(&rt, resync_key(&cfg.id), None).await?;
    }
    if approved {
        set_meta(&rt, approval_key(&cfg.id), None).await?;
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
