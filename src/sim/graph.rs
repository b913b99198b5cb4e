//! The Microsoft side: Graph v1.0 personal contacts (folders, contacts, per-folder delta,
//! photos, JSON batching) and the Microsoft identity platform v2 endpoints (authorize,
//! token with PKCE and refresh-token rotation, device code).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::common::{
    b64, control_err, mix, pkce_ok, random_token, unb64, AuthCode, Ctx, DeviceCode, ProvState, Req,
    Resp, Shared,
};
use super::script::Scripts;
use super::seed::{people, user_salt, SeedPerson};
// Wire facts the client and the simulator share.
use super::SeedUser;
use crate::providers::graph::{
    DEFAULT_PAGE_SIZE, HAS_PICTURE, MAX_BATCH, MAX_BUSINESS_PHONES, MAX_EMAILS, MAX_HOME_PHONES,
    MAX_PAGE_SIZE,
};

/// Contact properties in the order Graph serialises them. (name, default when unset)
const PROPS: &[&str] = &[
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "parentFolderId",
    "birthday",
    "fileAs",
    "displayName",
    "givenName",
    "initials",
    "middleName",
    "nickName",
    "surname",
    "title",
    "yomiGivenName",
    "yomiSurname",
    "yomiCompanyName",
    "generation",
    "imAddresses",
    "jobTitle",
    "companyName",
    "department",
    "officeLocation",
    "profession",
    "businessHomePage",
    "assistantName",
    "manager",
    "homePhones",
    "mobilePhone",
    "businessPhones",
    "spouseName",
    "personalNotes",
    "children",
    "emailAddresses",
    "homeAddress",
    "businessAddress",
    "otherAddress",
];

const READ_ONLY: &[&str] = &[
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "parentFolderId",
];
const COLLECTIONS: &[&str] = &[
    "categories",
    "imAddresses",
    "homePhones",
    "businessPhones",
    "children",
    "emailAddresses",
];
const ADDRESSES: &[&str] = &["homeAddress", "businessAddress", "otherAddress"];
const ADDRESS_KEYS: &[&str] = &["street", "city", "state", "countryOrRegion", "postalCode"];
/// Multi-value limits the service enforces (reference §2.2).
const LIMITS: &[(&str, &str, usize)] = &[
    ("emailAddresses", "EmailAddresses", MAX_EMAILS),
    ("businessPhones", "BusinessPhones", MAX_BUSINESS_PHONES),
    ("homePhones", "HomePhones", MAX_HOME_PHONES),
];

/// Query options Graph refuses on contact `delta` (`ErrorInvalidUrlQuery`): only
/// `$select`, `$deltatoken` and `$skiptoken` are documented for it.
const REFUSED_ON_DELTA: &[&str] = &[
    "$filter", "$expand", "$orderby", "$search", "$top", "$skip", "$count",
];

/// Whether two extended property ids name the same property (the GUID and the `Id`/`Name`
/// keyword are case-insensitive, as in Exchange).
fn same_property(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    norm(a).eq_ignore_ascii_case(&norm(b))
}

/// The value of extended property `id` on a contact, as Graph sends it (a string).
fn extended_value(c: &MContact, id: &str) -> Option<String> {
    (same_property(id, HAS_PICTURE) && c.photo).then(|| "true".to_string())
}

/// A parsed `$filter` of the contact listing: the one form the simulator knows,
/// `singleValueExtendedProperties/Any(ep: ep/id eq '<id>' and ep/value eq '<value>')`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExtFilter {
    pub id: String,
    pub value: String,
}

/// Parses a quoted OData string literal at the start of `s`: (value, rest).
fn quoted(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start().strip_prefix('\'')?;
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, ch)) = chars.next() {
        if ch == '\'' {
            if let Some((_, '\'')) = chars.peek() {
                out.push('\'');
                chars.next();
                continue;
            }
            return Some((out, &s[i + 1..]));
        }
        out.push(ch);
    }
    None
}

/// Strips a case-insensitive keyword (after optional whitespace).
fn kw<'a>(s: &'a str, k: &str) -> Option<&'a str> {
    let s = s.trim_start();
    (s.len() >= k.len() && s[..k.len()].eq_ignore_ascii_case(k)).then(|| &s[k.len()..])
}

pub(crate) fn parse_ext_filter(f: &str) -> Option<ExtFilter> {
    let rest = kw(f, "singleValueExtendedProperties/any(")?;
    let (var, rest) = rest.split_once(':')?;
    let var = var.trim();
    if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let rest = kw(rest, &format!("{var}/id"))?;
    let rest = kw(rest, "eq")?;
    let (id, rest) = quoted(rest)?;
    let rest = kw(rest, "and")?;
    let rest = kw(rest, &format!("{var}/value"))?;
    let rest = kw(rest, "eq")?;
    let (value, rest) = quoted(rest)?;
    let rest = kw(rest, ")")?;
    rest.trim().is_empty().then_some(ExtFilter { id, value })
}

/// Parses `$expand=singleValueExtendedProperties($filter=id eq '<id>')`: the property id.
pub(crate) fn parse_ext_expand(e: &str) -> Option<String> {
    let rest = kw(e, "singleValueExtendedProperties(")?;
    let rest = kw(rest, "$filter=")?;
    let rest = kw(rest, "id")?;
    let rest = kw(rest, "eq")?;
    let (id, rest) = quoted(rest)?;
    let rest = kw(rest, ")")?;
    rest.trim().is_empty().then_some(id)
}

fn invalid_filter(r: &Req) -> Resp {
    bad(
        r,
        "ErrorInvalidUrlQueryFilter",
        "The query filter contains one or more invalid nodes.",
    )
}

fn parse_expand(r: &Req) -> Result<Option<String>, Resp> {
    match r.q("$expand") {
        None => Ok(None),
        Some(e) => parse_ext_expand(e).map(Some).ok_or_else(|| {
            bad(
                r,
                "BadRequest",
                &format!("Parsing OData Select and Expand failed: could not expand '{e}'."),
            )
        }),
    }
}

/// Adds `singleValueExtendedProperties` for an expanded property id to a rendered contact.
fn with_expand(mut v: Value, c: &MContact, expand: Option<&str>) -> Value {
    if let Some(id) = expand {
        let props: Vec<Value> = extended_value(c, id)
            .map(|val| json!({"id": HAS_PICTURE, "value": val}))
            .into_iter()
            .collect();
        v["singleValueExtendedProperties"] = Value::Array(props);
    }
    v
}

/// Percent-encodes a query value for a next link.
fn enc(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

#[derive(Debug, Clone)]
pub(crate) struct Folder {
    pub id: String,
    pub name: String,
    pub parent: String,
}

#[derive(Debug, Clone)]
pub(crate) struct MContact {
    pub id: String,
    pub folder: String,
    pub fields: Map<String, Value>,
    pub seq: u64,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub photo: bool,
    /// Sequence at creation: a delta round that began before it sends the contact whole.
    pub created_seq: u64,
    /// Sequence of each property's last change (for partial delta rows).
    pub prop_seq: BTreeMap<String, u64>,
    /// Properties changed since the last `touch`.
    dirty: Vec<String>,
}

impl MContact {
    pub fn change_key(&self) -> String {
        let d = Sha256::digest(format!("{}:{}", self.id, self.seq).as_bytes());
        format!("EQAAABYAAA{}", b64(&d[..21]))
    }
}

#[derive(Debug, Clone)]
struct MTomb {
    id: String,
    folder: String,
    seq: u64,
}

/// One Outlook mailbox.
#[derive(Debug)]
pub(crate) struct MUser {
    pub folders: BTreeMap<String, Folder>,
    pub default_id: String,
    root_id: String,
    pub contacts: BTreeMap<String, MContact>,
    tombs: Vec<MTomb>,
    pub seq: u64,
    /// Bumped to invalidate every delta and skip token of the user.
    pub epoch: u64,
    salt: u64,
    counter: u64,
    login: String,
    /// Delta rows of changed contacts carry only the properties that changed (plus `id`,
    /// `@odata.etag`, `changeKey` and `parentFolderId`), as Graph's documentation allows
    /// ("at least the properties that have been updated"). Off by default.
    pub partial_delta: bool,
    /// Contact lists (distribution lists) in the default Contacts folder: never listed by
    /// the contacts endpoints, but counted by their `$count`. None by default.
    pub contact_lists: u64,
    /// The contact listing refuses `$count` (400), as a service that does not support it
    /// there would. Off by default.
    pub refuse_count: bool,
    /// The mailbox cannot be reached through the API (no Exchange Online licence, a
    /// soft-deleted or on-premises mailbox): every `/me` request gets 404
    /// `MailboxNotEnabledForRESTAPI`, as Graph answers. Retrying does not help.
    pub mailbox_disabled: bool,
    /// Token answers leave out `scope` (RFC 6749 allows it when the scope is the one
    /// requested), so a client learns of a missing permission only from a 403.
    pub omit_token_scope: bool,
    /// Outlook's request budget per app and mailbox (10,000 per 10 minutes in production),
    /// as a token bucket; a request over it gets 429 `TooManyRequests` with the wait in
    /// `Retry-After`. `$batch` parts count one by one. Off by default.
    pub budget: Option<SimBudget>,
    /// Requests refused because the budget was spent.
    pub budget_refusals: u64,
    /// `METHOD url` of every `$batch` part served (the request log has one entry per
    /// `$batch`), newest last; the oldest tenth goes beyond 200,000.
    pub batch_parts: Vec<String>,
    /// The newest 10,000 `$batch` parts, whole (with the detailed log on).
    pub batch_log: Vec<BatchPart>,
    /// `$batch` requests served.
    batches: u64,
    /// Per contact folder, bumped to invalidate that folder's delta and skip tokens.
    pub folder_epochs: BTreeMap<String, u64>,
}

/// One `$batch` part as the simulator received it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BatchPart {
    /// Which `$batch` request of the user carried it (1, 2, …).
    pub batch: u64,
    pub id: String,
    pub method: String,
    pub url: String,
    /// Header names as sent.
    pub headers: BTreeMap<String, String>,
    pub body: Option<Value>,
}

