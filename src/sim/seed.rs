//! Deterministic, realistic contact generator.
//!
//! [`people`]`(seed, n, salt)` returns `n` provider-neutral people. Person `i` depends only on
//! `(seed, salt, i)`, so the list is reproducible and tests can compute expectations.
//!
//! About a fifth of the people come from a **shared pool** that depends on `seed` alone: the
//! k-th pooled person of every list generated with the same seed is the same person (same
//! name, same email and phone numbers), possibly formatted differently (email case, phone
//! format, name written with different case, white space or Unicode composition). A Google
//! user and an Outlook user seeded with the same seed therefore share people, which is what
//! a sync daemon's matcher has to find. The rest depends on `salt` too (the simulator uses
//! [`user_salt`] of the user's login).
//!
//! Mix: Unicode names (accents, CJK), shared organisations, phones in US, GB and DE
//! national and international formats plus some unparseable ones, about 3 % without a name,
//! about 3 % without email and phone, about 1 % with 11 emails and 1 % with 11 phones,
//! birthdays (a quarter without a year), several addresses with the primary one not first,
//! and some photos.

use rand::{Rng, RngCore};

use super::common::{hash_str, mix};

/// A phone number of a seeded person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedPhone {
    /// The number as the provider stores it (national or international format, or junk).
    pub value: String,
    /// E.164 form when the number is a real-looking one, `None` for unparseable junk.
    pub e164: Option<String>,
    /// `mobile`, `work` or `home`.
    pub kind: &'static str,
}

/// A postal address of a seeded person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedAddress {
    pub street: String,
    pub city: String,
    pub region: String,
    pub postal_code: String,
    pub country: String,
    /// ISO 3166-1 alpha-2.
    pub country_code: String,
    /// `home`, `work` or `other`.
    pub kind: &'static str,
}

/// A provider-neutral person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedPerson {
    /// Given name; empty together with `family` for a person without a name.
    pub given: String,
    pub family: String,
    pub emails: Vec<String>,
    pub phones: Vec<SeedPhone>,
    pub addresses: Vec<SeedAddress>,
    /// Index of the primary address in `addresses` (meaningless when there is none).
    pub primary_address: usize,
    pub company: Option<String>,
    pub job_title: Option<String>,
    /// (year, month, day); year `None` for a birthday without a year.
    pub birthday: Option<(Option<i32>, u32, u32)>,
    pub has_photo: bool,
    /// Index in the shared pool, for people that come from it.
    pub pool_index: Option<usize>,
}

impl SeedPerson {
    /// True when the person has a name.
    pub fn has_name(&self) -> bool {
        !self.given.trim().is_empty() || !self.family.trim().is_empty()
    }

    /// "Given Family", trimmed.
    pub fn display_name(&self) -> String {
        format!("{} {}", self.given, self.family).trim().to_string()
    }
}

/// The salt the simulator uses for a user's login.
pub fn user_salt(user: &str) -> u64 {
    hash_str(user)
}

const GIVEN: &[&str] = &[
    "Anna",
    "Lukas",
    "Sophie",
    "Jonas",
    "Émile",
    "Zoë",
    "José",
    "María",
    "Søren",
    "Björn",
    "Łukasz",
    "Ömer",
    "François",
    "Chloé",
    "Nguyễn",
    "Ana",
    "Liam",
    "Olivia",
    "Noah",
    "Emma",
    "James",
    "Charlotte",
    "Mateo",
    "Ingrid",
    "Dmitri",
    "Aiko",
    "Hiroshi",
    "Wei",
    "Priya",
    "Arjun",
    "Fatima",
    "Yusuf",
    "Siobhán",
    "Ciarán",
    "Renée",
    "André",
    "Agnès",
    "Jürgen",
    "Małgorzata",
    "Tomás",
    "Kwame",
    "Amara",
    "Mei",
    "Sven",
    "Paula",
    "Hannah",
    "Ben",
];

const FAMILY: &[&str] = &[
    "Müller",
    "Schmidt",
    "Smith",
    "Johnson",
    "García",
    "Martínez",
    "Dubois",
    "Lefèvre",
    "O'Brien",
    "Nowak",
    "Kowalski",
    "Jensen",
    "Åberg",
    "Öztürk",
    "Yılmaz",
    "Rossi",
    "Bianchi",
    "Silva",
    "Santos",
    "Tanaka",
    "Suzuki",
    "Kim",
    "Park",
    "Patel",
    "Sharma",
    "Nguyen",
    "van der Berg",
    "de la Cruz",
    "MacDonald",
    "Brown",
    "Wilson",
    "Taylor",
    "Fischer",
    "Weber",
    "Schäfer",
    "Núñez",
    "Ivanova",
    "Papadopoulos",
    "Haddad",
    "Okafor",
    "Mensah",
];

