//! The supervisor: owns the set of account actors. It starts one per enabled account,
//! applies configuration reloads (parse → validate → diff by account id → touch only what
//! changed), and is the only place that decides about restarts, with capped exponential
//! backoff and jitter. It keeps `errors`, `consecutive_errors` and `last_error` per account
//! in the runtime for `status` and the API.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rand::Rng;

use super::account::{AccountActor, AccountExit, ExitReason, StopAccount};
use super::matcher::Matcher;
use crate::config::{self, AccountConfig, Config};
use crate::model::AccountState;
use crate::providers::{Provider, ProviderError};
use crate::runtime::Runtime;
use crate::store::{Batch, Op};

/// Builds the provider client of an account (token source, endpoints).
pub type ProviderFactory = Arc<
    dyn Fn(&Arc<Runtime>, &AccountConfig) -> Result<Arc<dyn Provider>, ProviderError> + Send + Sync,
>;

/// Re-read the configuration file (from the watcher, SIGHUP or `ExecReload`).
#[derive(Message)]
#[rtype(result = "Result<ReloadOutcome, String>")]
pub struct Reload;

/// Apply an already parsed configuration (tests, and `Reload` after parsing).
#[derive(Message)]
#[rtype(result = "Result<ReloadOutcome, String>")]
pub struct ApplyConfig(pub Config);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReloadOutcome {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Whether `[daemon]` or `[providers.*]` settings changed.
    pub settings_changed: bool,
}

impl ReloadOutcome {
    /// One line on what the reload changed, for the audit log.
    pub fn summary(&self) -> String {
        let mut parts = vec![];
        for (what, ids) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
        ] {
            if !ids.is_empty() {
                parts.push(format!("accounts {what}: {}", ids.join(", ")));
            }
        }
        if self.settings_changed {
            parts.push("daemon or provider settings changed".into());
        }
        if parts.is_empty() {
            "no change".into()
        } else {
            parts.join("; ")
        }
    }
}

/// Restart an account now (after `connect` stored a new grant).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RestartAccount(pub String);

/// Run a round for every account now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SyncNow;

/// CRM changes wait for two-way providers: run those accounts soon.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PushSoon;

impl Handler<PushSoon> for Supervisor {
    type Result = ();
    fn handle(&mut self, _: PushSoon, _: &mut Self::Context) {
        let config = self.rt.config();
        for (id, c) in &self.children {
            let two_way = config
                .account(id)
                .is_some_and(|a| a.direction == crate::config::Direction::TwoWay);
            if let (true, Some(a)) = (two_way, &c.addr) {
                a.do_send(super::account::PollSoon);
            }
        }
    }
}

/// Stop every account (shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAll;

struct Child {
    addr: Option<Addr<AccountActor>>,
    restart: Option<SpawnHandle>,
}

pub struct Supervisor {
    rt: Arc<Runtime>,
    matcher: Addr<Matcher>,
    factory: ProviderFactory,
    config_path: Option<PathBuf>,
    children: HashMap<String, Child>,
    backoff_base: Duration,
    backoff_cap: Duration,
}

impl Supervisor {
    pub fn new(
        rt: Arc<Runtime>,
        matcher: Addr<Matcher>,
        factory: ProviderFactory,
        config_path: Option<PathBuf>,
    ) -> Self {
        let fast = std::env::var_os("CONTACT_SYNC_FAST_BACKOFF").is_some();
        Supervisor {
            rt,
            matcher,
            factory,
            config_path,
            children: HashMap::new(),
            backoff_base: if fast {
                Duration::from_millis(50)
            } else {
                Duration::from_secs(2)
            },
            backoff_cap: if fast {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(300)
            },
        }
    }

