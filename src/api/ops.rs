//! Operator routes: the dry run (`POST /api/v1/accounts/{id}/preview`), revocation before
//! `disconnect` (`POST /api/v1/accounts/{id}/revoke`), and the dashboard's "Add account"
//! flow (`GET /oauth/{provider}/start` and `GET /oauth/{provider}/callback`).
//!
//! The two `/oauth` routes are outside `/api` because a browser cannot send the bearer
//! token. `start` is a POST from an operator's dashboard session with its CSRF token, and
//! only ever redirects to the provider for an account declared in the configuration. The
//! callback checks the `state` nonce `start` made (single use, 10 minutes) before anything
//! else, and the same browser: `start` sets the nonce in an HttpOnly, SameSite=Lax cookie
//! that the callback compares. A grant stored by the callback is the grant of the person
//! who consented at the provider, started by a logged-in operator.

use std::collections::{BTreeMap, HashMap};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState};
use crate::actors::matcher::PreviewChunk;
use crate::actors::supervisor::RestartAccount;
use crate::config::ProviderKind;
use crate::model::{Change, SkipReason};
use crate::providers::text::escape_markup;
use crate::providers::ProviderError;
use crate::sync::{Action, PlanContext};

#[derive(Deserialize)]
pub struct PreviewQuery {
    limit: Option<usize>,
}

fn not_configured(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Account {id} is not configured."),
    )
}

fn provider_error(e: ProviderError) -> ApiError {
    let status = match e {
        ProviderError::NotConnected(_) | ProviderError::ReauthRequired(_) => StatusCode::CONFLICT,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(status, e.to_string())
}

/// The kind of an action, as `preview` counts it.
pub fn action_kind(a: &Action) -> &'static str {
    match a {
        Action::Create { .. } => "create",
        Action::Link { .. } => "link",
        Action::Update { .. } => "update",
        Action::Unchanged { .. } => "unchanged",
        Action::Delete { .. } => "delete",
        Action::Unlink { .. } => "unlink",
        Action::Skip { .. } => "skip",
        Action::Ignore { .. } => "ignore",
        Action::Push { .. } => "push",
    }
}

/// The kinds, in the order `preview` prints them.
pub const KINDS: [&str; 9] = [
    "create",
    "link",
    "update",
    "unchanged",
    "delete",
    "unlink",
    "skip",
    "ignore",
    "push",
];

fn action_json(a: &Action, names: &HashMap<String, String>) -> serde_json::Value {
    let (pid, crm, fields, reason) = match a {
        Action::Create {
            provider_id,
            crm_id,
        }
        | Action::Unchanged {
            provider_id,
            crm_id,
        }
        | Action::Delete {
            provider_id,
            crm_id,
        }
        | Action::Unlink {
            provider_id,
            crm_id,
        } => (provider_id, Some(*crm_id), vec![], None),
        Action::Link {
            provider_id,
            crm_id,
            changed,
            ..
        }
        | Action::Update {
            provider_id,
            crm_id,
            changed,
        } => (provider_id, Some(*crm_id), changed.clone(), None),
        Action::Push {
            provider_id,
            crm_id,
            fields,
        } => (provider_id, Some(*crm_id), fields.clone(), None),
        Action::Skip {
            provider_id,
            reason,
        } => (provider_id, None, vec![], Some(reason.as_str())),
        Action::Ignore { provider_id } => (provider_id, None, vec![], None),
    };
    json!({
        "provider_id": pid,
        "crm_id": crm,
        "name": names.get(pid),
        "fields": fields,
        "reason": reason,
    })
}

/// Summarises planned actions: counts per kind, skips per reason, the first `limit` of each.
pub fn summarise(
    actions: &[Action],
    names: &HashMap<String, String>,
    limit: usize,
) -> serde_json::Value {
    let mut counts: BTreeMap<&str, u64> = KINDS.iter().map(|k| (*k, 0)).collect();
    let mut skipped: BTreeMap<&str, u64> =
        SkipReason::ALL.iter().map(|r| (r.as_str(), 0)).collect();
    let mut examples: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    for a in actions {
        let k = action_kind(a);
        *counts.entry(k).or_default() += 1;
        if let Action::Skip { reason, .. } = a {
            *skipped.entry(reason.as_str()).or_default() += 1;
        }
        let list = examples.entry(k).or_default();
        if list.len() < limit {
            list.push(action_json(a, names));
        }
    }
    json!({ "counts": counts, "skipped": skipped, "examples": examples })
}

