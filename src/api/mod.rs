//! The local HTTP API (SPEC §7): the CRM's contacts and companies, account status, the
//! Prometheus `/metrics`, `/healthz` and the dashboard. Everything under `/api` needs
//! `Authorization: Bearer <token>`, compared in constant time; which token may do what is
//! in [`auth`].

pub mod auth;
pub mod chart;
pub mod dashboard;
pub mod health;
pub mod metrics;
pub mod ops;

use std::sync::Arc;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::actors::matcher::{EditCrm, Matcher};
use crate::actors::supervisor::{PushSoon, RestartAccount, Supervisor, SyncNow};
use crate::audit::{self, AuditEvent};
use crate::crm::{ContactInput, CrmEdit, EditError};
use crate::model::{Contact, DayMetrics, SkipReason};
use crate::runtime::{AccountRuntime, Runtime};
use crate::store::StoreError;

/// Largest request body accepted, in bytes.
pub const MAX_BODY: usize = 256 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub rt: Arc<Runtime>,
    pub matcher: Addr<Matcher>,
    pub supervisor: Addr<Supervisor>,
    /// The tokens, their roles and the dashboard sessions.
    pub auth: Arc<auth::Auth>,
    /// Seals refresh tokens handed over by `connect` while the daemon runs.
    pub sealer: Option<Arc<crate::secrets::Sealer>>,
}

/// An API error with its JSON body `{"error": .., "field": ..}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut body = json!({ "error": self.message });
        if let Some(f) = &self.field {
            body["field"] = json!(f);
        }
        HttpResponse::build(self.status).json(body)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "Store error while serving the API.");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<EditError> for ApiError {
    fn from(e: EditError) -> Self {
        match e {
            EditError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            EditError::Invalid { field, message } => ApiError {
                status: StatusCode::BAD_REQUEST,
                message: format!("Field `{field}`: {message}."),
                field: Some(field),
            },
            EditError::Store(s) => s.into(),
            EditError::Unavailable => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

/// Contact JSON (SPEC §7 shape).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ContactJson {
    pub id: u64,
    pub first_name: String,
    pub last_name: String,
    pub emails: Vec<String>,
    pub phones: Vec<String>,
    pub address: Option<crate::model::Address>,
    pub company: Option<CompanyJson>,
    pub job_title: Option<String>,
    pub birthday: Option<String>,
    pub has_photo: bool,
    pub links: Vec<LinkJson>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct CompanyJson {
    pub id: u64,
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct LinkJson {
    pub account: String,
    pub provider_id: String,
}

fn contact_json(rt: &Runtime, c: Contact) -> Result<ContactJson, ApiError> {
    // By the name cache: a listing of contacts during a large sync reads the store once
    // per contact, not twice (every read may wait for the writer's commit).
    let company = match c.company_id {
        Some(id) => rt.db.company_name(id)?.map(|name| CompanyJson {
            id,
            name: name.to_string(),
        }),
        None => None,
    };
    Ok(ContactJson {
        id: c.id,
        first_name: c.first_name,
        last_name: c.last_name,
        emails: c.emails,
        phones: c.phones,
        address: c.address,
        company,
        job_title: c.job_title,
        birthday: c.birthday.map(|d| d.format("%Y-%m-%d").to_string()),
        has_photo: c.has_photo,
        links: c
            .links
            .into_iter()
            .map(|l| LinkJson {
                account: l.account,
                provider_id: l.provider_id,
            })
            .collect(),
        created_at: c.created_at.to_rfc3339(),
        updated_at: c.updated_at.to_rfc3339(),
    })
}

/// Today's metrics in the SPEC §7 account shape.
pub fn today_json(m: &DayMetrics) -> serde_json::Value {
    let skipped: serde_json::Map<String, serde_json::Value> = SkipReason::ALL
        .iter()
        .map(|r| {
            (
                r.as_str().to_string(),
                json!(m.skipped.get(r).copied().unwrap_or(0)),
            )
        })
        .collect();
    json!({
        "added": {"to_crm": m.added_to_crm, "to_provider": m.added_to_provider},
        "updated": {"in_crm": m.updated_in_crm, "in_provider": m.updated_in_provider},
        "deleted": {"from_provider": m.deleted_from_provider},
        "skipped": skipped,
        "conflicts": m.conflicts,
        "unlinked": m.unlinked,
    })
}

fn outbox_json(rt: &Runtime, account: &str) -> Result<serde_json::Value, StoreError> {
    let entries = rt.db.outbox_for(account)?;
    let failed: Vec<_> = entries
        .iter()
        .filter(|e| e.failed)
        .map(|e| json!({"crm_id": e.contact_id, "error": e.last_error}))
        .collect();
    Ok(json!({
        "pending": entries.iter().filter(|e| !e.failed).count(),
        "failed": failed,
    }))
}

/// An account's status. Its state and last error live in memory, so they are shown even
/// while the store cannot be read (a full disk); the counts read from the store are then
/// `null` and `store_error` says why.
pub fn account_json(rt: &Runtime, a: &AccountRuntime) -> Result<serde_json::Value, StoreError> {
    let counts = rt
        .db
        .metrics(&a.config.id, &rt.today())
        .and_then(|m| Ok((m, rt.db.link_count(&a.config.id)?)));
    let (today, linked, store_error) = match counts {
        Ok((m, n)) => (today_json(&m), json!(n), None),
        Err(e) => (
            serde_json::Value::Null,
            serde_json::Value::Null,
            Some(e.to_string()),
        ),
    };
    Ok(json!({
        "id": a.config.id,
        "provider": a.config.provider.as_str(),
        "group": a.config.group.as_str(),
        "direction": a.config.direction.as_str(),
        "enabled": a.config.enabled,
        "state": a.status.state.as_str(),
        "last_sync": a.status.last_sync.map(|t| t.to_rfc3339()),
        "last_error": a.status.last_error,
        "progress": a.status.progress,
        "errors": a.errors,
        "consecutive_errors": a.consecutive_errors,
        "linked": linked,
        "outbox": outbox_json(rt, &a.config.id).unwrap_or(serde_json::Value::Null),
        "today": today,
        "store_error": store_error,
    }))
}

#[derive(Deserialize)]
struct PageQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn list_contacts(
    st: web::Data<ApiState>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let page = st.rt.db.contacts_page(q.after, limit)?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|c| c.id))
        .flatten();
    let contacts = page
        .into_iter()
        .map(|c| contact_json(&st.rt, c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(json!({ "contacts": contacts, "next": next })))
}

async fn get_contact(
    st: web::Data<ApiState>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    let c =
        st.rt.db.contact(*id)?.ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, format!("Contact {id} not found."))
        })?;
    Ok(HttpResponse::Ok().json(contact_json(&st.rt, c)?))
}

