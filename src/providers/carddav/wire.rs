//! WebDAV and CardDAV on the wire: the XML request bodies we send and the `multistatus`
//! answers we read (RFC 4918 §14, RFC 6352, RFC 6578). Pure functions, no I/O.
//!
//! Servers pick their own namespace prefixes (`d:`, `D:`, none), so elements are matched on
//! namespace and local name, never on the prefix.

use crate::providers::text::escape_markup;

pub const DAV: &str = "DAV:";
pub const CARDDAV: &str = "urn:ietf:params:xml:ns:carddav";

/// PROPFIND for the principal (RFC 5397) and, on the principal, the home set (RFC 6352
/// §7.1.1); also `resourcetype`, so a `url` that is already an address book is recognised.
pub const PROPFIND_DISCOVERY: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav">
  <d:prop><d:current-user-principal/><c:addressbook-home-set/><d:resourcetype/><d:displayname/><d:supported-report-set/></d:prop>
</d:propfind>"#;

/// PROPFIND Depth 1 on a home set: its address books.
pub const PROPFIND_BOOKS: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav">
  <d:prop><d:resourcetype/><d:displayname/><d:supported-report-set/></d:prop>
</d:propfind>"#;

/// PROPFIND Depth 1 on an address book: every member's etag (the fallback listing when a
/// server has no `sync-collection`, RFC 6578 §1).
pub const PROPFIND_ETAGS: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:">
  <d:prop><d:resourcetype/><d:getetag/></d:prop>
</d:propfind>"#;

/// `sync-collection` REPORT (RFC 6578 §6.1), level 1, with etags and, when `with_data`,
/// the cards themselves (`CARDDAV:address-data`, which RFC 6578 lets a client ask for like
/// any property): a round is then one request. No `DAV:limit`: servers get it wrong (see
/// the reference notes) and truncation is handled through 507 anyway.
pub fn sync_collection(token: Option<&str>, with_data: bool) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<d:sync-collection xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav">
  <d:sync-token>{}</d:sync-token>
  <d:sync-level>1</d:sync-level>
  <d:prop><d:getetag/>{}</d:prop>
</d:sync-collection>"#,
        escape_markup(token.unwrap_or("")),
        if with_data { "<c:address-data/>" } else { "" }
    )
}

/// `addressbook-multiget` REPORT (RFC 6352 §8.7) for `hrefs`.
pub fn multiget(hrefs: &[&str]) -> String {
    let mut s = String::from(
        r#"<?xml version="1.0" encoding="utf-8"?>
<c:addressbook-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav">
  <d:prop><d:getetag/><c:address-data/></d:prop>
"#,
    );
    for h in hrefs {
        s.push_str("  <d:href>");
        s.push_str(&escape_markup(h));
        s.push_str("</d:href>\n");
    }
    s.push_str("</c:addressbook-multiget>");
    s
}

/// One `DAV:response` of a multistatus.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    pub href: String,
    /// The response-level status (a removed member in a sync report: 404; truncation: 507).
    pub status: Option<u16>,
    /// Properties found with a 2xx propstat.
    pub props: Props,
}

/// The properties we read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Props {
    /// `getetag`.
    pub etag: Option<String>,
    /// `resourcetype` holds DAV's `collection`.
    pub is_collection: bool,
    /// `resourcetype` holds CardDAV's `addressbook`.
    pub is_addressbook: bool,
    /// `displayname`.
    pub displayname: Option<String>,
    /// The href in `current-user-principal`.
    pub principal: Option<String>,
    /// The hrefs in `addressbook-home-set`.
    pub home_sets: Vec<String>,
    /// `address-data`: the vCard itself (multiget answers).
    pub address_data: Option<String>,
    /// `supported-report-set` was present; and whether it lists `sync-collection`.
    pub reports_listed: bool,
    pub sync_collection: bool,
}

/// A parsed multistatus.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Multistatus {
    pub responses: Vec<Entry>,
    pub sync_token: Option<String>,
}

/// Why a body was not a multistatus.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("The server's WebDAV answer is not a valid multistatus: {0}.")]
pub struct WireError(pub String);

fn is(n: &roxmltree::Node, ns: &str, local: &str) -> bool {
    n.is_element() && n.tag_name().name() == local && n.tag_name().namespace() == Some(ns)
}

