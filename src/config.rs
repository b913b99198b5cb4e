//! The configuration file: one TOML document with `[daemon]`, `[providers.*]` and
//! `[[accounts]]` (SPEC §7).
//!
//! Parsing is strict (`deny_unknown_fields` everywhere) and every error names the line and
//! the key it is about, so an administrator can fix the file without guessing. The same
//! [`load`] function serves `check-config`, start-up and live reload, and [`diff`] tells the
//! supervisor which accounts to start, stop or change.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/contact-sync/config.toml";

/// A configuration error, with the place in the file it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file the error is in, when it came from a file.
    pub path: Option<PathBuf>,
    /// 1-based line of the offending key, when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `accounts[1].group`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}", path.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
        } else if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl ConfigError {
    fn plain(message: impl Into<String>) -> Self {
        ConfigError {
            path: None,
            line: None,
            key: None,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Google,
    Outlook,
    /// CardDAV (RFC 6352): HTTP Basic with an app password, no OAuth grant.
    #[serde(rename = "carddav")]
    CardDav,
}

impl ProviderKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::Google => "google",
            ProviderKind::Outlook => "outlook",
            ProviderKind::CardDav => "carddav",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    All,
    Starred,
}

impl Group {
    pub fn as_str(&self) -> &'static str {
        match self {
            Group::All => "all",
            Group::Starred => "starred",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub enum Direction {
    #[serde(rename = "one-way")]
    OneWay,
    #[serde(rename = "two-way")]
    TwoWay,
}

impl Direction {
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::OneWay => "one-way",
            Direction::TwoWay => "two-way",
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8631))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/contact-sync")
}
fn default_audit_dir() -> PathBuf {
    PathBuf::from("/var/log/contact-sync")
}
fn default_poll() -> Duration {
    Duration::from_secs(60)
}
fn default_tz() -> String {
    "UTC".into()
}
fn default_limit() -> u64 {
    25_000
}
fn default_region() -> String {
    "US".into()
}
fn default_true() -> bool {
    true
}
fn default_tenant() -> String {
    "common".into()
}
fn default_deletion_share() -> f64 {
    0.10
}
fn default_deletion_min() -> u64 {
    50
}
fn default_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// File holding the bearer token the CRM presents on `/api` (role `crm`).
    pub api_token_file: Option<PathBuf>,
    /// File holding the operator's token (role `operator`): grants, approve, restore,
    /// preview, sync-now, the dashboard login and the CLI.
    pub admin_token_file: Option<PathBuf>,
    /// File holding the bearer token Prometheus presents on `/metrics` from a
    /// non-loopback address. Without it `/metrics` answers loopback peers only.
    pub metrics_token_file: Option<PathBuf>,
    /// Extra host names (with or without `:port`) the `Host` header may carry, besides the
    /// listen address, `localhost`, `127.0.0.1` and `[::1]`.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Permits a non-loopback `listen`; it then also needs `tls_cert_file` and `tls_key_file`.
    #[serde(default)]
    pub allow_remote: bool,
    /// PEM certificate chain served over TLS (rustls).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    #[serde(default = "default_audit_dir")]
    pub audit_dir: PathBuf,
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(default = "default_tz")]
    pub timezone: String,
    #[serde(default = "default_limit")]
    pub contact_limit: u64,
    #[serde(default = "default_region")]
    pub default_region: String,
    /// Write field values (not only field names) into the audit log.
    #[serde(default)]
    pub audit_values: bool,
    /// Key file for encrypting refresh tokens at rest. Default: the systemd credential
    /// `token-key`. The daemon never creates it (`contact-sync gen-key PATH` does).
    pub token_key_file: Option<PathBuf>,
    /// Key rotation: the key the grants were sealed with before `token_key_file` was
    /// replaced. At start, grants that open with it are re-sealed under the new key.
    pub previous_token_key_file: Option<PathBuf>,
    /// Share of an account's contacts one run may delete before it is held.
    #[serde(default = "default_deletion_share")]
    pub deletion_guard_share: f64,
    /// Deletions below this count are never held.
    #[serde(default = "default_deletion_min")]
    pub deletion_guard_min: u64,
    /// How long deleted CRM contacts are kept as tombstones for `restore`.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub tombstone_retention: Duration,
    /// Daily audit files older than this are removed (whole days); default: kept forever.
    #[serde(default, with = "humantime_serde")]
    pub audit_retention: Option<Duration>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            data_dir: default_data_dir(),
            listen: default_listen(),
            api_token_file: None,
            admin_token_file: None,
            metrics_token_file: None,
            allowed_hosts: Vec::new(),
            allow_remote: false,
            tls_cert_file: None,
            tls_key_file: None,
            audit_dir: default_audit_dir(),
            poll_interval: default_poll(),
            timezone: default_tz(),
            contact_limit: default_limit(),
            default_region: default_region(),
            audit_values: false,
            audit_retention: None,
            token_key_file: None,
            previous_token_key_file: None,
            deletion_guard_share: default_deletion_share(),
            deletion_guard_min: default_deletion_min(),
            tombstone_retention: default_retention(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleProvider {
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    #[serde(default = "GoogleProvider::default_api_base")]
    pub api_base: String,
    #[serde(default = "GoogleProvider::default_auth_url")]
    pub auth_url: String,
    #[serde(default = "GoogleProvider::default_token_url")]
    pub token_url: String,
    #[serde(default = "GoogleProvider::default_revoke_url")]
    pub revoke_url: String,
}

impl GoogleProvider {
    fn default_api_base() -> String {
        "https://people.googleapis.com".into()
    }
    fn default_auth_url() -> String {
        "https://accounts.google.com/o/oauth2/v2/auth".into()
    }
    fn default_token_url() -> String {
        "https://oauth2.googleapis.com/token".into()
    }
    fn default_revoke_url() -> String {
        "https://oauth2.googleapis.com/revoke".into()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlookProvider {
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    #[serde(default = "OutlookProvider::default_api_base")]
    pub api_base: String,
    pub auth_url: Option<String>,
    pub token_url: Option<String>,
    pub device_code_url: Option<String>,
    /// Requests per mailbox per `request_budget_window`, shared by reads, photos and
    /// writes (Graph allows 10,000 per 10 minutes per app and mailbox). 0 turns it off.
    #[serde(default = "OutlookProvider::default_request_budget")]
    pub request_budget: u32,
    #[serde(
        default = "OutlookProvider::default_request_budget_window",
        with = "humantime_serde"
    )]
    pub request_budget_window: Duration,
}

impl OutlookProvider {
    fn default_api_base() -> String {
        "https://graph.microsoft.com/v1.0".into()
    }
    fn default_request_budget() -> u32 {
        crate::providers::graph::DEFAULT_REQUEST_BUDGET
    }
    fn default_request_budget_window() -> Duration {
        crate::providers::graph::DEFAULT_BUDGET_WINDOW
    }
    pub fn auth_url(&self) -> String {
        self.auth_url.clone().unwrap_or_else(|| {
            format!(
                "https://login.microsoftonline.com/{}/oauth2/v2.0/authorize",
                self.tenant
            )
        })
    }
    pub fn token_url(&self) -> String {
        self.token_url.clone().unwrap_or_else(|| {
            format!(
                "https://login.microsoftonline.com/{}/oauth2/v2.0/token",
                self.tenant
            )
        })
    }
    pub fn device_code_url(&self) -> String {
        self.device_code_url.clone().unwrap_or_else(|| {
            format!(
                "https://login.microsoftonline.com/{}/oauth2/v2.0/devicecode",
                self.tenant
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Providers {
    pub google: Option<GoogleProvider>,
    pub outlook: Option<OutlookProvider>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub id: String,
    pub provider: ProviderKind,
    pub group: Group,
    pub direction: Direction,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// CardDAV: the server root, a principal or an address book.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// CardDAV: the HTTP Basic user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// CardDAV: the file holding the (app) password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// CardDAV: one address book, by last path segment or display name; default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_book: Option<String>,
}

/// The whole, validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub providers: Providers,
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
}

impl Config {
    pub fn account(&self, id: &str) -> Option<&AccountConfig> {
        self.accounts.iter().find(|a| a.id == id)
    }

    /// The configured time zone (validated at load time).
    pub fn tz(&self) -> chrono_tz::Tz {
        self.daemon.timezone.parse().unwrap_or(chrono_tz::UTC)
    }

    /// Path of the key file that encrypts refresh tokens at rest: `token_key_file`, else
    /// the systemd credential `token-key`. `None` when neither exists: the daemon then
    /// refuses to start (it never makes a key next to the sealed grants it protects).
    pub fn token_key_file(&self) -> Option<PathBuf> {
        if let Some(p) = &self.daemon.token_key_file {
            return Some(secret_path(p));
        }
        // systemd's LoadCredential= puts credentials here.
        credential("token-key")
    }

    /// Whether the HTTP API is served over TLS.
    pub fn tls(&self) -> bool {
        self.daemon.tls_cert_file.is_some() && self.daemon.tls_key_file.is_some()
    }
}

/// A systemd credential (`LoadCredential=NAME:…`) of this service, when it exists.
pub fn credential(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let p = Path::new(&dir).join(name);
    p.exists().then_some(p)
}

/// Where a configured secret file is read from. Under systemd, a file whose name matches a
/// credential of the service (`LoadCredential=api-token:/etc/contact-sync/api-token`) is
/// read from `$CREDENTIALS_DIRECTORY`, which the dynamic service user can read; everywhere
/// else (the CLI run by an administrator) the configured path itself.
pub fn secret_path(p: &Path) -> PathBuf {
    p.file_name()
        .and_then(|n| n.to_str())
        .and_then(credential)
        .unwrap_or_else(|| p.to_path_buf())
}

/// Reads, parses and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: Some(path.to_path_buf()),
        line: None,
        key: None,
        message: format!("cannot read the file: {e}"),
    })?;
    parse(&text).map_err(|mut e| {
        e.path = Some(path.to_path_buf());
        e
    })
}

/// Parses and validates a configuration document.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        ConfigError {
            path: None,
            line,
            key: key_at(text, e.span().map(|s| s.start)),
            // toml leaves the message empty for some errors (a control character).
            message: match e.message().trim() {
                "" => "invalid TOML syntax (an unexpected or control character)".to_string(),
                m => m.to_string(),
            },
        }
    })?;
    validate(&config).map_err(|(key, message)| ConfigError {
        path: None,
        line: locate(text, &key),
        key: Some(key),
        message,
    })?;
    Ok(config)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// The key written on the line of `offset`, for parse errors whose message lacks it.