/// `POST /api/v1/accounts/{id}/preview?limit=N`: fetches a round from the provider from the
/// stored cursor and plans it, writing nothing (no cursor, no CRM change, no metrics).
pub async fn preview(
    _: super::auth::Operator,
    st: web::Data<ApiState>,
    id: web::Path<String>,
    q: web::Query<PreviewQuery>,
) -> Result<HttpResponse, ApiError> {
    let config = st.rt.config();
    let cfg = config
        .account(&id)
        .cloned()
        .ok_or_else(|| not_configured(&id))?;
    let sealer = st.sealer.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The token key is not available.",
        )
    })?;
    let provider =
        crate::providers::build::factory(sealer)(&st.rt, &cfg).map_err(provider_error)?;
    let cursor = st.rt.db.cursor(&cfg.id)?;
    let progress: crate::providers::ProgressFn = Box::new(|_| {});
    // As a real round does: the links as they were before the listing started; a complete
    // listing, or a vanished scope, reveals deletions among them.
    let links_before = st.rt.db.links_of(&cfg.id)?;
    let round = provider
        .fetch_round(cursor.as_deref(), &progress)
        .await
        .map_err(provider_error)?;
    let changes = crate::actors::account::with_listing_deletions_among(
        &links_before,
        round.changes,
        &round.complete_scopes,
        &round.gone_scopes,
    );
    let names: HashMap<String, String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Upsert(pc) => Some((
                pc.provider_id.clone(),
                format!("{} {}", pc.fields.first_name, pc.fields.last_name)
                    .trim()
                    .to_string(),
            )),
            _ => None,
        })
        .collect();
    let projected = crate::sync::projected_links(&st.rt.db, &cfg.id, &changes)?;
    let limit = config.daemon.contact_limit;
    let n = changes.len();
    let ctx = PlanContext {
        audit_values: false,
        ..crate::actors::account::plan_context(&cfg, &config)
    };
    let actions = st
        .matcher
        .send(PreviewChunk { ctx, changes })
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "The matcher is gone."))?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let mut out = summarise(&actions, &names, q.limit.unwrap_or(10).min(1000));
    out["account"] = json!(cfg.id);
    out["direction"] = json!(cfg.direction.as_str());
    out["full"] = json!(round.full || cursor.is_none());
    out["changes"] = json!(n);
    out["projected_links"] = json!(projected);
    out["contact_limit"] = json!(limit);
    out["over_limit"] = json!(projected as u64 > limit);
    Ok(HttpResponse::Ok().json(out))
}

/// `POST /api/v1/accounts/{id}/revoke`: revokes the stored grant at the provider where it
/// can be (Google); `disconnect` then forgets it with `DELETE .../grant`.
pub async fn revoke(
    _: super::auth::Operator,
    st: web::Data<ApiState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let config = st.rt.config();
    let cfg = config
        .account(&id)
        .cloned()
        .ok_or_else(|| not_configured(&id))?;
    let Some(sealed) = st.rt.db.grant(&id)? else {
        return Ok(HttpResponse::Ok().json(json!({"result": "no grant was stored"})));
    };
    let result = match st.sealer.as_ref().map(|s| s.open(&id, &sealed)) {
        Some(Ok(token)) => match crate::ops::revoke_grant(&config, &cfg, &token).await {
            Ok(r) => r.to_string(),
            Err(e) => format!("not revoked ({e})"),
        },
        Some(Err(e)) => format!("not revoked ({e})"),
        None => "not revoked (the token key is not available)".to_string(),
    };
    tracing::info!(account = %id, result = %result, "Grant revocation requested.");
    Ok(HttpResponse::Ok().json(json!({ "result": result })))
}

fn page(status: StatusCode, title: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>contact-sync: {t}</title></head>\
             <body style=\"font: 14px system-ui, sans-serif; margin: 2em\"><h1>{t}</h1><p class=\"result\">{m}</p>\
             <p><a href=\"/\">Back to the dashboard</a></p></body></html>",
            t = escape_markup(title),
            m = escape_markup(message)
        ))
}

