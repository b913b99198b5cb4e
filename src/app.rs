//! The boot sequence and the subcommands. Each step of the boot logs what it does, so a
//! failed start says where it stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use secrecy::SecretString;

use crate::actors::matcher::Matcher;
use crate::actors::supervisor::{ProviderFactory, Reload, StopAll, Supervisor};
use crate::actors::writer::Writer;
use crate::api::{self, ApiState};
use crate::audit::{Action, AuditEvent, AuditLog};
use crate::cli::{Cli, Command};
use crate::config::{self, Config};
use crate::logging::Logging;
use crate::runtime::Runtime;
use crate::secrets::Sealer;
use crate::store::Db;

/// `EX_CONFIG` from sysexits.h: the configuration is invalid.
pub const EXIT_CONFIG: i32 = 78;
/// `EX_UNAVAILABLE`: the daemon could not be reached.
pub const EXIT_UNAVAILABLE: i32 = 69;
/// `EX_CANTCREAT`: the store could not be opened.
pub const EXIT_STORE: i32 = 73;

/// Runs a subcommand and returns the process exit code.
pub fn run(cli: Cli, logging: Logging) -> i32 {
    match cli.command {
        Command::CheckConfig { path } => check_config(path.as_deref().unwrap_or(&cli.config)),
        Command::Run => run_daemon(&cli.config, &logging),
        Command::Status { account, json } => {
            crate::ops::status(&cli.config, account.as_deref(), json)
        }
        Command::Connect(args) => crate::ops::connect(&cli.config, args),
        Command::Disconnect { account } => crate::ops::disconnect(&cli.config, &account),
        Command::Preview { account, limit } => crate::ops::preview(&cli.config, &account, limit),
        Command::Demo(args) => crate::ops::demo(args, &logging),
        Command::Sim(args) => crate::ops::sim(args),
        Command::GenKey { path } => match crate::secrets::generate_key(&path) {
            Ok(()) => {
                println!("Token key written to {} (mode 0600).", path.display());
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Command::GenToken { path } => match crate::secrets::generate_token(&path) {
            Ok(()) => {
                println!("Token written to {} (mode 0600).", path.display());
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Command::Approve { account } => crate::ops::approve(&cli.config, &account),
        Command::Restore { contact_id } => crate::ops::restore(&cli.config, contact_id),
        Command::Explain { query, json } => crate::ops::explain(&cli.config, &query, json),
    }
}

fn check_config(path: &Path) -> i32 {
    match config::load(path) {
        Ok(c) => {
            println!(
                "{}: OK ({} accounts, {} enabled).",
                path.display(),
                c.accounts.len(),
                c.accounts.iter().filter(|a| a.enabled).count()
            );
            0
        }
        Err(e) => {
            eprintln!("{e}");
            EXIT_CONFIG
        }
    }
}

fn run_daemon(path: &Path, logging: &Logging) -> i32 {
    // The watcher needs a real directory; systemd starts us in /.
    let path = &std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    tracing::info!(path = %path.display(), "Loading configuration.");
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("Invalid configuration: {e}");
            eprintln!("{e}");
            return EXIT_CONFIG;
        }
    };
    let system = actix::System::new();
    let res = system.block_on(async move {
        let daemon = start(Boot {
            config,
            config_path: Some(path.to_path_buf()),
            logging: Some(logging),
            factory: None,
        })
        .await?;
        daemon.wait_for_shutdown().await;
        Ok::<(), BootError>(())
    });
    match res {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{e:#}");
            e.code
        }
    }
}

/// A start-up failure and the exit code it maps to.
#[derive(Debug)]
pub struct BootError {
    pub code: i32,
    pub error: anyhow::Error,
}

impl std::fmt::Display for BootError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

fn fail(code: i32) -> impl FnOnce(anyhow::Error) -> BootError {
    move |error| BootError { code, error }
}

/// What a daemon starts from.
pub struct Boot<'a> {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub logging: Option<&'a Logging>,
    /// Provider clients; `None` for the real ones.
    pub factory: Option<ProviderFactory>,
}

/// A running daemon.
pub struct Daemon {
    pub rt: Arc<Runtime>,
    pub supervisor: Addr<Supervisor>,
    pub server: actix_web::dev::ServerHandle,
    pub addr: std::net::SocketAddr,
    _watcher: Option<crate::watch::ConfigWatcher>,
}

/// Reads the tokens of the two roles and of `/metrics`.
fn auth(config: &Config) -> Result<api::auth::Auth, anyhow::Error> {
    let read = |key: &str, p: &Option<PathBuf>| -> Result<Option<SecretString>, anyhow::Error> {
        match p {
            Some(p) => Ok(Some(
                config::read_secret_file(p).map_err(|e| anyhow::anyhow!("[daemon] {key}: {e}"))?,
            )),
            None => Ok(None),
        }
    };
    let d = &config.daemon;
    let crm = read("api_token_file", &d.api_token_file)?;
    let operator = read("admin_token_file", &d.admin_token_file)?;
    let metrics = read("metrics_token_file", &d.metrics_token_file)?;
    if crm.is_none() {
        tracing::warn!("No [daemon] api_token_file is configured: the CRM's /api requests will be refused with 401.");
    }
    if operator.is_none() {
        tracing::warn!("No [daemon] admin_token_file is configured: the dashboard, connect, approve, restore, preview and sync-now are unavailable.");
    }
    if let (Some(c), Some(o)) = (&crm, &operator) {
        use secrecy::ExposeSecret;
        if c.expose_secret() == o.expose_secret() {
            anyhow::bail!("[daemon] api_token_file and admin_token_file hold the same token; the two roles need different tokens (make one with `contact-sync gen-token PATH`).");
        }
    }
    Ok(api::auth::Auth::new(crm, operator, metrics, config.tls()))
}

/// The rustls server configuration of `tls_cert_file` and `tls_key_file`.
fn tls_config(config: &Config) -> Result<Option<rustls::ServerConfig>, anyhow::Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&config.daemon.tls_cert_file, &config.daemon.tls_key_file)
    else {
        return Ok(None);
    };
    let key = config::secret_path(key);
    if let Some(mode) = config::loose_mode(&key) {
        tracing::warn!(file = %key.display(), mode = format!("{mode:o}"), "TLS key file is readable by group or others; chmod 600 it.");
    }
    let certs = CertificateDer::pem_file_iter(config::secret_path(cert))
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("[daemon] tls_cert_file {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| anyhow::anyhow!("[daemon] tls_key_file {}: {e}", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("[daemon] tls_cert_file/tls_key_file: {e}"))?;
    Ok(Some(tls))
}

