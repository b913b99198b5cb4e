use super::*;
use reqwest::Method;

fn url(s: &str) -> url::Url {
    url::Url::parse(s).unwrap()
}

#[test]
fn transport_sends_credentials_only_to_admitted_origins() {
    let t = Transport::new(
        &url("https://dav.example.com/remote.php/dav"),
        Auth::None,
        RetryPolicy::fast(),
    )
    .unwrap();
    assert!(t.is_admitted(&url("https://dav.example.com/other/path")));
    assert!(!t.is_admitted(&url("https://evil.example.net/")));
    assert!(!t.is_admitted(&url("http://dav.example.com/")));
    assert!(t.admit(&url("http://p01-contacts.example.com/")).is_err());
    assert!(t.admit(&url("http://127.0.0.1:5232/")).is_ok());
    assert!(t.admit(&url("https://p01-contacts.example.com/")).is_ok());
    assert!(t.is_admitted(&url("https://p01-contacts.example.com:443/x")));
    assert!(!t.is_admitted(&url("https://user:pw@dav.example.com/x")));
}

#[test]
fn auth_debug_redacts_the_password() {
    let a = Auth::Basic {
        username: "ops".into(),
        password: SecretString::from("hunter2".to_string()),
    };
    let s = format!("{a:?}");
    assert!(s.contains("ops") && !s.contains("hunter2"));
    let t = Transport::new(&url("https://dav.example.com/"), a, RetryPolicy::fast()).unwrap();
    let s = format!("{t:?}");
    assert!(s.contains("ops") && !s.contains("hunter2"), "{s}");
}

#[test]
fn paging_links_are_followed_only_on_admitted_origins() {
    let t = Transport::new(
        &url("https://graph.microsoft.com/v1.0"),
        Auth::None,
        RetryPolicy::fast(),
    )
    .unwrap()
    .with_service("Microsoft Graph");
    assert!(t
        .check_link("https://graph.microsoft.com/v1.0/me/contacts/delta?$skiptoken=x")
        .is_ok());
    for bad in [
        "https://evil.example/v1.0/me/contacts?$skiptoken=x",
        "http://graph.microsoft.com/v1.0/me/contacts",
        "https://graph.microsoft.com:8443/v1.0/",
        "not a url",
    ] {
        let e = t.check_link(bad).unwrap_err();
        assert!(
            matches!(&e, ProviderError::Permanent(m) if m.starts_with("Microsoft Graph")),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn public_hosts_get_no_credentials_and_nothing_else_is_sent() {
    let t = Transport::new(
        &url("http://127.0.0.1:4000"),
        Auth::None,
        RetryPolicy::fast(),
    )
    .unwrap()
    .with_public_hosts(&["googleusercontent.com"]);
    let u = url("https://lh3.googleusercontent.com/a/photo=s100");
    assert!(t.is_public(&u) && !t.is_admitted(&u) && t.may_send(&u));
    assert!(t.may_send(&url("http://127.0.0.1:4000/photos/1")));
    for bad in [
        "http://lh3.googleusercontent.com/a",
        "https://googleusercontent.com.evil.example/a",
        "https://evilgoogleusercontent.com/a",
        "https://lh3.googleusercontent.com:8443/a",
        "https://user:pw@lh3.googleusercontent.com/a",
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/",
        "http://127.0.0.1:4001/photos/1",
        "https://[::1]/x",
        "file:///etc/passwd",
    ] {
        assert!(!t.may_send(&url(bad)), "{bad}");
    }
}

#[test]
fn statuses_classify_the_same_for_every_provider() {
    let c = |s: u16| classify(StatusCode::from_u16(s).unwrap());
    assert_eq!(c(200), Class::Success);
    assert_eq!(c(207), Class::Success);
    assert_eq!(c(401), Class::Reauth);
    assert_eq!(c(404), Class::Gone);
    assert_eq!(c(410), Class::Gone);
    assert_eq!(c(429), Class::Throttled);
    for s in [408, 500, 502, 503, 504] {
        assert_eq!(c(s), Class::Transient, "{s}");
    }
    for s in [400, 403, 409, 412, 422] {
        assert_eq!(c(s), Class::Permanent, "{s}");
    }
    assert!(matches!(
        Class::Reauth.into_error("x".into(), None),
        ProviderError::ReauthRequired(_)
    ));
    assert!(matches!(
        Class::Gone.into_error("x".into(), None),
        ProviderError::Permanent(_)
    ));
    assert_eq!(
        Class::Throttled.into_error("x".into(), Some(Duration::from_secs(2))),
        ProviderError::Throttled {
            retry_after: Some(Duration::from_secs(2))
        }
    );
}

#[test]
fn oversize_is_recognised_and_sizes_read_well() {
    assert_eq!(size(64 * 1024 * 1024), "64 MiB");
    assert_eq!(size(512 * 1024), "512 KiB");
    assert_eq!(size(1000), "1000 bytes");
    let e = ProviderError::Transient(format!("x larger than 1 MiB{OVERSIZE}; it was not read."));
    assert!(is_oversize(&e));
    assert!(!is_oversize(&ProviderError::Transient("cut off".into())));
}

#[test]
fn requests_build_their_query_and_json_body() {
    let r = Request::get(
        url("https://people.googleapis.com/v1/people/me/connections"),
        10,
    )
    .query(&[
        ("personFields", "names,emailAddresses"),
        ("pageToken", "a b"),
    ])
    .json(&serde_json::json!({"x": 1}))
    .not_idempotent()
    .cost(0);
    assert_eq!(
        r.url.query(),
        Some("personFields=names%2CemailAddresses&pageToken=a+b")
    );
    assert_eq!(r.body.as_deref(), Some(&b"{\"x\":1}"[..]));
    assert!(!r.idempotent);
    assert_eq!(r.cost, 1);
    let u = url("https://dav.example.com/a.vcf");
    // Idempotent unless the caller says otherwise, whatever the method.
    for m in [
        Method::GET,
        Method::PUT,
        Method::DELETE,
        Method::POST,
        Method::PATCH,
    ] {
        assert!(Request::new(m.clone(), u.clone(), 1).idempotent, "{m}");
    }
    assert!(
        Request::new(Method::POST, u, 1)
            .not_idempotent()
            .idempotent()
            .idempotent
    );
    assert!(redact(&r.url).ends_with("/connections"));
}
