//! Sync health, read from the store: an account's history of daily metrics, the provider
//! contacts it excludes (skipped, by name), the CRM changes that fail to reach the provider,
//! the deletions the guard holds, and the story of one CRM contact. The API
//! (`/api/v1/accounts/{id}/history`, `…/skipped`, `…/failing`, `…/held`,
//! `/api/v1/contacts/{id}/history`, `/api/v1/search`), the dashboard and
//! `contact-sync explain` all serve these.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use crate::model::{ContactId, DayMetrics};
use crate::store::{Db, OutboxOp, StoreError};

/// Days of history served at the most.
pub const MAX_HISTORY_DAYS: u32 = 400;

/// One day of an account's metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    pub date: String,
    #[serde(flatten)]
    pub metrics: Value,
    #[serde(skip)]
    pub raw: DayMetrics,
}

/// The last `days` days (today included, in `tz`), oldest first; days without activity
/// are zeros.
pub fn history(
    db: &Db,
    account: &str,
    tz: chrono_tz::Tz,
    days: u32,
    now: DateTime<Utc>,
) -> Result<Vec<Day>, StoreError> {
    let days = days.clamp(1, MAX_HISTORY_DAYS);
    let today = now.with_timezone(&tz).date_naive();
    let first = today - Duration::days(i64::from(days) - 1);
    let fmt = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
    let stored: std::collections::HashMap<String, DayMetrics> = db
        .metrics_range(account, &fmt(first), &fmt(today))?
        .into_iter()
        .collect();
    Ok((0..i64::from(days))
        .map(|i| {
            let date = fmt(first + Duration::days(i));
            let raw = stored.get(&date).cloned().unwrap_or_default();
            Day {
                metrics: crate::api::today_json(&raw),
                date,
                raw,
            }
        })
        .collect())
}

/// Whether the day's deletions stand out against the period: more than 10 and more than
/// three times the median of the other days with deletions (or any at all when no other day
/// had one and there are more than 10).
pub fn unusual_deletions(days: &[Day]) -> Vec<bool> {
    days.iter()
        .enumerate()
        .map(|(i, d)| {
            let n = d.raw.deleted_from_provider;
            if n <= 10 {
                return false;
            }
            let mut others: Vec<u64> = days
                .iter()
                .enumerate()
                .filter(|(j, o)| *j != i && o.raw.deleted_from_provider > 0)
                .map(|(_, o)| o.raw.deleted_from_provider)
                .collect();
            if others.is_empty() {
                return true;
            }
            others.sort_unstable();
            let median = others[others.len() / 2];
            n > 3 * median
        })
        .collect()
}

/// A page of a filtered list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    pub total: usize,
    pub offset: usize,
    pub items: Vec<Value>,
}

fn folded(s: &str) -> String {
    caseless::default_case_fold_str(s)
}

/// Whether `q` (case-insensitive; digits alone for phones) is in any of `hay`.
fn matches(q: &str, name: &str, emails: &[String], phones: &[String]) -> bool {
    let q = q.trim();
    if q.is_empty() {
        return true;
    }
    let fq = folded(q);
    if folded(name).contains(&fq) || emails.iter().any(|e| folded(e).contains(&fq)) {
        return true;
    }
    let digits: String = q.chars().filter(|c| c.is_ascii_digit()).collect();
    digits.len() >= 4
        && phones.iter().any(|p| {
            p.chars()
                .filter(|c| c.is_ascii_digit())
                .collect::<String>()
                .contains(&digits)
        })
}

fn page(items: Vec<Value>, offset: usize, limit: usize) -> Page {
    let total = items.len();
    Page {
        total,
        offset,
        items: items.into_iter().skip(offset).take(limit.max(1)).collect(),
    }
}

/// Provider contacts the account skips in their current version, by name.
pub fn skipped(
    db: &Db,
    account: &str,
    q: &str,
    offset: usize,
    limit: usize,
) -> Result<Page, StoreError> {
    let mut rows: Vec<Value> = db
        .skipped_of(account)?
        .into_iter()
        .filter_map(|s| {
            let (name, emails, phones) = match &s.label {
                Some(l) => (l.name.clone(), l.emails.clone(), l.phones.clone()),
                None => ("(unknown)".to_string(), vec![], vec![]),
            };
            matches(q, &name, &emails, &phones).then(|| {
                json!({
                    "account": account,
                    "provider_id": s.provider_id,
                    "reason": s.mark.reason.as_str(),
                    "name": name,
                    "emails": emails,
                    "phones": phones,
                })
            })
        })
        .collect();
    rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(page(rows, offset, limit))
}

