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
use crate::providers::text::escape_markup;

/// A POST form with the session's CSRF token and one button.
fn form(action: &str, csrf: &str, hidden: &[(&str, &str)], label: &str, class: &str) -> String {
    let fields: String = hidden
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape_markup(k),
                escape_markup(v)
            )
        })
        .collect();
    format!(
        "<form method=\"post\" action=\"{}\" class=\"{class}\">{fields}<input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">{}</button></form>",
        escape_markup(action),
        escape_markup(csrf),
        escape_markup(label)
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
                escape_markup(&nonzero.join(", "))
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
            id = escape_markup(&a.config.id),
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
            sk_detail = escape_markup(&skipped_detail),
            err = escape_markup(a.status.last_error.as_deref().unwrap_or("")),
        ));
    }
    let mut events = String::new();
    let tz = st.rt.config().tz();
    for e in crate::audit::recent_events(20).iter().rev() {
        // Names, not only ids: the contact (or its tombstone) by CRM id, else the skip label.
        let who = e.crm_id.map(|id| {
            let name = contact_name(st, id);
            format!(
                "<a href=\"/contacts/{id}\">{}</a> (CRM #{id}) ",
                escape_markup(&name)
            )
        });
        let who = who.unwrap_or_else(|| {
            e.provider_id
                .as_deref()
                .and_then(|pid| skip_name(st, &e.account, pid))
                .map(|n| format!("{} ", escape_markup(&n)))
                .unwrap_or_default()
        });
        events.push_str(&format!(
            "<li><time>{}</time> <b>{}</b> {} {}{}{}</li>\n",
            e.time.with_timezone(&tz).format("%H:%M:%S"),
            escape_markup(
                &serde_json::to_string(&e.action)
                    .unwrap_or_default()
                    .replace('"', "")
            ),
            escape_markup(&e.account),
            who,
            escape_markup(e.provider_id.as_deref().unwrap_or("")),
            e.reason
                .as_deref()
                .map(|r| format!(" — {}", escape_markup(r)))
                .unwrap_or_default(),
        ));
    }
    let charts = charts(st);
    let notice = st
        .rt
        .reload_error()
        .map(|e| format!("<p class=\"notice\" role=\"alert\">The configuration file failed to reload; the previous configuration is still in force: {}</p>", escape_markup(&e)))
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
.chart {{ display: block; margin: .3em 0 1.2em; }} .health a {{ margin-right: 1em; }}
form.search {{ margin: 1em 0; }}
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
<form class="search" method="get" action="/search"><label>Find a contact (name, email or phone)
<input type="search" name="q" required></label> <button>Find</button></form>
<h2>Last 30 days</h2>
{charts}
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
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape_markup(e)))
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

/// A CRM contact's name by id, from the contact or its tombstone.
fn contact_name(st: &ApiState, id: u64) -> String {
    let c = match st.rt.db.contact(id) {
        Ok(Some(c)) => Some(c),
        _ => st.rt.db.tombstone(id).ok().flatten().map(|t| t.contact),
    };
    c.map(|c| crate::model::Fields::of(&c, None).display_name())
        .unwrap_or_else(|| format!("contact {id}"))
}

/// A skipped provider contact's name.
fn skip_name(st: &ApiState, account: &str, provider_id: &str) -> Option<String> {
    st.rt
        .db
        .skipped_of(account)
        .ok()?
        .into_iter()
        .find(|s| s.provider_id == provider_id)
        .and_then(|s| s.label.map(|l| l.name))
}

