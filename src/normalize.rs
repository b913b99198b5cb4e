//! Normalisation used for matching (SPEC §4): names and organisations after Unicode NFKC,
//! case folding and white-space folding; emails case-insensitively; phones in E.164 using
//! the configured default region, falling back to their digits when they do not parse.

use unicode_normalization::UnicodeNormalization;

/// NFKC, full Unicode case folding, and runs of white space folded to one space.
pub fn text_key(s: &str) -> String {
    if s.is_ascii() {
        return ascii_text_key(s);
    }
    unicode_text_key(s)
}

/// ASCII is its own NFKC form and folds to its lower case: the same key as
/// [`unicode_text_key`], without the Unicode tables (most names and companies take this path).
fn ascii_text_key(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for w in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(w.chars().map(|c| c.to_ascii_lowercase()));
    }
    out
}

fn unicode_text_key(s: &str) -> String {
    let nfkc: String = s.nfkc().collect();
    let folded = caseless::default_case_fold_str(&nfkc);
    // Case folding can produce non-NFKC sequences; normalise once more so that keys compare.
    let folded: String = folded.nfkc().collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The key a person's name is matched on.
pub fn name_key(first: &str, last: &str) -> String {
    text_key(&format!("{first} {last}"))
}

/// Emails compare case-insensitively (and without surrounding white space).
pub fn email_key(s: &str) -> String {
    let t = s.trim();
    if t.is_ascii() {
        return t.to_ascii_lowercase();
    }
    caseless::default_case_fold_str(t)
}

/// A phone number in E.164 when it parses for `region`, else its digits (keeping a leading
/// `+`). `None` when there is no digit at all.
///
/// Parsing is the most expensive step of planning and the same numbers are keyed many
/// times (cleaning and matching on the matcher's thread, indexing on the writer's), so
/// results are memoised once for the whole process: each number is parsed once per version
/// of a contact, whichever thread keys it first.
pub fn phone_key(raw: &str, region: phonenumber::country::Id) -> Option<String> {
    use std::sync::{Mutex, OnceLock};
    type Memo = Mutex<foldhash::HashMap<(Box<str>, phonenumber::country::Id), Option<Box<str>>>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    // Enough for the numbers of a few rounds in flight; a full memo starts over.
    const MEMO_MAX: usize = 100_000;
    let memo = MEMO.get_or_init(Default::default);
    let key = (Box::<str>::from(raw), region);
    if let Some(hit) = memo.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return hit.as_deref().map(String::from);
    }
    let value = phone_key_uncached(raw, region);
    let mut m = memo.lock().unwrap_or_else(|p| p.into_inner());
    if m.len() >= MEMO_MAX {
        m.clear();
    }
    m.insert(key, value.as_deref().map(Box::from));
    value
}

fn phone_key_uncached(raw: &str, region: phonenumber::country::Id) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    if let Ok(n) = phonenumber::parse(Some(region), raw) {
        if phonenumber::is_valid(&n) {
            return Some(n.format().mode(phonenumber::Mode::E164).to_string());
        }
    }
    let digits: String = raw.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() {
        None
    } else if raw.starts_with('+') {
        Some(format!("+{digits}"))
    } else {
        Some(digits)
    }
}

/// Parses a region code, falling back to US for an unknown one (config validation rejects
/// unknown codes before they get here).
pub fn region(code: &str) -> phonenumber::country::Id {
    code.parse().unwrap_or(phonenumber::country::Id::US)
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::country::Id;

    #[test]
    fn names_compare_after_nfkc_case_folding_and_white_space_folding() {
        assert_eq!(name_key("  Ｊｏｈｎ ", "SMITH"), name_key("john", "smith"));
        assert_eq!(text_key("Straße"), text_key("STRASSE"));
        assert_eq!(text_key("Anna\t\n  Maria"), "anna maria");
        // Composed and decomposed forms of é are the same name.
        assert_eq!(text_key("Ren\u{e9}"), text_key("Rene\u{301}"));
        assert_ne!(text_key("René"), text_key("Rene"));
    }

    #[test]
    fn ascii_fast_path_gives_the_unicode_key() {
        for s in [
            "  Ada\tLOVELACE ",
            "a\u{b}b\u{c}c\rd\ne",
            "O'Brien-Smith & Co. 123",
            "",
            "   ",
        ] {
            assert_eq!(ascii_text_key(s), unicode_text_key(s), "{s:?}");
            assert_eq!(
                email_key(s),
                caseless::default_case_fold_str(s.trim()),
                "{s:?}"
            );
        }
    }

    #[test]
    fn emails_compare_case_insensitively() {
        assert_eq!(email_key(" Ann@Example.COM"), email_key("ann@example.com"));
    }

    #[test]
    fn phones_compare_in_e164_using_default_region() {
        assert_eq!(
            phone_key("(201) 555-0123", Id::US).as_deref(),
            Some("+12015550123")
        );
        assert_eq!(
            phone_key("+1 201-555-0123", Id::DE).as_deref(),
            Some("+12015550123")
        );
        assert_eq!(
            phone_key("030 1234567", Id::DE).as_deref(),
            Some("+49301234567")
        );
        // Unparseable numbers fall back to their digits.
        assert_eq!(phone_key("ext. 12-34", Id::US).as_deref(), Some("1234"));
        assert_eq!(phone_key("n/a", Id::US), None);
    }
}
