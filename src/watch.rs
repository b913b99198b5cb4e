//! The configuration watcher: `notify` on the file's *parent directory* (editors replace
//! files by renaming over them, which a watch on the file itself would lose), filtered on
//! the file name and debounced, feeding the same [`Reload`] message as SIGHUP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::Addr;
use notify::{RecursiveMode, Watcher};

use crate::actors::supervisor::{Reload, Supervisor};

/// How long the file must be quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// Watches `path` until the returned watcher is dropped.
pub fn watch(
    path: &Path,
    supervisor: Addr<Supervisor>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    let file = path.to_path_buf();
    let name = file.file_name().map(|n| n.to_os_string());
    let dir: PathBuf = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                let ours = ev
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == name);
                let relevant = !matches!(ev.kind, notify::EventKind::Access(_));
                if ours && relevant {
                    let _ = tx.send(());
                }
            }
            Err(e) => tracing::warn!(error = %e, "Config watcher error."),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    actix::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until no event arrived for DEBOUNCE.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            tracing::info!("Configuration file changed; reloading.");
            crate::systemd::notify_reloading();
            let _ = supervisor.send(Reload).await;
            crate::systemd::notify_ready(None);
        }
    });
    tracing::info!(dir = %dir.display(), "Watching the configuration file.");
    Ok(watcher)
}
