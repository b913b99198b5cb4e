//! CRM-side edits (create, patch, delete) made through the HTTP API: validation against
//! SPEC §3, company find-or-create, and the batch that applies them.

use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::model::{Address, Company, Contact, ContactId};
use crate::normalize;
use crate::store::{Batch, Db, Op, StoreError};
use crate::sync::eligibility::{MAX_EMAILS, MAX_PHONES};

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

/// Validates an edit and plans its writes.
pub fn plan_edit(db: &Db, edit: CrmEdit) -> Result<PlannedEdit, EditError> {
    let now = Utc::now();
    let mut batch = Batch::default();
    let (mut c, input, before) = match edit {
        CrmEdit::Delete(id) => {
            let before = db.contact(id)?.ok_or(EditError::NotFound(id))?;
            batch.push(Op::DeleteContact(id));
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
    if c.id == 0 {
        c.id = db.next_id()?;
    }
    c.updated_at = now;
    batch.push(Op::PutContact(c.clone()));
    Ok(PlannedEdit {
        batch,
        contact: Some(c),
        before,
    })
}