    fn spawn(&mut self, cfg: &AccountConfig, ctx: &mut Context<Self>) {
        self.rt.register(cfg);
        let id = cfg.id.clone();
        if let Some(old) = self.children.remove(&id) {
            if let Some(a) = old.addr {
                a.do_send(StopAccount);
            }
            if let Some(h) = old.restart {
                ctx.cancel_future(h);
            }
        }
        if !cfg.enabled {
            self.rt.set_state(&id, AccountState::Stopped, None);
            return;
        }
        match (self.factory)(&self.rt, cfg) {
            Ok(provider) => {
                let addr = AccountActor::new(
                    cfg.clone(),
                    self.rt.clone(),
                    provider,
                    self.matcher.clone(),
                    ctx.address().recipient(),
                )
                .start();
                self.children.insert(
                    id,
                    Child {
                        addr: Some(addr),
                        restart: None,
                    },
                );
            }
            Err(e @ ProviderError::NotConnected(_)) => {
                tracing::warn!(account = %id, "Account is not connected; run `contact-sync connect {id}`.");
                self.rt
                    .set_state(&id, AccountState::NotConnected, Some(e.to_string()));
            }
            Err(ProviderError::ReauthRequired(m)) => {
                self.rt
                    .set_state(&id, AccountState::ReauthRequired, Some(m));
            }
            Err(e @ ProviderError::Permanent(_)) => {
                // A setting the client cannot be built from: only a config change or an
                // operator's sync-now tries again.
                tracing::warn!(account = %id, error = %e, "Account stopped on a permanent error; change its configuration or trigger a sync to try again.");
                self.rt
                    .set_state(&id, AccountState::Error, Some(e.to_string()));
                self.rt.update(&id, |a| a.errors += 1);
            }
            Err(e) => {
                self.rt
                    .set_state(&id, AccountState::Error, Some(e.to_string()));
                self.schedule_restart(&id, ctx);
            }
        }
    }

    fn stop(&mut self, id: &str, ctx: &mut Context<Self>) {
        if let Some(c) = self.children.remove(id) {
            if let Some(a) = c.addr {
                a.do_send(StopAccount);
            }
            if let Some(h) = c.restart {
                ctx.cancel_future(h);
            }
        }
    }

    fn schedule_restart(&mut self, id: &str, ctx: &mut Context<Self>) {
        let attempt = self
            .rt
            .update(id, |a| {
                a.errors += 1;
                a.consecutive_errors += 1;
            })
            .and_then(|_| self.rt.account(id))
            .map_or(1, |a| a.consecutive_errors);
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let ceiling = exp.min(self.backoff_cap);
        // Jitter: between half and the whole of the ceiling.
        let half = ceiling.as_millis() as u64 / 2;
        let delay = Duration::from_millis(half + rand::thread_rng().gen_range(0..=half.max(1)));
        tracing::info!(account = %id, attempt, delay_ms = delay.as_millis() as u64, "Restarting account after backoff.");
        let account = id.to_string();
        let handle = ctx.run_later(delay, move |act, ctx| {
            let cfg = act.rt.config().account(&account).cloned();
            match cfg {
                Some(cfg) if cfg.enabled => act.spawn(&cfg, ctx),
                _ => {}
            }
        });
        self.children.insert(
            id.to_string(),
            Child {
                addr: None,
                restart: Some(handle),
            },
        );
    }

