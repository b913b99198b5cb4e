//! The Google side: People API v1 (connections, contacts, contact groups, batch writes),
//! Google OAuth 2 (authorization code with PKCE, refresh, revoke) and photo URLs.
//!
//! Contacts keep their person fields as the client sent them (arrays of field objects);
//! output-only parts (field `metadata`, `displayName`, `canonicalForm`, `formattedType`,
//! `formattedValue`, memberships, photos, person metadata) are computed when rendering.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::common::{
    b64, control_err, mix, pkce_ok, unb64, AuthCode, Ctx, ProvState, Req, Resp, Shared,
};
use super::seed::{people, user_salt, SeedPerson};
use super::SeedUser;
use crate::providers::google::wire::{
    ALL_PERSON_FIELDS, MAPPED_PERSON_FIELDS, MAX_BATCH_DELETE, MAX_BATCH_WRITE, MY_CONTACTS_GROUP,
    PAGE_SIZE, STARRED_GROUP, SYNC_TOKEN_LIFETIME, UPDATABLE_PERSON_FIELDS,
};

/// Fields whose entries carry `metadata.primary`: the mapped ones, nicknames and URLs.
fn primary_field(name: &str) -> bool {
    MAPPED_PERSON_FIELDS.contains(&name) || matches!(name, "nicknames" | "urls")
}

#[derive(Debug, Clone)]
pub(crate) struct GContact {
    pub num: u64,
    pub data: Map<String, Value>,
    pub starred: bool,
    pub photo: bool,
    pub seq: u64,
    pub updated: DateTime<Utc>,
    /// Former resource names (after a re-identification), shown in
    /// `metadata.previousResourceNames` by listings made with a sync token.
    pub previous: Vec<String>,
}

#[derive(Debug, Clone)]
struct Tomb {
    num: u64,
    seq: u64,
    etag: String,
    source_etag: String,
}

/// One Google account.
#[derive(Debug)]
pub(crate) struct GUser {
    pub contacts: BTreeMap<u64, GContact>,
    tombs: Vec<Tomb>,
    pub seq: u64,
    next_num: u64,
    /// Bumped to invalidate every sync token of the user.
    pub epoch: u64,
    salt: u64,
    groups_updated: DateTime<Utc>,
    login: String,
    /// Control API: updates of these contacts are refused as stale (FAILED_PRECONDITION)
    /// this many more times.
    reject_updates: BTreeMap<u64, u32>,
    /// Control API: raw persons that break the schema, sent as they are (with their
    /// sequence number) on the last page of listings that cover them.
    malformed: Vec<(u64, Value)>,
    /// Control API: contacts a full listing leaves out while `totalItems` still counts
    /// them (a listing cut short).
    hidden: std::collections::BTreeSet<u64>,
}

fn etag_of(num: u64, seq: u64) -> String {
    let d = Sha256::digest(format!("{num}:{seq}").as_bytes());
    format!("%Eg{}", b64(&d[..18]))
}

/// The CONTACT source's etag: like Google's, a different string from the person's etag,
/// and it changes with every write too. Writes are checked against this one.
fn source_etag_of(num: u64, seq: u64) -> String {
    let d = Sha256::digest(format!("contact-source:{num}:{seq}").as_bytes());
    format!("#{}", b64(&d[..9]))
}

impl GContact {
    /// `Person.etag`: the whole person's entity tag (web cache validation only).
    pub fn etag(&self) -> String {
        etag_of(self.num, self.seq)
    }
    /// `metadata.sources[type=CONTACT].etag`: what `updateContact` compares.
    pub fn source_etag(&self) -> String {
        source_etag_of(self.num, self.seq)
    }
}

impl GUser {
    pub fn seeded(u: &SeedUser, id_seed: u64, now: DateTime<Utc>) -> GUser {
        let salt = user_salt(&u.user);
        let base = 1_000_000_000_000_000_000u64 + mix(id_seed ^ salt) % 4_000_000_000_000_000_000;
        let mut g = GUser {
            contacts: BTreeMap::new(),
            tombs: Vec::new(),
            seq: 0,
            next_num: base,
            epoch: 0,
            salt,
            groups_updated: now,
            login: u.user.clone(),
            reject_updates: BTreeMap::new(),
            malformed: Vec::new(),
            hidden: Default::default(),
        };
        for (i, p) in people(u.seed, u.contacts, salt).iter().enumerate() {
            let starred = (mix(salt ^ 0x5354_4152 ^ i as u64) % 1_000_000) as f64 / 1_000_000.0
                < u.starred_share;
            // Seeded data is built clean; no need to sanitize it.
            g.insert(seed_to_person(p), starred, p.has_photo, now);
        }
        g
    }

    fn insert(
        &mut self,
        data: Map<String, Value>,
        starred: bool,
        photo: bool,
        now: DateTime<Utc>,
    ) -> u64 {
        self.seq += 1;
        let num = self.next_num;
        self.next_num += 1 + mix(num) % 7;
        self.contacts.insert(
            num,
            GContact {
                num,
                data,
                starred,
                photo,
                seq: self.seq,
                updated: now,
                previous: Vec::new(),
            },
        );
        if starred {
            self.groups_updated = now;
        }
        num
    }

    fn touch(&mut self, num: u64, now: DateTime<Utc>) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(c) = self.contacts.get_mut(&num) {
            c.seq = seq;
            c.updated = now;
        }
    }

    fn delete(&mut self, num: u64, now: DateTime<Utc>) -> bool {
        match self.contacts.remove(&num) {
            Some(c) => {
                self.seq += 1;
                self.tombs.push(Tomb {
                    num,
                    seq: self.seq,
                    etag: etag_of(num, self.seq),
                    source_etag: source_etag_of(num, self.seq),
                });
                if c.starred {
                    self.groups_updated = now;
                }
                true
            }
            None => false,
        }
    }
}

