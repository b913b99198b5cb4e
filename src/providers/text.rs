//! Small text helpers the provider clients (and the pages that show their data) share.

use super::MAX_FIELD_BYTES;

/// A trimmed, non-empty value from a provider; a value longer than [`MAX_FIELD_BYTES`]
/// (before trimming) counts as absent: it is never truncated, since a cut email or phone
/// would be wrong data.
pub fn clean(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .filter(|s| s.len() <= MAX_FIELD_BYTES)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Escapes text for XML or HTML content and attribute values (`&`, `<`, `>`, `"`, `'`).
pub fn escape_markup(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_trims_drops_blanks_and_over_long_values() {
        assert_eq!(clean(&Some("  Ada ".into())).as_deref(), Some("Ada"));
        assert_eq!(clean(&Some("   ".into())), None);
        assert_eq!(clean(&None), None);
        let at_limit = "a".repeat(MAX_FIELD_BYTES);
        assert_eq!(clean(&Some(at_limit.clone())), Some(at_limit));
        assert_eq!(clean(&Some("a".repeat(MAX_FIELD_BYTES + 1))), None);
    }

    #[test]
    fn escape_markup_escapes_the_five_special_characters() {
        assert_eq!(
            escape_markup(r#"<a href="x">Tom & Jerry's</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;"
        );
        assert_eq!(escape_markup("plain"), "plain");
    }
}