fn key_at(text: &str, offset: Option<usize>) -> Option<String> {
    let offset = offset?;
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('#')).then(|| key.to_string())
}

/// Finds the line of a dotted key path such as `accounts[1].group` in the document.
fn locate(text: &str, key: &str) -> Option<usize> {
    let doc: toml_edit::ImDocument<&str> = toml_edit::ImDocument::parse(text).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut span = None;
    let parts: Vec<&str> = key.split('.').collect();
    for (n, part) in parts.iter().enumerate() {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*part, None),
        };
        let Some((k, item)) = table.get_key_value(name) else {
            break;
        };
        span = k.span().or(span);
        if let Some(i) = index {
            let t = item.as_array_of_tables()?.get(i)?;
            span = t.span().or(span);
            table = t;
        } else if n + 1 < parts.len() {
            table = item.as_table_like()?;
        }
    }
    span.map(|s| line_of(text, s.start))
}

/// Semantic checks that serde cannot express. Errors are `(key path, message)`.
pub fn validate(config: &Config) -> Result<(), (String, String)> {
    let d = &config.daemon;
    if d.timezone.parse::<chrono_tz::Tz>().is_err() {
        return Err((
            "daemon.timezone".into(),
            format!(
                "unknown time zone {:?} (use an IANA name such as \"Europe/Paris\" or \"UTC\")",
                d.timezone
            ),
        ));
    }
    if d.default_region
        .parse::<phonenumber::country::Id>()
        .is_err()
    {
        return Err((
            "daemon.default_region".into(),
            format!(
                "unknown region {:?} (use a two-letter ISO 3166 code such as \"US\" or \"DE\")",
                d.default_region
            ),
        ));
    }
    if d.poll_interval < Duration::from_secs(1) {
        return Err(("daemon.poll_interval".into(), "must be at least 1s".into()));
    }
    if d.contact_limit == 0 {
        return Err(("daemon.contact_limit".into(), "must be at least 1".into()));
    }
    if d.tls_cert_file.is_some() != d.tls_key_file.is_some() {
        let missing = if d.tls_cert_file.is_none() {
            "daemon.tls_cert_file"
        } else {
            "daemon.tls_key_file"
        };
        return Err((
            missing.into(),
            "TLS needs both tls_cert_file and tls_key_file".into(),
        ));
    }
    if !d.listen.ip().is_loopback() {
        if !d.allow_remote {
            return Err((
                "daemon.listen".into(),
                format!(
                    "{} is not a loopback address; listening beyond this host needs allow_remote = true and tls_cert_file/tls_key_file (or keep 127.0.0.1 and put a TLS reverse proxy in front)",
                    d.listen
                ),
            ));
        }
        if !config.tls() {
            return Err((
                "daemon.allow_remote".into(),
                "a non-loopback listen address needs tls_cert_file and tls_key_file: tokens and the session cookie must not cross the network in clear".into(),
            ));
        }
    }
    for (i, h) in d.allowed_hosts.iter().enumerate() {
        if h.trim().is_empty() || h.contains(['/', ' ', '@']) {
            return Err((
                format!("daemon.allowed_hosts[{i}]"),
                format!("{h:?} is not a host name (write e.g. \"crm-sync.example.com\" or \"crm-sync.example.com:8631\")"),
            ));
        }
    }
    if !(0.0..=1.0).contains(&d.deletion_guard_share) {
        return Err((
            "daemon.deletion_guard_share".into(),
            "must be between 0.0 and 1.0".into(),
        ));
    }
    if let Some(g) = &config.providers.google {
        for (k, v) in [
            ("api_base", &g.api_base),
            ("auth_url", &g.auth_url),
            ("token_url", &g.token_url),
            ("revoke_url", &g.revoke_url),
        ] {
            check_url(&format!("providers.google.{k}"), v)?;
        }
        if g.client_id.trim().is_empty() {
            return Err((
                "providers.google.client_id".into(),
                "must not be empty".into(),
            ));
        }
    }
    if let Some(o) = &config.providers.outlook {
        check_url("providers.outlook.api_base", &o.api_base)?;
        for (k, v) in [
            ("auth_url", &o.auth_url),
            ("token_url", &o.token_url),
            ("device_code_url", &o.device_code_url),
        ] {
            if let Some(v) = v {
                check_url(&format!("providers.outlook.{k}"), v)?;
            }
        }
        if o.client_id.trim().is_empty() {
            return Err((
                "providers.outlook.client_id".into(),
                "must not be empty".into(),
            ));
        }
        if o.request_budget > 0 && o.request_budget_window.is_zero() {
            return Err((
                "providers.outlook.request_budget_window".into(),
                "must be longer than 0s when request_budget is set".into(),
            ));
        }
    }
    let mut seen = BTreeMap::new();
    for (i, a) in config.accounts.iter().enumerate() {
        let key = |k: &str| format!("accounts[{i}].{k}");
        if a.id.is_empty()
            || a.id.len() > 64
            || !a
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err((
                key("id"),
                format!(
                    "{:?} is not a valid account id (1-64 characters: letters, digits, '-', '_', '.')",
                    a.id
                ),
            ));
        }
        if let Some(prev) = seen.insert(a.id.clone(), i) {
            return Err((
                key("id"),
                format!("duplicate account id {:?} (also accounts[{prev}])", a.id),
            ));
        }
        match a.provider {
            ProviderKind::Google if config.providers.google.is_none() => {
                return Err((
                    key("provider"),
                    "provider \"google\" needs a [providers.google] section".into(),
                ))
            }
            ProviderKind::Outlook if config.providers.outlook.is_none() => {
                return Err((
                    key("provider"),
                    "provider \"outlook\" needs a [providers.outlook] section".into(),
                ))
            }
            ProviderKind::Outlook if a.group != Group::All => {
                return Err((
                    key("group"),
                    "outlook accounts support only group \"all\"".into(),
                ))
            }
            ProviderKind::CardDav => check_carddav(a, &key)?,
            _ => {}
        }
        if a.provider != ProviderKind::CardDav {
            for (k, set) in [
                ("url", a.url.is_some()),
                ("username", a.username.is_some()),
                ("password_file", a.password_file.is_some()),
                ("address_book", a.address_book.is_some()),
            ] {
                if set {
                    return Err((key(k), format!("{k} is only for carddav accounts")));
                }
            }
        }
    }
    Ok(())
}

