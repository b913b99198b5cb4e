//! The sync core: a pure planner that turns a provider page into a [`Plan`] — the CRM
//! writes, links, base snapshots, metrics and audit events it causes — without doing any
//! I/O but reads through [`Db`]. The writer actor executes plans; `preview` prints them.
//!
//! Key concepts:
//! - **Eligibility** ([`eligibility`]): which provider contacts sync at all.
//! - **Matching**: link first (account + provider id), then name + email, name + phone,
//!   name + organisation, through the store's indexes; the oldest candidate wins.
//! - **Merging** ([`merge`]): field by field against the link's base snapshot.
//! - **Overlay**: writes planned earlier in the same page are visible to later changes, so
//!   two provider contacts of one page never create two CRM contacts for one person.

pub mod eligibility;
pub mod merge;
pub mod outbox;

use std::collections::HashMap;

/// The planner's maps: keyed by provider ids, emails and names from the provider, hashed
/// with foldhash (fast, seeded per process) instead of SipHash, which was about 5 % of
/// planning's CPU.
type FastMap<K, V> = foldhash::HashMap<K, V>;

use chrono::{DateTime, Utc};

use crate::audit::{self, AuditEvent};
use crate::config::{Direction, ProviderKind};
use crate::model::{
    field, Change, Company, CompanyId, Contact, ContactId, DayMetrics, Fields, LinkRecord, LinkRef,
    ProviderContact, SkipReason,
};
use crate::normalize;
use crate::store::{
    Batch, Db, IndexKind, Op, OutboxEntry, OutboxOp, SkipLabel, SkipMark, StoreError,
};

/// What the planner decided for one provider change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new CRM contact from a provider contact.
    Create {
        provider_id: String,
        crm_id: ContactId,
    },
    /// An existing CRM contact matched and linked; `changed` lists fields the merge added.
    Link {
        provider_id: String,
        crm_id: ContactId,
        changed: Vec<&'static str>,
        others: Vec<ContactId>,
    },
    /// A linked CRM contact updated from provider changes.
    Update {
        provider_id: String,
        crm_id: ContactId,
        changed: Vec<&'static str>,
    },
    /// Nothing to write to the CRM (replay, echo, or an irrelevant change).
    Unchanged {
        provider_id: String,
        crm_id: ContactId,
    },
    Delete {
        provider_id: String,
        crm_id: ContactId,
    },
    /// The link is dropped; the CRM contact stays.
    Unlink {
        provider_id: String,
        crm_id: ContactId,
    },
    Skip {
        provider_id: String,
        reason: SkipReason,
    },
    /// A deletion or departure of a contact we never linked, or a change to a contact the
    /// CRM deleted that does not bring it back.
    Ignore { provider_id: String },
    /// Two-way: CRM fields changed since the base, to send to the provider.
    Push {
        provider_id: String,
        crm_id: ContactId,
        fields: Vec<&'static str>,
    },
}

/// The outcome of planning one page.
#[derive(Debug, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub batch: Batch,
    pub metrics: DayMetrics,
    pub audit: Vec<AuditEvent>,
}

impl Plan {
    pub fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
        self.actions.iter().filter(|a| f(a)).count()
    }
}

/// The account a page belongs to, and how to plan it.
#[derive(Debug, Clone)]
pub struct PlanContext {
    pub account: String,
    pub provider: ProviderKind,
    pub direction: Direction,
    pub audit_values: bool,
    pub now: DateTime<Utc>,
    /// Accounts synced two-way: CRM changes a page causes reach their other links.
    pub two_way: Vec<String>,
}

/// What this plan wrote so far, for the changes planned after it. Contacts, links and base
/// snapshots are not copied: the overlay holds the position of their operation in the
/// plan's batch (`None`: deleted by this plan).
#[derive(Default)]
struct Overlay {
    contacts: FastMap<ContactId, Option<usize>>,
    links: FastMap<String, Option<usize>>,
    bases: FastMap<String, Option<usize>>,
    skips: FastMap<String, Option<SkipMark>>,
    outbox: FastMap<(String, ContactId), Option<OutboxEntry>>,
    companies: FastMap<String, CompanyId>,
    company_names: FastMap<CompanyId, String>,
    index: FastMap<(IndexKind, String, String), Vec<ContactId>>,
}

/// Plans pages against the CRM.
pub struct Planner<'a> {
    db: &'a Db,
    ctx: PlanContext,
    overlay: Overlay,
    plan: Plan,
    /// A dry run ([`creations`]): new ids come from this counter, not the store.
    dry_ids: Option<u64>,
}