fn seed_to_person(p: &SeedPerson) -> Map<String, Value> {
    let mut m = Map::new();
    if p.has_name() {
        let mut n = Map::new();
        if !p.given.is_empty() {
            n.insert("givenName".into(), json!(p.given));
        }
        if !p.family.is_empty() {
            n.insert("familyName".into(), json!(p.family));
        }
        m.insert("names".into(), json!([n]));
    }
    if !p.emails.is_empty() {
        let kinds = ["home", "work", "other"];
        let v: Vec<Value> = p
            .emails
            .iter()
            .enumerate()
            .map(|(i, e)| json!({"value": e, "type": kinds[i % 3]}))
            .collect();
        m.insert("emailAddresses".into(), Value::Array(v));
    }
    if !p.phones.is_empty() {
        let v: Vec<Value> = p
            .phones
            .iter()
            .map(|ph| json!({"value": ph.value, "type": ph.kind}))
            .collect();
        m.insert("phoneNumbers".into(), Value::Array(v));
    }
    if !p.addresses.is_empty() {
        let v: Vec<Value> = p
            .addresses
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut o = json!({
                    "streetAddress": a.street, "city": a.city, "postalCode": a.postal_code,
                    "country": a.country, "countryCode": a.country_code, "type": a.kind,
                });
                if !a.region.is_empty() {
                    o["region"] = json!(a.region);
                }
                if i == p.primary_address {
                    o["metadata"] = json!({"primary": true});
                }
                o
            })
            .collect();
        m.insert("addresses".into(), Value::Array(v));
    }
    if p.company.is_some() || p.job_title.is_some() {
        let mut o = json!({"type": "work"});
        if let Some(c) = &p.company {
            o["name"] = json!(c);
        }
        if let Some(t) = &p.job_title {
            o["title"] = json!(t);
        }
        m.insert("organizations".into(), json!([o]));
    }
    if let Some((y, mo, d)) = p.birthday {
        let date = match y {
            Some(y) => json!({"year": y, "month": mo, "day": d}),
            None => json!({"month": mo, "day": d}),
        };
        m.insert("birthdays".into(), json!([{"date": date}]));
    }
    m
}

/// Keeps only settable person fields, drops output-only keys from their entries.
fn sanitize(data: &mut Map<String, Value>) {
    data.retain(|k, v| {
        UPDATABLE_PERSON_FIELDS.contains(&k.as_str()) && k != "memberships" && v.is_array()
    });
    for (_, v) in data.iter_mut() {
        if let Some(arr) = v.as_array_mut() {
            for item in arr.iter_mut() {
                if let Some(o) = item.as_object_mut() {
                    let primary = o
                        .get("metadata")
                        .and_then(|m| m.get("primary"))
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    o.remove("metadata");
                    if primary {
                        o.insert("metadata".into(), json!({"primary": true}));
                    }
                    for k in [
                        "canonicalForm",
                        "formattedType",
                        "displayNameLastFirst",
                        "formattedValue",
                    ] {
                        o.remove(k);
                    }
                }
            }
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// E.164 form of a phone number, parsed with region US, when valid. Parsing is slow and
/// seeded numbers repeat a lot, so results are cached.
pub(crate) fn canonical_phone(v: &str) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Option<String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(v).cloned()) {
        return hit;
    }
    let res = parse_phone(v);
    if let Ok(mut c) = cache.lock() {
        if c.len() < 100_000 {
            c.insert(v.to_string(), res.clone());
        }
    }
    res
}

fn parse_phone(v: &str) -> Option<String> {
    let n = phonenumber::parse(Some(phonenumber::country::Id::US), v).ok()?;
    if !phonenumber::is_valid(&n) {
        return None;
    }
    Some(n.format().mode(phonenumber::Mode::E164).to_string())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Renders a contact as a Person restricted to `fields`.
pub(crate) fn render(c: &GContact, fields: &[String], base: &str, salt: u64) -> Value {
    let etag = c.etag();
    let source_etag = c.source_etag();
    let src_id = format!("{:x}", c.num);
    let source = json!({"type": "CONTACT", "id": src_id});
    let mut p = Map::new();
    p.insert("resourceName".into(), json!(format!("people/c{}", c.num)));
    p.insert("etag".into(), json!(etag));
    for f in fields {
        match f.as_str() {
            "metadata" => {
                p.insert(
                    "metadata".into(),
                    json!({
                        "sources": [{"type": "CONTACT", "id": src_id, "etag": source_etag,
                                     "updateTime": rfc3339(c.updated)}],
                        "objectType": "PERSON",
                    }),
                );
            }
            "memberships" => {
                let mut v = vec![json!({
                    "metadata": {"source": source},
                    "contactGroupMembership": {"contactGroupId": "myContacts",
                        "contactGroupResourceName": MY_CONTACTS_GROUP},
                })];
                if c.starred {
                    v.push(json!({
                        "metadata": {"source": source},
                        "contactGroupMembership": {"contactGroupId": "starred",
                            "contactGroupResourceName": STARRED_GROUP},
                    }));
                }
                p.insert("memberships".into(), Value::Array(v));
            }
            "photos" => {
                // A photo URL set through the control API (a hostile or odd provider
                // response): served as is.
                let v = if let Some(url) = c.data.get("_photoUrl").and_then(Value::as_str) {
                    json!([{"metadata": {"primary": true, "source": source}, "url": url}])
                } else if c.photo {
                    json!([{"metadata": {"primary": true, "source": source},
                            "url": format!("{base}/photos/{salt:x}-{}.jpg", c.num)}])
                } else {
                    json!([{"metadata": {"primary": true, "source": source},
                            "url": format!("{base}/photos/default.jpg"), "default": true}])
                };
                p.insert("photos".into(), v);
            }
            name => {
                let Some(arr) = c.data.get(name).and_then(Value::as_array) else {
                    continue;
                };
                if arr.is_empty() {
                    continue;
                }
                let has_primary = arr
                    .iter()
                    .any(|i| i.pointer("/metadata/primary") == Some(&json!(true)));
                let mut out = Vec::with_capacity(arr.len());
                for (i, item) in arr.iter().enumerate() {
                    let mut o = item.as_object().cloned().unwrap_or_default();
                    let primary = primary_field(name)
                        && if has_primary {
                            o.get("metadata").and_then(|m| m.get("primary")) == Some(&json!(true))
                        } else {
                            i == 0
                        };
                    let mut md = Map::new();
                    if primary {
                        md.insert("primary".into(), json!(true));
                        md.insert("sourcePrimary".into(), json!(true));
                    }
                    md.insert("source".into(), source.clone());
                    o.insert("metadata".into(), Value::Object(md));
                    decorate(name, &mut o);
                    out.push(Value::Object(o));
                }
                p.insert(name.to_string(), Value::Array(out));
            }
        }
    }
    Value::Object(p)
}

fn decorate(field: &str, o: &mut Map<String, Value>) {
    let s = |o: &Map<String, Value>, k: &str| {
        o.get(k).and_then(Value::as_str).unwrap_or("").to_string()
    };
    match field {
        "names" => {
            let (g, f) = (s(o, "givenName"), s(o, "familyName"));
            let middle = s(o, "middleName");
            if !g.is_empty() || !f.is_empty() {
                let parts: Vec<&str> = [g.as_str(), middle.as_str(), f.as_str()]
                    .into_iter()
                    .filter(|x| !x.is_empty())
                    .collect();
                let dn = parts.join(" ");
                o.insert("displayName".into(), json!(dn));
                let lf = match (f.is_empty(), g.is_empty()) {
                    (false, false) => format!("{f}, {g}"),
                    (false, true) => f.clone(),
                    _ => g.clone(),
                };
                o.insert("displayNameLastFirst".into(), json!(lf));
                if !o.contains_key("unstructuredName") {
                    o.insert("unstructuredName".into(), json!(dn));
                }
            } else if let Some(u) = o.get("unstructuredName").cloned() {
                o.entry("displayName").or_insert(u.clone());
                o.insert("displayNameLastFirst".into(), u);
            }
        }
        "phoneNumbers" => {
            if let Some(c) = canonical_phone(&s(o, "value")) {
                o.insert("canonicalForm".into(), json!(c));
            }
            add_formatted_type(o);
        }
        "emailAddresses" | "organizations" | "urls" | "relations" | "events" => {
            add_formatted_type(o)
        }
        "addresses" => {
            let lines: Vec<String> = [
                s(o, "streetAddress"),
                format!("{} {}", s(o, "postalCode"), s(o, "city"))
                    .trim()
                    .to_string(),
                s(o, "region"),
                s(o, "country"),
            ]
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect();
            if !lines.is_empty() {
                o.insert("formattedValue".into(), json!(lines.join("\n")));
            }
            add_formatted_type(o);
        }
        _ => {}
    }
}

fn add_formatted_type(o: &mut Map<String, Value>) {
    if let Some(t) = o.get("type").and_then(Value::as_str) {
        let ft = capitalise(t);
        o.insert("formattedType".into(), json!(ft));
    }
}

/// Google's error JSON.
pub(crate) fn error(code: u16, status: &str, message: &str, reason: Option<&str>) -> Resp {
    let mut e = json!({"code": code, "message": message, "status": status});
    if let Some(r) = reason {
        e["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": r,
            "domain": "googleapis.com",
            "metadata": {"service": "people.googleapis.com"},
        }]);
    }
    Resp::json(code, &json!({"error": e}))
}

