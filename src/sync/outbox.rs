//! Two-way: the durable outbox of CRM changes waiting to reach a provider (SPEC §2, §4).
//!
//! An entry is written in the same transaction as the CRM change that causes it, one entry
//! per account and contact; later edits coalesce into it ([`coalesce`]). The account actor
//! turns entries into [`PushOp`]s ([`prepare`]), the provider applies them with its batch
//! endpoints, and [`apply_results`] commits what happened: new links and base snapshots
//! (so the provider's echo of our own write is recognised and ignored), metrics, audit
//! events, and retries with backoff for what failed.

use chrono::{DateTime, Utc};

use crate::audit::{self, AuditEvent};
use crate::config::{AccountConfig, Group};
use crate::model::{field, Contact, ContactId, DayMetrics, Fields, LinkRecord, LinkRef};
use crate::providers::{ProviderError, PushOp, PushResult};
use crate::store::{Batch, Db, Op, OutboxEntry, OutboxOp, StoreError};

/// Most entries pushed in one round.
pub const MAX_PUSH: usize = 2000;

/// Folds a new change into the pending entry of the same account and contact. `None`
/// means the two cancel out (created then deleted before it was pushed).
pub fn coalesce(
    existing: Option<OutboxEntry>,
    account: &str,
    contact_id: ContactId,
    op: OutboxOp,
    now: DateTime<Utc>,
) -> Option<OutboxEntry> {
    let fresh = |op| OutboxEntry {
        account: account.to_string(),
        contact_id,
        op,
        attempts: 0,
        not_before: None,
        last_error: None,
        failed: false,
        created_at: now,
    };
    let Some(mut e) = existing else {
        return Some(fresh(op));
    };
    let merged = match (&e.op, op) {
        (OutboxOp::Create, OutboxOp::Update { .. }) => OutboxOp::Create,
        (OutboxOp::Create, OutboxOp::Delete { .. }) => return None,
        (OutboxOp::Update { fields: a }, OutboxOp::Update { fields: b }) => {
            let mut all = a.clone();
            for f in b {
                if !all.contains(&f) {
                    all.push(f);
                }
            }
            OutboxOp::Update { fields: all }
        }
        (OutboxOp::Delete { provider_id }, _) => OutboxOp::Delete {
            provider_id: provider_id.clone(),
        },
        (_, new) => new,
    };
    e.op = merged;
    // A new edit gives a rejected entry another chance.
    e.failed = false;
    e.not_before = None;
    Some(e)
}

/// The ops that record `op` for `account` and `contact`, given its pending entry.
pub fn enqueue(
    existing: Option<OutboxEntry>,
    account: &str,
    contact_id: ContactId,
    op: OutboxOp,
    now: DateTime<Utc>,
) -> Op {
    match coalesce(existing, account, contact_id, op, now) {
        Some(e) => Op::PutOutbox(e),
        None => Op::DeleteOutbox {
            account: account.to_string(),
            contact: contact_id,
        },
    }
}

/// A contact's synced fields, with its company by name.
pub fn fields_of(db: &Db, c: &Contact) -> Result<Fields, StoreError> {
    let organization = match c.company_id {
        Some(id) => db.company_name(id)?.map(|n| n.to_string()),
        None => None,
    };
    Ok(Fields::of(c, organization))
}

/// Names of the fields that differ between two versions of a contact.
pub fn changed_fields(a: &Fields, b: &Fields) -> Vec<String> {
    let mut out = vec![];
    let mut push = |cond: bool, name: &str| {
        if cond {
            out.push(name.to_string());
        }
    };
    push(
        a.first_name != b.first_name || a.last_name != b.last_name,
        field::NAME,
    );
    push(a.emails != b.emails, field::EMAILS);
    push(a.phones != b.phones, field::PHONES);
    push(a.address != b.address, field::ADDRESS);
    push(a.organization != b.organization, field::COMPANY);
    push(a.job_title != b.job_title, field::JOB_TITLE);
    push(a.birthday != b.birthday, field::BIRTHDAY);
    out
}

