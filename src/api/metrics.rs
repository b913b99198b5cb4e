//! `/metrics` in the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;

use actix_web::{web, HttpRequest, HttpResponse};

use super::ApiState;
use crate::model::SkipReason;

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every metric family.
pub fn render(st: &ApiState) -> String {
    let mut out = String::new();
    let accounts = st.rt.accounts();
    let config = st.rt.config();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in rows {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {v}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
    };
    let acc = |a: &crate::runtime::AccountRuntime| {
        format!(
            "account=\"{}\",provider=\"{}\"",
            esc(&a.config.id),
            a.config.provider.as_str()
        )
    };
    family(
        "contact_sync_added_total",
        "counter",
        "Contacts added since the daemon started, by direction.",
        accounts
            .iter()
            .flat_map(|a| {
                [
                    (
                        format!("{},direction=\"to_crm\"", acc(a)),
                        a.totals.added_to_crm as f64,
                    ),
                    (
                        format!("{},direction=\"to_provider\"", acc(a)),
                        a.totals.added_to_provider as f64,
                    ),
                ]
            })
            .collect(),
    );
    family(
        "contact_sync_updated_total",
        "counter",
        "Contacts updated since the daemon started, by side.",
        accounts
            .iter()
            .flat_map(|a| {
                [
                    (
                        format!("{},direction=\"in_crm\"", acc(a)),
                        a.totals.updated_in_crm as f64,
                    ),
                    (
                        format!("{},direction=\"in_provider\"", acc(a)),
                        a.totals.updated_in_provider as f64,
                    ),
                ]
            })
            .collect(),
    );
    family(
        "contact_sync_deleted_total",
        "counter",
        "CRM contacts deleted because the provider deleted them.",
        accounts
            .iter()
            .map(|a| {
                (
                    format!("{},direction=\"from_provider\"", acc(a)),
                    a.totals.deleted_from_provider as f64,
                )
            })
            .collect(),
    );
    family(
        "contact_sync_skipped_total",
        "counter",
        "Provider contacts skipped as ineligible, by reason.",
        accounts
            .iter()
            .flat_map(|a| {
                SkipReason::ALL.iter().map(move |r| {
                    (
                        format!("{},reason=\"{}\"", acc(a), r.as_str()),
                        a.totals.skipped.get(r).copied().unwrap_or(0) as f64,
                    )
                })
            })
            .collect(),
    );
    family(
        "contact_sync_conflicts_total",
        "counter",
        "Fields changed on both sides since the last sync.",
        accounts
            .iter()
            .map(|a| (acc(a), a.totals.conflicts as f64))
            .collect(),
    );
    family(
        "contact_sync_errors_total",
        "counter",
        "Failed sync rounds.",
        accounts.iter().map(|a| (acc(a), a.errors as f64)).collect(),
    );
    family(
        "contact_sync_throttled_total",
        "counter",
        "Sync rounds ended by provider throttling.",
        accounts
            .iter()
            .map(|a| (acc(a), a.throttled as f64))
            .collect(),
    );
    family(
        "contact_sync_last_sync_duration_seconds",
        "gauge",
        "Duration of the last successful sync round.",
        accounts
            .iter()
            .map(|a| (acc(a), a.last_sync_seconds))
            .collect(),
    );
    family(
        "contact_sync_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful sync round.",
        accounts
            .iter()
            .map(|a| (acc(a), a.last_success.map_or(0.0, |t| t.timestamp() as f64)))
            .collect(),
    );
    let limit = config.daemon.contact_limit.max(1) as f64;
    family(
        "contact_sync_limit_utilisation_ratio",
        "gauge",
        "Linked contacts of the account divided by contact_limit.",
        accounts
            .iter()
            .map(|a| {
                let n = st.rt.db.link_count(&a.config.id).unwrap_or(0) as f64;
                (acc(a), n / limit)
            })
            .collect(),
    );
    family(
        "contact_sync_account_up",
        "gauge",
        "1 when the account is syncing or idle, else 0.",
        accounts
            .iter()
            .map(|a| {
                let up = matches!(
                    a.status.state,
                    crate::model::AccountState::Idle | crate::model::AccountState::Syncing
                );
                (
                    format!("{},state=\"{}\"", acc(a), a.status.state.as_str()),
                    if up { 1.0 } else { 0.0 },
                )
            })
            .collect(),
    );
    family(
        "contact_sync_config_reload_failures_total",
        "counter",
        "Configuration reloads rejected.",
        vec![(
            String::new(),
            st.rt
                .reload_failures
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        )],
    );
    family(
        "contact_sync_crm_contacts",
        "gauge",
        "Contacts in the CRM.",
        vec![(String::new(), st.rt.db.contact_count().unwrap_or(0) as f64)],
    );
    if let Some(log) = crate::audit::installed() {
        family(
            "contact_sync_audit_backlog",
            "gauge",
            "Audit events stored and not yet written to the audit files.",
            vec![(String::new(), log.backlog() as f64)],
        );
        family(
            "contact_sync_audit_write_errors_total",
            "counter",
            "Failed appends to the audit files (each is retried).",
            vec![(String::new(), log.write_errors() as f64)],
        );
    }
    out
}

/// `GET /metrics`: for loopback peers; others need `metrics_token_file`'s bearer token.
pub async fn metrics(st: web::Data<ApiState>, req: HttpRequest) -> HttpResponse {
    let loopback = req.peer_addr().is_some_and(|a| a.ip().is_loopback());
    if !loopback && !st.auth.metrics_token(&req) {
        return HttpResponse::Forbidden()
            .content_type("text/plain; charset=utf-8")
            .body("/metrics answers loopback clients only; set [daemon] metrics_token_file and send its token as a bearer token to scrape from elsewhere.\n");
    }
    // Store reads stay off the HTTP workers.
    let body = match web::block(move || render(&st)).await {
        Ok(b) => b,
        Err(e) => return HttpResponse::ServiceUnavailable().body(e.to_string()),
    };
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}