type Keys = Vec<(IndexKind, String, String)>;

impl<'a> Planner<'a> {
    pub fn new(db: &'a Db, ctx: PlanContext) -> Self {
        Planner {
            db,
            ctx,
            overlay: Overlay::default(),
            plan: Plan::default(),
            dry_ids: None,
        }
    }

    /// A new id: from the store, or (dry run) from a private counter far above any real id.
    fn new_id(&mut self) -> Result<u64, StoreError> {
        match self.dry_ids.as_mut() {
            Some(n) => {
                *n -= 1;
                Ok(*n)
            }
            None => self.db.next_id(),
        }
    }

    /// Plans one change; may be called for many changes before [`Planner::finish`].
    pub fn add(&mut self, change: &Change, photo: Option<&Vec<u8>>) -> Result<(), StoreError> {
        match change {
            Change::Upsert(pc) => self.upsert(pc, photo),
            Change::Deleted { provider_id } => self.deleted(provider_id, false),
            Change::Left { provider_id } => self.deleted(provider_id, true),
            Change::Unreadable {
                provider_id,
                version,
                error,
            } => self.unreadable(provider_id, version, error),
            Change::Renamed { from, to } => self.renamed(from, to),
            Change::Unparseable { provider_id, etag } => self
                .skip(provider_id, etag, SkipReason::Unparseable)
                .map(|_| ()),
        }
    }

    /// The provider re-identified a contact: the link (and its base) moves to the new id,
    /// the CRM contact's link follows, and a pending deletion names the new id.
    fn renamed(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        let Some(link) = self.link(from)? else {
            self.plan.actions.push(Action::Ignore {
                provider_id: from.to_string(),
            });
            return Ok(());
        };
        if self.link(to)?.is_some() {
            // Both ids are linked already: nothing to move.
            self.plan.actions.push(Action::Ignore {
                provider_id: from.to_string(),
            });
            return Ok(());
        }
        let base = self.base(from)?;
        self.drop_link(from);
        let account = self.ctx.account.clone();
        match base {
            Some(b) => self.put_link(to, link.clone(), b),
            None => {
                let at = self.plan.batch.ops.len();
                self.overlay.links.insert(to.to_string(), Some(at));
                self.plan.batch.push(Op::PutLink {
                    account: account.clone(),
                    provider_id: to.to_string(),
                    link: link.clone(),
                });
            }
        }
        let id = link.contact_id;
        if let Some(mut contact) = self.contact(id)? {
            for l in contact.links.iter_mut() {
                if l.account == account && l.provider_id == from {
                    l.provider_id = to.to_string();
                }
            }
            contact.links.sort();
            contact.links.dedup();
            let keys = self.keys_of_contact(&contact)?;
            self.put_contact(contact, keys);
        }
        if let Some(mut e) = self.outbox_entry(&account, id)? {
            if matches!(&e.op, OutboxOp::Delete { provider_id } if provider_id == from) {
                e.op = OutboxOp::Delete {
                    provider_id: to.to_string(),
                };
                self.overlay
                    .outbox
                    .insert((account.clone(), id), Some(e.clone()));
                self.plan.batch.push(Op::PutOutbox(e));
            }
        }
        tracing::info!(account = %account, from, to, crm_id = id, "Provider re-identified a contact; link moved.");
        self.plan.actions.push(Action::Unchanged {
            provider_id: to.to_string(),
            crm_id: id,
        });
        Ok(())
    }

    /// A contact the provider sent in a shape we cannot read: skipped, counted and audited
    /// once per version. Nothing else changes (a linked CRM contact keeps its link).
    fn unreadable(&mut self, pid: &str, version: &str, error: &str) -> Result<(), StoreError> {
        let reason = SkipReason::Unreadable;
        let previous = match self.overlay.skips.get(pid) {
            Some(s) => s.clone(),
            None => self.db.skip(&self.ctx.account, pid)?,
        };
        let mark = SkipMark {
            reason,
            etag: Some(version.to_string()),
        };
        if previous.as_ref() != Some(&mark) {
            tracing::warn!(account = %self.ctx.account, provider_id = %pid, error = %error, "Provider sent a contact that cannot be read; skipped.");
            *self.plan.metrics.skipped.entry(reason).or_default() += 1;
            self.plan.audit.push(
                self.event(audit::Action::Skipped)
                    .provider_id(pid)
                    .reason(reason.as_str()),
            );
            self.overlay
                .skips
                .insert(pid.to_string(), Some(mark.clone()));
            self.plan.batch.push(Op::PutSkip {
                account: self.ctx.account.clone(),
                provider_id: pid.to_string(),
                skip: mark,
            });
        }
        self.plan.actions.push(Action::Skip {
            provider_id: pid.to_string(),
            reason,
        });
        Ok(())
    }

