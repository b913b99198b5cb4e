//! The pure layers: wire types and the mapping, on recorded JSON fixtures.

use std::collections::BTreeSet;

use reqwest::StatusCode;

use super::*;
use crate::providers::graph::exec::ApiError;
use crate::providers::graph::read::dedupe;
use crate::providers::graph::wire::{error_codes, BatchResponses};
use crate::providers::graph::write::item_result;
use crate::providers::graph::{
    fields_to_contact, is_partial, map_contact, map_contact_with_base, parse_page, row_outcome,
    update_body, Dropped, GraphCursor, RowOutcome, WriteOp, WriteResult, DEFAULT_API_BASE,
};

#[test]
fn over_long_values_count_as_absent() {
    let long = "x".repeat(crate::providers::MAX_FIELD_BYTES + 1);
    let c = contact(json!({
        "id": "AAA1",
        "givenName": long,
        "surname": "Hopper",
        "emailAddresses": [{"address": format!("{long}@example.org")}, {"address": "g@example.org"}],
        "businessPhones": [long],
        "mobilePhone": "+1 202 555 0100",
        "homeAddress": {"street": long, "city": "Arlington"},
        "companyName": long,
    }));
    let pc = map_contact(&c, "f");
    assert_eq!(pc.fields.first_name, "");
    assert_eq!(pc.fields.last_name, "Hopper");
    assert_eq!(pc.fields.emails, vec!["g@example.org".to_string()]);
    assert_eq!(pc.fields.phones, vec!["+1 202 555 0100".to_string()]);
    let a = pc.fields.address.expect("city kept");
    assert_eq!((a.street, a.city.as_deref()), (None, Some("Arlington")));
    assert_eq!(pc.fields.organization, None);
}