/// Loads the key that seals refresh tokens. It is never created here: a key made next to
/// the sealed grants would leave both in every backup of `data_dir`, and a lost key must
/// not be papered over with a new one.
pub fn load_sealer(config: &Config, db: &Db) -> Result<Sealer, anyhow::Error> {
    let grants = db.grant_count()?;
    let Some(path) = config.token_key_file() else {
        anyhow::bail!(
            "No token key: set [daemon] token_key_file, or load the systemd credential `token-key` \
             (LoadCredential=token-key:/etc/contact-sync/token-key). Make a key with \
             `contact-sync gen-key /etc/contact-sync/token-key`, outside data_dir. \
             {grants} stored grant(s) need the key they were sealed with."
        );
    };
    Sealer::load(&path).map_err(|e| anyhow::anyhow!("{e} {grants} stored grant(s) need that key."))
}

/// Re-seals, under `sealer`, the grants that do not open with it but open with the key of
/// a rotation (`previous`), or that were stored before grants were bound to their account
/// (so that from now on a grant copied to another account does not open). One batch: all
/// or none. Returns how many were re-sealed.
pub fn migrate_grants(
    sealer: &Sealer,
    previous: Option<&Sealer>,
    db: &Db,
) -> Result<usize, anyhow::Error> {
    let mut b = crate::store::Batch::default();
    for (account, sealed) in db.grants()? {
        if sealer.open(&account, &sealed).is_ok() {
            continue;
        }
        let old = previous
            .and_then(|p| {
                p.open(&account, &sealed)
                    .or_else(|_| p.open_legacy(&sealed))
                    .ok()
            })
            .or_else(|| sealer.open_legacy(&sealed).ok());
        if let Some(token) = old {
            b.push(crate::store::Op::PutGrant {
                sealed: sealer.seal(&account, &token),
                account,
            });
        }
    }
    let n = b.ops.len();
    if n > 0 {
        db.commit_durable(&b)?;
        tracing::info!(
            grants = n,
            "Re-sealed grants under the current token key, bound to their account."
        );
    }
    Ok(n)
}

/// The key of a rotation in progress (`previous_token_key_file`), if any.
fn previous_sealer(config: &Config) -> Result<Option<Sealer>, anyhow::Error> {
    match &config.daemon.previous_token_key_file {
        Some(p) => Ok(Some(Sealer::load(&config::secret_path(p)).map_err(
            |e| anyhow::anyhow!("[daemon] previous_token_key_file: {e}"),
        )?)),
        None => Ok(None),
    }
}