/// The token bucket behind [`MUser::budget`].
pub(crate) struct SimBudget(governor::DefaultDirectRateLimiter);

impl std::fmt::Debug for SimBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimBudget")
    }
}

impl SimBudget {
    pub fn new(budget: u32, window: std::time::Duration) -> Option<SimBudget> {
        let burst = std::num::NonZeroU32::new(budget)?;
        let quota = governor::Quota::with_period(window.checked_div(budget)?)?.allow_burst(burst);
        Some(SimBudget(governor::RateLimiter::direct(quota)))
    }

    /// Takes `n` requests from the bucket, or says how long until they would fit.
    fn take(&self, n: usize) -> Result<(), std::time::Duration> {
        use governor::clock::Clock;
        let n = std::num::NonZeroU32::new(n.max(1) as u32).unwrap_or(std::num::NonZeroU32::MIN);
        match self.0.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                Err(not_until.wait_time_from(governor::clock::DefaultClock::default().now()))
            }
            // More parts than the whole budget: never fits; wait a full window.
            Err(_) => Err(std::time::Duration::from_secs(60)),
        }
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl MUser {
    pub fn seeded(u: &SeedUser, id_seed: u64, now: DateTime<Utc>) -> MUser {
        let salt = user_salt(&u.user);
        let mut m = MUser {
            folders: BTreeMap::new(),
            default_id: String::new(),
            root_id: String::new(),
            contacts: BTreeMap::new(),
            tombs: Vec::new(),
            seq: 0,
            epoch: 0,
            salt: salt ^ mix(id_seed),
            counter: 0,
            login: u.user.clone(),
            partial_delta: false,
            contact_lists: 0,
            refuse_count: false,
            mailbox_disabled: false,
            omit_token_scope: false,
            budget: None,
            budget_refusals: 0,
            batch_parts: Vec::new(),
            batch_log: Vec::new(),
            batches: 0,
            folder_epochs: BTreeMap::new(),
        };
        m.root_id = m.new_id("AQMkAD");
        m.default_id = m.new_id("AQMkAD");
        let (d, r) = (m.default_id.clone(), m.root_id.clone());
        m.folders.insert(
            d.clone(),
            Folder {
                id: d.clone(),
                name: "Contacts".into(),
                parent: r,
            },
        );
        const NAMES: &[&str] = &["Clients", "Suppliers", "Family", "Partners", "Press", "Old"];
        let mut folder_ids = vec![d.clone()];
        for k in 0..u.child_folders {
            let name = match NAMES.get(k) {
                Some(n) => n.to_string(),
                None => format!("Folder {}", k + 1),
            };
            folder_ids.push(m.add_folder(&name, &d));
        }
        for (i, p) in people(u.seed, u.contacts, salt).iter().enumerate() {
            let f = folder_ids[i % folder_ids.len()].clone();
            let fields = seed_to_contact(p);
            m.insert(&f, fields, p.has_photo, now);
        }
        m
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        let mut b = Vec::with_capacity(16);
        b.extend_from_slice(&mix(self.salt).to_be_bytes()[..6]);
        b.extend_from_slice(&self.counter.to_be_bytes());
        b.extend_from_slice(&(mix(self.salt ^ self.counter) as u16).to_be_bytes());
        format!("{prefix}{}AAA=", b64(&b))
    }

    pub fn add_folder(&mut self, name: &str, parent: &str) -> String {
        let id = self.new_id("AQMkAD");
        self.folders.insert(
            id.clone(),
            Folder {
                id: id.clone(),
                name: name.into(),
                parent: parent.into(),
            },
        );
        id
    }

    fn insert(
        &mut self,
        folder: &str,
        fields: Map<String, Value>,
        photo: bool,
        now: DateTime<Utc>,
    ) -> String {
        let id = self.new_id("AAMkAG");
        self.seq += 1;
        self.contacts.insert(
            id.clone(),
            MContact {
                id: id.clone(),
                folder: folder.into(),
                fields,
                seq: self.seq,
                created: now,
                modified: now,
                photo,
                created_seq: self.seq,
                prop_seq: BTreeMap::new(),
                dirty: Vec::new(),
            },
        );
        id
    }

    fn touch(&mut self, id: &str, now: DateTime<Utc>) {
        self.seq += 1;
        let s = self.seq;
        if let Some(c) = self.contacts.get_mut(id) {
            c.seq = s;
            c.modified = now;
            for p in std::mem::take(&mut c.dirty) {
                c.prop_seq.insert(p, s);
            }
        }
    }

    fn delete(&mut self, id: &str) -> bool {
        match self.contacts.remove(id) {
            Some(c) => {
                self.seq += 1;
                self.tombs.push(MTomb {
                    id: c.id,
                    folder: c.folder,
                    seq: self.seq,
                });
                true
            }
            None => false,
        }
    }

    fn folder_epoch(&self, folder: &str) -> u64 {
        self.folder_epochs.get(folder).copied().unwrap_or(0)
    }

    /// Resolves a folder reference: an id, the well-known name `contacts`, or `('id')`.
    fn folder_id(&self, r: &str) -> Option<String> {
        let r = r.trim_start_matches("('").trim_end_matches("')");
        if r.eq_ignore_ascii_case("contacts") {
            return Some(self.default_id.clone());
        }
        self.folders.contains_key(r).then(|| r.to_string())
    }

    /// The id of the mailbox's Deleted Items folder (a mail folder, so never listed as a
    /// contact folder).
    pub fn deleted_items_id(&self) -> String {
        format!("AQMkADdi{:016x}AAA=", mix(self.salt))
    }

    /// Deletes a folder the way Outlook does when the user deletes it: it moves, with its
    /// subfolders and contacts, to Deleted Items. It leaves the tree under the default
    /// folder, but a lookup by id still finds it (parent: Deleted Items), and its contacts
    /// and their delta are unchanged. The default folder stays.
    pub fn move_folder_to_deleted_items(&mut self, id: &str) -> bool {
        if id == self.default_id {
            return false;
        }
        let di = self.deleted_items_id();
        match self.folders.get_mut(id) {
            Some(f) => {
                f.parent = di;
                true
            }
            None => false,
        }
    }

    /// Deletes a folder, its descendants and their contacts. The default folder stays.
    pub fn delete_folder(&mut self, id: &str) -> bool {
        if id == self.default_id || !self.folders.contains_key(id) {
            return false;
        }
        let mut doomed = vec![id.to_string()];
        let mut i = 0;
        while i < doomed.len() {
            let cur = doomed[i].clone();
            doomed.extend(
                self.folders
                    .values()
                    .filter(|f| f.parent == cur)
                    .map(|f| f.id.clone()),
            );
            i += 1;
        }
        for f in &doomed {
            self.folders.remove(f);
            let ids: Vec<String> = self
                .contacts
                .values()
                .filter(|c| &c.folder == f)
                .map(|c| c.id.clone())
                .collect();
            for c in ids {
                self.delete(&c);
            }
        }
        true
    }
}

fn birthday_ts(y: i32, m: u32, d: u32) -> String {
    format!("{y:04}-{m:02}-{d:02}T11:59:00Z")
}

