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

use crate::model::{field, Address, Fields};
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
fn split_value(line: &str) -> Option<(&str, &str)> {
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

/// The card's version, from its `VERSION` line (3.0 when absent).
pub fn is_v4(text: &str) -> bool {
    lines(text)
        .iter()
        .find(|l| l.name == "VERSION")
        .and_then(|l| split_value(&l.unfolded()).map(|(_, v)| v.trim() == "4.0"))
        .unwrap_or(false)
}

fn entry(name: VCardProperty, values: Vec<String>) -> VCardEntry {
    VCardEntry {
        group: None,
        name,
        params: vec![],
        values: values.into_iter().map(VCardValue::Text).collect(),
    }
}

fn write(e: &VCardEntry, v4: bool) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = e.write_to(&mut s, v4);
    s
}

/// What a card should hold for one field, as new content lines.
fn new_lines(f: &Fields, which: &str, v4: bool) -> Vec<String> {
    let mut out = vec![];
    match which {
        field::NAME => {
            out.push(write(
                &entry(
                    VCardProperty::N,
                    vec![
                        f.last_name.clone(),
                        f.first_name.clone(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ],
                ),
                v4,
            ));
            let full = format!("{} {}", f.first_name, f.last_name)
                .trim()
                .to_string();
            out.push(write(&entry(VCardProperty::Fn, vec![full]), v4));
        }
        field::ADDRESS => {
            if let Some(a) = &f.address {
                let p = |s: &Option<String>| s.clone().unwrap_or_default();
                out.push(write(
                    &entry(
                        VCardProperty::Adr,
                        vec![
                            String::new(),
                            String::new(),
                            p(&a.street),
                            p(&a.city),
                            p(&a.region),
                            p(&a.postal_code),
                            p(&a.country),
                        ],
                    ),
                    v4,
                ));
            }
        }
        field::COMPANY => {
            if let Some(o) = &f.organization {
                out.push(write(&entry(VCardProperty::Org, vec![o.clone()]), v4));
            }
        }
        field::JOB_TITLE => {
            if let Some(t) = &f.job_title {
                out.push(write(&entry(VCardProperty::Title, vec![t.clone()]), v4));
            }
        }
        field::BIRTHDAY => {
            if let Some(d) = f.birthday {
                // 4.0 wants the basic format (RFC 6350 §4.3.1); 3.0 takes ISO 8601.
                let v = if v4 {
                    d.format("%Y%m%d").to_string()
                } else {
                    d.format("%Y-%m-%d").to_string()
                };
                out.push(format!("BDAY:{v}\r\n"));
            }
        }
        _ => {}
    }
    out
}

/// The value of an `EMAIL` or `TEL` line, for comparing with CRM values.
fn line_value(l: &Line) -> String {
    let u = l.unfolded();
    let v = split_value(&u).map(|(_, v)| v).unwrap_or("").trim();
    v.strip_prefix("tel:").unwrap_or(v).replace("\\,", ",")
}

/// Writes the `changed` fields (names of [`field`]) of `f` into the card `text`, keeping
/// every other line as it is. Emails and phones the card already has keep their lines
/// (and their TYPE parameters); only values that left or arrived change.
pub fn patch(text: &str, f: &Fields, changed: &[&str]) -> String {
    let v4 = is_v4(text);
    let card = parse(text);
    let chosen = card.as_ref().and_then(chosen_adr);
    let mut ls = lines(text);
    // New lines go where the field's first old line was (else before END:VCARD).
    let mut add: Vec<(Option<usize>, String)> = vec![];
    let first_of =
        |ls: &[Line], names: &[&str]| ls.iter().position(|l| names.contains(&l.name.as_str()));
    for which in changed {
        match *which {
            field::NAME => {
                let at = first_of(&ls, &["N", "FN"]);
                ls.retain(|l| l.name != "N" && l.name != "FN");
                add.extend(new_lines(f, which, v4).into_iter().map(|l| (at, l)));
            }
            field::EMAILS => {
                let want: Vec<String> = f.emails.iter().map(|e| e.to_lowercase()).collect();
                let mut have = vec![];
                ls.retain(|l| {
                    if l.name != "EMAIL" {
                        return true;
                    }
                    let v = line_value(l).to_lowercase();
                    let keep = want.contains(&v) && !have.contains(&v);
                    if keep {
                        have.push(v);
                    }
                    keep
                });
                for e in &f.emails {
                    if !have.contains(&e.to_lowercase()) {
                        let mut en = entry(VCardProperty::Email, vec![e.clone()]);
                        if !v4 {
                            en.params.push(calcard::vcard::VCardParameter {
                                name: VCardParameterName::Type,
                                value: VCardParameterValue::Text("INTERNET".into()),
                            });
                        }
                        add.push((None, write(&en, v4)));
                    }
                }
            }
            field::PHONES => {
                let mut have = vec![];
                ls.retain(|l| {
                    if l.name != "TEL" {
                        return true;
                    }
                    let v = line_value(l);
                    let keep = f.phones.contains(&v) && !have.contains(&v);
                    if keep {
                        have.push(v);
                    }
                    keep
                });
                for p in &f.phones {
                    if !have.contains(p) {
                        add.push((
                            None,
                            if v4 {
                                format!("TEL;VALUE=text:{p}\r\n")
                            } else {
                                write(&entry(VCardProperty::Tel, vec![p.clone()]), v4)
                            },
                        ));
                    }
                }
            }
            field::ADDRESS => {
                // The chosen ADR is rewritten in place, keeping its group and parameters
                // (TYPE=pref / PREF=1), so it stays the chosen one.
                let idx = chosen.and_then(|c| {
                    ls.iter()
                        .enumerate()
                        .filter(|(_, l)| l.name == "ADR")
                        .nth(c)
                        .map(|(i, _)| i)
                });
                let mut head = None;
                if let Some(i) = idx {
                    let old = ls.remove(i);
                    let u = old.unfolded();
                    head = split_value(&u).map(|(h, _)| h.to_string());
                }
                for l in new_lines(f, which, v4) {
                    let line = match (&head, split_value(&unfold(&l))) {
                        (Some(h), Some((_, v))) => fold(&format!("{h}:{v}")),
                        _ => l,
                    };
                    add.push((idx, line));
                }
            }
            field::COMPANY | field::JOB_TITLE | field::BIRTHDAY => {
                let name = match *which {
                    field::COMPANY => "ORG",
                    field::JOB_TITLE => "TITLE",
                    _ => "BDAY",
                };
                let at = first_of(&ls, &[name]);
                ls.retain(|l| l.name != name);
                add.extend(new_lines(f, which, v4).into_iter().map(|l| (at, l)));
            }
            _ => {}
        }
    }
    let end = ls.iter().rposition(|l| l.name == "END").unwrap_or(ls.len());
    let mut out = String::with_capacity(text.len() + 256);
    let push_raw = |out: &mut String, raw: &str| {
        out.push_str(raw);
        if !raw.ends_with('\n') {
            out.push_str("\r\n");
        }
    };
    for (i, l) in ls.iter().enumerate() {
        if i == end {
            for (_, a) in add.iter().filter(|(at, _)| at.is_none_or(|at| at >= end)) {
                out.push_str(a);
            }
        }
        for (_, a) in add.iter().filter(|(at, _)| *at == Some(i) && i < end) {
            out.push_str(a);
        }
        push_raw(&mut out, &l.raw);
    }
    if end >= ls.len() {
        for (_, a) in add.iter().filter(|(at, _)| at.is_none_or(|at| at >= end)) {
            out.push_str(a);
        }
        out.push_str("END:VCARD\r\n");
    }
    out
}

fn unfold(s: &str) -> String {
    Line {
        raw: s.to_string(),
        name: String::new(),
    }
    .unfolded()
}

/// Folds a logical line at 75 octets without splitting a UTF-8 sequence (RFC 6350 §3.2).
fn fold(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 8);
    let mut width = 0;
    for c in line.chars() {
        let n = c.len_utf8();
        if width + n > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += n;
    }
    out.push_str("\r\n");
    out
}

