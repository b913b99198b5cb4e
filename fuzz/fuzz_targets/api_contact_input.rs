//! `POST /api/v1/contacts` bodies: decoded and validated against an in-memory store;
//! validation errors always name a field.
#![no_main]

use contact_sync::crm::{plan_edit, ContactInput, CrmEdit, EditError};
use contact_sync::store::Db;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<ContactInput>(data) else {
        return;
    };
    let db = Db::in_memory(phonenumber::country::Id::US);
    match plan_edit(&db, CrmEdit::Create(input)) {
        Ok(p) => assert!(p.contact.is_some()),
        Err(EditError::Invalid { field, .. }) => assert!(!field.is_empty()),
        Err(e) => panic!("unexpected error: {e}"),
    }
});
