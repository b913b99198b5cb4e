//! The data model: CRM contacts and companies as stored and served, the canonical provider
//! contact both providers map into, and the per-link records that make sync idempotent.
//!
//! Key concepts:
//! - A **CRM contact** ([`Contact`]) is the CRM's record. It carries its own [`LinkRef`]s,
//!   so "does another account still link it" is answered from the record itself.
//! - A **provider contact** ([`ProviderContact`]) is what Google or Graph sent, mapped to
//!   the CRM's fields (SPEC §3) but not yet checked for eligibility.
//! - A **link** ([`LinkRecord`]) ties `(account, provider id)` to a CRM contact; its
//!   **base** ([`Fields`]) is the value both sides agreed on at the last sync of that link,
//!   the reference point of the three-way merge (SPEC §4).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

pub type ContactId = u64;
pub type CompanyId = u64;

/// A postal address. Every part is optional; an address with no part is no address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Address {
    pub street: Option<String>,
    pub city: Option<String>,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
}

impl Address {
    pub fn is_empty(&self) -> bool {
        [
            &self.street,
            &self.city,
            &self.region,
            &self.postal_code,
            &self.country,
        ]
        .iter()
        .all(|p| p.as_deref().is_none_or(|s| s.trim().is_empty()))
    }

    /// `None` for an empty address, so "no address" has one representation.
    pub fn non_empty(self) -> Option<Address> {
        let clean = |p: Option<String>| p.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let a = Address {
            street: clean(self.street),
            city: clean(self.city),
            region: clean(self.region),
            postal_code: clean(self.postal_code),
            country: clean(self.country),
        };
        (!a.is_empty()).then_some(a)
    }
}

/// One provider link of a CRM contact.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LinkRef {
    pub account: String,
    pub provider_id: String,
}

/// A CRM contact as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub id: ContactId,
    pub first_name: String,
    pub last_name: String,
    pub emails: Vec<String>,
    pub phones: Vec<String>,
    pub address: Option<Address>,
    pub company_id: Option<CompanyId>,
    pub job_title: Option<String>,
    pub birthday: Option<NaiveDate>,
    pub has_photo: bool,
    pub links: Vec<LinkRef>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A CRM company; contacts link to one by id. One company per normalised name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Company {
    pub id: CompanyId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// The synced fields of a contact, in CRM terms, with the organisation by name. Used for
/// base snapshots and as the value the merge works on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fields {
    pub first_name: String,
    pub last_name: String,
    pub emails: Vec<String>,
    pub phones: Vec<String>,
    pub address: Option<Address>,
    pub organization: Option<String>,
    pub job_title: Option<String>,
    pub birthday: Option<NaiveDate>,
}

impl Fields {
    /// A CRM contact's synced fields, given its company's name.
    pub fn of(c: &Contact, organization: Option<String>) -> Fields {
        Fields {
            first_name: c.first_name.clone(),
            last_name: c.last_name.clone(),
            emails: c.emails.clone(),
            phones: c.phones.clone(),
            address: c.address.clone(),
            organization,
            job_title: c.job_title.clone(),
            birthday: c.birthday,
        }
    }

    /// "First Last", or whichever part there is; "(no name)" when there is none.
    pub fn display_name(&self) -> String {
        let name = format!("{} {}", self.first_name.trim(), self.last_name.trim());
        let name = name.trim();
        if name.is_empty() {
            "(no name)".into()
        } else {
            name.to_string()
        }
    }
}

/// Names of the synced fields, as they appear in audit events.
pub mod field {
    pub const NAME: &str = "name";
    pub const EMAILS: &str = "emails";
    pub const PHONES: &str = "phones";
    pub const ADDRESS: &str = "address";
    pub const COMPANY: &str = "company";
    pub const JOB_TITLE: &str = "job_title";
    pub const BIRTHDAY: &str = "birthday";
    pub const PHOTO: &str = "photo";

    /// Every synced field name.
    pub const ALL: [&str; 8] = [
        NAME, EMAILS, PHONES, ADDRESS, COMPANY, JOB_TITLE, BIRTHDAY, PHOTO,
    ];

    /// The static name of a field, for names read back from the store.
    pub fn canonical(name: &str) -> Option<&'static str> {
        ALL.iter().find(|f| **f == name).copied()
    }
}

/// A contact as a provider sent it, mapped to CRM fields (SPEC §3), before eligibility.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderContact {
    /// Google `people/c123`, a Graph contact id.
    pub provider_id: String,
    pub etag: Option<String>,
    /// The part of the account the contact was listed in: a Graph contact folder id; empty
    /// for Google. Full listings and vanished folders are accounted per scope.
    pub scope: String,
    pub fields: Fields,
    /// Where the photo can be fetched, when the contact has one that is not a default.
    pub photo_url: Option<String>,
}