fn child<'a, 'i>(
    n: &roxmltree::Node<'a, 'i>,
    ns: &str,
    local: &str,
) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| is(c, ns, local))
}

fn text(n: &roxmltree::Node) -> String {
    n.descendants()
        .filter(|d| d.is_text())
        .filter_map(|d| d.text())
        .collect::<String>()
        .trim()
        .to_string()
}

/// `HTTP/1.1 404 Not Found` → 404.
fn status_code(s: &str) -> Option<u16> {
    s.split_whitespace().nth(1)?.parse().ok()
}

/// Parses a 207 body.
pub fn parse_multistatus(body: &[u8]) -> Result<Multistatus, WireError> {
    let text_body = std::str::from_utf8(body).map_err(|e| WireError(e.to_string()))?;
    let doc = roxmltree::Document::parse_with_options(
        text_body,
        roxmltree::ParsingOptions {
            allow_dtd: false,
            ..Default::default()
        },
    )
    .map_err(|e| WireError(e.to_string()))?;
    let root = doc.root_element();
    if !is(&root, DAV, "multistatus") {
        return Err(WireError(format!(
            "the root element is {:?}",
            root.tag_name().name()
        )));
    }
    let mut out = Multistatus::default();
    for n in root.children().filter(|c| c.is_element()) {
        if is(&n, DAV, "sync-token") {
            out.sync_token = Some(text(&n)).filter(|t| !t.is_empty());
        } else if is(&n, DAV, "response") {
            out.responses.push(parse_response(&n)?);
        }
    }
    Ok(out)
}

fn parse_response(n: &roxmltree::Node) -> Result<Entry, WireError> {
    let href = child(n, DAV, "href")
        .map(|h| text(&h))
        .ok_or_else(|| WireError("a response without href".into()))?;
    let status = child(n, DAV, "status").and_then(|s| status_code(&text(&s)));
    let mut props = Props::default();
    for ps in n.children().filter(|c| is(c, DAV, "propstat")) {
        let ok = child(&ps, DAV, "status")
            .and_then(|s| status_code(&text(&s)))
            .is_none_or(|c| (200..300).contains(&c));
        let Some(prop) = child(&ps, DAV, "prop") else {
            continue;
        };
        if !ok {
            continue;
        }
        for p in prop.children().filter(|c| c.is_element()) {
            let ns = p.tag_name().namespace().unwrap_or("");
            match (ns, p.tag_name().name()) {
                (DAV, "getetag") => props.etag = Some(text(&p)).filter(|t| !t.is_empty()),
                (DAV, "resourcetype") => {
                    props.is_collection = child(&p, DAV, "collection").is_some();
                    props.is_addressbook = child(&p, CARDDAV, "addressbook").is_some();
                }
                (DAV, "displayname") => {
                    props.displayname = Some(text(&p)).filter(|t| !t.is_empty())
                }
                (DAV, "current-user-principal") => {
                    props.principal = child(&p, DAV, "href").map(|h| text(&h))
                }
                (CARDDAV, "addressbook-home-set") => {
                    props.home_sets = p
                        .children()
                        .filter(|c| is(c, DAV, "href"))
                        .map(|h| text(&h))
                        .collect()
                }
                (CARDDAV, "address-data") => {
                    // Not trimmed: a card is kept as the server sent it.
                    props.address_data = Some(
                        p.descendants()
                            .filter(|d| d.is_text())
                            .filter_map(|d| d.text())
                            .collect(),
                    )
                }
                (DAV, "supported-report-set") => {
                    props.reports_listed = true;
                    props.sync_collection = p.descendants().any(|d| is(&d, DAV, "sync-collection"));
                }
                _ => {}
            }
        }
    }
    Ok(Entry {
        href,
        status,
        props,
    })
}

/// Whether an error body names the `DAV:valid-sync-token` precondition (RFC 6578 §3.2).
/// Servers use 403 (sabre, Radicale), 409 or 412 (Xandikos) for it: the element decides.
pub fn is_invalid_sync_token(body: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(body) else {
        return false;
    };
    match roxmltree::Document::parse(s) {
        Ok(doc) => doc
            .descendants()
            .any(|d| d.is_element() && d.tag_name().name() == "valid-sync-token"),
        Err(_) => s.contains("valid-sync-token"),
    }
}