/// Names written in CJK scripts: (family, given).
const CJK: &[(&str, &str)] = &[
    ("王", "伟"),
    ("李", "娜"),
    ("张", "敏"),
    ("山田", "太郎"),
    ("佐藤", "花子"),
    ("김", "민준"),
    ("陳", "美玲"),
];

const COMPANIES: &[&str] = &[
    "Acme Corporation",
    "Globex",
    "Initech",
    "Umbrella GmbH",
    "Stark Industries",
    "Wayne Enterprises",
    "Müller & Söhne KG",
    "Société Générale des Tests",
    "Hooli",
    "Vandelay Industries",
    "Soylent Ltd",
    "Tyrell Corp",
    "株式会社サンプル",
    "Nordwind AB",
    "Blue Sky Consulting",
    "Contoso Ltd",
    "Fabrikam Inc",
    "Northwind Traders",
];

const TITLES: &[&str] = &[
    "CEO",
    "CTO",
    "Sales Manager",
    "Account Executive",
    "Engineer",
    "Designer",
    "Head of Purchasing",
    "Office Manager",
    "Consultant",
    "Geschäftsführer",
    "Directrice",
];

const DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "example.net",
    "mail.example.de",
    "example.co.uk",
    "example.fr",
    "example.jp",
];

const CITIES: &[(&str, &str, &str, &str, &str)] = &[
    // city, region, postal code, country, country code
    ("Springfield", "IL", "62701", "United States", "US"),
    ("Seattle", "WA", "98121", "United States", "US"),
    ("London", "", "SW1A 1AA", "United Kingdom", "GB"),
    ("Manchester", "", "M1 1AE", "United Kingdom", "GB"),
    ("Berlin", "Berlin", "10115", "Germany", "DE"),
    ("München", "Bayern", "80331", "Germany", "DE"),
    ("Paris", "", "75001", "France", "FR"),
    ("東京", "東京都", "100-0001", "Japan", "JP"),
];

const STREETS: &[&str] = &[
    "Main Street",
    "High Street",
    "Hauptstraße",
    "Rue de la Paix",
    "Elm Avenue",
    "Königsallee",
    "Baker Street",
    "Gartenweg",
];

const POOL_SALT: u64 = 0x504f_4f4c; // "POOL"

/// SplitMix64 as a `rand` generator. The generator only has to be deterministic and
/// well mixed, and this one is cheap even in unoptimised builds, which keeps seeding 25k
/// contacts fast (ChaCha-based `SplitMix` is not, without optimisation).
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn seed_from_u64(seed: u64) -> SplitMix {
        SplitMix(seed)
    }
}

impl RngCore for SplitMix {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// Generates `n` people from `seed`, with per-list variation from `salt`.
pub fn people(seed: u64, n: usize, salt: u64) -> Vec<SeedPerson> {
    let mut out = Vec::with_capacity(n);
    let mut pool_next = 0usize;
    for i in 0..n {
        let mut rng = SplitMix::seed_from_u64(mix(mix(seed ^ mix(salt)) ^ i as u64));
        if rng.gen_bool(0.2) {
            let k = pool_next;
            pool_next += 1;
            let mut prng = SplitMix::seed_from_u64(mix(mix(seed ^ POOL_SALT) ^ k as u64));
            let base = core_person(&mut prng, mix(seed ^ POOL_SALT) ^ k as u64, true);
            out.push(vary(base, &mut rng, k));
        } else {
            out.push(core_person(&mut rng, mix(seed ^ salt) ^ i as u64, false));
        }
    }
    out
}

fn pick<'a, T>(rng: &mut SplitMix, xs: &'a [T]) -> &'a T {
    &xs[rng.gen_range(0..xs.len())]
}

