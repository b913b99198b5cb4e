//! Bad input, as property tests that run in CI (the fuzz targets under `fuzz/` run the same
//! decoders for longer): provider payloads, the config parser and the API's contact bodies
//! never panic, and what they reject is named.

use contact_sync::config::{self, Group};
use contact_sync::crm::{plan_edit, ContactInput, CrmEdit, EditError};
use contact_sync::model::Change;
use contact_sync::providers::google::{map_person, ListConnectionsJson, PersonJson};
use contact_sync::providers::graph::{
    map_contact, parse_page, row_outcome, GraphContact, RowOutcome,
};
use contact_sync::store::Db;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------
// JSON generators
// ---------------------------------------------------------------------------------------

const GOOGLE_KEYS: &[&str] = &[
    "resourceName",
    "etag",
    "metadata",
    "deleted",
    "sources",
    "type",
    "id",
    "names",
    "givenName",
    "familyName",
    "displayName",
    "emailAddresses",
    "phoneNumbers",
    "value",
    "primary",
    "addresses",
    "streetAddress",
    "city",
    "region",
    "postalCode",
    "country",
    "countryCode",
    "organizations",
    "name",
    "title",
    "birthdays",
    "date",
    "year",
    "month",
    "day",
    "photos",
    "url",
    "default",
    "memberships",
    "contactGroupMembership",
    "contactGroupId",
    "contactGroupResourceName",
    "connections",
    "nextPageToken",
    "nextSyncToken",
    "totalItems",
];

const GRAPH_KEYS: &[&str] = &[
    "id",
    "@odata.etag",
    "@removed",
    "reason",
    "changeKey",
    "parentFolderId",
    "displayName",
    "givenName",
    "surname",
    "emailAddresses",
    "name",
    "address",
    "businessPhones",
    "homePhones",
    "mobilePhone",
    "homeAddress",
    "businessAddress",
    "otherAddress",
    "street",
    "city",
    "state",
    "postalCode",
    "countryOrRegion",
    "companyName",
    "jobTitle",
    "birthday",
    "value",
    "@odata.nextLink",
    "@odata.deltaLink",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("   ".to_string()),
        "[a-zA-Z .@+()-]{0,24}",
        "\\PC{0,12}",
        Just("1604-03-04T00:00:00Z".to_string()),
        Just("2000-02-30".to_string()),
        Just("contactGroups/starred".to_string()),
        Just("people/c1".to_string()),
        Just("x".repeat(9000)),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        prop_oneof![Just(0i64), Just(-1), Just(13), Just(32), Just(1604)].prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::String),
    ]
}

/// Arbitrary JSON whose object keys come mostly from `keys`, so that decoders get past the
/// first level often.
fn json_with_keys(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        9 => proptest::sample::select(keys).prop_map(str::to_string),
        1 => "[a-z]{1,6}",
    ];
    leaf().prop_recursive(5, 96, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..10)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn opt_text() -> impl Strategy<Value = Value> {
    prop_oneof![Just(Value::Null), text().prop_map(Value::String)]
}

fn meta() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(|p| json!({"primary": p}))
    ]
}

