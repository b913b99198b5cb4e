//! vCard 3.0 / 4.0 ↔ CRM fields (SPEC §3). Pure functions, no I/O.
//!
//! Reading parses the card with `calcard` and maps: name from `N` (family; given), `FN`
//! when `N` is empty; `EMAIL`; `TEL`; the preferred `ADR` (`TYPE=pref` in 3.0, `PREF=1` in
//! 4.0) else the first; `ORG`'s first component; `TITLE`; `BDAY` only as a complete date;
//! `PHOTO` inline, as a `data:` URI, or as an https URL on the server's own host.
//!
//! Writing never re-serialises a card: it works on the card's own content lines, removes
//! only the lines of the mapped properties that changed, and adds the new ones (written by
//! `calcard`) before `END:VCARD`. Every other line, X- properties, groups, folding and
//! all, stays byte for byte (RFC 6352 §9.1: the whole card is PUT back).

use base64::Engine;
use calcard::vcard::{
    VCard, VCardEntry, VCardParameterName, VCardParameterValue, VCardProperty, VCardValue,
};
use chrono::NaiveDate;

use crate::model::{Address, Fields};
use crate::providers::MAX_FIELD_BYTES;

/// A card mapped to CRM terms.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mapped {
    pub fields: Fields,
    /// `data:` URI (inline photos are turned into one) or an https URL on the server's host.
    pub photo: Option<String>,
    pub uid: Option<String>,
}

/// Parses a card; `None` when it is no vCard (skipped as `unparseable`).
pub fn parse(text: &str) -> Option<VCard> {
    // calcard accepts a card cut off before END:VCARD; a truncated card is not one.
    let ends = lines(text)
        .iter()
        .rev()
        .find(|l| !l.raw.trim().is_empty())
        .is_some_and(|l| l.unfolded().trim().eq_ignore_ascii_case("END:VCARD"));
    if !ends {
        return None;
    }
    match calcard::Parser::new(text).entry() {
        calcard::Entry::VCard(v) => Some(v),
        _ => None,
    }
}

fn clean(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty() && t.len() <= MAX_FIELD_BYTES).then(|| t.to_string())
}

fn value_text(v: &VCardValue) -> String {
    match v {
        VCardValue::Text(t) => t.clone(),
        VCardValue::Component(c) => c.join(" "),
        _ => String::new(),
    }
}

fn component(e: &VCardEntry, i: usize) -> String {
    e.values.get(i).map(value_text).unwrap_or_default()
}

fn entries(card: &VCard, p: VCardProperty) -> impl Iterator<Item = &VCardEntry> {
    card.entries.iter().filter(move |e| e.name == p)
}

/// Index, among the card's `ADR` properties, of the one the CRM takes: the first marked
/// preferred (`TYPE=pref` in 3.0, `PREF=1` in 4.0), else the first.
pub fn chosen_adr(card: &VCard) -> Option<usize> {
    let adrs: Vec<&VCardEntry> = entries(card, VCardProperty::Adr).collect();
    if adrs.is_empty() {
        return None;
    }
    let pref = adrs.iter().position(|e| {
        e.params.iter().any(|p| match (&p.name, &p.value) {
            (VCardParameterName::Pref, VCardParameterValue::Integer(n)) => *n == 1,
            (VCardParameterName::Pref, VCardParameterValue::Text(t)) => t.trim() == "1",
            (VCardParameterName::Type, VCardParameterValue::Text(t)) => {
                t.eq_ignore_ascii_case("pref")
            }
            _ => false,
        })
    });
    Some(pref.unwrap_or(0))
}

fn split_display_name(display: &str) -> (String, String) {
    let words: Vec<&str> = display.split_whitespace().collect();
    match words.split_last() {
        Some((last, rest)) => (rest.join(" "), (*last).to_string()),
        None => (String::new(), String::new()),
    }
}