/// Copies one named field from `from` into `into`.
pub fn set_field(into: &mut Fields, from: &Fields, name: &str) {
    match name {
        field::NAME => {
            into.first_name = from.first_name.clone();
            into.last_name = from.last_name.clone();
        }
        field::EMAILS => into.emails = from.emails.clone(),
        field::PHONES => into.phones = from.phones.clone(),
        field::ADDRESS => into.address = from.address.clone(),
        field::COMPANY => into.organization = from.organization.clone(),
        field::JOB_TITLE => into.job_title = from.job_title.clone(),
        field::BIRTHDAY => into.birthday = from.birthday,
        _ => {}
    }
}

/// One entry on its way to the provider.
#[derive(Debug, Clone)]
pub struct PushItem {
    pub entry: OutboxEntry,
    pub op: PushOp,
}

/// Turns an account's due entries into provider operations. Entries that have become
/// pointless (the contact is gone, or already linked) are dropped by the returned ops.
pub fn prepare(
    db: &Db,
    account: &AccountConfig,
    now: DateTime<Utc>,
) -> Result<(Vec<PushItem>, Vec<Op>), StoreError> {
    let mut items = vec![];
    let mut drop_ops = vec![];
    let drop = |e: &OutboxEntry| Op::DeleteOutbox {
        account: e.account.clone(),
        contact: e.contact_id,
    };
    for e in db.outbox_for(&account.id)? {
        if items.len() >= MAX_PUSH {
            break;
        }
        if e.failed || e.not_before.is_some_and(|t| t > now) {
            continue;
        }
        let linked = |c: &Contact| -> Vec<String> {
            c.links
                .iter()
                .filter(|l| l.account == account.id)
                .map(|l| l.provider_id.clone())
                .collect()
        };
        // One op per provider contact: a CRM contact can be linked to several contacts of
        // one account (duplicates in the address book), and each of them gets the change.
        let ops: Vec<PushOp> = match &e.op {
            OutboxOp::Create => match db.contact(e.contact_id)? {
                Some(c) if linked(&c).is_empty() => vec![PushOp::Create {
                    fields: fields_of(db, &c)?,
                    starred: account.group == Group::Starred,
                }],
                // Gone, or already linked (a create that reached the provider before a
                // crash and was matched back by the next fetch).
                _ => {
                    drop_ops.push(drop(&e));
                    continue;
                }
            },
            OutboxOp::Update { fields } => {
                let Some(c) = db.contact(e.contact_id)? else {
                    drop_ops.push(drop(&e));
                    continue;
                };
                let pids = linked(&c);
                if pids.is_empty() {
                    drop_ops.push(drop(&e));
                    continue;
                }
                let changed: Vec<&'static str> =
                    fields.iter().filter_map(|f| field::canonical(f)).collect();
                let f = fields_of(db, &c)?;
                let mut ops = Vec::with_capacity(pids.len());
                for pid in pids {
                    let etag = db.link(&account.id, &pid)?.and_then(|l| l.etag);
                    ops.push(PushOp::Update {
                        provider_id: pid,
                        etag,
                        fields: f.clone(),
                        changed: changed.clone(),
                    });
                }
                ops
            }
            OutboxOp::Delete { provider_id } => {
                // The entry names the first link; the contact's other links of this account
                // (kept in its tombstone) that still exist are deleted too.
                let mut pids = vec![provider_id.clone()];
                if let Some(t) = db.tombstone(e.contact_id)? {
                    for l in t.contact.links.iter().filter(|l| l.account == account.id) {
                        let live = db
                            .link(&account.id, &l.provider_id)?
                            .is_some_and(|r| r.contact_id == e.contact_id);
                        if live && !pids.contains(&l.provider_id) {
                            pids.push(l.provider_id.clone());
                        }
                    }
                }
                pids.into_iter()
                    .map(|provider_id| PushOp::Delete { provider_id })
                    .collect()
            }
        };
        for op in ops {
            items.push(PushItem {
                entry: e.clone(),
                op,
            });
        }
    }
    Ok((items, drop_ops))
}