fn seed_to_contact(p: &SeedPerson) -> Map<String, Value> {
    let mut f = Map::new();
    if p.has_name() {
        if !p.given.is_empty() {
            f.insert("givenName".into(), json!(p.given));
        }
        if !p.family.is_empty() {
            f.insert("surname".into(), json!(p.family));
        }
        f.insert("displayName".into(), json!(p.display_name()));
    }
    let name = p.display_name();
    if !p.emails.is_empty() {
        let v: Vec<Value> = p
            .emails
            .iter()
            .take(3)
            .map(|e| json!({"name": if name.is_empty() { e.clone() } else { name.clone() }, "address": e}))
            .collect();
        f.insert("emailAddresses".into(), Value::Array(v));
    }
    let (mut mobile, mut business, mut home) = (None, Vec::new(), Vec::new());
    for ph in &p.phones {
        match ph.kind {
            "mobile" if mobile.is_none() => mobile = Some(ph.value.clone()),
            "work" if business.len() < 2 => business.push(ph.value.clone()),
            _ if home.len() < 2 => home.push(ph.value.clone()),
            _ => {}
        }
    }
    if let Some(m) = mobile {
        f.insert("mobilePhone".into(), json!(m));
    }
    if !business.is_empty() {
        f.insert("businessPhones".into(), json!(business));
    }
    if !home.is_empty() {
        f.insert("homePhones".into(), json!(home));
    }
    for a in &p.addresses {
        let key = match a.kind {
            "home" => "homeAddress",
            "work" => "businessAddress",
            _ => "otherAddress",
        };
        let mut o = json!({"street": a.street, "city": a.city, "countryOrRegion": a.country, "postalCode": a.postal_code});
        if !a.region.is_empty() {
            o["state"] = json!(a.region);
        }
        f.insert(key.into(), o);
    }
    if let Some(c) = &p.company {
        f.insert("companyName".into(), json!(c));
    }
    if let Some(t) = &p.job_title {
        f.insert("jobTitle".into(), json!(t));
    }
    if let Some((y, m, d)) = p.birthday {
        f.insert(
            "birthday".into(),
            json!(birthday_ts(y.unwrap_or(1604), m, d)),
        );
    }
    f
}

fn default_of(p: &str) -> Value {
    if COLLECTIONS.contains(&p) {
        json!([])
    } else if ADDRESSES.contains(&p) {
        json!({})
    } else {
        Value::Null
    }
}

/// Renders a contact; `select` restricts properties (`id` and `@odata.etag` always come).
pub(crate) fn render(c: &MContact, select: Option<&[String]>) -> Value {
    let ck = c.change_key();
    let mut o = Map::new();
    o.insert("@odata.etag".into(), json!(format!("W/\"{ck}\"")));
    o.insert("id".into(), json!(c.id));
    for p in PROPS {
        if let Some(sel) = select {
            if !sel.iter().any(|s| s == p) {
                continue;
            }
        }
        let v = match *p {
            "createdDateTime" => json!(ts(c.created)),
            "lastModifiedDateTime" => json!(ts(c.modified)),
            "changeKey" => json!(ck),
            "parentFolderId" => json!(c.folder),
            "fileAs" => c.fields.get("fileAs").cloned().unwrap_or(json!("")),
            _ => c.fields.get(*p).cloned().unwrap_or_else(|| default_of(p)),
        };
        o.insert(p.to_string(), v);
    }
    Value::Object(o)
}

fn folder_json(f: &Folder) -> Value {
    json!({"id": f.id, "displayName": f.name, "parentFolderId": f.parent})
}

/// Graph's error JSON.
pub(crate) fn error(
    status: u16,
    code: &str,
    message: &str,
    client_request_id: Option<&str>,
) -> Resp {
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, false);
    let rid = uuid::Uuid::new_v4().to_string();
    let crid = client_request_id
        .map(String::from)
        .unwrap_or_else(|| rid.clone());
    Resp::json(
        status,
        &json!({"error": {"code": code, "message": message,
                "innerError": {"date": now.trim_end_matches("+00:00"), "request-id": rid, "client-request-id": crid}}}),
    )
    .with_header("request-id", &rid)
    .with_header("client-request-id", &crid)
}

fn not_found(r: &Req) -> Resp {
    error(
        404,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
        r.header("client-request-id"),
    )
}

fn bad(r: &Req, code: &str, msg: &str) -> Resp {
    error(400, code, msg, r.header("client-request-id"))
}

struct Prefs {
    maxpagesize: Option<usize>,
    immutable: bool,
}

fn prefs(r: &Req) -> Prefs {
    let mut p = Prefs {
        maxpagesize: None,
        immutable: false,
    };
    if let Some(h) = r.header("prefer") {
        for part in h.split(',') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("odata.maxpagesize=") {
                p.maxpagesize = v
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(|n| n.min(MAX_PAGE_SIZE));
            } else if part
                .replace(' ', "")
                .eq_ignore_ascii_case("IdType=\"ImmutableId\"")
            {
                p.immutable = true;
            }
        }
    }
    p
}

fn apply_prefs(resp: Resp, p: &Prefs, page_applied: bool) -> Resp {
    let mut applied = Vec::new();
    if page_applied {
        if let Some(n) = p.maxpagesize {
            applied.push(format!("odata.maxpagesize={n}"));
        }
    }
    if p.immutable {
        applied.push("IdType=\"ImmutableId\"".to_string());
    }
    if applied.is_empty() {
        resp
    } else {
        resp.with_header("Preference-Applied", &applied.join(", "))
    }
}

fn parse_select(r: &Req) -> Result<Option<Vec<String>>, Resp> {
    let Some(s) = r.q("$select").or_else(|| r.q("select")) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if p != "id" && !PROPS.contains(&p) {
            return Err(bad(
                r,
                "RequestBroker--ParseUri",
                &format!(
                    "Could not find a property named '{p}' on type 'microsoft.graph.contact'."
                ),
            ));
        }
        out.push(p.to_string());
    }
    Ok(Some(out))
}

fn unauthorized(r: &Req, msg: &str) -> Resp {
    error(401, "InvalidAuthenticationToken", msg, r.header("client-request-id"))
        .with_header("WWW-Authenticate", "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\"")
}

/// Entry point for every non-control request on the Graph server.
pub(crate) fn handle(shared: &Shared, r: &Req) -> Resp {
    let ctx = shared.ctx();
    let mut guard = shared.graph();
    let st = &mut *guard;
    let segs: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    let m = r.method.as_str();
    match (m, segs.as_slice()) {
        ("GET", [_tenant, "oauth2", "v2.0", "authorize"]) => authorize(st, r, &ctx),
        ("POST", [_tenant, "oauth2", "v2.0", "token"]) => token(st, r, &ctx),
        ("POST", [_tenant, "oauth2", "v2.0", "devicecode"]) => devicecode(st, r, &ctx),
        (_, ["v1.0", rest @ ..]) => {
            let user = match r.bearer() {
                None => return unauthorized(r, "Access token is empty."),
                Some(t) => match st.auth.user_of(Some(t), ctx.now) {
                    Some(u) => u,
                    None => {
                        return unauthorized(r, "Lifetime validation failed, the token is expired.")
                    }
                },
            };
            let base = st.base.clone();
            let write_ok = st.auth.scope_of(r.bearer()).is_some_and(can_write);
            let Some(u) = st.users.get_mut(&user) else {
                return unauthorized(r, "Lifetime validation failed, the token is expired.");
            };
            if u.mailbox_disabled {
                return error(
                    404,
                    "MailboxNotEnabledForRESTAPI",
                    "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
                    r.header("client-request-id"),
                );
            }
            let is_batch = rest == ["$batch"] && m == "POST";
            if let Some(b) = &u.budget {
                let cost = if is_batch {
                    r.json()
                        .ok()
                        .and_then(|v| v.get("requests").and_then(Value::as_array).map(Vec::len))
                        .unwrap_or(1)
                } else {
                    1
                };
                if let Err(wait) = b.take(cost) {
                    u.budget_refusals += 1;
                    // Whole milliseconds, rounded up, so the wait is never too short.
                    let secs = (wait.as_millis() as f64 + 1.0).ceil() / 1000.0;
                    return super::common::throttled(super::Provider::Outlook, secs, false);
                }
            }
            if is_batch {
                let detailed = st.detailed_log;
                return batch(u, &mut st.scripts, detailed, r, &ctx, &base, write_ok);
            }
            api(u, r, rest, &ctx, &base, write_ok)
        }
        _ => bad(r, "BadRequest", "Invalid version."),
    }
}