fn invalid(field: &str, message: &str) -> Resp {
    let e = json!({"error": {
        "code": 400, "message": message, "status": "INVALID_ARGUMENT",
        "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                     "fieldViolations": [{"field": field, "description": message}]}],
    }});
    Resp::json(400, &e)
}

fn not_found() -> Resp {
    error(404, "NOT_FOUND", "Requested entity was not found.", None)
}

fn expired_sync_token() -> Resp {
    error(
        400,
        "FAILED_PRECONDITION",
        "Sync token is expired. Clear local cache and retry call without the sync token.",
        Some("EXPIRED_SYNC_TOKEN"),
    )
}

fn etag_mismatch() -> Resp {
    error(
        400,
        "FAILED_PRECONDITION",
        "Request person.metadata.sources.etag is different than the current person.metadata.sources.etag. Clear local cache and get the latest person.",
        None,
    )
}

/// Parses a field mask. `None` and empty masks are errors for required masks.
fn parse_mask(v: Option<&str>, allowed: &[&str], param: &str) -> Result<Vec<String>, Resp> {
    let raw = v.unwrap_or("").trim();
    if raw.is_empty() {
        return Err(invalid(
            param,
            &format!("{param} mask is required. Please specify one or more valid paths."),
        ));
    }
    let mut out = Vec::new();
    for part in raw.split(',') {
        let p = part.trim();
        let p = p.strip_prefix("person.").unwrap_or(p);
        if !allowed.contains(&p) {
            return Err(invalid(
                param,
                &format!("Invalid {param} mask path: \"{p}\"."),
            ));
        }
        if !out.iter().any(|x: &String| x == p) {
            out.push(p.to_string());
        }
    }
    Ok(out)
}

fn all_fields() -> Vec<String> {
    ALL_PERSON_FIELDS.iter().map(|s| s.to_string()).collect()
}

/// The optional `personFields` of a write: the fields of the returned person (all when
/// absent).
fn response_fields(r: &Req) -> Result<Vec<String>, Resp> {
    match r.q("personFields") {
        Some(m) => parse_mask(Some(m), ALL_PERSON_FIELDS, "personFields"),
        None => Ok(all_fields()),
    }
}

fn parse_num(id: &str) -> Option<u64> {
    let id = id.strip_prefix("people/").unwrap_or(id);
    id.strip_prefix('c')?.parse().ok()
}

fn unauthenticated(reason: &str) -> Resp {
    error(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected an OAuth 2 access token.",
        Some(reason),
    )
    .with_header(
        "WWW-Authenticate",
        "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"",
    )
}

/// Entry point for every non-control request on the Google server.
pub(crate) fn handle(shared: &Shared, r: &Req) -> Resp {
    let mut ctx = shared.ctx();
    let mut st = shared.google();
    ctx.page_cap = st.page_cap;
    let segs: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    let m = r.method.as_str();
    match (m, segs.as_slice()) {
        ("GET", ["o", "oauth2", "v2", "auth"]) | ("GET", ["o", "oauth2", "auth"]) => {
            authorize(&mut st, r, &ctx)
        }
        ("POST", ["token"]) => token(&mut st, r, &ctx),
        ("POST", ["revoke"]) | ("GET", ["revoke"]) => revoke(&mut st, r),
        ("GET", ["photos", _]) => Resp::bytes(200, "image/jpeg", super::jpeg::TINY_JPEG),
        (_, ["v1", ..]) => {
            let user = match r.bearer() {
                None => return unauthenticated("CREDENTIALS_MISSING"),
                Some(t) => match st.auth.user_of(Some(t), ctx.now) {
                    Some(u) => u,
                    None => return unauthenticated("ACCESS_TOKEN_EXPIRED"),
                },
            };
            let base = st.base.clone();
            let Some(u) = st.users.get_mut(&user) else {
                return unauthenticated("ACCESS_TOKEN_EXPIRED");
            };
            api(u, r, &segs[1..], &ctx, &base)
        }
        _ => error(
            404,
            "NOT_FOUND",
            "The requested URL was not found on this server.",
            None,
        ),
    }
}