/// Entries marked failed because the provider refused the write for want of a permission
/// (HTTP 403): once `connect` stored a new grant they are worth pushing again. Returns the
/// ops that put them back in the queue.
pub fn requeue_after_new_grant(db: &Db, account: &str) -> Result<Vec<Op>, StoreError> {
    let refused = |m: &str| {
        m.contains("HTTP 403") || m.contains("ErrorAccessDenied") || m.contains("PERMISSION_DENIED")
    };
    Ok(db
        .outbox_for(account)?
        .into_iter()
        .filter(|e| e.failed && e.last_error.as_deref().is_some_and(refused))
        .map(|mut e| {
            e.failed = false;
            e.attempts = 0;
            e.not_before = None;
            Op::PutOutbox(e)
        })
        .collect())
}

/// Backoff of a failed entry: 2^attempts seconds, at most 10 minutes.
fn backoff(attempts: u32) -> chrono::Duration {
    chrono::Duration::seconds(1i64 << attempts.clamp(1, 9)).min(chrono::Duration::minutes(10))
}

/// `last_error` of an entry whose push the provider refused as stale once: the next
/// refusal is final.
pub const CONFLICT_ONCE: &str =
    "changed in the provider meanwhile; the latest version was fetched and merged, retrying once";

/// Why an entry refused twice as stale is given up.
pub const CONFLICT_TWICE: &str = "the provider refused the change twice because the contact changed there meanwhile (stale etag, e.g. Google FAILED_PRECONDITION); edit the contact again to retry";

/// What an account's failed outbox entries mean for its status (`last_error`): `None`
/// when nothing failed.
pub fn failed_summary(db: &Db, account: &str) -> Result<Option<String>, StoreError> {
    let failed: Vec<OutboxEntry> = db
        .outbox_for(account)?
        .into_iter()
        .filter(|e| e.failed)
        .collect();
    let Some(last) = failed.iter().max_by_key(|e| e.created_at) else {
        return Ok(None);
    };
    Ok(Some(format!(
        "{} CRM change(s) were rejected by the provider and will not be retried (see outbox.failed); contact {}: {}",
        failed.len(),
        last.contact_id,
        last.last_error.as_deref().unwrap_or("rejected")
    )))
}

/// What a push round committed.
#[derive(Debug, Default)]
pub struct PushOutcome {
    pub batch: Batch,
    pub metrics: DayMetrics,
    pub audit: Vec<AuditEvent>,
}

/// The audit reason of a rejected change without `audit_values`.
pub const REJECTED_REASON: &str =
    "the provider rejected the change permanently (its message is in the daemon log)";