fn api(u: &mut MUser, r: &Req, segs: &[&str], ctx: &Ctx, base: &str, write_ok: bool) -> Resp {
    let p = prefs(r);
    let m = r.method.as_str();
    if m != "GET" && !write_ok {
        // A token granted Contacts.Read only.
        return error(
            403,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
            r.header("client-request-id"),
        );
    }
    // Normalise `contactfolders('id')` to `contactFolders`, `id`.
    let mut norm: Vec<String> = Vec::new();
    for s in segs {
        if let Some((head, arg)) = s.split_once("('") {
            norm.push(head.to_string());
            norm.push(arg.trim_end_matches("')").to_string());
        } else {
            norm.push(s.to_string());
        }
    }
    let lower: Vec<String> = norm.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    let n: Vec<&str> = norm.iter().map(String::as_str).collect();
    let resp = match (m, l.as_slice()) {
        ("GET", ["me"]) => Resp::json(
            200,
            &json!({"@odata.context": format!("{base}/v1.0/$metadata#users/$entity"),
                    "id": format!("{:016x}", u.salt), "userPrincipalName": u.login,
                    "mail": u.login, "displayName": u.login}),
        ),
        ("GET", ["me", "contactfolders"]) => {
            let d = u.default_id.clone();
            list_folders(u, r, &d, base, "me/contactFolders")
        }
        ("GET", ["me", "contactfolders", _]) => {
            match u.folder_id(n[2]).and_then(|id| u.folders.get(&id)) {
                Some(f) => {
                    let mut v = folder_json(f);
                    v["@odata.context"] = json!(format!(
                        "{base}/v1.0/$metadata#users('{}')/contactFolders/$entity",
                        u.login
                    ));
                    Resp::json(200, &v)
                }
                None => not_found(r),
            }
        }
        ("GET", ["me", "contactfolders", _, "childfolders"]) => match u.folder_id(n[2]) {
            Some(id) => {
                let path = format!("me/contactFolders/{id}/childFolders");
                list_folders(u, r, &id, base, &path)
            }
            None => not_found(r),
        },
        ("GET", ["me", "contactfolders", _, "contacts", "delta"]) => match u.folder_id(n[2]) {
            Some(id) => return delta(u, r, &id, ctx, base, &p),
            None => not_found(r),
        },
        ("GET", ["me", "contacts"]) => {
            let d = u.default_id.clone();
            return list_contacts(u, r, &d, base, "me/contacts", &p);
        }
        ("GET", ["me", "contactfolders", _, "contacts"]) => match u.folder_id(n[2]) {
            Some(id) => {
                let path = format!("me/contactFolders/{id}/contacts");
                return list_contacts(u, r, &id, base, &path, &p);
            }
            None => not_found(r),
        },
        ("POST", ["me", "contacts"]) => {
            let d = u.default_id.clone();
            create(u, r, &d, ctx, base)
        }
        ("POST", ["me", "contactfolders", _, "contacts"]) => match u.folder_id(n[2]) {
            Some(id) => create(u, r, &id, ctx, base),
            None => not_found(r),
        },
        (_, ["me", "contacts", _]) => item(u, r, n[2], None, ctx, base),
        (_, ["me", "contactfolders", _, "contacts", _]) => match u.folder_id(n[2]) {
            Some(fid) => item(u, r, n[4], Some(&fid), ctx, base),
            None => not_found(r),
        },
        ("GET", ["me", "contacts", _, "photo", "$value"])
        | ("GET", ["me", "contactfolders", _, "contacts", _, "photo", "$value"]) => {
            let id = if l.len() == 5 { n[2] } else { n[4] };
            match u.contacts.get(id) {
                Some(c) if c.photo => Resp::bytes(200, "image/jpeg", super::jpeg::TINY_JPEG),
                Some(_) => error(
                    404,
                    "ImageNotFound",
                    "The photo wasn't found.",
                    r.header("client-request-id"),
                ),
                None => not_found(r),
            }
        }
        ("GET", ["me", "contacts", _, "photo"]) => match u.contacts.get(n[2]) {
            Some(c) if c.photo => {
                let s = super::jpeg::TINY_JPEG_SIZE;
                Resp::json(
                    200,
                    &json!({"@odata.mediaContentType": "image/jpeg", "@odata.mediaEtag": format!("W/\"{}\"", c.change_key()),
                            "id": format!("{s}X{s}"), "height": s, "width": s}),
                )
            }
            Some(_) => error(
                404,
                "ImageNotFound",
                "The photo wasn't found.",
                r.header("client-request-id"),
            ),
            None => not_found(r),
        },
        (_, ["$batch"]) => bad(r, "BadRequest", "Nested batch requests are not supported."),
        _ => bad(
            r,
            "BadRequest",
            &format!(
                "Resource not found for the segment '{}'.",
                n.last().copied().unwrap_or("")
            ),
        ),
    };
    apply_prefs(resp, &p, false)
}

fn page_params(r: &Req) -> (usize, usize) {
    let top = r
        .q("$top")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .map(|n| n.min(MAX_PAGE_SIZE))
        .unwrap_or(DEFAULT_PAGE_SIZE);
    let skip = r
        .q("$skip")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    (top, skip)
}

fn list_folders(u: &MUser, r: &Req, parent: &str, base: &str, path: &str) -> Resp {
    let (top, skip) = page_params(r);
    let all: Vec<&Folder> = u.folders.values().filter(|f| f.parent == parent).collect();
    let page: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(top)
        .map(|f| folder_json(f))
        .collect();
    let mut out = json!({"@odata.context": format!("{base}/v1.0/$metadata#users('{}')/contactFolders", u.login), "value": page});
    if skip + top < all.len() {
        out["@odata.nextLink"] = json!(format!(
            "{base}/v1.0/{path}?$top={top}&$skip={}",
            skip + top
        ));
    }
    Resp::json(200, &out)
}

fn list_contacts(u: &MUser, r: &Req, folder: &str, base: &str, path: &str, p: &Prefs) -> Resp {
    let select = match parse_select(r) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let expand = match parse_expand(r) {
        Ok(e) => e,
        Err(e) => return e,
    };
    let filter = match r.q("$filter") {
        None => None,
        Some(f) => match parse_ext_filter(f) {
            Some(f) => Some(f),
            None => return invalid_filter(r),
        },
    };
    let (mut top, skip) = page_params(r);
    if r.q("$top").is_none() {
        if let Some(n) = p.maxpagesize {
            top = n;
        }
    }
    let all: Vec<&MContact> = u
        .contacts
        .values()
        .filter(|c| c.folder == folder)
        .filter(|c| {
            filter.as_ref().is_none_or(|f| {
                extended_value(c, &f.id).is_some_and(|v| v.eq_ignore_ascii_case(&f.value))
            })
        })
        .collect();
    let page: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(top)
        .map(|c| with_expand(render(c, select.as_deref()), c, expand.as_deref()))
        .collect();
    let mut out = json!({"@odata.context": format!("{base}/v1.0/$metadata#users('{}')/contacts", u.login), "value": page});
    // `$count=true`: the number of items the whole collection holds (with `$filter`, of
    // those that pass it). Graph also counts the mailbox's contact lists here, which it
    // never lists (microsoftgraph/microsoft-graph-docs#11201): the simulator's mailboxes
    // hold `contact_lists` of them.
    match r.q("$count") {
        None | Some("false") => {}
        Some("true") if !u.refuse_count => {
            let lists = match filter.is_none() && folder == u.default_id {
                true => u.contact_lists,
                false => 0,
            };
            out["@odata.count"] = json!(all.len() as u64 + lists);
        }
        Some(_) => {
            return bad(
                r,
                "ErrorInvalidUrlQuery",
                "The query parameter '$count' is not supported.",
            )
        }
    }
    if skip + top < all.len() {
        let mut next = format!("{base}/v1.0/{path}?$top={top}&$skip={}", skip + top);
        for k in ["$select", "$filter", "$expand"] {
            if let Some(v) = r.q(k) {
                next.push_str(&format!("&{k}={}", enc(v)));
            }
        }
        out["@odata.nextLink"] = json!(next);
    }
    apply_prefs(
        Resp::json(200, &out),
        p,
        r.q("$top").is_none() && p.maxpagesize.is_some(),
    )
}

/// Validates a contact body and returns the settable properties (null removes).
fn validate(r: &Req, body: &Value) -> Result<Map<String, Value>, Resp> {
    let Some(o) = body.as_object() else {
        return Err(bad(
            r,
            "RequestBodyRead",
            "The request body must be a JSON object.",
        ));
    };
    let mut out = Map::new();
    for (k, v) in o {
        if k.starts_with("@odata.") || READ_ONLY.contains(&k.as_str()) {
            continue;
        }
        if !PROPS.contains(&k.as_str()) {
            return Err(bad(
                r,
                "RequestBodyRead",
                &format!("The property '{k}' does not exist on type 'microsoft.graph.contact'."),
            ));
        }
        let v = if k == "birthday" && !v.is_null() {
            let s = v.as_str().unwrap_or("");
            let date = s
                .get(..10)
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
            match date {
                Some(d) => json!(format!("{}T11:59:00Z", d.format("%Y-%m-%d"))),
                None => {
                    return Err(bad(
                        r,
                        "RequestBodyRead",
                        "Cannot convert the literal to the expected type 'Edm.DateTimeOffset'.",
                    ))
                }
            }
        } else {
            v.clone()
        };
        if COLLECTIONS.contains(&k.as_str()) && !(v.is_array() || v.is_null()) {
            return Err(bad(
                r,
                "RequestBodyRead",
                &format!("A collection was expected for property '{k}'."),
            ));
        }
        if ADDRESSES.contains(&k.as_str()) {
            if let Some(a) = v.as_object() {
                if let Some(bad_key) = a.keys().find(|x| !ADDRESS_KEYS.contains(&x.as_str())) {
                    return Err(bad(
                        r,
                        "RequestBodyRead",
                        &format!("The property '{bad_key}' does not exist on type 'microsoft.graph.physicalAddress'."),
                    ));
                }
            }
        }
        out.insert(k.clone(), v);
    }
    for (prop, name, max) in LIMITS {
        if let Some(n) = out.get(*prop).and_then(Value::as_array).map(Vec::len) {
            if n > *max {
                return Err(bad(
                    r,
                    "ErrorInvalidArgument",
                    &format!("The multi value property {name} has {n} entries, that exceeds the max allowed value of {max}"),
                ));
            }
        }
    }
    Ok(out)
}

