//! The People API on the wire: the subset of its schema we read and write, as Google sends
//! it (unknown fields are ignored, every field may be missing), and the API's limits and
//! names. The simulator (`src/sim/google.rs`) uses these constants too, so the two cannot
//! drift apart.

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

/// The person fields a sync reads; identical on every call of a token chain.
pub const PERSON_FIELDS: &str =
    "names,emailAddresses,phoneNumbers,addresses,organizations,birthdays,photos,memberships,metadata";
/// Largest page Google serves.
pub const PAGE_SIZE: u32 = 1000;
/// Resource name of the starred group.
pub const STARRED_GROUP: &str = "contactGroups/starred";
/// Most contacts per `batchCreateContacts` / `batchUpdateContacts` call.
pub const MAX_BATCH_WRITE: usize = 200;
/// Most resource names per `batchDeleteContacts` call.
pub const MAX_BATCH_DELETE: usize = 500;
/// How long a sync token stays valid after the full listing that began its chain.
pub const SYNC_TOKEN_LIFETIME: chrono::Duration = chrono::Duration::days(7);

/// Every person field `personFields` / `readMask` accepts (discovery document, v1).
pub const ALL_PERSON_FIELDS: &[&str] = &[
    "addresses",
    "ageRanges",
    "biographies",
    "birthdays",
    "calendarUrls",
    "clientData",
    "coverPhotos",
    "emailAddresses",
    "events",
    "externalIds",
    "genders",
    "imClients",
    "interests",
    "locales",
    "locations",
    "memberships",
    "metadata",
    "miscKeywords",
    "names",
    "nicknames",
    "occupations",
    "organizations",
    "phoneNumbers",
    "photos",
    "relations",
    "sipAddresses",
    "skills",
    "urls",
    "userDefined",
];

/// The person fields no update can set (output only).
pub const READ_ONLY_PERSON_FIELDS: &[&str] =
    &["ageRanges", "coverPhotos", "metadata", "photos", "skills"];

/// The person fields `updatePersonFields` / `updateMask` accepts: all but the read-only
/// ones.
pub static UPDATABLE_PERSON_FIELDS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| {
        ALL_PERSON_FIELDS
            .iter()
            .copied()
            .filter(|f| !READ_ONLY_PERSON_FIELDS.contains(f))
            .collect()
    });

/// The person fields CRM fields map to, in the order an update mask lists them.
pub const MAPPED_PERSON_FIELDS: &[&str] = &[
    "names",
    "emailAddresses",
    "phoneNumbers",
    "addresses",
    "organizations",
    "birthdays",
];
/// The group every contact we create joins.
pub const MY_CONTACTS_GROUP: &str = "contactGroups/myContacts";