/// A carddav account needs `url` (https, or http to loopback), `username`,
/// `password_file`, and group `all`.
fn check_carddav(a: &AccountConfig, key: &dyn Fn(&str) -> String) -> Result<(), (String, String)> {
    if a.group != Group::All {
        return Err((
            key("group"),
            "carddav accounts support only group \"all\"".into(),
        ));
    }
    let Some(url) = &a.url else {
        return Err((key("url"), "carddav accounts need a url".into()));
    };
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "https" => {}
        Ok(u) if u.scheme() == "http" && is_loopback(&u) => {}
        Ok(u) if u.scheme() == "http" => {
            return Err((
                key("url"),
                format!("{url:?}: carddav needs https (plain http only to a loopback address)"),
            ))
        }
        _ => return Err((key("url"), format!("{url:?} is not an https URL"))),
    }
    if a.username.as_deref().is_none_or(|u| u.is_empty()) {
        return Err((key("username"), "carddav accounts need a username".into()));
    }
    if a.password_file.is_none() {
        return Err((
            key("password_file"),
            "carddav accounts need a password_file".into(),
        ));
    }
    Ok(())
}

/// Whether a URL's host is a loopback address (`localhost`, 127.0.0.0/8, `::1`).
pub fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn check_url(key: &str, value: &str) -> Result<(), (String, String)> {
    match url::Url::parse(value) {
        Ok(u) if u.scheme() == "https" || u.scheme() == "http" => Ok(()),
        _ => Err((key.to_string(), format!("{value:?} is not an http(s) URL"))),
    }
}

