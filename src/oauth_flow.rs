//! Getting a refresh token from a person: OAuth 2 authorization code with PKCE (S256) and a
//! `state` check, for the CLI's loopback redirect (`contact-sync connect`) and the
//! dashboard's "Add account" flow; the device authorization grant for Outlook
//! (`connect --device-code`); and revocation at Google (`disconnect`).
//!
//! Every request goes through the oauth2 crate with a reqwest client that follows no
//! redirects. Tokens are held in [`SecretString`]s and never logged.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError,
    Scope, StandardDeviceAuthorizationResponse, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{self, AccountConfig, Config, ProviderKind};
use crate::providers::build::{google_scopes, outlook_scopes};

/// The endpoints and client registration one account authorises against.
#[derive(Clone)]
pub struct Endpoints {
    pub provider: ProviderKind,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub auth_url: String,
    pub token_url: String,
    /// Outlook only.
    pub device_url: Option<String>,
    /// Google only.
    pub revoke_url: Option<String>,
    pub scopes: Vec<String>,
    /// Extra authorization parameters (Google: `access_type=offline`, `prompt=consent`).
    pub extra: Vec<(String, String)>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("provider", &self.provider)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("auth_url", &self.auth_url)
            .field("token_url", &self.token_url)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// The endpoints of an account declared in the configuration.
pub fn endpoints(config: &Config, account: &AccountConfig) -> Result<Endpoints, String> {
    let secret = |f: &Option<std::path::PathBuf>| -> Result<Option<SecretString>, String> {
        f.as_ref()
            .map(|p| config::read_secret_file(p).map_err(|e| e.to_string()))
            .transpose()
    };
    match account.provider {
        ProviderKind::Google => {
            let p = config
                .providers
                .google
                .as_ref()
                .ok_or("[providers.google] is not configured.")?;
            Ok(Endpoints {
                provider: ProviderKind::Google,
                client_id: p.client_id.clone(),
                client_secret: secret(&p.client_secret_file)?,
                auth_url: p.auth_url.clone(),
                token_url: p.token_url.clone(),
                device_url: None,
                revoke_url: Some(p.revoke_url.clone()),
                scopes: google_scopes(account.direction),
                extra: vec![
                    ("access_type".into(), "offline".into()),
                    ("prompt".into(), "consent".into()),
                ],
            })
        }
        ProviderKind::Outlook => {
            let p = config
                .providers
                .outlook
                .as_ref()
                .ok_or("[providers.outlook] is not configured.")?;
            Ok(Endpoints {
                provider: ProviderKind::Outlook,
                client_id: p.client_id.clone(),
                client_secret: secret(&p.client_secret_file)?,
                auth_url: p.auth_url(),
                token_url: p.token_url(),
                device_url: Some(p.device_code_url()),
                revoke_url: None,
                scopes: outlook_scopes(account.direction),
                extra: vec![],
            })
        }
        ProviderKind::CardDav => Err(format!(
            "Account {} is a carddav account: it signs in with its password_file; there is nothing to connect.",
            account.id
        )),
    }
}

/// A reqwest client that follows no redirects (required by the oauth2 crate's advice
/// against SSRF through the token endpoint).
pub fn http_client() -> reqwest::Client {
    crate::providers::http::client(Duration::from_secs(30))
}

/// An authorization request on its way to the provider.
pub struct Pending {
    /// The URL to open in a browser.
    pub url: String,
    /// The `state` nonce the callback must bring back.
    pub state: String,
    pub redirect_uri: String,
    verifier: PkceCodeVerifier,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

fn bad(what: &str) -> impl FnOnce(url::ParseError) -> String + '_ {
    move |e| format!("Invalid {what}: {e}.")
}

/// Builds the authorization URL with a fresh PKCE verifier (S256) and `state` nonce.
pub fn begin(ep: &Endpoints, redirect_uri: &str) -> Result<Pending, String> {
    let client = BasicClient::new(ClientId::new(ep.client_id.clone()))
        .set_auth_uri(AuthUrl::new(ep.auth_url.clone()).map_err(bad("auth_url"))?)
        .set_redirect_uri(RedirectUrl::new(redirect_uri.to_string()).map_err(bad("redirect URI"))?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut req = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge);
    for s in &ep.scopes {
        req = req.add_scope(Scope::new(s.clone()));
    }
    for (k, v) in &ep.extra {
        req = req.add_extra_param(k.clone(), v.clone());
    }
    let (url, state) = req.url();
    Ok(Pending {
        url: url.to_string(),
        state: state.secret().clone(),
        redirect_uri: redirect_uri.to_string(),
        verifier,
    })
}

fn describe<E: std::error::Error, T: oauth2::ErrorResponse>(e: &RequestTokenError<E, T>) -> String {
    match e {
        RequestTokenError::ServerResponse(r) => {
            // The provider's error code and description; no secrets are in either.
            let text = serde_json::to_value(r)
                .ok()
                .map(|v| {
                    let code = v["error"].as_str().unwrap_or("error").to_string();
                    let desc: String = v["error_description"]
                        .as_str()
                        .unwrap_or("")
                        .chars()
                        .take(200)
                        .collect();
                    format!("{code}: {desc}")
                })
                .unwrap_or_else(|| "error".into());
            format!("the token endpoint answered {text}")
        }
        RequestTokenError::Request(e) => format!("cannot reach the token endpoint: {e}"),
        RequestTokenError::Parse(e, _) => {
            format!("the token endpoint sent an unreadable answer: {e}")
        }
        RequestTokenError::Other(e) => e.clone(),
    }
}

/// A basic client with only its token endpoint set.
type TokenClient = BasicClient<
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn token_client(ep: &Endpoints) -> Result<TokenClient, String> {
    let mut client = BasicClient::new(ClientId::new(ep.client_id.clone()))
        .set_token_uri(TokenUrl::new(ep.token_url.clone()).map_err(bad("token_url"))?)
        .set_auth_type(AuthType::RequestBody);
    if let Some(s) = &ep.client_secret {
        client = client.set_client_secret(ClientSecret::new(s.expose_secret().to_string()));
    }
    Ok(client)
}

/// Exchanges an authorization code for the refresh token.
pub async fn finish(ep: &Endpoints, pending: Pending, code: &str) -> Result<SecretString, String> {
    let client = token_client(ep)?.set_redirect_uri(
        RedirectUrl::new(pending.redirect_uri.clone()).map_err(bad("redirect URI"))?,
    );
    let mut req = client
        .exchange_code(AuthorizationCode::new(code.to_string()))
        .set_pkce_verifier(pending.verifier);
    if ep.provider == ProviderKind::Outlook {
        // Microsoft asks for the scopes again when redeeming the code.
        req = req.add_extra_param("scope", ep.scopes.join(" "));
    }
    let tok = req
        .request_async(&http_client())
        .await
        .map_err(|e| describe(&e))?;
    tok.refresh_token()
        .map(|r| SecretString::from(r.secret().clone()))
        .ok_or_else(|| {
            "the provider sent no refresh token (Google: access_type=offline and prompt=consent; Microsoft: the offline_access scope)".to_string()
        })
}

/// Checks a callback's query: the provider's error, the `state`, and the code.
pub fn callback_code(
    query: &HashMap<String, String>,
    expected_state: &str,
) -> Result<String, String> {
    use subtle::ConstantTimeEq;
    if let Some(err) = query.get("error") {
        let desc = query
            .get("error_description")
            .map(|d| format!(": {}", d.chars().take(200).collect::<String>()))
            .unwrap_or_default();
        return Err(format!(
            "the provider refused the authorization ({err}{desc})"
        ));
    }
    let state = query.get("state").map(String::as_str).unwrap_or("");
    if !bool::from(state.as_bytes().ct_eq(expected_state.as_bytes())) {
        return Err("the `state` parameter does not match this authorization request".into());
    }
    query
        .get("code")
        .filter(|c| !c.is_empty())
        .cloned()
        .ok_or_else(|| "the redirect carried no authorization code".into())
}

const DONE_PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>contact-sync</title></head><body><h1>contact-sync</h1><p>The authorization reached contact-sync. You can close this window and return to the terminal.</p></body></html>";

/// The CLI's loopback flow: listens on 127.0.0.1 (random port), prints the URL, optionally
/// opens a browser, waits for the redirect, checks `state`, exchanges the code. Must run
/// inside an actix System.
pub async fn loopback(
    ep: &Endpoints,
    open_browser: bool,
    timeout: Duration,
) -> Result<SecretString, String> {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<HashMap<String, String>>(4);
    let server = HttpServer::new(move || {
        let tx = tx.clone();
        App::new().default_service(web::to(move |req: actix_web::HttpRequest| {
            let tx = tx.clone();
            async move {
                let q: HashMap<String, String> =
                    url::form_urlencoded::parse(req.query_string().as_bytes())
                        .into_owned()
                        .collect();
                if q.contains_key("code") || q.contains_key("error") {
                    let _ = tx.send(q).await;
                    HttpResponse::Ok()
                        .content_type("text/html; charset=utf-8")
                        .body(DONE_PAGE)
                } else {
                    HttpResponse::NotFound().finish()
                }
            }
        }))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(("127.0.0.1", 0))
    .map_err(|e| format!("cannot listen on 127.0.0.1 for the redirect: {e}"))?;
    let port = server
        .addrs()
        .first()
        .map(|a| a.port())
        .ok_or("the redirect listener bound no port")?;
    // Google's desktop clients accept any loopback port on 127.0.0.1; Microsoft's
    // registration is `http://localhost` (port ignored).
    let host = match ep.provider {
        ProviderKind::Google => "127.0.0.1",
        ProviderKind::Outlook | ProviderKind::CardDav => "localhost",
    };
    let redirect = format!("http://{host}:{port}/");
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    let pending = begin(ep, &redirect)?;
    println!(
        "Open this URL in a browser to authorise the account:\n\n{}\n",
        pending.url
    );
    println!("Waiting for the redirect to {redirect} ...");
    if open_browser {
        let opened = std::process::Command::new("xdg-open")
            .arg(&pending.url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if opened.is_err() {
            println!("(No browser could be opened here; open the URL on any machine whose browser can reach this one's loopback, or use --device-code for Outlook.)");
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let deadline = Instant::now() + timeout;
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Err(_) => {
                break Err(format!(
                    "no redirect came back within {}; run `connect` again",
                    humantime::format_duration(timeout)
                ))
            }
            Ok(None) => break Err("the redirect listener stopped".to_string()),
            Ok(Some(q)) => match callback_code(&q, &pending.state) {
                Ok(code) => break Ok(code),
                // A stray request with a wrong state: keep waiting for the real one.
                Err(e) if q.contains_key("code") => {
                    eprintln!("Ignoring a redirect: {e}.");
                }
                Err(e) => break Err(e),
            },
        }
    };
    handle.stop(false).await;
    let code = result?;
    finish(ep, pending, &code).await
}

/// The device authorization grant (Outlook): prints the code to enter and polls the token
/// endpoint (authorization_pending, slow_down) until the person approves, declines or the
/// code expires.
pub async fn device_code(ep: &Endpoints, timeout: Duration) -> Result<SecretString, String> {
    let device_url = ep
        .device_url
        .clone()
        .ok_or("this provider has no device authorization endpoint; use the browser flow")?;
    let client = token_client(ep)?.set_device_authorization_url(
        DeviceAuthorizationUrl::new(device_url).map_err(bad("device_code_url"))?,
    );
    let http = http_client();
    let mut req = client.exchange_device_code();
    for s in &ep.scopes {
        req = req.add_scope(Scope::new(s.clone()));
    }
    let details: StandardDeviceAuthorizationResponse =
        req.request_async(&http).await.map_err(|e| describe(&e))?;
    println!(
        "To authorise the account, open {} in any browser and enter the code {}",
        details.verification_uri().as_str(),
        details.user_code().secret()
    );
    println!(
        "Waiting up to {} ...",
        humantime::format_duration(timeout.min(details.expires_in()))
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let tok = client
        .exchange_device_access_token(&details)
        .request_async(&http, tokio::time::sleep, Some(timeout))
        .await
        .map_err(|e| match &e {
            RequestTokenError::ServerResponse(r) => match r.error() {
                oauth2::DeviceCodeErrorResponseType::ExpiredToken => {
                    "the device code expired before it was approved; run `connect --device-code` again".to_string()
                }
                oauth2::DeviceCodeErrorResponseType::AccessDenied => {
                    "the sign-in was declined".to_string()
                }
                oauth2::DeviceCodeErrorResponseType::Basic(
                    oauth2::basic::BasicErrorResponseType::Extension(x),
                ) if x == "authorization_declined" => "the sign-in was declined".to_string(),
                _ => describe(&e),
            },
            _ => describe(&e),
        })?;
    tok.refresh_token()
        .map(|r| SecretString::from(r.secret().clone()))
        .ok_or_else(|| "the provider sent no refresh token (is offline_access granted?)".into())
}

/// Revokes a Google grant (`POST revoke_url` with `token=`). Microsoft has no endpoint to
/// revoke one refresh token of a public client.
pub async fn revoke_google(revoke_url: &str, token: &SecretString) -> Result<(), String> {
    let resp = http_client()
        .post(revoke_url)
        .form(&[("token", token.expose_secret())])
        .send()
        .await
        .map_err(|e| format!("cannot reach {revoke_url}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let code = body["error"].as_str().unwrap_or("");
    if code == "invalid_token" {
        // Already revoked or expired: nothing left to revoke.
        return Ok(());
    }
    Err(format!(
        "the revocation endpoint answered HTTP {status} {code}"
    ))
}

/// Authorization requests started from the dashboard, by `state` nonce.
pub struct WebPending {
    pub account: String,
    /// The dashboard session that started it.
    pub session: String,
    pub pending: Pending,
    pub started: Instant,
}

/// How long a dashboard authorization request stays valid.
pub const WEB_PENDING_TTL: Duration = Duration::from_secs(600);
/// Authorization requests in progress at once, over all sessions.
pub const WEB_PENDING_MAX: usize = 32;
/// Authorization requests in progress at once for one dashboard session.
pub const WEB_PENDING_PER_SESSION: usize = 8;

static WEB: LazyLock<Mutex<HashMap<String, WebPending>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Keeps a dashboard authorization request until its callback (or 10 minutes). When the
/// table (or the session's share of it) is full, the new request is refused: a flood of
/// starts never evicts a flow in progress.
pub fn remember(account: &str, session: &str, pending: Pending) -> Result<String, String> {
    let mut map = WEB.lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, p| p.started.elapsed() < WEB_PENDING_TTL);
    let mine = map.values().filter(|p| p.session == session).count();
    if mine >= WEB_PENDING_PER_SESSION || map.len() >= WEB_PENDING_MAX {
        return Err(format!(
            "too many authorizations are in progress; finish one or wait up to {} minutes",
            WEB_PENDING_TTL.as_secs() / 60
        ));
    }
    let state = pending.state.clone();
    map.insert(
        state.clone(),
        WebPending {
            account: account.to_string(),
            session: session.to_string(),
            pending,
            started: Instant::now(),
        },
    );
    Ok(state)
}

/// Whether `state` is a live dashboard authorization request.
pub fn is_pending(state: &str) -> bool {
    let map = WEB.lock().unwrap_or_else(|p| p.into_inner());
    !state.is_empty()
        && map
            .get(state)
            .is_some_and(|p| p.started.elapsed() < WEB_PENDING_TTL)
}

/// Takes (once) the dashboard authorization request of a `state` nonce.
pub fn take(state: &str) -> Option<WebPending> {
    let mut map = WEB.lock().unwrap_or_else(|p| p.into_inner());
    map.remove(state)
        .filter(|p| p.started.elapsed() < WEB_PENDING_TTL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn google() -> Endpoints {
        Endpoints {
            provider: ProviderKind::Google,
            client_id: "cid".into(),
            client_secret: Some(SecretString::from("shh-secret".to_string())),
            auth_url: "https://accounts.example/o/oauth2/v2/auth".into(),
            token_url: "https://accounts.example/token".into(),
            device_url: None,
            revoke_url: None,
            scopes: vec!["https://www.googleapis.com/auth/contacts".into()],
            extra: vec![
                ("access_type".into(), "offline".into()),
                ("prompt".into(), "consent".into()),
            ],
        }
    }

    #[test]
    fn authorization_url_has_pkce_s256_state_scopes_and_offline_access() {
        let p = begin(&google(), "http://127.0.0.1:5000/").unwrap();
        let u = url::Url::parse(&p.url).unwrap();
        let q: HashMap<_, _> = u.query_pairs().into_owned().collect();
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["code_challenge"].len(), 43);
        assert_eq!(q["state"], p.state);
        assert!(p.state.len() >= 16);
        assert_eq!(q["access_type"], "offline");
        assert_eq!(q["prompt"], "consent");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:5000/");
        assert_eq!(q["scope"], "https://www.googleapis.com/auth/contacts");
        assert!(!format!("{p:?} {:?}", google()).contains("shh-secret"));
        let other = begin(&google(), "http://127.0.0.1:5000/").unwrap();
        assert_ne!(other.state, p.state);
    }

    #[test]
    fn callback_checks_state_and_errors() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            callback_code(&q(&[("code", "c1"), ("state", "s")]), "s").unwrap(),
            "c1"
        );
        assert!(callback_code(&q(&[("code", "c1"), ("state", "x")]), "s")
            .unwrap_err()
            .contains("state"));
        assert!(callback_code(&q(&[("code", "c1")]), "s").is_err());
        assert!(
            callback_code(&q(&[("error", "access_denied"), ("state", "s")]), "s")
                .unwrap_err()
                .contains("access_denied")
        );
        assert!(callback_code(&q(&[("state", "s")]), "s").is_err());
    }

    #[test]
    fn web_requests_are_taken_once() {
        let p = begin(&google(), "http://127.0.0.1:5000/oauth/google/callback").unwrap();
        let state = remember("acc", "session-a", p).unwrap();
        assert!(is_pending(&state));
        assert_eq!(take(&state).map(|p| p.account).as_deref(), Some("acc"));
        assert!(take(&state).is_none());
        assert!(!is_pending(&state));
        assert!(take("nope").is_none());
    }

    #[test]
    fn a_flood_of_starts_is_refused_and_never_evicts_a_flow_in_progress() {
        let first = remember(
            "acc",
            "session-flood",
            begin(&google(), "http://127.0.0.1:5000/cb").unwrap(),
        )
        .unwrap();
        let mut refused = 0;
        for _ in 0..100 {
            let p = begin(&google(), "http://127.0.0.1:5000/cb").unwrap();
            if remember("acc", "session-flood", p).is_err() {
                refused += 1;
            }
        }
        assert!(refused >= 100 - WEB_PENDING_PER_SESSION, "{refused}");
        assert!(is_pending(&first), "the first flow was evicted");
        assert!(take(&first).is_some());
    }
}