    pub fn finish(self) -> Plan {
        self.plan
    }

    // ---- reads through the overlay ----

    fn op(&self, at: usize) -> &Op {
        &self.plan.batch.ops[at]
    }

    fn contact(&self, id: ContactId) -> Result<Option<Contact>, StoreError> {
        match self.overlay.contacts.get(&id) {
            Some(Some(at)) => match self.op(*at) {
                Op::PutContact(c) => Ok(Some(c.clone())),
                _ => Ok(None),
            },
            Some(None) => Ok(None),
            None => self.db.contact(id),
        }
    }

    fn link(&self, pid: &str) -> Result<Option<LinkRecord>, StoreError> {
        match self.overlay.links.get(pid) {
            Some(Some(at)) => match self.op(*at) {
                Op::PutLink { link, .. } => Ok(Some(link.clone())),
                _ => Ok(None),
            },
            Some(None) => Ok(None),
            None => self.db.link(&self.ctx.account, pid),
        }
    }

    fn base(&self, pid: &str) -> Result<Option<Fields>, StoreError> {
        match self.overlay.bases.get(pid) {
            Some(Some(at)) => match self.op(*at) {
                Op::PutBase { base, .. } => Ok(Some(base.clone())),
                _ => Ok(None),
            },
            Some(None) => Ok(None),
            None => self.db.base(&self.ctx.account, pid),
        }
    }

    fn company_name(&self, id: CompanyId) -> Result<Option<String>, StoreError> {
        if let Some(n) = self.overlay.company_names.get(&id) {
            return Ok(Some(n.clone()));
        }
        Ok(self.db.company_name(id)?.map(|n| n.to_string()))
    }

    /// The CRM contact's synced fields, with its company by name.
    pub fn fields_of(&self, c: &Contact) -> Result<Fields, StoreError> {
        let organization = match c.company_id {
            Some(id) => self.company_name(id)?,
            None => None,
        };
        Ok(Fields::of(c, organization))
    }

    fn keys_of(&self, f: &Fields) -> Keys {
        keys_of(
            &f.first_name,
            &f.last_name,
            &f.emails,
            &f.phones,
            f.organization.as_deref(),
            self.db.region(),
        )
    }

    /// The index keys of a CRM contact as the store keeps them (its company by name).
    fn keys_of_contact(&self, c: &Contact) -> Result<Keys, StoreError> {
        let organization = match c.company_id {
            Some(id) => self.company_name(id)?,
            None => None,
        };
        Ok(keys_of(
            &c.first_name,
            &c.last_name,
            &c.emails,
            &c.phones,
            organization.as_deref(),
            self.db.region(),
        ))
    }

    /// Candidates for one key: from the store (verified against the overlay) and the overlay.
    fn candidates(&self, key: &(IndexKind, String, String)) -> Result<Vec<Contact>, StoreError> {
        let mut ids = self.db.candidates(key.0, &key.1, &key.2)?;
        if let Some(more) = self.overlay.index.get(key) {
            ids.extend(more);
        }
        ids.sort_unstable();
        ids.dedup();
        let mut out = vec![];
        for id in ids {
            let Some(c) = self.contact(id)? else { continue };
            if self.overlay.contacts.contains_key(&id) {
                // Changed in this plan: make sure it still has the key.
                if !self.keys_of_contact(&c)?.contains(key) {
                    continue;
                }
            }
            out.push(c);
        }
        Ok(out)
    }

    /// SPEC §4 matching, rule by rule; the oldest candidate wins.
    fn find_match(&self, keys: &Keys) -> Result<Option<(Contact, Vec<ContactId>)>, StoreError> {
        for kind in [
            IndexKind::NameEmail,
            IndexKind::NamePhone,
            IndexKind::NameOrg,
        ] {
            let mut found: Vec<Contact> = vec![];
            for key in keys.iter().filter(|k| k.0 == kind) {
                for c in self.candidates(key)? {
                    if !found.iter().any(|x| x.id == c.id) {
                        found.push(c);
                    }
                }
            }
            if !found.is_empty() {
                found.sort_by_key(|c| (c.created_at, c.id));
                let winner = found.remove(0);
                let others = found.iter().map(|c| c.id).collect();
                return Ok(Some((winner, others)));
            }
        }
        Ok(None)
    }

