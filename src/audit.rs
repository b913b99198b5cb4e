//! The audit log (SPEC §7): one JSON object per line, daily files in `audit_dir`, written
//! through tracing-appender.
//!
//! Every audit action is an [`AuditEvent`]; [`AuditEvent::emit`] writes it as one tracing
//! event on target `audit`, which [`layer`] routes to the daily file and nothing else
//! routes anywhere. Events carry field *names*; values only when `audit_values` is on.
//! The last events are also kept in memory for the dashboard.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Audit actions of SPEC §7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Added,
    Updated,
    Deleted,
    Skipped,
    Unlinked,
    Conflict,
    AmbiguousMatch,
    LimitExceeded,
    /// A round's deletions were held by the deletion guard.
    DeletionHeld,
    /// A CRM change the provider refused for good (two-way).
    Rejected,
    /// A deleted CRM contact was brought back.
    Restored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    ToCrm,
    ToProvider,
}

/// One audit line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    pub time: DateTime<Utc>,
    pub account: String,
    pub provider: String,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crm_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Other CRM contacts involved (the losers of an ambiguous match).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub others: Vec<u64>,
    /// Field values, only when the configuration asks for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<serde_json::Value>,
}

impl AuditEvent {
    pub fn new(account: &str, provider: &str, action: Action) -> Self {
        AuditEvent {
            time: Utc::now(),
            account: account.to_string(),
            provider: provider.to_string(),
            action,
            direction: None,
            crm_id: None,
            provider_id: None,
            fields: vec![],
            reason: None,
            others: vec![],
            values: None,
        }
    }
    pub fn direction(mut self, d: Direction) -> Self {
        self.direction = Some(d);
        self
    }
    pub fn crm_id(mut self, id: u64) -> Self {
        self.crm_id = Some(id);
        self
    }
    pub fn provider_id(mut self, id: &str) -> Self {
        self.provider_id = Some(id.to_string());
        self
    }
    pub fn fields(mut self, f: Vec<&'static str>) -> Self {
        self.fields = f;
        self
    }
    pub fn reason(mut self, r: impl Into<String>) -> Self {
        self.reason = Some(r.into());
        self
    }

    /// Writes the event to the audit log and the in-memory recent list.
    pub fn emit(&self) {
        let line = serde_json::to_string(self).unwrap_or_default();
        tracing::info!(target: "audit", audit = %line);
        let mut r = recent().lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= RECENT {
            r.pop_front();
        }
        r.push_back(self.clone());
    }
}

const RECENT: usize = 200;

fn recent() -> &'static Mutex<VecDeque<AuditEvent>> {
    static R: OnceLock<Mutex<VecDeque<AuditEvent>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(VecDeque::new()))
}

/// The most recent events, newest last.
pub fn recent_events(n: usize) -> Vec<AuditEvent> {
    let r = recent().lock().unwrap_or_else(|p| p.into_inner());
    r.iter().rev().take(n).rev().cloned().collect()
}

/// The filter that routes only audit events to the audit layer.
pub fn filter() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_target("audit", tracing::Level::INFO)
}

/// Writes the `audit` field of an event verbatim, one line per event.
struct AuditFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for AuditFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        struct V(String);
        impl tracing::field::Visit for V {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "audit" {
                    self.0 = format!("{v:?}");
                }
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                if f.name() == "audit" {
                    self.0 = v.to_string();
                }
            }
        }
        let mut v = V(String::new());
        event.record(&mut v);
        writeln!(writer, "{}", v.0)
    }
}

/// The layer that writes audit events to daily files `audit.YYYY-MM-DD.jsonl` in `dir`.
/// It formats every event it sees: install it behind [`filter`].
pub fn layer<S>(
    dir: &std::path::Path,
) -> Result<impl tracing_subscriber::Layer<S> + Send + Sync + 'static, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create audit_dir {}: {e}", dir.display()))?;
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("audit")
        .filename_suffix("jsonl")
        .build(dir)
        .map_err(|e| format!("cannot open the audit log in {}: {e}", dir.display()))?;
    Ok(tracing_subscriber::fmt::layer()
        .event_format(AuditFormat)
        .with_writer(appender)
        .with_ansi(false))
}