/// Name of the cookie that binds a callback to the browser that started the flow.
pub const STATE_COOKIE: &str = "contact_sync_oauth";

fn provider_of(name: &str) -> Option<ProviderKind> {
    match name {
        "google" => Some(ProviderKind::Google),
        "outlook" => Some(ProviderKind::Outlook),
        _ => None,
    }
}

fn callback_uri(st: &ApiState, provider: &str) -> String {
    let listen = st.rt.config().daemon.listen;
    let host = if listen.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], listen.port()))
    } else {
        listen
    };
    let scheme = if st.auth.tls { "https" } else { "http" };
    format!("{scheme}://{host}/oauth/{provider}/callback")
}

#[derive(Deserialize)]
pub struct StartQuery {
    account: String,
}

#[derive(Deserialize)]
pub struct StartForm {
    account: String,
    #[serde(default)]
    csrf: String,
}

/// Refusal of an OAuth start without an operator session.
fn no_session() -> HttpResponse {
    page(
        StatusCode::FORBIDDEN,
        "Operator login needed",
        "Connecting an account needs an operator session: log in to the dashboard at /login with the operator token (admin_token_file) first.",
    )
}

/// `GET /oauth/{provider}/start?account=ID`: with an operator session, a page whose button
/// posts the start form (with the session's CSRF token); without one, 403.
pub async fn start_page(
    st: web::Data<ApiState>,
    provider: web::Path<String>,
    q: web::Query<StartQuery>,
    req: HttpRequest,
) -> HttpResponse {
    let Some(session) = st.auth.session(&req) else {
        return no_session();
    };
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>contact-sync: connect {a}</title></head>\
             <body style=\"font: 14px system-ui, sans-serif; margin: 2em\"><h1>Connect {a}</h1>\
             <form method=\"post\" action=\"/oauth/{p}/start\"><input type=\"hidden\" name=\"account\" value=\"{a}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{c}\"><button type=\"submit\">Continue to the provider</button></form>\
             <p><a href=\"/\">Back to the dashboard</a></p></body></html>",
            a = escape_markup(&q.account),
            p = escape_markup(&provider),
            c = escape_markup(&session.csrf),
        ))
}

/// `POST /oauth/{provider}/start` (form `account`, `csrf`): from an operator session only,
/// redirects to the provider's consent page for an account declared in the configuration.
pub async fn start(
    st: web::Data<ApiState>,
    provider: web::Path<String>,
    form: web::Form<StartForm>,
    req: HttpRequest,
) -> HttpResponse {
    let Some(session) = st.auth.session(&req) else {
        return no_session();
    };
    if !super::auth::csrf_ok(&session, &form.csrf) {
        return page(
            StatusCode::FORBIDDEN,
            "Refused",
            "The form's CSRF token does not match your session; reload the dashboard and try again.",
        );
    }
    let config = st.rt.config();
    let Some(acc) = config.account(&form.account).cloned() else {
        return page(
            StatusCode::NOT_FOUND,
            "Unknown account",
            &format!(
                "Account {} is not declared in the configuration; add an [[accounts]] entry first.",
                form.account
            ),
        );
    };
    if provider_of(&provider) != Some(acc.provider.clone()) {
        return page(
            StatusCode::BAD_REQUEST,
            "Wrong provider",
            &format!("Account {} is a {} account.", acc.id, acc.provider.as_str()),
        );
    }
    let pending = crate::oauth_flow::endpoints(&config, &acc)
        .and_then(|ep| crate::oauth_flow::begin(&ep, &callback_uri(&st, &provider)));
    let pending = match pending {
        Ok(p) => p,
        Err(e) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot start the authorization",
                &e,
            )
        }
    };
    let url = pending.url.clone();
    let state = match crate::oauth_flow::remember(&acc.id, &session.id, pending) {
        Ok(s) => s,
        Err(e) => {
            return page(
                StatusCode::TOO_MANY_REQUESTS,
                "Cannot start the authorization",
                &e,
            )
        }
    };
    tracing::info!(account = %acc.id, "Authorization started from the dashboard.");
    let secure = if st.auth.tls { "; Secure" } else { "" };
    // The provider's redirect back is a cross-site navigation: SameSite=Lax lets this
    // cookie (and not the Strict session cookie) come along.
    HttpResponse::SeeOther()
        .insert_header(("Location", url))
        .insert_header(("Cache-Control", "no-store"))
        .insert_header((
            "Set-Cookie",
            format!(
                "{STATE_COOKIE}={state}; Path=/oauth; Max-Age=600; HttpOnly; SameSite=Lax{secure}"
            ),
        ))
        .finish()
}

