//! Microsoft Graph personal contacts (Outlook), one-way reads plus the two-way write calls.
//!
//! Wire facts live in `shared/reference/ms-graph-contacts.md`; the rules this client keeps:
//!
//! - **Folders.** Every round enumerates the default Contacts folder (well-known name
//!   `contacts`) and all its child folders, recursively, following `@odata.nextLink`.
//! - **Delta per folder.** Each folder has its own delta link; the cursor is
//!   [`GraphCursor`] as JSON. A folder without a link (new, first sync, or after the link
//!   expired) is listed in full and reported in [`Round::complete_scopes`].
//! - **Expiry.** HTTP 410, or an error code `SyncStateNotFound` / `resyncRequired` (any
//!   case, top-level or nested), drops that folder's link and lists the folder again in full
//!   within the same round. Nothing of the failed attempt is kept.
//! - **Vanished folders.** A folder in the cursor that discovery no longer lists is looked up
//!   by id: only a 404 `ErrorItemNotFound` makes it a gone scope; any other failure fails
//!   the round. A failed listing never becomes a deletion.
//! - **Headers.** `Prefer: odata.maxpagesize=200, IdType="ImmutableId"` on every request,
//!   follow-ups included (the header is not carried by next/delta links).
//! - **Politeness.** At most four requests in flight per mailbox; 429/5xx retried per
//!   [`RetryPolicy`] honouring `Retry-After` (fractions too) for the whole mailbox; 401
//!   refreshes the token once; a cut-off or malformed body is a failed request (retried,
//!   then [`ProviderError::Transient`]), never an empty page.
//! - **Secrets.** Access tokens and next/delta links (they carry state tokens) are never
//!   logged or put into error messages; folder ids and counts are.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use chrono::NaiveDate;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::http::{read_capped, retry_after, retryable_status, transport_error, RetryPolicy};
use super::oauth::TokenSource;
use super::{Jpeg, ProgressFn, Provider, ProviderError, Round, MAX_FIELD_BYTES, MAX_PHOTO_BYTES};
use crate::model::{Address, Change, Fields, Progress, ProviderContact};

/// The `Prefer` header sent on every request.
pub const PREFER: &str = "odata.maxpagesize=200, IdType=\"ImmutableId\"";

/// Requests in flight per mailbox (Outlook's documented concurrency limit).
pub const MAX_IN_FLIGHT: usize = 4;

/// Outlook's documented request budget per app and mailbox: 10,000 requests…
pub const DEFAULT_REQUEST_BUDGET: u32 = 10_000;
/// …in a 10-minute period.
pub const DEFAULT_BUDGET_WINDOW: Duration = Duration::from_secs(600);

/// A token bucket of `budget` requests refilled evenly over `window` (GCRA), full at start.
pub type Budget = governor::DefaultDirectRateLimiter;

/// The request budget of one mailbox; `None` when `budget` or `window` is zero.
///
/// The refill rate is `budget` per `window`, but the bucket holds a tenth less than
/// `budget`: requests reach the service a little later than they leave, and an uneven delay
/// could otherwise make one of them arrive before the service's own bucket has refilled. The
/// tenth held back is that tolerance (60 s of requests at Graph's defaults).
pub fn request_budget(budget: u32, window: Duration) -> Option<Budget> {
    let period = window.checked_div(budget)?;
    let burst = std::num::NonZeroU32::new((budget - budget / 10).max(1))?;
    let quota = governor::Quota::with_period(period)?.allow_burst(burst);
    Some(governor::RateLimiter::direct(quota))
}

/// Contact properties requested from delta and get-by-id.
pub const SELECT: &str = "id,givenName,surname,displayName,emailAddresses,businessPhones,\
homePhones,mobilePhone,homeAddress,businessAddress,otherAddress,companyName,jobTitle,birthday,\
parentFolderId,changeKey";

const FOLDER_SELECT: &str = "id,displayName,parentFolderId";

/// PidLidHasPicture (property set PSETID_Address, long id 0x8015, Boolean) as a Graph
/// single-value extended property: TRUE when the contact has a photo attachment.
pub const HAS_PICTURE: &str = "Boolean {00062004-0000-0000-C000-000000000046} Id 0x8015";

/// Page size of the photo-id listing (a non-delta list accepts `$top`; delta does not).
const PHOTO_LIST_TOP: usize = 999;

/// Largest JSON response we read (a 200-contact page is far below this).
const MAX_JSON_BYTES: usize = super::MAX_PAGE_BYTES;

/// Graph's multi-value limits on write (reference §2.2).
pub const MAX_EMAILS: usize = 3;
pub const MAX_BUSINESS_PHONES: usize = 2;
pub const MAX_HOME_PHONES: usize = 2;

/// The delegated permission two-way sync needs to write contacts.
pub const WRITE_SCOPE: &str = "Contacts.ReadWrite";

/// Most requests in one `$batch`.
pub const MAX_BATCH: usize = 20;

/// How often one folder may be restarted from scratch within a round (expired links).
const MAX_FOLDER_RESTARTS: u32 = 2;

/// The stored cursor: one delta link per contact folder id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphCursor {
    pub folders: BTreeMap<String, String>,
}

impl GraphCursor {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn decode(bytes: &[u8]) -> Option<GraphCursor> {
        serde_json::from_slice(bytes).ok()
    }
}

// ---------------------------------------------------------------------------------------
// Wire structs and the mapping (pure)
// ---------------------------------------------------------------------------------------

/// A Graph `emailAddress`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GraphEmail {
    pub name: Option<String>,
    pub address: Option<String>,
}

/// A Graph `physicalAddress` (an empty one arrives as `{}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GraphAddress {
    pub street: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postal_code: Option<String>,
    pub country_or_region: Option<String>,
}

/// A Graph contact as delta or get-by-id sends it; every property may be missing or null.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GraphContact {
    pub id: String,
    #[serde(rename = "@odata.etag")]
    pub odata_etag: Option<String>,
    pub change_key: Option<String>,
    pub parent_folder_id: Option<String>,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    pub email_addresses: Option<Vec<Option<GraphEmail>>>,
    pub business_phones: Option<Vec<Option<String>>>,
    pub home_phones: Option<Vec<Option<String>>>,
    pub mobile_phone: Option<String>,
    pub home_address: Option<GraphAddress>,
    pub business_address: Option<GraphAddress>,
    pub other_address: Option<GraphAddress>,
    pub company_name: Option<String>,
    pub job_title: Option<String>,
    pub birthday: Option<String>,
    #[serde(rename = "@removed")]
    pub removed: Option<Value>,
}

