//! Sync-health endpoints (see [`crate::health`]): history, excluded and failing records,
//! held deletions, a contact's story, search, and retrying a failed push.
//!
//! History is account status, open to both roles; everything else is the operator's (it
//! names provider contacts the CRM does not hold, and retry changes how an account syncs).

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::Operator;
use super::{ApiError, ApiState};
use crate::actors::supervisor::PushSoon;
use crate::audit::{self, AuditEvent};
use crate::health;

#[derive(Deserialize)]
pub struct HistoryQuery {
    days: Option<u32>,
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    offset: Option<usize>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    q: String,
    limit: Option<usize>,
}

fn known(st: &ApiState, id: &str) -> Result<(), ApiError> {
    if st.rt.config().account(id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Account {id} is not configured."),
        ));
    }
    Ok(())
}

/// `GET /api/v1/accounts/{id}/history?days=N` (default 30, at most 400): one entry per day,
/// oldest first, with the breakdowns of `today`.
pub async fn history(
    st: web::Data<ApiState>,
    id: web::Path<String>,
    q: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    known(&st, &id)?;
    let days = q.days.unwrap_or(30);
    if days == 0 || days > health::MAX_HISTORY_DAYS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "days must be between 1 and {}, not {days}.",
                health::MAX_HISTORY_DAYS
            ),
        ));
    }
    let config = st.rt.config();
    let h = health::history(&st.rt.db, &id, config.tz(), days, chrono::Utc::now())?;
    let unusual = health::unusual_deletions(&h);
    let days: Vec<_> = h
        .into_iter()
        .zip(unusual)
        .map(|(d, u)| {
            let mut v = d.metrics;
            v["date"] = json!(d.date);
            v["unusual_deletions"] = json!(u);
            v
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "account": id.as_str(),
        "timezone": config.daemon.timezone,
        "days": days,
    })))
}

fn list_args(q: &ListQuery) -> (usize, usize) {
    (q.offset.unwrap_or(0), q.limit.unwrap_or(50).clamp(1, 500))
}

/// `GET /api/v1/accounts/{id}/skipped?q=&offset=&limit=`: excluded provider contacts.
pub async fn skipped(
    _: Operator,
    st: web::Data<ApiState>,
    id: web::Path<String>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    known(&st, &id)?;
    let (offset, limit) = list_args(&q);
    Ok(HttpResponse::Ok().json(health::skipped(&st.rt.db, &id, &q.q, offset, limit)?))
}

/// `GET /api/v1/accounts/{id}/failing?q=&offset=&limit=`: CRM changes the provider refused.
pub async fn failing(
    _: Operator,
    st: web::Data<ApiState>,
    id: web::Path<String>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    known(&st, &id)?;
    let (offset, limit) = list_args(&q);
    Ok(HttpResponse::Ok().json(health::failing(&st.rt.db, &id, &q.q, offset, limit)?))
}

/// `GET /api/v1/accounts/{id}/held`: deletions the deletion guard holds.
pub async fn held(
    _: Operator,
    st: web::Data<ApiState>,
    id: web::Path<String>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    known(&st, &id)?;
    let (offset, limit) = list_args(&q);
    Ok(HttpResponse::Ok().json(health::held(&st.rt.db, &id, offset, limit)?))
}

/// `GET /api/v1/contacts/{id}/history`: the story of one CRM contact.
pub async fn contact_history(
    _: Operator,
    st: web::Data<ApiState>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    match health::story(&st.rt.db, *id)? {
        Some(s) => Ok(HttpResponse::Ok().json(s)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Contact {id} not found and never audited."),
        )),
    }
}

/// `GET /api/v1/search?q=`: CRM contacts and skipped provider contacts matching a name,
/// email, phone or CRM id.
pub async fn search(
    _: Operator,
    st: web::Data<ApiState>,
    q: web::Query<SearchQuery>,
) -> Result<HttpResponse, ApiError> {
    let accounts: Vec<String> = st
        .rt
        .accounts()
        .iter()
        .map(|a| a.config.id.clone())
        .collect();
    let limit = q.limit.unwrap_or(20).clamp(1, 200);
    Ok(HttpResponse::Ok().json(health::search(&st.rt.db, &accounts, &q.q, limit)?))
}

/// Makes a failed outbox entry pending again; the account pushes it soon.
pub async fn retry_entry(st: &ApiState, account: &str, contact: u64) -> Result<(), ApiError> {
    known(st, account)?;
    let Some(mut entry) = st.rt.db.outbox_entry(account, contact)? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("No change of contact {contact} waits for account {account}."),
        ));
    };
    entry.failed = false;
    entry.attempts = 0;
    entry.not_before = None;
    entry.last_error = None;
    let provider = st
        .rt
        .config()
        .account(account)
        .map(|a| a.provider.as_str().to_string())
        .unwrap_or_default();
    let event = AuditEvent::new(account, &provider, audit::Action::RetryRequested)
        .crm_id(contact)
        .direction(audit::Direction::ToProvider);
    let mut b = crate::store::Batch::default();
    b.push(crate::store::Op::PutOutbox(entry));
    b.push(crate::store::Op::Audit(event.clone()));
    st.rt.db.commit_durable_blocking(b, vec![event]).await?;
    st.supervisor.do_send(PushSoon);
    Ok(())
}

/// `POST /api/v1/accounts/{id}/outbox/{contact}/retry`.
pub async fn retry(
    _: Operator,
    st: web::Data<ApiState>,
    path: web::Path<(String, u64)>,
) -> Result<HttpResponse, ApiError> {
    let (account, contact) = path.into_inner();
    retry_entry(&st, &account, contact).await?;
    Ok(HttpResponse::Accepted().json(json!({"status": "retrying"})))
}
