//! The dashboard at `/`: accounts, their state and today's metrics (hover for the
//! breakdown), skipped counts, the last audit events, and a notice when the configuration
//! failed to reload. One self-contained page: no external assets, no scripts needed.

use actix_web::{web, HttpResponse};

use super::ApiState;
use crate::model::{AccountState, SkipReason};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

pub fn render(st: &ApiState) -> String {
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
            AccountState::NotConnected | AccountState::ReauthRequired => format!(
                " <a class=\"connect\" href=\"/oauth/{prov}/start?account={id}\">{label}</a>",
                prov = a.config.provider.as_str(),
                id = url::form_urlencoded::byte_serialize(a.config.id.as_bytes())
                    .collect::<String>(),
                label = if a.status.state == AccountState::NotConnected {
                    "Add account"
                } else {
                    "Reconnect"
                },
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
a.connect {{ margin-left: .5em; }}
</style></head><body>
<h1>contact-sync</h1>
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

pub async fn page(st: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(render(&st))
}