/// CRM changes of the account that the provider rejected or that keep failing.
pub fn failing(
    db: &Db,
    account: &str,
    q: &str,
    offset: usize,
    limit: usize,
) -> Result<Page, StoreError> {
    let mut rows = vec![];
    for e in db.outbox_for(account)? {
        if !e.failed && e.last_error.is_none() {
            continue;
        }
        let c = db.contact(e.contact_id)?;
        let (name, emails, phones) = match &c {
            Some(c) => (
                crate::model::Fields::of(c, None).display_name(),
                c.emails.clone(),
                c.phones.clone(),
            ),
            None => ("(deleted contact)".to_string(), vec![], vec![]),
        };
        if !matches(q, &name, &emails, &phones) {
            continue;
        }
        let op = match &e.op {
            OutboxOp::Create => "create".to_string(),
            OutboxOp::Update { fields } => format!("update {}", fields.join(", ")),
            OutboxOp::Delete { .. } => "delete".to_string(),
        };
        rows.push(json!({
            "account": account,
            "crm_id": e.contact_id,
            "name": name,
            "emails": emails,
            "op": op,
            "error": e.last_error,
            "attempts": e.attempts,
            "failed": e.failed,
            "since": e.created_at.to_rfc3339(),
        }));
    }
    Ok(page(rows, offset, limit))
}

/// The deletions the deletion guard holds for the account, with the CRM contacts' names.
pub fn held(db: &Db, account: &str, offset: usize, limit: usize) -> Result<Page, StoreError> {
    let mut rows = vec![];
    for (provider_id, crm_id) in crate::actors::account::held_deletions(db, account) {
        let name = db
            .contact(crm_id)?
            .map(|c| crate::model::Fields::of(&c, None).display_name())
            .unwrap_or_else(|| "(deleted contact)".into());
        rows.push(json!({
            "account": account,
            "provider_id": provider_id,
            "crm_id": crm_id,
            "name": name,
        }));
    }
    Ok(page(rows, offset, limit))
}

/// The story of one CRM contact: its fields, links with their base snapshots, and every
/// audit event that named it, oldest first. `None` when the contact never existed.
pub fn story(db: &Db, id: ContactId) -> Result<Option<Value>, StoreError> {
    let (contact, deleted_at) = match db.contact(id)? {
        Some(c) => (c, None),
        None => match db.tombstone(id)? {
            Some(t) => (t.contact, Some(t.deleted_at)),
            None => {
                let events = db.contact_events(id)?;
                if events.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(json!({
                    "id": id,
                    "contact": Value::Null,
                    "deleted": true,
                    "links": [],
                    "events": parse_events(events),
                })));
            }
        },
    };
    let company = match contact.company_id {
        Some(c) => db.company_name(c)?.map(|n| n.to_string()),
        None => None,
    };
    let name = crate::model::Fields::of(&contact, company.clone()).display_name();
    let mut links = vec![];
    for l in &contact.links {
        let base = db.base(&l.account, &l.provider_id)?;
        let link = db.link(&l.account, &l.provider_id)?;
        links.push(json!({
            "account": l.account,
            "provider_id": l.provider_id,
            "etag": link.and_then(|k| k.etag),
            "base": base,
        }));
    }
    Ok(Some(json!({
        "id": id,
        "name": name,
        "contact": {
            "id": contact.id,
            "first_name": contact.first_name,
            "last_name": contact.last_name,
            "emails": contact.emails,
            "phones": contact.phones,
            "address": contact.address,
            "company": company,
            "job_title": contact.job_title,
            "birthday": contact.birthday.map(|d| d.format("%Y-%m-%d").to_string()),
            "has_photo": contact.has_photo,
            "created_at": contact.created_at.to_rfc3339(),
            "updated_at": contact.updated_at.to_rfc3339(),
        },
        "deleted": deleted_at.is_some(),
        "deleted_at": deleted_at.map(|t| t.to_rfc3339()),
        "links": links,
        "events": parse_events(db.contact_events(id)?),
    })))
}

fn parse_events(lines: Vec<Vec<u8>>) -> Vec<Value> {
    lines
        .into_iter()
        .filter_map(|l| serde_json::from_slice(&l).ok())
        .collect()
}

