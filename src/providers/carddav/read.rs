//! Discovery and rounds.
//!
//! Discovery (RFC 6764 §6): PROPFIND the configured `url`; an address book is used as it
//! is; otherwise its `current-user-principal` leads to the `addressbook-home-set`, whose
//! members (PROPFIND Depth 1) that are address books are the account's books. When the
//! `url` gives no principal, `/.well-known/carddav` on its host is tried (redirects
//! followed by hand, at most 5), and last the `url` itself is listed as a home set.
//!
//! A round per book: `sync-collection` (RFC 6578) with the stored token, repeated while the
//! server reports truncation (507); an invalid or expired token (`valid-sync-token`, in a
//! 403, 409 or 412) drops the token and lists the book in full, which the account actor
//! matches by link first (`complete_scopes`). A server without `sync-collection` is listed
//! with PROPFIND `getetag` and compared with the etags kept in the cursor. The
//! `sync-collection` REPORT asks for the cards themselves (`address-data`), so a round is
//! one request per book; cards an answer does not carry (the etag listing, a server that
//! leaves `address-data` out, a listing too large to take at once) are fetched with
//! `addressbook-multiget`, [`super::MULTIGET_CHUNK`] at a time.

use std::collections::{BTreeMap, HashMap};

use reqwest::header::{HeaderName, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};

use super::wire::{self, href_key, Multistatus};
use super::{map, status_error, Book, BookCursor, CardDavClient, Cursor, MULTIGET_CHUNK};
use crate::model::{Change, Progress, ProviderContact};
use crate::providers::transport::{redact, Request, Response};
use crate::providers::{ProgressFn, ProviderError, Round, MAX_PAGE_BYTES};

fn depth(d: &str) -> (HeaderName, &str) {
    (HeaderName::from_static("depth"), d)
}

fn xml(method: &str, url: url::Url, d: &str, body: String) -> Request {
    let m = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
    let (h, v) = depth(d);
    Request::new(m, url, MAX_PAGE_BYTES)
        .header(h, v)
        .header(CONTENT_TYPE, "application/xml; charset=utf-8")
        .body(body)
}

fn multistatus(what: &str, r: &Response) -> Result<Multistatus, ProviderError> {
    if r.status != StatusCode::MULTI_STATUS {
        return Err(status_error(what, r.status));
    }
    wire::parse_multistatus(&r.body).map_err(|e| ProviderError::Transient(e.to_string()))
}

/// The changes one book reported.
#[derive(Debug, Default)]
struct BookDelta {
    /// Changed or new cards: href → etag from the listing.
    changed: Vec<(String, Option<String>)>,
    /// Cards the listing carried already (href → card), which need no multiget.
    inline: HashMap<String, String>,
    removed: Vec<String>,
    full: bool,
    cursor: BookCursor,
    requests: u64,
}

/// The path part of an href, as the server sent it (full URLs reduced to their path).
fn href_path(href: &str) -> String {
    match url::Url::parse(href) {
        Ok(u) => u.path().to_string(),
        Err(_) => href.to_string(),
    }
}

impl CardDavClient {
    /// PROPFIND, following redirects by hand (each target must be an admitted origin or an
    /// https one, which is then admitted).
    async fn propfind(
        &self,
        mut url: url::Url,
        d: &str,
        body: &str,
    ) -> Result<(url::Url, Response), ProviderError> {
        for _ in 0..6 {
            let r = self
                .t
                .execute(&xml("PROPFIND", url.clone(), d, body.to_string()))
                .await?;
            if r.status.is_redirection() {
                let Some(loc) = r.header(&LOCATION) else {
                    return Ok((url, r));
                };
                let next = url.join(loc).map_err(|e| {
                    ProviderError::Permanent(format!(
                        "Invalid redirect from {}: {e}.",
                        redact(&url)
                    ))
                })?;
                self.t.admit(&next)?;
                url = next;
                continue;
            }
            return Ok((url, r));
        }
        Err(ProviderError::Permanent(format!(
            "Too many redirects from {}.",
            redact(&url)
        )))
    }

    /// Discovers the account's address books (filtered by `address_book`).
    pub(super) async fn discover(&self) -> Result<Vec<Book>, ProviderError> {
        let mut found = self.discover_all().await?;
        found.sort_by(|a, b| a.url.as_str().cmp(b.url.as_str()));
        found.dedup_by(|a, b| a.url == b.url);
        if let Some(want) = &self.address_book {
            let names: Vec<String> = found.iter().map(book_label).collect();
            found.retain(|b| {
                last_segment(&b.url) == want.as_str() || b.display_name.as_deref() == Some(want)
            });
            if found.is_empty() {
                return Err(ProviderError::Permanent(format!(
                    "No address book named {want:?} at {}; found: {}.",
                    redact(&self.url),
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                )));
            }
        }
        if found.is_empty() {
            return Err(ProviderError::Permanent(format!(
                "No CardDAV address book found at {}.",
                redact(&self.url)
            )));
        }
        Ok(found)
    }