fn api(u: &mut GUser, r: &Req, segs: &[&str], ctx: &Ctx, base: &str) -> Resp {
    let m = r.method.as_str();
    match (m, segs) {
        ("GET", ["people", "me", "connections"]) => list_connections(u, r, ctx, base),
        ("GET", ["people", "me"]) => {
            let fields = match parse_mask(r.q("personFields"), ALL_PERSON_FIELDS, "personFields") {
                Ok(f) => f,
                Err(e) => return e,
            };
            let id = format!("1{:019}", u.salt % 10_000_000_000_000_000_000);
            let source = json!({"type": "PROFILE", "id": id});
            let mut p = json!({"resourceName": format!("people/{id}"), "etag": etag_of(u.salt, 0)});
            for f in &fields {
                match f.as_str() {
                    "emailAddresses" => {
                        p["emailAddresses"] = json!([{"metadata": {"primary": true, "verified": true, "source": {"type": "ACCOUNT", "id": id}},
                                                      "value": u.login}])
                    }
                    "names" => {
                        p["names"] = json!([{"metadata": {"primary": true, "source": source}, "displayName": u.login,
                                             "unstructuredName": u.login}])
                    }
                    "metadata" => {
                        p["metadata"] = json!({"sources": [source], "objectType": "PERSON"})
                    }
                    _ => {}
                }
            }
            Resp::json(200, &p)
        }
        ("GET", ["people", id]) if id.starts_with('c') && !id.contains(':') => {
            let fields = match parse_mask(r.q("personFields"), ALL_PERSON_FIELDS, "personFields") {
                Ok(f) => f,
                Err(e) => return e,
            };
            match parse_num(id).and_then(|n| u.contacts.get(&n)) {
                Some(c) => Resp::json(200, &render(c, &fields, base, u.salt)),
                None => not_found(),
            }
        }
        ("POST", ["people:createContact"]) => {
            let fields = match response_fields(r) {
                Ok(f) => f,
                Err(e) => return e,
            };
            let person = match r.json() {
                Ok(v) if v.is_object() => v,
                _ => return invalid("person", "Invalid JSON payload received."),
            };
            let num = create(u, &person, ctx.now);
            match u.contacts.get(&num) {
                Some(c) => Resp::json(200, &render(c, &fields, base, u.salt)),
                None => not_found(),
            }
        }
        ("PATCH", ["people", action]) if action.ends_with(":updateContact") => {
            let id = action.trim_end_matches(":updateContact");
            let upf = match parse_mask(
                r.q("updatePersonFields"),
                &UPDATABLE_PERSON_FIELDS,
                "updatePersonFields",
            ) {
                Ok(f) => f,
                Err(e) => return e,
            };
            let fields = match response_fields(r) {
                Ok(f) => f,
                Err(e) => return e,
            };
            let person = match r.json() {
                Ok(v) if v.is_object() => v,
                _ => return invalid("person", "Invalid JSON payload received."),
            };
            let Some(num) = parse_num(id) else {
                return not_found();
            };
            if let Err(e) = check_update(u, num, &person) {
                return e;
            }
            apply_update(u, num, &person, &upf, ctx.now);
            match u.contacts.get(&num) {
                Some(c) => Resp::json(200, &render(c, &fields, base, u.salt)),
                None => not_found(),
            }
        }
        ("DELETE", ["people", action]) if action.ends_with(":deleteContact") => {
            let id = action.trim_end_matches(":deleteContact");
            match parse_num(id) {
                Some(n) if u.delete(n, ctx.now) => Resp::json(200, &json!({})),
                _ => not_found(),
            }
        }
        ("POST", ["people:batchCreateContacts"]) => batch_create(u, r, ctx, base),
        ("POST", ["people:batchUpdateContacts"]) => batch_update(u, r, ctx, base),
        ("POST", ["people:batchDeleteContacts"]) => {
            let body = r.json().unwrap_or(Value::Null);
            let names: Vec<String> = body
                .get("resourceNames")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if names.is_empty() {
                return invalid("resource_names", "Resource names must not be empty.");
            }
            if names.len() > MAX_BATCH_DELETE {
                return invalid(
                    "resource_names",
                    &format!("Resource names must contain at most {MAX_BATCH_DELETE} entries."),
                );
            }
            let mut nums = Vec::new();
            for n in &names {
                match parse_num(n) {
                    Some(x) if u.contacts.contains_key(&x) => nums.push(x),
                    _ => return not_found(),
                }
            }
            for n in nums {
                u.delete(n, ctx.now);
            }
            Resp::json(200, &json!({}))
        }
        ("GET", ["contactGroups"]) => {
            let groups: Vec<Value> = ["myContacts", "starred"]
                .iter()
                .map(|g| group(u, g, 0))
                .collect();
            Resp::json(200, &json!({"contactGroups": groups, "totalItems": 2}))
        }
        ("GET", ["contactGroups", id]) => {
            let max = r
                .q("maxMembers")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if *id == "myContacts" || *id == "starred" {
                Resp::json(200, &group(u, id, max))
            } else {
                not_found()
            }
        }
        _ => error(404, "NOT_FOUND", "Method not found.", None),
    }
}

fn group(u: &GUser, id: &str, max: usize) -> Value {
    let members: Vec<&GContact> = u
        .contacts
        .values()
        .filter(|c| id == "myContacts" || c.starred)
        .collect();
    let (name, formatted) = if id == "starred" {
        ("starred", "Starred")
    } else {
        ("myContacts", "My Contacts")
    };
    let mut g = json!({
        "resourceName": format!("contactGroups/{id}"),
        "etag": etag_of(u.salt ^ id.len() as u64, u.seq),
        "metadata": {"updateTime": rfc3339(u.groups_updated)},
        "groupType": "SYSTEM_CONTACT_GROUP",
        "name": name,
        "formattedName": formatted,
        "memberCount": members.len(),
    });
    if max > 0 {
        let names: Vec<String> = members
            .iter()
            .take(max)
            .map(|c| format!("people/c{}", c.num))
            .collect();
        g["memberResourceNames"] = json!(names);
    }
    g
}