/// Maps a parsed card. `text` is the card's source (for `BDAY`, read from its line), and
/// `server` the account's server (photos by URL only from its host).
pub fn map(card: &VCard, text: &str, server: &url::Url) -> Mapped {
    let mut f = Fields::default();
    if let Some(n) = entries(card, VCardProperty::N).next() {
        f.last_name = clean(&component(n, 0)).unwrap_or_default();
        f.first_name = clean(&component(n, 1)).unwrap_or_default();
    }
    if f.first_name.is_empty() && f.last_name.is_empty() {
        if let Some(d) = entries(card, VCardProperty::Fn)
            .next()
            .and_then(|e| clean(&component(e, 0)))
        {
            (f.first_name, f.last_name) = split_display_name(&d);
        }
    }
    f.emails = entries(card, VCardProperty::Email)
        .filter_map(|e| clean(&component(e, 0)))
        .collect();
    f.phones = entries(card, VCardProperty::Tel)
        .filter_map(|e| {
            let v = match e.values.first() {
                Some(VCardValue::Binary(_)) | None => return None,
                Some(v) => value_text(v),
            };
            let v = v.trim();
            let v = v
                .strip_prefix("tel:")
                .or_else(|| v.strip_prefix("TEL:"))
                .unwrap_or(v);
            clean(v)
        })
        .collect();
    if let Some(i) = chosen_adr(card) {
        if let Some(a) = entries(card, VCardProperty::Adr).nth(i) {
            let street = [component(a, 1), component(a, 2)]
                .iter()
                .filter_map(|s| clean(s))
                .collect::<Vec<_>>()
                .join(", ");
            f.address = Address {
                street: clean(&street),
                city: clean(&component(a, 3)),
                region: clean(&component(a, 4)),
                postal_code: clean(&component(a, 5)),
                country: clean(&component(a, 6)),
            }
            .non_empty();
        }
    }
    f.organization = entries(card, VCardProperty::Org)
        .next()
        .and_then(|e| clean(&component(e, 0)));
    f.job_title = entries(card, VCardProperty::Title)
        .next()
        .and_then(|e| clean(&component(e, 0)));
    f.birthday = lines(text)
        .iter()
        .find(|l| l.name == "BDAY")
        .and_then(|l| complete_date(&l.unfolded()));
    let photo = entries(card, VCardProperty::Photo)
        .next()
        .and_then(|e| photo_of(e, server));
    let uid = entries(card, VCardProperty::Uid)
        .next()
        .and_then(|e| clean(&component(e, 0)));
    Mapped {
        fields: f,
        photo,
        uid,
    }
}

fn photo_of(e: &VCardEntry, server: &url::Url) -> Option<String> {
    match e.values.first()? {
        VCardValue::Binary(d) if !d.data.is_empty() => {
            let ct = d
                .content_type
                .clone()
                .filter(|c| c.starts_with("image/"))
                .unwrap_or_else(|| "image/jpeg".into());
            Some(format!(
                "data:{ct};base64,{}",
                base64::engine::general_purpose::STANDARD.encode(&d.data)
            ))
        }
        VCardValue::Text(t) => {
            let u = url::Url::parse(t.trim()).ok()?;
            (photo_host_allowed(&u, server)).then(|| u.to_string())
        }
        _ => None,
    }
}

/// A photo URL is fetched only over https from the server's own host (SPEC §8; plain http
/// only when the server itself is on loopback, for tests).
pub fn photo_host_allowed(u: &url::Url, server: &url::Url) -> bool {
    let same_host =
        u.host_str().map(str::to_ascii_lowercase) == server.host_str().map(str::to_ascii_lowercase);
    let scheme_ok = u.scheme() == "https"
        || (u.scheme() == "http" && server.scheme() == "http" && crate::config::is_loopback(u));
    same_host && scheme_ok
}

/// Decodes a `data:` URI's bytes (base64 or percent-encoded).
pub fn data_uri_bytes(uri: &str) -> Option<Vec<u8>> {
    let rest = uri.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    if meta.ends_with(";base64") || meta.ends_with(";base64\\") {
        let clean: String = data.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD.decode(clean).ok()
    } else {
        Some(data.as_bytes().to_vec())
    }
}

/// A `BDAY` value as a complete date: `YYYY-MM-DD` or `YYYYMMDD`, optionally followed by a
/// time. Year-less forms (4.0's `--MMDD`, 3.0's Apple year 1604 or `X-APPLE-OMIT-YEAR`)
/// and text values are not complete.
pub fn complete_date(line: &str) -> Option<NaiveDate> {
    let (head, value) = split_value(line)?;
    let params = head.to_ascii_uppercase();
    if params.contains("X-APPLE-OMIT-YEAR") || params.contains("VALUE=TEXT") {
        return None;
    }
    let v = value.trim();
    let date = v.split('T').next()?;
    let digits: String = date.chars().filter(|c| *c != '-').collect();
    if date.starts_with("--") || digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if date.contains('-') && (date.len() != 10 || &date[4..5] != "-" || &date[7..8] != "-") {
        return None;
    }
    let d = NaiveDate::parse_from_str(&digits, "%Y%m%d").ok()?;
    use chrono::Datelike;
    (d.year() != 1604).then_some(d)
}

/// Splits an unfolded content line at the colon that ends the name and parameters
/// (a colon inside a quoted parameter value does not count).
pub(super) fn split_value(line: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => return Some((&line[..i], &line[i + 1..])),
            _ => {}
        }
    }
    None
}

/// One content line of a card, as in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The physical lines, line breaks included, exactly as in the source.
    pub raw: String,
    /// The property name, upper case, without its group.
    pub name: String,
}

