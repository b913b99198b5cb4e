//! Reading a mailbox: folder discovery, per-folder delta with paging and delta links, the
//! photo-id listing, and the round that puts them together.

use std::collections::{HashMap, HashSet, VecDeque};

use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::Value;

use super::map::{map_contact_with_base, row_outcome, seg, RowOutcome};
use super::wire::{Folder, GraphContact, FOLDER_SELECT, HAS_PICTURE, PHOTO_LIST_TOP, SELECT};
use super::{GraphClient, GraphCursor, MAX_IN_FLIGHT};
use crate::model::{Change, Progress};
use crate::providers::{send_page, send_whole, PageSink, ProgressFn, ProviderError, Round};

/// How often one folder may be restarted from scratch within a round (expired links).
const MAX_FOLDER_RESTARTS: u32 = 2;

/// How listing one folder ended.
enum FolderOutcome {
    Done {
        changes: Vec<Change>,
        delta_link: String,
    },
    /// The delta link or a skip token expired: list the folder again in full.
    Expired,
}

/// Where a streamed full listing sends a folder's pages ([`GraphClient::stream_round`]),
/// and what it holds back until every folder is listed.
pub(super) struct FolderStream<'a> {
    sink: &'a PageSink,
    /// The listing's announced total (see [`GraphClient::count_contacts`]).
    total: u64,
    /// The folder being listed (its position among the folders).
    folder: usize,
    /// The folder's contacts known to have a photo: photo URLs are kept only for those.
    with_photo: Option<HashSet<String>>,
    /// Where each contact was last listed: (folder, position in the listing, whether as
    /// an upsert).
    listed: HashMap<String, (usize, u64, bool)>,
    /// Removals with (folder, position): held until the end, when the whole listing is
    /// known (a contact moved between folders while they were listed is removed from one).
    removed: Vec<(String, usize, u64)>,
    position: u64,
}

impl<'a> FolderStream<'a> {
    pub(super) fn new(sink: &'a PageSink, total: u64) -> Self {
        FolderStream {
            sink,
            total,
            folder: 0,
            with_photo: None,
            listed: HashMap::new(),
            removed: vec![],
            position: 0,
        }
    }

    /// The folder the next pages come from (its position among the folders).
    pub(super) fn set_folder(&mut self, folder: usize, with_photo: Option<HashSet<String>>) {
        self.folder = folder;
        self.with_photo = with_photo;
    }

    /// Sends one page's changes, holding back its removals.
    pub(super) async fn send(&mut self, changes: Vec<Change>) -> Result<(), ProviderError> {
        let mut out = Vec::with_capacity(changes.len());
        for mut c in changes {
            self.position += 1;
            match &mut c {
                Change::Deleted { provider_id } => {
                    self.removed
                        .push((std::mem::take(provider_id), self.folder, self.position));
                    continue;
                }
                // A photo URL only for a contact known to have a photo.
                Change::Upsert(pc)
                    if !self
                        .with_photo
                        .as_ref()
                        .is_some_and(|s| s.contains(&pc.provider_id)) =>
                {
                    pc.photo_url = None;
                }
                _ => {}
            }
            let upsert = matches!(c, Change::Upsert(_));
            self.listed.insert(
                c.provider_id().to_string(),
                (self.folder, self.position, upsert),
            );
            out.push(c);
        }
        send_page(self.sink, out, Some(self.total)).await
    }

    /// The held removals that stand once every folder is listed, decided as [`dedupe`]
    /// decides for a round fetched whole: a contact's removal stands when it was never
    /// listed, or when a removal came after its last listing, from the same folder if that
    /// listing was an upsert (a removal from another folder is a move). (Graph's rows are
    /// upserts and removals; any other change counts as a listing that is not an upsert.)
    pub(super) fn removals(&mut self) -> Vec<Change> {
        let mut by_contact: HashMap<String, Vec<(usize, u64)>> = HashMap::new();
        let mut order = vec![];
        for (pid, folder, pos) in std::mem::take(&mut self.removed) {
            let e = by_contact.entry(pid.clone()).or_default();
            if e.is_empty() {
                order.push(pid);
            }
            e.push((folder, pos));
        }
        order
            .into_iter()
            .filter(|pid| match self.listed.get(pid) {
                None => true,
                Some(&(folder, pos, upsert)) => by_contact[pid]
                    .iter()
                    .any(|&(f, p)| p > pos && (!upsert || f == folder)),
            })
            .map(|provider_id| Change::Deleted { provider_id })
            .collect()
    }
}