/// One change in a provider page.
#[allow(clippy::large_enum_variant)] // Upserts are the common case; boxing them buys nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Created or changed in the provider.
    Upsert(ProviderContact),
    /// Deleted in the provider.
    Deleted { provider_id: String },
    /// Still in the provider, but no longer in the synced set (left the group).
    Left { provider_id: String },
    /// A contact the provider sent in a shape that cannot be read. It is skipped (reason
    /// `unreadable`), counted and audited once per `version` (its etag, else a hash of what
    /// was sent); its link, if any, is left alone. `provider_id` is its resource name when
    /// that could be read, else `unreadable:<hash>`.
    Unreadable {
        provider_id: String,
        version: String,
        error: String,
    },
    /// The provider gave a contact a new id (Google `previousResourceNames`): its link and
    /// base move from `from` to `to`, nothing is deleted or created. Comes before the
    /// contact's upsert under its new id.
    Renamed { from: String, to: String },
    /// In the provider, but its data could not be read (a CardDAV card that does not
    /// parse as a vCard): skipped with reason `unparseable`, nothing written or deleted.
    Unparseable {
        provider_id: String,
        etag: Option<String>,
    },
}

impl Change {
    pub fn provider_id(&self) -> &str {
        match self {
            Change::Upsert(c) => &c.provider_id,
            Change::Deleted { provider_id }
            | Change::Left { provider_id }
            | Change::Unreadable { provider_id, .. } => provider_id,
            Change::Renamed { from, .. } => from,
            Change::Unparseable { provider_id, .. } => provider_id,
        }
    }
}

/// The link between one provider contact and a CRM contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub contact_id: ContactId,
    /// The provider's etag when we last saw or wrote the contact.
    pub etag: Option<String>,
    /// Scope (Graph folder) the contact was last listed in; empty for Google. A full
    /// listing of a scope finds deletions among the links of that scope.
    pub scope: String,
}

/// Skip reasons of SPEC §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    NoName,
    NoEmailOrPhone,
    TooManyEmails,
    TooManyPhones,
    /// The provider sent a contact that does not fit its own schema (a string where a list
    /// belongs, a number where a string belongs); it is left out, the rest of its page syncs.
    Unreadable,
    /// The provider's data could not be parsed (a CardDAV card that is no valid vCard).
    Unparseable,
}

impl SkipReason {
    pub const ALL: [SkipReason; 6] = [
        SkipReason::NoName,
        SkipReason::NoEmailOrPhone,
        SkipReason::TooManyEmails,
        SkipReason::TooManyPhones,
        SkipReason::Unreadable,
        SkipReason::Unparseable,
    ];
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::NoName => "no_name",
            SkipReason::NoEmailOrPhone => "no_email_or_phone",
            SkipReason::TooManyEmails => "too_many_emails",
            SkipReason::TooManyPhones => "too_many_phones",
            SkipReason::Unreadable => "unreadable",
            SkipReason::Unparseable => "unparseable",
        }
    }
}

/// The state of an account, as shown in status and the API (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    Starting,
    Syncing,
    Idle,
    Stopped,
    LimitExceeded,
    ReauthRequired,
    NotConnected,
    DeletionHeld,
    Error,
}

impl AccountState {
    pub fn as_str(&self) -> &'static str {
        match self {
            AccountState::Starting => "starting",
            AccountState::Syncing => "syncing",
            AccountState::Idle => "idle",
            AccountState::Stopped => "stopped",
            AccountState::LimitExceeded => "limit_exceeded",
            AccountState::ReauthRequired => "reauth_required",
            AccountState::NotConnected => "not_connected",
            AccountState::DeletionHeld => "deletion_held",
            AccountState::Error => "error",
        }
    }
}

/// Persisted per-account status: what `status` and `/api/v1/accounts` show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountStatus {
    pub state: AccountState,
    pub last_sync: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Progress of a running sync: pages and contacts fetched so far.
    pub progress: Option<Progress>,
}

impl Default for AccountStatus {
    fn default() -> Self {
        AccountStatus {
            state: AccountState::Starting,
            last_sync: None,
            last_error: None,
            progress: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub pages: u64,
    pub contacts: u64,
    /// Total announced by the provider, when it does (Google's `totalItems`).
    pub total: Option<u64>,
}

/// One day's counters for one account (SPEC §6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayMetrics {
    pub added_to_crm: u64,
    pub added_to_provider: u64,
    pub updated_in_crm: u64,
    pub updated_in_provider: u64,
    pub deleted_from_provider: u64,
    pub skipped: std::collections::BTreeMap<SkipReason, u64>,
    pub conflicts: u64,
    pub unlinked: u64,
}

impl DayMetrics {
    pub fn add(&mut self, o: &DayMetrics) {
        self.added_to_crm += o.added_to_crm;
        self.added_to_provider += o.added_to_provider;
        self.updated_in_crm += o.updated_in_crm;
        self.updated_in_provider += o.updated_in_provider;
        self.deleted_from_provider += o.deleted_from_provider;
        for (k, v) in &o.skipped {
            *self.skipped.entry(*k).or_default() += v;
        }
        self.conflicts += o.conflicts;
        self.unlinked += o.unlinked;
    }
    pub fn is_zero(&self) -> bool {
        *self == DayMetrics::default()
    }
}