    fn apply(&mut self, new: Config, ctx: &mut Context<Self>) -> Result<ReloadOutcome, String> {
        let old = self.rt.config();
        let diff = config::diff(&old, &new).map_err(|e| e.to_string())?;
        let limit_raised = new.daemon.contact_limit != old.daemon.contact_limit;
        let guard_changed = new.daemon.deletion_guard_share != old.daemon.deletion_guard_share
            || new.daemon.deletion_guard_min != old.daemon.deletion_guard_min;
        self.rt.set_config(new.clone());
        let mut out = ReloadOutcome {
            settings_changed: old.daemon != new.daemon || old.providers != new.providers,
            ..ReloadOutcome::default()
        };
        for id in &diff.to_remove {
            self.stop(id, ctx);
            match new.account(id) {
                Some(a) => {
                    self.rt.register(a);
                    self.rt.set_state(id, AccountState::Stopped, None);
                }
                None => self.rt.remove(id),
            }
            out.removed.push(id.clone());
        }
        for a in &diff.to_add {
            self.spawn(a, ctx);
            out.added.push(a.id.clone());
        }
        for (before, after) in &diff.to_change {
            self.rt.register(after);
            // A CardDAV account pointed at another server or address book syncs another
            // set, like a new group; new credentials only need a new client (below).
            let other_set = before.url != after.url || before.address_book != after.address_book;
            if before.group != after.group || before.provider != after.provider || other_set {
                // A new group is a fresh full sync; contacts that leave are unlinked.
                self.stop(&after.id, ctx);
                let mut b = Batch::default();
                b.push(Op::SetCursor {
                    account: after.id.clone(),
                    cursor: None,
                });
                // A round of the old actor may still be committing its cursor; the flag
                // makes the next round list in full whatever cursor it finds.
                b.push(Op::SetMeta {
                    key: super::account::resync_key(&after.id),
                    value: Some(b"group changed".to_vec()),
                });
                if let Err(e) = self.rt.db.commit_durable(&b) {
                    tracing::error!(account = %after.id, error = %e, "Cannot reset the cursor for the new group.");
                }
                self.spawn(after, ctx);
            } else {
                // A new direction needs a new client: its OAuth scopes (and what it may
                // write) depend on it. The cursor is kept; the actor's push task, if one
                // runs, finishes under the account's push lock.
                if before.direction != after.direction {
                    tracing::info!(account = %after.id, from = before.direction.as_str(), to = after.direction.as_str(), "Direction changed; rebuilding the account's client, cursor kept.");
                }
                self.spawn(after, ctx);
            }
            out.changed.push(after.id.clone());
        }
        // Accounts no longer in the file leave the listing; disabled ones show as stopped.
        for a in self.rt.accounts() {
            match new.account(&a.config.id) {
                None => {
                    self.stop(&a.config.id, ctx);
                    self.rt.remove(&a.config.id);
                }
                Some(cfg) if !cfg.enabled => {
                    self.rt.register(cfg);
                    self.rt.set_state(&cfg.id, AccountState::Stopped, None);
                }
                Some(_) => {}
            }
        }
        // Accounts that stopped for a reason a config change may cure get another go.
        if diff.daemon_changed {
            for a in new.accounts.iter().filter(|a| a.enabled) {
                let state = self.rt.account(&a.id).map(|r| r.status.state);
                let running = self
                    .children
                    .get(&a.id)
                    .is_some_and(|c| c.addr.as_ref().is_some_and(|x| x.connected()));
                let cured = match state {
                    Some(AccountState::LimitExceeded) => limit_raised,
                    Some(AccountState::DeletionHeld) => guard_changed,
                    Some(AccountState::Error) | Some(AccountState::NotConnected) => true,
                    _ => false,
                };
                if cured && !running {
                    self.spawn(a, ctx);
                }
            }
        }
        Ok(out)
    }
}