    // ---- writes into the overlay and the batch ----

    fn company_for(&mut self, name: &Option<String>) -> Result<Option<CompanyId>, StoreError> {
        let Some(name) = name else { return Ok(None) };
        let key = normalize::text_key(name);
        if let Some(id) = self.overlay.companies.get(&key) {
            return Ok(Some(*id));
        }
        if let Some(id) = self.db.company_by_name(name)? {
            return Ok(Some(id));
        }
        let id = self.new_id()?;
        self.overlay.companies.insert(key, id);
        self.overlay.company_names.insert(id, name.clone());
        self.plan.batch.push(Op::PutCompany(Company {
            id,
            name: name.clone(),
            created_at: self.ctx.now,
        }));
        Ok(Some(id))
    }

    /// Writes a contact; `keys` are its index keys (those of the version written).
    fn put_contact(&mut self, c: Contact, keys: Keys) {
        for key in keys {
            self.overlay.index.entry(key).or_default().push(c.id);
        }
        self.overlay
            .contacts
            .insert(c.id, Some(self.plan.batch.ops.len()));
        self.plan.batch.push(Op::PutContact(c));
    }

    fn put_link(&mut self, pid: &str, link: LinkRecord, base: Fields) {
        let at = self.plan.batch.ops.len();
        self.overlay.links.insert(pid.to_string(), Some(at));
        self.overlay.bases.insert(pid.to_string(), Some(at + 1));
        let account = self.ctx.account.clone();
        self.plan.batch.push(Op::PutLink {
            account: account.clone(),
            provider_id: pid.to_string(),
            link,
        });
        self.plan.batch.push(Op::PutBase {
            account,
            provider_id: pid.to_string(),
            base,
        });
    }

    fn drop_link(&mut self, pid: &str) {
        self.overlay.links.insert(pid.to_string(), None);
        self.overlay.bases.insert(pid.to_string(), None);
        let account = self.ctx.account.clone();
        self.plan.batch.push(Op::DeleteLink {
            account: account.clone(),
            provider_id: pid.to_string(),
        });
        self.plan.batch.push(Op::DeleteBase {
            account,
            provider_id: pid.to_string(),
        });
    }

    fn outbox_entry(
        &self,
        account: &str,
        contact: ContactId,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        match self.overlay.outbox.get(&(account.to_string(), contact)) {
            Some(e) => Ok(e.clone()),
            None => self.db.outbox_entry(account, contact),
        }
    }

    /// Queues a change for a two-way account's provider, coalescing with a pending one.
    fn enqueue(
        &mut self,
        account: &str,
        contact: ContactId,
        op: OutboxOp,
    ) -> Result<(), StoreError> {
        let existing = self.outbox_entry(account, contact)?;
        let entry = outbox::coalesce(existing, account, contact, op, self.ctx.now);
        self.overlay
            .outbox
            .insert((account.to_string(), contact), entry.clone());
        self.plan.batch.push(match entry {
            Some(e) => Op::PutOutbox(e),
            None => Op::DeleteOutbox {
                account: account.to_string(),
                contact,
            },
        });
        Ok(())
    }

    fn event(&self, action: audit::Action) -> AuditEvent {
        AuditEvent::new(&self.ctx.account, self.ctx.provider.as_str(), action)
    }

    fn values(&self, f: &Fields) -> Option<serde_json::Value> {
        self.ctx
            .audit_values
            .then(|| serde_json::to_value(f).unwrap_or_default())
    }

    fn this_link(&self, pid: &str) -> LinkRef {
        LinkRef {
            account: self.ctx.account.clone(),
            provider_id: pid.to_string(),
        }
    }