/// Declares People API schema types as Google sends them: every field may be missing
/// (`#[serde(default)]`), names are camelCase, unknown fields are ignored.
macro_rules! schema {
    ($($(#[$doc:meta])* $name:ident { $($(#[$attr:meta])* $field:ident: $ty:ty,)* })*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        #[serde(default, rename_all = "camelCase")]
        pub struct $name {
            $($(#[$attr])* pub $field: $ty,)*
        }
    )*};
}

schema! {
    /// `ListConnectionsResponse`.
    ListConnectionsJson {
        /// Kept as raw JSON text and decoded person by person ([`super::decode_raw_person`]):
        /// one unreadable person does not make the page unreadable, and a readable one is
        /// parsed once, straight into [`PersonJson`].
        connections: Vec<Box<serde_json::value::RawValue>>,
        next_page_token: Option<String>,
        next_sync_token: Option<String>,
        total_items: Option<u64>,
        total_people: Option<u64>,
    }

    /// `Person`.
    PersonJson {
        resource_name: String,
        etag: Option<String>,
        metadata: Option<PersonMetadataJson>,
        names: Vec<NameJson>,
        email_addresses: Vec<ValueJson>,
        phone_numbers: Vec<ValueJson>,
        addresses: Vec<AddressJson>,
        organizations: Vec<OrganizationJson>,
        birthdays: Vec<BirthdayJson>,
        photos: Vec<PhotoJson>,
        memberships: Vec<MembershipJson>,
    }

    /// `PersonMetadata`.
    PersonMetadataJson {
        deleted: Option<bool>,
        sources: Vec<SourceJson>,
        /// Former resource names (only in listings made with a sync token).
        previous_resource_names: Vec<String>,
    }

    /// `Source` (as found in `PersonMetadata.sources`).
    SourceJson {
        #[serde(rename = "type")]
        kind: Option<String>,
        id: Option<String>,
        etag: Option<String>,
    }

    /// `FieldMetadata`.
    FieldMetadataJson {
        primary: Option<bool>,
    }

    /// `Name`.
    NameJson {
        metadata: Option<FieldMetadataJson>,
        display_name: Option<String>,
        given_name: Option<String>,
        family_name: Option<String>,
    }

    /// `EmailAddress` and `PhoneNumber` (we read only the value).
    ValueJson {
        metadata: Option<FieldMetadataJson>,
        value: Option<String>,
    }

    /// `Address`.
    AddressJson {
        metadata: Option<FieldMetadataJson>,
        street_address: Option<String>,
        city: Option<String>,
        region: Option<String>,
        postal_code: Option<String>,
        country: Option<String>,
        country_code: Option<String>,
    }

    /// `Organization`.
    OrganizationJson {
        metadata: Option<FieldMetadataJson>,
        name: Option<String>,
        title: Option<String>,
    }

    /// `Birthday`.
    BirthdayJson {
        metadata: Option<FieldMetadataJson>,
        date: Option<DateJson>,
    }

    /// `Date`: a partial date; 0 (or absence) means "not given".
    DateJson {
        year: Option<i64>,
        month: Option<i64>,
        day: Option<i64>,
    }

    /// `Photo`.
    PhotoJson {
        url: Option<String>,
        default: Option<bool>,
    }

    /// `Membership`.
    MembershipJson {
        contact_group_membership: Option<ContactGroupMembershipJson>,
    }

    /// `ContactGroupMembership`.
    ContactGroupMembershipJson {
        contact_group_id: Option<String>,
        contact_group_resource_name: Option<String>,
    }

    /// `{"error": Status}` as Google sends it on failures.
    ErrorEnvelope {
        error: Option<ApiError>,
    }

    ApiError {
        code: Option<i64>,
        message: Option<String>,
        status: Option<String>,
        details: Vec<serde_json::Value>,
    }

    PersonResponseJson {
        person: Option<PersonJson>,
        status: Option<ApiError>,
    }

    BatchCreateResponseJson {
        created_people: Vec<PersonResponseJson>,
    }

    BatchUpdateResponseJson {
        update_result: std::collections::HashMap<String, PersonResponseJson>,
    }
}

impl ApiError {
    /// The `ErrorInfo` reasons among the details.
    pub fn has_reason(&self, reason: &str) -> bool {
        self.details
            .iter()
            .any(|d| d.get("reason").and_then(|r| r.as_str()) == Some(reason))
    }

    pub fn describe(&self, http: StatusCode) -> String {
        if self.message.is_none() && self.status.is_none() && self.code.is_none() {
            return format!(
                "Google People API answered HTTP {http} with an error body that could not be read (cut off or not Google's error JSON)."
            );
        }
        let msg: String = self
            .message
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect();
        let status = self.status.as_deref().unwrap_or("");
        let code = self
            .code
            .map(|c| format!(" (code {c})"))
            .unwrap_or_default();
        format!("Google People API answered HTTP {http} {status}{code}: {msg}")
    }
}

/// Photo downloads in flight at once (Google's photo CDN; see `GoogleClient::fetch_photos`).
pub const PHOTO_CONCURRENCY: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_the_client_reads_and_writes_are_fields_the_api_accepts() {
        for f in PERSON_FIELDS.split(',') {
            assert!(ALL_PERSON_FIELDS.contains(&f), "{f}");
        }
        for f in MAPPED_PERSON_FIELDS {
            assert!(UPDATABLE_PERSON_FIELDS.contains(f), "{f}");
            assert!(PERSON_FIELDS.split(',').any(|p| p == *f), "{f}");
        }
        assert!(crate::providers::google::FULL_SYNC_MAX_AGE < SYNC_TOKEN_LIFETIME);
        // `updatePersonFields` in the discovery document (people.v1.json).
        assert_eq!(UPDATABLE_PERSON_FIELDS.len(), 24);
        for f in ["memberships", "userDefined", "names", "sipAddresses"] {
            assert!(UPDATABLE_PERSON_FIELDS.contains(&f), "{f}");
        }
    }
}