/// Records the provider's answers. Runs in the matcher, so it sees the CRM as it is now.
/// A retried entry waits at least `min_retry` (the poll interval): pushes that fail never
/// repeat faster than the account's rounds.
///
/// The audit `reason` of a rejected change carries the provider's text only with
/// `audit_values`: a provider's error can echo field values back.
pub fn apply_results(
    db: &Db,
    account: &AccountConfig,
    items: &[PushItem],
    results: &[PushResult],
    now: DateTime<Utc>,
    min_retry: chrono::Duration,
    audit_values: bool,
) -> Result<PushOutcome, StoreError> {
    let mut out = PushOutcome::default();
    let provider = account.provider.as_str();
    let event = |a| AuditEvent::new(&account.id, provider, a);
    // An entry sent to several provider contacts is done only when all of them took it.
    let unfinished: std::collections::HashSet<ContactId> = items
        .iter()
        .zip(results)
        .filter(|(_, r)| matches!(r, PushResult::Conflict | PushResult::Failed(_)))
        .map(|(i, _)| i.entry.contact_id)
        .collect();
    // Provider contacts deleted per CRM contact in this push.
    let mut deleted_of: std::collections::HashMap<ContactId, Vec<&str>> = Default::default();
    for (item, result) in items.iter().zip(results) {
        if let (PushOp::Delete { provider_id }, PushResult::Deleted) = (&item.op, result) {
            deleted_of
                .entry(item.entry.contact_id)
                .or_default()
                .push(provider_id);
        }
    }
    for (item, result) in items.iter().zip(results) {
        let e = &item.entry;
        let current = db.outbox_entry(&account.id, e.contact_id)?;
        // Done with this entry, unless the CRM changed it while we were pushing, or another
        // of its provider contacts still needs it.
        let settle = |out: &mut PushOutcome| {
            if current.as_ref() == Some(e) && !unfinished.contains(&e.contact_id) {
                out.batch.push(Op::DeleteOutbox {
                    account: account.id.clone(),
                    contact: e.contact_id,
                });
            }
        };
        match result {
            PushResult::Created {
                provider_id,
                etag,
                scope,
                stored,
            } => {
                out.batch.push(Op::PutLink {
                    account: account.id.clone(),
                    provider_id: provider_id.clone(),
                    link: LinkRecord {
                        contact_id: e.contact_id,
                        etag: etag.clone(),
                        scope: scope.clone(),
                    },
                });
                out.batch.push(Op::PutBase {
                    account: account.id.clone(),
                    provider_id: provider_id.clone(),
                    base: stored.clone(),
                });
                match db.contact(e.contact_id)? {
                    Some(mut c) => {
                        c.links.push(LinkRef {
                            account: account.id.clone(),
                            provider_id: provider_id.clone(),
                        });
                        c.links.sort();
                        c.links.dedup();
                        // Edited while the creation was on its way: send the difference.
                        let changed = changed_fields(stored, &fields_of(db, &c)?);
                        out.batch.push(Op::PutContact(c));
                        if !changed.is_empty() {
                            out.batch.push(Op::PutOutbox(OutboxEntry {
                                op: OutboxOp::Update { fields: changed },
                                attempts: 0,
                                not_before: None,
                                last_error: None,
                                failed: false,
                                ..e.clone()
                            }));
                        } else if let Some(OutboxEntry {
                            op: OutboxOp::Create,
                            ..
                        }) = current
                        {
                            out.batch.push(Op::DeleteOutbox {
                                account: account.id.clone(),
                                contact: e.contact_id,
                            });
                        }
                    }
                    None => {
                        // Deleted in the CRM while we were creating it: delete it again.
                        out.batch.push(Op::PutOutbox(OutboxEntry {
                            op: OutboxOp::Delete {
                                provider_id: provider_id.clone(),
                            },
                            attempts: 0,
                            ..e.clone()
                        }));
                    }
                }
                out.metrics.added_to_provider += 1;
                out.audit.push(
                    event(audit::Action::Added)
                        .direction(audit::Direction::ToProvider)
                        .crm_id(e.contact_id)
                        .provider_id(provider_id)
                        .fields(crate::sync::present_fields(stored)),
                );
            }
            PushResult::Updated { etag, stored } => {
                let PushOp::Update {
                    provider_id,
                    changed,
                    ..
                } = &item.op
                else {
                    continue;
                };
                let mut base = db.base(&account.id, provider_id)?.unwrap_or_default();
                for f in changed {
                    set_field(&mut base, stored, f);
                }
                out.batch.push(Op::PutBase {
                    account: account.id.clone(),
                    provider_id: provider_id.clone(),
                    base,
                });
                if let Some(mut link) = db.link(&account.id, provider_id)? {
                    link.etag = etag.clone();
                    out.batch.push(Op::PutLink {
                        account: account.id.clone(),
                        provider_id: provider_id.clone(),
                        link,
                    });
                }
                settle(&mut out);
                out.metrics.updated_in_provider += 1;
                out.audit.push(
                    event(audit::Action::Updated)
                        .direction(audit::Direction::ToProvider)
                        .crm_id(e.contact_id)
                        .provider_id(provider_id)
                        .fields(changed.clone()),
                );
            }
            PushResult::Deleted => {
                if let PushOp::Delete { provider_id } = &item.op {
                    out.batch.push(Op::DeleteLink {
                        account: account.id.clone(),
                        provider_id: provider_id.clone(),
                    });
                    out.batch.push(Op::DeleteBase {
                        account: account.id.clone(),
                        provider_id: provider_id.clone(),
                    });
                    // Restored while the deletion was on its way: create it again.
                    if let Some(mut c) = db.contact(e.contact_id)? {
                        let gone = deleted_of.get(&e.contact_id).cloned().unwrap_or_default();
                        c.links.retain(|l| {
                            !(l.account == account.id && gone.contains(&l.provider_id.as_str()))
                        });
                        out.batch.push(Op::PutContact(c));
                        out.batch.push(Op::PutOutbox(OutboxEntry {
                            op: OutboxOp::Create,
                            attempts: 0,
                            not_before: None,
                            last_error: None,
                            failed: false,
                            ..e.clone()
                        }));
                    }
                    out.audit.push(
                        event(audit::Action::Deleted)
                            .direction(audit::Direction::ToProvider)
                            .crm_id(e.contact_id)
                            .provider_id(provider_id),
                    );
                }
                settle(&mut out);
            }
            PushResult::Gone => settle(&mut out),
            PushResult::Conflict => {
                // The provider changed meanwhile. The account actor has fetched the latest
                // version and merged it (the provider wins fields changed on both sides);
                // the entry is sent once more, in a later round. A second refusal is final.
                let mut next = current.clone().unwrap_or_else(|| e.clone());
                next.attempts += 1;
                if e.last_error.as_deref() == Some(CONFLICT_ONCE) {
                    next.failed = true;
                    next.last_error = Some(CONFLICT_TWICE.into());
                    tracing::warn!(account = %account.id, crm_id = e.contact_id, "Provider refused a CRM change twice as stale; it will not be retried.");
                    let mut ev = event(audit::Action::Rejected)
                        .direction(audit::Direction::ToProvider)
                        .crm_id(e.contact_id)
                        .reason(CONFLICT_TWICE);
                    if let PushOp::Update { provider_id, .. } = &item.op {
                        ev = ev.provider_id(provider_id);
                    }
                    out.audit.push(ev);
                } else {
                    next.last_error = Some(CONFLICT_ONCE.into());
                    next.not_before = Some(now + min_retry);
                }
                out.batch.push(Op::PutOutbox(next));
            }
            PushResult::Failed(err) => {
                let mut next = current.clone().unwrap_or_else(|| e.clone());
                next.attempts += 1;
                next.last_error = Some(err.to_string());
                if matches!(
                    err,
                    ProviderError::ReauthRequired(_) | ProviderError::NotConnected(_)
                ) {
                    // Not the change's fault: the grant lacks a permission (or is gone).
                    // The account stops as reauth_required; the entry is pushed again once
                    // `connect` stored a new grant.
                    tracing::warn!(account = %account.id, crm_id = e.contact_id, error = %err, "CRM change waits for a new grant.");
                } else if err.is_permanent() {
                    next.failed = true;
                    tracing::warn!(account = %account.id, crm_id = e.contact_id, error = %err, "Provider rejected a CRM change; it will not be retried.");
                    out.audit.push(
                        event(audit::Action::Rejected)
                            .direction(audit::Direction::ToProvider)
                            .crm_id(e.contact_id)
                            .reason(if audit_values {
                                err.to_string()
                            } else {
                                REJECTED_REASON.to_string()
                            }),
                    );
                } else {
                    next.not_before = Some(now + backoff(next.attempts).max(min_retry));
                }
                out.batch.push(Op::PutOutbox(next));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    #[test]
    fn outbox_coalesces_edits_per_account_and_contact() {
        let upd = |f: &[&str]| OutboxOp::Update {
            fields: f.iter().map(|s| s.to_string()).collect(),
        };
        let e = coalesce(None, "g", 1, upd(&["name"]), now()).unwrap();
        let e = coalesce(Some(e), "g", 1, upd(&["emails", "name"]), now()).unwrap();
        assert_eq!(e.op, upd(&["name", "emails"]));
        let c = coalesce(None, "g", 1, OutboxOp::Create, now()).unwrap();
        let c2 = coalesce(Some(c.clone()), "g", 1, upd(&["name"]), now()).unwrap();
        assert_eq!(
            c2.op,
            OutboxOp::Create,
            "a pending create sends the latest fields anyway"
        );
        assert!(
            coalesce(
                Some(c),
                "g",
                1,
                OutboxOp::Delete {
                    provider_id: String::new()
                },
                now()
            )
            .is_none(),
            "created then deleted before the push: nothing to send"
        );
        let d = coalesce(
            Some(e),
            "g",
            1,
            OutboxOp::Delete {
                provider_id: "people/c1".into(),
            },
            now(),
        )
        .unwrap();
        assert!(matches!(d.op, OutboxOp::Delete { .. }));
    }

    #[test]
    fn write_refused_for_want_of_a_grant_waits_and_a_new_grant_requeues_refused_entries() {
        let db = Db::in_memory(phonenumber::country::Id::US);
        let account = AccountConfig {
            id: "o".into(),
            provider: crate::config::ProviderKind::Outlook,
            group: Group::All,
            direction: crate::config::Direction::TwoWay,
            enabled: true,
            url: None,
            username: None,
            password_file: None,
            address_book: None,
        };
        let entry = |id: u64| OutboxEntry {
            account: "o".into(),
            contact_id: id,
            op: OutboxOp::Delete {
                provider_id: format!("P{id}"),
            },
            attempts: 0,
            not_before: None,
            last_error: None,
            failed: false,
            created_at: now(),
        };
        let items = vec![PushItem {
            entry: entry(1),
            op: PushOp::Delete {
                provider_id: "P1".into(),
            },
        }];
        let reauth = PushResult::Failed(ProviderError::ReauthRequired(
            "the grant lacks the Contacts.ReadWrite scope".into(),
        ));
        let out = apply_results(
            &db,
            &account,
            &items,
            &[reauth],
            now(),
            chrono::Duration::zero(),
            false,
        )
        .unwrap();
        let Some(Op::PutOutbox(e)) = out.batch.ops.first() else {
            panic!("{:?}", out.batch.ops);
        };
        assert!(!e.failed, "not the change's fault: it waits for the grant");
        assert!(out.audit.is_empty(), "no rejection is audited");

        // An entry an earlier version marked failed on 403 comes back; other failures stay.
        let mut refused = entry(2);
        refused.failed = true;
        refused.attempts = 1;
        refused.last_error = Some(
            "Microsoft Graph answered HTTP 403 (ErrorAccessDenied) to a contact write.".into(),
        );
        let mut bad = entry(3);
        bad.failed = true;
        bad.last_error = Some("Microsoft Graph answered HTTP 400 (ErrorInvalidProperty).".into());
        let mut b = Batch::default();
        b.push(Op::PutOutbox(refused));
        b.push(Op::PutOutbox(bad));
        db.commit(&b).unwrap();
        let ops = requeue_after_new_grant(&db, "o").unwrap();
        assert_eq!(ops.len(), 1);
        let Op::PutOutbox(e) = &ops[0] else {
            panic!("{ops:?}")
        };
        assert_eq!((e.contact_id, e.failed, e.attempts), (2, false, 0));
    }

    #[test]
    fn rejected_push_audit_reason_has_no_provider_text_unless_audit_values() {
        use crate::config::{Direction, ProviderKind};
        let db = Db::in_memory(phonenumber::country::Id::US);
        let account = AccountConfig {
            id: "g".into(),
            provider: ProviderKind::Google,
            group: Group::All,
            direction: Direction::TwoWay,
            enabled: true,
            url: None,
            username: None,
            password_file: None,
            address_book: None,
        };
        let item = PushItem {
            entry: OutboxEntry {
                account: "g".into(),
                contact_id: 7,
                op: OutboxOp::Delete {
                    provider_id: "people/c7".into(),
                },
                attempts: 0,
                not_before: None,
                last_error: None,
                failed: false,
                created_at: now(),
            },
            op: PushOp::Delete {
                provider_id: "people/c7".into(),
            },
        };
        let echo = "Invalid email \"ann.secret@example.com\" for Ann Secret";
        let results = [PushResult::Failed(
            crate::providers::ProviderError::Permanent(echo.into()),
        )];
        let reason = |audit_values| {
            let out = apply_results(
                &db,
                &account,
                std::slice::from_ref(&item),
                &results,
                now(),
                chrono::Duration::zero(),
                audit_values,
            )
            .unwrap();
            out.audit
                .iter()
                .find_map(|e| e.reason.clone())
                .expect("a rejected event with a reason")
        };
        assert_eq!(reason(false), REJECTED_REASON);
        assert!(reason(true).contains("ann.secret@example.com"));
    }

    #[test]
    fn outbox_backoff_grows_and_is_capped() {
        assert!(backoff(1) < backoff(3));
        assert_eq!(
            backoff(40),
            chrono::Duration::minutes(10).min(chrono::Duration::seconds(512))
        );
    }
}
