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

/// The person fields `updatePersonFields` / `updateMask` accepts.
pub const UPDATABLE_PERSON_FIELDS: &[&str] = &[
    "addresses",
    "biographies",
    "birthdays",
    "calendarUrls",
    "clientData",
    "emailAddresses",
    "events",
    "externalIds",
    "genders",
    "imClients",
    "interests",
    "locales",
    "locations",
    "memberships",
    "miscKeywords",
    "names",
    "nicknames",
    "occupations",
    "organizations",
    "phoneNumbers",
    "relations",
    "sipAddresses",
    "urls",
    "userDefined",
];

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

/// `ListConnectionsResponse`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ListConnectionsJson {
    /// Decoded person by person ([`super::decode_person`]): one unreadable person does not make
    /// the page unreadable.
    pub connections: Vec<serde_json::Value>,
    pub next_page_token: Option<String>,
    pub next_sync_token: Option<String>,
    pub total_items: Option<u64>,
    pub total_people: Option<u64>,
}

/// `Person`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PersonJson {
    pub resource_name: String,
    pub etag: Option<String>,
    pub metadata: Option<PersonMetadataJson>,
    pub names: Vec<NameJson>,
    pub email_addresses: Vec<ValueJson>,
    pub phone_numbers: Vec<ValueJson>,
    pub addresses: Vec<AddressJson>,
    pub organizations: Vec<OrganizationJson>,
    pub birthdays: Vec<BirthdayJson>,
    pub photos: Vec<PhotoJson>,
    pub memberships: Vec<MembershipJson>,
}

/// `PersonMetadata`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PersonMetadataJson {
    pub deleted: Option<bool>,
    pub sources: Vec<SourceJson>,
    /// Former resource names (only in listings made with a sync token).
    pub previous_resource_names: Vec<String>,
}

/// `Source` (as found in `PersonMetadata.sources`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SourceJson {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub id: Option<String>,
    pub etag: Option<String>,
}

/// `FieldMetadata`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FieldMetadataJson {
    pub primary: Option<bool>,
}

/// `Name`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NameJson {
    pub metadata: Option<FieldMetadataJson>,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
}

/// `EmailAddress` and `PhoneNumber` (we read only the value).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ValueJson {
    pub metadata: Option<FieldMetadataJson>,
    pub value: Option<String>,
}

/// `Address`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AddressJson {
    pub metadata: Option<FieldMetadataJson>,
    pub street_address: Option<String>,
    pub city: Option<String>,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
    pub country_code: Option<String>,
}

/// `Organization`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct OrganizationJson {
    pub metadata: Option<FieldMetadataJson>,
    pub name: Option<String>,
    pub title: Option<String>,
}

/// `Birthday`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct BirthdayJson {
    pub metadata: Option<FieldMetadataJson>,
    pub date: Option<DateJson>,
}

/// `Date`: a partial date; 0 (or absence) means "not given".
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DateJson {
    pub year: Option<i64>,
    pub month: Option<i64>,
    pub day: Option<i64>,
}

/// `Photo`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PhotoJson {
    pub url: Option<String>,
    pub default: Option<bool>,
}

/// `Membership`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MembershipJson {
    pub contact_group_membership: Option<ContactGroupMembershipJson>,
}

/// `ContactGroupMembership`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContactGroupMembershipJson {
    pub contact_group_id: Option<String>,
    pub contact_group_resource_name: Option<String>,
}

/// `{"error": Status}` as Google sends it on failures.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ErrorEnvelope {
    pub error: Option<ApiError>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ApiError {
    pub code: Option<i64>,
    pub message: Option<String>,
    pub status: Option<String>,
    pub details: Vec<serde_json::Value>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PersonResponseJson {
    pub person: Option<PersonJson>,
    pub status: Option<ApiError>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct BatchCreateResponseJson {
    pub created_people: Vec<PersonResponseJson>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct BatchUpdateResponseJson {
    pub update_result: std::collections::HashMap<String, PersonResponseJson>,
}

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
    }
}