/// The path of an href (servers send absolute paths or full URLs), percent-decoded, for
/// comparing hrefs that different answers encode differently.
pub fn href_key(href: &str) -> String {
    let path = match url::Url::parse(href) {
        Ok(u) => u.path().to_string(),
        Err(_) => href.to_string(),
    };
    percent_decode(&path)
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as it is.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNC: &str = r#"<?xml version="1.0"?>
<D:multistatus xmlns:D="DAV:">
  <D:response><D:href>/ab/a.vcf</D:href>
    <D:propstat><D:prop><D:getetag>"e1"</D:getetag></D:prop>
      <D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>
  <D:response><D:href>/ab/b%20c.vcf</D:href><D:status>HTTP/1.1 404 Not Found</D:status></D:response>
  <D:sync-token>http://example.com/sync/20</D:sync-token>
</D:multistatus>"#;

    #[test]
    fn sync_report_lists_changes_removals_and_token() {
        let m = parse_multistatus(SYNC.as_bytes()).unwrap();
        assert_eq!(m.sync_token.as_deref(), Some("http://example.com/sync/20"));
        assert_eq!(m.responses.len(), 2);
        assert_eq!(m.responses[0].props.etag.as_deref(), Some("\"e1\""));
        assert_eq!(m.responses[0].status, None);
        assert_eq!(m.responses[1].status, Some(404));
        assert_eq!(href_key(&m.responses[1].href), "/ab/b c.vcf");
    }

    #[test]
    fn prefixes_do_not_matter_namespaces_do() {
        let body = r#"<multistatus xmlns="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav">
<response><href>/u/</href><propstat><prop>
<current-user-principal><href>/principals/u/</href></current-user-principal>
<card:addressbook-home-set><href>/u/books/</href></card:addressbook-home-set>
<resourcetype><collection/><card:addressbook/></resourcetype>
<x:getetag xmlns:x="urn:other">"not-dav"</x:getetag>
</prop><status>HTTP/1.1 200 OK</status></propstat>
<propstat><prop><displayname/></prop><status>HTTP/1.1 404 Not Found</status></propstat>
</response></multistatus>"#;
        let m = parse_multistatus(body.as_bytes()).unwrap();
        let p = &m.responses[0].props;
        assert_eq!(p.principal.as_deref(), Some("/principals/u/"));
        assert_eq!(p.home_sets, ["/u/books/"]);
        assert!(p.is_collection && p.is_addressbook);
        assert_eq!(p.etag, None);
        assert_eq!(p.displayname, None);
    }

    #[test]
    fn invalid_sync_token_is_recognised_by_element() {
        let b = br#"<?xml version="1.0"?><d:error xmlns:d="DAV:"><d:valid-sync-token/></d:error>"#;
        assert!(is_invalid_sync_token(b));
        assert!(!is_invalid_sync_token(
            b"<d:error xmlns:d=\"DAV:\"><d:other/></d:error>"
        ));
    }

    #[test]
    fn malformed_multistatus_is_an_error() {
        assert!(parse_multistatus(b"<html>oops</html>").is_err());
        assert!(parse_multistatus(
            b"<d:multistatus xmlns:d=\"DAV:\"><d:response/></d:multistatus>"
        )
        .is_err());
        assert!(parse_multistatus(b"\xff\xfe").is_err());
    }

    #[test]
    fn request_bodies_escape_hrefs_and_tokens() {
        assert!(multiget(&["/a&b.vcf"]).contains("<d:href>/a&amp;b.vcf</d:href>"));
        assert!(sync_collection(Some("t<1>"), false)
            .contains("<d:sync-token>t&lt;1&gt;</d:sync-token>"));
        assert!(sync_collection(None, false).contains("<d:sync-token></d:sync-token>"));
        assert!(sync_collection(None, true).contains("<c:address-data/>"));
        assert!(!sync_collection(None, false).contains("address-data"));
    }

    proptest::proptest! {
        /// Malformed WebDAV answers are errors, never panics.
        #[test]
        fn carddav_bad_multistatus_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = parse_multistatus(&body);
            let _ = is_invalid_sync_token(&body);
            let _ = href_key(&String::from_utf8_lossy(&body));
        }
    }
}
