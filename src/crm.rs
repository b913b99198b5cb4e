//! CRM-side edits (create, patch, delete) made through the HTTP API: validation against
//! SPEC §3, company find-or-create, and the batch that applies them.

use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::model::{Address, Company, Contact, ContactId};
use crate::normalize;
use crate::store::{Batch, Db, Op, OutboxOp, StoreError};
use crate::sync::eligibility::{MAX_EMAILS, MAX_PHONES};
use crate::sync::outbox;

/// Longest accepted text field, in characters.
pub const MAX_TEXT: usize = 1024;

fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The body of `POST /api/v1/contacts` and `PATCH /api/v1/contacts/{id}`. In a patch an
/// absent key leaves the field alone and `null` clears it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContactInput {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub emails: Option<Vec<String>>,
    pub phones: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub address: Option<Option<Address>>,
    #[serde(default, deserialize_with = "present")]
    pub company_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub job_title: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub birthday: Option<Option<String>>,
}

/// A CRM edit.
#[derive(Debug, Clone)]
pub enum CrmEdit {
    Create(ContactInput),
    Patch(ContactId, ContactInput),
    Delete(ContactId),
    /// Brings back a deleted contact from its tombstone.
    Restore(ContactId),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EditError {
    #[error("Contact {0} not found.")]
    NotFound(ContactId),
    #[error("Field `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("The daemon is shutting down.")]
    Unavailable,
}

fn invalid(field: &str, message: impl Into<String>) -> EditError {
    EditError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn too_many_emails() -> EditError {
    invalid("emails", format!("at most {MAX_EMAILS} email addresses"))
}

fn too_many_phones() -> EditError {
    invalid("phones", format!("at most {MAX_PHONES} phone numbers"))
}

fn text(field: &str, v: &str) -> Result<String, EditError> {
    if v.chars().count() > MAX_TEXT {
        return Err(invalid(field, format!("longer than {MAX_TEXT} characters")));
    }
    Ok(v.trim().to_string())
}

fn opt_text(field: &str, v: Option<String>) -> Result<Option<String>, EditError> {
    Ok(match v {
        Some(s) => Some(text(field, &s)?).filter(|s| !s.is_empty()),
        None => None,
    })
}

/// The outcome of an edit: the batch to commit and the resulting contact.
pub struct PlannedEdit {
    pub batch: Batch,
    pub contact: Option<Contact>,
    /// The contact before the edit (patch and delete).
    pub before: Option<Contact>,
}

/// Restores a tombstoned contact with the links that still point at it. Two-way accounts
/// get it back: a deletion not yet pushed is cancelled, one already pushed is undone by
/// creating the contact again.
fn plan_restore(db: &Db, id: ContactId, two_way: &[String]) -> Result<PlannedEdit, EditError> {
    let now = Utc::now();
    if let Some(c) = db.contact(id)? {
        return Ok(PlannedEdit {
            batch: Batch::default(),
            contact: Some(c),
            before: None,
        });
    }
    let t = db.tombstone(id)?.ok_or(EditError::NotFound(id))?;
    let t_links = t.contact.links.clone();
    let mut c = t.contact;
    let mut live = vec![];
    for l in &c.links {
        if db
            .link(&l.account, &l.provider_id)?
            .is_some_and(|r| r.contact_id == id)
        {
            live.push(l.clone());
        }
    }
    c.links = live;
    c.updated_at = now;
    let mut batch = Batch::default();
    batch.push(Op::PutContact(c.clone()));
    // Only the two-way accounts the contact was in before its deletion get it back.
    let before: Vec<String> = t_links.iter().map(|l| l.account.clone()).collect();
    for account in two_way.iter().filter(|a| before.contains(a)) {
        let pending = db.outbox_entry(account, id)?;
        if c.links.iter().any(|l| &l.account == account) {
            if pending.is_some() {
                batch.push(Op::DeleteOutbox {
                    account: account.clone(),
                    contact: id,
                });
            }
        } else {
            batch.push(outbox::enqueue(None, account, id, OutboxOp::Create, now));
        }
    }
    Ok(PlannedEdit {
        batch,
        contact: Some(c),
        before: None,
    })
}

/// Validates an edit and plans its writes, with the outbox entries it causes for the
/// `two_way` accounts (SPEC §2): a creation goes to every two-way account, an update or a
/// deletion to the two-way accounts linked to the contact.
pub fn plan_edit(db: &Db, edit: CrmEdit, two_way: &[String]) -> Result<PlannedEdit, EditError> {
    let now = Utc::now();
    let mut batch = Batch::default();
    let mut new_company: Option<String> = None;
    let (mut c, input, before) = match edit {
        CrmEdit::Restore(id) => return plan_restore(db, id, two_way),
        CrmEdit::Delete(id) => {
            let before = db.contact(id)?.ok_or(EditError::NotFound(id))?;
            batch.push(Op::DeleteContact(id));
            for account in two_way {
                let op = match before.links.iter().find(|l| &l.account == account) {
                    Some(l) => OutboxOp::Delete {
                        provider_id: l.provider_id.clone(),
                    },
                    // Not in that provider yet: cancels a pending creation, if any.
                    None => OutboxOp::Delete {
                        provider_id: String::new(),
                    },
                };
                let existing = db.outbox_entry(account, id)?;
                if existing.is_none()
                    && matches!(&op, OutboxOp::Delete { provider_id } if provider_id.is_empty())
                {
                    continue;
                }
                batch.push(outbox::enqueue(existing, account, id, op, now));
            }
            return Ok(PlannedEdit {
                batch,
                contact: None,
                before: Some(before),
            });
        }
        CrmEdit::Create(input) => (
            Contact {
                id: 0,
                first_name: String::new(),
                last_name: String::new(),
                emails: vec![],
                phones: vec![],
                address: None,
                company_id: None,
                job_title: None,
                birthday: None,
                has_photo: false,
                links: vec![],
                created_at: now,
                updated_at: now,
            },
            input,
            None,
        ),
        CrmEdit::Patch(id, input) => {
            let c = db.contact(id)?.ok_or(EditError::NotFound(id))?;
            (c.clone(), input, Some(c))
        }
    };
    if let Some(v) = input.first_name {
        c.first_name = text("first_name", &v)?;
    }
    if let Some(v) = input.last_name {
        c.last_name = text("last_name", &v)?;
    }
    if let Some(v) = input.emails {
        let mut out: Vec<String> = vec![];
        let mut keys = std::collections::HashSet::new();
        for (i, e) in v.iter().enumerate() {
            let e = text(&format!("emails[{i}]"), e)?;
            if e.is_empty() {
                continue;
            }
            if !e.contains('@') || e.contains(char::is_whitespace) {
                return Err(invalid(
                    &format!("emails[{i}]"),
                    format!("{e:?} is not an email address"),
                ));
            }
            if keys.insert(normalize::email_key(&e)) {
                out.push(e);
            }
            // Stop early: the work per request stays bounded however long the list.
            if out.len() > MAX_EMAILS {
                return Err(too_many_emails());
            }
        }
        c.emails = out;
    }
    if let Some(v) = input.phones {
        let mut out: Vec<String> = vec![];
        let mut keys = std::collections::HashSet::new();
        for (i, p) in v.iter().enumerate() {
            let p = text(&format!("phones[{i}]"), p)?;
            if p.is_empty() {
                continue;
            }
            let Some(k) = normalize::phone_key(&p, db.region()) else {
                return Err(invalid(
                    &format!("phones[{i}]"),
                    format!("{p:?} has no digits"),
                ));
            };
            if keys.insert(k) {
                out.push(p);
            }
            if out.len() > MAX_PHONES {
                return Err(too_many_phones());
            }
        }
        c.phones = out;
    }
    if let Some(v) = input.address {
        c.address = v.and_then(Address::non_empty);
        if let Some(a) = &c.address {
            for (k, p) in [
                ("street", &a.street),
                ("city", &a.city),
                ("region", &a.region),
                ("postal_code", &a.postal_code),
                ("country", &a.country),
            ] {
                if let Some(p) = p {
                    text(&format!("address.{k}"), p)?;
                }
            }
        }
    }
    if let Some(v) = input.job_title {
        c.job_title = opt_text("job_title", v)?;
    }
    if let Some(v) = input.birthday {
        c.birthday = match opt_text("birthday", v)? {
            None => None,
            Some(s) => Some(NaiveDate::parse_from_str(&s, "%Y-%m-%d").map_err(|_| {
                invalid(
                    "birthday",
                    format!("{s:?} is not a date in the form YYYY-MM-DD"),
                )
            })?),
        };
    }
    if let Some(v) = input.company_name {
        c.company_id = match opt_text("company_name", v)? {
            None => None,
            Some(name) => Some(match db.company_by_name(&name)? {
                Some(id) => id,
                None => {
                    let id = db.next_id()?;
                    new_company = Some(name.clone());
                    batch.push(Op::PutCompany(Company {
                        id,
                        name,
                        created_at: now,
                    }));
                    id
                }
            }),
        };
    }
    // SPEC §3: a name, an email or a phone, at most 10 of each.
    if c.first_name.is_empty() && c.last_name.is_empty() {
        return Err(invalid(
            "first_name",
            "a contact needs a first or last name",
        ));
    }
    if c.emails.is_empty() && c.phones.is_empty() {
        return Err(invalid(
            "emails",
            "a contact needs an email address or a phone number",
        ));
    }
    if c.emails.len() > MAX_EMAILS {
        return Err(too_many_emails());
    }
    if c.phones.len() > MAX_PHONES {
        return Err(too_many_phones());
    }
    let created = c.id == 0;
    if created {
        c.id = db.next_id()?;
    }
    c.updated_at = now;
    batch.push(Op::PutContact(c.clone()));
    if created {
        for account in two_way {
            batch.push(outbox::enqueue(None, account, c.id, OutboxOp::Create, now));
        }
    } else if let Some(b) = &before {
        let mut after = outbox::fields_of(db, &c)?;
        if new_company.is_some() {
            after.organization = new_company;
        }
        let changed = outbox::changed_fields(&outbox::fields_of(db, b)?, &after);
        if !changed.is_empty() {
            for l in c.links.iter().filter(|l| two_way.contains(&l.account)) {
                let existing = db.outbox_entry(&l.account, c.id)?;
                batch.push(outbox::enqueue(
                    existing,
                    &l.account,
                    c.id,
                    OutboxOp::Update {
                        fields: changed.clone(),
                    },
                    now,
                ));
            }
        }
    }
    Ok(PlannedEdit {
        batch,
        contact: Some(c),
        before,
    })
}