/// `GET /oauth/{provider}/callback`: checks `state`, exchanges the code, stores the sealed
/// grant and restarts the account.
pub async fn callback(
    st: web::Data<ApiState>,
    provider: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    let q: HashMap<String, String> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    // The state first: nothing else of the request is looked at for an unknown one.
    let state = q.get("state").cloned().unwrap_or_default();
    if !crate::oauth_flow::is_pending(&state) {
        return page(
            StatusCode::BAD_REQUEST,
            "Authorization failed",
            "Unknown or expired authorization request (the state parameter does not match one this daemon started in the last 10 minutes). Start again from the dashboard.",
        );
    }
    let cookie = super::auth::cookie_value(&req, STATE_COOKIE);
    if cookie.as_deref() != Some(state.as_str()) {
        return page(
            StatusCode::BAD_REQUEST,
            "Authorization failed",
            "This authorization was started in another browser. Start again from the dashboard.",
        );
    }
    let Some(pending) = crate::oauth_flow::take(&state) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Authorization failed",
            "Unknown or expired authorization request. Start again from the dashboard.",
        );
    };
    let account = pending.account.clone();
    let config = st.rt.config();
    let Some(acc) = config.account(&account).cloned() else {
        return page(
            StatusCode::NOT_FOUND,
            "Authorization failed",
            &format!("Account {account} is no longer in the configuration."),
        );
    };
    if provider_of(&provider) != Some(acc.provider.clone()) {
        return page(
            StatusCode::BAD_REQUEST,
            "Authorization failed",
            "Wrong provider.",
        );
    }
    let code = match crate::oauth_flow::callback_code(&q, &state) {
        Ok(c) => c,
        Err(e) => return page(StatusCode::BAD_REQUEST, "Authorization failed", &e),
    };
    let token = match crate::oauth_flow::endpoints(&config, &acc) {
        Ok(ep) => crate::oauth_flow::finish(&ep, pending.pending, &code).await,
        Err(e) => Err(e),
    };
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(account = %account, error = %e, "Authorization from the dashboard failed.");
            return page(StatusCode::BAD_GATEWAY, "Authorization failed", &e);
        }
    };
    let Some(sealer) = st.sealer.as_ref() else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Authorization failed",
            "The token key is not available.",
        );
    };
    let had_grant = matches!(st.rt.db.grant(&account), Ok(Some(_)));
    let provider_name = st
        .rt
        .config()
        .account(&account)
        .map(|a| a.provider.as_str().to_string())
        .unwrap_or_default();
    let event = crate::audit::AuditEvent::grant_stored(&account, &provider_name, had_grant);
    let mut b = crate::store::Batch::default();
    b.push(crate::store::Op::PutGrant {
        account: account.clone(),
        sealed: sealer.seal(&account, &token),
    });
    match crate::sync::outbox::requeue_after_new_grant(&st.rt.db, &account) {
        Ok(ops) => {
            for op in ops {
                b.push(op);
            }
        }
        Err(e) => {
            tracing::warn!(account = %account, error = %e, "Cannot requeue refused CRM changes.")
        }
    }
    b.push(crate::store::Op::Audit(event.clone()));
    let stored = st.rt.db.commit_durable_blocking(b, vec![event]).await;
    if let Err(e) = stored {
        tracing::error!(account = %account, error = %e, "Cannot store the grant.");
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Authorization failed",
            &format!("Cannot store the grant: {e}"),
        );
    }
    st.supervisor.do_send(RestartAccount(account.clone()));
    tracing::info!(account = %account, "Refresh token stored from the dashboard; account restarting.");
    page(
        StatusCode::OK,
        "Account connected",
        &format!("{account} is connected; its first sync starts now."),
    )
}