fn merge(c: &mut MContact, patch: Map<String, Value>) {
    let name_changed = patch.contains_key("givenName") || patch.contains_key("surname");
    let has_display = patch.contains_key("displayName");
    for (k, v) in patch {
        c.dirty.push(k.clone());
        if v.is_null() {
            c.fields.remove(&k);
        } else {
            c.fields.insert(k, v);
        }
    }
    if name_changed && !has_display {
        let g = c
            .fields
            .get("givenName")
            .and_then(Value::as_str)
            .unwrap_or("");
        let s = c
            .fields
            .get("surname")
            .and_then(Value::as_str)
            .unwrap_or("");
        let dn = format!("{g} {s}").trim().to_string();
        c.fields.insert("displayName".into(), json!(dn));
        c.dirty.push("displayName".into());
    }
}

fn create(u: &mut MUser, r: &Req, folder: &str, ctx: &Ctx, base: &str) -> Resp {
    let body = match r.json() {
        Ok(b) => b,
        Err(_) => return bad(r, "RequestBodyRead", "Empty or invalid JSON payload."),
    };
    let fields = match validate(r, &body) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let id = u.insert(folder, Map::new(), false, ctx.now);
    if let Some(c) = u.contacts.get_mut(&id) {
        merge(c, fields.clone());
        c.dirty.clear();
        if !fields.contains_key("displayName") && !c.fields.contains_key("displayName") {
            c.fields.insert("displayName".into(), json!(""));
        }
    }
    match u.contacts.get(&id) {
        Some(c) => {
            let mut v = render(c, None);
            v["@odata.context"] = json!(format!(
                "{base}/v1.0/$metadata#users('{}')/contacts/$entity",
                u.login
            ));
            Resp::json(201, &v).with_header("Location", &format!("{base}/v1.0/me/contacts/{id}"))
        }
        None => not_found(r),
    }
}

fn if_match_ok(r: &Req, c: &MContact) -> bool {
    let Some(h) = r.header("if-match") else {
        return true;
    };
    let h = h.trim();
    if h == "*" {
        return true;
    }
    let ck = c.change_key();
    let inner = h.trim_start_matches("W/").trim_matches('"');
    inner == ck
}

fn conflict(r: &Req) -> Resp {
    error(
        412,
        "ErrorIrresolvableConflict",
        "The send or update operation could not be performed because the change key passed in the request does not match the current change key for the item.",
        r.header("client-request-id"),
    )
}

fn item(u: &mut MUser, r: &Req, id: &str, folder: Option<&str>, ctx: &Ctx, base: &str) -> Resp {
    let exists = u
        .contacts
        .get(id)
        .filter(|c| folder.is_none_or(|f| f == c.folder))
        .is_some();
    if !exists {
        return not_found(r);
    }
    match r.method.as_str() {
        "GET" => {
            let select = match parse_select(r) {
                Ok(s) => s,
                Err(e) => return e,
            };
            let expand = match parse_expand(r) {
                Ok(e) => e,
                Err(e) => return e,
            };
            match u.contacts.get(id) {
                Some(c) => {
                    let mut v = with_expand(render(c, select.as_deref()), c, expand.as_deref());
                    v["@odata.context"] = json!(format!(
                        "{base}/v1.0/$metadata#users('{}')/contacts/$entity",
                        u.login
                    ));
                    Resp::json(200, &v)
                }
                None => not_found(r),
            }
        }
        "PATCH" => {
            let body = match r.json() {
                Ok(b) => b,
                Err(_) => return bad(r, "RequestBodyRead", "Empty or invalid JSON payload."),
            };
            let patch = match validate(r, &body) {
                Ok(p) => p,
                Err(e) => return e,
            };
            let Some(c) = u.contacts.get_mut(id) else {
                return not_found(r);
            };
            if !if_match_ok(r, c) {
                return conflict(r);
            }
            merge(c, patch);
            u.touch(id, ctx.now);
            match u.contacts.get(id) {
                Some(c) => Resp::json(200, &render(c, None)),
                None => not_found(r),
            }
        }
        "DELETE" => {
            if let Some(c) = u.contacts.get(id) {
                if !if_match_ok(r, c) {
                    return conflict(r);
                }
            }
            u.delete(id);
            Resp::empty(204)
        }
        _ => error(
            405,
            "ErrorInvalidRequest",
            "The OData request is not supported.",
            r.header("client-request-id"),
        ),
    }
}

/// What a partial delta row always carries.
const ALWAYS_IN_DELTA: &[&str] = &[
    "@odata.type",
    "@odata.etag",
    "id",
    "changeKey",
    "parentFolderId",
];

#[derive(serde::Serialize, serde::Deserialize)]
struct DeltaState {
    /// Folder id.
    f: String,
    /// User epoch at issue time.
    e: u64,
    /// Folder epoch at issue time.
    #[serde(default)]
    fe: u64,
    /// Start of the round (exclusive); None for an initial round.
    from: Option<u64>,
    /// Snapshot sequence of the round; None in a delta token.
    snap: Option<u64>,
    /// Last sequence returned in this round.
    after: u64,
    /// `$select` of the initial request.
    sel: Option<Vec<String>>,
}

fn sync_state_not_found(r: &Req, base: &str, folder: &str) -> Resp {
    error(
        410,
        "SyncStateNotFound",
        "The sync state generation is not found; a full synchronization is required.",
        r.header("client-request-id"),
    )
    .with_header(
        "Location",
        &format!("{base}/v1.0/me/contactFolders/{folder}/contacts/delta?$deltatoken="),
    )
}