/// A well-typed `Person`, with odd values inside.
fn person() -> impl Strategy<Value = Value> {
    let value_list = || {
        proptest::collection::vec(
            (meta(), opt_text()).prop_map(|(m, v)| json!({"metadata": m, "value": v})),
            0..14,
        )
    };
    (
        text(),
        proptest::option::of(any::<bool>()),
        proptest::collection::vec(
            (meta(), opt_text(), opt_text(), opt_text()).prop_map(|(m, d, g, f)| {
                json!({"metadata": m, "displayName": d, "givenName": g, "familyName": f})
            }),
            0..3,
        ),
        value_list(),
        value_list(),
        proptest::collection::vec(
            (opt_text(), opt_text(), opt_text()).prop_map(|(s, c, cc)| {
                json!({"streetAddress": s, "city": c, "countryCode": cc})
            }),
            0..3,
        ),
        proptest::collection::vec(
            (any::<i64>(), -2i64..15, -2i64..40)
                .prop_map(|(y, m, d)| json!({"date": {"year": y % 3000, "month": m, "day": d}})),
            0..2,
        ),
        proptest::collection::vec(
            prop_oneof![
                Just(json!({"contactGroupMembership": {"contactGroupId": "starred"}})),
                Just(json!({"contactGroupMembership": {"contactGroupResourceName": "contactGroups/myContacts"}})),
                Just(json!({})),
            ],
            0..3,
        ),
        proptest::collection::vec(
            (opt_text(), proptest::option::of(any::<bool>()))
                .prop_map(|(u, d)| json!({"url": u, "default": d})),
            0..2,
        ),
    )
        .prop_map(|(rn, deleted, names, emails, phones, addresses, birthdays, memberships, photos)| {
            json!({
                "resourceName": rn,
                "metadata": {"deleted": deleted},
                "names": names,
                "emailAddresses": emails,
                "phoneNumbers": phones,
                "addresses": addresses,
                "organizations": [{"name": "Acme", "title": null}],
                "birthdays": birthdays,
                "memberships": memberships,
                "photos": photos,
            })
        })
}

/// A well-typed Graph contact row, with odd values inside.
fn graph_row() -> impl Strategy<Value = Value> {
    let strings = || proptest::collection::vec(opt_text(), 0..14);
    (
        text(),
        opt_text(),
        opt_text(),
        opt_text(),
        proptest::collection::vec(
            prop_oneof![
                Just(Value::Null),
                (opt_text(), opt_text()).prop_map(|(n, a)| json!({"name": n, "address": a})),
            ],
            0..14,
        ),
        strings(),
        strings(),
        opt_text(),
        (opt_text(), opt_text()).prop_map(|(s, c)| json!({"street": s, "city": c})),
        opt_text(),
        any::<bool>(),
    )
        .prop_map(
            |(
                id,
                given,
                surname,
                display,
                emails,
                business,
                home,
                mobile,
                address,
                birthday,
                removed,
            )| {
                let mut row = json!({
                    "id": id,
                    "givenName": given,
                    "surname": surname,
                    "displayName": display,
                    "emailAddresses": emails,
                    "businessPhones": business,
                    "homePhones": home,
                    "mobilePhone": mobile,
                    "homeAddress": address,
                    "birthday": birthday,
                });
                if removed {
                    row["@removed"] = json!({"reason": "deleted"});
                }
                row
            },
        )
}

// ---------------------------------------------------------------------------------------
// Google
// ---------------------------------------------------------------------------------------

