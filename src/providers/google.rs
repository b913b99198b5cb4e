//! Google People API client: lists `people/me/connections` page by page with a sync token,
//! maps each `Person` to a [`Change`], and falls back to a full listing when the token is
//! missing, unreadable, about to expire, or rejected as expired.
//!
//! The cursor handed to the account actor is a small JSON document of our own ([`Cursor`]):
//! Google's sync token plus the time of the full listing that started its chain. Google lets
//! tokens expire 7 days after the full sync, so a chain older than [`FULL_SYNC_MAX_AGE`] is
//! restarted with a full listing before Google would reject it.
//!
//! Safety rules: a page that does not parse as JSON (cut off, malformed) is a failed fetch,
//! retried and then reported as [`ProviderError::Transient`], never read as an empty page;
//! a full listing whose last page carries no `nextSyncToken` is not trusted either, and one
//! that shows fewer people than its `totalItems` infers no deletions. Within a page, each
//! person is read on its own ([`decode_person`]): one that breaks the schema is skipped as
//! unreadable and the rest of the page syncs. Tokens and full URLs never reach the log.
//!
//! Writes carry the CONTACT source's etag (`metadata.sources[].etag`, [`contact_etag`]),
//! which Google compares on updates; the person's own `etag` is a different value.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::future::BoxFuture;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::http::{RetryPolicy, GOOGLE_PHOTO_HOSTS};
use super::oauth::TokenSource;
use super::text::clean;
use super::transport::{classify, is_oversize, Auth, Class, Request, Transport};
use super::{
    Jpeg, ProgressFn, Provider, ProviderError, Round, MAX_FIELD_BYTES, MAX_PAGE_BYTES,
    MAX_PHOTO_BYTES,
};
use crate::config::Group;
use crate::model::{Address, Change, Fields, Progress, ProviderContact};

/// The person fields a sync reads; identical on every call of a token chain.
pub const PERSON_FIELDS: &str =
    "names,emailAddresses,phoneNumbers,addresses,organizations,birthdays,photos,memberships,metadata";
/// Largest page Google serves.
pub const PAGE_SIZE: u32 = 1000;
/// Resource name of the starred group.
pub const STARRED_GROUP: &str = "contactGroups/starred";
/// A token chain older than this is restarted with a full listing (Google: 7 days).
pub const FULL_SYNC_MAX_AGE: chrono::Duration = chrono::Duration::days(6);

/// Our cursor: Google's sync token and when the full listing that began its chain started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Format version; an unknown version is a cursor we cannot decode.
    pub v: u32,
    pub sync_token: String,
    pub full_sync_at: DateTime<Utc>,
}

impl Cursor {
    const VERSION: u32 = 1;

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Cursor> {
        let c: Cursor = serde_json::from_slice(bytes).ok()?;
        (c.v == Cursor::VERSION && !c.sync_token.is_empty()).then_some(c)
    }
}

// ---------------------------------------------------------------------------------------
// Wire format: the subset of the People API schema we read. Unknown fields are ignored and
// every field may be missing.
// ---------------------------------------------------------------------------------------

/// `ListConnectionsResponse`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ListConnectionsJson {
    /// Decoded person by person ([`decode_person`]): one unreadable person does not make
    /// the page unreadable.
    pub connections: Vec<serde_json::Value>,
    pub next_page_token: Option<String>,
    pub next_sync_token: Option<String>,
    pub total_items: Option<u64>,
    pub total_people: Option<u64>,
}

/// `Person`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PersonJson {
    pub resource_name: String,
    pub etag: Option<String>,
    pub metadata: Option<PersonMetadataJson>,
    pub names: Vec<NameJson>,
    pub email_addresses: Vec<ValueJson>,
    pub phone_numbers: Vec<ValueJson>,
    pub addresses: Vec<AddressJson>,
    pub organizations: Vec<OrganizationJson>,
    pub birthdays: Vec<BirthdayJson>,
    pub photos: Vec<PhotoJson>,
    pub memberships: Vec<MembershipJson>,
}

/// `PersonMetadata`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PersonMetadataJson {
    pub deleted: Option<bool>,
    pub sources: Vec<SourceJson>,
    /// Former resource names (only in listings made with a sync token).
    pub previous_resource_names: Vec<String>,
}

/// `Source` (as found in `PersonMetadata.sources`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SourceJson {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub id: Option<String>,
    pub etag: Option<String>,
}

/// `FieldMetadata`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FieldMetadataJson {
    pub primary: Option<bool>,
}

/// `Name`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NameJson {
    pub metadata: Option<FieldMetadataJson>,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
}

/// `EmailAddress` and `PhoneNumber` (we read only the value).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ValueJson {
    pub metadata: Option<FieldMetadataJson>,
    pub value: Option<String>,
}

/// `Address`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AddressJson {
    pub metadata: Option<FieldMetadataJson>,
    pub street_address: Option<String>,
    pub city: Option<String>,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
    pub country_code: Option<String>,
}

/// `Organization`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct OrganizationJson {
    pub metadata: Option<FieldMetadataJson>,
    pub name: Option<String>,
    pub title: Option<String>,
}

/// `Birthday`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct BirthdayJson {
    pub metadata: Option<FieldMetadataJson>,
    pub date: Option<DateJson>,
}

/// `Date`: a partial date; 0 (or absence) means "not given".
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DateJson {
    pub year: Option<i64>,
    pub month: Option<i64>,
    pub day: Option<i64>,
}

/// `Photo`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PhotoJson {
    pub url: Option<String>,
    pub default: Option<bool>,
}

/// `Membership`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MembershipJson {
    pub contact_group_membership: Option<ContactGroupMembershipJson>,
}

/// `ContactGroupMembership`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContactGroupMembershipJson {
    pub contact_group_id: Option<String>,
    pub contact_group_resource_name: Option<String>,
}

/// `{"error": Status}` as Google sends it on failures.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct ErrorEnvelope {
    error: Option<ApiError>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct ApiError {
    code: Option<i64>,
    message: Option<String>,
    status: Option<String>,
    details: Vec<serde_json::Value>,
}

impl ApiError {
    /// The `ErrorInfo` reasons among the details.
    fn has_reason(&self, reason: &str) -> bool {
        self.details
            .iter()
            .any(|d| d.get("reason").and_then(|r| r.as_str()) == Some(reason))
    }

    fn describe(&self, http: StatusCode) -> String {
        if self.message.is_none() && self.status.is_none() && self.code.is_none() {
            return format!(
                "Google People API answered HTTP {http} with an error body that could not be read (cut off or not Google's error JSON)."
            );
        }
        let msg: String = self
            .message
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect();
        let status = self.status.as_deref().unwrap_or("");
        let code = self
            .code
            .map(|c| format!(" (code {c})"))
            .unwrap_or_default();
        format!("Google People API answered HTTP {http} {status}{code}: {msg}")
    }
}

