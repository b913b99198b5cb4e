//! Pure mapping between Graph's wire types and the canonical contact (SPEC §3), both ways.

use chrono::NaiveDate;
use serde_json::{json, Value};

use super::wire::{
    GraphAddress, GraphContact, DEFAULT_API_BASE, MAX_BUSINESS_PHONES, MAX_EMAILS, MAX_HOME_PHONES,
    SELECT_PROPERTIES,
};
use crate::model::{Address, Change, Fields, ProviderContact};
use crate::providers::text::clean;
use crate::providers::{ProviderError, MAX_FIELD_BYTES};

fn clean_list(v: &Option<Vec<Option<String>>>) -> impl Iterator<Item = String> + '_ {
    v.iter().flatten().filter_map(clean)
}

fn to_address(a: &Option<GraphAddress>) -> Option<Address> {
    let a = a.as_ref()?;
    let capped = |v: &Option<String>| v.clone().filter(|s| s.len() <= MAX_FIELD_BYTES);
    Address {
        street: capped(&a.street),
        city: capped(&a.city),
        region: capped(&a.state),
        postal_code: capped(&a.postal_code),
        country: capped(&a.country_or_region),
    }
    .non_empty()
}

/// A Graph birthday (a timestamp or a bare date) as a complete date; Outlook's year 1604
/// means "no year" and gives `None`.
pub fn parse_birthday(s: &str) -> Option<NaiveDate> {
    let date = s.trim().get(..10)?;
    let d = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    use chrono::Datelike;
    (d.year() != 1604).then_some(d)
}

/// Splits a display name: the last word is the last name, the rest the first name.
fn split_display_name(display: &str) -> (String, String) {
    let words: Vec<&str> = display.split_whitespace().collect();
    match words.split_last() {
        Some((last, rest)) => (rest.join(" "), (*last).to_string()),
        None => (String::new(), String::new()),
    }
}

/// Maps a Graph contact listed in `folder` to the canonical provider contact (SPEC §3).
/// `api_base` is only used to build the photo URL.
pub fn map_contact_with_base(c: &GraphContact, folder: &str, api_base: &str) -> ProviderContact {
    let mut first = clean(&c.given_name).unwrap_or_default();
    let mut last = clean(&c.surname).unwrap_or_default();
    if first.is_empty() && last.is_empty() {
        if let Some(d) = clean(&c.display_name) {
            (first, last) = split_display_name(&d);
        }
    }
    let emails = c
        .email_addresses
        .iter()
        .flatten()
        .flatten()
        .filter_map(|e| clean(&e.address))
        .collect();
    let phones = clean_list(&c.business_phones)
        .chain(clean_list(&c.home_phones))
        .chain(clean(&c.mobile_phone))
        .collect();
    let address = to_address(&c.home_address)
        .or_else(|| to_address(&c.business_address))
        .or_else(|| to_address(&c.other_address));
    let birthday = c.birthday.as_deref().and_then(parse_birthday);
    ProviderContact {
        provider_id: c.id.clone(),
        etag: c.odata_etag.clone().or_else(|| c.change_key.clone()),
        scope: folder.to_string(),
        fields: Fields {
            first_name: first,
            last_name: last,
            emails,
            phones,
            address,
            organization: clean(&c.company_name),
            job_title: clean(&c.job_title),
            birthday,
        },
        photo_url: (!c.id.is_empty()).then(|| photo_url(api_base, &c.id)),
    }
}

/// [`map_contact_with_base`] with the public Graph endpoint for the photo URL.
pub fn map_contact(c: &GraphContact, folder: &str) -> ProviderContact {
    map_contact_with_base(c, folder, DEFAULT_API_BASE)
}

pub(crate) fn photo_url(api_base: &str, id: &str) -> String {
    format!(
        "{}/me/contacts/{}/photo/$value",
        api_base.trim_end_matches('/'),
        seg(id)
    )
}

/// Percent-encodes one path segment (ids are opaque and case-sensitive).
pub(crate) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a delta row lacks any property of [`SELECT_PROPERTIES`]. Graph documents that an updated
/// item in a delta response carries "at least the properties that have been updated", so
/// a missing property means "not sent", never "cleared"; only a property sent as `null`,
/// `[]` or `{}` is cleared. A partial row is fetched whole before it is mapped.
pub fn is_partial(item: &serde_json::Map<String, Value>) -> bool {
    SELECT_PROPERTIES
        .iter()
        .filter(|p| **p != "id")
        .any(|p| !item.contains_key(*p))
}

/// Values that could not be written to Graph because of its multi-value limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    pub emails: Vec<String>,
    pub phones: Vec<String>,
}

impl Dropped {
    pub fn is_empty(&self) -> bool {
        self.emails.is_empty() && self.phones.is_empty()
    }
}

