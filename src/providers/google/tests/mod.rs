//! Unit tests of the pure layers on recorded fixtures (People API JSON as Google sends
//! it). The client's HTTP behaviour is tested against the simulator in
//! `tests/google_http/`.

mod map_read;
mod map_write;

use super::*;
use crate::model::ProviderContact;

/// A recorded fixture of `fixtures/`.
fn fixture(name: &str) -> serde_json::Value {
    let text = match name {
        "ada" => include_str!("fixtures/ada.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(text).expect("fixture is JSON")
}

fn person(v: serde_json::Value) -> PersonJson {
    serde_json::from_value(v).expect("fixture parses")
}

fn upsert(c: Change) -> ProviderContact {
    match c {
        Change::Upsert(p) => p,
        other => panic!("expected an upsert, got {other:?}"),
    }
}

/// A contact as `people.connections.list` returns it, with two names (primary second),
/// two addresses (primary second), a default photo before a real one.
fn ada() -> serde_json::Value {
    fixture("ada")
}