    /// Skips a provider contact (SPEC §3): counted and audited once per version, nothing
    /// written or deleted.
    /// Skips a provider contact; whether this version was new (counted and audited now).
    fn skip(
        &mut self,
        pid: &str,
        etag: &Option<String>,
        reason: SkipReason,
    ) -> Result<bool, StoreError> {
        let previous_skip = match self.overlay.skips.get(pid) {
            Some(s) => s.clone(),
            None => self.db.skip(&self.ctx.account, pid)?,
        };
        let mark = SkipMark {
            reason,
            etag: etag.clone(),
        };
        // A replay of the same version is not a new skip: count and audit it once.
        let new_version = previous_skip.as_ref() != Some(&mark);
        if new_version {
            *self.plan.metrics.skipped.entry(reason).or_default() += 1;
            self.plan.audit.push(
                self.event(audit::Action::Skipped)
                    .provider_id(pid)
                    .reason(reason.as_str()),
            );
            self.overlay
                .skips
                .insert(pid.to_string(), Some(mark.clone()));
            self.plan.batch.push(Op::PutSkip {
                account: self.ctx.account.clone(),
                provider_id: pid.to_string(),
                skip: mark,
            });
        }
        self.plan.actions.push(Action::Skip {
            provider_id: pid.to_string(),
            reason,
        });
        Ok(new_version)
    }

    fn upsert(&mut self, pc: &ProviderContact, photo: Option<&Vec<u8>>) -> Result<(), StoreError> {
        let pid = pc.provider_id.as_str();
        let previous_skip = match self.overlay.skips.get(pid) {
            Some(s) => s.clone(),
            None => self.db.skip(&self.ctx.account, pid)?,
        };
        // Eligibility is judged on what would be written: blank and repeated values removed.
        let provider = merge::clean(&pc.fields, self.db.region());
        if let Err(reason) = eligibility::check(&provider) {
            let new_version = self.skip(pid, &pc.etag, reason)?;
            if new_version {
                self.plan.batch.push(Op::PutSkipLabel {
                    account: self.ctx.account.clone(),
                    provider_id: pid.to_string(),
                    label: SkipLabel {
                        name: pc.fields.display_name(),
                        emails: pc.fields.emails.iter().take(10).cloned().collect(),
                        phones: pc.fields.phones.iter().take(10).cloned().collect(),
                    },
                });
            }
            return Ok(());
        }
        if previous_skip.is_some() {
            self.overlay.skips.insert(pid.to_string(), None);
            self.plan.batch.push(Op::DeleteSkip {
                account: self.ctx.account.clone(),
                provider_id: pid.to_string(),
            });
        }
        let link = self.link(pid)?;
        let new_link = |contact_id| LinkRecord {
            contact_id,
            etag: pc.etag.clone(),
            scope: pc.scope.clone(),
        };
        match link {
            Some(link) => {
                let Some(contact) = self.contact(link.contact_id)? else {
                    // The CRM deleted the contact. It comes back only when the provider
                    // contact changes again (SPEC §2), and never while the deletion is on
                    // its way to a two-way provider.
                    let deleting = matches!(
                        self.outbox_entry(&self.ctx.account, link.contact_id)?,
                        Some(OutboxEntry {
                            op: OutboxOp::Delete { .. },
                            ..
                        })
                    );
                    if deleting || self.base(pid)?.as_ref() == Some(&provider) {
                        self.plan.actions.push(Action::Ignore {
                            provider_id: pid.to_string(),
                        });
                        return Ok(());
                    }
                    // Changed since: it comes back, matched like a new contact (another
                    // account may have brought the same person back already).
                    return self.unlinked(pid, &provider, new_link, photo);
                };
                let base = self.base(pid)?;
                self.merge_into(
                    pid,
                    contact,
                    &provider,
                    base,
                    new_link(link.contact_id),
                    &link,
                    None,
                )
            }
            None => self.unlinked(pid, &provider, new_link, photo),
        }
    }

    /// A provider contact with no (live) link: match it, or create a CRM contact.
    fn unlinked(
        &mut self,
        pid: &str,
        provider: &Fields,
        new_link: impl Fn(ContactId) -> LinkRecord,
        photo: Option<&Vec<u8>>,
    ) -> Result<(), StoreError> {
        let keys = self.keys_of(provider);
        match self.find_match(&keys)? {
            Some((contact, _))
                if matches!(
                    self.outbox_entry(&self.ctx.account, contact.id)?,
                    Some(OutboxEntry {
                        op: OutboxOp::Create,
                        attempts: 1..,
                        ..
                    })
                ) =>
            {
                // Our own creation, made before a crash or a lost answer: adopt it
                // instead of creating the contact in the provider a second time.
                self.adopt(pid, contact, provider, new_link)
            }
            Some((contact, others)) => {
                let id = contact.id;
                if !others.is_empty() {
                    let mut e = self
                        .event(audit::Action::AmbiguousMatch)
                        .crm_id(id)
                        .provider_id(pid)
                        .reason("several CRM contacts match; the oldest was linked");
                    e.others = others.clone();
                    self.plan.audit.push(e);
                }
                let placeholder = LinkRecord {
                    contact_id: id,
                    etag: None,
                    scope: String::new(),
                };
                self.merge_into(
                    pid,
                    contact,
                    provider,
                    None,
                    new_link(id),
                    &placeholder,
                    Some(others),
                )
            }
            None => self.create(pid, provider, keys, new_link, photo),
        }
    }