/// What a reload changes, account by account.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ConfigDiff {
    /// Accounts to start: new, or newly enabled.
    pub to_add: Vec<AccountConfig>,
    /// Accounts to stop: removed, or disabled. Their data and links stay.
    pub to_remove: Vec<String>,
    /// Accounts whose settings changed while they stay enabled: `(old, new)`.
    pub to_change: Vec<(AccountConfig, AccountConfig)>,
    /// Whether anything daemon-wide (limits, time zone, providers…) changed.
    pub daemon_changed: bool,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        self.to_add.is_empty()
            && self.to_remove.is_empty()
            && self.to_change.is_empty()
            && !self.daemon_changed
    }
}

/// Compares the running and the new configuration.
///
/// Fails when a `[daemon]` key that cannot change without a restart changed; the reload is
/// then rejected whole and the running configuration stays in force.
pub fn diff(old: &Config, new: &Config) -> Result<ConfigDiff, ConfigError> {
    let fixed: [(&str, bool); 10] = [
        (
            "daemon.data_dir",
            old.daemon.data_dir != new.daemon.data_dir,
        ),
        ("daemon.listen", old.daemon.listen != new.daemon.listen),
        (
            "daemon.api_token_file",
            old.daemon.api_token_file != new.daemon.api_token_file,
        ),
        (
            "daemon.admin_token_file",
            old.daemon.admin_token_file != new.daemon.admin_token_file,
        ),
        (
            "daemon.metrics_token_file",
            old.daemon.metrics_token_file != new.daemon.metrics_token_file,
        ),
        (
            "daemon.token_key_file",
            old.daemon.token_key_file != new.daemon.token_key_file,
        ),
        (
            "daemon.previous_token_key_file",
            old.daemon.previous_token_key_file != new.daemon.previous_token_key_file,
        ),
        (
            "daemon.allow_remote",
            old.daemon.allow_remote != new.daemon.allow_remote,
        ),
        (
            "daemon.tls_cert_file",
            old.daemon.tls_cert_file != new.daemon.tls_cert_file,
        ),
        (
            "daemon.tls_key_file",
            old.daemon.tls_key_file != new.daemon.tls_key_file,
        ),
    ];
    if let Some((key, _)) = fixed.iter().find(|(_, changed)| *changed) {
        return Err(ConfigError {
            path: None,
            line: None,
            key: Some(key.to_string()),
            message: "cannot be changed while the daemon runs; restart it to apply".into(),
        });
    }
    let enabled = |c: &Config| -> BTreeMap<String, AccountConfig> {
        c.accounts
            .iter()
            .filter(|a| a.enabled)
            .map(|a| (a.id.clone(), a.clone()))
            .collect()
    };
    let (before, after) = (enabled(old), enabled(new));
    let mut d = ConfigDiff {
        daemon_changed: old.daemon != new.daemon || old.providers != new.providers,
        ..Default::default()
    };
    for (id, a) in &after {
        match before.get(id) {
            None => d.to_add.push(a.clone()),
            Some(b) if b != a => d.to_change.push((b.clone(), a.clone())),
            Some(_) => {}
        }
    }
    for id in before.keys() {
        if !after.contains_key(id) {
            d.to_remove.push(id.clone());
        }
    }
    Ok(d)
}