fn delta(u: &MUser, r: &Req, folder: &str, _ctx: &Ctx, base: &str, p: &Prefs) -> Resp {
    // Graph documents only `$select` (plus its own state tokens) for contact delta and
    // answers anything else with 400 `ErrorInvalidUrlQuery`.
    let refused: Vec<&str> = REFUSED_ON_DELTA
        .iter()
        .copied()
        .filter(|k| r.query.iter().any(|(q, _)| q.eq_ignore_ascii_case(k)))
        .collect();
    if !refused.is_empty() {
        return bad(
            r,
            "ErrorInvalidUrlQuery",
            &format!(
                "The following parameters are not supported with change tracking over the 'Contacts' resource: '{}'.",
                refused.join(", ")
            ),
        );
    }
    let tok = r
        .q("$skiptoken")
        .or_else(|| r.q("$deltatoken"))
        .filter(|t| !t.is_empty());
    let st = match tok {
        None => {
            let sel = match parse_select(r) {
                Ok(s) => s,
                Err(e) => return e,
            };
            DeltaState {
                f: folder.to_string(),
                e: u.epoch,
                fe: u.folder_epoch(folder),
                from: None,
                snap: Some(u.seq),
                after: 0,
                sel,
            }
        }
        Some(t) => {
            let parsed: Option<DeltaState> = unb64(t).and_then(|b| serde_json::from_slice(&b).ok());
            match parsed {
                Some(s) if s.e == u.epoch && s.fe == u.folder_epoch(folder) && s.f == folder => {
                    if r.q("$deltatoken").is_some() {
                        // Start of a new round from the saved state.
                        DeltaState {
                            from: s.snap.or(s.from),
                            snap: Some(u.seq),
                            after: 0,
                            ..s
                        }
                    } else {
                        s
                    }
                }
                _ => return sync_state_not_found(r, base, folder),
            }
        }
    };
    let snap = st.snap.unwrap_or(u.seq);
    let from = st.from.unwrap_or(0);
    let lo = from.max(st.after);
    let page_size = p.maxpagesize.unwrap_or(DEFAULT_PAGE_SIZE);
    let mut rows: Vec<(u64, Value)> = Vec::new();
    for c in u.contacts.values() {
        if c.folder == folder && c.seq > lo && c.seq <= snap {
            rows.push((c.seq, Value::Null));
        }
    }
    if st.from.is_some() {
        for t in &u.tombs {
            if t.folder == folder && t.seq > lo && t.seq <= snap {
                rows.push((t.seq, json!({"@odata.type": "#microsoft.graph.contact", "id": t.id, "@removed": {"reason": "deleted"}})));
            }
        }
    }
    rows.sort_by_key(|(s, _)| *s);
    let more = rows.len() > page_size;
    rows.truncate(page_size);
    let last = rows.last().map(|(s, _)| *s).unwrap_or(lo);
    let by_seq: BTreeMap<u64, &MContact> = u
        .contacts
        .values()
        .filter(|c| c.folder == folder && c.seq > lo && c.seq <= last)
        .map(|c| (c.seq, c))
        .collect();
    let value: Vec<Value> = rows
        .into_iter()
        .map(|(s, v)| {
            if v.is_null() {
                match by_seq.get(&s) {
                    Some(c) => {
                        let mut o = render(c, st.sel.as_deref());
                        if let Some(m) = o.as_object_mut() {
                            let mut out = Map::new();
                            out.insert("@odata.type".into(), json!("#microsoft.graph.contact"));
                            out.extend(std::mem::take(m));
                            if let Some(from) =
                                st.from.filter(|f| u.partial_delta && c.created_seq <= *f)
                            {
                                out.retain(|k, _| {
                                    ALWAYS_IN_DELTA.contains(&k.as_str())
                                        || c.prop_seq.get(k).is_some_and(|s| *s > from)
                                });
                            }
                            o = Value::Object(out);
                        }
                        o
                    }
                    None => Value::Null,
                }
            } else {
                v
            }
        })
        .filter(|v| !v.is_null())
        .collect();
    let link_base = format!("{base}/v1.0/me/contactFolders/{folder}/contacts/delta");
    let mut out = json!({"@odata.context": format!("{base}/v1.0/$metadata#Collection(contact)"), "value": value});
    if more {
        let next = DeltaState {
            f: st.f.clone(),
            e: st.e,
            fe: st.fe,
            from: st.from,
            snap: Some(snap),
            after: last,
            sel: st.sel.clone(),
        };
        let t = b64(&serde_json::to_vec(&next).unwrap_or_default());
        out["@odata.nextLink"] = json!(format!("{link_base}?$skiptoken={t}"));
    } else {
        let d = DeltaState {
            f: st.f.clone(),
            e: st.e,
            fe: st.fe,
            from: Some(snap),
            snap: None,
            after: 0,
            sel: st.sel.clone(),
        };
        let t = b64(&serde_json::to_vec(&d).unwrap_or_default());
        out["@odata.deltaLink"] = json!(format!("{link_base}?$deltatoken={t}"));
    }
    apply_prefs(Resp::json(200, &out), p, p.maxpagesize.is_some())
}

