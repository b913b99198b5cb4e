//! Two-way writes: `batchCreateContacts`, `batchUpdateContacts` (etag-guarded) and
//! `batchDeleteContacts`, sent one call at a time as Google advises.

use reqwest::{Method, StatusCode};

use super::map::{contact_etag, fields_to_person, update_mask};
use super::wire::*;
use super::{CallError, CallKind, GoogleClient};
use crate::model::Fields;
use crate::providers::{ProviderError, PushOp, PushResult};

/// What the post-write read returns: enough for the resource name and the new etag.
const WRITE_READ_MASK: &str = "metadata";

/// Outcome of creating one contact.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    pub crm_id: u64,
    /// The new contact's resource name and etag.
    pub result: Result<(String, Option<String>), ProviderError>,
}

/// Outcome of updating one contact.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateOutcome {
    /// Written; the new etag when Google returned it.
    Updated {
        etag: Option<String>,
    },
    /// The etag was stale: the contact changed in Google since it was read.
    Conflict,
    /// The contact no longer exists in Google.
    Gone,
    Failed(ProviderError),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    pub provider_id: String,
    pub outcome: UpdateOutcome,
}

/// Outcome of deleting one contact (one already gone counts as deleted).
#[derive(Debug, Clone, PartialEq)]
pub struct Deleted {
    pub provider_id: String,
    pub result: Result<(), ProviderError>,
}

fn is_stale_etag(status: StatusCode, e: &ApiError) -> bool {
    status == StatusCode::BAD_REQUEST
        && (e.status.as_deref() == Some("FAILED_PRECONDITION")
            || e.has_reason("failedPrecondition")
            || e.message
                .as_deref()
                .is_some_and(|m| m.to_ascii_lowercase().contains("etag")))
}

/// google.rpc.Code of a per-item status.
const RPC_NOT_FOUND: i64 = 5;
const RPC_FAILED_PRECONDITION: i64 = 9;

impl GoogleClient {
    /// Two-way writes, one kind after the other, sent sequentially as Google advises.
    pub(super) async fn push_ops(&self, ops: &[PushOp]) -> Vec<PushResult> {
        let mut out: Vec<Option<PushResult>> = vec![None; ops.len()];
        let mut creates = vec![];
        let mut updates = vec![];
        let mut deletes = vec![];
        for (i, op) in ops.iter().enumerate() {
            match op {
                PushOp::Create { fields, starred } => creates.push((i, fields, *starred)),
                PushOp::Update {
                    provider_id,
                    etag,
                    fields,
                    changed,
                } => updates.push((i, provider_id, etag, fields, changed)),
                PushOp::Delete { provider_id } => deletes.push((i, provider_id)),
            }
        }
        if !creates.is_empty() {
            let items: Vec<(u64, Fields, bool)> = creates
                .iter()
                .map(|(i, f, s)| (*i as u64, (*f).clone(), *s))
                .collect();
            for c in self.batch_create(&items).await {
                let i = c.crm_id as usize;
                let stored = items
                    .iter()
                    .find(|x| x.0 == c.crm_id)
                    .map(|x| x.1.clone())
                    .unwrap_or_default();
                out[i] = Some(match c.result {
                    Ok((provider_id, etag)) => PushResult::Created {
                        provider_id,
                        etag,
                        scope: String::new(),
                        stored,
                    },
                    Err(e) => PushResult::Failed(e),
                });
            }
        }
        if !updates.is_empty() {
            let items: Vec<(String, String, Fields, Vec<&'static str>)> = updates
                .iter()
                .map(|(_, pid, etag, f, ch)| {
                    (
                        (*pid).clone(),
                        (*etag).clone().unwrap_or_default(),
                        (*f).clone(),
                        (*ch).clone(),
                    )
                })
                .collect();
            let results = self.batch_update(&items).await;
            for (i, pid, _, f, _) in &updates {
                let outcome = results
                    .iter()
                    .find(|u| &u.provider_id == *pid)
                    .map(|u| u.outcome.clone());
                out[*i] = Some(match outcome {
                    Some(UpdateOutcome::Updated { etag }) => PushResult::Updated {
                        etag,
                        stored: (*f).clone(),
                    },
                    Some(UpdateOutcome::Conflict) => PushResult::Conflict,
                    Some(UpdateOutcome::Gone) => PushResult::Gone,
                    Some(UpdateOutcome::Failed(e)) => PushResult::Failed(e),
                    None => PushResult::Failed(ProviderError::Transient(
                        "Google did not answer for this contact.".into(),
                    )),
                });
            }
        }
        if !deletes.is_empty() {
            let ids: Vec<String> = deletes.iter().map(|(_, p)| (*p).clone()).collect();
            let results = self.batch_delete(&ids).await;
            for (i, pid) in &deletes {
                let r = results.iter().find(|d| &d.provider_id == *pid);
                out[*i] = Some(match r.map(|d| d.result.clone()) {
                    Some(Ok(())) => PushResult::Deleted,
                    Some(Err(e)) => PushResult::Failed(e),
                    None => PushResult::Failed(ProviderError::Transient(
                        "Google did not answer for this contact.".into(),
                    )),
                });
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| PushResult::Failed(ProviderError::Transient("not sent".into())))
            })
            .collect()
    }
}

