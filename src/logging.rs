//! Logging starts before the configuration is read: a stderr subscriber (journald adds
//! timestamps). The audit log is not a tracing layer: see [`crate::audit`].

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The installed subscriber (a handle kept for the subcommands that start a daemon).
pub struct Logging {
    _private: (),
}

/// Installs the global subscriber. `RUST_LOG` overrides the default level (info).
pub fn init() -> Logging {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .with_filter(filter);
    let _ = tracing_subscriber::registry().with(stderr).try_init();
    Logging { _private: () }
}