/// Reads a secret file, trimming the trailing newline editors add. A file that group or
/// others may read gets a warning naming it.
pub fn read_secret_file(path: &Path) -> Result<secrecy::SecretString, ConfigError> {
    let path = &secret_path(path);
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::plain(format!("cannot read secret file {}: {e}", path.display()))
    })?;
    if let Some(mode) = loose_mode(path) {
        tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "Secret file is readable by group or others; chmod 600 it (or load it with LoadCredential=).");
    }
    let t = text.trim();
    if t.is_empty() {
        return Err(ConfigError::plain(format!(
            "secret file {} is empty",
            path.display()
        )));
    }
    Ok(secrecy::SecretString::from(t.to_string()))
}

/// The permission bits of `path` when group or others have any access to it.
pub fn loose_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[daemon]
data_dir = "/tmp/x"
listen = "127.0.0.1:8631"
poll_interval = "30s"
timezone = "Europe/Berlin"

[providers.google]
client_id = "abc"

[providers.outlook]
client_id = "def"

[[accounts]]
id = "a"
provider = "google"
group = "starred"
direction = "two-way"

[[accounts]]
id = "b"
provider = "outlook"
group = "all"
direction = "one-way"
enabled = false
"#;

    #[test]
    fn spec_config_example_parses() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.daemon.poll_interval, Duration::from_secs(30));
        assert_eq!(c.accounts.len(), 2);
        assert_eq!(c.accounts[0].direction, Direction::TwoWay);
        assert!(!c.accounts[1].enabled);
        assert_eq!(c.daemon.contact_limit, 25_000);
    }

    const CARDDAV: &str = r#"