async fn get_photo(st: web::Data<ApiState>, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let p = st.rt.db.photo(*id)?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("Contact {id} has no photo."))
    })?;
    Ok(HttpResponse::Ok().content_type("image/jpeg").body(p))
}

async fn edit(st: &ApiState, e: CrmEdit) -> Result<Option<Contact>, ApiError> {
    let res = st
        .matcher
        .send(EditCrm(e))
        .await
        .map_err(|_| ApiError::from(EditError::Unavailable))?
        .map_err(ApiError::from)?;
    // Two-way accounts pick the change up from the outbox soon.
    st.supervisor.do_send(PushSoon);
    Ok(res)
}

async fn create_contact(
    st: web::Data<ApiState>,
    body: web::Json<ContactInput>,
) -> Result<HttpResponse, ApiError> {
    let c = edit(&st, CrmEdit::Create(body.into_inner())).await?;
    let c = c.ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no contact"))?;
    Ok(HttpResponse::Created().json(contact_json(&st.rt, c)?))
}

async fn patch_contact(
    st: web::Data<ApiState>,
    id: web::Path<u64>,
    body: web::Json<ContactInput>,
) -> Result<HttpResponse, ApiError> {
    let c = edit(&st, CrmEdit::Patch(*id, body.into_inner())).await?;
    let c = c.ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no contact"))?;
    Ok(HttpResponse::Ok().json(contact_json(&st.rt, c)?))
}

