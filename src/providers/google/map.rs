//! Pure functions between People API persons and CRM fields (SPEC §3), both ways.

use chrono::NaiveDate;

use super::wire::*;
use crate::config::Group;
use crate::model::{Address, Change, Fields, ProviderContact};
use crate::providers::text::clean;
use crate::providers::MAX_FIELD_BYTES;

fn is_primary(m: &Option<FieldMetadataJson>) -> bool {
    m.as_ref().and_then(|m| m.primary) == Some(true)
}

/// The entry marked primary, else the first.
fn primary<T>(items: &[T], meta: impl Fn(&T) -> &Option<FieldMetadataJson>) -> Option<&T> {
    items.iter().find(|i| is_primary(meta(i))).or(items.first())
}

fn values(items: &[ValueJson]) -> Vec<String> {
    items.iter().filter_map(|v| clean(&v.value)).collect()
}

/// Whether the person is in the starred contact group.
pub fn is_starred(person: &PersonJson) -> bool {
    person.memberships.iter().any(|m| {
        m.contact_group_membership.as_ref().is_some_and(|g| {
            g.contact_group_resource_name.as_deref() == Some(STARRED_GROUP)
                || g.contact_group_id.as_deref() == Some("starred")
        })
    })
}

fn name_of(person: &PersonJson) -> (String, String) {
    let Some(n) = primary(&person.names, |n| &n.metadata) else {
        return (String::new(), String::new());
    };
    let given = clean(&n.given_name).unwrap_or_default();
    let family = clean(&n.family_name).unwrap_or_default();
    if !given.is_empty() || !family.is_empty() {
        return (given, family);
    }
    let display = clean(&n.display_name).unwrap_or_default();
    let words: Vec<&str> = display.split_whitespace().collect();
    match words.as_slice() {
        [] => (String::new(), String::new()),
        [one] => (one.to_string(), String::new()),
        [rest @ .., last] => (rest.join(" "), last.to_string()),
    }
}

fn birthday_of(person: &PersonJson) -> Option<NaiveDate> {
    let b = primary(&person.birthdays, |b| &b.metadata)?;
    let d = b.date.as_ref()?;
    let (y, m, day) = (d.year?, d.month?, d.day?);
    if y <= 0 || m <= 0 || day <= 0 {
        return None;
    }
    NaiveDate::from_ymd_opt(
        i32::try_from(y).ok()?,
        u32::try_from(m).ok()?,
        u32::try_from(day).ok()?,
    )
}

fn address_of(person: &PersonJson) -> Option<Address> {
    let a = primary(&person.addresses, |a| &a.metadata)?;
    Address {
        street: clean(&a.street_address),
        city: clean(&a.city),
        region: clean(&a.region),
        postal_code: clean(&a.postal_code),
        country: clean(&a.country).or_else(|| clean(&a.country_code)),
    }
    .non_empty()
}

/// Reads one person of a listing page as sent, with the renames it implies
/// ([`renames`]). A readable person is parsed once, straight from its text into
/// [`PersonJson`]; only one that does not fit the schema is parsed again as a JSON value,
/// to be read as leniently as [`decode_person`] reads it.
pub fn decode_raw_person(raw: &serde_json::value::RawValue, group: Group) -> (Change, Vec<Change>) {
    if let Ok(p) = serde_json::from_str::<PersonJson>(raw.get()) {
        if !p.resource_name.is_empty() {
            let change = map_person(&p, group);
            let former = p
                .metadata
                .as_ref()
                .map(|m| m.previous_resource_names.as_slice())
                .unwrap_or_default();
            let renamed = renames_from(former.iter().map(String::as_str), &change);
            return (change, renamed);
        }
    }
    match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(v) => {
            let change = decode_person(&v, group);
            let renamed = renames(&v, &change);
            (change, renamed)
        }
        // The page as a whole parsed, so its parts are JSON; this is only for safety.
        Err(e) => {
            let hash = text_hash(raw.get().as_bytes());
            (
                Change::Unreadable {
                    provider_id: format!("unreadable:{hash}"),
                    version: format!("sha256:{hash}"),
                    error: e.to_string().chars().take(200).collect(),
                },
                vec![],
            )
        }
    }
}