    /// Links a provider contact that is the echo of a creation we pushed but did not get to
    /// record; it counts as added to the provider, as the push would have.
    fn adopt(
        &mut self,
        pid: &str,
        mut contact: Contact,
        provider: &Fields,
        new_link: impl Fn(ContactId) -> LinkRecord,
    ) -> Result<(), StoreError> {
        let id = contact.id;
        contact.links.push(self.this_link(pid));
        contact.links.sort();
        let keys = self.keys_of_contact(&contact)?;
        self.put_contact(contact, keys);
        self.put_link(pid, new_link(id), provider.clone());
        let account = self.ctx.account.clone();
        self.overlay.outbox.insert((account.clone(), id), None);
        self.plan.batch.push(Op::DeleteOutbox {
            account,
            contact: id,
        });
        self.plan.metrics.added_to_provider += 1;
        self.plan.audit.push(
            self.event(audit::Action::Added)
                .direction(audit::Direction::ToProvider)
                .crm_id(id)
                .provider_id(pid)
                .fields(present_fields(provider))
                .reason("creation confirmed by the provider's listing"),
        );
        self.plan.actions.push(Action::Link {
            provider_id: pid.to_string(),
            crm_id: id,
            changed: vec![],
            others: vec![],
        });
        Ok(())
    }

    fn create(
        &mut self,
        pid: &str,
        provider: &Fields,
        keys: Keys,
        new_link: impl Fn(ContactId) -> LinkRecord,
        photo: Option<&Vec<u8>>,
    ) -> Result<(), StoreError> {
        let id = self.new_id()?;
        let company_id = self.company_for(&provider.organization)?;
        let contact = Contact {
            id,
            first_name: provider.first_name.clone(),
            last_name: provider.last_name.clone(),
            emails: provider.emails.clone(),
            phones: provider.phones.clone(),
            address: provider.address.clone(),
            company_id,
            job_title: provider.job_title.clone(),
            birthday: provider.birthday,
            has_photo: photo.is_some(),
            links: vec![self.this_link(pid)],
            created_at: self.ctx.now,
            updated_at: self.ctx.now,
        };
        // The new contact's keys are the provider's (its company is found by that name).
        self.put_contact(contact, keys);
        if let Some(jpeg) = photo {
            self.plan.batch.push(Op::PutPhoto {
                contact: id,
                jpeg: jpeg.clone(),
            });
        }
        self.put_link(pid, new_link(id), provider.clone());
        self.plan.metrics.added_to_crm += 1;
        let mut fields = present_fields(provider);
        if photo.is_some() {
            fields.push(field::PHOTO);
        }
        let mut e = self
            .event(audit::Action::Added)
            .direction(audit::Direction::ToCrm)
            .crm_id(id)
            .provider_id(pid)
            .fields(fields);
        e.values = self.values(provider);
        self.plan.audit.push(e);
        self.plan.actions.push(Action::Create {
            provider_id: pid.to_string(),
            crm_id: id,
        });
        Ok(())
    }