[[accounts]]
id = "ops-nextcloud"
provider = "carddav"
url = "https://cloud.example.com/remote.php/dav"
username = "ops"
password_file = "/etc/contact-sync/ops-nextcloud-password"
# address_book = "contacts"
group = "all"
direction = "one-way"
"#;

    #[test]
    fn carddav_account_config_parses() {
        let c = parse(&format!("{GOOD}{CARDDAV}")).expect("valid");
        let a = &c.accounts[2];
        assert_eq!(a.provider, ProviderKind::CardDav);
        assert_eq!(a.provider.as_str(), "carddav");
        assert_eq!(
            a.url.as_deref(),
            Some("https://cloud.example.com/remote.php/dav")
        );
        assert_eq!(a.username.as_deref(), Some("ops"));
        assert_eq!(
            a.password_file.as_deref(),
            Some(Path::new("/etc/contact-sync/ops-nextcloud-password"))
        );
        assert_eq!(a.address_book, None);
        let with_book = CARDDAV.replace("# address_book", "address_book");
        let c = parse(&format!("{GOOD}{with_book}")).expect("valid");
        assert_eq!(c.accounts[2].address_book.as_deref(), Some("contacts"));
    }

    #[test]
    fn carddav_account_needs_url_username_and_password_file() {
        for (line, key) in [
            (
                "url = \"https://cloud.example.com/remote.php/dav\"\n",
                "url",
            ),
            ("username = \"ops\"\n", "username"),
            (
                "password_file = \"/etc/contact-sync/ops-nextcloud-password\"\n",
                "password_file",
            ),
        ] {
            let e = parse(&format!("{GOOD}{}", CARDDAV.replace(line, ""))).unwrap_err();
            assert_eq!(
                e.key.as_deref(),
                Some(format!("accounts[2].{key}").as_str()),
                "{e}"
            );
        }
    }

    #[test]
    fn carddav_url_is_https_or_loopback_http() {
        let plain = CARDDAV.replace("https://cloud.example.com", "http://cloud.example.com");
        let e = parse(&format!("{GOOD}{plain}")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("accounts[2].url"));
        assert!(e.message.contains("https"), "{e}");
        let e = parse(&format!(
            "{GOOD}{}",
            CARDDAV.replace("https://cloud.example.com/remote.php/dav", "not a url")
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("accounts[2].url"));
        for ok in [
            "http://127.0.0.1:5232/",
            "http://localhost:5232/",
            "http://[::1]:5232/",
        ] {
            let t = CARDDAV.replace("https://cloud.example.com/remote.php/dav", ok);
            assert!(parse(&format!("{GOOD}{t}")).is_ok(), "{ok}");
        }
    }

    #[test]
    fn carddav_group_is_all_only() {
        let t = CARDDAV.replace("group = \"all\"", "group = \"starred\"");
        let e = parse(&format!("{GOOD}{t}")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("accounts[2].group"));
    }

    #[test]
    fn carddav_keys_are_rejected_on_other_providers() {
        let t = GOOD.replace(
            "provider = \"google\"",
            "provider = \"google\"\nurl = \"https://x.example\"",
        );
        let e = parse(&t).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("accounts[0].url"));
    }

    #[test]
    fn config_error_names_line_and_key_for_unknown_key() {
        let text = GOOD.replace("group = \"all\"", "groop = \"all\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(23), "{e}");
        assert!(e.to_string().contains("groop"), "{e}");
    }

    #[test]
    fn config_error_names_line_and_key_for_bad_value() {
        let text = GOOD.replace("group = \"starred\"", "group = \"favourites\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(17), "{e}");
        assert!(e.to_string().contains("favourites"), "{e}");
    }

    #[test]
    fn config_error_names_line_and_key_for_semantic_error() {
        let text = GOOD.replace("Europe/Berlin", "Mars/Olympus");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("daemon.timezone"));
        assert_eq!(e.line, Some(6));
        let text = GOOD.replace("group = \"all\"", "group = \"starred\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("accounts[1].group"));
        assert_eq!(e.line, Some(23), "{e}");
        let text = GOOD.replace("id = \"b\"", "id = \"a\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("accounts[1].id"));
        assert_eq!(e.line, Some(21), "{e}");
    }

    #[test]
    fn outlook_request_budget_defaults_to_graphs_limit_and_is_configurable() {
        let c = parse(GOOD).unwrap();
        let o = c.providers.outlook.as_ref().unwrap();
        assert_eq!(o.request_budget, 10_000);
        assert_eq!(o.request_budget_window, Duration::from_secs(600));
        let text = GOOD.replace(
            "client_id = \"def\"",
            "client_id = \"def\"\nrequest_budget = 5000\nrequest_budget_window = \"5m\"",
        );
        let o = parse(&text).unwrap().providers.outlook.unwrap();
        assert_eq!(o.request_budget, 5000);
        assert_eq!(o.request_budget_window, Duration::from_secs(300));
        // Bad input: a zero window, a negative budget, a window that is not a duration.
        let e = parse(&text.replace("\"5m\"", "\"0s\"")).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("providers.outlook.request_budget_window"),
            "{e}"
        );
        assert!(parse(&text.replace("5000", "-1")).is_err());
        assert!(parse(&text.replace("\"5m\"", "\"soon\"")).is_err());
    }

    #[test]
    fn control_character_error_has_a_message_and_a_line() {
        let e = parse("[daemon]\n#\u{0}\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("invalid TOML syntax"), "{e}");
    }

    #[test]
    fn config_rejects_syntax_errors_with_line() {
        let e = parse("[daemon]\ndata_dir = \n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn config_account_needs_its_provider_section() {
        let text = GOOD.replace("[providers.outlook]\nclient_id = \"def\"\n", "");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("accounts[1].provider"));
    }

    #[test]
    fn config_diff_by_account_id() {
        let old = parse(GOOD).unwrap();
        let mut new = old.clone();
        new.accounts[0].direction = Direction::OneWay;
        new.accounts[1].enabled = true;
        new.accounts.push(AccountConfig {
            id: "c".into(),
            provider: ProviderKind::Google,
            group: Group::All,
            direction: Direction::OneWay,
            enabled: true,
            url: None,
            username: None,
            password_file: None,
            address_book: None,
        });
        let d = diff(&old, &new).unwrap();
        assert_eq!(
            d.to_add.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert_eq!(d.to_change.len(), 1);
        assert!(d.to_remove.is_empty());
        let d = diff(&new, &old).unwrap();
        assert_eq!(d.to_remove, ["b", "c"]);
    }

    #[test]
    fn config_reload_rejects_fixed_daemon_keys() {
        let old = parse(GOOD).unwrap();
        let mut new = old.clone();
        new.daemon.listen = "127.0.0.1:9999".parse().unwrap();
        let e = diff(&old, &new).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("daemon.listen"));
        let mut new = old.clone();
        new.daemon.admin_token_file = Some("/etc/other".into());
        let e = diff(&old, &new).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("daemon.admin_token_file"));
        // allowed_hosts applies live.
        let mut new = old.clone();
        new.daemon.allowed_hosts = vec!["sync.example.com".into()];
        assert!(diff(&old, &new).unwrap().daemon_changed);
    }

    #[test]
    fn remote_listen_tls_and_allowed_hosts_are_validated() {
        let with =
            |extra: &str| parse(&GOOD.replace("[daemon]\n", &format!("[daemon]\n{extra}\n")));
        let remote = |extra: &str| {
            parse(&GOOD.replace(
                "listen = \"127.0.0.1:8631\"",
                &format!("listen = \"0.0.0.0:8631\"\n{extra}"),
            ))
        };
        let e = remote("").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("daemon.listen"));
        assert!(e.to_string().contains("allow_remote"), "{e}");
        let e = remote("allow_remote = true").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("daemon.allow_remote"));
        assert!(remote(
            "allow_remote = true\ntls_cert_file = \"/c.pem\"\ntls_key_file = \"/k.pem\""
        )
        .is_ok());
        assert!(GOOD.contains("[daemon]\ndata_dir"));
        let e = with("tls_cert_file = \"/c.pem\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("daemon.tls_key_file"));
        let e = with("allowed_hosts = [\"evil.example/path\"]").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("daemon.allowed_hosts[0]"));
        assert!(with("allowed_hosts = [\"sync.example.com:8631\"]").is_ok());
    }
}