/// 12 bytes of SHA-256, in hex: what stands in for an unreadable person's id and version.
fn text_hash(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads one person of a listing page. A person that does not fit the schema (`names` as a
/// string, a number where a string belongs, …) becomes [`Change::Unreadable`], versioned by
/// its etag when one can be read, else by a hash of what was sent.
pub fn decode_person(raw: &serde_json::Value, group: Group) -> Change {
    use serde::Deserialize as _;
    let error = match PersonJson::deserialize(raw) {
        Ok(p) if !p.resource_name.is_empty() => return map_person(&p, group),
        Ok(_) => "the person has no resourceName".to_string(),
        Err(e) => e.to_string(),
    };
    let text = |v: Option<&serde_json::Value>| {
        v.and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= MAX_FIELD_BYTES)
            .map(str::to_string)
    };
    let resource_name = text(raw.get("resourceName"));
    let source_etag = raw
        .pointer("/metadata/sources")
        .and_then(serde_json::Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|s| s.get("type").and_then(serde_json::Value::as_str) == Some("CONTACT"))
        })
        .and_then(|s| text(s.get("etag")));
    let hash = || text_hash(&serde_json::to_vec(raw).unwrap_or_default());
    if let Some(pid) = &resource_name {
        if raw.pointer("/metadata/deleted") == Some(&serde_json::Value::Bool(true)) {
            return Change::Deleted {
                provider_id: pid.clone(),
            };
        }
    }
    let version = source_etag
        .or_else(|| text(raw.get("etag")))
        .unwrap_or_else(|| format!("sha256:{}", hash()));
    Change::Unreadable {
        provider_id: resource_name.unwrap_or_else(|| format!("unreadable:{}", hash())),
        version,
        error: error.chars().take(200).collect(),
    }
}

/// The [`Change::Renamed`]s a listed person implies: one per former resource name
/// (`metadata.previousResourceNames`), to move its link before its upsert is planned.
pub(super) fn renames(raw: &serde_json::Value, change: &Change) -> Vec<Change> {
    let former: Vec<&str> = raw
        .pointer("/metadata/previousResourceNames")
        .and_then(serde_json::Value::as_array)
        .map(|names| names.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    renames_from(former.into_iter(), change)
}

fn renames_from<'a>(former: impl Iterator<Item = &'a str>, change: &Change) -> Vec<Change> {
    let (Change::Upsert(ProviderContact { provider_id, .. }) | Change::Left { provider_id }) =
        change
    else {
        return vec![];
    };
    former
        .filter(|from| !from.is_empty() && *from != provider_id)
        .map(|from| Change::Renamed {
            from: from.to_string(),
            to: provider_id.clone(),
        })
        .collect()
}

/// Google also reports a re-identified contact's former name as deleted: that is no
/// deletion, the contact lives on under its new name.
pub(super) fn drop_renamed_deletions(changes: &mut Vec<Change>) {
    let renamed: std::collections::HashSet<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Renamed { from, .. } => Some(from.clone()),
            _ => None,
        })
        .collect();
    if !renamed.is_empty() {
        changes.retain(
            |c| !matches!(c, Change::Deleted { provider_id } if renamed.contains(provider_id)),
        );
    }
}

/// The etag a write must carry: `metadata.sources[type=CONTACT].etag`, the contact
/// source's own entity tag. It is a different value from `Person.etag` (the merged
/// person's cache tag), which `updateContact` does not accept in its place.
pub fn contact_etag(person: &PersonJson) -> Option<String> {
    person
        .metadata
        .as_ref()?
        .sources
        .iter()
        .find(|s| s.kind.as_deref() == Some("CONTACT"))?
        .etag
        .clone()
        .filter(|e| !e.is_empty())
}