impl Line {
    /// The logical line: folding removed, line break dropped.
    pub fn unfolded(&self) -> String {
        let mut out = String::with_capacity(self.raw.len());
        for (i, phys) in self.raw.split_inclusive('\n').enumerate() {
            let p = phys.trim_end_matches(['\r', '\n']);
            let p = if i > 0 {
                p.strip_prefix([' ', '\t']).unwrap_or(p)
            } else {
                p
            };
            out.push_str(p);
        }
        out
    }
}

/// Splits a card into content lines (RFC 6350 §3.2 folding: a line that starts with a
/// space or tab continues the one before).
pub fn lines(text: &str) -> Vec<Line> {
    let mut out: Vec<Line> = vec![];
    for phys in text.split_inclusive('\n') {
        if (phys.starts_with(' ') || phys.starts_with('\t')) && !out.is_empty() {
            if let Some(last) = out.last_mut() {
                last.raw.push_str(phys);
            }
            continue;
        }
        let head: String = phys
            .chars()
            .take_while(|c| !matches!(c, ';' | ':' | '\r' | '\n'))
            .collect();
        let name = head
            .rsplit('.')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_uppercase();
        out.push(Line {
            raw: phys.to_string(),
            name,
        });
    }
    out
}

pub use super::patch::{is_v4, new_card, patch};

/// Cards and a server for the tests of reading and of patching.
#[cfg(test)]
pub(super) mod fixtures {
    use super::{map, parse, Mapped};

    pub fn server() -> url::Url {
        url::Url::parse("https://dav.example.com/dav/").unwrap()
    }

    /// A card parsed and mapped.
    pub fn read(text: &str) -> Mapped {
        map(&parse(text).expect("parses"), text, &server())
    }