/// ASCII folding for email local parts.
fn ascii_fold(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let r = match c {
            'á' | 'à' | 'â' | 'ä' | 'å' | 'ã' | 'Á' | 'Å' | 'Ä' => "a",
            'é' | 'è' | 'ê' | 'ë' | 'É' => "e",
            'í' | 'ì' | 'î' | 'ï' | 'ı' => "i",
            'ó' | 'ò' | 'ô' | 'ö' | 'ø' | 'Ö' | 'Ø' => "o",
            'ú' | 'ù' | 'û' | 'ü' | 'Ü' => "u",
            'ñ' => "n",
            'ç' => "c",
            'ł' | 'Ł' => "l",
            'ß' => "ss",
            'ễ' => "e",
            'ğ' => "g",
            'ş' => "s",
            c if c.is_ascii_alphanumeric() => {
                out.push(c.to_ascii_lowercase());
                continue;
            }
            _ => "",
        };
        out.push_str(r);
    }
    out
}

fn phone(rng: &mut SplitMix, kind: &'static str) -> SeedPhone {
    let n: u32 = rng.gen_range(100..200);
    match rng.gen_range(0..10) {
        0..=3 => {
            let area = *pick(rng, &["415", "206", "212", "312"]);
            let e164 = format!("+1{area}5550{:03}", n);
            let sub = &e164[e164.len() - 4..];
            let value = match rng.gen_range(0..3) {
                0 => format!("({area}) 555-{sub}"),
                1 => format!("{area}-555-{sub}"),
                _ => format!("+1 {area} 555 {sub}"),
            };
            SeedPhone {
                value,
                e164: Some(e164),
                kind,
            }
        }
        4..=6 => {
            let e164 = format!("+44207946{:04}", n);
            let sub = &e164[e164.len() - 4..];
            let value = if rng.gen_bool(0.5) {
                format!("020 7946 {sub}")
            } else {
                format!("+44 20 7946 {sub}")
            };
            SeedPhone {
                value,
                e164: Some(e164),
                kind,
            }
        }
        7..=8 => {
            let e164 = format!("+4930123456{:03}", n);
            let sub = &e164[e164.len() - 5..];
            let value = if rng.gen_bool(0.5) {
                format!("030 123{sub}")
            } else {
                format!("+49 30 123{sub}")
            };
            SeedPhone {
                value,
                e164: Some(e164),
                kind,
            }
        }
        _ => {
            let value = match rng.gen_range(0..3) {
                0 => format!("ext. {n}"),
                1 => "ask reception".to_string(),
                _ => format!("{}", n % 97),
            };
            SeedPhone {
                value,
                e164: None,
                kind,
            }
        }
    }
}

/// Reformats a phone (same number, other format), for the other side of a shared person.
fn reformat(p: &SeedPhone, rng: &mut SplitMix) -> SeedPhone {
    let Some(e) = &p.e164 else { return p.clone() };
    let value = if let Some(rest) = e.strip_prefix("+1") {
        match rng.gen_range(0..3) {
            0 => format!("({}) {}-{}", &rest[0..3], &rest[3..6], &rest[6..]),
            1 => format!("+1 {}.{}.{}", &rest[0..3], &rest[3..6], &rest[6..]),
            _ => e.clone(),
        }
    } else if let Some(rest) = e.strip_prefix("+44") {
        if rng.gen_bool(0.5) {
            format!("0{} {} {}", &rest[0..2], &rest[2..6], &rest[6..])
        } else {
            e.clone()
        }
    } else if let Some(rest) = e.strip_prefix("+49") {
        if rng.gen_bool(0.5) {
            format!("0{} {}", &rest[0..2], &rest[2..])
        } else {
            format!("+49 ({}) {}", &rest[0..2], &rest[2..])
        }
    } else {
        e.clone()
    };
    SeedPhone {
        value,
        e164: p.e164.clone(),
        kind: p.kind,
    }
}