impl GraphClient {
    /// The default Contacts folder's id: the well-known name `contacts`; when the mailbox
    /// does not resolve it, the parent of a top-level folder, else the folder of a contact.
    async fn default_folder(&self) -> Result<String, ProviderError> {
        let url = format!(
            "{}/me/contactFolders/contacts?$select={FOLDER_SELECT}",
            self.api_base
        );
        match self.get_json::<Folder>(&url).await? {
            Ok(f) => return Ok(f.id),
            Err(e) if matches!(e.status.as_u16(), 400 | 404) => {
                tracing::info!(
                    status = e.status.as_u16(),
                    "well-known folder name `contacts` not resolved; using a fallback"
                );
            }
            Err(e) => return Err(e.into_provider_error("the default contact folder lookup")),
        }
        #[derive(Deserialize)]
        struct Parent {
            #[serde(rename = "parentFolderId")]
            parent_folder_id: Option<String>,
        }
        #[derive(Deserialize)]
        struct Parents {
            #[serde(default)]
            value: Vec<Parent>,
        }
        for url in [
            format!(
                "{}/me/contactFolders?$select=id,parentFolderId",
                self.api_base
            ),
            format!(
                "{}/me/contacts?$top=1&$select=parentFolderId",
                self.api_base
            ),
        ] {
            let list = self
                .get_json::<Parents>(&url)
                .await?
                .map_err(|e| e.into_provider_error("the default contact folder lookup"))?;
            if let Some(id) = list.value.into_iter().find_map(|p| p.parent_folder_id) {
                return Ok(id);
            }
        }
        Err(ProviderError::Permanent(
            "Cannot find the mailbox's default Contacts folder.".into(),
        ))
    }

