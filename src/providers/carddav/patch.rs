//! CRM fields → vCard: write-back that patches a card's own content lines, and new cards.
//!
//! A card is never re-serialised: only the lines of the mapped properties that changed are
//! removed, and the new ones (written by `calcard`) are added before `END:VCARD`. Every
//! other line, X- properties, groups, folding and all, stays byte for byte (RFC 6352 §9.1:
//! the whole card is PUT back).

use calcard::vcard::{
    VCardEntry, VCardParameterName, VCardParameterValue, VCardProperty, VCardValue,
};

use super::map::{chosen_adr, lines, parse, split_value, Line};
use crate::model::{field, Fields};

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
    use crate::model::Address;
    use crate::providers::carddav::map::fixtures::{card, read, server};
    use crate::providers::carddav::map::map;
    use chrono::NaiveDate;

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