fn core_person(rng: &mut SplitMix, uniq: u64, pooled: bool) -> SeedPerson {
    let (given, family) = if rng.gen_bool(0.08) {
        let (f, g) = *pick(rng, CJK);
        (g.to_string(), f.to_string())
    } else {
        (pick(rng, GIVEN).to_string(), pick(rng, FAMILY).to_string())
    };
    let tag = format!("{:x}", uniq & 0xff_ffff);
    let local = {
        let g = ascii_fold(&given);
        let f = ascii_fold(&family);
        if g.is_empty() || f.is_empty() {
            format!("contact.{tag}")
        } else {
            format!("{g}.{f}.{tag}")
        }
    };
    let domain = *pick(rng, DOMAINS);
    let mut emails = Vec::new();
    let mut phones = Vec::new();
    let roll: f64 = rng.gen();
    // Pooled people always carry an email or a phone, so that they can be matched.
    let no_contact = !pooled && roll < 0.03;
    if !no_contact {
        let r2: f64 = rng.gen();
        if r2 < 0.85 {
            emails.push(format!("{local}@{domain}"));
            if rng.gen_bool(0.2) {
                emails.push(format!("{local}@{}", pick(rng, DOMAINS)));
            }
        }
        if r2 >= 0.6 || emails.is_empty() {
            let kinds = ["mobile", "work", "home"];
            let np = rng.gen_range(1..=3);
            for j in 0..np {
                phones.push(phone(rng, kinds[j % 3]));
            }
        }
        if !pooled {
            let r3: f64 = rng.gen();
            if r3 < 0.01 {
                emails = (0..11).map(|k| format!("{local}.{k}@{domain}")).collect();
            } else if r3 < 0.02 {
                let kinds = ["mobile", "work", "home"];
                phones = (0..11).map(|k| phone(rng, kinds[k % 3])).collect();
            }
        }
    }
    let (company, job_title) = if rng.gen_bool(0.6) {
        (
            Some(pick(rng, COMPANIES).to_string()),
            rng.gen_bool(0.7).then(|| pick(rng, TITLES).to_string()),
        )
    } else {
        (None, None)
    };
    let mut addresses = Vec::new();
    let mut primary_address = 0;
    let ra: f64 = rng.gen();
    let naddr = if ra < 0.35 {
        1
    } else if ra < 0.5 {
        rng.gen_range(2..=3)
    } else {
        0
    };
    let kinds = ["home", "work", "other"];
    for k in 0..naddr {
        let (city, region, pc, country, cc) = *pick(rng, CITIES);
        addresses.push(SeedAddress {
            street: format!("{} {}", rng.gen_range(1..200), pick(rng, STREETS)),
            city: city.into(),
            region: region.into(),
            postal_code: pc.into(),
            country: country.into(),
            country_code: cc.into(),
            kind: kinds[k % 3],
        });
    }
    if naddr > 1 {
        primary_address = rng.gen_range(1..naddr);
    }
    let birthday = rng.gen_bool(0.3).then(|| {
        let month = rng.gen_range(1..=12);
        let day = rng.gen_range(1..=28);
        let year = (!rng.gen_bool(0.25)).then(|| rng.gen_range(1950..2005));
        (year, month, day)
    });
    let has_photo = rng.gen_bool(0.1);
    let (given, family) = if !pooled && rng.gen_bool(0.03) {
        (String::new(), String::new())
    } else {
        (given, family)
    };
    SeedPerson {
        given,
        family,
        emails,
        phones,
        addresses,
        primary_address,
        company,
        job_title,
        birthday,
        has_photo,
        pool_index: None,
    }
}

/// The per-list rendering of a pooled person: same identity, different formatting.
fn vary(mut p: SeedPerson, rng: &mut SplitMix, k: usize) -> SeedPerson {
    p.pool_index = Some(k);
    for ph in p.phones.iter_mut() {
        *ph = reformat(ph, rng);
    }
    if rng.gen_bool(0.3) {
        for e in p.emails.iter_mut() {
            let (local, domain) = e.split_once('@').unwrap_or((e.as_str(), ""));
            let mut c = local.chars();
            let cap: String = c
                .next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default();
            *e = format!("{cap}@{}", domain.to_uppercase());
        }
    }
    // Names that differ only by case, white space or Unicode composition.
    match rng.gen_range(0..10) {
        // Upper case only when case folding brings it back (not for "ı", "ß", ...).
        0 if p.family.to_uppercase().to_lowercase() == p.family.to_lowercase() => {
            p.family = p.family.to_uppercase()
        }
        1 => p.given = format!(" {}  ", p.given),
        2 => p.given = decompose(&p.given),
        3 => p.family = p.family.replace(' ', "  "),
        4 => p.given = fullwidth(&p.given),
        _ => {}
    }
    p
}