/// The inverse mapping for writes: CRM fields as a Graph contact body, within Graph's
/// limits (3 emails; 2 business phones, 2 home phones, 1 mobile phone). Phones fill
/// businessPhones, then homePhones, then mobilePhone, the order [`map_contact`] reads them
/// back in. Values that do not fit are returned in [`Dropped`] for the audit.
pub fn fields_to_contact(f: &Fields) -> (Value, Dropped) {
    let mut dropped = Dropped::default();
    let emails: Vec<Value> = f
        .emails
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            if i < MAX_EMAILS {
                Some(json!({ "address": e, "name": e }))
            } else {
                dropped.emails.push(e.clone());
                None
            }
        })
        .collect();
    let mut phones = f.phones.iter().cloned();
    let business: Vec<String> = phones.by_ref().take(MAX_BUSINESS_PHONES).collect();
    let home: Vec<String> = phones.by_ref().take(MAX_HOME_PHONES).collect();
    let mobile = phones.next();
    dropped.phones.extend(phones);
    let display = [f.first_name.trim(), f.last_name.trim()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let address = match &f.address {
        Some(a) => json!({
            "street": a.street.clone().unwrap_or_default(),
            "city": a.city.clone().unwrap_or_default(),
            "state": a.region.clone().unwrap_or_default(),
            "postalCode": a.postal_code.clone().unwrap_or_default(),
            "countryOrRegion": a.country.clone().unwrap_or_default(),
        }),
        // Every part empty: a PATCH replaces the whole structured property.
        None => {
            json!({"street": "", "city": "", "state": "", "postalCode": "", "countryOrRegion": ""})
        }
    };
    let body = json!({
        "givenName": f.first_name,
        "surname": f.last_name,
        "displayName": display,
        "emailAddresses": emails,
        "businessPhones": business,
        "homePhones": home,
        "mobilePhone": mobile,
        "homeAddress": address,
        "companyName": f.organization,
        "jobTitle": f.job_title,
        // Noon UTC, so no time zone moves the date (reference §2.3).
        "birthday": f.birthday.map(|d| format!("{}T12:00:00Z", d.format("%Y-%m-%d"))),
    });
    (body, dropped)
}

/// The Graph property names a CRM field name (see [`crate::model::field`]) maps to.
pub fn graph_properties(field: &str) -> &'static [&'static str] {
    use crate::model::field;
    match field {
        field::NAME => &["givenName", "surname", "displayName"],
        field::EMAILS => &["emailAddresses"],
        field::PHONES => &["businessPhones", "homePhones", "mobilePhone"],
        field::ADDRESS => &["homeAddress"],
        field::COMPANY => &["companyName"],
        field::JOB_TITLE => &["jobTitle"],
        field::BIRTHDAY => &["birthday"],
        _ => &[],
    }
}

/// What one row of a delta page becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    Ready(Box<Change>),
    /// A partial or odd row: fetch the contact with this id in full.
    Fetch(String),
    /// A row without an id: ignored.
    Skip,
}

/// Reads one delta row (pure; no request is made). A row that is not an object makes the
/// page malformed.
pub fn row_outcome(row: Value, folder: &str, api_base: &str) -> Result<RowOutcome, ProviderError> {
    let Value::Object(map) = row else {
        return Err(ProviderError::Transient(
            "Microsoft Graph sent a malformed contact row.".into(),
        ));
    };
    let Some(id) = map.get("id").and_then(Value::as_str).map(str::to_string) else {
        return Ok(RowOutcome::Skip);
    };
    if map.contains_key("@removed") {
        return Ok(RowOutcome::Ready(Box::new(Change::Deleted {
            provider_id: id,
        })));
    }
    if is_partial(&map) {
        return Ok(RowOutcome::Fetch(id));
    }
    Ok(
        match serde_json::from_value::<GraphContact>(Value::Object(map)) {
            Ok(c) => RowOutcome::Ready(Box::new(Change::Upsert(map_contact_with_base(
                &c, folder, api_base,
            )))),
            // An odd row: fetch it whole rather than guess.
            Err(_) => RowOutcome::Fetch(id),
        },
    )
}

/// The PATCH body for an update of the `changed` CRM fields.
pub fn update_body(fields: &Fields, changed: &[&str]) -> (Value, Dropped) {
    use crate::model::field;
    let (full, all_dropped) = fields_to_contact(fields);
    let mut body = serde_json::Map::new();
    let mut dropped = Dropped::default();
    for f in changed {
        for prop in graph_properties(f) {
            body.insert((*prop).to_string(), full[*prop].clone());
        }
        if *f == field::EMAILS {
            dropped.emails = all_dropped.emails.clone();
        }
        if *f == field::PHONES {
            dropped.phones = all_dropped.phones.clone();
        }
    }
    (Value::Object(body), dropped)
}