impl GoogleClient {
    /// Creates contacts (`(crm id, fields, starred)`), 200 per call, one call at a time.
    /// A batch Google rejects as a whole is retried contact by contact, so one invalid
    /// contact does not hold back the others. Results come in input order.
    pub async fn batch_create(&self, items: &[(u64, Fields, bool)]) -> Vec<Created> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(MAX_BATCH_WRITE) {
            match self.create_chunk(chunk).await {
                Err(CallError::Api { status, .. })
                    if status == StatusCode::BAD_REQUEST && chunk.len() > 1 =>
                {
                    for one in chunk {
                        let r = self.create_chunk(std::slice::from_ref(one)).await;
                        out.extend(Self::created(std::slice::from_ref(one), r));
                    }
                }
                r => out.extend(Self::created(chunk, r)),
            }
        }
        out
    }

    async fn create_chunk(
        &self,
        chunk: &[(u64, Fields, bool)],
    ) -> Result<BatchCreateResponseJson, CallError> {
        let body = serde_json::json!({
            "contacts": chunk.iter()
                .map(|(_, f, starred)| serde_json::json!({"contactPerson": fields_to_person(f, *starred)}))
                .collect::<Vec<_>>(),
            "readMask": WRITE_READ_MASK,
        });
        self.call(
            Method::POST,
            "/v1/people:batchCreateContacts",
            &[],
            Some(&body),
            CallKind::Create,
        )
        .await
    }

    /// Google answers created people in request order (the response has no other key).
    fn created(
        chunk: &[(u64, Fields, bool)],
        r: Result<BatchCreateResponseJson, CallError>,
    ) -> Vec<Created> {
        let fail = |e: ProviderError| -> Vec<Created> {
            chunk
                .iter()
                .map(|(id, _, _)| Created {
                    crm_id: *id,
                    result: Err(e.clone()),
                })
                .collect()
        };
        let resp = match r {
            Ok(resp) => resp,
            Err(e) => return fail(e.into_provider()),
        };
        if resp.created_people.len() != chunk.len() {
            return fail(ProviderError::Transient(format!(
                "Google answered {} created contacts for {} sent.",
                resp.created_people.len(),
                chunk.len()
            )));
        }
        chunk
            .iter()
            .zip(resp.created_people)
            .map(|((id, _, _), pr)| {
                let result = match (pr.person, pr.status) {
                    (_, Some(st)) if st.code.unwrap_or(0) != 0 => Err(ProviderError::Permanent(
                        st.describe(StatusCode::BAD_REQUEST),
                    )),
                    (Some(p), _) if !p.resource_name.is_empty() => {
                        let etag = contact_etag(&p);
                        Ok((p.resource_name, etag))
                    }
                    _ => Err(ProviderError::Transient(
                        "Google created a contact but did not name it.".into(),
                    )),
                };
                Created {
                    crm_id: *id,
                    result,
                }
            })
            .collect()
    }

    /// Updates contacts (`(resource name, CONTACT source etag, fields, changed field
    /// names)`), 200 per call, one call at a time, each guarded by its etag (sent as
    /// `person.metadata.sources[type=CONTACT].etag`, as Google requires): a stale etag is a
    /// [`UpdateOutcome::Conflict`]. A batch Google rejects as a whole is retried contact by
    /// contact to find the one at fault. Results come in input order.
    pub async fn batch_update(
        &self,
        items: &[(String, String, Fields, Vec<&'static str>)],
    ) -> Vec<Updated> {
        let mut out = Vec::with_capacity(items.len());
        // Contacts with nothing Google stores changed are not sent.
        let mut send: Vec<(&String, &String, &Fields, String)> = Vec::new();
        let mut order: Vec<&String> = Vec::new();
        let mut done: std::collections::HashMap<String, UpdateOutcome> = Default::default();
        for (id, etag, fields, changed) in items {
            order.push(id);
            let mask = update_mask(changed);
            if etag.is_empty() {
                // No source etag known (a link made before it was kept): Google would
                // refuse the write, so it is a conflict: fetch the person, merge, retry.
                done.insert(id.clone(), UpdateOutcome::Conflict);
            } else if mask.is_empty() {
                done.insert(
                    id.clone(),
                    UpdateOutcome::Updated {
                        etag: Some(etag.clone()),
                    },
                );
            } else {
                send.push((id, etag, fields, mask));
            }
        }
        // One update mask per call: group by mask, keeping order within a group.
        let mut masks: Vec<String> = Vec::new();
        for (_, _, _, m) in &send {
            if !masks.contains(m) {
                masks.push(m.clone());
            }
        }
        for mask in &masks {
            let group: Vec<_> = send.iter().filter(|s| &s.3 == mask).collect();
            for chunk in group.chunks(MAX_BATCH_WRITE) {
                let pairs: Vec<(&String, &String, &Fields)> =
                    chunk.iter().map(|(i, e, f, _)| (*i, *e, *f)).collect();
                match self.update_chunk(&pairs, mask).await {
                    Err(CallError::Api { status, .. })
                        if status == StatusCode::BAD_REQUEST && pairs.len() > 1 =>
                    {
                        for one in &pairs {
                            let r = self.update_chunk(std::slice::from_ref(one), mask).await;
                            done.extend(Self::updated(std::slice::from_ref(one), r));
                        }
                    }
                    r => done.extend(Self::updated(&pairs, r)),
                }
            }
        }
        for id in order {
            let outcome =
                done.remove(id)
                    .unwrap_or(UpdateOutcome::Failed(ProviderError::Permanent(
                        "Contact listed twice in one update.".into(),
                    )));
            out.push(Updated {
                provider_id: id.clone(),
                outcome,
            });
        }
        out
    }

    async fn update_chunk(
        &self,
        chunk: &[(&String, &String, &Fields)],
        mask: &str,
    ) -> Result<BatchUpdateResponseJson, CallError> {
        let contacts: serde_json::Map<String, serde_json::Value> = chunk
            .iter()
            .map(|(id, etag, fields)| {
                let mut person = fields_to_person(fields, false);
                person["resourceName"] = serde_json::json!(id);
                // The CONTACT source's etag, never the person's (see [`contact_etag`]).
                person["metadata"] =
                    serde_json::json!({"sources": [{"type": "CONTACT", "etag": etag}]});
                if let Some(m) = person.as_object_mut() {
                    m.remove("memberships");
                }
                ((*id).clone(), person)
            })
            .collect();
        let body = serde_json::json!({
            "contacts": contacts,
            "updateMask": mask,
            "readMask": WRITE_READ_MASK,
        });
        self.call(
            Method::POST,
            "/v1/people:batchUpdateContacts",
            &[],
            Some(&body),
            CallKind::EmptyOk,
        )
        .await
    }

    fn updated(
        chunk: &[(&String, &String, &Fields)],
        r: Result<BatchUpdateResponseJson, CallError>,
    ) -> Vec<(String, UpdateOutcome)> {
        let single = chunk.len() == 1;
        match r {
            Ok(mut resp) => chunk
                .iter()
                .map(|(id, _, _)| {
                    let outcome = match resp.update_result.remove(id.as_str()) {
                        Some(PersonResponseJson {
                            status: Some(st), ..
                        }) if st.code.unwrap_or(0) != 0 => match st.code {
                            Some(RPC_FAILED_PRECONDITION) => UpdateOutcome::Conflict,
                            Some(RPC_NOT_FOUND) => UpdateOutcome::Gone,
                            _ => UpdateOutcome::Failed(ProviderError::Permanent(
                                st.describe(StatusCode::BAD_REQUEST),
                            )),
                        },
                        Some(pr) => UpdateOutcome::Updated {
                            etag: pr.person.as_ref().and_then(contact_etag),
                        },
                        None => UpdateOutcome::Updated { etag: None },
                    };
                    ((*id).clone(), outcome)
                })
                .collect(),
            Err(e) => {
                let outcome = match &e {
                    CallError::Api { status, error } if single && is_stale_etag(*status, error) => {
                        UpdateOutcome::Conflict
                    }
                    CallError::Api { status, .. } if single && *status == StatusCode::NOT_FOUND => {
                        UpdateOutcome::Gone
                    }
                    _ => UpdateOutcome::Failed(e.into_provider()),
                };
                chunk
                    .iter()
                    .map(|(id, _, _)| ((*id).clone(), outcome.clone()))
                    .collect()
            }
        }
    }

    /// Deletes contacts by resource name, 500 per call, one call at a time. A batch Google
    /// rejects as a whole is retried contact by contact; one already gone counts as deleted.
    pub async fn batch_delete(&self, ids: &[String]) -> Vec<Deleted> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_BATCH_DELETE) {
            match self.delete_chunk(chunk).await {
                Ok(()) => out.extend(chunk.iter().map(|id| Deleted {
                    provider_id: id.clone(),
                    result: Ok(()),
                })),
                Err(CallError::Api { status, .. })
                    if chunk.len() > 1
                        && (status == StatusCode::BAD_REQUEST
                            || status == StatusCode::NOT_FOUND) =>
                {
                    for id in chunk {
                        let result = match self.delete_chunk(std::slice::from_ref(id)).await {
                            Ok(()) => Ok(()),
                            Err(CallError::Api { status, .. })
                                if status == StatusCode::NOT_FOUND =>
                            {
                                Ok(())
                            }
                            Err(e) => Err(e.into_provider()),
                        };
                        out.push(Deleted {
                            provider_id: id.clone(),
                            result,
                        });
                    }
                }
                Err(CallError::Api { status, .. }) if status == StatusCode::NOT_FOUND => out
                    .extend(chunk.iter().map(|id| Deleted {
                        provider_id: id.clone(),
                        result: Ok(()),
                    })),
                Err(e) => {
                    let e = e.into_provider();
                    out.extend(chunk.iter().map(|id| Deleted {
                        provider_id: id.clone(),
                        result: Err(e.clone()),
                    }))
                }
            }
        }
        out
    }

    async fn delete_chunk(&self, chunk: &[String]) -> Result<(), CallError> {
        let body = serde_json::json!({ "resourceNames": chunk });
        let _: serde::de::IgnoredAny = self
            .call(
                Method::POST,
                "/v1/people:batchDeleteContacts",
                &[],
                Some(&body),
                CallKind::EmptyOk,
            )
            .await?;
        Ok(())
    }
}
