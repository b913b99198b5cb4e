//! People API payloads: a connections page or a single person, decoded and mapped.
#![no_main]

use contact_sync::config::Group;
use contact_sync::providers::google::{map_person, Cursor, ListConnectionsJson, PersonJson};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = serde_json::from_slice::<PersonJson>(data) {
        let _ = map_person(&p, Group::All);
        let _ = map_person(&p, Group::Starred);
    }
    if let Ok(page) = serde_json::from_slice::<ListConnectionsJson>(data) {
        for p in &page.connections {
            let _ = map_person(p, Group::All);
        }
    }
    let _ = Cursor::decode(data);
});