/// One chart of the last 30 days per account, with links to its excluded, failing and held
/// records.
fn charts(st: &ApiState) -> String {
    let config = st.rt.config();
    let now = chrono::Utc::now();
    let mut out = String::new();
    for a in st.rt.accounts() {
        let id = &a.config.id;
        let Ok(days) = crate::health::history(&st.rt.db, id, config.tz(), 30, now) else {
            continue;
        };
        let unusual = crate::health::unusual_deletions(&days);
        let count = |p: Result<crate::health::Page, crate::store::StoreError>| {
            p.map(|p| p.total).unwrap_or(0)
        };
        let skipped = count(crate::health::skipped(&st.rt.db, id, "", 0, 1));
        let failing = count(crate::health::failing(&st.rt.db, id, "", 0, 1));
        let held = count(crate::health::held(&st.rt.db, id, 0, 1));
        let href = format!("/accounts/{}/health", enc(id));
        out.push_str(&format!(
            "<section class=\"account-health\" data-account=\"{eid}\"><h3>{eid}</h3>\n{svg}\n\
             <p class=\"health\"><a href=\"{href}#excluded\">Excluded: {skipped}</a>\
             <a href=\"{href}#failing\">Failing: {failing}</a><a href=\"{href}#held\">Held deletions: {held}</a></p></section>\n",
            eid = escape_markup(id),
            svg = super::chart::svg(id, &days, &unusual),
        ));
    }
    out
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn shell(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{t} · contact-sync</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }} td, th {{ padding: .3em .7em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }}
.reason {{ font-family: ui-monospace, monospace; }} .error {{ color: #b00020; }}
form.inline {{ display: inline; }} pre {{ background: #f6f6f6; padding: .5em; white-space: pre-wrap; }}
</style></head><body>
<p><a href="/">← Dashboard</a></p>
<h1>{t}</h1>
{body}
</body></html>
"#,
        t = escape_markup(title)
    )
}

#[derive(serde::Deserialize)]
pub struct HealthQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    offset: usize,
}

const PAGE: usize = 50;

fn pager(base: &str, q: &str, offset: usize, total: usize) -> String {
    let mut out = format!(
        "<p>{}–{} of {total}. ",
        (offset + 1).min(total),
        (offset + PAGE).min(total)
    );
    if offset > 0 {
        out.push_str(&format!(
            "<a href=\"{base}?q={}&offset={}\">Previous</a> ",
            enc(q),
            offset.saturating_sub(PAGE)
        ));
    }
    if offset + PAGE < total {
        out.push_str(&format!(
            "<a href=\"{base}?q={}&offset={}\">Next</a>",
            enc(q),
            offset + PAGE
        ));
    }
    out.push_str("</p>");
    out
}

/// `/accounts/{id}/health`: excluded, failing and held records of one account, by name.
pub async fn account_health(
    st: web::Data<ApiState>,
    id: web::Path<String>,
    q: web::Query<HealthQuery>,
    req: HttpRequest,
) -> HttpResponse {
    let Some(session) = st.auth.session(&req) else {
        return login_form(StatusCode::UNAUTHORIZED, None);
    };
    let csrf = session.csrf.clone();
    let id = id.into_inner();
    if st.rt.config().account(&id).is_none() {
        return HttpResponse::NotFound()
            .content_type("text/html; charset=utf-8")
            .body(shell(
                "Not found",
                &format!("<p>Account {} is not configured.</p>", escape_markup(&id)),
            ));
    }
    let db = &st.rt.db;
    let base = format!("/accounts/{}/health", enc(&id));
    let mut body = format!(
        "<form method=\"get\" action=\"{base}\"><label>Search by name or email <input type=\"search\" name=\"q\" value=\"{}\"></label> <button>Search</button></form>\n",
        escape_markup(&q.q)
    );
    let render = |title: &str,
                  anchor: &str,
                  page: Result<crate::health::Page, crate::store::StoreError>,
                  row: &dyn Fn(&serde_json::Value) -> String|
     -> String {
        match page {
            Ok(p) => {
                let rows: String = p.items.iter().map(row).collect();
                format!(
                    "<h2 id=\"{anchor}\">{title} ({})</h2>\n<table class=\"{anchor}\"><tbody>\n{rows}</tbody></table>\n{}",
                    p.total,
                    pager(&base, &q.q, p.offset, p.total)
                )
            }
            Err(e) => format!(
                "<h2 id=\"{anchor}\">{title}</h2><p class=\"error\">{}</p>",
                escape_markup(&e.to_string())
            ),
        }
    };
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let list = |v: &serde_json::Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    body.push_str(&render(
        "Excluded (skipped)",
        "excluded",
        crate::health::skipped(db, &id, &q.q, q.offset, PAGE),
        &|r| {
            format!(
                "<tr><td class=\"reason\">{}: {}</td><td>{}</td><td>{}</td><td><small>{}</small></td></tr>\n",
                escape_markup(&s(&r["reason"])),
                escape_markup(&s(&r["name"])),
                escape_markup(&list(&r["emails"])),
                escape_markup(&list(&r["phones"])),
                escape_markup(&s(&r["provider_id"]))
            )
        },
    ));
    let account = id.clone();
    body.push_str(&render(
        "Failing pushes",
        "failing",
        crate::health::failing(db, &id, &q.q, q.offset, PAGE),
        &|r| {
            let crm = r["crm_id"].as_u64().unwrap_or(0);
            format!(
                "<tr><td><a href=\"/contacts/{crm}\">{}</a></td><td>{}</td><td class=\"error\">{}</td><td>{} attempts</td>\
                 <td>{}</td></tr>\n",
                escape_markup(&s(&r["name"])),
                escape_markup(&s(&r["op"])),
                escape_markup(&s(&r["error"])),
                r["attempts"],
                form(
                    &format!("/accounts/{}/outbox/{crm}/retry", enc(&account)),
                    &csrf,
                    &[],
                    "Retry",
                    "inline retry"
                )
            )
        },
    ));
    body.push_str(&render(
        "Held by the deletion guard",
        "held",
        crate::health::held(db, &id, q.offset, PAGE),
        &|r| {
            let crm = r["crm_id"].as_u64().unwrap_or(0);
            format!(
                "<tr><td><a href=\"/contacts/{crm}\">{}</a></td><td><small>{}</small></td></tr>\n",
                escape_markup(&s(&r["name"])),
                escape_markup(&s(&r["provider_id"]))
            )
        },
    ));
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(shell(&format!("Sync health of {id}"), &body))
}

/// `POST /accounts/{id}/outbox/{contact}/retry` from the dashboard: retry, then back.
pub async fn retry(
    st: web::Data<ApiState>,
    path: web::Path<(String, u64)>,
    req: HttpRequest,
    csrf: web::Form<CsrfForm>,
) -> HttpResponse {
    if let Err(r) = action_session(&st, &req, &csrf) {
        return *r;
    }
    let (account, contact) = path.into_inner();
    match super::health::retry_entry(&st, &account, contact) {
        Ok(()) => HttpResponse::SeeOther()
            .insert_header((
                actix_web::http::header::LOCATION,
                format!("/accounts/{}/health#failing", enc(&account)),
            ))
            .finish(),
        Err(e) => HttpResponse::build(actix_web::ResponseError::status_code(&e))
            .content_type("text/html; charset=utf-8")
            .body(shell(
                "Retry failed",
                &format!("<p class=\"error\">{}</p>", escape_markup(&e.to_string())),
            )),
    }
}

/// `/search?q=`: CRM contacts and excluded provider contacts matching a name, email or phone.
pub async fn search(
    st: web::Data<ApiState>,
    q: web::Query<HealthQuery>,
    req: HttpRequest,
) -> HttpResponse {
    if st.auth.session(&req).is_none() {
        return login_form(StatusCode::UNAUTHORIZED, None);
    }
    let accounts: Vec<String> = st
        .rt
        .accounts()
        .iter()
        .map(|a| a.config.id.clone())
        .collect();
    let found = match crate::health::search(&st.rt.db, &accounts, &q.q, 50) {
        Ok(f) => f,
        Err(e) => {
            return HttpResponse::ServiceUnavailable()
                .content_type("text/html; charset=utf-8")
                .body(shell(
                    "Search",
                    &format!("<p class=\"error\">{}</p>", escape_markup(&e.to_string())),
                ))
        }
    };
    let mut body = format!(
        "<form method=\"get\" action=\"/search\"><input type=\"search\" name=\"q\" value=\"{}\"> <button>Find</button></form>\n<h2>In the CRM</h2>\n<ul class=\"found\">",
        escape_markup(&q.q)
    );
    let empty = Vec::new();
    let contacts = found["contacts"].as_array().unwrap_or(&empty);
    for c in contacts {
        body.push_str(&format!(
            "<li><a href=\"/contacts/{id}\">{}</a> (CRM #{id}) {}</li>\n",
            escape_markup(c["name"].as_str().unwrap_or("")),
            escape_markup(
                &c["emails"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            ),
            id = c["id"]
        ));
    }
    if contacts.is_empty() {
        body.push_str("<li>No CRM contact matches.</li>");
    }
    body.push_str("</ul>\n<h2>Excluded by a sync (not in the CRM)</h2>\n<ul class=\"excluded\">");
    let skipped = found["skipped"].as_array().unwrap_or(&empty);
    for r in skipped {
        body.push_str(&format!(
            "<li><span class=\"reason\">{}: {}</span> — account {} ({})</li>\n",
            escape_markup(r["reason"].as_str().unwrap_or("")),
            escape_markup(r["name"].as_str().unwrap_or("")),
            escape_markup(r["account"].as_str().unwrap_or("")),
            escape_markup(r["provider_id"].as_str().unwrap_or(""))
        ));
    }
    if skipped.is_empty() {
        body.push_str("<li>No skipped provider contact matches.</li>");
    }
    body.push_str("</ul>");
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(shell(&format!("Find “{}”", q.q), &body))
}

/// `/contacts/{id}`: the story of one CRM contact.
pub async fn contact(
    st: web::Data<ApiState>,
    id: web::Path<u64>,
    req: HttpRequest,
) -> HttpResponse {
    if st.auth.session(&req).is_none() {
        return login_form(StatusCode::UNAUTHORIZED, None);
    }
    let story = match crate::health::story(&st.rt.db, *id) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return HttpResponse::NotFound()
                .content_type("text/html; charset=utf-8")
                .body(shell("Not found", &format!("<p>No contact {id}.</p>")))
        }
        Err(e) => {
            return HttpResponse::ServiceUnavailable()
                .content_type("text/html; charset=utf-8")
                .body(shell(
                    "Contact",
                    &format!("<p class=\"error\">{}</p>", escape_markup(&e.to_string())),
                ))
        }
    };
    let tz = st.rt.config().tz();
    let name = story["name"].as_str().unwrap_or("(deleted)").to_string();
    let pretty =
        |v: &serde_json::Value| escape_markup(&serde_json::to_string_pretty(v).unwrap_or_default());
    let mut body = String::new();
    if story["deleted"] == true {
        body.push_str(&format!(
            "<p class=\"error\">Deleted from the CRM{}.</p>",
            story["deleted_at"]
                .as_str()
                .map(|t| format!(" at {t}"))
                .unwrap_or_default()
        ));
    }
    body.push_str(&format!(
        "<h2>Fields</h2>\n<pre class=\"fields\">{}</pre>\n",
        pretty(&story["contact"])
    ));
    body.push_str("<h2>Links</h2>\n<table class=\"links\"><thead><tr><th>Account</th><th>Provider id</th><th>Base snapshot (last agreed values)</th></tr></thead><tbody>\n");
    for l in story["links"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>\n",
            escape_markup(l["account"].as_str().unwrap_or("")),
            escape_markup(l["provider_id"].as_str().unwrap_or("")),
            pretty(&l["base"])
        ));
    }
    body.push_str("</tbody></table>\n<h2>What happened</h2>\n<table class=\"story\"><thead><tr><th>When</th><th>Action</th><th>Account</th><th>Fields</th><th>Reason</th></tr></thead><tbody>\n");
    for e in story["events"].as_array().into_iter().flatten() {
        let when = e["time"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| {
                t.with_timezone(&tz)
                    .format("%Y-%m-%d %H:%M:%S %Z")
                    .to_string()
            })
            .unwrap_or_default();
        let fields = e["fields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        body.push_str(&format!(
            "<tr data-seq=\"{}\"><td>{}</td><td><b>{}</b>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            e["seq"],
            escape_markup(&when),
            escape_markup(e["action"].as_str().unwrap_or("")),
            e["direction"].as_str().map(|d| format!(" <small>{}</small>", escape_markup(d))).unwrap_or_default(),
            escape_markup(e["account"].as_str().unwrap_or("")),
            escape_markup(&fields),
            escape_markup(e["reason"].as_str().unwrap_or(""))
        ));
    }
    body.push_str("</tbody></table>");
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(shell(&format!("{name} (CRM #{id})"), &body))
}