/// A new vCard 3.0 (accepted by every CardDAV server, RFC 6352 §6.2.2) for `f`, with `uid`.
pub fn new_card(f: &Fields, uid: &str) -> String {
    let skeleton = format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nPRODID:-//contact-sync//contact-sync {}//EN\r\n{}END:VCARD\r\n",
        env!("CARGO_PKG_VERSION"),
        write(&entry(VCardProperty::Uid, vec![uid.to_string()]), false)
    );
    patch(
        &skeleton,
        f,
        &[
            field::NAME,
            field::EMAILS,
            field::PHONES,
            field::ADDRESS,
            field::COMPANY,
            field::JOB_TITLE,
            field::BIRTHDAY,
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> url::Url {
        url::Url::parse("https://dav.example.com/dav/").unwrap()
    }

    fn read(text: &str) -> Mapped {
        map(&parse(text).expect("parses"), text, &server())
    }

    fn card(version: &str, body: &str) -> String {
        format!("BEGIN:VCARD\r\nVERSION:{version}\r\nUID:u1\r\n{body}END:VCARD\r\n")
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
        let m = read(&card(
            "3.0",
            "N:A;B;;;\r\nEMAIL;TYPE=INTERNET;TYPE=pref:a@x.org\r\nitem1.EMAIL:b@x.org\r\n",
        ));
        assert_eq!(m.fields.emails, ["a@x.org", "b@x.org"]);
    }

    #[test]
    fn carddav_phones_from_tel_text_and_uri() {
        let m = read(&card(
            "4.0",
            "N:A;B;;;\r\nTEL;VALUE=uri;TYPE=cell:tel:+1-201-555-0100\r\nTEL;TYPE=work:+44 20 7946 0000\r\n",
        ));
        assert_eq!(m.fields.phones, ["+1-201-555-0100", "+44 20 7946 0000"]);
    }

    #[test]
    fn carddav_address_pref_in_3_0() {
        let m = read(&card(
            "3.0",
            "N:A;B;;;\r\nADR;TYPE=home:;;1 First St;Springfield;IL;62701;USA\r\nADR;TYPE=work,pref:;Suite 5;2 Second Ave;Shelbyville;IL;62565;USA\r\n",
        ));
        let a = m.fields.address.unwrap();
        assert_eq!(a.street.as_deref(), Some("Suite 5, 2 Second Ave"));
        assert_eq!(a.city.as_deref(), Some("Shelbyville"));
        assert_eq!(a.country.as_deref(), Some("USA"));
    }

    #[test]
    fn carddav_address_pref_in_4_0_else_first() {
        let m = read(&card(
            "4.0",
            "N:A;B;;;\r\nADR;TYPE=home:;;1 First St;Springfield;IL;62701;USA\r\nADR;PREF=1:;;2 Second Ave;Shelbyville;IL;62565;USA\r\n",
        ));
        assert_eq!(
            m.fields.address.unwrap().city.as_deref(),
            Some("Shelbyville")
        );
        let m = read(&card(
            "4.0",
            "N:A;B;;;\r\nADR:;;1 First St;Springfield;IL;62701;USA\r\nADR:;;2 Second Ave;Shelbyville;IL;62565;USA\r\n",
        ));
        let a = m.fields.address.unwrap();
        assert_eq!(a.city.as_deref(), Some("Springfield"));
        assert_eq!(a.region.as_deref(), Some("IL"));
        assert_eq!(a.postal_code.as_deref(), Some("62701"));
    }

    #[test]
    fn carddav_company_from_org_first_component() {
        let m = read(&card("3.0", "N:A;B;;;\r\nORG:Acme Inc.;Research;Lab 2\r\n"));
        assert_eq!(m.fields.organization.as_deref(), Some("Acme Inc."));
        let m = read(&card("3.0", "N:A;B;;;\r\nORG:Apple;\r\n"));
        assert_eq!(m.fields.organization.as_deref(), Some("Apple"));
    }

    #[test]
    fn carddav_job_title_from_title() {
        let m = read(&card(
            "4.0",
            "N:A;B;;;\r\nTITLE:Chief Engineer\r\nROLE:Lead\r\n",
        ));
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

    #[test]
    fn carddav_patch_keeps_unknown_properties_byte_for_byte() {
        let text = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:u1\r\nN:Lovelace;Ada;;;\r\nFN:Ada Lovelace\r\nEMAIL;TYPE=INTERNET;TYPE=WORK:ada@x.org\r\nX-CUSTOM;X-P=a:keep me\r\nIMPP:xmpp:ada@x.org\r\nCATEGORIES:A\\,B,C\r\nitem1.X-ABLabel:_$!<Other>!$_\r\nNOTE:a long note that is folded over more than one line because it is lo\r\n ng\r\nTITLE:Old\r\nEND:VCARD\r\n";
        let mut f = read(text).fields;
        f.job_title = Some("New; title".into());
        f.emails.push("b@x.org".into());
        let out = patch(text, &f, &[field::JOB_TITLE, field::EMAILS]);
        for keep in [
            "X-CUSTOM;X-P=a:keep me\r\n",
            "IMPP:xmpp:ada@x.org\r\n",
            "CATEGORIES:A\\,B,C\r\n",
            "item1.X-ABLabel:_$!<Other>!$_\r\n",
            "NOTE:a long note that is folded over more than one line because it is lo\r\n ng\r\n",
            "EMAIL;TYPE=INTERNET;TYPE=WORK:ada@x.org\r\n",
            "N:Lovelace;Ada;;;\r\n",
        ] {
            assert!(out.contains(keep), "lost {keep:?} in {out}");
        }
        assert!(!out.contains("TITLE:Old"));
        assert!(out.ends_with("END:VCARD\r\n"));
        let back = read(&out).fields;
        assert_eq!(back.job_title.as_deref(), Some("New; title"));
        assert_eq!(back.emails, ["ada@x.org", "b@x.org"]);
    }

    #[test]
    fn carddav_patch_replaces_only_the_chosen_address() {
        let text = card(
            "4.0",
            "N:A;B;;;\r\nADR;TYPE=home:;;1 First St;Springfield;IL;62701;USA\r\nADR;PREF=1:;;2 Second Ave;Shelbyville;IL;62565;USA\r\n",
        );
        let mut f = read(&text).fields;
        f.address.as_mut().unwrap().city = Some("Capital City".into());
        let out = patch(&text, &f, &[field::ADDRESS]);
        assert!(out.contains("ADR;TYPE=home:;;1 First St;Springfield;IL;62701;USA\r\n"));
        assert!(!out.contains("Shelbyville"));
        let a = read(&out).fields.address.unwrap();
        assert_eq!(a.city.as_deref(), Some("Capital City"));
    }

    #[test]
    fn carddav_new_card_round_trips_with_uid() {
        let f = Fields {
            first_name: "Grace".into(),
            last_name: "Hopper".into(),
            emails: vec!["grace@navy.mil".into()],
            phones: vec!["+12025550123".into()],
            address: Some(Address {
                street: Some("1 Pentagon".into()),
                city: Some("Arlington".into()),
                ..Default::default()
            }),
            organization: Some("US Navy".into()),
            job_title: Some("Rear Admiral".into()),
            birthday: NaiveDate::from_ymd_opt(1906, 12, 9),
        };
        let text = new_card(&f, "urn:uuid:1234");
        assert!(text.starts_with("BEGIN:VCARD\r\nVERSION:3.0\r\n"), "{text}");
        let m = read(&text);
        assert_eq!(m.fields, f);
        assert_eq!(m.uid.as_deref(), Some("urn:uuid:1234"));
    }

    #[test]
    fn carddav_patch_in_4_0_round_trips() {
        let text = card("4.0", "N:A;B;;;\r\nEMAIL:a@x.org\r\n");
        let mut f = read(&text).fields;
        f.phones = vec!["+12025550123".into()];
        f.birthday = NaiveDate::from_ymd_opt(1990, 1, 2);
        let out = patch(&text, &f, &[field::PHONES, field::BIRTHDAY]);
        assert!(out.contains("BDAY:19900102\r\n"), "{out}");
        assert_eq!(read(&out).fields, f);
    }

    proptest::proptest! {
        /// Whatever a server sends, reading and patching a card never panics, and a patch
        /// of a card that parses still parses.
        #[test]
        fn carddav_bad_cards_never_panic(
            body in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::string::string_regex("[A-Za-z0-9.;:=,\\\\\"/ -]{0,40}").unwrap(),
                    proptest::sample::select(vec![
                        "N:;;;;".to_string(), "BDAY:--0229".to_string(), "BDAY:0000-00-00".to_string(),
                        "ADR;PREF=x:;;".to_string(), "PHOTO;ENCODING=b:@@@".to_string(),
                        "PHOTO:data:,".to_string(), "TEL;VALUE=uri:tel:".to_string(), " folded".to_string(),
                        "ORG:;;;".to_string(), "item1.EMAIL:".to_string(),
                    ]),
                ],
                0..12,
            ),
            v4 in proptest::bool::ANY,
        ) {
            let text = format!(
                "BEGIN:VCARD\r\nVERSION:{}\r\n{}\r\nEND:VCARD\r\n",
                if v4 { "4.0" } else { "3.0" },
                body.join("\r\n")
            );
            if let Some(card) = parse(&text) {
                let m = map(&card, &text, &server());
                let out = patch(&text, &m.fields, &[field::NAME, field::EMAILS, field::PHONES, field::ADDRESS, field::COMPANY, field::JOB_TITLE, field::BIRTHDAY]);
                proptest::prop_assert!(parse(&out).is_some(), "{out}");
            }
            let _ = parse(&body.join("\n"));
        }
    }
}