    async fn discover_all(&self) -> Result<Vec<Book>, ProviderError> {
        let (at, r) = self
            .propfind(self.url.clone(), "0", wire::PROPFIND_DISCOVERY)
            .await?;
        let mut principal_home: Option<Vec<url::Url>> = None;
        if r.status == StatusCode::MULTI_STATUS {
            let ms = multistatus("PROPFIND", &r)?;
            if let Some(e) = ms.responses.first() {
                if e.props.is_addressbook {
                    return Ok(vec![book_of(&at, e)?]);
                }
            }
            principal_home = self.home_sets_from(&at, &ms).await?;
        } else if r.status != StatusCode::NOT_FOUND && r.status != StatusCode::METHOD_NOT_ALLOWED {
            return Err(status_error("PROPFIND (discovery)", r.status));
        }
        if principal_home.is_none() {
            // RFC 6764 §5: the well-known URI of the host.
            if let Ok(wk) = self.url.join("/.well-known/carddav") {
                let (at, r) = self.propfind(wk, "0", wire::PROPFIND_DISCOVERY).await?;
                if r.status == StatusCode::MULTI_STATUS {
                    let ms = multistatus("PROPFIND", &r)?;
                    principal_home = self.home_sets_from(&at, &ms).await?;
                }
            }
        }
        // Last resort: the url is itself a home set.
        let homes = principal_home.unwrap_or_else(|| vec![self.url.clone()]);
        let mut books = vec![];
        for home in homes {
            self.t.admit(&home)?;
            let (at, r) = self.propfind(home, "1", wire::PROPFIND_BOOKS).await?;
            let ms = multistatus("PROPFIND (address books)", &r)?;
            for e in ms.responses.iter().filter(|e| e.props.is_addressbook) {
                books.push(book_of(&at, e)?);
            }
        }
        Ok(books)
    }

    /// Home sets named by a PROPFIND answer, directly or through its principal.
    async fn home_sets_from(
        &self,
        at: &url::Url,
        ms: &Multistatus,
    ) -> Result<Option<Vec<url::Url>>, ProviderError> {
        let Some(e) = ms.responses.first() else {
            return Ok(None);
        };
        let join = |h: &str| {
            at.join(h)
                .map_err(|err| ProviderError::Permanent(format!("Invalid href {h:?}: {err}.")))
        };
        if !e.props.home_sets.is_empty() {
            return e
                .props
                .home_sets
                .iter()
                .map(|h| join(h))
                .collect::<Result<_, _>>()
                .map(Some);
        }
        let Some(p) = &e.props.principal else {
            return Ok(None);
        };
        let principal = join(p)?;
        self.t.admit(&principal)?;
        let (pat, r) = self
            .propfind(principal, "0", wire::PROPFIND_DISCOVERY)
            .await?;
        let ms = multistatus("PROPFIND (principal)", &r)?;
        let homes: Vec<url::Url> = match ms.responses.first() {
            Some(e) => e
                .props
                .home_sets
                .iter()
                .map(|h| {
                    pat.join(h).map_err(|err| {
                        ProviderError::Permanent(format!("Invalid href {h:?}: {err}."))
                    })
                })
                .collect::<Result<_, _>>()?,
            None => vec![],
        };
        Ok((!homes.is_empty()).then_some(homes))
    }

    /// One round over every book.
    pub(super) async fn list_round(
        &self,
        cursor: Option<&[u8]>,
        progress: &ProgressFn,
    ) -> Result<Round, ProviderError> {
        let books = self.books().await?;
        let old = Cursor::decode(cursor);
        let mut round = Round::default();
        let mut next = Cursor::default();
        let mut fetched = 0u64;
        for book in &books {
            let scope = book.scope();
            let state = old.books.get(&scope).cloned().unwrap_or_default();
            let delta = self.book_delta(book, state).await?;
            round.pages += delta.requests;
            if delta.full {
                round.full = true;
                round.complete_scopes.push(scope.clone());
            }
            for href in delta.removed {
                round.changes.push(Change::Deleted { provider_id: href });
            }
            let mut inline = delta.inline;
            let mut to_fetch = vec![];
            for (href, etag) in delta.changed {
                match inline.remove(&href) {
                    Some(text) => {
                        fetched += 1;
                        round.changes.push(self.to_change(book, &href, &text, etag));
                    }
                    None => to_fetch.push((href, etag)),
                }
            }
            progress(Progress {
                pages: round.pages,
                contacts: fetched,
                total: None,
            });
            for chunk in to_fetch.chunks(MULTIGET_CHUNK) {
                let cards = self.multiget(book, chunk).await?;
                round.pages += 1;
                fetched += cards.len() as u64;
                round.changes.extend(cards);
                progress(Progress {
                    pages: round.pages,
                    contacts: fetched,
                    total: None,
                });
            }
            next.books.insert(scope, delta.cursor);
        }
        round.cursor = next.encode();
        Ok(round)
    }