// ---------------------------------------------------------------------------------------
// Mapping
// ---------------------------------------------------------------------------------------

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
    let hash = || {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(serde_json::to_vec(raw).unwrap_or_default());
        d[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
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
fn renames(raw: &serde_json::Value, change: &Change) -> Vec<Change> {
    let (Change::Upsert(ProviderContact { provider_id, .. }) | Change::Left { provider_id }) =
        change
    else {
        return vec![];
    };
    raw.pointer("/metadata/previousResourceNames")
        .and_then(serde_json::Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(serde_json::Value::as_str)
                .filter(|from| !from.is_empty() && *from != provider_id)
                .map(|from| Change::Renamed {
                    from: from.to_string(),
                    to: provider_id.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Google also reports a re-identified contact's former name as deleted: that is no
/// deletion, the contact lives on under its new name.
fn drop_renamed_deletions(changes: &mut Vec<Change>) {
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

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// Why a call failed: an API answer we did not retry, or a classified provider error.
#[derive(Debug)]
enum CallError {
    Api { status: StatusCode, error: ApiError },
    Provider(ProviderError),
}

impl CallError {
    fn into_provider(self) -> ProviderError {
        match self {
            CallError::Provider(e) => e,
            // An error whose body is not Google's error JSON (cut off, or a proxy's page)
            // cannot be classified: retrying later is the safe reading, not a terminal
            // error.
            CallError::Api { status, error }
                if error.status.is_none() && error.message.is_none() && error.code.is_none() =>
            {
                ProviderError::Transient(format!(
                    "Google People API answered HTTP {status} with an unreadable error body (cut off or not JSON)."
                ))
            }
            // Otherwise the status says what it means, as for every provider (404 and 410
            // are terminal here: the callers that expect them handle them first).
            CallError::Api { status, error } => match classify(status) {
                Class::Transient => ProviderError::Transient(error.describe(status)),
                Class::Reauth => ProviderError::ReauthRequired(error.describe(status)),
                _ => ProviderError::Permanent(error.describe(status)),
            },
        }
    }
}

/// How a call may be retried and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    /// A read: every failure may be retried.
    Read,
    /// An idempotent write (etag-guarded update, delete) whose answer may be empty.
    EmptyOk,
    /// A create: only failures that cannot have reached the server (429, no connection)
    /// are retried, so a contact is never created twice.
    Create,
}

/// Outcome of one listing attempt.
enum Listing {
    Done(Round),
    Expired,
}

/// A Google People API client for one account.
pub struct GoogleClient {
    api_base: String,
    group: Group,
    t: Transport,
}

impl std::fmt::Debug for GoogleClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleClient")
            .field("api_base", &self.api_base)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl GoogleClient {
    pub fn new(
        api_base: String,
        group: Group,
        tokens: Arc<TokenSource>,
        retry: RetryPolicy,
    ) -> Self {
        let api_base = api_base.trim_end_matches('/').to_string();
        let t = Transport::without_origin(Auth::Bearer(tokens), retry)
            .with_service("Google People API")
            .with_public_hosts(GOOGLE_PHOTO_HOSTS);
        // An api_base that cannot take the token admits nothing: every request is then
        // refused as permanent, with the reason in the message.
        match url::Url::parse(&api_base) {
            Ok(u) => {
                if let Err(e) = t.admit(&u) {
                    warn!(error = %e, "Google api_base refused");
                }
            }
            Err(e) => warn!(error = %e, "Google api_base is not a URL"),
        }
        GoogleClient { api_base, group, t }
    }

    fn url(&self, path: &str) -> Result<url::Url, CallError> {
        url::Url::parse(&format!("{}{}", self.api_base, path)).map_err(|e| {
            CallError::Provider(ProviderError::Permanent(format!(
                "Invalid Google api_base: {e}."
            )))
        })
    }

    /// Sends one authorised request through the executor (which retries 429/5xx, transport
    /// failures and unreadable bodies, and a 401 once with a fresh token) and reads the
    /// JSON answer.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
        kind: CallKind,
    ) -> Result<T, CallError> {
        let mut req = Request::new(method, self.url(path)?, MAX_PAGE_BYTES).query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        if kind == CallKind::Create {
            req = req.not_idempotent();
        }
        let empty_ok = kind == CallKind::EmptyOk;
        let answer = self
            .t
            .fetch(&req, |r| {
                let bytes: &[u8] = if empty_ok && r.body.trim_ascii().is_empty() {
                    b"{}"
                } else {
                    &r.body
                };
                serde_json::from_slice::<T>(bytes).map_err(|e| e.to_string())
            })
            .await
            .map_err(CallError::Provider)?;
        answer.map_err(|resp| {
            let error = serde_json::from_slice::<ErrorEnvelope>(&resp.body)
                .ok()
                .and_then(|e| e.error)
                .unwrap_or_default();
            CallError::Api {
                status: resp.status,
                error,
            }
        })
    }

    /// Lists every page, from the start of a chain (`sync_token: None`) or since a token.
    async fn list(
        &self,
        sync_token: Option<&str>,
        full_sync_at: DateTime<Utc>,
        progress: &ProgressFn,
    ) -> Result<Listing, ProviderError> {
        let full = sync_token.is_none();
        let page_size = PAGE_SIZE.to_string();
        let mut round = Round {
            full,
            complete_scopes: if full { vec![String::new()] } else { vec![] },
            ..Round::default()
        };
        let mut page_token: Option<String> = None;
        let mut seen: u64 = 0;
        // The largest size of the whole listing a page announced (`totalItems`).
        let mut promised: u64 = 0;
        loop {
            let mut query: Vec<(&str, &str)> = vec![
                ("personFields", PERSON_FIELDS),
                ("pageSize", &page_size),
                ("requestSyncToken", "true"),
            ];
            if let Some(t) = sync_token {
                query.push(("syncToken", t));
            }
            if let Some(p) = &page_token {
                query.push(("pageToken", p));
            }
            let page: ListConnectionsJson = match self
                .call(
                    Method::GET,
                    "/v1/people/me/connections",
                    &query,
                    None,
                    CallKind::Read,
                )
                .await
            {
                Ok(p) => p,
                Err(CallError::Api { status, error })
                    if !full
                        && (status == StatusCode::GONE
                            || (status == StatusCode::BAD_REQUEST
                                && (error.has_reason("EXPIRED_SYNC_TOKEN")
                                    || error.status.as_deref()
                                        == Some("FAILED_PRECONDITION")))) =>
                {
                    info!(%status, "Google rejected the sync token as expired; starting a full listing");
                    return Ok(Listing::Expired);
                }
                Err(e) => return Err(e.into_provider()),
            };
            round.pages += 1;
            seen += page.connections.len() as u64;
            for raw in &page.connections {
                let change = decode_person(raw, self.group);
                round.changes.extend(renames(raw, &change));
                if let Change::Unreadable {
                    provider_id, error, ..
                } = &change
                {
                    warn!(%provider_id, %error, "Google sent a person that cannot be read; it is skipped");
                    if provider_id.starts_with("unreadable:") {
                        // Without its resource name we cannot tell which link it is: this
                        // listing cannot reveal deletions.
                        round.complete_scopes.clear();
                    }
                }
                round.changes.push(change);
            }
            let total = page.total_items.or(page.total_people);
            promised = promised.max(total.unwrap_or(0));
            progress(Progress {
                pages: round.pages,
                contacts: seen,
                total,
            });
            debug!(
                pages = round.pages,
                contacts = seen,
                full,
                "Google page listed"
            );
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) if page_token.as_deref() == Some(next.as_str()) => {
                    return Err(ProviderError::Transient(
                        "Google sent the same page token twice; paging stopped.".into(),
                    ));
                }
                Some(next) => page_token = Some(next),
                None => {
                    let Some(sync) = page.next_sync_token.filter(|t| !t.is_empty()) else {
                        return Err(ProviderError::Transient(
                            "Google's last page carried no nextSyncToken; the listing is not trusted."
                                .into(),
                        ));
                    };
                    drop_renamed_deletions(&mut round.changes);
                    if full && seen < promised {
                        // Fewer people than Google said the listing holds: it is not
                        // complete, so the people it did not show are not deletions.
                        warn!(
                            seen,
                            total_items = promised,
                            "Google's full listing ended with fewer people than totalItems; no deletions are inferred from it"
                        );
                        round.complete_scopes.clear();
                    }
                    round.cursor = Cursor {
                        v: Cursor::VERSION,
                        sync_token: sync,
                        full_sync_at,
                    }
                    .encode();
                    return Ok(Listing::Done(round));
                }
            }
        }
    }

    async fn round(
        &self,
        cursor: Option<&[u8]>,
        progress: &ProgressFn,
    ) -> Result<Round, ProviderError> {
        let now = Utc::now();
        let decoded = cursor.and_then(Cursor::decode);
        if cursor.is_some() && decoded.is_none() {
            warn!("Unreadable Google cursor; starting a full listing");
        }
        if let Some(c) = decoded {
            if now - c.full_sync_at < FULL_SYNC_MAX_AGE {
                match self
                    .list(Some(&c.sync_token), c.full_sync_at, progress)
                    .await?
                {
                    Listing::Done(r) => return Ok(r),
                    Listing::Expired => {}
                }
            } else {
                info!(
                    full_sync_at = %c.full_sync_at,
                    "Google sync token chain is about to expire; starting a full listing"
                );
            }
        }
        match self.list(None, now, progress).await? {
            Listing::Done(r) => Ok(r),
            Listing::Expired => Err(ProviderError::Permanent(
                "Google reported an expired sync token on a full listing.".into(),
            )),
        }
    }

    /// A contact's photo: `None` when it is missing (404), refused, empty or over
    /// [`MAX_PHOTO_BYTES`], or its URL is neither on Google's photo hosts nor on the API's
    /// origin (SPEC §8). The token goes only to the API's origin.
    async fn photo(&self, url: &str) -> Result<Option<Jpeg>, ProviderError> {
        let Some(u) = url::Url::parse(url).ok().filter(|u| self.t.may_send(u)) else {
            warn!("Photo URL is not on Google's photo hosts or the API host; not fetched");
            return Ok(None);
        };
        match self.t.execute(&Request::get(u, MAX_PHOTO_BYTES)).await {
            Ok(r) if r.status.is_success() => Ok(Some(r.body).filter(|b| !b.is_empty())),
            Ok(r) if r.status == StatusCode::NOT_FOUND => Ok(None),
            Ok(r) => {
                warn!(status = %r.status, "Photo fetch refused; contact kept without photo");
                Ok(None)
            }
            Err(e) if is_oversize(&e) => {
                warn!("Photo larger than the cap; skipped");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl Provider for GoogleClient {
    fn fetch_round<'a>(
        &'a self,
        cursor: Option<&'a [u8]>,
        progress: &'a ProgressFn,
    ) -> BoxFuture<'a, Result<Round, ProviderError>> {
        Box::pin(self.round(cursor, progress))
    }

    fn push<'a>(&'a self, ops: &'a [super::PushOp]) -> BoxFuture<'a, Vec<super::PushResult>> {
        Box::pin(self.push_ops(ops))
    }

    fn fetch_photo<'a>(
        &'a self,
        contact: &'a ProviderContact,
    ) -> BoxFuture<'a, Result<Option<Jpeg>, ProviderError>> {
        Box::pin(async move {
            match contact.photo_url.as_deref() {
                Some(url) if !url.is_empty() => self.photo(url).await,
                _ => Ok(None),
            }
        })
    }

    fn refetch<'a>(
        &'a self,
        provider_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Change>, ProviderError>> {
        Box::pin(self.get_people(provider_ids))
    }
}

impl GoogleClient {
    /// `GET /v1/{resourceName}` with the sync's person fields (so the CONTACT source etag
    /// comes along), one person at a time: used only after a refused update. A person that
    /// is gone (404) is left out.
    async fn get_people(&self, ids: &[String]) -> Result<Vec<Change>, ProviderError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(name) = id.strip_prefix("people/").filter(|n| {
                !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            }) else {
                continue;
            };
            let path = format!("/v1/people/{name}");
            match self
                .call::<PersonJson>(
                    Method::GET,
                    &path,
                    &[("personFields", PERSON_FIELDS)],
                    None,
                    CallKind::Read,
                )
                .await
            {
                Ok(p) if p.resource_name.is_empty() => {}
                Ok(p) => out.push(map_person(&p, self.group)),
                Err(CallError::Api { status, .. }) if status == StatusCode::NOT_FOUND => {}
                Err(e) => return Err(e.into_provider()),
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// Two-way: writes
// ---------------------------------------------------------------------------------------

impl GoogleClient {
    /// Two-way writes, one kind after the other, sent sequentially as Google advises.
    async fn push_ops(&self, ops: &[super::PushOp]) -> Vec<super::PushResult> {
        use super::{PushOp, PushResult};
        let mut out: Vec<Option<PushResult>> = vec![None; ops.len()];
        let mut creates = vec![];
        let mut updates = vec![];
        let mut deletes = vec![];
        for (i, op) in ops.iter().enumerate() {
            match op {
                PushOp::Create { fields, starred } => creates.push((i, fields, *starred)),
                PushOp::Update {
                    provider_id,
                    etag,
                    fields,
                    changed,
                } => updates.push((i, provider_id, etag, fields, changed)),
                PushOp::Delete { provider_id } => deletes.push((i, provider_id)),
            }
        }
        if !creates.is_empty() {
            let items: Vec<(u64, Fields, bool)> = creates
                .iter()
                .map(|(i, f, s)| (*i as u64, (*f).clone(), *s))
                .collect();
            for c in self.batch_create(&items).await {
                let i = c.crm_id as usize;
                let stored = items
                    .iter()
                    .find(|x| x.0 == c.crm_id)
                    .map(|x| x.1.clone())
                    .unwrap_or_default();
                out[i] = Some(match c.result {
                    Ok((provider_id, etag)) => PushResult::Created {
                        provider_id,
                        etag,
                        scope: String::new(),
                        stored,
                    },
                    Err(e) => PushResult::Failed(e),
                });
            }
        }
        if !updates.is_empty() {
            let items: Vec<(String, String, Fields, Vec<&'static str>)> = updates
                .iter()
                .map(|(_, pid, etag, f, ch)| {
                    (
                        (*pid).clone(),
                        (*etag).clone().unwrap_or_default(),
                        (*f).clone(),
                        (*ch).clone(),
                    )
                })
                .collect();
            let results = self.batch_update(&items).await;
            for (i, pid, _, f, _) in &updates {
                let outcome = results
                    .iter()
                    .find(|u| &u.provider_id == *pid)
                    .map(|u| u.outcome.clone());
                out[*i] = Some(match outcome {
                    Some(UpdateOutcome::Updated { etag }) => PushResult::Updated {
                        etag,
                        stored: (*f).clone(),
                    },
                    Some(UpdateOutcome::Conflict) => PushResult::Conflict,
                    Some(UpdateOutcome::Gone) => PushResult::Gone,
                    Some(UpdateOutcome::Failed(e)) => PushResult::Failed(e),
                    None => PushResult::Failed(ProviderError::Transient(
                        "Google did not answer for this contact.".into(),
                    )),
                });
            }
        }
        if !deletes.is_empty() {
            let ids: Vec<String> = deletes.iter().map(|(_, p)| (*p).clone()).collect();
            let results = self.batch_delete(&ids).await;
            for (i, pid) in &deletes {
                let r = results.iter().find(|d| &d.provider_id == *pid);
                out[*i] = Some(match r.map(|d| d.result.clone()) {
                    Some(Ok(())) => PushResult::Deleted,
                    Some(Err(e)) => PushResult::Failed(e),
                    None => PushResult::Failed(ProviderError::Transient(
                        "Google did not answer for this contact.".into(),
                    )),
                });
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| PushResult::Failed(ProviderError::Transient("not sent".into())))
            })
            .collect()
    }
}

/// Most contacts per `batchCreateContacts` / `batchUpdateContacts` call.
pub const MAX_BATCH_WRITE: usize = 200;
/// Most resource names per `batchDeleteContacts` call.
pub const MAX_BATCH_DELETE: usize = 500;
/// What the post-write read returns: enough for the resource name and the new etag.
const WRITE_READ_MASK: &str = "metadata";
const MY_CONTACTS_GROUP: &str = "contactGroups/myContacts";

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
    const ORDER: [&str; 6] = [
        "names",
        "emailAddresses",
        "phoneNumbers",
        "addresses",
        "organizations",
        "birthdays",
    ];
    out.sort_by_key(|f| ORDER.iter().position(|o| o == f));
    out.join(",")
}

/// Outcome of creating one contact.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    pub crm_id: u64,
    /// The new contact's resource name and etag.
    pub result: Result<(String, Option<String>), ProviderError>,
}

/// Outcome of updating one contact.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateOutcome {
    /// Written; the new etag when Google returned it.
    Updated {
        etag: Option<String>,
    },
    /// The etag was stale: the contact changed in Google since it was read.
    Conflict,
    /// The contact no longer exists in Google.
    Gone,
    Failed(ProviderError),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    pub provider_id: String,
    pub outcome: UpdateOutcome,
}

/// Outcome of deleting one contact (one already gone counts as deleted).
#[derive(Debug, Clone, PartialEq)]
pub struct Deleted {
    pub provider_id: String,
    pub result: Result<(), ProviderError>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PersonResponseJson {
    person: Option<PersonJson>,
    status: Option<ApiError>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct BatchCreateResponseJson {
    created_people: Vec<PersonResponseJson>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct BatchUpdateResponseJson {
    update_result: std::collections::HashMap<String, PersonResponseJson>,
}

fn is_stale_etag(status: StatusCode, e: &ApiError) -> bool {
    status == StatusCode::BAD_REQUEST
        && (e.status.as_deref() == Some("FAILED_PRECONDITION")
            || e.has_reason("failedPrecondition")
            || e.message
                .as_deref()
                .is_some_and(|m| m.to_ascii_lowercase().contains("etag")))
}

/// google.rpc.Code of a per-item status.
const RPC_NOT_FOUND: i64 = 5;
const RPC_FAILED_PRECONDITION: i64 = 9;

impl GoogleClient {
    /// Creates contacts (`(crm id, fields, starred)`), 200 per call, one call at a time.
    /// A batch Google rejects as a whole is retried contact by contact, so one invalid
    /// contact does not hold back the others. Results come in input order.
    pub async fn batch_create(&self, items: &[(u64, Fields, bool)]) -> Vec<Created> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(MAX_BATCH_WRITE) {
            match self.create_chunk(chunk).await {
                Err(CallError::Api { status, .. })
                    if status == StatusCode::BAD_REQUEST && chunk.len() > 1 =>
                {
                    for one in chunk {
                        let r = self.create_chunk(std::slice::from_ref(one)).await;
                        out.extend(Self::created(std::slice::from_ref(one), r));
                    }
                }
                r => out.extend(Self::created(chunk, r)),
            }
        }
        out
    }

    async fn create_chunk(
        &self,
        chunk: &[(u64, Fields, bool)],
    ) -> Result<BatchCreateResponseJson, CallError> {
        let body = serde_json::json!({
            "contacts": chunk.iter()
                .map(|(_, f, starred)| serde_json::json!({"contactPerson": fields_to_person(f, *starred)}))
                .collect::<Vec<_>>(),
            "readMask": WRITE_READ_MASK,
        });
        self.call(
            Method::POST,
            "/v1/people:batchCreateContacts",
            &[],
            Some(&body),
            CallKind::Create,
        )
        .await
    }

    /// Google answers created people in request order (the response has no other key).
    fn created(
        chunk: &[(u64, Fields, bool)],
        r: Result<BatchCreateResponseJson, CallError>,
    ) -> Vec<Created> {
        let fail = |e: ProviderError| -> Vec<Created> {
            chunk
                .iter()
                .map(|(id, _, _)| Created {
                    crm_id: *id,
                    result: Err(e.clone()),
                })
                .collect()
        };
        let resp = match r {
            Ok(resp) => resp,
            Err(e) => return fail(e.into_provider()),
        };
        if resp.created_people.len() != chunk.len() {
            return fail(ProviderError::Transient(format!(
                "Google answered {} created contacts for {} sent.",
                resp.created_people.len(),
                chunk.len()
            )));
        }
        chunk
            .iter()
            .zip(resp.created_people)
            .map(|((id, _, _), pr)| {
                let result = match (pr.person, pr.status) {
                    (_, Some(st)) if st.code.unwrap_or(0) != 0 => Err(ProviderError::Permanent(
                        st.describe(StatusCode::BAD_REQUEST),
                    )),
                    (Some(p), _) if !p.resource_name.is_empty() => {
                        let etag = contact_etag(&p);
                        Ok((p.resource_name, etag))
                    }
                    _ => Err(ProviderError::Transient(
                        "Google created a contact but did not name it.".into(),
                    )),
                };
                Created {
                    crm_id: *id,
                    result,
                }
            })
            .collect()
    }

    /// Updates contacts (`(resource name, CONTACT source etag, fields, changed field
    /// names)`), 200 per call, one call at a time, each guarded by its etag (sent as
    /// `person.metadata.sources[type=CONTACT].etag`, as Google requires): a stale etag is a
    /// [`UpdateOutcome::Conflict`]. A batch Google rejects as a whole is retried contact by
    /// contact to find the one at fault. Results come in input order.
    pub async fn batch_update(
        &self,
        items: &[(String, String, Fields, Vec<&'static str>)],
    ) -> Vec<Updated> {
        let mut out = Vec::with_capacity(items.len());
        // Contacts with nothing Google stores changed are not sent.
        let mut send: Vec<(&String, &String, &Fields, String)> = Vec::new();
        let mut order: Vec<&String> = Vec::new();
        let mut done: std::collections::HashMap<String, UpdateOutcome> = Default::default();
        for (id, etag, fields, changed) in items {
            order.push(id);
            let mask = update_mask(changed);
            if etag.is_empty() {
                // No source etag known (a link made before it was kept): Google would
                // refuse the write, so it is a conflict: fetch the person, merge, retry.
                done.insert(id.clone(), UpdateOutcome::Conflict);
            } else if mask.is_empty() {
                done.insert(
                    id.clone(),
                    UpdateOutcome::Updated {
                        etag: Some(etag.clone()),
                    },
                );
            } else {
                send.push((id, etag, fields, mask));
            }
        }
        // One update mask per call: group by mask, keeping order within a group.
        let mut masks: Vec<String> = Vec::new();
        for (_, _, _, m) in &send {
            if !masks.contains(m) {
                masks.push(m.clone());
            }
        }
        for mask in &masks {
            let group: Vec<_> = send.iter().filter(|s| &s.3 == mask).collect();
            for chunk in group.chunks(MAX_BATCH_WRITE) {
                let pairs: Vec<(&String, &String, &Fields)> =
                    chunk.iter().map(|(i, e, f, _)| (*i, *e, *f)).collect();
                match self.update_chunk(&pairs, mask).await {
                    Err(CallError::Api { status, .. })
                        if status == StatusCode::BAD_REQUEST && pairs.len() > 1 =>
                    {
                        for one in &pairs {
                            let r = self.update_chunk(std::slice::from_ref(one), mask).await;
                            done.extend(Self::updated(std::slice::from_ref(one), r));
                        }
                    }
                    r => done.extend(Self::updated(&pairs, r)),
                }
            }
        }
        for id in order {
            let outcome =
                done.remove(id)
                    .unwrap_or(UpdateOutcome::Failed(ProviderError::Permanent(
                        "Contact listed twice in one update.".into(),
                    )));
            out.push(Updated {
                provider_id: id.clone(),
                outcome,
            });
        }
        out
    }

    async fn update_chunk(
        &self,
        chunk: &[(&String, &String, &Fields)],
        mask: &str,
    ) -> Result<BatchUpdateResponseJson, CallError> {
        let contacts: serde_json::Map<String, serde_json::Value> = chunk
            .iter()
            .map(|(id, etag, fields)| {
                let mut person = fields_to_person(fields, false);
                person["resourceName"] = serde_json::json!(id);
                // The CONTACT source's etag, never the person's (see [`contact_etag`]).
                person["metadata"] =
                    serde_json::json!({"sources": [{"type": "CONTACT", "etag": etag}]});
                if let Some(m) = person.as_object_mut() {
                    m.remove("memberships");
                }
                ((*id).clone(), person)
            })
            .collect();
        let body = serde_json::json!({
            "contacts": contacts,
            "updateMask": mask,
            "readMask": WRITE_READ_MASK,
        });
        self.call(
            Method::POST,
            "/v1/people:batchUpdateContacts",
            &[],
            Some(&body),
            CallKind::EmptyOk,
        )
        .await
    }

    fn updated(
        chunk: &[(&String, &String, &Fields)],
        r: Result<BatchUpdateResponseJson, CallError>,
    ) -> Vec<(String, UpdateOutcome)> {
        let single = chunk.len() == 1;
        match r {
            Ok(mut resp) => chunk
                .iter()
                .map(|(id, _, _)| {
                    let outcome = match resp.update_result.remove(id.as_str()) {
                        Some(PersonResponseJson {
                            status: Some(st), ..
                        }) if st.code.unwrap_or(0) != 0 => match st.code {
                            Some(RPC_FAILED_PRECONDITION) => UpdateOutcome::Conflict,
                            Some(RPC_NOT_FOUND) => UpdateOutcome::Gone,
                            _ => UpdateOutcome::Failed(ProviderError::Permanent(
                                st.describe(StatusCode::BAD_REQUEST),
                            )),
                        },
                        Some(pr) => UpdateOutcome::Updated {
                            etag: pr.person.as_ref().and_then(contact_etag),
                        },
                        None => UpdateOutcome::Updated { etag: None },
                    };
                    ((*id).clone(), outcome)
                })
                .collect(),
            Err(e) => {
                let outcome = match &e {
                    CallError::Api { status, error } if single && is_stale_etag(*status, error) => {
                        UpdateOutcome::Conflict
                    }
                    CallError::Api { status, .. } if single && *status == StatusCode::NOT_FOUND => {
                        UpdateOutcome::Gone
                    }
                    _ => UpdateOutcome::Failed(e.into_provider()),
                };
                chunk
                    .iter()
                    .map(|(id, _, _)| ((*id).clone(), outcome.clone()))
                    .collect()
            }
        }
    }

    /// Deletes contacts by resource name, 500 per call, one call at a time. A batch Google
    /// rejects as a whole is retried contact by contact; one already gone counts as deleted.
    pub async fn batch_delete(&self, ids: &[String]) -> Vec<Deleted> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_BATCH_DELETE) {
            match self.delete_chunk(chunk).await {
                Ok(()) => out.extend(chunk.iter().map(|id| Deleted {
                    provider_id: id.clone(),
                    result: Ok(()),
                })),
                Err(CallError::Api { status, .. })
                    if chunk.len() > 1
                        && (status == StatusCode::BAD_REQUEST
                            || status == StatusCode::NOT_FOUND) =>
                {
                    for id in chunk {
                        let result = match self.delete_chunk(std::slice::from_ref(id)).await {
                            Ok(()) => Ok(()),
                            Err(CallError::Api { status, .. })
                                if status == StatusCode::NOT_FOUND =>
                            {
                                Ok(())
                            }
                            Err(e) => Err(e.into_provider()),
                        };
                        out.push(Deleted {
                            provider_id: id.clone(),
                            result,
                        });
                    }
                }
                Err(CallError::Api { status, .. }) if status == StatusCode::NOT_FOUND => out
                    .extend(chunk.iter().map(|id| Deleted {
                        provider_id: id.clone(),
                        result: Ok(()),
                    })),
                Err(e) => {
                    let e = e.into_provider();
                    out.extend(chunk.iter().map(|id| Deleted {
                        provider_id: id.clone(),
                        result: Err(e.clone()),
                    }))
                }
            }
        }
        out
    }

    async fn delete_chunk(&self, chunk: &[String]) -> Result<(), CallError> {
        let body = serde_json::json!({ "resourceNames": chunk });
        let _: serde::de::IgnoredAny = self
            .call(
                Method::POST,
                "/v1/people:batchDeleteContacts",
                &[],
                Some(&body),
                CallKind::EmptyOk,
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::oauth::OAuthClient;
    use secrecy::SecretString;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn person(v: serde_json::Value) -> PersonJson {
        serde_json::from_value(v).expect("fixture parses")
    }

    fn upsert(c: Change) -> ProviderContact {
        match c {
            Change::Upsert(p) => p,
            other => panic!("expected an upsert, got {other:?}"),
        }
    }

    /// A contact as `people.connections.list` returns it, with two names (primary second),
    /// two addresses (primary second), a default photo before a real one.
    fn ada() -> serde_json::Value {
        json!({
          "resourceName": "people/c100",
          "etag": "%EgoBAgMEBQYHCAkKGgQBAgUHIgxBQUFBQUFBQUFBQT0=",
          "metadata": {
            "sources": [{"type": "CONTACT", "id": "100", "etag": "#src-etag",
                         "updateTime": "2026-11-20T10:00:00.123Z"}],
            "objectType": "PERSON"
          },
          "names": [
            {"metadata": {"primary": false, "source": {"type": "PROFILE", "id": "9"}},
             "displayName": "Countess Lovelace", "givenName": "Augusta", "familyName": "Byron"},
            {"metadata": {"primary": true, "source": {"type": "CONTACT", "id": "100"}},
             "displayName": "Ada Lovelace", "familyName": "Lovelace", "givenName": "Ada",
             "displayNameLastFirst": "Lovelace, Ada", "unstructuredName": "Ada Lovelace"}
          ],
          "emailAddresses": [
            {"metadata": {"primary": true}, "value": "ada@example.org", "type": "home",
             "formattedType": "Home"},
            {"metadata": {}, "value": "  "},
            {"value": "ada@work.example"}
          ],
          "phoneNumbers": [
            {"value": "+44 20 7946 0018", "canonicalForm": "+442079460018", "type": "mobile"}
          ],
          "addresses": [
            {"metadata": {"source": {"type": "CONTACT"}}, "streetAddress": "1 Old St",
             "city": "Bath", "countryCode": "GB", "type": "home"},
            {"metadata": {"primary": true, "source": {"type": "CONTACT"}},
             "formattedValue": "12 St James's Sq\nLondon SW1Y 4JH\nUK",
             "streetAddress": "12 St James's Sq", "city": "London", "postalCode": "SW1Y 4JH",
             "countryCode": "GB", "type": "work"}
          ],
          "organizations": [
            {"name": "Analytical Engines Ltd", "title": "Programmer", "type": "work",
             "current": true, "metadata": {"primary": true}}
          ],
          "birthdays": [
            {"metadata": {"primary": true}, "date": {"year": 1815, "month": 12, "day": 10},
             "text": "10 Dec 1815"}
          ],
          "photos": [
            {"metadata": {"primary": true}, "url": "https://lh3.googleusercontent.com/cm/default",
             "default": true},
            {"url": "https://lh3.googleusercontent.com/contacts/real"}
          ],
          "memberships": [
            {"metadata": {"source": {"type": "CONTACT", "id": "100"}},
             "contactGroupMembership": {"contactGroupId": "myContacts",
                                        "contactGroupResourceName": "contactGroups/myContacts"}}
          ],
          "someFutureField": [{"x": 1}]
        })
    }

    #[test]
    fn primary_name_is_used_not_the_first() {
        let c = upsert(map_person(&person(ada()), Group::All));
        assert_eq!(c.fields.first_name, "Ada");
        assert_eq!(c.fields.last_name, "Lovelace");
        assert_eq!(c.provider_id, "people/c100");
        // The link keeps the CONTACT source's etag (what updates need), not the person's.
        assert_eq!(c.etag.as_deref(), Some("#src-etag"));
        assert_eq!(c.scope, "");
    }

    #[test]
    fn first_name_entry_is_used_when_none_is_primary() {
        let p = person(json!({"resourceName": "people/c1", "names": [
            {"givenName": "Grace", "familyName": "Hopper"},
            {"givenName": "Amazing", "familyName": "Grace"}]}));
        let c = upsert(map_person(&p, Group::All));
        assert_eq!(
            (c.fields.first_name.as_str(), c.fields.last_name.as_str()),
            ("Grace", "Hopper")
        );
    }

    #[test]
    fn display_name_fallback_splits_last_word_as_last_name() {
        let p = person(json!({"resourceName": "people/c2", "names": [
            {"metadata": {"primary": true}, "displayName": "  Jean  Claude Van Damme "}]}));
        let c = upsert(map_person(&p, Group::All));
        assert_eq!(c.fields.first_name, "Jean Claude Van");
        assert_eq!(c.fields.last_name, "Damme");

        let p = person(json!({"resourceName": "people/c3", "names": [
            {"displayName": "Cher", "givenName": "", "familyName": " "}]}));
        let c = upsert(map_person(&p, Group::All));
        assert_eq!(
            (c.fields.first_name.as_str(), c.fields.last_name.as_str()),
            ("Cher", "")
        );

        let p = person(json!({"resourceName": "people/c4"}));
        let c = upsert(map_person(&p, Group::All));
        assert_eq!(
            (c.fields.first_name.as_str(), c.fields.last_name.as_str()),
            ("", "")
        );
    }

    #[test]
    fn given_name_alone_does_not_use_display_name() {
        let p = person(json!({"resourceName": "people/c5", "names": [
            {"displayName": "Madonna Louise Ciccone", "givenName": "Madonna"}]}));
        let c = upsert(map_person(&p, Group::All));
        assert_eq!(
            (c.fields.first_name.as_str(), c.fields.last_name.as_str()),
            ("Madonna", "")
        );
    }

    #[test]
    fn primary_address_is_used_even_when_not_first() {
        let c = upsert(map_person(&person(ada()), Group::All));
        assert_eq!(
            c.fields.address,
            Some(Address {
                street: Some("12 St James's Sq".into()),
                city: Some("London".into()),
                region: None,
                postal_code: Some("SW1Y 4JH".into()),
                country: Some("GB".into()),
            })
        );
    }

    #[test]
    fn first_address_is_used_without_primary_and_country_beats_country_code() {
        let p = person(json!({"resourceName": "people/c6", "addresses": [
            {"city": "Lyon", "country": "France", "countryCode": "FR", "region": "ARA"},
            {"city": "Paris"}]}));
        let c = upsert(map_person(&p, Group::All));
        let a = c.fields.address.expect("address");
        assert_eq!(a.city.as_deref(), Some("Lyon"));
        assert_eq!(a.country.as_deref(), Some("France"));
        assert_eq!(a.region.as_deref(), Some("ARA"));
    }

    #[test]
    fn empty_address_is_no_address() {
        let p = person(json!({"resourceName": "people/c7", "addresses": [
            {"metadata": {"primary": true}, "type": "home", "formattedValue": ""}]}));
        assert_eq!(upsert(map_person(&p, Group::All)).fields.address, None);
    }

    #[test]
    fn emails_and_phones_keep_order_and_drop_blanks() {
        let c = upsert(map_person(&person(ada()), Group::All));
        assert_eq!(c.fields.emails, vec!["ada@example.org", "ada@work.example"]);
        assert_eq!(c.fields.phones, vec!["+44 20 7946 0018"]);
    }

    #[test]
    fn eleven_emails_are_all_kept_for_the_eligibility_check() {
        let emails: Vec<_> = (0..11)
            .map(|i| json!({"value": format!("p{i}@example.com")}))
            .collect();
        let phones: Vec<_> = (0..12)
            .map(|i| json!({"value": format!("+1555000{i:04}")}))
            .collect();
        let p = person(json!({"resourceName": "people/c8",
            "names": [{"givenName": "Many"}], "emailAddresses": emails, "phoneNumbers": phones}));
        let c = upsert(map_person(&p, Group::All));
        assert_eq!(c.fields.emails.len(), 11);
        assert_eq!(c.fields.emails[10], "p10@example.com");
        assert_eq!(c.fields.phones.len(), 12);
    }

    #[test]
    fn primary_organization_gives_company_and_job_title() {
        let c = upsert(map_person(&person(ada()), Group::All));
        assert_eq!(
            c.fields.organization.as_deref(),
            Some("Analytical Engines Ltd")
        );
        assert_eq!(c.fields.job_title.as_deref(), Some("Programmer"));

        let p = person(json!({"resourceName": "people/c9", "organizations": [
            {"name": "Old Co", "title": "Intern", "current": false},
            {"name": "New Co", "metadata": {"primary": true}}]}));
        let c = upsert(map_person(&p, Group::All));
        assert_eq!(c.fields.organization.as_deref(), Some("New Co"));
        assert_eq!(c.fields.job_title, None);
    }

    #[test]
    fn birthday_with_year_month_and_day_is_kept() {
        let c = upsert(map_person(&person(ada()), Group::All));
        assert_eq!(c.fields.birthday, NaiveDate::from_ymd_opt(1815, 12, 10));
    }

    #[test]
    fn birthday_without_year_is_none() {
        for date in [
            json!({"month": 3, "day": 14}),
            json!({"year": 0, "month": 3, "day": 14}),
            json!({"year": 1990, "month": 3}),
            json!({"year": 1990, "month": 3, "day": 0}),
            json!({"year": 1990}),
            json!({"year": 2023, "month": 2, "day": 30}),
            json!({"year": 2023, "month": 13, "day": 1}),
        ] {
            let p = person(json!({"resourceName": "people/c10",
                "birthdays": [{"date": date, "text": "someday"}]}));
            assert_eq!(
                upsert(map_person(&p, Group::All)).fields.birthday,
                None,
                "{date}"
            );
        }
        let p = person(json!({"resourceName": "people/c10",
            "birthdays": [{"text": "March 14th"}]}));
        assert_eq!(upsert(map_person(&p, Group::All)).fields.birthday, None);
    }

    #[test]
    fn person_breaking_the_schema_is_unreadable_versioned_by_its_source_etag_else_a_hash() {
        let broken = json!({"resourceName": "people/c5", "etag": "%Ep5",
            "metadata": {"sources": [{"type": "CONTACT", "etag": "#s5"}]},
            "names": "Broken Person", "emailAddresses": [{"value": 42}]});
        match decode_person(&broken, Group::All) {
            Change::Unreadable {
                provider_id,
                version,
                error,
            } => {
                assert_eq!(provider_id, "people/c5");
                assert_eq!(version, "#s5");
                assert!(!error.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // No readable name or etag: a stable hash of what was sent stands in for both.
        let nameless = json!({"resourceName": 7, "names": [{"givenName": ["x"]}]});
        let (a, b) = (
            decode_person(&nameless, Group::All),
            decode_person(&nameless, Group::All),
        );
        assert_eq!(a, b);
        assert!(
            matches!(&a, Change::Unreadable { provider_id, version, .. }
                if provider_id.starts_with("unreadable:") && version.starts_with("sha256:")),
            "{a:?}"
        );
        // A deletion is still a deletion, whatever else is wrong with it.
        let gone = json!({"resourceName": "people/c6", "metadata": {"deleted": true}, "names": 1});
        assert_eq!(
            decode_person(&gone, Group::All),
            Change::Deleted {
                provider_id: "people/c6".into()
            }
        );
        assert!(matches!(
            decode_person(&ada(), Group::All),
            Change::Upsert(_)
        ));
    }

    #[test]
    fn previous_resource_names_become_renames_and_their_deletions_are_dropped() {
        let mut p = ada();
        p["metadata"]["previousResourceNames"] = json!(["people/c1", "people/c100"]);
        let change = decode_person(&p, Group::All);
        let mut changes = vec![Change::Deleted {
            provider_id: "people/c1".into(),
        }];
        changes.extend(renames(&p, &change));
        changes.push(change.clone());
        changes.push(Change::Deleted {
            provider_id: "people/c2".into(),
        });
        drop_renamed_deletions(&mut changes);
        assert_eq!(
            changes,
            vec![
                Change::Renamed {
                    from: "people/c1".into(),
                    to: "people/c100".into()
                },
                change,
                Change::Deleted {
                    provider_id: "people/c2".into()
                },
            ]
        );
    }

    #[test]
    fn deleted_person_is_a_deletion() {
        let p = person(json!({"resourceName": "people/c11", "etag": "%Eh",
            "metadata": {"sources": [{"type": "CONTACT", "id": "11"}], "deleted": true}}));
        for g in [Group::All, Group::Starred] {
            assert_eq!(
                map_person(&p, g),
                Change::Deleted {
                    provider_id: "people/c11".into()
                }
            );
        }
    }

    #[test]
    fn group_starred_keeps_starred_and_marks_others_left() {
        let not_starred = person(ada());
        assert_eq!(
            map_person(&not_starred, Group::Starred),
            Change::Left {
                provider_id: "people/c100".into()
            }
        );
        assert!(matches!(
            map_person(&not_starred, Group::All),
            Change::Upsert(_)
        ));

        let mut v = ada();
        v["memberships"].as_array_mut().unwrap().push(json!({
            "metadata": {"source": {"type": "CONTACT", "id": "100"}},
            "contactGroupMembership": {"contactGroupId": "starred",
                                       "contactGroupResourceName": "contactGroups/starred"}}));
        let starred = person(v);
        let c = upsert(map_person(&starred, Group::Starred));
        assert_eq!(c.fields.first_name, "Ada");
    }

    #[test]
    fn default_photo_is_ignored() {
        let c = upsert(map_person(&person(ada()), Group::All));
        assert_eq!(
            c.photo_url.as_deref(),
            Some("https://lh3.googleusercontent.com/contacts/real")
        );
        let p = person(json!({"resourceName": "people/c12", "photos": [
            {"url": "https://lh3.googleusercontent.com/cm/x", "default": true}]}));
        assert_eq!(upsert(map_person(&p, Group::All)).photo_url, None);
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            v: 1,
            sync_token: "tok".into(),
            full_sync_at: Utc::now(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c.clone()));
        assert_eq!(Cursor::decode(b"\x00\x01garbage"), None);
        assert_eq!(
            Cursor::decode(br#"{"v":99,"sync_token":"t","full_sync_at":"2026-01-01T00:00:00Z"}"#),
            None
        );
    }

    // -----------------------------------------------------------------------------------
    // A loopback HTTP server speaking just enough HTTP/1.1 to script answers, including
    // bodies cut off mid-way.
    // -----------------------------------------------------------------------------------

    #[derive(Debug, Clone)]
    struct Req {
        method: String,
        path: String,
        query: Vec<(String, String)>,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Req {
        fn q(&self, k: &str) -> Option<&str> {
            self.query
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        }
        fn header(&self, k: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        }
        fn bearer(&self) -> Option<&str> {
            self.header("authorization")
                .and_then(|h| h.strip_prefix("Bearer "))
        }
        /// The query without the paging parameter, sorted: what must not change in a chain.
        fn fixed_query(&self) -> Vec<(String, String)> {
            let mut q: Vec<_> = self
                .query
                .iter()
                .filter(|(k, _)| k != "pageToken")
                .cloned()
                .collect();
            q.sort();
            q
        }
    }

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        /// Send only this many body bytes, then close (Content-Length stays the full size).
        cut: Option<usize>,
    }

    impl Resp {
        fn json(status: u16, v: serde_json::Value) -> Resp {
            Resp {
                status,
                headers: vec![(
                    "Content-Type".into(),
                    "application/json; charset=UTF-8".into(),
                )],
                body: serde_json::to_vec(&v).unwrap(),
                cut: None,
            }
        }
        fn raw(status: u16, body: &[u8]) -> Resp {
            Resp {
                status,
                headers: vec![],
                body: body.to_vec(),
                cut: None,
            }
        }
        fn header(mut self, k: &str, v: &str) -> Resp {
            self.headers.push((k.into(), v.into()));
            self
        }
    }

    type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

    struct TestServer {
        base: String,
        log: Arc<Mutex<Vec<Req>>>,
        token_calls: Arc<AtomicUsize>,
    }

    impl TestServer {
        /// API requests (the token endpoint excluded).
        fn api_requests(&self) -> Vec<Req> {
            self.log
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.path != "/token")
                .cloned()
                .collect()
        }
    }

    async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Req> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = sock.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let method = first.next()?.to_string();
        let target = first.next()?.to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < len {
            let n = sock.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        let (path, qs) = target.split_once('?').unwrap_or((&target, ""));
        let query = url::form_urlencoded::parse(qs.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Some(Req {
            method,
            path: path.to_string(),
            query,
            headers,
            body,
        })
    }

    /// Serves `api` on a loopback port, plus `/token`: access tokens `t1`, `t2`, ... or,
    /// when `revoked`, `invalid_grant`.
    async fn serve(
        revoked: bool,
        api: impl Fn(&Req) -> Resp + Send + Sync + 'static,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let log: Arc<Mutex<Vec<Req>>> = Arc::default();
        let token_calls = Arc::new(AtomicUsize::new(0));
        let api: Handler = Arc::new(api);
        let (log2, calls2) = (log.clone(), token_calls.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (log, calls, api) = (log2.clone(), calls2.clone(), api.clone());
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut sock).await else {
                        return;
                    };
                    log.lock().unwrap().push(req.clone());
                    let resp = if req.path == "/token" {
                        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                        if revoked {
                            Resp::json(
                                400,
                                json!({"error": "invalid_grant",
                                       "error_description": "Token has been expired or revoked."}),
                            )
                        } else {
                            Resp::json(
                                200,
                                json!({"access_token": format!("t{n}"), "token_type": "Bearer",
                                       "expires_in": 3600}),
                            )
                        }
                    } else {
                        api(&req)
                    };
                    let mut head = format!(
                        "HTTP/1.1 {} Scripted\r\nContent-Length: {}\r\nConnection: close\r\n",
                        resp.status,
                        resp.body.len()
                    );
                    for (k, v) in &resp.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = sock.write_all(head.as_bytes()).await;
                    let end = resp.cut.unwrap_or(resp.body.len()).min(resp.body.len());
                    let _ = sock.write_all(&resp.body[..end]).await;
                    let _ = sock.flush().await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        TestServer {
            base,
            log,
            token_calls,
        }
    }

    fn client_for(srv: &TestServer, group: Group) -> GoogleClient {
        let tokens = Arc::new(TokenSource::new(
            OAuthClient {
                client_id: "test-client".into(),
                client_secret: Some(SecretString::from("shh")),
                token_url: format!("{}/token", srv.base),
                scopes: vec!["https://www.googleapis.com/auth/contacts".into()],
            },
            SecretString::from("refresh-1"),
            Arc::new(|_| Ok(())),
        ));
        GoogleClient::new(srv.base.clone(), group, tokens, RetryPolicy::fast())
    }

    fn recording_progress() -> (ProgressFn, Arc<Mutex<Vec<Progress>>>) {
        let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
        let s = seen.clone();
        (Box::new(move |p| s.lock().unwrap().push(p)), seen)
    }

    fn no_progress() -> ProgressFn {
        Box::new(|_| {})
    }

    fn contact(id: u32, starred: bool) -> serde_json::Value {
        let mut groups = vec![json!({"contactGroupMembership": {
            "contactGroupId": "myContacts", "contactGroupResourceName": "contactGroups/myContacts"}})];
        if starred {
            groups.push(json!({"contactGroupMembership": {
                "contactGroupId": "starred", "contactGroupResourceName": "contactGroups/starred"}}));
        }
        json!({
            "resourceName": format!("people/c{id}"),
            "etag": format!("%E{id}"),
            "metadata": {"sources": [{"type": "CONTACT", "id": format!("{id}"), "etag": format!("#{id}")}],
                         "objectType": "PERSON"},
            "names": [{"metadata": {"primary": true}, "givenName": format!("Given{id}"),
                       "familyName": "Family", "displayName": format!("Given{id} Family")}],
            "emailAddresses": [{"value": format!("c{id}@example.com")}],
            "memberships": groups
        })
    }

    /// Full listing: page 1 (c1, c2) and page 2 (c3, the sync token). Incremental with
    /// `sync-1`: c2 changed, c3 deleted, token `sync-2`.
    fn two_page_book(req: &Req) -> Resp {
        assert_eq!(req.path, "/v1/people/me/connections");
        match (req.q("syncToken"), req.q("pageToken")) {
            (None, None) => Resp::json(
                200,
                json!({"connections": [contact(1, true), contact(2, false)],
                       "nextPageToken": "page-2", "totalPeople": 3, "totalItems": 3}),
            ),
            (None, Some("page-2")) => Resp::json(
                200,
                json!({"connections": [contact(3, true)], "nextSyncToken": "sync-1",
                       "totalPeople": 3, "totalItems": 3}),
            ),
            (Some("sync-1"), None) => Resp::json(
                200,
                json!({"connections": [contact(2, false),
                    {"resourceName": "people/c3", "etag": "%E3x",
                     "metadata": {"sources": [{"type": "CONTACT", "id": "3"}], "deleted": true}}],
                    "nextSyncToken": "sync-2", "totalItems": 2}),
            ),
            other => Resp::json(
                400,
                json!({"error": {"code": 400,
                "message": format!("unexpected {other:?}"), "status": "INVALID_ARGUMENT"}}),
            ),
        }
    }

    fn ids(r: &Round) -> Vec<String> {
        r.changes
            .iter()
            .map(|c| c.provider_id().to_string())
            .collect()
    }

    fn expired_sync_token() -> Resp {
        Resp::json(
            400,
            json!({"error": {
                "code": 400,
                "message": "Sync token is expired. Clear local cache and retry call without the sync token.",
                "status": "FAILED_PRECONDITION",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": "EXPIRED_SYNC_TOKEN",
                             "domain": "people.googleapis.com"}]}}),
        )
    }

    #[tokio::test]
    async fn full_listing_pages_through_to_the_sync_token_with_identical_parameters() {
        let srv = serve(false, two_page_book).await;
        let gc = client_for(&srv, Group::All);
        let (progress, seen) = recording_progress();
        let r = gc.fetch_round(None, &progress).await.expect("round");
        assert!(r.full);
        assert_eq!(r.complete_scopes, vec![String::new()]);
        assert_eq!(r.pages, 2);
        assert_eq!(ids(&r), vec!["people/c1", "people/c2", "people/c3"]);
        assert!(r.changes.iter().all(|c| matches!(c, Change::Upsert(_))));
        let cur = Cursor::decode(&r.cursor).expect("our cursor");
        assert_eq!(cur.sync_token, "sync-1");
        assert!(Utc::now() - cur.full_sync_at < chrono::Duration::minutes(1));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                Progress {
                    pages: 1,
                    contacts: 2,
                    total: Some(3)
                },
                Progress {
                    pages: 2,
                    contacts: 3,
                    total: Some(3)
                },
            ]
        );

        let reqs = srv.api_requests();
        assert_eq!(reqs.len(), 2);
        assert!(reqs.iter().all(|r| r.method == "GET"));
        assert_eq!(reqs[0].q("personFields"), Some(PERSON_FIELDS));
        assert_eq!(reqs[0].q("pageSize"), Some("1000"));
        assert_eq!(reqs[0].q("requestSyncToken"), Some("true"));
        assert_eq!(reqs[0].q("syncToken"), None);
        assert_eq!(reqs[1].q("pageToken"), Some("page-2"));
        assert_eq!(reqs[0].fixed_query(), reqs[1].fixed_query());
        assert_eq!(reqs[0].bearer(), Some("t1"));
    }

    #[tokio::test]
    async fn incremental_round_sends_the_sync_token_and_reports_deletions() {
        let srv = serve(false, two_page_book).await;
        let gc = client_for(&srv, Group::All);
        let first = gc.fetch_round(None, &no_progress()).await.expect("full");
        let r = gc
            .fetch_round(Some(&first.cursor), &no_progress())
            .await
            .expect("incremental");
        assert!(!r.full);
        assert!(r.complete_scopes.is_empty());
        assert_eq!(r.pages, 1);
        assert!(matches!(&r.changes[0], Change::Upsert(c) if c.provider_id == "people/c2"));
        assert_eq!(
            r.changes[1],
            Change::Deleted {
                provider_id: "people/c3".into()
            }
        );
        let cur = Cursor::decode(&r.cursor).unwrap();
        assert_eq!(cur.sync_token, "sync-2");
        // The chain keeps the time of the full listing that began it.
        assert_eq!(
            cur.full_sync_at,
            Cursor::decode(&first.cursor).unwrap().full_sync_at
        );
        let reqs = srv.api_requests();
        assert_eq!(reqs[2].q("syncToken"), Some("sync-1"));
        // Every other parameter is the one of the full listing.
        let without_sync = |r: &Req| {
            r.fixed_query()
                .into_iter()
                .filter(|(k, _)| k != "syncToken")
                .collect::<Vec<_>>()
        };
        assert_eq!(without_sync(&reqs[2]), without_sync(&reqs[0]));
    }

    #[tokio::test]
    async fn group_starred_lists_everyone_and_marks_unstarred_as_left() {
        let srv = serve(false, two_page_book).await;
        let gc = client_for(&srv, Group::Starred);
        let r = gc.fetch_round(None, &no_progress()).await.unwrap();
        assert!(matches!(&r.changes[0], Change::Upsert(c) if c.provider_id == "people/c1"));
        assert_eq!(
            r.changes[1],
            Change::Left {
                provider_id: "people/c2".into()
            }
        );
        assert!(matches!(&r.changes[2], Change::Upsert(c) if c.provider_id == "people/c3"));
    }

    #[tokio::test]
    async fn expired_sync_token_restarts_the_round_as_a_full_listing() {
        let srv = serve(false, |req: &Req| match req.q("syncToken") {
            Some("old") => expired_sync_token(),
            _ => two_page_book(req),
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let stale = Cursor {
            v: 1,
            sync_token: "old".into(),
            full_sync_at: Utc::now(),
        }
        .encode();
        let (progress, seen) = recording_progress();
        let r = gc
            .fetch_round(Some(&stale), &progress)
            .await
            .expect("resync");
        assert!(r.full);
        assert_eq!(r.complete_scopes, vec![String::new()]);
        assert_eq!(ids(&r), vec!["people/c1", "people/c2", "people/c3"]);
        assert_eq!(Cursor::decode(&r.cursor).unwrap().sync_token, "sync-1");
        assert_eq!(seen.lock().unwrap().last().unwrap().contacts, 3);
        let reqs = srv.api_requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[0].q("syncToken"), Some("old"));
        assert_eq!(reqs[1].q("syncToken"), None);
    }

    #[tokio::test]
    async fn http_410_on_a_sync_token_is_treated_as_expired() {
        let srv = serve(false, |req: &Req| match req.q("syncToken") {
            Some("old") => Resp::json(
                410,
                json!({"error": {"code": 410, "message": "Gone",
                                                            "status": "NOT_FOUND"}}),
            ),
            _ => two_page_book(req),
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let stale = Cursor {
            v: 1,
            sync_token: "old".into(),
            full_sync_at: Utc::now(),
        }
        .encode();
        let r = gc
            .fetch_round(Some(&stale), &no_progress())
            .await
            .expect("resync");
        assert!(r.full);
        assert_eq!(r.changes.len(), 3);
    }

    #[tokio::test]
    async fn other_400_is_permanent_not_a_resync() {
        let srv = serve(false, |_: &Req| {
            Resp::json(
                400,
                json!({"error": {"code": 400, "message": "Invalid personFields mask path",
                                             "status": "INVALID_ARGUMENT"}}),
            )
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let cur = Cursor {
            v: 1,
            sync_token: "s".into(),
            full_sync_at: Utc::now(),
        }
        .encode();
        let err = gc
            .fetch_round(Some(&cur), &no_progress())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProviderError::Permanent(m) if m.contains("INVALID_ARGUMENT")),
            "{err:?}"
        );
        assert_eq!(srv.api_requests().len(), 1);
    }

    #[tokio::test]
    async fn chain_older_than_six_days_is_refreshed_with_a_full_listing() {
        let srv = serve(false, two_page_book).await;
        let gc = client_for(&srv, Group::All);
        let old = Cursor {
            v: 1,
            sync_token: "sync-1".into(),
            full_sync_at: Utc::now() - chrono::Duration::hours(6 * 24 + 1),
        }
        .encode();
        let r = gc.fetch_round(Some(&old), &no_progress()).await.unwrap();
        assert!(r.full);
        assert!(srv
            .api_requests()
            .iter()
            .all(|r| r.q("syncToken").is_none()));
        let fresh = Cursor::decode(&r.cursor).unwrap();
        assert!(Utc::now() - fresh.full_sync_at < chrono::Duration::minutes(1));

        // Five days old is still used incrementally.
        let young = Cursor {
            v: 1,
            sync_token: "sync-1".into(),
            full_sync_at: Utc::now() - chrono::Duration::days(5),
        }
        .encode();
        let r = gc.fetch_round(Some(&young), &no_progress()).await.unwrap();
        assert!(!r.full);
    }

    #[tokio::test]
    async fn undecodable_cursor_does_a_full_listing() {
        let srv = serve(false, two_page_book).await;
        let gc = client_for(&srv, Group::All);
        let r = gc
            .fetch_round(Some(b"\x01\x02not-a-cursor"), &no_progress())
            .await
            .unwrap();
        assert!(r.full);
        assert_eq!(r.complete_scopes, vec![String::new()]);
        assert_eq!(r.changes.len(), 3);
    }

    #[tokio::test]
    async fn throttled_429_honours_retry_after_then_succeeds() {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let srv = serve(false, move |req: &Req| {
            if n2.fetch_add(1, Ordering::SeqCst) == 0 {
                Resp::json(
                    429,
                    json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                    "message": "Quota exceeded for quota metric 'Read requests'"}}),
                )
                .header("Retry-After", "0")
            } else {
                two_page_book(req)
            }
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let r = gc
            .fetch_round(None, &no_progress())
            .await
            .expect("after 429");
        assert_eq!(r.changes.len(), 3);
        let reqs = srv.api_requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[0].fixed_query(), reqs[1].fixed_query());
        assert_eq!(reqs[1].q("pageToken"), None);
    }

    #[tokio::test]
    async fn endless_429_ends_as_throttled_and_long_retry_after_is_not_waited() {
        let srv = serve(false, |_: &Req| {
            Resp::json(
                429,
                json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}),
            )
            .header("Retry-After", "0")
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
        assert_eq!(
            err,
            ProviderError::Throttled {
                retry_after: Some(Duration::ZERO)
            }
        );
        assert_eq!(
            srv.api_requests().len(),
            RetryPolicy::fast().max_attempts as usize
        );

        let srv = serve(false, |_: &Req| {
            Resp::json(429, json!({})).header("Retry-After", "3600")
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
        assert_eq!(
            err,
            ProviderError::Throttled {
                retry_after: Some(Duration::from_secs(3600))
            }
        );
        assert_eq!(srv.api_requests().len(), 1);
    }

    #[tokio::test]
    async fn server_errors_are_retried_with_backoff() {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let srv = serve(false, move |req: &Req| {
            match n2.fetch_add(1, Ordering::SeqCst) {
                0 => Resp::raw(500, b"oops"),
                1 => Resp::json(
                    503,
                    json!({"error": {"code": 503, "status": "UNAVAILABLE"}}),
                ),
                _ => two_page_book(req),
            }
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let r = gc
            .fetch_round(None, &no_progress())
            .await
            .expect("after 5xx");
        assert_eq!(r.changes.len(), 3);
    }

    #[tokio::test]
    async fn truncated_or_malformed_page_is_refetched_not_read_as_deletions() {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let srv = serve(false, move |req: &Req| {
            let page2 = req.q("pageToken").is_some();
            if page2 {
                match n2.fetch_add(1, Ordering::SeqCst) {
                    // Cut off by the connection: fewer bytes than Content-Length.
                    0 => {
                        let mut r = two_page_book(req);
                        r.cut = Some(r.body.len() / 2);
                        r
                    }
                    // Complete HTTP, but the JSON stops half-way.
                    1 => {
                        let full = two_page_book(req).body;
                        Resp::raw(200, &full[..full.len() / 2])
                    }
                    // Not JSON at all.
                    2 => Resp::raw(200, b"<html>Bad gateway</html>"),
                    _ => two_page_book(req),
                }
            } else {
                two_page_book(req)
            }
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let r = gc.fetch_round(None, &no_progress()).await.expect("round");
        assert_eq!(ids(&r), vec!["people/c1", "people/c2", "people/c3"]);
        assert_eq!(r.pages, 2);
        let reqs = srv.api_requests();
        assert_eq!(reqs.len(), 5);
        assert!(reqs[1..].iter().all(|r| r.q("pageToken") == Some("page-2")));
    }

    #[tokio::test]
    async fn oversized_page_is_a_failed_fetch_and_is_not_read() {
        let srv = serve(false, |_req: &Req| {
            // Content-Length announces one byte over the cap; only a few bytes follow.
            let mut r = Resp::raw(200, &vec![b' '; MAX_PAGE_BYTES + 1]);
            r.cut = Some(16);
            r
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
        assert!(
            matches!(&err, ProviderError::Transient(m) if m.contains("larger than 64 MiB")),
            "{err:?}"
        );
        // The same request would get the same answer: it is not retried inside the round.
        assert_eq!(srv.api_requests().len(), 1);
    }

    #[test]
    fn over_long_values_count_as_absent_and_the_limit_itself_is_kept() {
        let long = "x".repeat(MAX_FIELD_BYTES + 1);
        let at_limit = format!("{}@example.org", "a".repeat(MAX_FIELD_BYTES - 12));
        assert_eq!(at_limit.len(), MAX_FIELD_BYTES);
        let p = person(json!({
            "resourceName": "people/c9",
            "names": [{"givenName": long, "familyName": "Lovelace"}],
            "emailAddresses": [{"value": format!("{long}@example.org")}, {"value": at_limit}],
            "phoneNumbers": [{"value": long}],
            "organizations": [{"name": long, "title": "Countess"}],
        }));
        let c = upsert(map_person(&p, Group::All));
        assert_eq!(c.fields.first_name, "");
        assert_eq!(c.fields.last_name, "Lovelace");
        assert_eq!(c.fields.emails, vec![at_limit]);
        assert!(c.fields.phones.is_empty());
        assert_eq!(c.fields.organization, None);
        assert_eq!(c.fields.job_title.as_deref(), Some("Countess"));
    }

    #[tokio::test]
    async fn persistently_truncated_page_is_a_transient_error() {
        let srv = serve(false, |req: &Req| {
            let mut r = two_page_book(req);
            if req.q("pageToken").is_some() {
                r.cut = Some(10);
            }
            r
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
        assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn last_page_without_sync_token_is_not_trusted() {
        let srv = serve(false, |_: &Req| Resp::json(200, json!({}))).await;
        let gc = client_for(&srv, Group::All);
        let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
        assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    }

    #[tokio::test]
    async fn empty_address_book_is_a_complete_empty_listing() {
        let srv = serve(false, |_: &Req| {
            Resp::json(200, json!({"nextSyncToken": "empty-1", "totalItems": 0}))
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let (progress, seen) = recording_progress();
        let r = gc.fetch_round(None, &progress).await.unwrap();
        assert!(r.full && r.changes.is_empty());
        assert_eq!(r.complete_scopes, vec![String::new()]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Progress {
                pages: 1,
                contacts: 0,
                total: Some(0)
            }]
        );
    }

    #[tokio::test]
    async fn unauthorized_401_refreshes_the_token_once_and_retries() {
        let srv = serve(false, |req: &Req| match req.bearer() {
            Some("t1") => Resp::json(
                401,
                json!({"error": {"code": 401,
                "message": "Request had invalid authentication credentials.",
                "status": "UNAUTHENTICATED"}}),
            ),
            Some("t2") => two_page_book(req),
            other => panic!("unexpected bearer {other:?}"),
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let r = gc
            .fetch_round(None, &no_progress())
            .await
            .expect("after refresh");
        assert_eq!(r.changes.len(), 3);
        assert_eq!(srv.token_calls.load(Ordering::SeqCst), 2);
        let bearers: Vec<_> = srv
            .api_requests()
            .iter()
            .map(|r| r.bearer().unwrap_or("").to_string())
            .collect();
        assert_eq!(bearers, vec!["t1", "t2", "t2"]);
        let token_reqs: Vec<Req> = srv
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == "/token")
            .cloned()
            .collect();
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&token_reqs[1].body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert!(form.contains(&("grant_type".into(), "refresh_token".into())));
        assert!(form.contains(&("refresh_token".into(), "refresh-1".into())));
    }

    #[tokio::test]
    async fn second_401_after_refresh_is_reauth_required() {
        let srv = serve(false, |_: &Req| {
            Resp::json(
                401,
                json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
            )
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
        // The same answer as every provider gives to a refused fresh token.
        assert!(matches!(err, ProviderError::ReauthRequired(_)), "{err:?}");
        assert_eq!(srv.api_requests().len(), 2);
        assert_eq!(srv.token_calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn revoked_grant_is_reauth_required() {
        let srv = serve(true, two_page_book).await;
        let gc = client_for(&srv, Group::All);
        let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
        assert!(matches!(err, ProviderError::ReauthRequired(_)), "{err:?}");
        assert!(srv.api_requests().is_empty());
    }

    fn with_photo(url: String) -> ProviderContact {
        ProviderContact {
            provider_id: "people/c1".into(),
            etag: None,
            scope: String::new(),
            fields: Fields::default(),
            photo_url: Some(url),
        }
    }

    #[tokio::test]
    async fn photo_is_fetched_and_missing_or_oversized_photos_are_none() {
        let srv = serve(false, |req: &Req| match req.path.as_str() {
            "/photo/small" => {
                Resp::raw(200, b"\xff\xd8\xff\xe0JFIF").header("Content-Type", "image/jpeg")
            }
            "/photo/big" => Resp::raw(200, &vec![7u8; MAX_PHOTO_BYTES + 1]),
            "/photo/flaky" if req.header("x-never").is_none() => Resp::raw(503, b""),
            _ => Resp::raw(404, b"not found"),
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let got = gc
            .fetch_photo(&with_photo(format!("{}/photo/small", srv.base)))
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(&b"\xff\xd8\xff\xe0JFIF"[..]));
        assert_eq!(
            gc.fetch_photo(&with_photo(format!("{}/photo/big", srv.base)))
                .await,
            Ok(None)
        );
        assert_eq!(
            gc.fetch_photo(&with_photo(format!("{}/photo/gone", srv.base)))
                .await,
            Ok(None)
        );
        let err = gc
            .fetch_photo(&with_photo(format!("{}/photo/flaky", srv.base)))
            .await
            .unwrap_err();
        assert!(err.is_retryable());
        let mut none = with_photo(String::new());
        none.photo_url = None;
        assert_eq!(gc.fetch_photo(&none).await, Ok(None));
    }

    // ---- two-way writes ----

    fn full_fields() -> Fields {
        Fields {
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
            emails: vec!["ada@example.org".into(), "ada@work.example".into()],
            phones: vec!["+44 20 7946 0018".into()],
            address: Some(Address {
                street: Some("12 St James's Sq".into()),
                city: Some("London".into()),
                region: None,
                postal_code: Some("SW1Y 4JH".into()),
                country: Some("United Kingdom".into()),
            }),
            organization: Some("Analytical Engines Ltd".into()),
            job_title: Some("Programmer".into()),
            birthday: NaiveDate::from_ymd_opt(1815, 12, 10),
        }
    }

    fn body_json(r: &Req) -> serde_json::Value {
        serde_json::from_slice(&r.body).expect("JSON request body")
    }

    #[test]
    fn fields_to_person_round_trips_through_map_person() {
        for starred in [false, true] {
            let f = full_fields();
            let v = fields_to_person(&f, starred);
            let p: PersonJson = serde_json::from_value(
                json!({"resourceName": "people/c1", "etag": "e"})
                    .as_object()
                    .unwrap()
                    .clone()
                    .into_iter()
                    .chain(v.as_object().unwrap().clone())
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
            )
            .unwrap();
            assert_eq!(is_starred(&p), starred);
            let group = if starred { Group::Starred } else { Group::All };
            assert_eq!(upsert(map_person(&p, group)).fields, f);
        }
        let empty = fields_to_person(&Fields::default(), false);
        assert_eq!(empty["addresses"], json!([]));
        assert_eq!(empty["organizations"], json!([]));
        assert_eq!(empty["birthdays"], json!([]));
        assert_eq!(
            empty["memberships"],
            json!([{"contactGroupMembership": {"contactGroupResourceName": "contactGroups/myContacts"}}])
        );
    }

    #[test]
    fn update_mask_maps_crm_fields_to_person_fields() {
        use crate::model::field;
        assert_eq!(
            update_mask(&[field::JOB_TITLE, field::NAME, field::COMPANY, field::PHOTO]),
            "names,organizations"
        );
        assert_eq!(
            update_mask(&[
                field::BIRTHDAY,
                field::ADDRESS,
                field::PHONES,
                field::EMAILS
            ]),
            "emailAddresses,phoneNumbers,addresses,birthdays"
        );
        assert_eq!(update_mask(&[field::PHOTO]), "");
    }

    #[tokio::test]
    async fn batch_create_sends_at_most_200_per_call_and_answers_in_input_order() {
        let made = Arc::new(AtomicUsize::new(0));
        let m2 = made.clone();
        let srv = serve(false, move |req: &Req| {
            assert_eq!(
                (req.method.as_str(), req.path.as_str()),
                ("POST", "/v1/people:batchCreateContacts")
            );
            let b = body_json(req);
            assert_eq!(b["readMask"], "metadata");
            let people: Vec<_> = b["contacts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    let n = m2.fetch_add(1, Ordering::SeqCst);
                    json!({"httpStatusCode": 200, "requestedResourceName": "",
                           "person": {"resourceName": format!("people/n{n}"),
                                      "etag": format!("%Person{n}"),
                                      "metadata": {"sources": [{"type": "CONTACT", "etag": format!("#N{n}")}]},
                                      "names": c["contactPerson"]["names"]}})
                })
                .collect();
            Resp::json(200, json!({"createdPeople": people}))
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let items: Vec<(u64, Fields, bool)> = (0..450u64)
            .map(|i| {
                let mut f = full_fields();
                f.first_name = format!("P{i}");
                (1000 + i, f, i == 7)
            })
            .collect();
        let out = gc.batch_create(&items).await;
        assert_eq!(out.len(), 450);
        for (i, c) in out.iter().enumerate() {
            assert_eq!(c.crm_id, 1000 + i as u64);
            assert_eq!(
                c.result,
                Ok((format!("people/n{i}"), Some(format!("#N{i}")))),
                "the CONTACT source's etag is kept, not the person's"
            );
        }
        let reqs = srv.api_requests();
        let sizes: Vec<usize> = reqs
            .iter()
            .map(|r| body_json(r)["contacts"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, vec![200, 200, 50]);
        let first = body_json(&reqs[0]);
        let starred = &first["contacts"][7]["contactPerson"]["memberships"];
        assert_eq!(starred.as_array().unwrap().len(), 2);
        assert_eq!(
            starred[1]["contactGroupMembership"]["contactGroupResourceName"],
            "contactGroups/starred"
        );
        assert_eq!(
            first["contacts"][8]["contactPerson"]["memberships"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn batch_create_rejected_as_a_whole_is_retried_one_by_one() {
        let srv = serve(false, |req: &Req| {
            let b = body_json(req);
            let contacts = b["contacts"].as_array().unwrap();
            if contacts
                .iter()
                .any(|c| c["contactPerson"]["names"][0]["givenName"] == "Bad")
            {
                return Resp::json(
                    400,
                    json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                    "message": "Invalid contact"}}),
                );
            }
            let people: Vec<_> = contacts
                .iter()
                .map(|c| {
                    json!({"person": {"resourceName": format!("people/{}",
                    c["contactPerson"]["names"][0]["givenName"].as_str().unwrap())}})
                })
                .collect();
            Resp::json(200, json!({"createdPeople": people}))
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let mk = |id: u64, name: &str| {
            let mut f = full_fields();
            f.first_name = name.into();
            (id, f, false)
        };
        let out = gc
            .batch_create(&[mk(1, "Good"), mk(2, "Bad"), mk(3, "Fine")])
            .await;
        assert_eq!(out[0].result, Ok(("people/Good".into(), None)));
        assert!(
            matches!(&out[1].result, Err(ProviderError::Permanent(m)) if m.contains("INVALID_ARGUMENT"))
        );
        assert_eq!(out[2].result, Ok(("people/Fine".into(), None)));
        assert_eq!(srv.api_requests().len(), 4);
    }

    #[tokio::test]
    async fn batch_create_is_not_resent_after_a_server_error_but_is_after_429() {
        let srv = serve(false, |_: &Req| Resp::raw(500, b"internal")).await;
        let gc = client_for(&srv, Group::All);
        let out = gc.batch_create(&[(1, full_fields(), false)]).await;
        assert!(matches!(out[0].result, Err(ProviderError::Transient(_))));
        assert_eq!(
            srv.api_requests().len(),
            1,
            "a create that may have landed is not resent"
        );

        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let srv = serve(false, move |_: &Req| {
            if n2.fetch_add(1, Ordering::SeqCst) == 0 {
                Resp::json(429, json!({})).header("Retry-After", "0")
            } else {
                Resp::json(
                    200,
                    json!({"createdPeople": [{"person": {"resourceName": "people/x"}}]}),
                )
            }
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let out = gc.batch_create(&[(1, full_fields(), false)]).await;
        assert_eq!(out[0].result, Ok(("people/x".into(), None)));
    }

    #[tokio::test]
    async fn batch_update_sends_the_contact_source_etag_and_masks_and_reports_stale_etag_as_conflict(
    ) {
        use crate::model::field;
        let srv = serve(false, |req: &Req| {
            assert_eq!(req.path, "/v1/people:batchUpdateContacts");
            let b = body_json(req);
            let contacts = b["contacts"].as_object().unwrap();
            let src = |p: &serde_json::Value| {
                p["metadata"]["sources"][0]["etag"]
                    .as_str()
                    .unwrap()
                    .to_string()
            };
            for (id, p) in contacts {
                assert_eq!(p["resourceName"], json!(id));
                assert_eq!(p["metadata"]["sources"][0]["type"], "CONTACT");
                assert!(
                    p.get("etag").is_none(),
                    "the person etag is a cache tag, not sent"
                );
                assert!(p.get("memberships").is_none());
            }
            if contacts.values().any(|p| src(p).starts_with("stale")) {
                return Resp::json(400, json!({"error": {"code": 400, "status": "FAILED_PRECONDITION",
                    "message": "Request person.metadata.sources.etag is different than the current person.metadata.sources.etag. Clear local cache and get the latest person."}}));
            }
            // The answer's person etag differs from its source etag; the source one counts.
            let result: serde_json::Map<String, serde_json::Value> = contacts
                .iter()
                .map(|(id, p)| (id.clone(), json!({"httpStatusCode": 200, "requestedResourceName": id,
                    "person": {"resourceName": id, "etag": "%EgPersonTag",
                        "metadata": {"sources": [{"type": "CONTACT", "id": "1", "etag": format!("{}+", src(p))}]}}})))
                .collect();
            Resp::json(200, json!({"updateResult": result}))
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let items = vec![
            (
                "people/c1".to_string(),
                "e1".to_string(),
                full_fields(),
                vec![field::NAME, field::JOB_TITLE],
            ),
            (
                "people/c2".to_string(),
                "stale2".to_string(),
                full_fields(),
                vec![field::COMPANY, field::NAME],
            ),
            (
                "people/c3".to_string(),
                "e3".to_string(),
                full_fields(),
                vec![field::PHOTO],
            ),
            (
                "people/c4".to_string(),
                "e4".to_string(),
                full_fields(),
                vec![field::EMAILS],
            ),
        ];
        let out = gc.batch_update(&items).await;
        let got: Vec<_> = out
            .iter()
            .map(|u| (u.provider_id.as_str(), u.outcome.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "people/c1",
                    UpdateOutcome::Updated {
                        etag: Some("e1+".into())
                    }
                ),
                ("people/c2", UpdateOutcome::Conflict),
                (
                    "people/c3",
                    UpdateOutcome::Updated {
                        etag: Some("e3".into())
                    }
                ),
                (
                    "people/c4",
                    UpdateOutcome::Updated {
                        etag: Some("e4+".into())
                    }
                ),
            ]
        );
        let reqs = srv.api_requests();
        let masks: Vec<(String, usize)> = reqs
            .iter()
            .map(|r| {
                let b = body_json(r);
                (
                    b["updateMask"].as_str().unwrap().to_string(),
                    b["contacts"].as_object().unwrap().len(),
                )
            })
            .collect();
        // c1 and c2 share a mask; the batch fails on c2's etag and is retried one by one.
        assert_eq!(
            masks,
            vec![
                ("names,organizations".to_string(), 2),
                ("names,organizations".to_string(), 1),
                ("names,organizations".to_string(), 1),
                ("emailAddresses".to_string(), 1),
            ]
        );
        assert_eq!(body_json(&reqs[1])["readMask"], "metadata");
    }

    #[tokio::test]
    async fn batch_update_per_item_status_maps_to_conflict_and_gone() {
        use crate::model::field;
        let srv = serve(false, |_: &Req| {
            Resp::json(200, json!({"updateResult": {
                "people/c1": {"status": {"code": 9, "message": "etag mismatch"}},
                "people/c2": {"status": {"code": 5, "message": "not found"}},
                "people/c3": {"status": {"code": 3, "message": "bad phone"}},
                "people/c4": {"status": {"code": 0}, "person": {"resourceName": "people/c4", "etag": "%Ep4",
                    "metadata": {"sources": [{"type": "CONTACT", "etag": "n4"}]}}}
            }}))
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let items: Vec<_> = (1..=4)
            .map(|i| {
                (
                    format!("people/c{i}"),
                    format!("e{i}"),
                    full_fields(),
                    vec![field::PHONES],
                )
            })
            .collect();
        let out = gc.batch_update(&items).await;
        assert_eq!(out[0].outcome, UpdateOutcome::Conflict);
        assert_eq!(out[1].outcome, UpdateOutcome::Gone);
        assert!(matches!(
            out[2].outcome,
            UpdateOutcome::Failed(ProviderError::Permanent(_))
        ));
        assert_eq!(
            out[3].outcome,
            UpdateOutcome::Updated {
                etag: Some("n4".into())
            }
        );
    }

    #[tokio::test]
    async fn batch_delete_sends_at_most_500_per_call_and_gone_counts_as_deleted() {
        let srv = serve(false, |req: &Req| {
            assert_eq!(req.path, "/v1/people:batchDeleteContacts");
            let b = body_json(req);
            let names = b["resourceNames"].as_array().unwrap();
            if names.iter().any(|n| n == "people/missing") {
                return Resp::json(
                    404,
                    json!({"error": {"code": 404, "status": "NOT_FOUND",
                    "message": "Requested entity was not found."}}),
                );
            }
            if names.iter().any(|n| n == "people/locked") {
                return Resp::json(
                    400,
                    json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                    "message": "Not a contact"}}),
                );
            }
            // Google's Empty answer; an empty body is accepted too.
            if names.len() == 1 {
                Resp::raw(200, b"")
            } else {
                Resp::json(200, json!({}))
            }
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let ids: Vec<String> = (0..1200).map(|i| format!("people/c{i}")).collect();
        let out = gc.batch_delete(&ids).await;
        assert_eq!(out.len(), 1200);
        assert!(out.iter().all(|d| d.result.is_ok()));
        let sizes: Vec<usize> = srv
            .api_requests()
            .iter()
            .map(|r| body_json(r)["resourceNames"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, vec![500, 500, 200]);

        let out = gc
            .batch_delete(&[
                "people/a".into(),
                "people/missing".into(),
                "people/locked".into(),
            ])
            .await;
        assert_eq!(out[0].result, Ok(()));
        assert_eq!(out[1].result, Ok(()));
        assert!(matches!(out[2].result, Err(ProviderError::Permanent(_))));
    }

    #[tokio::test]
    async fn repeated_page_token_stops_instead_of_looping() {
        let srv = serve(false, |_: &Req| {
            Resp::json(
                200,
                json!({"connections": [contact(1, false)], "nextPageToken": "same"}),
            )
        })
        .await;
        let gc = client_for(&srv, Group::All);
        let err = gc.fetch_round(None, &no_progress()).await.unwrap_err();
        assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
        assert_eq!(srv.api_requests().len(), 2);
    }
}
