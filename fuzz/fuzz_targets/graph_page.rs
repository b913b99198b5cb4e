//! Microsoft Graph delta pages: decoded, then every row read and mapped.
#![no_main]

use contact_sync::providers::outlook::{
    map_contact, parse_page, row_outcome, GraphContact, GraphCursor,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for delta in [true, false] {
        if let Ok(page) = parse_page(data, delta) {
            for row in page.value {
                let _ = row_outcome(row, "folder", "https://graph.example/v1.0");
            }
        }
    }
    if let Ok(c) = serde_json::from_slice::<GraphContact>(data) {
        let _ = map_contact(&c, "folder");
    }
    let _ = GraphCursor::decode(data);
});