    async fn book_delta(&self, book: &Book, state: BookCursor) -> Result<BookDelta, ProviderError> {
        if book.sync_collection == Some(false) {
            return self.etag_listing(book, state).await;
        }
        let mut token = state.token.clone();
        let mut delta = BookDelta {
            full: token.is_none(),
            ..Default::default()
        };
        let mut reset = false;
        // Cards come with the listing unless that answer grows too large (photos in a
        // big book): then etags only, and multiget in chunks.
        let mut with_data = true;
        let start_token = token.clone();
        loop {
            let sent = self
                .t
                .execute(&xml(
                    "REPORT",
                    book.url.clone(),
                    "0",
                    wire::sync_collection(token.as_deref(), with_data),
                ))
                .await;
            let r = match sent {
                Err(e) if with_data && crate::providers::transport::is_oversize(&e) => {
                    tracing::info!(book = %book.scope(), "The listing with cards is too large; listing etags only.");
                    with_data = false;
                    token = start_token.clone();
                    delta = BookDelta {
                        full: token.is_none(),
                        requests: delta.requests + 1,
                        ..Default::default()
                    };
                    continue;
                }
                other => other?,
            };
            delta.requests += 1;
            if r.status != StatusCode::MULTI_STATUS {
                if r.status.is_client_error() && wire::is_invalid_sync_token(&r.body) && !reset {
                    tracing::info!(book = %book.scope(), "The server rejected the sync token; listing the address book in full.");
                    reset = true;
                    token = None;
                    delta = BookDelta {
                        full: true,
                        requests: delta.requests,
                        ..Default::default()
                    };
                    continue;
                }
                if token.is_none()
                    && matches!(r.status.as_u16(), 400 | 403 | 405 | 409 | 412 | 415 | 501)
                {
                    // No sync-collection here: compare etag listings instead.
                    tracing::info!(book = %book.scope(), status = r.status.as_u16(), "The server does not support sync-collection; comparing etag listings.");
                    let mut d = self.etag_listing(book, state).await?;
                    d.requests += delta.requests;
                    return Ok(d);
                }
                return Err(status_error("sync-collection REPORT", r.status));
            }
            let ms = wire::parse_multistatus(&r.body)
                .map_err(|e| ProviderError::Transient(e.to_string()))?;
            let own = href_key(book.url.path());
            let mut truncated = false;
            for e in ms.responses {
                if href_key(&e.href).trim_end_matches('/') == own.trim_end_matches('/') {
                    truncated |= e.status == Some(507);
                    continue;
                }
                if e.status == Some(404) || e.status == Some(410) {
                    delta.removed.push(href_path(&e.href));
                } else if e.props.is_collection {
                    continue;
                } else {
                    let href = href_path(&e.href);
                    if let Some(data) = e.props.address_data {
                        delta.inline.insert(href.clone(), data);
                    }
                    delta.changed.push((href, e.props.etag));
                }
            }
            let new_token = ms.sync_token;
            let progressed = new_token.is_some() && new_token != token;
            token = new_token;
            if !(truncated && progressed) {
                break;
            }
        }
        // A card listed twice (truncated pages) is fetched once; a later removal wins.
        let mut seen = HashMap::new();
        for (i, (h, _)) in delta.changed.iter().enumerate() {
            seen.insert(h.clone(), i);
        }
        let removed: std::collections::HashSet<String> = delta.removed.iter().cloned().collect();
        let changed = std::mem::take(&mut delta.changed);
        delta.changed = changed
            .into_iter()
            .enumerate()
            .filter(|(i, (h, _))| seen.get(h) == Some(i) && !removed.contains(h))
            .map(|(_, c)| c)
            .collect();
        delta.cursor = BookCursor { token, etags: None };
        Ok(delta)
    }

