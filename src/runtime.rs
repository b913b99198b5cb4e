//! State shared between the actors and the HTTP API: the running configuration, each
//! account's live status and counters, and the last reload error. Durable state is in the
//! store; this is what the daemon knows about itself right now.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};

use crate::config::{AccountConfig, Config};
use crate::model::{AccountState, AccountStatus, DayMetrics, Progress};
use crate::store::Db;

/// Live facts about one account.
#[derive(Debug, Clone)]
pub struct AccountRuntime {
    pub config: AccountConfig,
    pub status: AccountStatus,
    pub errors: u64,
    pub consecutive_errors: u32,
    pub last_success: Option<DateTime<Utc>>,
    pub throttled: u64,
    pub last_sync_seconds: f64,
    /// Counters since the daemon started, for `/metrics`.
    pub totals: DayMetrics,
}

/// Shared daemon state.
pub struct Runtime {
    pub db: Db,
    config: RwLock<Arc<Config>>,
    accounts: RwLock<BTreeMap<String, AccountRuntime>>,
    reload_error: RwLock<Option<String>>,
    pub reload_failures: std::sync::atomic::AtomicU64,
    /// One lock per account around pushing its outbox (see `actors::account`).
    push_locks: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub started_at: DateTime<Utc>,
    /// Full listings (initial syncs, resyncs) that may run at once across accounts. Their
    /// pages go through the one matcher and the one writer anyway, so more at once only
    /// holds more pages in memory and makes every account finish last.
    pub full_listings: Arc<tokio::sync::Semaphore>,
}

/// How many full listings run at once ([`Runtime::full_listings`]).
pub const FULL_LISTINGS_AT_ONCE: usize = 2;

fn r<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
fn w<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Runtime {
    pub fn new(db: Db, config: Config) -> Arc<Runtime> {
        Arc::new(Runtime {
            db,
            config: RwLock::new(Arc::new(config)),
            accounts: RwLock::new(BTreeMap::new()),
            reload_error: RwLock::new(None),
            reload_failures: Default::default(),
            push_locks: Default::default(),
            started_at: Utc::now(),
            full_listings: Arc::new(tokio::sync::Semaphore::new(FULL_LISTINGS_AT_ONCE)),
        })
    }

    /// The lock held while an account's outbox is pushed and its answers committed.
    pub fn push_lock(&self, account: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.push_locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(account.to_string()).or_default().clone()
    }

    pub fn config(&self) -> Arc<Config> {
        r(&self.config).clone()
    }

    pub fn set_config(&self, c: Config) {
        *w(&self.config) = Arc::new(c);
    }

    pub fn reload_error(&self) -> Option<String> {
        r(&self.reload_error).clone()
    }

    pub fn set_reload_error(&self, e: Option<String>) {
        if e.is_some() {
            self.reload_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        *w(&self.reload_error) = e;
    }

    /// Today's date in the configured time zone (the metrics day, SPEC §6).
    pub fn today(&self) -> String {
        today_in(self.config().tz())
    }

    /// Registers an account (or refreshes its config), loading its persisted status.
    pub fn register(&self, cfg: &AccountConfig) {
        let stored = self.db.status(&cfg.id).ok().flatten();
        let mut map = w(&self.accounts);
        let entry = map.entry(cfg.id.clone()).or_insert_with(|| AccountRuntime {
            config: cfg.clone(),
            status: stored.unwrap_or_default(),
            errors: 0,
            consecutive_errors: 0,
            last_success: None,
            throttled: 0,
            last_sync_seconds: 0.0,
            totals: DayMetrics::default(),
        });
        entry.config = cfg.clone();
    }

    /// Forgets an account removed from the configuration (its store data stays).
    pub fn remove(&self, id: &str) {
        w(&self.accounts).remove(id);
    }

    pub fn account(&self, id: &str) -> Option<AccountRuntime> {
        r(&self.accounts).get(id).cloned()
    }

    pub fn accounts(&self) -> Vec<AccountRuntime> {
        r(&self.accounts).values().cloned().collect()
    }

    /// Changes an account's live status with `f`; returns the new status.
    pub fn update<F: FnOnce(&mut AccountRuntime)>(&self, id: &str, f: F) -> Option<AccountStatus> {
        let mut map = w(&self.accounts);
        let a = map.get_mut(id)?;
        f(a);
        Some(a.status.clone())
    }

    pub fn set_state(&self, id: &str, state: AccountState, error: Option<String>) {
        self.update(id, |a| {
            a.status.state = state;
            if error.is_some() {
                a.status.last_error = error;
            }
            if state != AccountState::Syncing {
                a.status.progress = None;
            }
        });
    }

    pub fn set_progress(&self, id: &str, p: Progress) {
        self.update(id, |a| a.status.progress = Some(p));
    }
}

/// The date, in `tz`, as `YYYY-MM-DD`.
pub fn today_in(tz: chrono_tz::Tz) -> String {
    day_of(Utc::now(), tz)
}

/// The metrics day an instant belongs to: the calendar date in `tz` (SPEC §6).
pub fn day_of(t: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DayMetrics;
    use crate::store::{Batch, Op};
    use chrono::TimeZone;

    #[test]
    fn metrics_day_boundary_is_midnight_in_the_configured_timezone() {
        let late = Utc.with_ymd_and_hms(2026, 3, 1, 23, 30, 0).unwrap();
        assert_eq!(day_of(late, chrono_tz::UTC), "2026-03-01");
        assert_eq!(day_of(late, chrono_tz::Europe::Berlin), "2026-03-02");
        assert_eq!(day_of(late, chrono_tz::America::New_York), "2026-03-01");
        let early = Utc.with_ymd_and_hms(2026, 3, 2, 3, 0, 0).unwrap();
        assert_eq!(day_of(early, chrono_tz::America::Los_Angeles), "2026-03-01");
        // Daylight saving: 22:30 UTC on the last Sunday of March is already the next day
        // in Berlin (UTC+2 from 01:00 UTC that day).
        let dst = Utc.with_ymd_and_hms(2026, 3, 29, 22, 30, 0).unwrap();
        assert_eq!(day_of(dst, chrono_tz::Europe::Berlin), "2026-03-30");
    }

    #[test]
    fn metrics_restart_at_the_day_boundary() {
        let db = Db::in_memory(phonenumber::country::Id::US);
        let delta = DayMetrics {
            added_to_crm: 3,
            ..Default::default()
        };
        let tz = chrono_tz::Europe::Berlin;
        let before = Utc.with_ymd_and_hms(2026, 3, 1, 22, 59, 0).unwrap();
        let after = Utc.with_ymd_and_hms(2026, 3, 1, 23, 1, 0).unwrap();
        for t in [before, after] {
            db.commit(&Batch {
                ops: vec![Op::AddMetrics {
                    account: "g".into(),
                    day: day_of(t, tz),
                    delta: delta.clone(),
                }],
            })
            .unwrap();
        }
        assert_eq!(db.metrics("g", "2026-03-01").unwrap().added_to_crm, 3);
        assert_eq!(db.metrics("g", "2026-03-02").unwrap().added_to_crm, 3);
    }
}
