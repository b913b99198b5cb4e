//! The field-level three-way merge of SPEC §4, as a pure function.
//!
//! Inputs are the CRM's current fields, the provider's fields and the **base** — the
//! provider's fields as of the last sync of this link (`None` at first link). A field the
//! provider changed since the base is a provider change; a field the CRM changed since the
//! base is a CRM change (sent to the provider in two-way).

use crate::model::{field, Fields};
use crate::normalize;

use super::eligibility::{MAX_EMAILS, MAX_PHONES};

/// What the merge decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The CRM's fields after the merge.
    pub fields: Fields,
    /// CRM fields the merge changed.
    pub changed: Vec<&'static str>,
    /// Fields changed on both sides since the base (the provider's value was taken).
    pub conflicts: Vec<&'static str>,
    /// Two-way: fields changed only in the CRM since the base, to send to the provider.
    pub to_provider: Vec<&'static str>,
    /// Provider changes not applied because they would leave a mandatory field empty.
    pub refused: Vec<&'static str>,
}

/// Keys a list compares on.
fn keys(list: &[String], key: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut out: Vec<String> = list.iter().filter_map(|v| key(v)).collect();
    out.sort();
    out.dedup();
    out
}

/// Values of `list`, without blanks and without repeats of the same key, in order.
pub fn dedup(list: &[String], key: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    list.iter()
        .map(|v| v.trim().to_string())
        .filter(|v| key(v).is_some_and(|k| seen.insert(k)))
        .collect()
}

/// Cleans a provider contact's fields: trimmed, without blank or repeated values.
pub fn clean(f: &Fields, region: phonenumber::country::Id) -> Fields {
    let ek = |s: &str| email_k(s);
    let pk = |s: &str| normalize::phone_key(s, region);
    Fields {
        first_name: f.first_name.trim().to_string(),
        last_name: f.last_name.trim().to_string(),
        emails: dedup(&f.emails, &ek),
        phones: dedup(&f.phones, &pk),
        address: f.address.clone().and_then(|a| a.non_empty()),
        organization: f
            .organization
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from),
        job_title: f
            .job_title
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from),
        birthday: f.birthday,
    }
}

fn email_k(s: &str) -> Option<String> {
    let k = normalize::email_key(s);
    (!k.is_empty()).then_some(k)
}

/// Merges a multi-valued mandatory field (emails, phones).
#[allow(clippy::too_many_arguments)]
fn merge_list(
    name: &'static str,
    crm: &[String],
    provider: &[String],
    base: Option<&[String]>,
    two_way: bool,
    max: usize,
    key: &dyn Fn(&str) -> Option<String>,
    out: &mut Merged,
) -> Vec<String> {
    let (ck, pk) = (keys(crm, key), keys(provider, key));
    let Some(base) = base else {
        // First link: only add.
        let mut result = crm.to_vec();
        for v in provider {
            if result.len() >= max {
                break;
            }
            let k = key(v);
            if k.is_some() && !result.iter().any(|r| key(r) == k) {
                result.push(v.clone());
            }
        }
        if result != crm {
            out.changed.push(name);
        }
        return result;
    };
    let bk = keys(base, key);
    let provider_changed = pk != bk;
    let crm_changed = ck != bk;
    if !provider_changed {
        if crm_changed && two_way {
            out.to_provider.push(name);
        }
        return crm.to_vec();
    }
    let result: Vec<String> = if two_way && crm_changed && ck != pk {
        out.conflicts.push(name);
        provider.iter().take(max).cloned().collect()
    } else {
        // Apply the provider's additions and removals to the CRM's list.
        let removed: Vec<&String> = bk.iter().filter(|k| !pk.contains(k)).collect();
        let mut r: Vec<String> = crm
            .iter()
            .filter(|v| key(v).is_none_or(|k| !removed.contains(&&k)))
            .cloned()
            .collect();
        for v in provider {
            if r.len() >= max {
                break;
            }
            let k = key(v);
            if k.is_some() && !r.iter().any(|x| key(x) == k) {
                r.push(v.clone());
            }
        }
        r
    };
    if result.is_empty() && !crm.is_empty() {
        // SPEC §4: never leave the contact without any email (phone) it had.
        out.refused.push(name);
        return crm.to_vec();
    }
    if keys(&result, key) != ck || result != crm {
        out.changed.push(name);
    }
    result
}

