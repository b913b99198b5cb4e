//! Normalisation used for matching (SPEC §4): names and organisations after Unicode NFKC,
//! case folding and white-space folding; emails case-insensitively; phones in E.164 using
//! the configured default region, falling back to their digits when they do not parse.

use unicode_normalization::UnicodeNormalization;

/// NFKC, full Unicode case folding, and runs of white space folded to one space.
pub fn text_key(s: &str) -> String {
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
    caseless::default_case_fold_str(t)
}

/// A phone number in E.164 when it parses for `region`, else its digits (keeping a leading
/// `+`). `None` when there is no digit at all.
///
/// Parsing is the most expensive step of planning and the same numbers are keyed many
/// times (cleaning, matching, indexing), so results are memoised per thread.
pub fn phone_key(raw: &str, region: phonenumber::country::Id) -> Option<String> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static MEMO: RefCell<HashMap<(String, phonenumber::country::Id), Option<String>>> =
            RefCell::new(HashMap::new());
    }
    const MEMO_MAX: usize = 200_000;
    let key = (raw.to_string(), region);
    if let Some(hit) = MEMO.with(|m| m.borrow().get(&key).cloned()) {
        return hit;
    }
    let value = phone_key_uncached(raw, region);
    MEMO.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= MEMO_MAX {
            m.clear();
        }
        m.insert(key, value.clone());
    });
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