/// Maps one `Person` of a connections listing to a change (SPEC §3). The contact's etag
/// is its CONTACT source's ([`contact_etag`]): what the link keeps for the next update.
pub fn map_person(person: &PersonJson, group: Group) -> Change {
    let provider_id = person.resource_name.clone();
    if person.metadata.as_ref().and_then(|m| m.deleted) == Some(true) {
        return Change::Deleted { provider_id };
    }
    if group == Group::Starred && !is_starred(person) {
        return Change::Left { provider_id };
    }
    let (first_name, last_name) = name_of(person);
    let org = primary(&person.organizations, |o| &o.metadata);
    let fields = Fields {
        first_name,
        last_name,
        emails: values(&person.email_addresses),
        phones: values(&person.phone_numbers),
        address: address_of(person),
        organization: org.and_then(|o| clean(&o.name)),
        job_title: org.and_then(|o| clean(&o.title)),
        birthday: birthday_of(person),
    };
    let photo_url = person
        .photos
        .iter()
        .filter(|p| p.default != Some(true))
        .find_map(|p| clean(&p.url));
    Change::Upsert(ProviderContact {
        provider_id,
        etag: contact_etag(person),
        scope: String::new(),
        fields,
        photo_url,
    })
}

/// The Person JSON for CRM fields (SPEC §3 in reverse): one name, all emails and phones,
/// the address, the organisation with the job title, the birthday, and the memberships
/// (`myContacts`, plus `starred` when asked). Every mapped field is present, empty when
/// the CRM has no value, so an update mask clears what the CRM cleared.
pub fn fields_to_person(fields: &Fields, starred: bool) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    fn put(m: &mut Map<String, Value>, k: &str, v: &Option<String>) {
        if let Some(v) = v.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            m.insert(k.into(), Value::String(v.to_string()));
        }
    }
    let addresses: Vec<Value> = fields
        .address
        .clone()
        .and_then(Address::non_empty)
        .map(|a| {
            let mut m = Map::new();
            put(&mut m, "streetAddress", &a.street);
            put(&mut m, "city", &a.city);
            put(&mut m, "region", &a.region);
            put(&mut m, "postalCode", &a.postal_code);
            put(&mut m, "country", &a.country);
            Value::Object(m)
        })
        .into_iter()
        .collect();
    let mut org = Map::new();
    put(&mut org, "name", &fields.organization);
    put(&mut org, "title", &fields.job_title);
    let organizations: Vec<Value> = if org.is_empty() {
        vec![]
    } else {
        vec![Value::Object(org)]
    };
    let birthdays: Vec<Value> = fields
        .birthday
        .map(|d| {
            use chrono::Datelike;
            json!({"date": {"year": d.year(), "month": d.month(), "day": d.day()}})
        })
        .into_iter()
        .collect();
    let mut groups = vec![MY_CONTACTS_GROUP];
    if starred {
        groups.push(STARRED_GROUP);
    }
    json!({
        "names": [{"givenName": fields.first_name.trim(), "familyName": fields.last_name.trim()}],
        "emailAddresses": fields.emails.iter().map(|e| json!({"value": e})).collect::<Vec<_>>(),
        "phoneNumbers": fields.phones.iter().map(|p| json!({"value": p})).collect::<Vec<_>>(),
        "addresses": addresses,
        "organizations": organizations,
        "birthdays": birthdays,
        "memberships": groups.iter()
            .map(|g| json!({"contactGroupMembership": {"contactGroupResourceName": g}}))
            .collect::<Vec<_>>(),
    })
}

/// The `updatePersonFields` mask for changed CRM fields ([`crate::model::field`] names),
/// in a fixed order without duplicates. The photo is not part of a person update.
pub fn update_mask(changed: &[&str]) -> String {
    use crate::model::field;
    let mut out: Vec<&str> = Vec::new();
    for name in changed {
        let google = match *name {
            field::NAME => "names",
            field::EMAILS => "emailAddresses",
            field::PHONES => "phoneNumbers",
            field::ADDRESS => "addresses",
            field::COMPANY | field::JOB_TITLE => "organizations",
            field::BIRTHDAY => "birthdays",
            _ => continue,
        };
        if !out.contains(&google) {
            out.push(google);
        }
    }
    out.sort_by_key(|f| MAPPED_PERSON_FIELDS.iter().position(|o| o == f));
    out.join(",")
}
