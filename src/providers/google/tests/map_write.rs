//! CRM fields to People API persons and update masks (SPEC §3 in reverse).

use serde_json::json;

use super::*;
use crate::model::Fields;

/// CRM fields with every synced field set (a recorded fixture).
fn full_fields() -> Fields {
    serde_json::from_str(include_str!("fixtures/ada_fields.json")).expect("fixture")
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