/// Merges a single-valued, non-mandatory field: the provider's latest value wins; at first
/// link a value only the provider has is added and nothing is erased.
fn merge_opt<T: Clone + PartialEq>(
    name: &'static str,
    crm: &Option<T>,
    provider: &Option<T>,
    base: Option<&Option<T>>,
    two_way: bool,
    out: &mut Merged,
) -> Option<T> {
    let Some(base) = base else {
        if crm.is_none() && provider.is_some() {
            out.changed.push(name);
            return provider.clone();
        }
        return crm.clone();
    };
    if provider == base {
        if crm != base && two_way {
            out.to_provider.push(name);
        }
        return crm.clone();
    }
    if crm == provider {
        return crm.clone();
    }
    if two_way && crm != base {
        out.conflicts.push(name);
    }
    out.changed.push(name);
    provider.clone()
}

/// The three-way merge of one linked contact.
pub fn merge(
    crm: &Fields,
    provider: &Fields,
    base: Option<&Fields>,
    two_way: bool,
    region: phonenumber::country::Id,
) -> Merged {
    let mut out = Merged {
        fields: Fields::default(),
        changed: vec![],
        conflicts: vec![],
        to_provider: vec![],
        refused: vec![],
    };
    // Name: first and last together, compared after normalisation.
    let nk = |f: &Fields| normalize::name_key(&f.first_name, &f.last_name);
    let crm_name = (crm.first_name.clone(), crm.last_name.clone());
    let (first_name, last_name) = match base {
        None => crm_name,
        Some(b) => {
            let provider_changed = (provider.first_name.as_str(), provider.last_name.as_str())
                != (b.first_name.as_str(), b.last_name.as_str());
            let crm_changed = nk(crm) != nk(b);
            if !provider_changed {
                if crm_changed && two_way {
                    out.to_provider.push(field::NAME);
                }
                crm_name
            } else if provider.first_name.trim().is_empty() && provider.last_name.trim().is_empty()
            {
                out.refused.push(field::NAME);
                crm_name
            } else if crm.first_name == provider.first_name && crm.last_name == provider.last_name {
                crm_name
            } else {
                if two_way && crm_changed && nk(crm) != nk(provider) {
                    out.conflicts.push(field::NAME);
                }
                out.changed.push(field::NAME);
                (provider.first_name.clone(), provider.last_name.clone())
            }
        }
    };
    let ek = |s: &str| email_k(s);
    let pk = |s: &str| normalize::phone_key(s, region);
    let emails = merge_list(
        field::EMAILS,
        &crm.emails,
        &provider.emails,
        base.map(|b| b.emails.as_slice()),
        two_way,
        MAX_EMAILS,
        &ek,
        &mut out,
    );
    let phones = merge_list(
        field::PHONES,
        &crm.phones,
        &provider.phones,
        base.map(|b| b.phones.as_slice()),
        two_way,
        MAX_PHONES,
        &pk,
        &mut out,
    );
    let address = merge_opt(
        field::ADDRESS,
        &crm.address,
        &provider.address,
        base.map(|b| &b.address),
        two_way,
        &mut out,
    );
    // Organisations compare like names.
    let org_k = |o: &Option<String>| o.as_deref().map(normalize::text_key);
    let organization = {
        let (c, p) = (org_k(&crm.organization), org_k(&provider.organization));
        let b = base.map(|b| org_k(&b.organization));
        let mut scratch = Merged {
            fields: Fields::default(),
            changed: vec![],
            conflicts: vec![],
            to_provider: vec![],
            refused: vec![],
        };
        let picked = merge_opt(field::COMPANY, &c, &p, b.as_ref(), two_way, &mut scratch);
        out.changed.extend(scratch.changed);
        out.conflicts.extend(scratch.conflicts);
        out.to_provider.extend(scratch.to_provider);
        if picked == c {
            crm.organization.clone()
        } else {
            provider.organization.clone()
        }
    };
    let job_title = merge_opt(
        field::JOB_TITLE,
        &crm.job_title,
        &provider.job_title,
        base.map(|b| &b.job_title),
        two_way,
        &mut out,
    );
    let birthday = merge_opt(
        field::BIRTHDAY,
        &crm.birthday,
        &provider.birthday,
        base.map(|b| &b.birthday),
        two_way,
        &mut out,
    );
    out.fields = Fields {
        first_name,
        last_name,
        emails,
        phones,
        address,
        organization,
        job_title,
        birthday,
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Address;
    use chrono::NaiveDate;
    use phonenumber::country::Id;
    use proptest::prelude::*;

    fn ann() -> Fields {
        Fields {
            first_name: "Ann".into(),
            last_name: "Lee".into(),
            emails: vec!["ann@x.org".into()],
            phones: vec!["+12015550100".into()],
            ..Default::default()
        }
    }

    #[test]
    fn merge_first_link_only_adds() {
        let mut crm = ann();
        crm.job_title = Some("CEO".into());
        let mut p = ann();
        p.first_name = "Annie".into();
        p.emails = vec!["other@x.org".into()];
        p.job_title = Some("CTO".into());
        p.birthday = NaiveDate::from_ymd_opt(1990, 1, 2);
        let m = merge(&crm, &p, None, false, Id::US);
        assert_eq!(
            m.fields.first_name, "Ann",
            "name is not replaced at first link"
        );
        assert_eq!(m.fields.emails, ["ann@x.org", "other@x.org"]);
        assert_eq!(m.fields.job_title.as_deref(), Some("CEO"), "no overwrite");
        assert_eq!(
            m.fields.birthday, p.birthday,
            "value only the provider has is added"
        );
    }

    #[test]
    fn merge_provider_latest_value_wins_for_non_mandatory_fields() {
        let mut base = ann();
        base.job_title = Some("CTO".into());
        let mut crm = base.clone();
        crm.job_title = Some("Chief".into()); // CRM edit, one-way
        let mut p = base.clone();
        p.job_title = Some("CEO".into());
        let m = merge(&crm, &p, Some(&base), false, Id::US);
        assert_eq!(m.fields.job_title.as_deref(), Some("CEO"));
        assert_eq!(m.changed, [field::JOB_TITLE]);
    }

    #[test]
    fn merge_value_provider_never_had_does_not_erase_crm() {
        let base = ann();
        let mut crm = ann();
        crm.address = Some(Address {
            city: Some("Oslo".into()),
            ..Default::default()
        });
        let mut p = ann();
        p.phones.push("+12015550199".into());
        let m = merge(&crm, &p, Some(&base), false, Id::US);
        assert_eq!(m.fields.address, crm.address);
        assert_eq!(m.changed, [field::PHONES]);
    }

    #[test]
    fn merge_provider_removing_a_value_it_had_erases_it() {
        let mut base = ann();
        base.job_title = Some("CTO".into());
        let crm = base.clone();
        let p = ann();
        let m = merge(&crm, &p, Some(&base), false, Id::US);
        assert_eq!(m.fields.job_title, None);
    }

    #[test]
    fn mandatory_fields_never_emptied_by_provider() {
        let base = ann();
        let crm = ann();
        let mut p = ann();
        p.emails.clear();
        p.first_name.clear();
        p.last_name.clear();
        let m = merge(&crm, &p, Some(&base), false, Id::US);
        assert_eq!(m.fields.emails, crm.emails);
        assert_eq!(m.fields.first_name, "Ann");
        assert!(m.refused.contains(&field::EMAILS));
        assert!(m.refused.contains(&field::NAME));
        // Removing one of two emails is applied.
        let mut crm2 = ann();
        crm2.emails.push("b@x.org".into());
        let base2 = crm2.clone();
        let mut p2 = crm2.clone();
        p2.emails = vec!["b@x.org".into()];
        let m = merge(&crm2, &p2, Some(&base2), false, Id::US);
        assert_eq!(m.fields.emails, ["b@x.org"]);
    }

    #[test]
    fn two_way_crm_only_change_goes_to_provider() {
        let base = ann();
        let mut crm = ann();
        crm.job_title = Some("CEO".into());
        crm.phones.push("+12015550111".into());
        let m = merge(&crm, &base, Some(&base), true, Id::US);
        assert!(m.changed.is_empty());
        assert_eq!(m.to_provider, [field::PHONES, field::JOB_TITLE]);
        let one_way = merge(&crm, &base, Some(&base), false, Id::US);
        assert!(one_way.to_provider.is_empty());
    }

    #[test]
    fn two_way_conflict_takes_provider_value() {
        let base = ann();
        let mut crm = ann();
        crm.last_name = "Smith".into();
        let mut p = ann();
        p.last_name = "Jones".into();
        let m = merge(&crm, &p, Some(&base), true, Id::US);
        assert_eq!(m.fields.last_name, "Jones");
        assert_eq!(m.conflicts, [field::NAME]);
    }

    #[test]
    fn phones_compare_in_e164_during_merge() {
        let mut crm = ann();
        crm.phones = vec!["(201) 555-0100".into()];
        let m = merge(&crm, &ann(), None, false, Id::US);
        assert_eq!(
            m.fields.phones,
            ["(201) 555-0100"],
            "same number, not added twice"
        );
        assert!(m.changed.is_empty());
    }

    fn fields_strategy() -> impl Strategy<Value = Fields> {
        let name = prop_oneof![Just(String::new()), "[A-Za-zé ]{1,8}"];
        let emails = proptest::collection::vec("[a-c]{1,2}@[xy]\\.org", 0..4);
        let phones = proptest::collection::vec("\\+1201555010[0-9]", 0..4);
        let opt = proptest::option::of("[A-C]{1,3}");
        (name.clone(), name, emails, phones, opt.clone(), opt).prop_map(
            |(first_name, last_name, emails, phones, organization, job_title)| Fields {
                first_name,
                last_name,
                emails,
                phones,
                organization,
                job_title,
                ..Default::default()
            },
        )
    }

    proptest! {
        /// Applying the same provider contact twice changes nothing the second time.
        #[test]
        fn merge_is_idempotent(crm in fields_strategy(), p in fields_strategy(), base in proptest::option::of(fields_strategy()), two_way in any::<bool>()) {
            let p = clean(&p, Id::US);
            let crm = clean(&crm, Id::US);
            let first = merge(&crm, &p, base.as_ref(), two_way, Id::US);
            // After a sync the base is the provider's value.
            let second = merge(&first.fields, &p, Some(&p), two_way, Id::US);
            prop_assert_eq!(&second.fields, &first.fields);
            prop_assert!(second.changed.is_empty(), "changed again: {:?}", second.changed);
        }

        /// Mandatory fields are never emptied by the provider.
        #[test]
        fn merge_never_empties_mandatory_fields(crm in fields_strategy(), p in fields_strategy(), base in proptest::option::of(fields_strategy()), two_way in any::<bool>()) {
            let m = merge(&crm, &p, base.as_ref(), two_way, Id::US);
            let had_name = !(crm.first_name.trim().is_empty() && crm.last_name.trim().is_empty());
            if had_name {
                prop_assert!(!(m.fields.first_name.trim().is_empty() && m.fields.last_name.trim().is_empty()));
            }
            if !crm.emails.is_empty() { prop_assert!(!m.fields.emails.is_empty()); }
            if !crm.phones.is_empty() { prop_assert!(!m.fields.phones.is_empty()); }
        }
    }
}
