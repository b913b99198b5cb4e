//! Which provider contacts sync (SPEC §3): a name, and at least one email or phone, and at
//! most 10 of each.

use crate::model::{Fields, SkipReason};

pub const MAX_EMAILS: usize = 10;
pub const MAX_PHONES: usize = 10;

/// `Ok(())` for an eligible contact, else the reason it is skipped. Reasons are checked in
/// the order of SPEC §3.
pub fn check(f: &Fields) -> Result<(), SkipReason> {
    let emails = f.emails.iter().filter(|e| !e.trim().is_empty()).count();
    let phones = f.phones.iter().filter(|p| !p.trim().is_empty()).count();
    if f.first_name.trim().is_empty() && f.last_name.trim().is_empty() {
        Err(SkipReason::NoName)
    } else if emails == 0 && phones == 0 {
        Err(SkipReason::NoEmailOrPhone)
    } else if emails > MAX_EMAILS {
        Err(SkipReason::TooManyEmails)
    } else if phones > MAX_PHONES {
        Err(SkipReason::TooManyPhones)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(first: &str, emails: usize, phones: usize) -> Fields {
        Fields {
            first_name: first.into(),
            emails: (0..emails).map(|i| format!("e{i}@x.org")).collect(),
            phones: (0..phones).map(|i| format!("+1201555{i:04}")).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn eligible_needs_name_and_email_or_phone() {
        assert_eq!(check(&f("Ann", 1, 0)), Ok(()));
        assert_eq!(check(&f("Ann", 0, 1)), Ok(()));
        assert_eq!(check(&f("Ann", 10, 10)), Ok(()));
    }

    #[test]
    fn skip_reason_no_name() {
        assert_eq!(check(&f("  ", 1, 1)), Err(SkipReason::NoName));
    }

    #[test]
    fn skip_reason_no_email_or_phone() {
        assert_eq!(check(&f("Ann", 0, 0)), Err(SkipReason::NoEmailOrPhone));
        let mut blank = f("Ann", 0, 0);
        blank.emails.push("  ".into());
        assert_eq!(check(&blank), Err(SkipReason::NoEmailOrPhone));
    }

    #[test]
    fn skip_reason_too_many_emails() {
        assert_eq!(check(&f("Ann", 11, 1)), Err(SkipReason::TooManyEmails));
    }

    #[test]
    fn skip_reason_too_many_phones() {
        assert_eq!(check(&f("Ann", 1, 11)), Err(SkipReason::TooManyPhones));
    }
}