/// Writes common precomposed Latin letters as base letter plus combining mark (NFD).
fn decompose(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let (b, m) = match c {
            'é' => ('e', '\u{301}'),
            'É' => ('E', '\u{301}'),
            'è' => ('e', '\u{300}'),
            'ë' => ('e', '\u{308}'),
            'ö' => ('o', '\u{308}'),
            'ü' => ('u', '\u{308}'),
            'ä' => ('a', '\u{308}'),
            'á' => ('a', '\u{301}'),
            'ó' => ('o', '\u{301}'),
            'ç' => ('c', '\u{327}'),
            'Ö' => ('O', '\u{308}'),
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push(b);
        out.push(m);
    }
    out
}

/// ASCII letters as their full-width forms (NFKC folds them back).
fn fullwidth(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap_or(c)
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic() {
        assert_eq!(people(7, 300, 1), people(7, 300, 1));
        assert_ne!(people(7, 50, 1), people(7, 50, 2));
    }

    #[test]
    fn prefix_stable() {
        let a = people(3, 100, 9);
        let b = people(3, 40, 9);
        assert_eq!(&a[..40], &b[..]);
    }

    #[test]
    fn pool_shared_across_salts() {
        let g = people(42, 500, user_salt("alice@example.com"));
        let o = people(42, 500, user_salt("bob@example.com"));
        let gp: Vec<_> = g.iter().filter(|p| p.pool_index.is_some()).collect();
        let op: Vec<_> = o.iter().filter(|p| p.pool_index.is_some()).collect();
        assert!(gp.len() > 60 && gp.len() < 140, "{}", gp.len());
        let n = gp.len().min(op.len());
        assert!(n > 50);
        for k in 0..n {
            let (a, b) = (gp[k], op[k]);
            assert_eq!(a.pool_index, b.pool_index);
            let e164 = |p: &SeedPerson| p.phones.iter().map(|x| x.e164.clone()).collect::<Vec<_>>();
            assert_eq!(e164(a), e164(b));
            let lower = |p: &SeedPerson| {
                p.emails
                    .iter()
                    .map(|e| e.to_lowercase())
                    .collect::<Vec<_>>()
            };
            assert_eq!(lower(a), lower(b));
            assert!(!a.emails.is_empty() || !a.phones.is_empty());
        }
        // A different seed gives a different pool.
        let other = people(43, 500, user_salt("alice@example.com"));
        assert_ne!(g, other);
    }

    /// Shared people have the same name after NFKC, case folding and white-space folding,
    /// and some pairs differ before it.
    #[test]
    fn pooled_names_match_after_normalisation() {
        use unicode_normalization::UnicodeNormalization;
        let norm = |p: &SeedPerson| -> String {
            let s: String = format!("{} {}", p.given, p.family).nfkc().collect();
            s.to_lowercase()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let a: Vec<SeedPerson> = people(8, 2000, 1)
            .into_iter()
            .filter(|p| p.pool_index.is_some())
            .collect();
        let b: Vec<SeedPerson> = people(8, 2000, 2)
            .into_iter()
            .filter(|p| p.pool_index.is_some())
            .collect();
        let mut raw_differs = 0;
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(norm(x), norm(y));
            if x.display_name() != y.display_name() {
                raw_differs += 1;
            }
        }
        assert!(raw_differs > 20, "{raw_differs}");
    }

    #[test]
    fn realistic_mix() {
        let ps = people(1, 5000, 5);
        let share =
            |f: &dyn Fn(&SeedPerson) -> bool| ps.iter().filter(|p| f(p)).count() as f64 / 5000.0;
        let no_name = share(&|p| !p.has_name());
        assert!(no_name > 0.01 && no_name < 0.05, "{no_name}");
        let none = share(&|p| p.emails.is_empty() && p.phones.is_empty());
        assert!(none > 0.01 && none < 0.05, "{none}");
        assert!(share(&|p| p.emails.len() == 11) > 0.003);
        assert!(share(&|p| p.phones.len() == 11) > 0.003);
        assert!(share(&|p| matches!(p.birthday, Some((None, _, _)))) > 0.02);
        assert!(share(&|p| p.addresses.len() > 1 && p.primary_address > 0) > 0.05);
        assert!(share(&|p| p.has_photo) > 0.05);
        assert!(share(&|p| p.phones.iter().any(|x| x.e164.is_none())) > 0.02);
        assert!(share(&|p| p.given.chars().any(|c| c as u32 > 0x2E80)) > 0.01);
        assert!(share(&|p| p.company.as_deref() == Some("Globex")) > 0.01);
    }
}