async fn delete_contact(
    st: web::Data<ApiState>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    edit(&st, CrmEdit::Delete(*id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn restore_contact(
    _: auth::Operator,
    st: web::Data<ApiState>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    let c = edit(&st, CrmEdit::Restore(*id)).await?;
    let c = c.ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no contact"))?;
    Ok(HttpResponse::Ok().json(contact_json(&st.rt, c)?))
}

async fn approve_account(
    _: auth::Operator,
    st: web::Data<ApiState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    approve(&st, &id).await?;
    Ok(HttpResponse::Accepted()
        .json(json!({"status": "approved; the next round applies the held deletions"})))
}

/// Records the operator's approval of an account's held deletions and restarts it.
pub async fn approve(st: &ApiState, id: &str) -> Result<(), ApiError> {
    if st.rt.config().account(id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Account {id} is not configured."),
        ));
    }
    let mut b = crate::store::Batch::default();
    b.push(crate::store::Op::SetMeta {
        key: crate::actors::account::approval_key(id),
        value: Some(chrono::Utc::now().to_rfc3339().into_bytes()),
    });
    let approved = AuditEvent::new(id, &provider_name(st, id), audit::Action::Approved);
    b.push(crate::store::Op::Audit(approved.clone()));
    st.rt.db.commit_durable_blocking(b, vec![approved]).await?;
    st.supervisor.do_send(RestartAccount(id.to_string()));
    tracing::info!(account = %id, "Held deletions approved by an operator.");
    Ok(())
}

async fn list_companies(
    st: web::Data<ApiState>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let page = st.rt.db.companies_page(q.after, limit)?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|c| c.id))
        .flatten();
    let companies: Vec<_> = page
        .into_iter()
        .map(|c| json!({"id": c.id, "name": c.name, "created_at": c.created_at.to_rfc3339()}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "companies": companies, "next": next })))
}

async fn get_company(
    st: web::Data<ApiState>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    let c =
        st.rt.db.company(*id)?.ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, format!("Company {id} not found."))
        })?;
    Ok(HttpResponse::Ok()
        .json(json!({"id": c.id, "name": c.name, "created_at": c.created_at.to_rfc3339()})))
}

async fn list_accounts(st: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let accounts = st
        .rt
        .accounts()
        .iter()
        .map(|a| account_json(&st.rt, a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(json!({
        "accounts": accounts,
        "config_error": st.rt.reload_error(),
        "audit_backlog": audit::installed().map(|l| l.backlog()),
        "audit_error": audit::installed().and_then(|l| l.last_error()),
    })))
}

async fn get_account(
    st: web::Data<ApiState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let a = st.rt.account(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Account {id} is not configured."),
        )
    })?;
    Ok(HttpResponse::Ok().json(account_json(&st.rt, &a)?))
}

async fn sync_now(_: auth::Operator, st: web::Data<ApiState>) -> HttpResponse {
    st.supervisor.do_send(SyncNow);
    HttpResponse::Accepted().json(json!({"status": "sync requested"}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    refresh_token: String,
}

/// `connect --refresh-token-file` while the daemon runs (the store is the daemon's).
async fn put_grant(
    _: auth::Operator,
    st: web::Data<ApiState>,
    id: web::Path<String>,
    body: web::Json<GrantBody>,
) -> Result<HttpResponse, ApiError> {
    if st.rt.config().account(&id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Account {id} is not configured."),
        ));
    }
    let token = body.into_inner().refresh_token;
    if token.trim().is_empty() {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: "Field `refresh_token`: must not be empty.".into(),
            field: Some("refresh_token".into()),
        });
    }
    let sealer = st.sealer.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The token key is not available.",
        )
    })?;
    let sealed = sealer.seal(&id, &SecretString::from(token.trim().to_string()));
    let had_grant = st.rt.db.grant(&id)?.is_some();
    let mut b = crate::store::Batch::default();
    b.push(crate::store::Op::PutGrant {
        account: id.to_string(),
        sealed,
    });
    for op in crate::sync::outbox::requeue_after_new_grant(&st.rt.db, &id)? {
        b.push(op);
    }
    let event = AuditEvent::grant_stored(&id, &provider_name(&st, &id), had_grant);
    b.push(crate::store::Op::Audit(event.clone()));
    st.rt.db.commit_durable_blocking(b, vec![event]).await?;
    st.supervisor.do_send(RestartAccount(id.to_string()));
    tracing::info!(account = %id, "Refresh token stored; account restarting.");
    Ok(HttpResponse::NoContent().finish())
}

async fn delete_grant(
    _: auth::Operator,
    st: web::Data<ApiState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let mut b = crate::store::Batch::default();
    b.push(crate::store::Op::DeleteGrant(id.to_string()));
    let event = AuditEvent::new(&id, &provider_name(&st, &id), audit::Action::Disconnected);
    b.push(crate::store::Op::Audit(event.clone()));
    st.rt.db.commit_durable_blocking(b, vec![event]).await?;
    st.supervisor.do_send(RestartAccount(id.to_string()));
    tracing::info!(account = %id, "Grant forgotten; synced contacts stay.");
    Ok(HttpResponse::NoContent().finish())
}

/// The provider of a configured account, for audit events (empty when it is not configured).
fn provider_name(st: &ApiState, id: &str) -> String {
    st.rt
        .config()
        .account(id)
        .map(|a| a.provider.as_str().to_string())
        .unwrap_or_default()
}

