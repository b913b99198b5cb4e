//! The serde types of Microsoft Graph's contact API, exactly as Graph sends them, and the
//! wire constants the client and the simulator (`crate::sim::graph`) share.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::providers::http::retry_after;

/// The page size the client asks for (`Prefer: odata.maxpagesize`).
macro_rules! page_size {
    () => {
        200
    };
}

/// Declares the selected contact properties as a list and as a `$select` value.
macro_rules! select {
    ($first:literal $(, $rest:literal)* $(,)?) => {
        /// Contact properties requested from delta and get-by-id (`$select`).
        pub const SELECT_PROPERTIES: &[&str] = &[$first $(, $rest)*];
        /// [`SELECT_PROPERTIES`] as a `$select` value.
        pub const SELECT: &str = concat!($first $(, ",", $rest)*);
    };
}

select!(
    "id",
    "givenName",
    "surname",
    "displayName",
    "emailAddresses",
    "businessPhones",
    "homePhones",
    "mobilePhone",
    "homeAddress",
    "businessAddress",
    "otherAddress",
    "companyName",
    "jobTitle",
    "birthday",
    "parentFolderId",
    "changeKey",
);

/// The page size the client asks for.
pub const PAGE_SIZE: usize = page_size!();

/// The `Prefer` header sent on every request: [`PAGE_SIZE`] rows a page, immutable ids.
pub const PREFER: &str = concat!(
    "odata.maxpagesize=",
    page_size!(),
    ", IdType=\"ImmutableId\""
);

/// The page size Graph uses when the request names none.
pub const DEFAULT_PAGE_SIZE: usize = 10;

/// The largest page (`$top`, `odata.maxpagesize`) Graph serves for contacts.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Most requests in one `$batch`.
pub const MAX_BATCH: usize = 20;

pub const FOLDER_SELECT: &str = "id,displayName,parentFolderId";

/// PidLidHasPicture (property set PSETID_Address, long id 0x8015, Boolean) as a Graph
/// single-value extended property: TRUE when the contact has a photo attachment.
pub const HAS_PICTURE: &str = "Boolean {00062004-0000-0000-C000-000000000046} Id 0x8015";

/// Page size of the photo-id listing (a non-delta list accepts `$top`; delta does not).
pub const PHOTO_LIST_TOP: usize = 999;
const _: () = assert!(PHOTO_LIST_TOP <= MAX_PAGE_SIZE && PAGE_SIZE <= MAX_PAGE_SIZE);

/// Graph's multi-value limits on write (reference §2.2).
pub const MAX_EMAILS: usize = 3;
pub const MAX_BUSINESS_PHONES: usize = 2;
pub const MAX_HOME_PHONES: usize = 2;

/// The public Graph v1.0 endpoint.
pub const DEFAULT_API_BASE: &str = "https://graph.microsoft.com/v1.0";

// ---------------------------------------------------------------------------------------
// Wire structs and the mapping (pure)
// ---------------------------------------------------------------------------------------

/// A Graph `emailAddress`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GraphEmail {
    pub name: Option<String>,
    pub address: Option<String>,
}

/// A Graph `physicalAddress` (an empty one arrives as `{}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GraphAddress {
    pub street: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postal_code: Option<String>,
    pub country_or_region: Option<String>,
}

/// A Graph contact as delta or get-by-id sends it; every property may be missing or null.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GraphContact {
    /// Graph's id of the contact: our provider id.
    pub id: String,
    #[serde(rename = "@odata.etag")]
    pub odata_etag: Option<String>,
    pub change_key: Option<String>,
    pub parent_folder_id: Option<String>,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    /// At most [`MAX_EMAILS`].
    pub email_addresses: Option<Vec<Option<GraphEmail>>>,
    /// At most [`MAX_BUSINESS_PHONES`].
    pub business_phones: Option<Vec<Option<String>>>,
    /// At most [`MAX_HOME_PHONES`].
    pub home_phones: Option<Vec<Option<String>>>,
    pub mobile_phone: Option<String>,
    pub home_address: Option<GraphAddress>,
    pub business_address: Option<GraphAddress>,
    pub other_address: Option<GraphAddress>,
    pub company_name: Option<String>,
    pub job_title: Option<String>,
    pub birthday: Option<String>,
    #[serde(rename = "@removed")]
    pub removed: Option<Value>,
}

pub(crate) fn error_codes(body: &[u8]) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k.eq_ignore_ascii_case("code") {
                        if let Value::String(s) = v {
                            out.push(s.clone());
                        }
                    } else {
                        walk(v, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        // The top-level code first.
        if let Some(c) = v.pointer("/error/code").and_then(Value::as_str) {
            out.push(c.to_string());
        }
        if let Some(e) = v.get("error") {
            let mut nested = Vec::new();
            walk(e, &mut nested);
            for c in nested {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// One page of a delta or folder listing.
#[derive(Debug, Deserialize)]
pub struct Page {
    #[serde(default)]
    pub value: Vec<Value>,
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    pub delta_link: Option<String>,
}

/// Decodes a listing page; a delta page must end in a next link or a delta link.
pub fn parse_page(body: &[u8], delta: bool) -> Result<Page, String> {
    let p: Page = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if delta && p.next_link.is_none() && p.delta_link.is_none() {
        return Err("a delta page without a next or delta link".into());
    }
    Ok(p)
}

#[derive(Debug, Deserialize)]
pub(crate) struct Folder {
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct BatchResponses {
    pub responses: Vec<BatchItem>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct BatchItem {
    pub id: String,
    pub status: u16,
    #[serde(default)]
    pub headers: serde_json::Map<String, Value>,
    #[serde(default)]
    pub body: Value,
}

impl BatchItem {
    pub fn retry_after(&self) -> Option<Duration> {
        let v = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
            .map(|(_, v)| v)?;
        let mut h = reqwest::header::HeaderMap::new();
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        h.insert(reqwest::header::RETRY_AFTER, text.parse().ok()?);
        retry_after(&h)
    }
    pub fn etag(&self) -> Option<String> {
        self.body
            .get("@odata.etag")
            .or_else(|| self.body.get("changeKey"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}