    /// Merges provider fields into a linked (or just matched) contact.
    #[allow(clippy::too_many_arguments)]
    fn merge_into(
        &mut self,
        pid: &str,
        mut contact: Contact,
        provider: &Fields,
        base: Option<Fields>,
        link: LinkRecord,
        old_link: &LinkRecord,
        matched: Option<Vec<ContactId>>,
    ) -> Result<(), StoreError> {
        let id = contact.id;
        let crm = self.fields_of(&contact)?;
        let two_way = self.ctx.direction == Direction::TwoWay;
        let m = merge::merge(&crm, provider, base.as_ref(), two_way, self.db.region());
        let newly_linked = matched.is_some();
        let this = self.this_link(pid);
        let mut contact_changed = !m.changed.is_empty();
        if !contact.links.contains(&this) {
            contact.links.push(this);
            contact.links.sort();
            contact_changed = true;
        }
        // Changes this page made to the CRM reach the contact's other two-way links.
        if !m.changed.is_empty() {
            let others: Vec<String> = contact
                .links
                .iter()
                .filter(|l| l.account != self.ctx.account && self.ctx.two_way.contains(&l.account))
                .map(|l| l.account.clone())
                .collect();
            let fields: Vec<String> = m.changed.iter().map(|f| f.to_string()).collect();
            for account in others {
                self.enqueue(
                    &account,
                    id,
                    OutboxOp::Update {
                        fields: fields.clone(),
                    },
                )?;
            }
        }
        if contact_changed {
            let f = &m.fields;
            contact.first_name = f.first_name.clone();
            contact.last_name = f.last_name.clone();
            contact.emails = f.emails.clone();
            contact.phones = f.phones.clone();
            contact.address = f.address.clone();
            if m.changed.contains(&field::COMPANY) {
                contact.company_id = self.company_for(&f.organization)?;
            }
            contact.job_title = f.job_title.clone();
            contact.birthday = f.birthday;
            contact.updated_at = self.ctx.now;
            let keys = self.keys_of(&m.fields);
            self.put_contact(contact, keys);
        }
        let base_changed = base.as_ref() != Some(provider);
        if newly_linked || base_changed || old_link != &link {
            self.put_link(pid, link, provider.clone());
        }
        for name in &m.conflicts {
            self.plan.metrics.conflicts += 1;
            self.plan.audit.push(
                self.event(audit::Action::Conflict)
                    .crm_id(id)
                    .provider_id(pid)
                    .fields(vec![name])
                    .reason(
                        "changed in the CRM and in the provider; the provider's value was kept",
                    ),
            );
        }
        if !m.refused.is_empty() {
            tracing::debug!(account = %self.ctx.account, crm_id = id, fields = ?m.refused, "Provider change would empty a mandatory field; not applied.");
        }
        if contact_changed {
            self.plan.metrics.updated_in_crm += 1;
            let mut e = self
                .event(audit::Action::Updated)
                .direction(audit::Direction::ToCrm)
                .crm_id(id)
                .provider_id(pid)
                .fields(m.changed.clone());
            if newly_linked {
                e = e.reason("matched");
            }
            e.values = self.values(&m.fields);
            self.plan.audit.push(e);
        }
        if !m.to_provider.is_empty() {
            self.plan.actions.push(Action::Push {
                provider_id: pid.to_string(),
                crm_id: id,
                fields: m.to_provider.clone(),
            });
        }
        self.plan.actions.push(match matched {
            Some(others) => Action::Link {
                provider_id: pid.to_string(),
                crm_id: id,
                changed: m.changed,
                others,
            },
            None if contact_changed => Action::Update {
                provider_id: pid.to_string(),
                crm_id: id,
                changed: m.changed,
            },
            None => Action::Unchanged {
                provider_id: pid.to_string(),
                crm_id: id,
            },
        });
        Ok(())
    }

    /// A provider deletion (`left == false`) or a departure from the synced set.
    fn deleted(&mut self, pid: &str, left: bool) -> Result<(), StoreError> {
        let skipped = match self.overlay.skips.get(pid) {
            Some(s) => s.is_some(),
            None => self.db.skip(&self.ctx.account, pid)?.is_some(),
        };
        if skipped {
            self.overlay.skips.insert(pid.to_string(), None);
            self.plan.batch.push(Op::DeleteSkip {
                account: self.ctx.account.clone(),
                provider_id: pid.to_string(),
            });
        }
        let Some(link) = self.link(pid)? else {
            self.plan.actions.push(Action::Ignore {
                provider_id: pid.to_string(),
            });
            return Ok(());
        };
        self.drop_link(pid);
        let Some(mut contact) = self.contact(link.contact_id)? else {
            // Already deleted in the CRM: forget the link quietly.
            self.plan.actions.push(Action::Ignore {
                provider_id: pid.to_string(),
            });
            return Ok(());
        };
        let id = contact.id;
        let this = self.this_link(pid);
        contact.links.retain(|l| l != &this);
        if left || !contact.links.is_empty() {
            let keys = self.keys_of_contact(&contact)?;
            contact.updated_at = self.ctx.now;
            self.put_contact(contact, keys);
            self.plan.metrics.unlinked += 1;
            let reason = if left {
                "left the synced group"
            } else {
                "deleted in the provider; still linked to another account"
            };
            self.plan.audit.push(
                self.event(audit::Action::Unlinked)
                    .crm_id(id)
                    .provider_id(pid)
                    .reason(reason),
            );
            self.plan.actions.push(Action::Unlink {
                provider_id: pid.to_string(),
                crm_id: id,
            });
        } else {
            self.overlay.contacts.insert(id, None);
            self.plan.batch.push(Op::DeleteContact(id));
            self.plan.metrics.deleted_from_provider += 1;
            self.plan.audit.push(
                self.event(audit::Action::Deleted)
                    .direction(audit::Direction::ToCrm)
                    .crm_id(id)
                    .provider_id(pid),
            );
            self.plan.actions.push(Action::Delete {
                provider_id: pid.to_string(),
                crm_id: id,
            });
        }
        Ok(())
    }
}