/// CRM contacts and skipped provider contacts that match `q`: a CRM id, an email, a phone
/// number or (part of) a name. At most `limit` of each.
pub fn search(db: &Db, accounts: &[String], q: &str, limit: usize) -> Result<Value, StoreError> {
    let q = q.trim();
    let mut contacts = vec![];
    if q.is_empty() {
        return Ok(json!({"query": q, "contacts": [], "skipped": []}));
    }
    if let Ok(id) = q.trim_start_matches('#').parse::<u64>() {
        if let Some(c) = db.contact(id)? {
            contacts.push(brief(db, &c)?);
        }
    }
    let mut after = None;
    'scan: loop {
        let chunk = db.contacts_page(after, 1000)?;
        let Some(last) = chunk.last().map(|c| c.id) else {
            break;
        };
        for c in &chunk {
            let name = crate::model::Fields::of(c, None).display_name();
            if contacts.iter().all(|x: &Value| x["id"] != c.id)
                && matches(q, &name, &c.emails, &c.phones)
            {
                contacts.push(brief(db, c)?);
                if contacts.len() >= limit {
                    break 'scan;
                }
            }
        }
        after = Some(last);
    }
    let mut skipped_rows = vec![];
    for a in accounts {
        skipped_rows.extend(skipped(db, a, q, 0, limit)?.items);
    }
    skipped_rows.truncate(limit);
    Ok(json!({"query": q, "contacts": contacts, "skipped": skipped_rows}))
}

fn brief(db: &Db, c: &crate::model::Contact) -> Result<Value, StoreError> {
    let company = match c.company_id {
        Some(id) => db.company_name(id)?.map(|n| n.to_string()),
        None => None,
    };
    Ok(json!({
        "id": c.id,
        "name": crate::model::Fields::of(c, None).display_name(),
        "emails": c.emails,
        "phones": c.phones,
        "company": company,
        "links": c.links.iter().map(|l| json!({"account": l.account, "provider_id": l.provider_id})).collect::<Vec<_>>(),
    }))
}

/// "3 min ago", "2 h ago", "yesterday"…: how long before `now` an instant was.
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds();
    match s {
        i64::MIN..=-1 => "just now".into(),
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        86_400..=172_799 => "yesterday".into(),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// An instant in the configured time zone, to the second, with how long ago it was:
/// `2026-11-29 16:04:04 CET (3 min ago)`.
pub fn when(t: DateTime<Utc>, tz: chrono_tz::Tz, now: DateTime<Utc>) -> String {
    format!(
        "{} ({})",
        t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z"),
        ago(t, now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Batch, Op};

    fn metrics(deleted: u64, added: u64) -> DayMetrics {
        DayMetrics {
            deleted_from_provider: deleted,
            added_to_crm: added,
            ..Default::default()
        }
    }

    #[test]
    fn history_lists_every_day_of_the_period_with_zeros_for_quiet_days() {
        let db = Db::in_memory(crate::normalize::region("US"));
        let now = Utc::now();
        let day = |n: i64| (now - Duration::days(n)).format("%Y-%m-%d").to_string();
        let mut b = Batch::default();
        for (n, m) in [(0, metrics(1, 5)), (2, metrics(40, 0)), (40, metrics(9, 9))] {
            b.push(Op::AddMetrics {
                account: "g".into(),
                day: day(n),
                delta: m,
            });
        }
        db.commit(&b).unwrap();
        let h = history(&db, "g", chrono_tz::UTC, 30, now).unwrap();
        assert_eq!(h.len(), 30);
        assert_eq!(h[29].date, day(0));
        assert_eq!(h[29].metrics["added"]["to_crm"], 5);
        assert_eq!(h[27].metrics["deleted"]["from_provider"], 40);
        assert_eq!(h[28].metrics["deleted"]["from_provider"], 0);
        assert_eq!(h[0].date, day(29), "the 40-day-old metrics are outside");
        let unusual = unusual_deletions(&h);
        assert!(unusual[27], "40 deletions against a usual 1 stand out");
        assert!(!unusual[29]);
    }

    #[test]
    fn relative_times_read_like_a_person_would_say_them() {
        let now = Utc::now();
        assert_eq!(ago(now - Duration::seconds(5), now), "5 s ago");
        assert_eq!(ago(now - Duration::minutes(3), now), "3 min ago");
        assert_eq!(ago(now - Duration::hours(2), now), "2 h ago");
        assert_eq!(ago(now - Duration::hours(30), now), "yesterday");
        assert_eq!(ago(now - Duration::days(9), now), "9 days ago");
        let t = DateTime::parse_from_rfc3339("2026-11-29T15:04:04.114602794+00:00")
            .unwrap()
            .with_timezone(&Utc);
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        assert!(when(t, berlin, t + Duration::minutes(3)).starts_with("2026-11-29 16:04:04 CET"));
    }

    #[test]
    fn search_matches_names_emails_and_phone_digits() {
        assert!(matches("jane", "Jane Doe", &[], &[]));
        assert!(matches("JANE@ACME", "x", &["jane@acme.com".into()], &[]));
        assert!(matches("(555) 0101", "x", &[], &["+15550101".into()]));
        assert!(!matches("bob", "Jane Doe", &["jane@acme.com".into()], &[]));
    }
}
