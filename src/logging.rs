//! Logging starts before the configuration is read: a stderr subscriber (journald adds
//! timestamps) plus an empty slot that [`Logging::enable_audit`] fills with the audit-log
//! layer once `audit_dir` is known.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

pub struct Logging {
    audit: reload::Handle<Option<Boxed>, Registry>,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default level (info).
pub fn init() -> Logging {
    let (audit, handle) = reload::Layer::new(None::<Boxed>);
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("audit=off".parse().unwrap_or_default());
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .with_filter(filter);
    let _ = tracing_subscriber::registry()
        .with(audit.with_filter(crate::audit::filter()))
        .with(stderr)
        .try_init();
    Logging { audit: handle }
}

impl Logging {
    /// Starts writing audit events to daily files in `dir`.
    pub fn enable_audit(&self, dir: &std::path::Path) -> Result<(), String> {
        let layer: Boxed = Box::new(crate::audit::layer::<Registry>(dir)?);
        self.audit
            .modify(|slot| *slot = Some(layer))
            .map_err(|e| e.to_string())
    }
}