fn wants_starred(person: &Value) -> Option<bool> {
    let ms = person.get("memberships")?.as_array()?;
    Some(ms.iter().any(|m| {
        let g = m.get("contactGroupMembership");
        g.and_then(|g| g.get("contactGroupResourceName"))
            .and_then(Value::as_str)
            == Some(STARRED_GROUP)
            || g.and_then(|g| g.get("contactGroupId"))
                .and_then(Value::as_str)
                == Some("starred")
    }))
}

fn create(u: &mut GUser, person: &Value, now: DateTime<Utc>) -> u64 {
    let mut data = person.as_object().cloned().unwrap_or_default();
    sanitize(&mut data);
    let starred = wants_starred(person).unwrap_or(false);
    u.insert(data, starred, false, now)
}

/// The etag a write carries for the contact: `person.metadata.sources[type=CONTACT].etag`.
/// `person.etag` (the whole person's cache tag) is not what Google compares, and is ignored.
fn contact_source_etag(person: &Value) -> Option<String> {
    person
        .pointer("/metadata/sources")?
        .as_array()?
        .iter()
        .find(|s| s.get("type").and_then(Value::as_str) == Some("CONTACT"))?
        .get("etag")?
        .as_str()
        .map(String::from)
}

fn check_update(u: &mut GUser, num: u64, person: &Value) -> Result<(), Resp> {
    if let Some(n) = u.reject_updates.get_mut(&num).filter(|n| **n > 0) {
        // Told to refuse: as if another client changed the contact just before.
        *n -= 1;
        return Err(etag_mismatch());
    }
    let Some(c) = u.contacts.get(&num) else {
        return Err(not_found());
    };
    match contact_source_etag(person) {
        None => Err(invalid(
            "person.metadata.sources",
            "Request must set person.metadata.sources.etag for the source that is being updated.",
        )),
        Some(e) if e != c.source_etag() => Err(etag_mismatch()),
        Some(_) => Ok(()),
    }
}

fn apply_update(u: &mut GUser, num: u64, person: &Value, fields: &[String], now: DateTime<Utc>) {
    let mut incoming = person.as_object().cloned().unwrap_or_default();
    sanitize(&mut incoming);
    let star = if fields.iter().any(|f| f == "memberships") {
        Some(wants_starred(person).unwrap_or(false))
    } else {
        None
    };
    if let Some(c) = u.contacts.get_mut(&num) {
        for f in fields {
            if f == "memberships" {
                continue;
            }
            match incoming.get(f) {
                Some(v) => {
                    c.data.insert(f.clone(), v.clone());
                }
                None => {
                    c.data.remove(f);
                }
            }
        }
        if let Some(s) = star {
            if c.starred != s {
                c.starred = s;
                u.groups_updated = now;
            }
        }
    }
    u.touch(num, now);
}

fn batch_create(u: &mut GUser, r: &Req, ctx: &Ctx, base: &str) -> Resp {
    let body = match r.json() {
        Ok(v) => v,
        Err(_) => return invalid("contacts", "Invalid JSON payload received."),
    };
    let fields = match parse_mask(
        body.get("readMask").and_then(Value::as_str),
        ALL_PERSON_FIELDS,
        "read_mask",
    ) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let contacts = body
        .get("contacts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if contacts.is_empty() {
        return invalid("contacts", "Contacts must not be empty.");
    }
    if contacts.len() > MAX_BATCH_WRITE {
        return invalid(
            "contacts",
            &format!("Too many contacts in the request. At most {MAX_BATCH_WRITE} are allowed."),
        );
    }
    let mut created = Vec::new();
    for c in &contacts {
        let person = c.get("contactPerson").cloned().unwrap_or(json!({}));
        let num = create(u, &person, ctx.now);
        if let Some(gc) = u.contacts.get(&num) {
            created.push(json!({
                "person": render(gc, &fields, base, u.salt),
                "httpStatusCode": 200,
                "status": {},
            }));
        }
    }
    Resp::json(200, &json!({"createdPeople": created}))
}

fn batch_update(u: &mut GUser, r: &Req, ctx: &Ctx, base: &str) -> Resp {
    let body = match r.json() {
        Ok(v) => v,
        Err(_) => return invalid("contacts", "Invalid JSON payload received."),
    };
    let upf = match parse_mask(
        body.get("updateMask").and_then(Value::as_str),
        &UPDATABLE_PERSON_FIELDS,
        "update_mask",
    ) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let fields = match parse_mask(
        body.get("readMask").and_then(Value::as_str),
        ALL_PERSON_FIELDS,
        "read_mask",
    ) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let contacts = body
        .get("contacts")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if contacts.is_empty() {
        return invalid("contacts", "Contacts must not be empty.");
    }
    if contacts.len() > MAX_BATCH_WRITE {
        return invalid(
            "contacts",
            &format!("Too many contacts in the request. At most {MAX_BATCH_WRITE} are allowed."),
        );
    }
    // All or nothing: check every entry before changing anything.
    let mut plan = Vec::new();
    for (name, person) in &contacts {
        let Some(num) = parse_num(name) else {
            return not_found();
        };
        if let Err(e) = check_update(u, num, person) {
            return e;
        }
        plan.push((name.clone(), num, person.clone()));
    }
    let mut result = Map::new();
    for (name, num, person) in plan {
        apply_update(u, num, &person, &upf, ctx.now);
        if let Some(c) = u.contacts.get(&num) {
            result.insert(
                name,
                json!({"person": render(c, &fields, base, u.salt), "httpStatusCode": 200, "status": {}}),
            );
        }
    }
    Resp::json(200, &json!({"updateResult": result}))
}

/// Sync token: user salt, epoch, sequence number, issue time.
fn make_sync_token(u: &GUser, seq: u64, now: DateTime<Utc>) -> String {
    b64(format!(
        "gst1|{:x}|{}|{}|{}",
        u.salt,
        u.epoch,
        seq,
        now.timestamp_millis()
    )
    .as_bytes())
}