    /// The default Contacts folder and all folders below it, parents before children.
    async fn discover_folders(&self) -> Result<Vec<String>, ProviderError> {
        let root = self.default_folder().await?;
        let mut seen = HashSet::from([root.clone()]);
        let mut out = vec![root.clone()];
        let mut queue = VecDeque::from([root]);
        while let Some(parent) = queue.pop_front() {
            let mut url = format!(
                "{}/me/contactFolders/{}/childFolders?$select={FOLDER_SELECT}",
                self.api_base,
                seg(&parent)
            );
            loop {
                let page = self
                    .get_page(&url, false)
                    .await?
                    .map_err(|e| e.into_provider_error("a child folder listing"))?;
                for v in page.value {
                    let f: Folder = serde_json::from_value(v).map_err(|e| {
                        ProviderError::Transient(format!(
                            "Microsoft Graph sent a malformed folder: {e}."
                        ))
                    })?;
                    if seen.insert(f.id.clone()) {
                        out.push(f.id.clone());
                        queue.push_back(f.id);
                    }
                }
                match page.next_link {
                    Some(n) => url = n,
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// Looks up a folder that discovery did not find below the default folder: `Some(parent
    /// id)` when it still exists elsewhere (a folder the user deleted sits in Deleted
    /// Items), `None` on a 404 `ErrorItemNotFound`. Any other answer fails the round.
    async fn folder_parent(&self, id: &str) -> Result<Option<String>, ProviderError> {
        let url = format!(
            "{}/me/contactFolders/{}?$select=id,parentFolderId",
            self.api_base,
            seg(id)
        );
        match self.get_json::<Value>(&url).await? {
            Ok(v) => Ok(Some(
                v.get("parentFolderId")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            )),
            Err(e) if e.item_not_found() => Ok(None),
            Err(e) => Err(e.into_provider_error("a contact folder lookup")),
        }
    }

    /// The URL listing the ids of a folder's contacts that have a photo (PidLidHasPicture
    /// TRUE). Contact `delta` refuses `$filter` and `$expand`, so this is a plain listing.
    pub fn photo_list_url(&self, folder: &str) -> String {
        let filter = format!(
            "singleValueExtendedProperties/Any(ep: ep/id eq '{HAS_PICTURE}' and ep/value eq 'true')"
        );
        let filter: String = url::form_urlencoded::byte_serialize(filter.as_bytes()).collect();
        format!(
            "{}/me/contactFolders/{}/contacts?$filter={filter}&$select=id&$top={PHOTO_LIST_TOP}",
            self.api_base,
            seg(folder)
        )
    }

    /// The ids of the contacts of `folder` that have a photo, following next links. `None`
    /// when the mailbox refuses the query (4xx): then no photo is known and none is asked
    /// for.
    async fn photo_ids(&self, folder: &str) -> Result<Option<HashSet<String>>, ProviderError> {
        let mut url = self.photo_list_url(folder);
        let mut ids = HashSet::new();
        loop {
            let page = match self.get_page(&url, false).await? {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(folder, error = %e.describe(), "Graph refused the listing of contacts with a photo; photos of this folder are not fetched");
                    return Ok(None);
                }
            };
            for v in page.value {
                if let Some(id) = v.get("id").and_then(Value::as_str) {
                    ids.insert(id.to_string());
                }
            }
            match page.next_link {
                Some(n) => url = n,
                None => return Ok(Some(ids)),
            }
        }
    }

    fn delta_start(&self, folder: &str) -> String {
        format!(
            "{}/me/contactFolders/{}/contacts/delta?$select={SELECT}",
            self.api_base,
            seg(folder)
        )
    }

    /// Fetches a contact in full (after a partial delta row). `None`: it no longer exists.
    async fn get_contact(&self, id: &str) -> Result<Option<GraphContact>, ProviderError> {
        let url = format!("{}/me/contacts/{}?$select={SELECT}", self.api_base, seg(id));
        match self.get_json::<GraphContact>(&url).await? {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.item_not_found() => Ok(None),
            Err(e) => Err(e.into_provider_error("a contact lookup")),
        }
    }

    /// Turns one page's rows into changes, fetching partial rows in full.
    pub(super) async fn page_changes(
        &self,
        folder: &str,
        rows: Vec<Value>,
    ) -> Result<Vec<Change>, ProviderError> {
        enum Row {
            Ready(Box<Change>),
            Fetch(String),
        }
        let mut parsed = Vec::with_capacity(rows.len());
        for row in rows {
            match row_outcome(row, folder, &self.api_base)? {
                RowOutcome::Ready(c) => parsed.push(Row::Ready(c)),
                RowOutcome::Fetch(id) => parsed.push(Row::Fetch(id)),
                RowOutcome::Skip => {
                    tracing::warn!(folder, "Graph sent a contact row without an id; ignored")
                }
            }
        }
        let fetches = parsed.iter().filter(|r| matches!(r, Row::Fetch(_))).count();
        if fetches > 0 {
            tracing::debug!(folder, fetches, "fetching partial delta rows in full");
        }
        let results: Vec<Result<Change, ProviderError>> = stream::iter(parsed)
            .map(|row| async move {
                match row {
                    Row::Ready(c) => Ok(*c),
                    Row::Fetch(id) => Ok(match self.get_contact(&id).await? {
                        Some(c) => {
                            let mut pc = map_contact_with_base(&c, folder, &self.api_base);
                            pc.provider_id = id;
                            Change::Upsert(pc)
                        }
                        None => Change::Deleted { provider_id: id },
                    }),
                }
            })
            .buffered(MAX_IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Follows one folder's delta from `start` to its delta link.
    async fn list_folder(
        &self,
        folder: &str,
        start: String,
        progress: &ProgressFn,
        counters: &mut Progress,
        mut stream: Option<&mut FolderStream<'_>>,
    ) -> Result<FolderOutcome, ProviderError> {
        let mut url = start;
        let mut changes = Vec::new();
        loop {
            let page = match self.get_page(&url, true).await? {
                Ok(p) => p,
                Err(e) if e.sync_state_lost() => {
                    tracing::info!(
                        folder,
                        status = e.status.as_u16(),
                        "Graph delta state expired"
                    );
                    return Ok(FolderOutcome::Expired);
                }
                Err(e) => return Err(e.into_provider_error("a contact delta request")),
            };
            let rows = page.value.len();
            let listed = self.page_changes(folder, page.value).await?;
            match stream.as_deref_mut() {
                Some(s) => s.send(listed).await?,
                None => changes.extend(listed),
            }
            counters.pages += 1;
            counters.contacts += rows as u64;
            progress(counters.clone());
            match (page.next_link, page.delta_link) {
                (Some(n), _) => url = n,
                (None, Some(d)) => {
                    return Ok(FolderOutcome::Done {
                        changes,
                        delta_link: d,
                    })
                }
                (None, None) => unreachable!("checked when parsing the page"),
            }
        }
    }

    /// Lists one folder to its delta link, from its stored `link` or (`None`) in full,
    /// listing it again in full when the delta state expires (at most
    /// [`MAX_FOLDER_RESTARTS`] times). Returns the changes (none when `stream` took them),
    /// the new delta link, and whether the folder was listed in full.
    async fn list_folder_through(
        &self,
        folder: &str,
        mut link: Option<String>,
        progress: &ProgressFn,
        counters: &mut Progress,
        mut stream: Option<&mut FolderStream<'_>>,
    ) -> Result<(Vec<Change>, String, bool), ProviderError> {
        let mut restarts = 0;
        loop {
            let full = link.is_none();
            let start = match link.take() {
                // A link to another host (the API base was changed in the config): list
                // the folder afresh rather than send the token elsewhere.
                Some(l) if self.check_link(&l).is_err() => {
                    tracing::warn!(folder = %folder, "stored delta link points at another host; listing the folder in full");
                    continue;
                }
                Some(l) => l,
                None => self.delta_start(folder),
            };
            match self
                .list_folder(folder, start, progress, counters, stream.as_deref_mut())
                .await?
            {
                FolderOutcome::Done {
                    changes,
                    delta_link,
                } => return Ok((changes, delta_link, full)),
                // Listed again from the start. Pages a stream already sent are sent again,
                // which planning takes as replays.
                FolderOutcome::Expired => {
                    restarts += 1;
                    if restarts > MAX_FOLDER_RESTARTS {
                        return Err(ProviderError::Transient(format!(
                            "The delta state of contact folder {folder} kept expiring."
                        )));
                    }
                }
            }
        }
    }

    /// How many contacts `folders` hold, by `$count`: an upper bound of what a full listing
    /// returns, since it also counts the mailbox's contact lists, which the contacts
    /// endpoints never return (microsoftgraph/microsoft-graph-docs#11201). `None` when a
    /// folder's count is refused or missing.
    async fn count_contacts(&self, folders: &[String]) -> Result<Option<u64>, ProviderError> {
        #[derive(Deserialize)]
        struct Counted {
            #[serde(rename = "@odata.count")]
            count: Option<u64>,
        }
        let mut total = 0;
        for folder in folders {
            let url = format!(
                "{}/me/contactFolders/{}/contacts?$count=true&$top=1&$select=id",
                self.api_base,
                seg(folder)
            );
            match self.get_json::<Counted>(&url).await? {
                Ok(Counted { count: Some(n) }) => total += n,
                Ok(Counted { count: None }) => {
                    tracing::info!(folder = %folder, "Graph did not count a folder's contacts; the listing is collected whole");
                    return Ok(None);
                }
                Err(e) => {
                    tracing::info!(folder = %folder, error = %e.describe(), "Graph refused to count a folder's contacts; the listing is collected whole");
                    return Ok(None);
                }
            }
        }
        Ok(Some(total))
    }

    /// [`GraphClient::round`], handing the changes to `sink` page by page. A full listing
    /// (no cursor) announces the folders' `$count` as its total and sends each delta page
    /// as it arrives: each folder's photo ids are listed first, and removals are held until
    /// every folder is listed (then sent as [`dedupe`] would keep them). A delta round, or
    /// a listing whose folders are not counted, is fetched whole and sent as one page.
    pub(super) async fn stream_round(
        &self,
        cursor: Option<&[u8]>,
        progress: &ProgressFn,
        sink: PageSink,
    ) -> Result<Round, ProviderError> {
        if cursor.is_some() {
            let round = self.round(cursor, progress).await?;
            return send_whole(round, &sink).await;
        }
        let folders = self.discover_folders().await?;
        let Some(total) = self.count_contacts(&folders).await? else {
            let round = self.round_of(folders, None, progress).await?;
            return send_whole(round, &sink).await;
        };
        let mut counters = Progress::default();
        let mut next = GraphCursor::default();
        let mut stream = FolderStream::new(&sink, total);
        for (i, folder) in folders.iter().enumerate() {
            stream.set_folder(i, self.photo_ids(folder).await?);
            let (_, delta_link, _) = self
                .list_folder_through(folder, None, progress, &mut counters, Some(&mut stream))
                .await?;
            next.folders.insert(folder.clone(), delta_link);
        }
        let removals = stream.removals();
        if !removals.is_empty() {
            send_page(&sink, removals, Some(total)).await?;
        }
        tracing::info!(
            folders = folders.len(),
            total,
            pages = counters.pages,
            "Graph full listing streamed"
        );
        Ok(Round {
            full: true,
            changes: vec![],
            complete_scopes: folders,
            gone_scopes: vec![],
            cursor: next.encode(),
            pages: counters.pages,
        })
    }

    pub(super) async fn round(
        &self,
        cursor: Option<&[u8]>,
        progress: &ProgressFn,
    ) -> Result<Round, ProviderError> {
        let folders = self.discover_folders().await?;
        self.round_of(folders, cursor, progress).await
    }

    /// [`GraphClient::round`] over folders already discovered.
    async fn round_of(
        &self,
        folders: Vec<String>,
        cursor: Option<&[u8]>,
        progress: &ProgressFn,
    ) -> Result<Round, ProviderError> {
        let stored = match cursor {
            None => GraphCursor::default(),
            Some(b) => GraphCursor::decode(b).unwrap_or_else(|| {
                tracing::warn!("unreadable Graph cursor; listing every folder in full");
                GraphCursor::default()
            }),
        };
        let listed: HashSet<&String> = folders.iter().collect();
        let missing: Vec<String> = stored
            .folders
            .keys()
            .filter(|f| !listed.contains(f))
            .cloned()
            .collect();
        // A folder that left the tree under the default Contacts folder was deleted by the
        // user: Outlook moves a deleted folder to Deleted Items, where a lookup by id still
        // finds it. Either way its contacts are gone from the synced set (the deletion guard
        // still applies to what that means for the CRM).
        let mut gone = Vec::new();
        for f in missing {
            match self.folder_parent(&f).await? {
                Some(parent) => {
                    tracing::info!(folder = %f, parent = %parent, "contact folder left the default Contacts folder (deleted to Deleted Items, or moved out); its contacts count as deleted")
                }
                None => tracing::info!(folder = %f, "contact folder is gone"),
            }
            gone.push(f);
        }

        let mut counters = Progress::default();
        let mut next = GraphCursor::default();
        let mut complete = Vec::new();
        let mut changes = Vec::new();
        for folder in &folders {
            let link = stored.folders.get(folder).cloned();
            let (mut folder_changes, delta_link, listed_full) = self
                .list_folder_through(folder, link, progress, &mut counters, None)
                .await?;
            if listed_full {
                complete.push(folder.clone());
            }
            // A photo URL only for a contact known to have a photo: on a full listing, from
            // PidLidHasPicture; a delta round does not ask (photos are an initial-sync
            // matter, SPEC §3).
            let with_photo = if listed_full {
                self.photo_ids(folder).await?
            } else {
                None
            };
            for c in &mut folder_changes {
                if let Change::Upsert(pc) = c {
                    if !with_photo
                        .as_ref()
                        .is_some_and(|s| s.contains(&pc.provider_id))
                    {
                        pc.photo_url = None;
                    }
                }
            }
            tracing::debug!(folder = %folder, changes = folder_changes.len(), photos = with_photo.as_ref().map_or(0, HashSet::len), "folder listed");
            changes.extend(folder_changes.into_iter().map(|c| (folder.clone(), c)));
            next.folders.insert(folder.clone(), delta_link);
        }
        let changes = dedupe(changes);
        tracing::info!(
            folders = folders.len(),
            complete = complete.len(),
            gone = gone.len(),
            changes = changes.len(),
            pages = counters.pages,
            "Graph round fetched"
        );
        Ok(Round {
            full: !folders.is_empty() && complete.len() == folders.len(),
            changes,
            complete_scopes: complete,
            gone_scopes: gone,
            cursor: next.encode(),
            pages: counters.pages,
        })
    }
}

/// One change per contact id, given `(folder, change)` in listing order. Within a folder
/// the last change wins (replays, or a contact listed and then removed while paging). A
/// removal from one folder never beats an upsert from another: a contact moved between
/// folders shows up as removed from one and added to the other, in whichever order the
/// folders were listed.
pub(crate) fn dedupe(changes: Vec<(String, Change)>) -> Vec<Change> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Option<(String, Change)>> = Vec::with_capacity(changes.len());
    for (folder, c) in changes {
        let id = c.provider_id().to_string();
        if let Some(&i) = index.get(&id) {
            let (old_folder, old) = out[i].as_ref().expect("indexed entries are kept");
            let moved_away = matches!(old, Change::Upsert(_))
                && matches!(c, Change::Deleted { .. })
                && *old_folder != folder;
            if moved_away {
                continue;
            }
            out[i] = None;
        }
        index.insert(id, out.len());
        out.push(Some((folder, c)));
    }
    out.into_iter().flatten().map(|(_, c)| c).collect()
}