fn batch(
    u: &mut MUser,
    scripts: &mut Scripts,
    detailed: bool,
    r: &Req,
    ctx: &Ctx,
    base: &str,
    write_ok: bool,
) -> Resp {
    let body = match r.json() {
        Ok(b) => b,
        Err(_) => return bad(r, "BadRequest", "Invalid batch payload format."),
    };
    let Some(reqs) = body.get("requests").and_then(Value::as_array) else {
        return bad(r, "BadRequest", "Invalid batch payload format.");
    };
    if reqs.len() > MAX_BATCH {
        return bad(
            r,
            "BadRequest",
            &format!("Number of batch requests exceeds the limit of {MAX_BATCH}."),
        );
    }
    let mut statuses: BTreeMap<String, u16> = BTreeMap::new();
    let mut responses = Vec::new();
    for q in reqs {
        let id = q
            .get("id")
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_default();
        let method = q.get("method").and_then(Value::as_str).unwrap_or("GET");
        let url = q.get("url").and_then(Value::as_str).unwrap_or("");
        if u.batch_parts.len() >= 200_000 {
            u.batch_parts.drain(..20_000);
        }
        u.batch_parts.push(format!("{method} {url}"));
        if detailed {
            if u.batch_log.len() >= 10_000 {
                u.batch_log.drain(..1_000);
            }
            u.batch_log.push(BatchPart {
                batch: u.batches + 1,
                id: id.clone(),
                method: method.to_string(),
                url: url.to_string(),
                headers: q
                    .get("headers")
                    .and_then(Value::as_object)
                    .map(|h| {
                        h.iter()
                            .map(|(k, v)| {
                                (
                                    k.clone(),
                                    v.as_str().map_or_else(|| v.to_string(), String::from),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                body: q.get("body").cloned(),
            });
        }
        if id.is_empty() || url.is_empty() {
            return bad(
                r,
                "BadRequest",
                "Each batch request needs an id, a method and a url.",
            );
        }
        let failed_dep = q
            .get("dependsOn")
            .and_then(Value::as_array)
            .map(|d| {
                d.iter()
                    .filter_map(Value::as_str)
                    .any(|dep| statuses.get(dep).is_none_or(|s| *s >= 400))
            })
            .unwrap_or(false);
        let resp = if failed_dep {
            error(
                424,
                "FailedDependency",
                "A request this request depends on failed.",
                None,
            )
        } else {
            let mut headers: std::collections::HashMap<String, String> = q
                .get("headers")
                .and_then(Value::as_object)
                .map(|h| {
                    h.iter()
                        .filter_map(|(k, v)| {
                            v.as_str().map(|v| (k.to_ascii_lowercase(), v.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if let Some(a) = r.header("authorization") {
                headers.insert("authorization".into(), a.to_string());
            }
            let body = q
                .get("body")
                .map(|b| serde_json::to_vec(b).unwrap_or_default())
                .unwrap_or_default();
            let rel = url.trim_start_matches('/');
            let rel = rel.strip_prefix("v1.0/").unwrap_or(rel);
            let inner = Req::new(method, &format!("/v1.0/{rel}"), headers, body.into());
            let segs: Vec<&str> = inner.segs.iter().skip(1).map(String::as_str).collect();
            // A scripted answer for the part (a part throttled on its own); a cut body
            // means nothing inside a `$batch` answer.
            match scripts.take(&inner) {
                Some(s) => {
                    let own = s
                        .needs_own()
                        .then(|| api(u, &inner, &segs, ctx, base, write_ok));
                    s.answer(own).0
                }
                None => api(u, &inner, &segs, ctx, base, write_ok),
            }
        };
        statuses.insert(id.clone(), resp.status);
        let mut hdrs = Map::new();
        if !resp.content_type.is_empty() {
            hdrs.insert("Content-Type".into(), json!(resp.content_type));
        }
        for (k, v) in &resp.headers {
            hdrs.insert(k.clone(), json!(v));
        }
        let mut entry = json!({"id": id, "status": resp.status, "headers": hdrs});
        if !resp.body.is_empty() {
            entry["body"] = if resp.content_type.starts_with("application/json") {
                resp.body_json()
            } else {
                json!(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    &resp.body
                ))
            };
        }
        responses.push(entry);
    }
    u.batches += 1;
    Resp::json(200, &json!({"responses": responses}))
}

// ---------------------------------------------------------------------------------------
// Identity platform

fn aad_error(error: &str, code: u32, text: &str, ctx: &Ctx) -> Resp {
    let trace = uuid::Uuid::new_v4().to_string();
    let corr = uuid::Uuid::new_v4().to_string();
    let stamp = ctx.now.format("%Y-%m-%d %H:%M:%SZ").to_string();
    Resp::json(
        400,
        &json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {stamp}"),
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": corr,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

fn authorize(st: &mut ProvState<MUser>, r: &Req, ctx: &Ctx) -> Resp {
    let (Some(client_id), Some(redirect)) = (r.q("client_id"), r.q("redirect_uri")) else {
        return aad_error(
            "invalid_request",
            900144,
            "The request body must contain the client_id and redirect_uri parameters.",
            ctx,
        );
    };
    let Ok(mut loc) = url::Url::parse(redirect) else {
        return aad_error(
            "invalid_request",
            50011,
            "The redirect URI is not valid.",
            ctx,
        );
    };
    let user = st.pick_user(r.q("login_hint"));
    {
        let mut q = loc.query_pairs_mut();
        match user {
            Some(user) if r.q("response_type") == Some("code") => {
                let code = format!("M.C5_sim.{}", random_token());
                let scope = r.q("scope").unwrap_or("").to_string();
                st.auth.codes.insert(
                    code.clone(),
                    AuthCode {
                        user,
                        client_id: client_id.to_string(),
                        redirect_uri: redirect.to_string(),
                        challenge: r.q("code_challenge").map(String::from),
                        method: r.q("code_challenge_method").unwrap_or("plain").to_string(),
                        scope,
                        used: false,
                        expires: ctx.now + chrono::Duration::minutes(10),
                    },
                );
                q.append_pair("code", &code);
            }
            Some(_) => {
                q.append_pair("error", "unsupported_response_type");
            }
            None => {
                q.append_pair("error", "access_denied");
                q.append_pair("error_description", "No user to sign in.");
            }
        }
        if let Some(s) = r.q("state") {
            q.append_pair("state", s);
        }
    }
    Resp::redirect(loc.as_str())
}

/// Whether a space-separated scope list allows contact writes (`Contacts.ReadWrite`, with
/// or without the `https://graph.microsoft.com/` prefix).
pub(crate) fn can_write(scope: &str) -> bool {
    scope.split_whitespace().any(|s| {
        s.rsplit('/')
            .next()
            .is_some_and(|n| n.eq_ignore_ascii_case("Contacts.ReadWrite"))
    })
}

fn grant(st: &mut ProvState<MUser>, user: &str, scope: &str, ctx: &Ctx) -> Resp {
    let access = st
        .auth
        .issue_access_scoped("EwB.sim-", user, ctx.now, ctx.ttl, scope);
    let mut v = json!({
        "token_type": "Bearer", "scope": scope, "expires_in": ctx.ttl.as_secs(),
        "ext_expires_in": ctx.ttl.as_secs(), "access_token": access,
    });
    if scope
        .split_whitespace()
        .any(|s| s.eq_ignore_ascii_case("offline_access"))
    {
        v["refresh_token"] = json!(st.auth.issue_refresh("M.C5-sim-", user, scope));
    }
    if st.users.get(user).is_some_and(|u| u.omit_token_scope) {
        if let Some(o) = v.as_object_mut() {
            o.remove("scope");
        }
    }
    Resp::json(200, &v)
}

fn token(st: &mut ProvState<MUser>, r: &Req, ctx: &Ctx) -> Resp {
    let form = r.form();
    st.auth.record_client(&form);
    if !form.contains_key("client_id") {
        return aad_error(
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
            ctx,
        );
    }
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some(c) = st.auth.codes.get_mut(&code) else {
                return aad_error(
                    "invalid_grant",
                    70000,
                    "The provided authorization code is not valid.",
                    ctx,
                );
            };
            if c.used {
                return aad_error(
                    "invalid_grant",
                    54005,
                    "The authorization code was already redeemed.",
                    ctx,
                );
            }
            if c.expires < ctx.now {
                return aad_error(
                    "invalid_grant",
                    70008,
                    "The authorization code has expired.",
                    ctx,
                );
            }
            if form.get("client_id") != Some(&c.client_id) {
                return aad_error(
                    "invalid_grant",
                    70000,
                    "The code was issued to another client.",
                    ctx,
                );
            }
            if form.get("redirect_uri") != Some(&c.redirect_uri) {
                return aad_error(
                    "invalid_grant",
                    50011,
                    "The redirect URI does not match the one of the authorization request.",
                    ctx,
                );
            }
            if !pkce_ok(&c.challenge, &c.method, form.get("code_verifier")) {
                return aad_error("invalid_grant", 501481, "The code verifier does not match the code challenge of the authorization request.", ctx);
            }
            c.used = true;
            let (user, scope) = (c.user.clone(), c.scope.clone());
            grant(st, &user, &scope, ctx)
        }
        Some("refresh_token") => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            match st.auth.refresh.get(&rt).cloned() {
                None => aad_error(
                    "invalid_grant",
                    70000,
                    "The provided refresh token is not valid.",
                    ctx,
                ),
                Some(t) if t.revoked || !st.users.contains_key(&t.user) => aad_error(
                    "invalid_grant",
                    50173,
                    "The grant was revoked; the user must sign in again.",
                    ctx,
                ),
                Some(t) => {
                    // The new tokens carry what the user consented to when the grant was
                    // made, whatever the refresh asks for: a grant for Contacts.Read does
                    // not become Contacts.ReadWrite by asking (the response's `scope` says
                    // what was granted).
                    let scope = t.scope.clone();
                    // Rotation: a new refresh token every time. The old one is not revoked
                    // (Microsoft documents that used refresh tokens stay valid).
                    let scope = if scope.split_whitespace().any(|s| s == "offline_access") {
                        scope
                    } else {
                        format!("{scope} offline_access").trim().to_string()
                    };
                    grant(st, &t.user, &scope, ctx)
                }
            }
        }
        Some("urn:ietf:params:oauth:grant-type:device_code") => {
            let dc = form.get("device_code").cloned().unwrap_or_default();
            let first = st.pick_user(None);
            let Some(d) = st.auth.devices.get_mut(&dc) else {
                return aad_error(
                    "bad_verification_code",
                    70018,
                    "The device code was not recognized.",
                    ctx,
                );
            };
            if d.done {
                return aad_error(
                    "invalid_grant",
                    54005,
                    "The device code was already redeemed.",
                    ctx,
                );
            }
            if d.expires < ctx.now {
                return aad_error("expired_token", 70019, "The device code has expired.", ctx);
            }
            if let Some(last) = d.last_poll {
                if ctx.now - last
                    < chrono::Duration::milliseconds(DEVICE_INTERVAL_SECS as i64 * 1000 - 50)
                {
                    d.last_poll = Some(ctx.now);
                    return aad_error(
                        "slow_down",
                        70016,
                        "Polling too fast; wait the interval.",
                        ctx,
                    );
                }
            }
            d.last_poll = Some(ctx.now);
            if !d.approved && d.polls < 2 {
                d.polls += 1;
                return aad_error(
                    "authorization_pending",
                    70016,
                    "The user has not finished signing in.",
                    ctx,
                );
            }
            d.done = true;
            let user = d.user.clone().or(first);
            let scope = d.scope.clone();
            match user {
                Some(u) => grant(st, &u, &scope, ctx),
                None => aad_error("authorization_declined", 70000, "No user to sign in.", ctx),
            }
        }
        _ => aad_error(
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
            ctx,
        ),
    }
}

const DEVICE_INTERVAL_SECS: u64 = 1;

fn devicecode(st: &mut ProvState<MUser>, r: &Req, ctx: &Ctx) -> Resp {
    let form = r.form();
    if !form.contains_key("client_id") {
        return aad_error(
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
            ctx,
        );
    }
    let device_code = format!("DAQABAAEA-sim-{}", random_token());
    let raw = random_token().to_ascii_uppercase().replace(['-', '_'], "X");
    let user_code: String = raw.chars().take(9).collect();
    let base = st.base.clone();
    st.auth.devices.insert(
        device_code.clone(),
        DeviceCode {
            user_code: user_code.clone(),
            user: None,
            approved: false,
            polls: 0,
            last_poll: None,
            expires: ctx.now + chrono::Duration::seconds(900),
            scope: form.get("scope").cloned().unwrap_or_default(),
            done: false,
        },
    );
    Resp::json(
        200,
        &json!({
            "device_code": device_code, "user_code": user_code,
            "verification_uri": format!("{base}/devicelogin"), "expires_in": 900,
            "interval": DEVICE_INTERVAL_SECS,
            "message": format!("To sign in, open {base}/devicelogin and enter the code {user_code}."),
        }),
    )
}

// ---------------------------------------------------------------------------------------
// Control API

/// Graph-specific control routes (`segs` without the leading `_sim`).
pub(crate) fn control(shared: &Shared, r: &Req, segs: &[&str]) -> Option<Resp> {
    let now = shared.now();
    let mut st = shared.graph();
    let m = r.method.as_str();
    if let ("POST", ["devicecode", "approve"]) = (m, segs) {
        let body = r.json().unwrap_or(Value::Null);
        let code = body.get("user_code").and_then(Value::as_str).unwrap_or("");
        let user = body.get("user").and_then(Value::as_str).map(String::from);
        return Some(
            match st.auth.devices.values_mut().find(|d| d.user_code == code) {
                Some(d) => {
                    d.approved = true;
                    d.user = user;
                    Resp::json(200, &json!({}))
                }
                None => control_err(404, "no such user_code"),
            },
        );
    }
    let user = match segs {
        ["users", u, ..] => u.to_string(),
        _ => return None,
    };
    let refresh = st.auth.latest_refresh.get(&user).cloned();
    let Some(u) = st.users.get_mut(&user) else {
        return Some(control_err(404, "no such user"));
    };
    let resp = match (m, &segs[2..]) {
        ("GET", []) => Resp::json(
            200,
            &json!({"user": user, "contacts": u.contacts.len(), "refresh_token": refresh}),
        ),
        ("GET", ["contacts"]) => {
            let v: Vec<Value> = u
                .contacts
                .values()
                .map(|c| {
                    let fname = u.folders.get(&c.folder).map(|f| f.name.clone());
                    json!({"id": c.id, "folderId": c.folder, "folderName": fname, "hasPhoto": c.photo, "contact": render(c, None)})
                })
                .collect();
            Resp::json(200, &Value::Array(v))
        }
        ("POST", ["grants"]) => {
            let body = r.json().unwrap_or(Value::Null);
            let Some(scope) = body.get("scope").and_then(Value::as_str) else {
                return Some(control_err(400, "scope is required"));
            };
            let scope = if scope.split_whitespace().any(|s| s == "offline_access") {
                scope.to_string()
            } else {
                format!("{scope} offline_access")
            };
            let tok = st.auth.issue_refresh("M.C5-sim-", &user, &scope);
            return Some(Resp::json(
                201,
                &json!({"refresh_token": tok, "scope": scope}),
            ));
        }
        ("PATCH", ["options"]) => {
            let body = r.json().unwrap_or(Value::Null);
            let (Some(o), true) = (
                body.as_object(),
                body.as_object().is_some_and(|o| {
                    !o.is_empty()
                        && o.iter().all(|(k, v)| match k.as_str() {
                            "partialDelta" | "mailboxDisabled" | "omitTokenScope"
                            | "refuseCount" => v.is_boolean(),
                            "contactLists" => v.is_u64(),
                            _ => false,
                        })
                }),
            ) else {
                return Some(control_err(
                    400,
                    "body must set partialDelta, mailboxDisabled, omitTokenScope or refuseCount to true or false, or contactLists to a count",
                ));
            };
            if let Some(b) = o.get("refuseCount").and_then(Value::as_bool) {
                u.refuse_count = b;
            }
            if let Some(n) = o.get("contactLists").and_then(Value::as_u64) {
                u.contact_lists = n;
            }
            if let Some(b) = o.get("partialDelta").and_then(Value::as_bool) {
                u.partial_delta = b;
            }
            if let Some(b) = o.get("mailboxDisabled").and_then(Value::as_bool) {
                u.mailbox_disabled = b;
            }
            if let Some(b) = o.get("omitTokenScope").and_then(Value::as_bool) {
                u.omit_token_scope = b;
            }
            Resp::json(
                200,
                &json!({"partialDelta": u.partial_delta, "mailboxDisabled": u.mailbox_disabled,
                        "omitTokenScope": u.omit_token_scope, "refuseCount": u.refuse_count,
                        "contactLists": u.contact_lists}),
            )
        }
        ("GET", ["folders"]) => {
            let v: Vec<Value> = u.folders.values().map(folder_json).collect();
            Resp::json(200, &json!({"default": u.default_id, "folders": v}))
        }
        ("POST", ["contacts"]) => {
            let Ok(mut body) = r.json() else {
                return Some(control_err(400, "body must be a contact"));
            };
            let (folder, photo) = match body.as_object_mut() {
                Some(o) => (
                    o.remove("folder")
                        .and_then(|f| f.as_str().map(String::from)),
                    o.remove("photo").and_then(|p| p.as_bool()).unwrap_or(false),
                ),
                None => return Some(control_err(400, "body must be a JSON object")),
            };
            let fid = match folder {
                None => u.default_id.clone(),
                Some(f) => match u.folder_id(&f).or_else(|| {
                    u.folders
                        .values()
                        .find(|x| x.name == f)
                        .map(|x| x.id.clone())
                }) {
                    Some(id) => id,
                    None => return Some(control_err(404, "no such folder")),
                },
            };
            let fields = match validate(r, &body) {
                Ok(f) => f,
                Err(e) => return Some(e),
            };
            let id = u.insert(&fid, Map::new(), photo, now);
            if let Some(c) = u.contacts.get_mut(&id) {
                merge(c, fields);
                c.dirty.clear();
            }
            match u.contacts.get(&id) {
                Some(c) => Resp::json(
                    201,
                    &json!({"id": id, "folderId": fid, "contact": render(c, None)}),
                ),
                None => control_err(500, "lost contact"),
            }
        }
        ("PATCH", ["contacts", id]) => {
            let Ok(mut body) = r.json() else {
                return Some(control_err(400, "body must be a JSON object"));
            };
            let photo = body
                .as_object_mut()
                .and_then(|o| o.remove("photo"))
                .and_then(|p| p.as_bool());
            let patch = match validate(r, &body) {
                Ok(p) => p,
                Err(e) => return Some(e),
            };
            let Some(c) = u.contacts.get_mut(*id) else {
                return Some(control_err(404, "no such contact"));
            };
            merge(c, patch);
            if let Some(p) = photo {
                c.photo = p;
            }
            u.touch(id, now);
            match u.contacts.get(*id) {
                Some(c) => Resp::json(200, &render(c, None)),
                None => control_err(404, "no such contact"),
            }
        }
        ("DELETE", ["contacts", id]) => {
            if u.delete(id) {
                Resp::empty(204)
            } else {
                control_err(404, "no such contact")
            }
        }
        ("POST", ["folders"]) => {
            let body = r.json().unwrap_or(Value::Null);
            let Some(name) = body.get("name").and_then(Value::as_str) else {
                return Some(control_err(400, "name is required"));
            };
            let parent = match body.get("parent").and_then(Value::as_str) {
                None => u.default_id.clone(),
                Some(p) => match u.folder_id(p) {
                    Some(id) => id,
                    None => return Some(control_err(404, "no such parent folder")),
                },
            };
            let id = u.add_folder(name, &parent);
            Resp::json(
                201,
                &json!({"id": id, "displayName": name, "parentFolderId": parent}),
            )
        }
        ("POST", ["folders", id, "move-to-deleted-items"]) => {
            if u.move_folder_to_deleted_items(id) {
                match u.folders.get(*id) {
                    Some(f) => Resp::json(200, &folder_json(f)),
                    None => control_err(404, "no such folder"),
                }
            } else {
                control_err(404, "no such folder (or the default folder)")
            }
        }
        ("POST", ["folders", id, "expire-delta"]) => {
            if u.folders.contains_key(*id) {
                *u.folder_epochs.entry(id.to_string()).or_insert(0) += 1;
                Resp::json(200, &json!({}))
            } else {
                control_err(404, "no such folder")
            }
        }
        ("DELETE", ["folders", id]) => {
            if u.delete_folder(id) {
                Resp::empty(204)
            } else {
                control_err(404, "no such folder (or the default folder)")
            }
        }
        _ => return None,
    };
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_respects_limits_and_folders() {
        let mut su = SeedUser::new("o@example.com", 400, 9);
        su.child_folders = 3;
        let u = MUser::seeded(&su, 1, Utc::now());
        assert_eq!(u.folders.len(), 4);
        assert_eq!(u.contacts.len(), 400);
        for c in u.contacts.values() {
            let n = |k: &str| {
                c.fields
                    .get(k)
                    .and_then(Value::as_array)
                    .map(Vec::len)
                    .unwrap_or(0)
            };
            assert!(n("emailAddresses") <= 3 && n("businessPhones") <= 2 && n("homePhones") <= 2);
            if let Some(b) = c.fields.get("birthday").and_then(Value::as_str) {
                assert!(b.ends_with("T11:59:00Z"), "{b}");
            }
        }
        assert!(u.contacts.values().any(|c| c
            .fields
            .get("birthday")
            .and_then(Value::as_str)
            .is_some_and(|b| b.starts_with("1604-"))));
        let per_folder = u
            .contacts
            .values()
            .filter(|c| c.folder == u.default_id)
            .count();
        assert_eq!(per_folder, 100);
    }

    #[test]
    fn every_property_the_client_selects_is_a_contact_property() {
        for p in crate::providers::graph::SELECT_PROPERTIES {
            assert!(*p == "id" || PROPS.contains(p), "{p}");
        }
        let u = MUser::seeded(&SeedUser::new("o@example.com", 1, 1), 1, Utc::now());
        let c = u.contacts.values().next().expect("one contact");
        let sel: Vec<String> = crate::providers::graph::SELECT_PROPERTIES
            .iter()
            .map(|p| p.to_string())
            .collect();
        let v = render(c, Some(&sel));
        for p in crate::providers::graph::SELECT_PROPERTIES {
            assert!(v.get(*p).is_some(), "{p} rendered");
        }
    }

    #[test]
    fn render_select() {
        let u = MUser::seeded(&SeedUser::new("o@example.com", 1, 1), 1, Utc::now());
        let c = u.contacts.values().next().expect("one contact");
        let v = render(c, Some(&["displayName".to_string()]));
        let mut keys: Vec<&String> = v.as_object().expect("obj").keys().collect();
        keys.sort();
        assert_eq!(keys, vec!["@odata.etag", "displayName", "id"]);
        let full = render(c, None);
        assert!(full["otherAddress"].is_object());
        assert_eq!(
            full["@odata.etag"],
            json!(format!("W/\"{}\"", c.change_key()))
        );
    }
}