/// Starts the daemon: store, secrets, actors, HTTP API, watcher. Returns once it is ready.
pub async fn start(boot: Boot<'_>) -> Result<Daemon, BootError> {
    let config = boot.config;
    // Opening a large store, rebuilding its index or writing an audit backlog may take
    // longer than systemd's start timeout: it is extended while the start goes on.
    let keepalive = crate::systemd::keep_starting();
    tracing::info!(dir = %config.daemon.data_dir.display(), "Opening store.");
    let region = crate::normalize::region(&config.daemon.default_region);
    let db = Db::open(&config.daemon.data_dir, region)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "cannot open the store in {}",
                config.daemon.data_dir.display()
            )
        })
        .map_err(fail(EXIT_STORE))?;
    tracing::info!(dir = %config.daemon.audit_dir.display(), "Opening the audit log.");
    let audit = AuditLog::new(
        db.clone(),
        &config.daemon.audit_dir,
        config.tz(),
        config.daemon.audit_retention,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
    .map_err(fail(EXIT_STORE))?;
    // Events left in the store by the last run go to the files first.
    match audit.drain() {
        Ok(0) => {}
        Ok(n) => tracing::info!(events = n, "Wrote audit events stored by the last run."),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot write the audit backlog yet; it waits in the store.")
        }
    }
    let audit = audit.install();
    audit.apply_retention();
    tracing::info!("Reading secrets.");
    let auth = Arc::new(auth(&config).map_err(fail(EXIT_CONFIG))?);
    let tls = tls_config(&config).map_err(fail(EXIT_CONFIG))?;
    let sealer = Arc::new(load_sealer(&config, &db).map_err(fail(EXIT_CONFIG))?);
    let previous = previous_sealer(&config).map_err(fail(EXIT_CONFIG))?;
    migrate_grants(&sealer, previous.as_ref(), &db).map_err(fail(EXIT_STORE))?;
    let listen = config.daemon.listen;
    // Bind before any actor starts, so a taken port is a clean start-up error.
    tracing::info!(%listen, "Binding the HTTP API.");
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))
        .map_err(fail(EXIT_UNAVAILABLE))?;
    let rt = Runtime::new(db, config);
    tracing::info!("Starting writer and matcher.");
    let writer = Writer::start(rt.clone());
    let matcher = Matcher::start(rt.clone(), writer);
    tracing::info!("Starting supervisor.");
    let factory = boot
        .factory
        .unwrap_or_else(|| crate::providers::build::factory(sealer.clone()));
    let supervisor = Supervisor::new(
        rt.clone(),
        matcher.clone(),
        factory,
        boot.config_path.clone(),
    )
    .start();
    let state = ApiState {
        rt: rt.clone(),
        matcher,
        supervisor: supervisor.clone(),
        auth,
        sealer: Some(sealer),
    };
    tracing::info!(%listen, tls = tls.is_some(), "Starting HTTP API.");
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .wrap(actix_web::middleware::from_fn(api::auth::host_guard))
            .configure(api::configure(state.clone()))
    })
    .workers(2)
    .shutdown_timeout(8)
    .disable_signals();
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls),
        None => server.listen(listener),
    }
    .with_context(|| format!("cannot serve on {listen}"))
    .map_err(fail(EXIT_UNAVAILABLE))?;
    let addr = server.addrs().first().copied().unwrap_or(listen);
    let server = server.run();
    let handle = server.handle();
    actix::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "HTTP server failed.");
        }
    });
    let watcher = match &boot.config_path {
        Some(p) => match crate::watch::watch(p, supervisor.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot watch the configuration file; use SIGHUP to reload.");
                None
            }
        },
        None => None,
    };
    let n = rt.config().accounts.iter().filter(|a| a.enabled).count();
    AuditEvent::daemon(Action::Started)
        .reason(format!(
            "contact-sync {} started, {n} accounts enabled",
            env!("CARGO_PKG_VERSION")
        ))
        .emit();
    drop(keepalive);
    crate::systemd::notify_ready(Some(&format!("{n} accounts enabled")));
    tracing::info!(%addr, accounts = n, "Ready.");
    Ok(Daemon {
        rt,
        supervisor,
        server: handle,
        addr,
        _watcher: watcher,
    })
}

impl Daemon {
    /// Serves until SIGTERM or SIGINT; SIGHUP reloads the configuration.
    pub async fn wait_for_shutdown(self) {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("Cannot install signal handlers.");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration.");
                    crate::systemd::notify_reloading();
                    let _ = self.supervisor.send(Reload).await;
                    crate::systemd::notify_ready(None);
                }
            }
        }
        self.shutdown().await;
    }

    /// Stops accounts, then the API, then flushes the store; gives up after 8 seconds.
    pub async fn shutdown(self) {
        tracing::info!("Shutting down.");
        crate::systemd::notify_stopping();
        let work = async {
            let _ = self.supervisor.send(StopAll).await;
            self.server.stop(true).await;
            AuditEvent::daemon(Action::Stopped).emit();
            if let Err(e) = self.rt.db.flush() {
                tracing::error!(error = %e, "Final store flush failed.");
            }
        };
        if tokio::time::timeout(Duration::from_secs(8), work)
            .await
            .is_err()
        {
            tracing::warn!("Shutdown deadline reached; exiting anyway.");
        }
        tracing::info!("Stopped.");
        actix::System::current().stop();
    }
}