/// The matching index keys of a person: name + each email, name + each phone, name +
/// organisation. Each value is normalised once here.
fn keys_of(
    first: &str,
    last: &str,
    emails: &[String],
    phones: &[String],
    organization: Option<&str>,
    region: phonenumber::country::Id,
) -> Keys {
    let name = normalize::name_key(first, last);
    let mut keys = Vec::with_capacity(emails.len() + phones.len() + 1);
    for e in emails {
        keys.push((IndexKind::NameEmail, name.clone(), normalize::email_key(e)));
    }
    for p in phones {
        if let Some(k) = normalize::phone_key(p, region) {
            keys.push((IndexKind::NamePhone, name.clone(), k));
        }
    }
    if let Some(o) = organization {
        keys.push((IndexKind::NameOrg, name, normalize::text_key(o)));
    }
    keys
}

/// Names of the fields that have a value (for audit events of creations).
pub fn present_fields(f: &Fields) -> Vec<&'static str> {
    let mut out = vec![field::NAME];
    for (present, name) in [
        (!f.emails.is_empty(), field::EMAILS),
        (!f.phones.is_empty(), field::PHONES),
        (f.address.is_some(), field::ADDRESS),
        (f.organization.is_some(), field::COMPANY),
        (f.job_title.is_some(), field::JOB_TITLE),
        (f.birthday.is_some(), field::BIRTHDAY),
    ] {
        if present {
            out.push(name);
        }
    }
    out
}

/// Keeps only the last change of each provider contact (a provider may list a contact
/// twice in one round; its latest state is what counts), in order of last appearance.
pub fn collapse(changes: &[Change]) -> Vec<&Change> {
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(changes.len());
    for (i, c) in changes.iter().enumerate() {
        last.insert(c.provider_id(), i);
    }
    changes
        .iter()
        .enumerate()
        .filter(|(i, c)| last.get(c.provider_id()) == Some(i))
        .map(|(_, c)| c)
        .collect()
}

/// Plans a whole list of changes.
pub fn plan(
    db: &Db,
    ctx: PlanContext,
    changes: &[Change],
    photos: &HashMap<String, Vec<u8>>,
) -> Result<Plan, StoreError> {
    let mut p = Planner::new(db, ctx);
    for c in collapse(changes) {
        p.add(c, photos.get(c.provider_id()))?;
    }
    Ok(p.finish())
}

/// The provider ids of `changes` that planning them now would create as new CRM contacts
/// (not matched to an existing one, not skipped). A dry run: nothing is written and no id is
/// taken from the store. Photos are fetched only for these (SPEC §3).
pub fn creations(
    db: &Db,
    ctx: PlanContext,
    changes: &[Change],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut p = Planner::new(db, ctx);
    p.dry_ids = Some(u64::MAX);
    for c in collapse(changes) {
        p.add(c, None)?;
    }
    Ok(p.finish()
        .actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Create { provider_id, .. } => Some(provider_id),
            _ => None,
        })
        .collect())
}

/// How many links the account would have after applying `changes` (SPEC §5 limit).
pub fn projected_links(db: &Db, account: &str, changes: &[Change]) -> Result<usize, StoreError> {
    let mut count = db.link_count(account)? as i64;
    for c in collapse(changes) {
        let pid = c.provider_id();
        let linked = db.link(account, pid)?.is_some();
        match c {
            Change::Upsert(pc)
                if !linked
                    && eligibility::check(&merge::clean(&pc.fields, db.region())).is_ok() =>
            {
                count += 1
            }
            Change::Deleted { .. } | Change::Left { .. } if linked => count -= 1,
            _ => {}
        }
    }
    Ok(count.max(0) as usize)
}

#[cfg(test)]
mod tests;