impl Supervisor {
    /// Drops tombstones older than `tombstone_retention` (and the photos they kept).
    fn purge_tombstones(&self) {
        let retention = self.rt.config().daemon.tombstone_retention;
        let Ok(retention) = chrono::Duration::from_std(retention) else {
            return;
        };
        let cutoff = chrono::Utc::now() - retention;
        match self.rt.db.tombstones() {
            Ok(list) => {
                let mut b = Batch::default();
                for t in list.iter().filter(|t| t.deleted_at < cutoff) {
                    b.push(Op::PurgeTombstone(t.contact.id));
                }
                if !b.is_empty() {
                    let n = b.ops.len();
                    match self.rt.db.commit_durable(&b) {
                        Ok(()) => tracing::info!(purged = n, "Expired tombstones purged."),
                        Err(e) => tracing::warn!(error = %e, "Cannot purge tombstones."),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "Cannot read tombstones."),
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.purge_tombstones();
        ctx.run_interval(Duration::from_secs(3600), |act, _| act.purge_tombstones());
        let config = self.rt.config();
        for a in &config.accounts {
            self.spawn(a, ctx);
        }
        tracing::info!(
            accounts = config.accounts.len(),
            enabled = config.accounts.iter().filter(|a| a.enabled).count(),
            "Supervisor started."
        );
    }
}

impl Handler<Reload> for Supervisor {
    type Result = Result<ReloadOutcome, String>;

    fn handle(&mut self, _: Reload, ctx: &mut Self::Context) -> Self::Result {
        let Some(path) = self.config_path.clone() else {
            return Err("no configuration file to reload".into());
        };
        let res = config::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|c| self.apply(c, ctx));
        match &res {
            Ok(o) => {
                self.rt.set_reload_error(None);
                tracing::info!(added = ?o.added, removed = ?o.removed, changed = ?o.changed, "Configuration reloaded.");
                let config = self.rt.config();
                if let Some(log) = crate::audit::installed() {
                    log.reconfigure(config.tz(), config.daemon.audit_retention);
                }
                crate::audit::AuditEvent::daemon(crate::audit::Action::ConfigReloaded)
                    .reason(o.summary())
                    .emit();
            }
            Err(e) => {
                self.rt.set_reload_error(Some(e.clone()));
                tracing::error!(error = %e, "Configuration reload rejected; the running configuration stays in force.");
            }
        }
        res
    }
}

impl Handler<ApplyConfig> for Supervisor {
    type Result = Result<ReloadOutcome, String>;
    fn handle(&mut self, msg: ApplyConfig, ctx: &mut Self::Context) -> Self::Result {
        self.apply(msg.0, ctx)
    }
}

impl Handler<AccountExit> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: AccountExit, ctx: &mut Self::Context) {
        let id = msg.account;
        if let Some(c) = self.children.get_mut(&id) {
            c.addr = None;
        }
        match msg.reason {
            ExitReason::Removed => {}
            ExitReason::ReauthRequired(_) | ExitReason::NotConnected(_) => {
                // Only a new grant (`connect`) cures this; other accounts go on.
            }
            ExitReason::LimitExceeded(_) | ExitReason::DeletionHeld(_) => {
                // Raising contact_limit or the deletion guard in the config, or `approve`,
                // resumes it (see `apply` and `RestartAccount`).
            }
            ExitReason::Transient(_) => self.schedule_restart(&id, ctx),
            ExitReason::Permanent(m) => {
                // No restart: retrying will not fix it. A config change touching the
                // account (see `apply`) or `SyncNow` starts it again.
                tracing::warn!(account = %id, error = %m, "Account stopped on a permanent error; change its configuration or trigger a sync to try again.");
                self.rt.update(&id, |a| {
                    a.errors += 1;
                    a.consecutive_errors += 1;
                });
            }
        }
    }
}

impl Handler<RestartAccount> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: RestartAccount, ctx: &mut Self::Context) {
        if let Some(cfg) = self.rt.config().account(&msg.0).cloned() {
            self.spawn(&cfg, ctx);
        }
    }
}

impl Handler<SyncNow> for Supervisor {
    type Result = ();
    fn handle(&mut self, _: SyncNow, ctx: &mut Self::Context) {
        let mut stopped = Vec::new();
        for (id, c) in &self.children {
            match &c.addr {
                Some(a) => a.do_send(super::account::Poll),
                // An account stopped on a permanent error waits for this (or a config
                // change); one waiting for a backoff restart is left to it.
                None if c.restart.is_none() => stopped.push(id.clone()),
                None => {}
            }
        }
        let config = self.rt.config();
        // Accounts whose client could not be built have no child entry at all.
        for a in config.accounts.iter().filter(|a| a.enabled) {
            if !self.children.contains_key(&a.id) {
                stopped.push(a.id.clone());
            }
        }
        for id in stopped {
            let in_error = self
                .rt
                .account(&id)
                .is_some_and(|a| a.status.state == AccountState::Error);
            if let (true, Some(cfg)) = (in_error, config.account(&id)) {
                tracing::info!(account = %id, "Sync requested by an operator; starting the account stopped on an error.");
                let cfg = cfg.clone();
                self.spawn(&cfg, ctx);
            }
        }
    }
}

impl Handler<StopAll> for Supervisor {
    type Result = ();
    fn handle(&mut self, _: StopAll, ctx: &mut Self::Context) {
        let ids: Vec<String> = self.children.keys().cloned().collect();
        for id in ids {
            self.stop(&id, ctx);
        }
    }
}
