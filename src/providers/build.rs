//! Builds an account's provider client from the configuration and its sealed grant.

use std::sync::Arc;

use secrecy::SecretString;

use super::http::RetryPolicy;
use super::oauth::{GrantSink, OAuthClient, TokenSource};
use super::{Provider, ProviderError};
use crate::actors::supervisor::ProviderFactory;
use crate::config::{self, AccountConfig, Direction, ProviderKind};
use crate::runtime::Runtime;
use crate::secrets::Sealer;
use crate::store::{Batch, Op};

/// Retry policy: the default, or fast retries when `CONTACT_SYNC_FAST_RETRY` is set (tests
/// against the simulator).
pub fn retry_policy() -> RetryPolicy {
    if std::env::var_os("CONTACT_SYNC_FAST_RETRY").is_some() {
        RetryPolicy::fast()
    } else {
        RetryPolicy::default()
    }
}

/// Microsoft Graph scopes for an account's direction.
pub fn outlook_scopes(direction: Direction) -> Vec<String> {
    let contacts = match direction {
        Direction::OneWay => "https://graph.microsoft.com/Contacts.Read",
        Direction::TwoWay => "https://graph.microsoft.com/Contacts.ReadWrite",
    };
    vec!["offline_access".into(), contacts.into()]
}

/// Google People API scopes for an account's direction.
pub fn google_scopes(direction: Direction) -> Vec<String> {
    vec![match direction {
        Direction::OneWay => "https://www.googleapis.com/auth/contacts.readonly".into(),
        Direction::TwoWay => "https://www.googleapis.com/auth/contacts".into(),
    }]
}

/// The OAuth client of a provider, with its secret read from its file.
pub fn oauth_client(
    config: &config::Config,
    account: &AccountConfig,
) -> Result<OAuthClient, ProviderError> {
    let secret = |f: &Option<std::path::PathBuf>| -> Result<Option<SecretString>, ProviderError> {
        f.as_ref()
            .map(|p| {
                config::read_secret_file(p).map_err(|e| ProviderError::Permanent(e.to_string()))
            })
            .transpose()
    };
    match account.provider {
        ProviderKind::CardDav => Err(ProviderError::Permanent(
            "carddav accounts sign in with a password file, not OAuth.".into(),
        )),
        ProviderKind::Google => {
            let p = configured(config.providers.google.as_ref(), "google")?;
            let secret = secret(&p.client_secret_file)?;
            Ok(OAuthClient {
                client_id: p.client_id.clone(),
                client_secret: secret,
                token_url: p.token_url.clone(),
                scopes: vec![],
            })
        }
        ProviderKind::Outlook => {
            let p = configured(config.providers.outlook.as_ref(), "outlook")?;
            let (token_url, scopes) = (p.token_url(), outlook_scopes(account.direction));
            Ok(OAuthClient {
                client_id: p.client_id.clone(),
                client_secret: secret(&p.client_secret_file)?,
                token_url,
                scopes,
            })
        }
    }
}

/// A provider's `[providers.NAME]` section, or the error that it is missing.
fn configured<'a, T>(section: Option<&'a T>, name: &str) -> Result<&'a T, ProviderError> {
    section
        .ok_or_else(|| ProviderError::Permanent(format!("[providers.{name}] is not configured.")))
}

/// The factory the supervisor uses: decrypts the account's grant and builds its client.
pub fn factory(sealer: Arc<Sealer>) -> ProviderFactory {
    Arc::new(move |rt: &Arc<Runtime>, account: &AccountConfig| {
        if account.provider == ProviderKind::CardDav {
            return carddav_client(account);
        }
        let sealed = rt
            .db
            .grant(&account.id)
            .map_err(|e| ProviderError::Transient(e.to_string()))?
            .ok_or_else(|| ProviderError::NotConnected(account.id.clone()))?;
        let refresh = sealer
            .open(&account.id, &sealed)
            .map_err(|e| ProviderError::Permanent(e.to_string()))?;
        let config = rt.config();
        let client = oauth_client(&config, account)?;
        let (db, seal, id) = (rt.db.clone(), sealer.clone(), account.id.clone());
        let sink: GrantSink = Arc::new(move |token: &SecretString| {
            let mut b = Batch::default();
            b.push(Op::PutGrant {
                account: id.clone(),
                sealed: seal.seal(&id, token),
            });
            db.commit_durable(&b).map_err(|e| e.to_string())
        });
        let tokens = Arc::new(TokenSource::new(client, refresh, sink));
        build_client(&config, account, tokens)
    })
}

/// A CardDAV account's client: HTTP Basic with the password from `password_file` (no
/// OAuth grant, nothing to `connect`).
pub fn carddav_client(account: &AccountConfig) -> Result<Arc<dyn Provider>, ProviderError> {
    let missing =
        |k: &str| ProviderError::Permanent(format!("carddav account {} has no {k}.", account.id));
    let url = account.url.as_deref().ok_or_else(|| missing("url"))?;
    let username = account
        .username
        .clone()
        .ok_or_else(|| missing("username"))?;
    let file = account
        .password_file
        .as_ref()
        .ok_or_else(|| missing("password_file"))?;
    let password = config::read_secret_file(file).map_err(|e| {
        ProviderError::Permanent(format!(
            "carddav account {}: {e}; set password_file to a readable file holding the (app) password.",
            account.id
        ))
    })?;
    Ok(Arc::new(super::carddav::CardDavClient::new(
        url,
        username,
        password,
        account.address_book.clone(),
        retry_policy(),
    )?))
}

fn build_client(
    config: &config::Config,
    account: &AccountConfig,
    tokens: Arc<TokenSource>,
) -> Result<Arc<dyn Provider>, ProviderError> {
    match account.provider {
        ProviderKind::Google => {
            let p = config.providers.google.as_ref().ok_or_else(|| {
                ProviderError::Permanent("[providers.google] is not configured.".into())
            })?;
            Ok(Arc::new(super::google::GoogleClient::new(
                p.api_base.clone(),
                account.group,
                tokens,
                retry_policy(),
            )))
        }
        ProviderKind::Outlook => {
            let p = config.providers.outlook.as_ref().ok_or_else(|| {
                ProviderError::Permanent("[providers.outlook] is not configured.".into())
            })?;
            Ok(Arc::new(
                super::graph::GraphClient::new(p.api_base.clone(), tokens, retry_policy())
                    .with_budget(p.request_budget, p.request_budget_window),
            ))
        }
        ProviderKind::CardDav => carddav_client(account),
    }
}