/// Returns the sequence number of a still-valid sync token.
fn check_sync_token(u: &GUser, tok: &str, now: DateTime<Utc>) -> Option<u64> {
    let raw = String::from_utf8(unb64(tok)?).ok()?;
    let parts: Vec<&str> = raw.split('|').collect();
    if parts.len() != 5 || parts[0] != "gst1" || parts[1] != format!("{:x}", u.salt) {
        return None;
    }
    let epoch: u64 = parts[2].parse().ok()?;
    let seq: u64 = parts[3].parse().ok()?;
    let issued = DateTime::<Utc>::from_timestamp_millis(parts[4].parse().ok()?)?;
    if epoch != u.epoch || seq > u.seq || now - issued > SYNC_TOKEN_LIFETIME {
        return None;
    }
    Some(seq)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PageToken {
    /// Delta round: sequence of the sync token; None for a full listing.
    from: Option<u64>,
    snap: u64,
    /// Full listing: last contact number returned; delta: last sequence returned.
    after: u64,
    /// Hash of the parameters that must not change while paging.
    params: u64,
    rs: bool,
}

fn params_hash(fields: &[String], sync: Option<&str>, rs: bool) -> u64 {
    let mut f = fields.to_vec();
    f.sort();
    super::common::hash_str(&format!("{}|{}|{rs}", f.join(","), sync.unwrap_or("")))
}

fn list_connections(u: &mut GUser, r: &Req, ctx: &Ctx, base: &str) -> Resp {
    let fields = match parse_mask(r.q("personFields"), ALL_PERSON_FIELDS, "personFields") {
        Ok(f) => f,
        Err(e) => return e,
    };
    let page_size = match r.q("pageSize") {
        None => 100,
        Some(s) => match s.parse::<i64>() {
            Ok(0) => 100,
            Ok(n) if (1..=PAGE_SIZE as i64).contains(&n) => n as usize,
            _ => {
                return invalid(
                    "page_size",
                    "Invalid page size: must be between 1 and 1000 (inclusive).",
                )
            }
        },
    };
    let page_size = ctx.page_cap.map_or(page_size, |c| page_size.min(c.max(1)));
    let rs_param = r.q("requestSyncToken") == Some("true");
    let sync = r.q("syncToken").filter(|s| !s.is_empty());
    let params = params_hash(&fields, sync, rs_param);
    let token_seq = match sync {
        Some(t) => match check_sync_token(u, t, ctx.now) {
            Some(s) => Some(s),
            None => return expired_sync_token(),
        },
        None => None,
    };
    let pt = match r.q("pageToken").filter(|s| !s.is_empty()) {
        None => PageToken {
            from: token_seq,
            snap: u.seq,
            after: 0,
            params,
            rs: rs_param,
        },
        Some(t) => {
            let parsed: Option<PageToken> = unb64(t).and_then(|b| serde_json::from_slice(&b).ok());
            match parsed {
                Some(p) if p.params == params && p.from == token_seq => p,
                _ => {
                    return invalid(
                        "page_token",
                        "Page token is invalid or does not match the parameters of the request that produced it.",
                    )
                }
            }
        }
    };
    let salt = u.salt;
    let (items, last_key, more, total): (Vec<Value>, u64, bool, usize) = match pt.from {
        None => {
            let hidden = &u.hidden;
            let mut it = u
                .contacts
                .range(pt.after.saturating_add(1)..)
                .filter(|(n, _)| !hidden.contains(n));
            let page: Vec<&GContact> = it.by_ref().take(page_size).map(|(_, c)| c).collect();
            let more = it.next().is_some();
            let last = page.last().map(|c| c.num).unwrap_or(pt.after);
            let v = page
                .iter()
                .map(|c| render(c, &fields, base, salt))
                .collect();
            (v, last, more, u.contacts.len())
        }
        Some(from) => {
            enum Ch<'a> {
                Live(&'a GContact),
                Gone(&'a Tomb),
            }
            let lo = from.max(pt.after);
            let mut changes: Vec<(u64, Ch)> = u
                .contacts
                .values()
                .filter(|c| c.seq > from && c.seq <= pt.snap)
                .map(|c| (c.seq, Ch::Live(c)))
                .chain(
                    u.tombs
                        .iter()
                        .filter(|t| t.seq > from && t.seq <= pt.snap)
                        .map(|t| (t.seq, Ch::Gone(t))),
                )
                .collect();
            let total = changes.len();
            changes.retain(|(s, _)| *s > lo);
            changes.sort_by_key(|(s, _)| *s);
            let more = changes.len() > page_size;
            changes.truncate(page_size);
            let last = changes.last().map(|(s, _)| *s).unwrap_or(lo);
            let v = changes
                .iter()
                .map(|(_, ch)| match ch {
                    Ch::Live(c) => {
                        let mut p = render(c, &fields, base, salt);
                        if !c.previous.is_empty() {
                            if let Some(m) = p.get_mut("metadata").and_then(Value::as_object_mut)
                            {
                                m.insert("previousResourceNames".into(), json!(c.previous));
                            }
                        }
                        p
                    }
                    Ch::Gone(t) => json!({
                        "resourceName": format!("people/c{}", t.num),
                        "etag": t.etag,
                        "metadata": {
                            "sources": [{"type": "CONTACT", "id": format!("{:x}", t.num), "etag": t.source_etag}],
                            "objectType": "PERSON",
                            "deleted": true,
                        },
                    }),
                })
                .collect();
            (v, last, more, total)
        }
    };
    let mut items = items;
    let mut total = total;
    // Injected malformed persons: on the last page of the listings that cover them.
    let broken = u
        .malformed
        .iter()
        .filter(|(seq, _)| pt.from.is_none_or(|f| *seq > f) && *seq <= pt.snap);
    total += broken.clone().count();
    if !more {
        items.extend(broken.map(|(_, v)| v.clone()));
    }
    let mut out = Map::new();
    if !items.is_empty() {
        out.insert("connections".into(), Value::Array(items));
    }
    if more {
        let next = PageToken {
            from: pt.from,
            snap: pt.snap,
            after: last_key,
            params: pt.params,
            rs: pt.rs,
        };
        let enc = b64(&serde_json::to_vec(&next).unwrap_or_default());
        out.insert("nextPageToken".into(), json!(enc));
    } else if pt.rs {
        out.insert(
            "nextSyncToken".into(),
            json!(make_sync_token(u, pt.snap, ctx.now)),
        );
    }
    out.insert("totalPeople".into(), json!(total));
    out.insert("totalItems".into(), json!(total));
    Resp::json(200, &Value::Object(out))
}

// ---------------------------------------------------------------------------------------
// OAuth

fn oauth_error(status: u16, error: &str, desc: &str) -> Resp {
    Resp::json(status, &json!({"error": error, "error_description": desc}))
}

fn authorize(st: &mut ProvState<GUser>, r: &Req, ctx: &Ctx) -> Resp {
    let (Some(client_id), Some(redirect)) = (r.q("client_id"), r.q("redirect_uri")) else {
        return Resp::json(
            400,
            &json!({"error": "invalid_request", "error_description": "Missing required parameter: client_id or redirect_uri"}),
        );
    };
    let mut loc = match url::Url::parse(redirect) {
        Ok(u) => u,
        Err(_) => {
            return oauth_error(
                400,
                "invalid_request",
                "Invalid parameter value for redirect_uri",
            )
        }
    };
    if r.q("response_type") != Some("code") {
        loc.query_pairs_mut()
            .append_pair("error", "unsupported_response_type");
        return Resp::redirect(loc.as_str());
    }
    let Some(user) = st.pick_user(r.q("login_hint")) else {
        loc.query_pairs_mut().append_pair("error", "access_denied");
        return Resp::redirect(loc.as_str());
    };
    let code = format!("4/0sim{}", super::common::random_token());
    let scope = r.q("scope").unwrap_or("").to_string();
    st.auth.codes.insert(
        code.clone(),
        AuthCode {
            user,
            client_id: client_id.to_string(),
            redirect_uri: redirect.to_string(),
            challenge: r.q("code_challenge").map(String::from),
            method: r.q("code_challenge_method").unwrap_or("plain").to_string(),
            scope: scope.clone(),
            used: false,
            expires: ctx.now + chrono::Duration::minutes(10),
        },
    );
    {
        let mut q = loc.query_pairs_mut();
        if let Some(s) = r.q("state") {
            q.append_pair("state", s);
        }
        q.append_pair("code", &code);
        q.append_pair("scope", &scope);
    }
    Resp::redirect(loc.as_str())
}

fn token(st: &mut ProvState<GUser>, r: &Req, ctx: &Ctx) -> Resp {
    let form = r.form();
    st.auth.record_client(&form);
    if !form.contains_key("client_id") {
        return oauth_error(
            400,
            "invalid_request",
            "Could not determine client ID from request.",
        );
    }
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some(c) = st.auth.codes.get_mut(&code) else {
                return oauth_error(400, "invalid_grant", "Malformed auth code.");
            };
            if c.used || c.expires < ctx.now {
                return oauth_error(400, "invalid_grant", "Bad Request");
            }
            if form.get("client_id") != Some(&c.client_id) {
                return oauth_error(401, "invalid_client", "The OAuth client was not found.");
            }
            if form.get("redirect_uri") != Some(&c.redirect_uri) {
                return oauth_error(400, "redirect_uri_mismatch", "Bad Request");
            }
            if !pkce_ok(&c.challenge, &c.method, form.get("code_verifier")) {
                return oauth_error(400, "invalid_grant", "Bad Request");
            }
            c.used = true;
            let (user, scope) = (c.user.clone(), c.scope.clone());
            let access = st.auth.issue_access("ya29.sim-", &user, ctx.now, ctx.ttl);
            let refresh = st.auth.issue_refresh("1//sim-", &user, &scope);
            Resp::json(
                200,
                &json!({
                    "access_token": access, "expires_in": ctx.ttl.as_secs(),
                    "refresh_token": refresh, "scope": scope, "token_type": "Bearer",
                }),
            )
        }
        Some("refresh_token") => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            let Some(t) = st.auth.refresh.get(&rt).filter(|t| !t.revoked).cloned() else {
                return oauth_error(400, "invalid_grant", "Token has been expired or revoked.");
            };
            if !st.users.contains_key(&t.user) {
                return oauth_error(400, "invalid_grant", "Token has been expired or revoked.");
            }
            let access = st.auth.issue_access("ya29.sim-", &t.user, ctx.now, ctx.ttl);
            Resp::json(
                200,
                &json!({
                    "access_token": access, "expires_in": ctx.ttl.as_secs(),
                    "scope": t.scope, "token_type": "Bearer",
                }),
            )
        }
        Some(_) => oauth_error(400, "unsupported_grant_type", "Invalid grant_type."),
        None => oauth_error(
            400,
            "invalid_request",
            "Missing required parameter: grant_type",
        ),
    }
}