#[test]
fn page_rows_are_read_without_requests() {
    let body = include_bytes!("fixtures/delta_page.json");
    let page = parse_page(body, true).expect("page");
    let out: Vec<RowOutcome> = page
        .value
        .into_iter()
        .map(|r| row_outcome(r, "f", DEFAULT_API_BASE).expect("row"))
        .collect();
    let RowOutcome::Ready(first) = &out[0] else {
        panic!("{:?}", out[0]);
    };
    assert!(matches!(&**first, Change::Upsert(c) if c.provider_id == "A1"));
    assert_eq!(
        out[1],
        RowOutcome::Ready(Box::new(Change::Deleted {
            provider_id: "A2".into()
        }))
    );
    assert_eq!(out[2], RowOutcome::Fetch("A3".into()));
    assert_eq!(out[3], RowOutcome::Skip);
    assert!(parse_page(br#"{"value": []}"#, true).is_err());
    assert!(row_outcome(json!(7), "f", DEFAULT_API_BASE).is_err());
}

#[test]
fn display_name_is_split_when_given_and_surname_are_empty() {
    let c = contact(json!({
        "id": "AAMk1", "givenName": "", "surname": null,
        "displayName": "Mary Ann  van Dyke",
        "emailAddresses": [], "businessPhones": [], "homePhones": [], "mobilePhone": null
    }));
    let p = map_contact(&c, "F");
    assert_eq!(p.fields.first_name, "Mary Ann van");
    assert_eq!(p.fields.last_name, "Dyke");

    let c = contact(json!({"id": "AAMk1", "displayName": "Cher"}));
    let p = map_contact(&c, "F");
    assert_eq!(
        (p.fields.first_name.as_str(), p.fields.last_name.as_str()),
        ("", "Cher")
    );

    // Given names win over the display name.
    let c =
        contact(json!({"id": "AAMk1", "givenName": "Garth", "surname": "", "displayName": "G F"}));
    let p = map_contact(&c, "F");
    assert_eq!(
        (p.fields.first_name.as_str(), p.fields.last_name.as_str()),
        ("Garth", "")
    );
}

#[test]
fn phones_come_from_business_home_and_mobile_in_that_order() {
    let c = contact(json!({
        "id": "AAMk2", "givenName": "Garth", "surname": "Fort",
        "businessPhones": ["+1 918 555 0101", " ", "+1 918 555 0102"],
        "homePhones": ["+1 425 555 0100"],
        "mobilePhone": "+1 206 555 0199",
        "emailAddresses": [
            {"name": "Garth", "address": "garth@contoso.com"},
            {"name": "empty", "address": ""},
            {"name": "Work", "address": "g.fort@fabrikam.com"}
        ]
    }));
    let p = map_contact(&c, "F");
    assert_eq!(
        p.fields.phones,
        vec![
            "+1 918 555 0101",
            "+1 918 555 0102",
            "+1 425 555 0100",
            "+1 206 555 0199"
        ]
    );
    assert_eq!(
        p.fields.emails,
        vec!["garth@contoso.com", "g.fort@fabrikam.com"]
    );
}

#[test]
fn emails_are_not_truncated() {
    let emails: Vec<Value> = (0..12)
        .map(|i| json!({"name": "x", "address": format!("x{i}@contoso.com")}))
        .collect();
    let c = contact(json!({"id": "AAMk3", "givenName": "X", "emailAddresses": emails}));
    assert_eq!(map_contact(&c, "F").fields.emails.len(), 12);
}

#[test]
fn home_address_is_preferred_over_business_address() {
    let c = contact(json!({
        "id": "AAMk4", "givenName": "Garth",
        "homeAddress": {"street": "123 Some street", "city": "Seattle", "state": "WA", "postalCode": "98121"},
        "businessAddress": {"street": "10 Contoso Way", "city": "Redmond", "state": "WA", "countryOrRegion": "USA", "postalCode": "98075"},
        "otherAddress": {}
    }));
    let a = map_contact(&c, "F").fields.address.expect("address");
    assert_eq!(a.street.as_deref(), Some("123 Some street"));
    assert_eq!(a.city.as_deref(), Some("Seattle"));
    assert_eq!(a.region.as_deref(), Some("WA"));
    assert_eq!(a.postal_code.as_deref(), Some("98121"));
    assert_eq!(a.country, None);
}

#[test]
fn business_address_is_used_when_home_address_is_empty_then_other_address() {
    let c = contact(json!({
        "id": "AAMk5", "givenName": "Garth",
        "homeAddress": {"street": "  ", "city": null},
        "businessAddress": {"street": "10 Contoso Way", "city": "Redmond", "state": "WA", "countryOrRegion": "USA", "postalCode": "98075"},
        "otherAddress": {"city": "Elsewhere"}
    }));
    let a = map_contact(&c, "F").fields.address.expect("address");
    assert_eq!(a.street.as_deref(), Some("10 Contoso Way"));
    assert_eq!(a.country.as_deref(), Some("USA"));
    assert_eq!(a.postal_code.as_deref(), Some("98075"));

    let c = contact(json!({
        "id": "AAMk5", "givenName": "Garth",
        "homeAddress": {}, "businessAddress": {}, "otherAddress": {"city": "Elsewhere"}
    }));
    let a = map_contact(&c, "F").fields.address.expect("address");
    assert_eq!(a.city.as_deref(), Some("Elsewhere"));

    let c = contact(
        json!({"id": "AAMk5", "givenName": "Garth", "homeAddress": {}, "businessAddress": {}, "otherAddress": {}}),
    );
    assert_eq!(map_contact(&c, "F").fields.address, None);
}

#[test]
fn birthday_in_year_1604_means_no_year_and_is_dropped() {
    let c = contact(json!({"id": "AAMk6", "givenName": "A", "birthday": "1604-07-22T00:00:00Z"}));
    assert_eq!(map_contact(&c, "F").fields.birthday, None);
}

#[test]
fn complete_birthday_is_kept_from_timestamp_or_date() {
    let c = contact(json!({"id": "AAMk7", "givenName": "A", "birthday": "1974-07-22T11:59:00Z"}));
    assert_eq!(
        map_contact(&c, "F").fields.birthday,
        NaiveDate::from_ymd_opt(1974, 7, 22)
    );
    let c = contact(json!({"id": "AAMk7", "givenName": "A", "birthday": "1974-07-22"}));
    assert_eq!(
        map_contact(&c, "F").fields.birthday,
        NaiveDate::from_ymd_opt(1974, 7, 22)
    );
    let c = contact(json!({"id": "AAMk7", "givenName": "A", "birthday": "garbage"}));
    assert_eq!(map_contact(&c, "F").fields.birthday, None);
}

#[test]
fn etag_scope_company_job_and_photo_url_are_mapped() {
    let mut row = full_row("AAMk8=", "Garth", "Fort");
    row["companyName"] = json!(" Contoso, Inc. ");
    row["jobTitle"] = json!("Web Marketing Manager");
    let p = map_contact_with_base(&contact(row), "FOLDER", "http://127.0.0.1:1/v1.0/");
    assert_eq!(p.provider_id, "AAMk8=");
    assert_eq!(p.scope, "FOLDER");
    assert_eq!(p.etag.as_deref(), Some("W/\"EQAAABYAAACAAMk8=\""));
    assert_eq!(p.fields.organization.as_deref(), Some("Contoso, Inc."));
    assert_eq!(p.fields.job_title.as_deref(), Some("Web Marketing Manager"));
    assert_eq!(
        p.photo_url.as_deref(),
        Some("http://127.0.0.1:1/v1.0/me/contacts/AAMk8%3D/photo/$value")
    );
    // Without @odata.etag the changeKey is the etag.
    let c = contact(json!({"id": "X", "changeKey": "CK1", "givenName": "A"}));
    assert_eq!(map_contact(&c, "F").etag.as_deref(), Some("CK1"));
}

#[test]
fn removed_row_and_partial_rows_are_recognised() {
    let removed = json!({"@odata.type": "#microsoft.graph.contact", "id": "AAMk9", "@removed": {"reason": "deleted"}});
    assert!(contact(removed).removed.is_some());
    let full = full_row("AAMk9", "A", "B");
    assert!(!is_partial(full.as_object().unwrap()));
    let partial = json!({"id": "AAMk9", "jobTitle": "CTO", "parentFolderId": "P"});
    assert!(is_partial(partial.as_object().unwrap()));
    let no_phones = json!({"id": "AAMk9", "givenName": "A", "emailAddresses": []});
    assert!(is_partial(no_phones.as_object().unwrap()));
}

#[test]
fn delta_row_missing_any_selected_property_is_partial_and_null_is_not_missing() {
    // The row of the report: names, email and phone present, first name, address,
    // company and birthday not sent.
    let mut row = full_row("AAMk9", "Ada", "Lovelace");
    let m = row.as_object_mut().unwrap();
    for k in ["givenName", "homeAddress", "companyName", "birthday"] {
        let mut one = full_row("AAMk9", "Ada", "Lovelace");
        one.as_object_mut().unwrap().remove(k);
        assert!(is_partial(one.as_object().unwrap()), "{k} missing");
        m.remove(k);
    }
    assert!(is_partial(m));
    assert_eq!(
        row_outcome(row, "f", DEFAULT_API_BASE).unwrap(),
        RowOutcome::Fetch("AAMk9".into())
    );
    // Every selected property present, some of them null or empty: complete, and cleared.
    let nulls = full_row("AAMk9", "Ada", "Lovelace");
    assert!(!is_partial(nulls.as_object().unwrap()));
    let RowOutcome::Ready(c) = row_outcome(nulls, "f", DEFAULT_API_BASE).unwrap() else {
        panic!("a complete row is mapped without a fetch");
    };
    let Change::Upsert(pc) = *c else {
        panic!("an upsert")
    };
    assert_eq!(pc.fields.organization, None);
    assert_eq!(pc.fields.birthday, None);
    assert_eq!(pc.fields.address, None);
}

#[tokio::test]
async fn removed_row_in_a_page_becomes_a_deletion() {
    // No row needs a fetch, so no request is made.
    let client = offline_client();
    let rows = vec![
        json!({"@odata.type": "#microsoft.graph.contact", "id": "AAMk9", "@removed": {"reason": "changed"}}),
        full_row("AAMk10", "A", "B"),
    ];
    let changes = client.page_changes("F", rows).await.unwrap();
    assert_eq!(
        changes[0],
        Change::Deleted {
            provider_id: "AAMk9".into()
        }
    );
    assert!(
        matches!(&changes[1], Change::Upsert(p) if p.provider_id == "AAMk10" && p.scope == "F")
    );
}

#[test]
fn a_move_between_folders_is_not_a_deletion_but_a_removal_in_the_same_folder_is() {
    let up = |id: &str, scope: &str| {
        (
            scope.to_string(),
            Change::Upsert(map_contact(&contact(full_row(id, "A", "B")), scope)),
        )
    };
    let del = |id: &str, scope: &str| {
        (
            scope.to_string(),
            Change::Deleted {
                provider_id: id.into(),
            },
        )
    };
    let out = dedupe(vec![
        up("m", "B"),
        del("x", "B"),
        del("m", "A"), // m moved from A to B, B listed first
        up("x", "A"),  // x moved from B to A, B listed first
        up("y", "A"),
        up("y", "B"), // replay: the last wins
        up("z", "A"),
        del("z", "A"), // listed, then deleted while paging
    ]);
    let ids: Vec<(&str, bool)> = out
        .iter()
        .map(|c| (c.provider_id(), matches!(c, Change::Upsert(_))))
        .collect();
    assert_eq!(
        ids,
        vec![("m", true), ("x", true), ("y", true), ("z", false)]
    );
    assert!(matches!(&out[2], Change::Upsert(p) if p.scope == "B"));
}

#[test]
fn cursor_round_trips_and_garbage_is_rejected() {
    let mut c = GraphCursor::default();
    c.folders
        .insert("F1".into(), "https://x/delta?$deltatoken=1".into());
    assert_eq!(GraphCursor::decode(&c.encode()), Some(c));
    assert_eq!(GraphCursor::decode(b"\x00\x01"), None);
}

#[test]
fn error_codes_are_found_nested_and_compared_case_insensitively() {
    let body = br#"{"error":{"code":"BadRequest","message":"m","innerError":{"code":"syncStateNotFound"}}}"#;
    let e = ApiError {
        status: StatusCode::BAD_REQUEST,
        codes: error_codes(body),
    };
    assert_eq!(e.codes[0], "BadRequest");
    assert!(e.sync_state_lost());
    let e = ApiError {
        status: StatusCode::BAD_REQUEST,
        codes: error_codes(br#"{"error":{"code":"RESYNCREQUIRED"}}"#),
    };
    assert!(e.sync_state_lost());
    let e = ApiError {
        status: StatusCode::NOT_FOUND,
        codes: error_codes(b"<html>not found</html>"),
    };
    assert!(
        !e.item_not_found(),
        "a bare 404 is not proof a folder is gone"
    );
}

#[test]
fn fields_to_contact_keeps_graph_multi_value_limits_and_reports_dropped_values() {
    let (body, dropped) = fields_to_contact(&sample_fields(5, 7));
    assert_eq!(body["emailAddresses"].as_array().unwrap().len(), 3);
    assert_eq!(body["businessPhones"].as_array().unwrap().len(), 2);
    assert_eq!(body["homePhones"].as_array().unwrap().len(), 2);
    assert_eq!(body["mobilePhone"], json!("+1 918 555 0104"));
    assert_eq!(dropped.emails, vec!["g3@contoso.com", "g4@contoso.com"]);
    assert_eq!(dropped.phones, vec!["+1 918 555 0105", "+1 918 555 0106"]);
    assert_eq!(body["displayName"], json!("Garth Fort"));
    assert_eq!(body["birthday"], json!("1974-07-22T12:00:00Z"));

    let (_, dropped) = fields_to_contact(&sample_fields(3, 5));
    assert!(dropped.is_empty());
}

#[test]
fn fields_within_limits_survive_a_round_trip_through_the_graph_shape() {
    let f = sample_fields(3, 5);
    let (mut body, _) = fields_to_contact(&f);
    body["id"] = json!("AAMkNEW");
    let back = map_contact(&contact(body), "F");
    assert_eq!(back.fields, f);
}

#[test]
fn update_body_holds_only_the_changed_fields() {
    use crate::model::field;
    let (body, dropped) = update_body(&sample_fields(4, 1), &[field::JOB_TITLE, field::PHONES]);
    let keys: BTreeSet<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["jobTitle", "businessPhones", "homePhones", "mobilePhone"])
    );
    assert!(
        dropped.emails.is_empty(),
        "emails were not written, so none were dropped"
    );
    let (body, dropped) = update_body(&sample_fields(4, 1), &[field::EMAILS, field::ADDRESS]);
    assert_eq!(dropped.emails, vec!["g3@contoso.com"]);
    assert_eq!(body["homeAddress"]["postalCode"], json!("98121"));
}

#[test]
fn batch_parts_are_read_by_id_with_their_status_retry_after_and_etag() {
    let batch: BatchResponses =
        serde_json::from_str(include_str!("fixtures/batch_response.json")).expect("batch");
    let part = |id: &str| batch.responses.iter().find(|r| r.id == id).expect("part");
    assert_eq!(
        part("1").retry_after(),
        Some(std::time::Duration::from_millis(500))
    );
    assert_eq!(part("0").etag().as_deref(), Some("W/\"EQAAABYAAACnew\""));
    let create = WriteOp::Create {
        fields: sample_fields(1, 1),
    };
    let update = WriteOp::Update {
        id: "AAMk1=".into(),
        etag: Some("W/\"old\"".into()),
        fields: sample_fields(1, 1),
        changed: vec!["job_title".into()],
    };
    assert_eq!(
        item_result(&create, part("0"), &Dropped::default()),
        WriteResult::Created {
            id: "AAMkNEW=".into(),
            etag: Some("W/\"EQAAABYAAACnew\"".into()),
            dropped: Dropped::default(),
            folder: Some("AAMkAGI2AAEOAAA=".into()),
        }
    );
    assert_eq!(
        item_result(&update, part("2"), &Dropped::default()),
        WriteResult::Conflict
    );
    assert_eq!(
        item_result(
            &WriteOp::Delete {
                id: "AAMk1=".into()
            },
            part("3"),
            &Dropped::default()
        ),
        WriteResult::Deleted
    );
}