async fn healthz(st: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "accounts": st.rt.accounts().len(),
        "config_error": st.rt.reload_error(),
    }))
}

fn json_error(err: actix_web::error::JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    let (status, message, field) = match &err {
        J::Deserialize(e) => {
            let msg = e.to_string();
            // serde names unknown and missing fields in backticks.
            let field = msg
                .split('`')
                .nth(1)
                .map(str::to_string)
                .filter(|_| msg.contains("field"));
            (
                StatusCode::BAD_REQUEST,
                format!("Invalid JSON body: {msg}."),
                field,
            )
        }
        J::Overflow { .. } | J::OverflowKnownLength { .. } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body is larger than {MAX_BODY} bytes."),
            None,
        ),
        J::ContentType => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Send the body as application/json.".to_string(),
            None,
        ),
        other => (
            StatusCode::BAD_REQUEST,
            format!("Invalid request body: {other}."),
            None,
        ),
    };
    ApiError {
        status,
        message,
        field,
    }
    .into()
}

/// Registers every route.
pub fn configure(state: ApiState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(state))
            .app_data(
                web::JsonConfig::default()
                    .limit(MAX_BODY)
                    .error_handler(json_error),
            )
            .app_data(web::PathConfig::default().error_handler(|e, _| {
                ApiError::new(StatusCode::NOT_FOUND, format!("Not found: {e}.")).into()
            }))
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                ApiError::new(StatusCode::BAD_REQUEST, format!("Invalid query: {e}.")).into()
            }))
            .route("/healthz", web::get().to(healthz))
            .route("/metrics", web::get().to(metrics::metrics))
            .route("/", web::get().to(dashboard::page))
            .route("/login", web::get().to(dashboard::login_page))
            .route("/login", web::post().to(dashboard::login))
            .route("/logout", web::post().to(dashboard::logout))
            .route("/dashboard/sync", web::post().to(dashboard::sync_now))
            .route(
                "/dashboard/accounts/{id}/approve",
                web::post().to(dashboard::approve),
            )
            .route("/oauth/{provider}/start", web::get().to(ops::start_page))
            .route("/oauth/{provider}/start", web::post().to(ops::start))
            .route(
                "/accounts/{id}/health",
                web::get().to(dashboard::account_health),
            )
            .route(
                "/accounts/{id}/outbox/{contact}/retry",
                web::post().to(dashboard::retry),
            )
            .route("/contacts/{id}", web::get().to(dashboard::contact))
            .route("/search", web::get().to(dashboard::search))
            .route("/oauth/{provider}/callback", web::get().to(ops::callback))
            .service(
                web::scope("/api/v1")
                    .wrap(from_fn(auth::api_gate))
                    .route("/contacts", web::get().to(list_contacts))
                    .route("/contacts", web::post().to(create_contact))
                    .route("/contacts/{id}", web::get().to(get_contact))
                    .route("/contacts/{id}", web::patch().to(patch_contact))
                    .route("/contacts/{id}", web::delete().to(delete_contact))
                    .route("/contacts/{id}/photo", web::get().to(get_photo))
                    .route("/contacts/{id}/restore", web::post().to(restore_contact))
                    .route("/accounts/{id}/approve", web::post().to(approve_account))
                    .route("/accounts/{id}/history", web::get().to(health::history))
                    .route("/accounts/{id}/skipped", web::get().to(health::skipped))
                    .route("/accounts/{id}/failing", web::get().to(health::failing))
                    .route("/accounts/{id}/held", web::get().to(health::held))
                    .route(
                        "/accounts/{id}/outbox/{contact}/retry",
                        web::post().to(health::retry),
                    )
                    .route(
                        "/contacts/{id}/history",
                        web::get().to(health::contact_history),
                    )
                    .route("/search", web::get().to(health::search))
                    .route("/companies", web::get().to(list_companies))
                    .route("/companies/{id}", web::get().to(get_company))
                    .route("/accounts", web::get().to(list_accounts))
                    .route("/accounts/{id}", web::get().to(get_account))
                    .route("/accounts/{id}/grant", web::put().to(put_grant))
                    .route("/accounts/{id}/grant", web::delete().to(delete_grant))
                    .route("/accounts/{id}/preview", web::post().to(ops::preview))
                    .route("/accounts/{id}/revoke", web::post().to(ops::revoke))
                    .route("/sync", web::post().to(sync_now)),
            );
    }
}
