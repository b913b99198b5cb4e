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

/// Reads the API bearer token, if one is configured.
fn api_token(config: &Config) -> Result<Option<Arc<SecretString>>, anyhow::Error> {
    match &config.daemon.api_token_file {
        Some(p) => Ok(Some(Arc::new(
            config::read_secret_file(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        ))),
        None => {
            tracing::warn!("No [daemon] api_token_file is configured: every /api request will be refused with 401.");
            Ok(None)
        }
    }
}

/// Loads the key that seals refresh tokens. It is created when missing, unless sealed
/// grants already exist (a lost key must not be papered over).
pub fn load_sealer(config: &Config, db: &Db) -> Result<Sealer, anyhow::Error> {
    let path = config.token_key_file();
    let grants = db.grant_count()?;
    let create = grants == 0;
    Sealer::load(&path, create)
        .map_err(|e| anyhow::anyhow!("{e} {} stored grant(s) need that key.", grants))
}

/// Starts the daemon: store, secrets, actors, HTTP API, watcher. Returns once it is ready.
pub async fn start(boot: Boot<'_>) -> Result<Daemon, BootError> {
    let config = boot.config;
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
    let token = api_token(&config).map_err(fail(EXIT_CONFIG))?;
    let sealer = Arc::new(load_sealer(&config, &db).map_err(fail(EXIT_CONFIG))?);
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
        token,
        sealer: Some(sealer),
    };
    tracing::info!(%listen, "Starting HTTP API.");
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new().configure(api::configure(state.clone()))
    })
    .workers(2)
    .shutdown_timeout(8)
    .disable_signals()
    .listen(listener)
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