fn revoke(st: &mut ProvState<GUser>, r: &Req) -> Resp {
    let form = r.form();
    let tok = form.get("token").cloned().unwrap_or_default();
    if let Some(t) = st.auth.refresh.get(&tok).cloned() {
        st.auth.revoke_user(&t.user);
        return Resp::json(200, &json!({}));
    }
    if st.auth.access.remove(&tok).is_some() {
        return Resp::json(200, &json!({}));
    }
    oauth_error(400, "invalid_token", "Token expired or revoked")
}

// ---------------------------------------------------------------------------------------
// Control API

/// Google-specific control routes (`segs` without the leading `_sim`).
pub(crate) fn control(shared: &Shared, r: &Req, segs: &[&str]) -> Option<Resp> {
    let now = shared.now();
    let mut st = shared.google();
    let base = st.base.clone();
    let m = r.method.as_str();
    let user = match segs {
        ["users", u, ..] => u.to_string(),
        _ => return None,
    };
    let Some(u) = st.users.get_mut(&user) else {
        return Some(control_err(404, "no such user"));
    };
    let all = all_fields();
    let salt = u.salt;
    let resp = match (m, &segs[2..]) {
        ("GET", ["contacts"]) => {
            let v: Vec<Value> = u
                .contacts
                .values()
                .map(|c| {
                    json!({"id": format!("c{}", c.num), "starred": c.starred,
                           "person": render(c, &all, &base, salt)})
                })
                .collect();
            Resp::json(200, &Value::Array(v))
        }
        ("POST", ["contacts"]) => {
            let Ok(body) = r.json() else {
                return Some(control_err(400, "body must be a Person"));
            };
            let num = create(u, &body, now);
            if let Some(true) = body.get("starred").and_then(Value::as_bool) {
                if let Some(c) = u.contacts.get_mut(&num) {
                    c.starred = true;
                }
            }
            match u.contacts.get(&num) {
                Some(c) => Resp::json(
                    201,
                    &json!({"id": format!("c{num}"), "starred": c.starred, "person": render(c, &all, &base, salt)}),
                ),
                None => control_err(500, "lost contact"),
            }
        }
        ("PATCH", ["contacts", id]) => {
            let Some(num) = parse_num(id).filter(|n| u.contacts.contains_key(n)) else {
                return Some(control_err(404, "no such contact"));
            };
            let Ok(Value::Object(patch)) = r.json() else {
                return Some(control_err(400, "body must be a JSON object"));
            };
            let mut clean = patch.clone();
            sanitize(&mut clean);
            if let Some(c) = u.contacts.get_mut(&num) {
                for (k, v) in &patch {
                    if k == "starred" {
                        c.starred = v.as_bool().unwrap_or(false);
                    } else if v.is_null() {
                        c.data.remove(k);
                    } else if let Some(cv) = clean.get(k) {
                        c.data.insert(k.clone(), cv.clone());
                    }
                }
            }
            u.touch(num, now);
            match u.contacts.get(&num) {
                Some(c) => Resp::json(200, &render(c, &all, &base, salt)),
                None => control_err(404, "no such contact"),
            }
        }
        ("PUT", ["contacts", id, "photo-url"]) => {
            let Some(num) = parse_num(id).filter(|n| u.contacts.contains_key(n)) else {
                return Some(control_err(404, "no such contact"));
            };
            let Some(url) = r
                .json()
                .ok()
                .and_then(|b| b.get("url").and_then(Value::as_str).map(str::to_string))
            else {
                return Some(control_err(400, "body must be {\"url\": \"...\"}"));
            };
            if let Some(c) = u.contacts.get_mut(&num) {
                c.data.insert("_photoUrl".into(), Value::String(url));
            }
            u.touch(num, now);
            Resp::empty(204)
        }
        ("DELETE", ["contacts", id]) => match parse_num(id) {
            Some(n) if u.delete(n, now) => Resp::empty(204),
            _ => control_err(404, "no such contact"),
        },
        ("POST", ["malformed"]) => {
            let Some(person) = r.json().ok().and_then(|v| v.get("person").cloned()) else {
                return Some(control_err(400, "body must be {\"person\": any JSON}"));
            };
            u.seq += 1;
            u.malformed.push((u.seq, person));
            Resp::json(201, &json!({"seq": u.seq}))
        }
        ("POST", ["contacts", id, "reidentify"]) => {
            // As when Google links a contact to a profile: the contact gets a new resource
            // name, the old one is reported deleted, the new one lists the old one in
            // `metadata.previousResourceNames`.
            let Some(old) = parse_num(id).and_then(|n| u.contacts.get(&n).cloned()) else {
                return Some(control_err(404, "no such contact"));
            };
            u.delete(old.num, now);
            let num = u.insert(old.data.clone(), old.starred, old.photo, now);
            if let Some(c) = u.contacts.get_mut(&num) {
                c.previous = old.previous.clone();
                c.previous.push(format!("people/c{}", old.num));
            }
            Resp::json(200, &json!({"resourceName": format!("people/c{num}")}))
        }
        ("POST", ["contacts", id, "hide-from-listing"]) => {
            let Some(num) = parse_num(id).filter(|n| u.contacts.contains_key(n)) else {
                return Some(control_err(404, "no such contact"));
            };
            u.hidden.insert(num);
            Resp::json(200, &json!({}))
        }
        ("POST", ["contacts", id, "reject-updates"]) => {
            let Some(num) = parse_num(id).filter(|n| u.contacts.contains_key(n)) else {
                return Some(control_err(404, "no such contact"));
            };
            let times = r
                .json()
                .ok()
                .and_then(|v| v.get("times").and_then(Value::as_u64))
                .unwrap_or(1);
            u.reject_updates
                .insert(num, u32::try_from(times).unwrap_or(u32::MAX));
            Resp::json(200, &json!({}))
        }
        ("POST", ["contacts", id, action]) if *action == "star" || *action == "unstar" => {
            let Some(num) = parse_num(id).filter(|n| u.contacts.contains_key(n)) else {
                return Some(control_err(404, "no such contact"));
            };
            if let Some(c) = u.contacts.get_mut(&num) {
                c.starred = *action == "star";
            }
            u.groups_updated = now;
            u.touch(num, now);
            Resp::json(200, &json!({}))
        }
        ("GET", []) => Resp::json(
            200,
            &json!({"user": user, "contacts": u.contacts.len(),
                    "refresh_token": st.auth.latest_refresh.get(&user)}),
        ),
        _ => return None,
    };
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: usize) -> GUser {
        GUser::seeded(&SeedUser::new("t@example.com", n, 3), 1, Utc::now())
    }

    #[test]
    fn sync_token_round_trip_and_expiry() {
        let mut u = user(3);
        let now = Utc::now();
        let t = make_sync_token(&u, u.seq, now);
        assert_eq!(check_sync_token(&u, &t, now), Some(3));
        assert_eq!(
            check_sync_token(&u, &t, now + chrono::Duration::days(8)),
            None
        );
        assert_eq!(check_sync_token(&u, "garbage", now), None);
        u.epoch += 1;
        assert_eq!(check_sync_token(&u, &t, now), None);
    }

    #[test]
    fn render_respects_mask_and_primary() {
        let u = user(50);
        let c = u
            .contacts
            .values()
            .find(|c| {
                c.data
                    .get("addresses")
                    .and_then(Value::as_array)
                    .map(Vec::len)
                    .unwrap_or(0)
                    > 1
            })
            .expect("a contact with several addresses");
        let p = render(c, &["addresses".to_string()], "http://x", 1);
        let obj = p.as_object().expect("object");
        assert!(obj.contains_key("resourceName") && obj.contains_key("etag"));
        assert!(!obj.contains_key("names"));
        let addrs = p["addresses"].as_array().expect("addresses");
        let primaries: Vec<usize> = addrs
            .iter()
            .enumerate()
            .filter(|(_, a)| a.pointer("/metadata/primary") == Some(&json!(true)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(primaries.len(), 1);
        assert_ne!(primaries[0], 0);
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(
            canonical_phone("(415) 555-0134").as_deref(),
            Some("+14155550134")
        );
        assert_eq!(
            canonical_phone("+44 20 7946 0123").as_deref(),
            Some("+442079460123")
        );
        assert_eq!(canonical_phone("ask reception"), None);
    }
}