    /// A card of `version` with `UID:u1` and the content lines `body`.
    pub fn card(version: &str, body: &str) -> String {
        format!("BEGIN:VCARD\r\nVERSION:{version}\r\nUID:u1\r\n{body}END:VCARD\r\n")
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{card, read};
    use super::*;

    /// A card of `version` for "B A" with the content lines `lines`, read.
    fn read_lines(version: &str, lines: &[&str]) -> Mapped {
        let body: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
        read(&card(version, &format!("N:A;B;;;\r\n{body}")))
    }

    #[test]
    fn carddav_name_from_n_family_then_given() {
        let m = read(&card("3.0", "N:Lovelace;Ada;;;\r\nFN:Countess Ada\r\n"));
        assert_eq!(
            (m.fields.first_name.as_str(), m.fields.last_name.as_str()),
            ("Ada", "Lovelace")
        );
    }

    #[test]
    fn carddav_name_from_fn_when_n_is_empty() {
        let m = read(&card("4.0", "N:;;;;\r\nFN:Jean Claude Van Damme\r\n"));
        assert_eq!(m.fields.first_name, "Jean Claude Van");
        assert_eq!(m.fields.last_name, "Damme");
        let m = read(&card("3.0", "FN:Cher\r\n"));
        assert_eq!(
            (m.fields.first_name.as_str(), m.fields.last_name.as_str()),
            ("", "Cher")
        );
    }

    #[test]
    fn carddav_emails_from_email() {
        const LINES: [&str; 2] = [
            "EMAIL;TYPE=INTERNET;TYPE=pref:a@x.org",
            "item1.EMAIL:b@x.org",
        ];
        let m = read_lines("3.0", &LINES);
        assert_eq!(m.fields.emails, ["a@x.org", "b@x.org"]);
    }

    #[test]
    fn carddav_phones_from_tel_text_and_uri() {
        const LINES: [&str; 2] = [
            "TEL;VALUE=uri;TYPE=cell:tel:+1-201-555-0100",
            "TEL;TYPE=work:+44 20 7946 0000",
        ];
        let m = read_lines("4.0", &LINES);
        assert_eq!(m.fields.phones, ["+1-201-555-0100", "+44 20 7946 0000"]);
    }

    #[test]
    fn carddav_address_pref_in_3_0() {
        let m = read_lines(
            "3.0",
            &[
                "ADR;TYPE=home:;;1 First St;Springfield;IL;62701;USA",
                "ADR;TYPE=work,pref:;Suite 5;2 Second Ave;Shelbyville;IL;62565;USA",
            ],
        );
        let a = m.fields.address.unwrap();
        assert_eq!(a.street.as_deref(), Some("Suite 5, 2 Second Ave"));
        assert_eq!(a.city.as_deref(), Some("Shelbyville"));
        assert_eq!(a.country.as_deref(), Some("USA"));
    }

    #[test]
    fn carddav_address_pref_in_4_0_else_first() {
        let m = read_lines(
            "4.0",
            &[
                "ADR;TYPE=home:;;1 First St;Springfield;IL;62701;USA",
                "ADR;PREF=1:;;2 Second Ave;Shelbyville;IL;62565;USA",
            ],
        );
        assert_eq!(
            m.fields.address.unwrap().city.as_deref(),
            Some("Shelbyville")
        );
        let m = read_lines(
            "4.0",
            &[
                "ADR:;;1 First St;Springfield;IL;62701;USA",
                "ADR:;;2 Second Ave;Shelbyville;IL;62565;USA",
            ],
        );
        let a = m.fields.address.unwrap();
        assert_eq!(a.city.as_deref(), Some("Springfield"));
        assert_eq!(a.region.as_deref(), Some("IL"));
        assert_eq!(a.postal_code.as_deref(), Some("62701"));
    }

    #[test]
    fn carddav_company_from_org_first_component() {
        let m = read_lines("3.0", &["ORG:Acme Inc.;Research;Lab 2"]);
        assert_eq!(m.fields.organization.as_deref(), Some("Acme Inc."));
        let m = read_lines("3.0", &["ORG:Apple;"]);
        assert_eq!(m.fields.organization.as_deref(), Some("Apple"));
    }

    #[test]
    fn carddav_job_title_from_title() {
        let m = read_lines("4.0", &["TITLE:Chief Engineer", "ROLE:Lead"]);
        assert_eq!(m.fields.job_title.as_deref(), Some("Chief Engineer"));
    }

    #[test]
    fn carddav_birthday_only_complete_dates() {
        let d = |s: &str| {
            read(&card(
                s.split('|').next().unwrap(),
                s.split('|').nth(1).unwrap(),
            ))
            .fields
            .birthday
        };
        let full = NaiveDate::from_ymd_opt(1963, 9, 21);
        assert_eq!(d("3.0|N:A;B;;;\r\nBDAY:1963-09-21\r\n"), full);
        assert_eq!(d("4.0|N:A;B;;;\r\nBDAY:19630921\r\n"), full);
        // calcard misreads an extended date in a 4.0 card; we read BDAY ourselves.
        assert_eq!(d("4.0|N:A;B;;;\r\nBDAY:1963-09-21\r\n"), full);
        assert_eq!(d("3.0|N:A;B;;;\r\nBDAY:1963-09-21T00:00:00Z\r\n"), full);
        assert_eq!(d("4.0|N:A;B;;;\r\nBDAY:--0921\r\n"), None);
        assert_eq!(d("3.0|N:A;B;;;\r\nBDAY:1604-09-21\r\n"), None);
        assert_eq!(
            d("3.0|N:A;B;;;\r\nBDAY;X-APPLE-OMIT-YEAR=1604:1604-09-21\r\n"),
            None
        );
        assert_eq!(d("4.0|N:A;B;;;\r\nBDAY;VALUE=text:circa 1800\r\n"), None);
        assert_eq!(d("3.0|N:A;B;;;\r\nBDAY:1963-02-30\r\n"), None);
    }

    #[test]
    fn carddav_photo_inline_data_uri_and_same_host_url() {
        let inline = read(&card(
            "3.0",
            "N:A;B;;;\r\nPHOTO;ENCODING=b;TYPE=JPEG:/9j/4AAQ\r\n",
        ));
        let p = inline.photo.expect("inline photo");
        assert!(p.starts_with("data:image/"), "{p}");
        assert_eq!(
            data_uri_bytes(&p).unwrap(),
            [0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10]
        );
        let data = read(&card(
            "4.0",
            "N:A;B;;;\r\nPHOTO:data:image/jpeg;base64,/9j/4AAQ\r\n",
        ));
        assert_eq!(
            data_uri_bytes(&data.photo.unwrap()).unwrap(),
            [0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10]
        );
        let same = read(&card(
            "4.0",
            "N:A;B;;;\r\nPHOTO:https://dav.example.com/p/1.jpg\r\n",
        ));
        assert_eq!(
            same.photo.as_deref(),
            Some("https://dav.example.com/p/1.jpg")
        );
        let other = read(&card(
            "4.0",
            "N:A;B;;;\r\nPHOTO:https://evil.example.net/p.jpg\r\n",
        ));
        assert_eq!(other.photo, None);
        let plain = read(&card(
            "4.0",
            "N:A;B;;;\r\nPHOTO:http://dav.example.com/p.jpg\r\n",
        ));
        assert_eq!(plain.photo, None);
    }

    #[test]
    fn carddav_unparseable_card_is_none() {
        assert!(parse("this is not a vcard").is_none());
        assert!(parse("BEGIN:VCARD\r\nVERSION:3.0\r\nN:A;B;;;\r\n").is_none());
        assert!(parse("").is_none());
    }
}