/// A trimmed, non-empty value; a value longer than [`MAX_FIELD_BYTES`] counts as absent.
fn clean(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .filter(|s| s.len() <= MAX_FIELD_BYTES)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

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

/// The public Graph v1.0 endpoint.
pub const DEFAULT_API_BASE: &str = "https://graph.microsoft.com/v1.0";

fn photo_url(api_base: &str, id: &str) -> String {
    format!(
        "{}/me/contacts/{}/photo/$value",
        api_base.trim_end_matches('/'),
        seg(id)
    )
}

/// Percent-encodes one path segment (ids are opaque and case-sensitive).
fn seg(s: &str) -> String {
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

/// Whether a delta row lacks any property of [`SELECT`]. Graph documents that an updated
/// item in a delta response carries "at least the properties that have been updated", so
/// a missing property means "not sent", never "cleared"; only a property sent as `null`,
/// `[]` or `{}` is cleared. A partial row is fetched whole before it is mapped.
pub fn is_partial(item: &serde_json::Map<String, Value>) -> bool {
    SELECT
        .split(',')
        .filter(|p| *p != "id")
        .any(|p| !item.contains_key(p))
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

// ---------------------------------------------------------------------------------------
// HTTP plumbing
// ---------------------------------------------------------------------------------------

/// A non-success answer that retrying does not fix, with the Graph error codes it carried.
#[derive(Debug, Clone, PartialEq)]
struct ApiError {
    status: StatusCode,
    /// `error.code` and every nested `code`, as sent.
    codes: Vec<String>,
}

impl ApiError {
    fn has_code(&self, code: &str) -> bool {
        self.codes.iter().any(|c| c.eq_ignore_ascii_case(code))
    }
    fn sync_state_lost(&self) -> bool {
        self.status == StatusCode::GONE
            || self.has_code("SyncStateNotFound")
            || self.has_code("resyncRequired")
    }
    fn item_not_found(&self) -> bool {
        self.status == StatusCode::NOT_FOUND
            && (self.has_code("ErrorItemNotFound") || self.has_code("itemNotFound"))
    }
    fn describe(&self) -> String {
        match self.codes.first() {
            Some(c) => format!("HTTP {} ({c})", self.status.as_u16()),
            None => format!("HTTP {}", self.status.as_u16()),
        }
    }
    fn into_provider_error(self, what: &str) -> ProviderError {
        let msg = format!("Microsoft Graph answered {} to {what}.", self.describe());
        if self.status == StatusCode::UNAUTHORIZED {
            ProviderError::ReauthRequired(msg)
        } else if self.status.is_server_error() || self.status == StatusCode::REQUEST_TIMEOUT {
            ProviderError::Transient(msg)
        } else {
            ProviderError::Permanent(msg)
        }
    }
}

fn error_codes(body: &[u8]) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k.eq_ignore_ascii_case("code") {
                        if let Value::String(s) = v {
                            out.push(s.clone());
                        }
                    } else {
                        walk(v, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        // The top-level code first.
        if let Some(c) = v.pointer("/error/code").and_then(Value::as_str) {
            out.push(c.to_string());
        }
        if let Some(e) = v.get("error") {
            let mut nested = Vec::new();
            walk(e, &mut nested);
            for c in nested {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// What one call produced.
enum Reply<T> {
    Ok(T),
    /// The body exceeded the cap given to the call.
    TooBig,
    Api(ApiError),
}

struct Call<'a> {
    method: Method,
    url: &'a str,
    body: Option<&'a Value>,
    if_match: Option<&'a str>,
    cap: usize,
    /// Requests this call counts against the mailbox's budget (a `$batch`: its parts).
    cost: u32,
    /// Whether the request may be sent again after a failure that may have reached the
    /// service (a timeout, a 5xx). A `$batch` with creates may not: only 429 and failures to
    /// connect are retried for it.
    idempotent: bool,
}

impl<'a> Call<'a> {
    fn get(url: &'a str) -> Self {
        Call {
            method: Method::GET,
            url,
            body: None,
            if_match: None,
            cap: MAX_JSON_BYTES,
            cost: 1,
            idempotent: true,
        }
    }
}

/// One page of a delta or folder listing.
#[derive(Debug, Deserialize)]
pub struct Page {
    #[serde(default)]
    pub value: Vec<Value>,
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    pub delta_link: Option<String>,
}

/// Decodes a listing page; a delta page must end in a next link or a delta link.
pub fn parse_page(body: &[u8], delta: bool) -> Result<Page, String> {
    let p: Page = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if delta && p.next_link.is_none() && p.delta_link.is_none() {
        return Err("a delta page without a next or delta link".into());
    }
    Ok(p)
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

#[derive(Debug, Deserialize)]
struct Folder {
    id: String,
}

/// How listing one folder ended.
enum FolderOutcome {
    Done {
        changes: Vec<Change>,
        delta_link: String,
    },
    /// The delta link or a skip token expired: list the folder again in full.
    Expired,
}

// ---------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------

/// Microsoft Graph contacts client for one mailbox.
pub struct GraphClient {
    api_base: String,
    tokens: Arc<TokenSource>,
    retry: RetryPolicy,
    http: reqwest::Client,
    in_flight: Semaphore,
    /// Requests per window for this mailbox, shared by reads, photos and writes.
    budget: Option<Budget>,
    /// Requests sent (every attempt), for tests and the benchmark.
    sent: std::sync::atomic::AtomicU64,
    /// No request before this instant (a `Retry-After` holds for the whole mailbox).
    pause_until: StdMutex<Option<Instant>>,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    pub fn new(api_base: String, tokens: Arc<TokenSource>, retry: RetryPolicy) -> Self {
        GraphClient {
            api_base: api_base.trim_end_matches('/').to_string(),
            http: super::http::client(retry.request_timeout),
            tokens,
            retry,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            budget: request_budget(DEFAULT_REQUEST_BUDGET, DEFAULT_BUDGET_WINDOW),
            sent: std::sync::atomic::AtomicU64::new(0),
            pause_until: StdMutex::new(None),
        }
    }

    /// Sets the mailbox's request budget: at most `budget` requests per `window` (a zero
    /// turns the budget off).
    pub fn with_budget(mut self, budget: u32, window: Duration) -> Self {
        self.budget = request_budget(budget, window);
        self
    }

    /// Requests sent so far (every attempt, `$batch` parts counted one by one).
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    /// Links from the service must point at the API we talk to: the bearer token goes with
    /// them.
    fn check_link(&self, link: &str) -> Result<(), ProviderError> {
        let origin = |s: &str| url::Url::parse(s).ok().map(|u| u.origin());
        match (origin(link), origin(&self.api_base)) {
            (Some(a), Some(b)) if a == b => Ok(()),
            _ => Err(ProviderError::Permanent(
                "Microsoft Graph sent a paging link to another host; refusing to follow it.".into(),
            )),
        }
    }

    async fn wait_for_pause(&self) {
        let until = *self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = until {
            if t > Instant::now() {
                tokio::time::sleep_until(t).await;
            }
        }
    }

    fn pause_for(&self, d: Duration) {
        let t = Instant::now() + d;
        let mut g = self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none_or(|old| old < t) {
            *g = Some(t);
        }
    }

    /// Sends one request with auth, retries and the in-flight limit, reads the body (at most
    /// `call.cap` bytes) and hands a success body to `parse`. A parse failure counts as a
    /// failed attempt, like a dropped connection.
    async fn exec<T>(
        &self,
        call: Call<'_>,
        parse: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<Reply<T>, ProviderError> {
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            let token = self.tokens.access_token().await?;
            self.wait_for_pause().await;
            // The budget first, then a slot: a request waiting for budget holds no slot.
            if let Some(b) = &self.budget {
                let n = std::num::NonZeroU32::new(call.cost.max(1))
                    .unwrap_or(std::num::NonZeroU32::MIN);
                if b.until_n_ready(n).await.is_err() {
                    // More parts than the whole budget: wait for a full bucket instead.
                    b.until_ready().await;
                }
            }
            self.sent.fetch_add(
                u64::from(call.cost.max(1)),
                std::sync::atomic::Ordering::Relaxed,
            );
            let permit = self
                .in_flight
                .acquire()
                .await
                .map_err(|_| ProviderError::Transient("Client shut down.".into()))?;
            let mut req = self
                .http
                .request(call.method.clone(), call.url)
                .bearer_auth(token.expose_secret())
                .header("Prefer", PREFER)
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(b) = call.body {
                req = req.json(b);
            }
            if let Some(e) = call.if_match {
                req = req.header(reqwest::header::IF_MATCH, e);
            }
            let failure: ProviderError;
            let mut wait = None;
            let mut safe_to_retry = call.idempotent;
            match req.send().await {
                Err(e) => {
                    // Nothing reached the service when the connection could not be made.
                    safe_to_retry |= e.is_connect();
                    failure = transport_error(&e)
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED && !refreshed {
                        drop(permit);
                        refreshed = true;
                        tracing::debug!("Graph answered 401; refreshing the access token once");
                        self.tokens.invalidate(&token).await;
                        continue;
                    }
                    if status.is_success() {
                        if resp.content_length().is_some_and(|n| n > call.cap as u64) {
                            return Ok(Reply::TooBig);
                        }
                        match read_capped(resp, call.cap).await {
                            Ok(None) => return Ok(Reply::TooBig),
                            Ok(Some(body)) => match parse(&body) {
                                Ok(v) => return Ok(Reply::Ok(v)),
                                Err(e) => {
                                    failure = ProviderError::Transient(format!(
                                        "Microsoft Graph sent a malformed response: {e}."
                                    ))
                                }
                            },
                            Err(e) => failure = e,
                        }
                    } else if retryable_status(status) {
                        // A throttled request was not carried out.
                        safe_to_retry |= status == StatusCode::TOO_MANY_REQUESTS;
                        let ra = retry_after(resp.headers());
                        if let Some(ra) = ra {
                            if ra > self.retry.max_retry_after {
                                return Err(if status == StatusCode::TOO_MANY_REQUESTS {
                                    ProviderError::Throttled {
                                        retry_after: Some(ra),
                                    }
                                } else {
                                    ProviderError::Transient(format!(
                                        "Microsoft Graph is unavailable (HTTP {}); retry after {ra:?}.",
                                        status.as_u16()
                                    ))
                                });
                            }
                            self.pause_for(ra);
                            wait = Some(ra);
                        }
                        failure = if status == StatusCode::TOO_MANY_REQUESTS {
                            ProviderError::Throttled { retry_after: ra }
                        } else {
                            ProviderError::Transient(format!(
                                "Microsoft Graph kept failing (HTTP {}).",
                                status.as_u16()
                            ))
                        };
                    } else {
                        let body = read_capped(resp, super::MAX_ERROR_BYTES)
                            .await
                            .ok()
                            .flatten()
                            .unwrap_or_default();
                        return Ok(Reply::Api(ApiError {
                            status,
                            codes: error_codes(&body),
                        }));
                    }
                }
            }
            drop(permit);
            attempt += 1;
            if attempt >= self.retry.max_attempts || !safe_to_retry {
                return Err(failure);
            }
            let wait = wait.unwrap_or_else(|| self.retry.backoff(attempt - 1));
            tracing::debug!(attempt, ?wait, error = %failure, "retrying a Graph request");
            tokio::time::sleep(wait).await;
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<Result<T, ApiError>, ProviderError> {
        match self
            .exec(Call::get(url), |b| {
                serde_json::from_slice::<T>(b).map_err(|e| e.to_string())
            })
            .await?
        {
            Reply::Ok(v) => Ok(Ok(v)),
            Reply::Api(e) => Ok(Err(e)),
            Reply::TooBig => Err(ProviderError::Transient(
                "Microsoft Graph sent an oversized response.".into(),
            )),
        }
    }

    /// GETs a listing page; a page must end in a next link or a delta link.
    async fn get_page(
        &self,
        url: &str,
        delta: bool,
    ) -> Result<Result<Page, ApiError>, ProviderError> {
        let parsed = self.exec(Call::get(url), |b| parse_page(b, delta)).await?;
        match parsed {
            Reply::Ok(p) => {
                for l in p.next_link.iter().chain(p.delta_link.iter()) {
                    self.check_link(l)?;
                }
                Ok(Ok(p))
            }
            Reply::Api(e) => Ok(Err(e)),
            Reply::TooBig => Err(ProviderError::Transient(
                "Microsoft Graph sent an oversized page.".into(),
            )),
        }
    }

    /// The default Contacts folder and all folders below it, parents before children.
    /// The default Contacts folder's id: the well-known name `contacts`; when the mailbox
    /// does not resolve it, the parent of a top-level folder, else the folder of a contact.
    async fn default_folder(&self) -> Result<String, ProviderError> {
        let url = format!(
            "{}/me/contactFolders/contacts?$select={FOLDER_SELECT}",
            self.api_base
        );
        match self.get_json::<Folder>(&url).await? {
            Ok(f) => return Ok(f.id),
            Err(e) if matches!(e.status.as_u16(), 400 | 404) => {
                tracing::info!(
                    status = e.status.as_u16(),
                    "well-known folder name `contacts` not resolved; using a fallback"
                );
            }
            Err(e) => return Err(e.into_provider_error("the default contact folder lookup")),
        }
        #[derive(Deserialize)]
        struct Parent {
            #[serde(rename = "parentFolderId")]
            parent_folder_id: Option<String>,
        }
        #[derive(Deserialize)]
        struct Parents {
            #[serde(default)]
            value: Vec<Parent>,
        }
        for url in [
            format!(
                "{}/me/contactFolders?$select=id,parentFolderId",
                self.api_base
            ),
            format!(
                "{}/me/contacts?$top=1&$select=parentFolderId",
                self.api_base
            ),
        ] {
            let list = self
                .get_json::<Parents>(&url)
                .await?
                .map_err(|e| e.into_provider_error("the default contact folder lookup"))?;
            if let Some(id) = list.value.into_iter().find_map(|p| p.parent_folder_id) {
                return Ok(id);
            }
        }
        Err(ProviderError::Permanent(
            "Cannot find the mailbox's default Contacts folder.".into(),
        ))
    }

    async fn discover_folders(&self) -> Result<Vec<String>, ProviderError> {
        let root = self.default_folder().await?;
        let mut seen = HashSet::from([root.clone()]);
        let mut out = vec![root.clone()];
        let mut queue = VecDeque::from([root]);
        while let Some(parent) = queue.pop_front() {
            let mut url = format!(
                "{}/me/contactFolders/{}/childFolders?$select={FOLDER_SELECT}",
                self.api_base,
                seg(&parent)
            );
            loop {
                let page = self
                    .get_page(&url, false)
                    .await?
                    .map_err(|e| e.into_provider_error("a child folder listing"))?;
                for v in page.value {
                    let f: Folder = serde_json::from_value(v).map_err(|e| {
                        ProviderError::Transient(format!(
                            "Microsoft Graph sent a malformed folder: {e}."
                        ))
                    })?;
                    if seen.insert(f.id.clone()) {
                        out.push(f.id.clone());
                        queue.push_back(f.id);
                    }
                }
                match page.next_link {
                    Some(n) => url = n,
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// Looks up a folder that discovery did not find below the default folder: `Some(parent
    /// id)` when it still exists elsewhere (a folder the user deleted sits in Deleted
    /// Items), `None` on a 404 `ErrorItemNotFound`. Any other answer fails the round.
    async fn folder_parent(&self, id: &str) -> Result<Option<String>, ProviderError> {
        let url = format!(
            "{}/me/contactFolders/{}?$select=id,parentFolderId",
            self.api_base,
            seg(id)
        );
        match self.get_json::<Value>(&url).await? {
            Ok(v) => Ok(Some(
                v.get("parentFolderId")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            )),
            Err(e) if e.item_not_found() => Ok(None),
            Err(e) => Err(e.into_provider_error("a contact folder lookup")),
        }
    }

    /// The URL listing the ids of a folder's contacts that have a photo (PidLidHasPicture
    /// TRUE). Contact `delta` refuses `$filter` and `$expand`, so this is a plain listing.
    pub fn photo_list_url(&self, folder: &str) -> String {
        let filter = format!(
            "singleValueExtendedProperties/Any(ep: ep/id eq '{HAS_PICTURE}' and ep/value eq 'true')"
        );
        let filter: String = url::form_urlencoded::byte_serialize(filter.as_bytes()).collect();
        format!(
            "{}/me/contactFolders/{}/contacts?$filter={filter}&$select=id&$top={PHOTO_LIST_TOP}",
            self.api_base,
            seg(folder)
        )
    }

    /// The ids of the contacts of `folder` that have a photo, following next links. `None`
    /// when the mailbox refuses the query (4xx): then no photo is known and none is asked
    /// for.
    async fn photo_ids(&self, folder: &str) -> Result<Option<HashSet<String>>, ProviderError> {
        let mut url = self.photo_list_url(folder);
        let mut ids = HashSet::new();
        loop {
            let page = match self.get_page(&url, false).await? {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(folder, error = %e.describe(), "Graph refused the listing of contacts with a photo; photos of this folder are not fetched");
                    return Ok(None);
                }
            };
            for v in page.value {
                if let Some(id) = v.get("id").and_then(Value::as_str) {
                    ids.insert(id.to_string());
                }
            }
            match page.next_link {
                Some(n) => url = n,
                None => return Ok(Some(ids)),
            }
        }
    }

    fn delta_start(&self, folder: &str) -> String {
        format!(
            "{}/me/contactFolders/{}/contacts/delta?$select={SELECT}",
            self.api_base,
            seg(folder)
        )
    }

    /// Fetches a contact in full (after a partial delta row). `None`: it no longer exists.
    async fn get_contact(&self, id: &str) -> Result<Option<GraphContact>, ProviderError> {
        let url = format!("{}/me/contacts/{}?$select={SELECT}", self.api_base, seg(id));
        match self.get_json::<GraphContact>(&url).await? {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.item_not_found() => Ok(None),
            Err(e) => Err(e.into_provider_error("a contact lookup")),
        }
    }

    /// Turns one page's rows into changes, fetching partial rows in full.
    async fn page_changes(
        &self,
        folder: &str,
        rows: Vec<Value>,
    ) -> Result<Vec<Change>, ProviderError> {
        enum Row {
            Ready(Box<Change>),
            Fetch(String),
        }
        let mut parsed = Vec::with_capacity(rows.len());
        for row in rows {
            match row_outcome(row, folder, &self.api_base)? {
                RowOutcome::Ready(c) => parsed.push(Row::Ready(c)),
                RowOutcome::Fetch(id) => parsed.push(Row::Fetch(id)),
                RowOutcome::Skip => {
                    tracing::warn!(folder, "Graph sent a contact row without an id; ignored")
                }
            }
        }
        let fetches = parsed.iter().filter(|r| matches!(r, Row::Fetch(_))).count();
        if fetches > 0 {
            tracing::debug!(folder, fetches, "fetching partial delta rows in full");
        }
        let results: Vec<Result<Change, ProviderError>> = stream::iter(parsed)
            .map(|row| async move {
                match row {
                    Row::Ready(c) => Ok(*c),
                    Row::Fetch(id) => Ok(match self.get_contact(&id).await? {
                        Some(c) => {
                            let mut pc = map_contact_with_base(&c, folder, &self.api_base);
                            pc.provider_id = id;
                            Change::Upsert(pc)
                        }
                        None => Change::Deleted { provider_id: id },
                    }),
                }
            })
            .buffered(MAX_IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Follows one folder's delta from `start` to its delta link.
    async fn list_folder(
        &self,
        folder: &str,
        start: String,
        progress: &ProgressFn,
        counters: &mut Progress,
    ) -> Result<FolderOutcome, ProviderError> {
        let mut url = start;
        let mut changes = Vec::new();
        loop {
            let page = match self.get_page(&url, true).await? {
                Ok(p) => p,
                Err(e) if e.sync_state_lost() => {
                    tracing::info!(
                        folder,
                        status = e.status.as_u16(),
                        "Graph delta state expired"
                    );
                    return Ok(FolderOutcome::Expired);
                }
                Err(e) => return Err(e.into_provider_error("a contact delta request")),
            };
            let rows = page.value.len();
            changes.extend(self.page_changes(folder, page.value).await?);
            counters.pages += 1;
            counters.contacts += rows as u64;
            progress(counters.clone());
            match (page.next_link, page.delta_link) {
                (Some(n), _) => url = n,
                (None, Some(d)) => {
                    return Ok(FolderOutcome::Done {
                        changes,
                        delta_link: d,
                    })
                }
                (None, None) => unreachable!("checked when parsing the page"),
            }
        }
    }

    async fn round(
        &self,
        cursor: Option<&[u8]>,
        progress: &ProgressFn,
    ) -> Result<Round, ProviderError> {
        let stored = match cursor {
            None => GraphCursor::default(),
            Some(b) => GraphCursor::decode(b).unwrap_or_else(|| {
                tracing::warn!("unreadable Graph cursor; listing every folder in full");
                GraphCursor::default()
            }),
        };
        let folders = self.discover_folders().await?;
        let listed: HashSet<&String> = folders.iter().collect();
        let missing: Vec<String> = stored
            .folders
            .keys()
            .filter(|f| !listed.contains(f))
            .cloned()
            .collect();
        // A folder that left the tree under the default Contacts folder was deleted by the
        // user: Outlook moves a deleted folder to Deleted Items, where a lookup by id still
        // finds it. Either way its contacts are gone from the synced set (the deletion guard
        // still applies to what that means for the CRM).
        let mut gone = Vec::new();
        for f in missing {
            match self.folder_parent(&f).await? {
                Some(parent) => {
                    tracing::info!(folder = %f, parent = %parent, "contact folder left the default Contacts folder (deleted to Deleted Items, or moved out); its contacts count as deleted")
                }
                None => tracing::info!(folder = %f, "contact folder is gone"),
            }
            gone.push(f);
        }

        let mut counters = Progress::default();
        let mut next = GraphCursor::default();
        let mut complete = Vec::new();
        let mut changes = Vec::new();
        for folder in &folders {
            let mut link = stored.folders.get(folder).cloned();
            let mut restarts = 0;
            let mut listed_full = false;
            let (mut folder_changes, delta_link) = loop {
                let full = link.is_none();
                let start = match link.take() {
                    // A link to another host (the API base was changed in the config):
                    // list the folder afresh rather than send the token elsewhere.
                    Some(l) if self.check_link(&l).is_err() => {
                        tracing::warn!(folder = %folder, "stored delta link points at another host; listing the folder in full");
                        continue;
                    }
                    Some(l) => l,
                    None => self.delta_start(folder),
                };
                match self
                    .list_folder(folder, start, progress, &mut counters)
                    .await?
                {
                    FolderOutcome::Done {
                        changes,
                        delta_link,
                    } => {
                        if full {
                            complete.push(folder.clone());
                            listed_full = true;
                        }
                        break (changes, delta_link);
                    }
                    FolderOutcome::Expired => {
                        restarts += 1;
                        if restarts > MAX_FOLDER_RESTARTS {
                            return Err(ProviderError::Transient(format!(
                                "The delta state of contact folder {folder} kept expiring."
                            )));
                        }
                    }
                }
            };
            // A photo URL only for a contact known to have a photo: on a full listing, from
            // PidLidHasPicture; a delta round does not ask (photos are an initial-sync
            // matter, SPEC §3).
            let with_photo = if listed_full {
                self.photo_ids(folder).await?
            } else {
                None
            };
            for c in &mut folder_changes {
                if let Change::Upsert(pc) = c {
                    if !with_photo
                        .as_ref()
                        .is_some_and(|s| s.contains(&pc.provider_id))
                    {
                        pc.photo_url = None;
                    }
                }
            }
            tracing::debug!(folder = %folder, changes = folder_changes.len(), photos = with_photo.as_ref().map_or(0, HashSet::len), "folder listed");
            changes.extend(folder_changes.into_iter().map(|c| (folder.clone(), c)));
            next.folders.insert(folder.clone(), delta_link);
        }
        let changes = dedupe(changes);
        tracing::info!(
            folders = folders.len(),
            complete = complete.len(),
            gone = gone.len(),
            changes = changes.len(),
            pages = counters.pages,
            "Graph round fetched"
        );
        Ok(Round {
            full: !folders.is_empty() && complete.len() == folders.len(),
            changes,
            complete_scopes: complete,
            gone_scopes: gone,
            cursor: next.encode(),
            pages: counters.pages,
        })
    }

    async fn photo(&self, contact: &ProviderContact) -> Result<Option<Jpeg>, ProviderError> {
        let url = match &contact.photo_url {
            Some(u) if self.check_link(u).is_ok() => u.clone(),
            _ => photo_url(&self.api_base, &contact.provider_id),
        };
        let call = Call {
            cap: MAX_PHOTO_BYTES,
            ..Call::get(&url)
        };
        match self.exec(call, |b| Ok(b.to_vec())).await? {
            Reply::Ok(b) if b.is_empty() => Ok(None),
            Reply::Ok(b) => Ok(Some(b)),
            Reply::TooBig => {
                tracing::warn!(
                    contact = %contact.provider_id,
                    max = MAX_PHOTO_BYTES,
                    "contact photo is larger than the limit; skipped"
                );
                Ok(None)
            }
            Reply::Api(e) if e.status == StatusCode::NOT_FOUND => Ok(None),
            Reply::Api(e) => Err(e.into_provider_error("a contact photo request")),
        }
    }
}

/// One change per contact id, given `(folder, change)` in listing order. Within a folder
/// the last change wins (replays, or a contact listed and then removed while paging). A
/// removal from one folder never beats an upsert from another: a contact moved between
/// folders shows up as removed from one and added to the other, in whichever order the
/// folders were listed.
fn dedupe(changes: Vec<(String, Change)>) -> Vec<Change> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Option<(String, Change)>> = Vec::with_capacity(changes.len());
    for (folder, c) in changes {
        let id = c.provider_id().to_string();
        if let Some(&i) = index.get(&id) {
            let (old_folder, old) = out[i].as_ref().expect("indexed entries are kept");
            let moved_away = matches!(old, Change::Upsert(_))
                && matches!(c, Change::Deleted { .. })
                && *old_folder != folder;
            if moved_away {
                continue;
            }
            out[i] = None;
        }
        index.insert(id, out.len());
        out.push(Some((folder, c)));
    }
    out.into_iter().flatten().map(|(_, c)| c).collect()
}

// ---------------------------------------------------------------------------------------
// Two-way writes, through `$batch`
// ---------------------------------------------------------------------------------------

/// One write to the mailbox.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Creates a contact in the default Contacts folder.
    Create {
        fields: Fields,
    },
    /// Writes the Graph properties of the `changed` CRM fields (names of
    /// [`crate::model::field`]), with `If-Match: etag` when an etag is known.
    Update {
        id: String,
        etag: Option<String>,
        fields: Fields,
        changed: Vec<String>,
    },
    Delete {
        id: String,
    },
}

/// What became of one [`WriteOp`].
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResult {
    Created {
        id: String,
        etag: Option<String>,
        /// Values beyond Graph's multi-value limits, not written (for the audit).
        dropped: Dropped,
        /// The folder Graph put the contact in (the default folder).
        folder: Option<String>,
    },
    Updated {
        etag: Option<String>,
        dropped: Dropped,
    },
    Deleted,
    /// The contact changed since the etag we sent (412, or 409 `ErrorIrresolvableConflict`):
    /// re-read it and merge again.
    Conflict,
    /// The contact no longer exists.
    NotFound,
    Failed(ProviderError),
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

#[derive(Debug, Deserialize)]
struct BatchResponses {
    responses: Vec<BatchItem>,
}

#[derive(Debug, Deserialize)]
struct BatchItem {
    id: String,
    status: u16,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
    #[serde(default)]
    body: Value,
}

impl BatchItem {
    fn retry_after(&self) -> Option<Duration> {
        let v = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
            .map(|(_, v)| v)?;
        let mut h = reqwest::header::HeaderMap::new();
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        h.insert(reqwest::header::RETRY_AFTER, text.parse().ok()?);
        retry_after(&h)
    }
    fn etag(&self) -> Option<String> {
        self.body
            .get("@odata.etag")
            .or_else(|| self.body.get("changeKey"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

impl GraphClient {
    /// Carries out writes through `POST {api_base}/$batch`, at most [`MAX_BATCH`] per
    /// request; one result per op, in order. Throttled items are sent again after their
    /// `Retry-After`; a create is never sent twice unless the service said it was not
    /// carried out (429).
    pub async fn write(&self, ops: &[WriteOp]) -> Vec<WriteResult> {
        let mut results: Vec<Option<WriteResult>> = vec![None; ops.len()];
        let mut dropped: Vec<Dropped> = vec![Dropped::default(); ops.len()];
        let mut bodies: Vec<Option<Value>> = vec![None; ops.len()];
        for (i, op) in ops.iter().enumerate() {
            match op {
                WriteOp::Create { fields } => {
                    let (b, d) = fields_to_contact(fields);
                    bodies[i] = Some(b);
                    dropped[i] = d;
                }
                WriteOp::Update {
                    fields, changed, ..
                } => {
                    let names: Vec<&str> = changed.iter().map(String::as_str).collect();
                    let (b, d) = update_body(fields, &names);
                    bodies[i] = Some(b);
                    dropped[i] = d;
                }
                WriteOp::Delete { .. } => {}
            }
        }
        let all: Vec<usize> = (0..ops.len()).collect();
        for chunk in all.chunks(MAX_BATCH) {
            let mut pending: Vec<usize> = chunk.to_vec();
            let mut attempt = 0u32;
            while !pending.is_empty() {
                let requests: Vec<Value> = pending
                    .iter()
                    .map(|&i| batch_request(i, &ops[i], bodies[i].as_ref()))
                    .collect();
                let url = format!("{}/$batch", self.api_base);
                let body = json!({ "requests": requests });
                // Sending a create twice would create two contacts.
                let idempotent = pending
                    .iter()
                    .all(|&i| !matches!(ops[i], WriteOp::Create { .. }));
                let call = Call {
                    method: Method::POST,
                    body: Some(&body),
                    cost: pending.len() as u32,
                    idempotent,
                    ..Call::get(&url)
                };
                let reply = self
                    .exec(call, |b| {
                        serde_json::from_slice::<BatchResponses>(b).map_err(|e| e.to_string())
                    })
                    .await;
                let batch = match reply {
                    Ok(Reply::Ok(b)) => b,
                    Ok(Reply::Api(e)) => {
                        let err = e.into_provider_error("a $batch request");
                        for &i in &pending {
                            results[i] = Some(WriteResult::Failed(err.clone()));
                        }
                        break;
                    }
                    Ok(Reply::TooBig) => {
                        let err =
                            ProviderError::Transient("Oversized $batch response.".to_string());
                        for &i in &pending {
                            results[i] = Some(WriteResult::Failed(err.clone()));
                        }
                        break;
                    }
                    Err(err) => {
                        for &i in &pending {
                            results[i] = Some(WriteResult::Failed(err.clone()));
                        }
                        break;
                    }
                };
                let mut again = Vec::new();
                let mut wait: Option<Duration> = None;
                let by_id: HashMap<&str, &BatchItem> =
                    batch.responses.iter().map(|r| (r.id.as_str(), r)).collect();
                for &i in &pending {
                    let key = i.to_string();
                    let Some(item) = by_id.get(key.as_str()) else {
                        results[i] = Some(WriteResult::Failed(ProviderError::Transient(
                            "The $batch response left out a request.".into(),
                        )));
                        continue;
                    };
                    let is_create = matches!(ops[i], WriteOp::Create { .. });
                    let retry = item.status == 429
                        || (!is_create && matches!(item.status, 503 | 504 | 424));
                    if retry {
                        if let Some(ra) = item.retry_after() {
                            wait = Some(wait.map_or(ra, |w| w.max(ra)));
                        }
                        again.push(i);
                        continue;
                    }
                    results[i] = Some(item_result(&ops[i], item, &dropped[i]));
                }
                if again.is_empty() {
                    break;
                }
                attempt += 1;
                if attempt >= self.retry.max_attempts
                    || wait.is_some_and(|w| w > self.retry.max_retry_after)
                {
                    for &i in &again {
                        results[i] = Some(WriteResult::Failed(ProviderError::Throttled {
                            retry_after: wait,
                        }));
                    }
                    break;
                }
                let wait = wait.unwrap_or_else(|| self.retry.backoff(attempt - 1));
                self.pause_for(wait);
                tracing::debug!(
                    items = again.len(),
                    ?wait,
                    "retrying throttled $batch items"
                );
                tokio::time::sleep(wait).await;
                pending = again;
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    WriteResult::Failed(ProviderError::Transient("Not sent.".into()))
                })
            })
            .collect()
    }

    /// Creates a contact in the default folder: its id, etag and the values Graph's limits
    /// left out.
    pub async fn create(
        &self,
        fields: &Fields,
    ) -> Result<(String, Option<String>, Dropped), ProviderError> {
        let op = WriteOp::Create {
            fields: fields.clone(),
        };
        match self.write(std::slice::from_ref(&op)).await.pop() {
            Some(WriteResult::Created {
                id, etag, dropped, ..
            }) => Ok((id, etag, dropped)),
            Some(WriteResult::Failed(e)) => Err(e),
            other => Err(ProviderError::Transient(format!(
                "Unexpected answer to a create: {other:?}."
            ))),
        }
    }

    /// Updates the properties of the `changed` CRM fields if the contact still has `etag`:
    /// [`WriteResult::Updated`], [`WriteResult::Conflict`] or [`WriteResult::NotFound`].
    pub async fn update(
        &self,
        id: &str,
        etag: Option<&str>,
        fields: &Fields,
        changed: &[&str],
    ) -> Result<WriteResult, ProviderError> {
        let op = WriteOp::Update {
            id: id.to_string(),
            etag: etag.map(str::to_string),
            fields: fields.clone(),
            changed: changed.iter().map(|s| s.to_string()).collect(),
        };
        match self.write(std::slice::from_ref(&op)).await.pop() {
            Some(WriteResult::Failed(e)) => Err(e),
            Some(r) => Ok(r),
            None => Err(ProviderError::Transient("Not sent.".into())),
        }
    }

    /// Deletes a contact; one that is already gone counts as deleted.
    pub async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        let op = WriteOp::Delete { id: id.to_string() };
        match self.write(std::slice::from_ref(&op)).await.pop() {
            Some(WriteResult::Deleted | WriteResult::NotFound) => Ok(()),
            Some(WriteResult::Failed(e)) => Err(e),
            other => Err(ProviderError::Transient(format!(
                "Unexpected answer to a delete: {other:?}."
            ))),
        }
    }
}

fn batch_request(i: usize, op: &WriteOp, body: Option<&Value>) -> Value {
    let mut headers = json!({ "Prefer": PREFER });
    let (method, url) = match op {
        WriteOp::Create { .. } => ("POST", "/me/contacts".to_string()),
        WriteOp::Update { id, etag, .. } => {
            if let Some(e) = etag {
                headers["If-Match"] = json!(e);
            }
            ("PATCH", format!("/me/contacts/{}", seg(id)))
        }
        WriteOp::Delete { id } => ("DELETE", format!("/me/contacts/{}", seg(id))),
    };
    let mut req = json!({ "id": i.to_string(), "method": method, "url": url });
    if let Some(b) = body {
        headers["Content-Type"] = json!("application/json");
        req["body"] = b.clone();
    }
    req["headers"] = headers;
    req
}

fn item_result(op: &WriteOp, item: &BatchItem, dropped: &Dropped) -> WriteResult {
    let codes = error_codes(&serde_json::to_vec(&item.body).unwrap_or_default());
    let api = ApiError {
        status: StatusCode::from_u16(item.status).unwrap_or(StatusCode::BAD_GATEWAY),
        codes,
    };
    match item.status {
        200..=299 => match op {
            WriteOp::Create { .. } => match item.body.get("id").and_then(Value::as_str) {
                Some(id) => WriteResult::Created {
                    id: id.to_string(),
                    etag: item.etag(),
                    dropped: dropped.clone(),
                    folder: item
                        .body
                        .get("parentFolderId")
                        .and_then(Value::as_str)
                        .map(String::from),
                },
                None => WriteResult::Failed(ProviderError::Transient(
                    "Graph created a contact but did not say its id.".into(),
                )),
            },
            WriteOp::Update { .. } => WriteResult::Updated {
                etag: item.etag(),
                dropped: dropped.clone(),
            },
            WriteOp::Delete { .. } => WriteResult::Deleted,
        },
        412 => WriteResult::Conflict,
        409 if api.has_code("ErrorIrresolvableConflict") => WriteResult::Conflict,
        404 if !matches!(op, WriteOp::Create { .. }) => WriteResult::NotFound,
        // The token was granted without write permission (an account connected one-way
        // and switched to two-way): only a new grant helps.
        403 if api.has_code("ErrorAccessDenied") => {
            WriteResult::Failed(ProviderError::ReauthRequired(format!(
                "Microsoft Graph refused a contact write with 403 ErrorAccessDenied: the grant lacks the {WRITE_SCOPE} scope that two-way sync needs"
            )))
        }
        _ => WriteResult::Failed(api.into_provider_error("a contact write")),
    }
}

impl Provider for GraphClient {
    fn fetch_round<'a>(
        &'a self,
        cursor: Option<&'a [u8]>,
        progress: &'a ProgressFn,
    ) -> BoxFuture<'a, Result<Round, ProviderError>> {
        Box::pin(self.round(cursor, progress))
    }

    fn push<'a>(&'a self, ops: &'a [super::PushOp]) -> BoxFuture<'a, Vec<super::PushResult>> {
        Box::pin(async move {
            use super::{without, PushOp, PushResult};
            let writes: Vec<WriteOp> = ops
                .iter()
                .map(|op| match op {
                    PushOp::Create { fields, .. } => WriteOp::Create {
                        fields: fields.clone(),
                    },
                    PushOp::Update {
                        provider_id,
                        etag,
                        fields,
                        changed,
                    } => WriteOp::Update {
                        id: provider_id.clone(),
                        etag: etag.clone(),
                        fields: fields.clone(),
                        changed: changed.iter().map(|c| c.to_string()).collect(),
                    },
                    PushOp::Delete { provider_id } => WriteOp::Delete {
                        id: provider_id.clone(),
                    },
                })
                .collect();
            let results = self.write(&writes).await;
            ops.iter()
                .zip(results)
                .map(|(op, r)| {
                    let fields = match op {
                        PushOp::Create { fields, .. } | PushOp::Update { fields, .. } => {
                            fields.clone()
                        }
                        PushOp::Delete { .. } => Fields::default(),
                    };
                    match r {
                        WriteResult::Created {
                            id,
                            etag,
                            dropped,
                            folder,
                        } => PushResult::Created {
                            provider_id: id,
                            etag,
                            scope: folder.unwrap_or_default(),
                            stored: without(&fields, &dropped.emails, &dropped.phones),
                        },
                        WriteResult::Updated { etag, dropped } => PushResult::Updated {
                            etag,
                            stored: without(&fields, &dropped.emails, &dropped.phones),
                        },
                        WriteResult::Deleted => PushResult::Deleted,
                        WriteResult::Conflict => PushResult::Conflict,
                        WriteResult::NotFound => PushResult::Gone,
                        WriteResult::Failed(e) => PushResult::Failed(e),
                    }
                })
                .collect()
        })
    }

    fn fetch_photo<'a>(
        &'a self,
        contact: &'a ProviderContact,
    ) -> BoxFuture<'a, Result<Option<Jpeg>, ProviderError>> {
        Box::pin(self.photo(contact))
    }

    fn fetch_photos<'a>(
        &'a self,
        contacts: &'a [ProviderContact],
    ) -> BoxFuture<'a, Vec<Result<Option<Jpeg>, ProviderError>>> {
        Box::pin(self.photos_batched(contacts))
    }
}

impl GraphClient {
    /// Photos through `$batch`, [`MAX_BATCH`] per request and up to four requests at once
    /// (the in-flight limit);
    /// Graph returns each photo's bytes base64-encoded in its part. A part that is throttled
    /// or fails (anything but 200 or 404), or a batch that fails as a whole, is asked again
    /// on its own with [`GraphClient::photo`] (and its retries). Each part counts against
    /// the request budget.
    async fn photos_batched(
        &self,
        contacts: &[ProviderContact],
    ) -> Vec<Result<Option<Jpeg>, ProviderError>> {
        // Every chunk at once: the client's four slots (and the budget) pace them.
        let mut chunks = Vec::new();
        for chunk in contacts.chunks(MAX_BATCH) {
            chunks.push(self.photo_chunk(chunk));
        }
        let per_chunk = futures_util::future::join_all(chunks).await;
        per_chunk.into_iter().flatten().collect()
    }

    /// One `$batch` of photos (see [`GraphClient::photos_batched`]).
    async fn photo_chunk(
        &self,
        chunk: &[ProviderContact],
    ) -> Vec<Result<Option<Jpeg>, ProviderError>> {
        use base64::Engine as _;
        let requests: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "id": i.to_string(),
                    "method": "GET",
                    "url": format!("/me/contacts/{}/photo/$value", seg(&c.provider_id)),
                })
            })
            .collect();
        let body = json!({ "requests": requests });
        let url = format!("{}/$batch", self.api_base);
        let call = Call {
            method: Method::POST,
            body: Some(&body),
            cost: chunk.len() as u32,
            ..Call::get(&url)
        };
        let reply = self
            .exec(call, |b| {
                serde_json::from_slice::<BatchResponses>(b).map_err(|e| e.to_string())
            })
            .await;
        let parts: HashMap<String, BatchItem> = match reply {
            Ok(Reply::Ok(b)) => b.responses.into_iter().map(|r| (r.id.clone(), r)).collect(),
            _ => HashMap::new(),
        };
        let mut out = Vec::with_capacity(chunk.len());
        for (i, c) in chunk.iter().enumerate() {
            let got = parts.get(&i.to_string()).and_then(|p| match p.status {
                200 => match &p.body {
                    Value::String(b64) => {
                        match base64::engine::general_purpose::STANDARD.decode(b64) {
                            Ok(b) if b.is_empty() => Some(Ok(None)),
                            Ok(b) if b.len() > MAX_PHOTO_BYTES => {
                                tracing::warn!(contact = %c.provider_id, max = MAX_PHOTO_BYTES, "contact photo is larger than the limit; skipped");
                                Some(Ok(None))
                            }
                            Ok(b) => Some(Ok(Some(b))),
                            Err(_) => None,
                        }
                    }
                    _ => None,
                },
                404 => Some(Ok(None)),
                _ => None,
            });
            out.push(match got {
                Some(r) => r,
                None => self.photo(c).await,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests;
