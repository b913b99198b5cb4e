//! OAuth 2 access tokens from a stored refresh token (oauth2 crate).
//!
//! A [`TokenSource`] hands out access tokens, refreshing them a minute before they expire
//! and once more when the API answers 401. A refresh token the provider rotates (Microsoft
//! does on every refresh) is sealed and stored through the [`GrantSink`] at once, before the
//! new access token is used. `invalid_grant` becomes [`ProviderError::ReauthRequired`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, ClientId, ClientSecret, RefreshToken, RequestTokenError, Scope, TokenResponse,
    TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use super::ProviderError;

/// Where a token source keeps a rotated refresh token.
pub type GrantSink = Arc<dyn Fn(&SecretString) -> Result<(), String> + Send + Sync>;

/// The client registration and endpoints of one provider.
#[derive(Clone)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub token_url: String,
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("token_url", &self.token_url)
            .field("scopes", &self.scopes)
            .finish()
    }
}

struct Cached {
    access: SecretString,
    /// When to refresh: [`EARLY`] before expiry, or after three quarters of a shorter
    /// lifetime.
    refresh_at: Instant,
}

struct State {
    refresh: SecretString,
    cached: Option<Cached>,
}

/// Access tokens for one account.
pub struct TokenSource {
    client: OAuthClient,
    http: reqwest::Client,
    sink: GrantSink,
    state: Mutex<State>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// Refresh this long before the announced expiry.
const EARLY: Duration = Duration::from_secs(60);

impl TokenSource {
    pub fn new(client: OAuthClient, refresh: SecretString, sink: GrantSink) -> TokenSource {
        TokenSource {
            client,
            http: super::http::client(Duration::from_secs(30)),
            sink,
            state: Mutex::new(State {
                refresh,
                cached: None,
            }),
        }
    }

    /// A valid access token, refreshed when it is about to expire.
    pub async fn access_token(&self) -> Result<SecretString, ProviderError> {
        let mut st = self.state.lock().await;
        if let Some(c) = &st.cached {
            if Instant::now() < c.refresh_at {
                return Ok(c.access.clone());
            }
        }
        self.refresh_locked(&mut st).await
    }

    /// Forgets the cached access token (after a 401) so the next call refreshes.
    pub async fn invalidate(&self, rejected: &SecretString) {
        let mut st = self.state.lock().await;
        if st
            .cached
            .as_ref()
            .is_some_and(|c| c.access.expose_secret() == rejected.expose_secret())
        {
            st.cached = None;
        }
    }

    async fn refresh_locked(&self, st: &mut State) -> Result<SecretString, ProviderError> {
        let token_url = TokenUrl::new(self.client.token_url.clone())
            .map_err(|e| ProviderError::Permanent(format!("Invalid token_url: {e}.")))?;
        let mut client = BasicClient::new(ClientId::new(self.client.client_id.clone()))
            .set_token_uri(token_url)
            .set_auth_type(AuthType::RequestBody);
        if let Some(s) = &self.client.client_secret {
            client = client.set_client_secret(ClientSecret::new(s.expose_secret().to_string()));
        }
        let refresh = RefreshToken::new(st.refresh.expose_secret().to_string());
        let mut last = None;
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
            }
            let mut req = client.exchange_refresh_token(&refresh);
            for s in &self.client.scopes {
                req = req.add_scope(Scope::new(s.clone()));
            }
            match req.request_async(&self.http).await {
                Ok(tok) => {
                    if let Some(rotated) = tok.refresh_token() {
                        let rotated = SecretString::from(rotated.secret().clone());
                        if rotated.expose_secret() != st.refresh.expose_secret() {
                            (self.sink)(&rotated).map_err(|e| {
                                ProviderError::Transient(format!(
                                    "Cannot store the rotated refresh token: {e}."
                                ))
                            })?;
                            st.refresh = rotated;
                        }
                    }
                    if let Some(granted) = tok.scopes() {
                        let granted: Vec<&str> = granted.iter().map(|s| s.as_str()).collect();
                        let missing = missing_scopes(&self.client.scopes, &granted);
                        if !missing.is_empty() {
                            return Err(ProviderError::ReauthRequired(format!(
                                "the stored grant lacks the scope {} that this account's direction needs; connect the account again to grant it",
                                missing.join(", ")
                            )));
                        }
                    }
                    let access = SecretString::from(tok.access_token().secret().clone());
                    let ttl = tok.expires_in().unwrap_or(Duration::from_secs(3600));
                    st.cached = Some(Cached {
                        access: access.clone(),
                        // A token that lives less than four minutes would otherwise be
                        // "about to expire" at once and be refreshed before every request,
                        // every request of the account waiting in turn for the token
                        // endpoint (issue 16).
                        refresh_at: Instant::now() + ttl - EARLY.min(ttl / 4),
                    });
                    return Ok(access);
                }
                Err(RequestTokenError::ServerResponse(r)) => {
                    let desc = r
                        .error_description()
                        .map(|d| d.chars().take(200).collect::<String>())
                        .unwrap_or_default();
                    return Err(match r.error() {
                        BasicErrorResponseType::InvalidGrant => {
                            ProviderError::ReauthRequired(format!("invalid_grant: {desc}"))
                        }
                        BasicErrorResponseType::InvalidClient
                        | BasicErrorResponseType::UnauthorizedClient => {
                            ProviderError::Permanent(format!(
                                "The token endpoint rejected the client registration ({}): {desc}.",
                                r.error()
                            ))
                        }
                        other => ProviderError::Permanent(format!(
                            "The token endpoint answered {other}: {desc}."
                        )),
                    });
                }
                Err(RequestTokenError::Request(e)) => {
                    last = Some(format!("Token refresh failed: {}.", with_causes(&e)));
                }
                Err(RequestTokenError::Parse(e, _)) => {
                    last = Some(format!("Token endpoint sent an unreadable answer: {e}."));
                }
                Err(RequestTokenError::Other(e)) => {
                    last = Some(format!("Token refresh failed: {e}."));
                }
            }
        }
        Err(ProviderError::Transient(
            last.unwrap_or_else(|| "Token refresh failed.".into()),
        ))
    }
}

/// The short name of a scope: `https://graph.microsoft.com/Contacts.Read` → `Contacts.Read`.
fn short_scope(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// Requested scopes (short names) that the token endpoint's `scope` does not grant.
/// `offline_access` and the OpenID scopes are not access scopes; a `….ReadWrite` scope
/// covers the `….Read` of the same name.
pub fn missing_scopes(wanted: &[String], granted: &[&str]) -> Vec<String> {
    const NOT_ACCESS: &[&str] = &["offline_access", "openid", "profile", "email"];
    let granted: Vec<String> = granted
        .iter()
        .map(|g| short_scope(g).to_ascii_lowercase())
        .collect();
    wanted
        .iter()
        .map(|w| short_scope(w))
        .filter(|w| !NOT_ACCESS.iter().any(|n| n.eq_ignore_ascii_case(w)))
        .filter(|w| {
            let w = w.to_ascii_lowercase();
            !granted
                .iter()
                .any(|g| *g == w || (w.ends_with(".read") && *g == format!("{w}write")))
        })
        .map(str::to_string)
        .collect()
}

/// An error and its causes, `outer: inner: ...` (oauth2's own message alone is
/// "client error", which says nothing of a cut-off or refused answer).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = c.source();
    }
    out
}