    /// The fallback for servers without `sync-collection`: PROPFIND every member's etag and
    /// compare with the last listing.
    async fn etag_listing(
        &self,
        book: &Book,
        state: BookCursor,
    ) -> Result<BookDelta, ProviderError> {
        let (_, r) = self
            .propfind(book.url.clone(), "1", wire::PROPFIND_ETAGS)
            .await?;
        let ms = multistatus("PROPFIND (etag listing)", &r)?;
        let own = href_key(book.url.path());
        let mut now = BTreeMap::new();
        for e in ms.responses {
            if href_key(&e.href).trim_end_matches('/') == own.trim_end_matches('/')
                || e.props.is_collection
            {
                continue;
            }
            now.insert(href_path(&e.href), e.props.etag.unwrap_or_default());
        }
        let full = state.etags.is_none();
        let before = state.etags.unwrap_or_default();
        let changed = now
            .iter()
            .filter(|(h, e)| full || e.is_empty() || before.get(*h) != Some(*e))
            .map(|(h, e)| (h.clone(), Some(e.clone()).filter(|e| !e.is_empty())))
            .collect();
        let removed = before
            .keys()
            .filter(|h| !now.contains_key(*h))
            .cloned()
            .collect();
        Ok(BookDelta {
            changed,
            inline: HashMap::new(),
            removed,
            full,
            cursor: BookCursor {
                token: None,
                etags: Some(now),
            },
            requests: 1,
        })
    }

    /// Fetches and maps cards; hrefs the server does not answer for are fetched one by one.
    async fn multiget(
        &self,
        book: &Book,
        chunk: &[(String, Option<String>)],
    ) -> Result<Vec<Change>, ProviderError> {
        let hrefs: Vec<&str> = chunk.iter().map(|(h, _)| h.as_str()).collect();
        let r = self
            .t
            .execute(&xml(
                "REPORT",
                book.url.clone(),
                "0",
                wire::multiget(&hrefs),
            ))
            .await?;
        let ms = multistatus("addressbook-multiget REPORT", &r)?;
        let mut by_key: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
        let mut gone = std::collections::HashSet::new();
        for e in ms.responses {
            let k = href_key(&e.href);
            if matches!(e.status, Some(404) | Some(410)) {
                gone.insert(k);
            } else if let Some(data) = e.props.address_data {
                by_key.entry(k).or_insert((Some(data), e.props.etag));
            }
        }
        let mut out = Vec::with_capacity(chunk.len());
        for (href, listed_etag) in chunk {
            let k = href_key(href);
            let (data, etag) = match by_key.remove(&k) {
                Some((data, etag)) => (data, etag.or_else(|| listed_etag.clone())),
                None if gone.contains(&k) => continue,
                None => match self.get_card(book, href).await? {
                    Some((text, etag)) => (Some(text), etag.or_else(|| listed_etag.clone())),
                    None => continue,
                },
            };
            out.push(self.to_change(book, href, data.as_deref().unwrap_or(""), etag));
        }
        Ok(out)
    }

    /// GETs one card: `None` when it is gone.
    pub(super) async fn get_card(
        &self,
        book: &Book,
        href: &str,
    ) -> Result<Option<(String, Option<String>)>, ProviderError> {
        let u = book.url.join(href).map_err(|e| {
            ProviderError::Permanent(format!("The server sent an invalid href {href:?}: {e}."))
        })?;
        let r = self
            .t
            .execute(&Request::new(Method::GET, u, super::MAX_CARD_BYTES))
            .await?;
        match r.status {
            s if s.is_success() => {
                let etag = r.header(&reqwest::header::ETAG).map(str::to_string);
                Ok(Some((String::from_utf8_lossy(&r.body).into_owned(), etag)))
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => Ok(None),
            s => Err(status_error("GET", s)),
        }
    }

    fn to_change(&self, book: &Book, href: &str, text: &str, etag: Option<String>) -> Change {
        match map::parse(text) {
            Some(card) => {
                let m = map::map(&card, text, &self.url);
                Change::Upsert(ProviderContact {
                    provider_id: href.to_string(),
                    etag,
                    scope: book.scope(),
                    fields: m.fields,
                    photo_url: m.photo,
                })
            }
            None => {
                tracing::info!(provider_id = %href, "Card is not a valid vCard; skipped.");
                Change::Unparseable {
                    provider_id: href.to_string(),
                    etag,
                }
            }
        }
    }
}

fn last_segment(u: &url::Url) -> &str {
    u.path()
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("")
}

fn book_label(b: &Book) -> String {
    match &b.display_name {
        Some(d) => format!("{} ({d})", last_segment(&b.url)),
        None => last_segment(&b.url).to_string(),
    }
}

fn book_of(at: &url::Url, e: &wire::Entry) -> Result<Book, ProviderError> {
    let mut url = at.join(&e.href).map_err(|err| {
        ProviderError::Permanent(format!("Invalid address book href {:?}: {err}.", e.href))
    })?;
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(Book {
        url,
        display_name: e.props.displayname.clone(),
        sync_collection: e.props.reports_listed.then_some(e.props.sync_collection),
    })
}
