//! People API persons to CRM changes (SPEC §3), and the cursor.

use chrono::{NaiveDate, Utc};
use serde_json::json;

use super::super::map::{drop_renamed_deletions, renames};
use super::*;
use crate::model::Address;
use crate::providers::MAX_FIELD_BYTES;

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

/// Asserts the first and last name a person maps to.
fn assert_names(v: serde_json::Value, first: &str, last: &str) {
    let f = upsert(map_person(&person(v), Group::All)).fields;
    assert_eq!((f.first_name.as_str(), f.last_name.as_str()), (first, last));
}

#[test]
fn first_name_entry_is_used_when_none_is_primary() {
    assert_names(
        json!({"resourceName": "people/c1", "names": [
            {"givenName": "Grace", "familyName": "Hopper"},
            {"givenName": "Amazing", "familyName": "Grace"}]}),
        "Grace",
        "Hopper",
    );
}

#[test]
fn display_name_fallback_splits_last_word_as_last_name() {
    let p = person(json!({"resourceName": "people/c2", "names": [
        {"metadata": {"primary": true}, "displayName": "  Jean  Claude Van Damme "}]}));
    let c = upsert(map_person(&p, Group::All));
    assert_eq!(c.fields.first_name, "Jean Claude Van");
    assert_eq!(c.fields.last_name, "Damme");

    assert_names(
        json!({"resourceName": "people/c3", "names": [
            {"displayName": "Cher", "givenName": "", "familyName": " "}]}),
        "Cher",
        "",
    );
    assert_names(json!({"resourceName": "people/c4"}), "", "");
}

#[test]
fn given_name_alone_does_not_use_display_name() {
    assert_names(
        json!({"resourceName": "people/c5", "names": [
            {"displayName": "Madonna Louise Ciccone", "givenName": "Madonna"}]}),
        "Madonna",
        "",
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

#[test]
fn a_person_read_from_its_raw_text_is_read_as_from_a_json_value() {
    let mut renamed = ada();
    renamed["metadata"]["previousResourceNames"] = json!(["people/c1", "people/c100"]);
    let people = [
        ada(),
        renamed,
        json!({"resourceName": "people/c5", "etag": "%Ep5",
            "metadata": {"sources": [{"type": "CONTACT", "etag": "#s5"}]},
            "names": "Broken Person", "emailAddresses": [{"value": 42}]}),
        json!({"resourceName": 7, "names": [{"givenName": ["x"]}]}),
        json!({"resourceName": "people/c6", "metadata": {"deleted": true}, "names": 1}),
        json!({"names": [{"givenName": "No", "familyName": "Name"}]}),
    ];
    for p in people {
        let raw = serde_json::value::to_raw_value(&p).unwrap();
        let (change, renamed) = super::super::map::decode_raw_person(&raw, Group::All);
        let expected = decode_person(&p, Group::All);
        assert_eq!(renamed, renames(&p, &expected), "{p}");
        assert_eq!(change, expected, "{p}");
    }
}
