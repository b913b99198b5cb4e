//! The dashboard at `/`: accounts, their state and today's metrics (hover for the
//! breakdown), skipped counts, the last audit events, and a notice when the configuration
//! failed to reload. One self-contained page: no external assets, no scripts needed.
//!
//! It needs an operator session (`/login` exchanges the operator token for a cookie), and
//! every action on it is a POST form carrying the session's CSRF token.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::auth::{csrf_ok, Session};
use super::ApiState;
use crate::model::{AccountState, SkipReason};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A POST form with the session's CSRF token and one button.
fn form(action: &str, csrf: &str, hidden: &[(&str, &str)], label: &str, class: &str) -> String {
    let fields: String = hidden
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                esc(k),
                esc(v)
            )
        })
        .collect();
    format!(
        "<form method=\"post\" action=\"{}\" class=\"{class}\">{fields}<input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">{}</button></form>",
        esc(action),
        esc(csrf),
        esc(label)
    )
}

pub fn render(st: &ApiState, session: &Session) -> String {
    let csrf = session.csrf.as_str();
    let mut rows = String::new();
    let today = st.rt.today();
    for a in st.rt.accounts() {
        let m = st.rt.db.metrics(&a.config.id, &today).unwrap_or_default();
        let added = m.added_to_crm + m.added_to_provider;
        let updated = m.updated_in_crm + m.updated_in_provider;
        let skipped: u64 = m.skipped.values().sum();
        let skipped_detail = SkipReason::ALL
            .iter()
            .map(|r| format!("{}: {}", r.as_str(), m.skipped.get(r).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ");
        let nonzero: Vec<String> = SkipReason::ALL
            .iter()
            .filter_map(|r| {
                let n = m.skipped.get(r).copied().unwrap_or(0);
                (n > 0).then(|| format!("{}: {n}", r.as_str()))
            })
            .collect();
        let reasons = if nonzero.is_empty() {
            String::new()
        } else {
            format!(
                "<small class=\"reasons\">{}</small>",
                esc(&nonzero.join(", "))
            )
        };
        let connect = match a.status.state {
            AccountState::NotConnected | AccountState::ReauthRequired => form(
                &format!("/oauth/{}/start", a.config.provider.as_str()),
                csrf,
                &[("account", &a.config.id)],
                if a.status.state == AccountState::NotConnected {
                    "Add account"
                } else {
                    "Reconnect"
                },
                "connect",
            ),
            AccountState::DeletionHeld => form(
                &format!(
                    "/dashboard/accounts/{}/approve",
                    url::form_urlencoded::byte_serialize(a.config.id.as_bytes())
                        .collect::<String>()
                ),
                csrf,
                &[],
                "Approve held deletions",
                "approve",
            ),
            _ => String::new(),
        };
        let progress = match (&a.status.progress, a.status.state) {
            (Some(p), AccountState::Syncing) => {
                let fetched = format!("{} contacts, {} pages fetched", p.contacts, p.pages);
                match p.total.filter(|t| *t > 0) {
                    Some(t) => format!(
                        "<progress max=\"100\" value=\"{}\" title=\"{fetched} of about {t}\"></progress>",
                        (p.contacts * 100 / t).min(100)
                    ),
                    // No announced total (Graph): an indeterminate bar.
                    None => format!("<progress title=\"{fetched}\"></progress>"),
                }
            }
            (None, AccountState::Syncing) => "<progress title=\"starting\"></progress>".into(),
            _ => String::new(),
        };
        rows.push_str(&format!(
            "<tr data-account=\"{id}\"><td>{id}</td><td>{prov}</td><td>{group}</td><td>{dir}</td>\
             <td class=\"state {state}\">{state}{connect}{progress}</td><td>{last}</td>\
             <td class=\"metric added\" title=\"Created in the CRM from the provider: {a_crm}&#10;Created in the provider from the CRM: {a_prov}\">{added}</td>\
             <td class=\"metric updated\" title=\"Updated in the CRM: {u_crm}&#10;Updated in the provider: {u_prov}\">{updated}</td>\
             <td class=\"metric deleted\" title=\"Deleted in the CRM because {prov} account {id} deleted them: {d}\">{d}</td>\
             <td class=\"metric skipped\" title=\"{sk_detail}\">{skipped}{reasons}</td><td class=\"error\">{err}</td></tr>\n",
            id = esc(&a.config.id),
            prov = a.config.provider.as_str(),
            group = a.config.group.as_str(),
            dir = a.config.direction.as_str(),
            state = a.status.state.as_str(),
            last = a.status.last_sync.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_else(|| "never".into()),
            a_crm = m.added_to_crm,
            a_prov = m.added_to_provider,
            u_crm = m.updated_in_crm,
            u_prov = m.updated_in_provider,
            d = m.deleted_from_provider,
            sk_detail = esc(&skipped_detail),
            err = esc(a.status.last_error.as_deref().unwrap_or("")),
        ));
    }
    let mut events = String::new();
    for e in crate::audit::recent_events(20).iter().rev() {
        events.push_str(&format!(
            "<li><time>{}</time> <b>{}</b> {} {}{}{}</li>\n",
            e.time.format("%H:%M:%S"),
            esc(&serde_json::to_string(&e.action)
                .unwrap_or_default()
                .replace('"', "")),
            esc(&e.account),
            e.crm_id.map(|i| format!("CRM #{i} ")).unwrap_or_default(),
            esc(e.provider_id.as_deref().unwrap_or("")),
            e.reason
                .as_deref()
                .map(|r| format!(" — {}", esc(r)))
                .unwrap_or_default(),
        ));
    }
    let notice = st
        .rt
        .reload_error()
        .map(|e| format!("<p class=\"notice\" role=\"alert\">The configuration file failed to reload; the previous configuration is still in force: {}</p>", esc(&e)))
        .unwrap_or_default();
    let contacts = st.rt.db.contact_count().unwrap_or(0);
    let sync_form = form("/dashboard/sync", csrf, &[], "Sync now", "top");
    let logout_form = form("/logout", csrf, &[], "Log out", "top");
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>contact-sync</title>
<meta http-equiv="refresh" content="10">
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .4em .8em; border-bottom: 1px solid #ddd; text-align: left; }}
.metric {{ font-weight: bold; cursor: help; text-decoration: underline dotted; }}
.state.idle {{ color: #176f2c; }} .state.error, .state.reauth_required, .state.limit_exceeded, .state.deletion_held {{ color: #b00020; }}
.notice {{ background: #fff3cd; border: 1px solid #e0c36c; padding: .6em; }}
.error {{ color: #b00020; max-width: 30em; }}
.reasons {{ display: block; font-weight: normal; color: #555; }}
progress {{ display: block; width: 8em; }}
form.connect, form.approve {{ display: inline; margin-left: .5em; }}
form.top {{ display: inline; }}
</style></head><body>
<h1>contact-sync</h1>
<p>{sync_form} {logout_form}</p>
{notice}
<p>{contacts} contacts in the CRM. Metrics are for today ({today}); hover a number for its breakdown.</p>
<table><thead><tr><th>Account</th><th>Provider</th><th>Group</th><th>Direction</th><th>State</th><th>Last sync</th>
<th>Added Today</th><th>Updated Today</th><th>Deleted Today</th><th>Skipped Today</th><th>Last error</th></tr></thead>
<tbody>
{rows}</tbody></table>
<h2>Recent events</h2>
<ul class="events">
{events}</ul>
</body></html>
"#
    )
}

/// `GET /`: the dashboard for an operator session; the login form (401) otherwise.
pub async fn page(st: web::Data<ApiState>, req: HttpRequest) -> HttpResponse {
    match st.auth.session(&req) {
        Some(s) => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .insert_header(("Cache-Control", "no-store"))
            .body(render(&st, &s)),
        None => login_form(StatusCode::UNAUTHORIZED, None),
    }
}

/// `/login#token=…` (the link `demo` prints) logs in at once: the fragment never reaches
/// the server or its logs; the script posts it like the form would, and drops it from the
/// address bar.
const FRAGMENT_LOGIN: &str = r#"<script>
(function () {
  var m = /^#token=([0-9A-Za-z_.~-]+)$/.exec(location.hash);
  if (!m) return;
  history.replaceState(null, "", "/login");
  var f = document.getElementById("login");
  f.elements.token.value = m[1];
  f.submit();
})();
</script>"#;

fn login_form(status: StatusCode, error: Option<&str>) -> HttpResponse {
    let script = if error.is_none() { FRAGMENT_LOGIN } else { "" };
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>contact-sync: log in</title>
<style>body {{ font: 14px system-ui, sans-serif; margin: 2em; }} .error {{ color: #b00020; }}</style></head><body>
<h1>contact-sync</h1>
<p>The dashboard is for operators. Log in with the operator token (the content of <code>admin_token_file</code>).</p>
{error}<form method="post" action="/login" id="login">
<label>Operator token <input type="password" name="token" autocomplete="current-password" required></label>
<button type="submit">Log in</button>
</form>{script}</body></html>
"#
        ))
}

/// `GET /login`.
pub async fn login_page(st: web::Data<ApiState>, req: HttpRequest) -> HttpResponse {
    if st.auth.session(&req).is_some() {
        return see_other("/", None);
    }
    login_form(StatusCode::OK, None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

fn see_other(to: &str, cookie: Option<String>) -> HttpResponse {
    let mut r = HttpResponse::SeeOther();
    r.insert_header(("Location", to))
        .insert_header(("Cache-Control", "no-store"));
    if let Some(c) = cookie {
        r.insert_header(("Set-Cookie", c));
    }
    r.finish()
}

/// `POST /login` (form `token`): the operator token for a session cookie.
pub async fn login(st: web::Data<ApiState>, form: web::Form<LoginForm>) -> HttpResponse {
    match st.auth.login(form.token.trim()) {
        Some(s) => {
            tracing::info!("Operator logged in to the dashboard.");
            see_other("/", Some(st.auth.session_cookie(Some(&s))))
        }
        None => {
            tracing::warn!("Dashboard login refused: not the operator token.");
            login_form(
                StatusCode::FORBIDDEN,
                Some("That is not the operator token (admin_token_file). The CRM token cannot open the dashboard."),
            )
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// The session of a dashboard action, when its form carries the session's CSRF token.
fn action_session(
    st: &ApiState,
    req: &HttpRequest,
    form: &CsrfForm,
) -> Result<Session, Box<HttpResponse>> {
    let Some(s) = st.auth.session(req) else {
        return Err(Box::new(login_form(
            StatusCode::FORBIDDEN,
            Some("This action needs an operator session; log in first."),
        )));
    };
    if !csrf_ok(&s, &form.csrf) {
        return Err(Box::new(HttpResponse::Forbidden()
            .content_type("text/plain; charset=utf-8")
            .body(
                "Refused: the form's CSRF token does not match your session; reload the dashboard.",
            )));
    }
    Ok(s)
}

/// `POST /logout`.
pub async fn logout(
    st: web::Data<ApiState>,
    req: HttpRequest,
    form: web::Form<CsrfForm>,
) -> HttpResponse {
    match action_session(&st, &req, &form) {
        Ok(s) => {
            st.auth.logout(&s.id);
            see_other("/login", Some(st.auth.session_cookie(None)))
        }
        Err(r) => *r,
    }
}

/// `POST /dashboard/sync`: a round of every account now.
pub async fn sync_now(
    st: web::Data<ApiState>,
    req: HttpRequest,
    form: web::Form<CsrfForm>,
) -> HttpResponse {
    if let Err(r) = action_session(&st, &req, &form) {
        return *r;
    }
    st.supervisor.do_send(crate::actors::supervisor::SyncNow);
    see_other("/", None)
}

/// `POST /dashboard/accounts/{id}/approve`: applies the account's held deletions.
pub async fn approve(
    st: web::Data<ApiState>,
    id: web::Path<String>,
    req: HttpRequest,
    form: web::Form<CsrfForm>,
) -> HttpResponse {
    if let Err(r) = action_session(&st, &req, &form) {
        return *r;
    }
    match super::approve(&st, &id) {
        Ok(()) => see_other("/", None),
        Err(e) => HttpResponse::build(actix_web::ResponseError::status_code(&e))
            .content_type("text/plain; charset=utf-8")
            .body(e.to_string()),
    }
}