fn check_person(p: &PersonJson) {
    for group in [Group::All, Group::Starred] {
        match map_person(p, group) {
            Change::Upsert(c) => {
                let f = &c.fields;
                let all = [&f.first_name, &f.last_name]
                    .into_iter()
                    .chain(&f.emails)
                    .chain(&f.phones)
                    .chain(f.organization.iter())
                    .chain(f.job_title.iter());
                for v in all {
                    assert!(v.len() <= contact_sync::providers::MAX_FIELD_BYTES);
                    assert_eq!(v.trim(), v.as_str(), "values are trimmed");
                }
                assert!(f.emails.iter().chain(&f.phones).all(|v| !v.is_empty()));
            }
            Change::Deleted { provider_id } | Change::Left { provider_id } => {
                assert_eq!(provider_id, p.resource_name);
            }
            Change::Unreadable { .. } | Change::Renamed { .. } | Change::Unparseable { .. } => {
                panic!("map_person maps one person to an upsert, a deletion or a departure")
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn google_person_from_arbitrary_json_never_panics(v in json_with_keys(GOOGLE_KEYS)) {
        let bytes = serde_json::to_vec(&v).unwrap_or_default();
        if let Ok(p) = serde_json::from_slice::<PersonJson>(&bytes) {
            check_person(&p);
        }
        if let Ok(page) = serde_json::from_slice::<ListConnectionsJson>(&bytes) {
            for raw in &page.connections {
                // Every person of a page is read or reported unreadable; none panics.
                match serde_json::from_str::<PersonJson>(raw.get()) {
                    Ok(p) => check_person(&p),
                    Err(_) => assert!(matches!(
                        contact_sync::providers::google::decode_raw_person(raw, Group::All).0,
                        Change::Unreadable { .. } | Change::Deleted { .. }
                    )),
                }
            }
        }
    }

    #[test]
    fn google_person_well_typed_maps_to_clean_fields(v in person()) {
        let p: PersonJson = serde_json::from_value(v).expect("the generator builds valid persons");
        check_person(&p);
    }

    #[test]
    fn google_decoders_take_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(p) = serde_json::from_slice::<PersonJson>(&bytes) {
            check_person(&p);
        }
        let _ = serde_json::from_slice::<ListConnectionsJson>(&bytes);
        let _ = contact_sync::providers::google::Cursor::decode(&bytes);
    }
}

// ---------------------------------------------------------------------------------------
// Graph
// ---------------------------------------------------------------------------------------

fn check_page(bytes: &[u8]) {
    for delta in [true, false] {
        let Ok(page) = parse_page(bytes, delta) else {
            continue;
        };
        if delta {
            assert!(page.next_link.is_some() || page.delta_link.is_some());
        }
        for row in page.value {
            let is_object = row.is_object();
            match row_outcome(row, "folder", "https://graph.example/v1.0") {
                Ok(RowOutcome::Ready(c)) => assert!(!c.provider_id().is_empty() || is_object),
                Ok(RowOutcome::Fetch(_) | RowOutcome::Skip) => {}
                Err(e) => {
                    assert!(!is_object, "objects are never a page error: {e}");
                    assert!(e.is_retryable());
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn graph_page_from_arbitrary_json_never_panics(
        rows in proptest::collection::vec(json_with_keys(GRAPH_KEYS), 0..6),
        link in prop_oneof![Just(None), Just(Some("@odata.deltaLink")), Just(Some("@odata.nextLink"))],
    ) {
        let mut page = json!({"value": rows});
        if let Some(l) = link {
            page[l] = json!("https://graph.example/v1.0/me/contactFolders/f/contacts/delta?x=1");
        }
        check_page(&serde_json::to_vec(&page).unwrap_or_default());
        for row in rows_of(&page) {
            if let Ok(c) = serde_json::from_value::<GraphContact>(row) {
                let _ = map_contact(&c, "folder");
            }
        }
    }

    #[test]
    fn graph_well_typed_rows_map(rows in proptest::collection::vec(graph_row(), 0..6)) {
        let page = json!({"value": rows, "@odata.deltaLink": "https://graph.example/d"});
        let bytes = serde_json::to_vec(&page).unwrap_or_default();
        let parsed = parse_page(&bytes, true).expect("well-formed page");
        for row in parsed.value {
            match row_outcome(row, "folder", "https://graph.example/v1.0") {
                Ok(RowOutcome::Ready(c)) => {
                    if let Change::Upsert(pc) = *c {
                        for v in pc.fields.emails.iter().chain(&pc.fields.phones) {
                            assert!(!v.is_empty() && v.len() <= contact_sync::providers::MAX_FIELD_BYTES);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("an object row is never a page error: {e}"),
            }
        }
    }

    #[test]
    fn graph_decoders_take_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_page(&bytes);
        if let Ok(c) = serde_json::from_slice::<GraphContact>(&bytes) {
            let _ = map_contact(&c, "folder");
        }
        let _ = contact_sync::providers::graph::GraphCursor::decode(&bytes);
    }
}

fn rows_of(page: &Value) -> Vec<Value> {
    page["value"].as_array().cloned().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------

const GOOD_CONFIG: &str = r#"[daemon]
data_dir = "/tmp/contact-sync-proptest"
listen = "127.0.0.1:8631"
poll_interval = "30s"
timezone = "Europe/Berlin"
contact_limit = 25000

[providers.google]
client_id = "abc"

[providers.outlook]
client_id = "def"
tenant = "common"

[[accounts]]
id = "a"
provider = "google"
group = "starred"
direction = "two-way"

[[accounts]]
id = "b"
provider = "outlook"
group = "all"
direction = "one-way"
enabled = false
"#;

/// One edit of a valid config: replace a line, drop it, duplicate it, or cut the file.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, String),
    Delete(usize),
    Duplicate(usize),
    Truncate(usize),
    SetValue(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let n = GOOD_CONFIG.lines().count();
    let value = prop_oneof![
        Just("\"\"".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("\"0s\"".to_string()),
        Just("\"nowhere\"".to_string()),
        Just("[1, 2".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("true".to_string()),
        "\\PC{0,10}",
    ];
    prop_oneof![
        (0..n, "\\PC{0,30}").prop_map(|(i, s)| Mutation::Replace(i, s)),
        (0..n).prop_map(Mutation::Delete),
        (0..n).prop_map(Mutation::Duplicate),
        (0..GOOD_CONFIG.len()).prop_map(Mutation::Truncate),
        (0..n, value).prop_map(|(i, v)| Mutation::SetValue(i, v)),
    ]
}

fn apply(text: &str, muts: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for m in muts {
        let len = lines.len().max(1);
        match m {
            Mutation::Replace(i, s) => {
                if let Some(l) = lines.get_mut(i % len) {
                    *l = s.clone();
                }
            }
            Mutation::Delete(i) => {
                if !lines.is_empty() {
                    lines.remove(i % len);
                }
            }
            Mutation::Duplicate(i) => {
                if let Some(l) = lines.get(i % len).cloned() {
                    lines.insert(i % len, l);
                }
            }
            Mutation::Truncate(at) => {
                let joined = lines.join("\n");
                let mut cut = (*at).min(joined.len());
                while !joined.is_char_boundary(cut) {
                    cut -= 1;
                }
                lines = joined[..cut].lines().map(str::to_string).collect();
            }
            Mutation::SetValue(i, v) => {
                if let Some(l) = lines.get_mut(i % len) {
                    if let Some((k, _)) = l.split_once('=') {
                        *l = format!("{k}= {v}");
                    }
                }
            }
        }
    }
    lines.join("\n")
}

fn check_config(text: &str) {
    match config::parse(text) {
        Ok(_) => {}
        Err(e) => {
            assert!(!e.message.is_empty());
            let lines = text.lines().count().max(1);
            if let Some(l) = e.line {
                assert!((1..=lines + 1).contains(&l), "line {l} of {lines}: {e}");
            }
            // A file that is not TOML at all always gets a line.
            if text.parse::<toml::Table>().is_err() {
                assert!(e.line.is_some(), "syntax error without a line: {e}");
            }
        }
    }
}

#[test]
fn good_config_parses() {
    config::parse(GOOD_CONFIG).expect("the base of the mutations is valid");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configs_never_panic_and_name_a_line(muts in proptest::collection::vec(mutation(), 1..4)) {
        check_config(&apply(GOOD_CONFIG, &muts));
    }

    #[test]
    fn arbitrary_text_config_never_panics(s in "\\PC{0,200}") {
        check_config(&s);
    }

    #[test]
    fn arbitrary_bytes_config_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        check_config(&String::from_utf8_lossy(&bytes));
    }
}

// ---------------------------------------------------------------------------------------
// API contact bodies
// ---------------------------------------------------------------------------------------

const FIELDS: &[&str] = &[
    "first_name",
    "last_name",
    "emails",
    "phones",
    "address",
    "company_name",
    "job_title",
    "birthday",
];

fn body() -> impl Strategy<Value = Value> {
    let list = || {
        proptest::collection::vec(
            prop_oneof![
                text(),
                "[a-z]{1,8}@[a-z]{1,8}\\.org",
                "\\+1 20[0-9] 555 0[0-9]{3}",
            ],
            0..14,
        )
    };
    (
        proptest::option::of(opt_text()),
        proptest::option::of(opt_text()),
        proptest::option::of(list()),
        proptest::option::of(list()),
        proptest::option::of(prop_oneof![
            Just(Value::Null),
            (opt_text(), opt_text()).prop_map(|(s, c)| json!({"street": s, "city": c})),
        ]),
        proptest::option::of(opt_text()),
        proptest::option::of(prop_oneof![
            opt_text(),
            Just(json!("1990-02-28")),
            Just(json!("1990-02-30")),
        ]),
        proptest::option::of("[a-z_]{1,10}"),
    )
        .prop_map(
            |(first, last, emails, phones, address, company, birthday, extra)| {
                let mut m = Map::new();
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        m.insert(k.to_string(), v);
                    }
                };
                put("first_name", first);
                put("last_name", last);
                put("emails", emails.map(|e| json!(e)));
                put("phones", phones.map(|p| json!(p)));
                put("address", address);
                put("company_name", company);
                put("birthday", birthday);
                if let Some(k) = extra {
                    m.insert(k, json!(1));
                }
                Value::Object(m)
            },
        )
}

fn check_edit(db: &Db, input: ContactInput) {
    for edit in [
        CrmEdit::Create(input.clone()),
        CrmEdit::Patch(seeded(db), input),
    ] {
        match plan_edit(db, edit, &[]) {
            Ok(planned) => {
                let c = planned
                    .contact
                    .expect("a create or patch yields the contact");
                assert!(!(c.first_name.is_empty() && c.last_name.is_empty()));
                assert!(!(c.emails.is_empty() && c.phones.is_empty()));
                assert!(c.emails.len() <= 10 && c.phones.len() <= 10);
            }
            Err(EditError::Invalid { field, message }) => {
                assert!(
                    FIELDS.iter().any(|f| field.starts_with(f)),
                    "unknown field {field:?}: {message}"
                );
                assert!(!message.is_empty());
            }
            Err(e) => panic!("only validation errors are expected: {e}"),
        }
    }
}

/// A contact to patch (created once per database).
fn seeded(db: &Db) -> u64 {
    let input = ContactInput {
        first_name: Some("Grace".into()),
        emails: Some(vec!["grace@example.org".into()]),
        ..ContactInput::default()
    };
    if let Some(c) = db
        .contacts_page(None, 1)
        .ok()
        .and_then(|v| v.into_iter().next())
    {
        return c.id;
    }
    let planned = plan_edit(db, CrmEdit::Create(input), &[]).expect("valid seed");
    db.commit(&planned.batch).expect("in-memory commit");
    planned.contact.expect("created").id
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn contact_bodies_are_accepted_or_rejected_naming_a_field(v in body()) {
        let db = Db::in_memory(phonenumber::country::Id::US);
        let bytes = serde_json::to_vec(&v).unwrap_or_default();
        if let Ok(input) = serde_json::from_slice::<ContactInput>(&bytes) {
            check_edit(&db, input);
        }
    }

    #[test]
    fn contact_bodies_from_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(input) = serde_json::from_slice::<ContactInput>(&bytes) {
            let db = Db::in_memory(phonenumber::country::Id::US);
            check_edit(&db, input);
        }
    }
}

#[test]
fn a_body_with_a_huge_email_list_is_rejected_quickly() {
    let db = Db::in_memory(phonenumber::country::Id::US);
    // About what fits in the API's 256 KiB body limit.
    let emails: Vec<String> = (0..40_000).map(|i| format!("p{i}@x.org")).collect();
    let input = ContactInput {
        first_name: Some("Many".into()),
        emails: Some(emails),
        ..ContactInput::default()
    };
    let started = std::time::Instant::now();
    let err = plan_edit(&db, CrmEdit::Create(input), &[]).err();
    assert!(
        matches!(&err, Some(EditError::Invalid { field, .. }) if field == "emails"),
        "{err:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}
