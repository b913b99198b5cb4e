//! The configuration watcher: `notify` on the file's *parent directory* (editors replace
//! files by renaming over them, which a watch on the file itself would lose), filtered on
//! the file name and debounced, feeding the same [`Reload`] message as SIGHUP.
//!
//! An inotify watch belongs to a directory inode: when the directory is removed or
//! replaced (a deployment that swaps the whole config directory, `rm -r` and a fresh
//! checkout), the watch ends silently. So the watcher also checks, every
//! [`REARM_CHECK`], whether the directory it watches is still the one at that path. When it
//! was removed (the watch reported it) or replaced (another inode), the watcher is
//! re-created on the new directory, the re-creation is logged, and the configuration is
//! reloaded once, since the file may have changed while nothing watched it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use notify::{RecursiveMode, Watcher};

use crate::actors::supervisor::{Reload, Supervisor};

/// How long the file must be quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// How often the watcher checks that its directory is still the one at the path.
pub const REARM_CHECK: Duration = Duration::from_secs(1);

/// The running watcher; dropping it stops watching.
pub struct ConfigWatcher {
    _current: Arc<Mutex<Option<notify::RecommendedWatcher>>>,
}

/// A directory's identity: device and inode.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// A notify watcher on `dir` that sends on `tx` for events about the file `name`, and sets
/// `dir_lost` when the directory itself is removed or moved away, or the watch fails.
fn new_watcher(
    dir: &Path,
    name: Option<std::ffi::OsString>,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
    dir_lost: Arc<AtomicBool>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    let watched = dir.to_path_buf();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                let about_dir = ev.paths.iter().any(|p| p == &watched);
                if about_dir
                    && matches!(
                        ev.kind,
                        notify::EventKind::Remove(_)
                            | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                    )
                {
                    dir_lost.store(true, Ordering::SeqCst);
                }
                let ours = ev
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == name);
                let relevant = !matches!(ev.kind, notify::EventKind::Access(_));
                if ours && relevant {
                    let _ = tx.send(());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Config watcher error; it will be re-created.");
                dir_lost.store(true, Ordering::SeqCst);
            }
        })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Watches `path` until the returned watcher is dropped.
pub fn watch(path: &Path, supervisor: Addr<Supervisor>) -> Result<ConfigWatcher, notify::Error> {
    let file = path.to_path_buf();
    let name = file.file_name().map(|n| n.to_os_string());
    let dir: PathBuf = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let dir_lost = Arc::new(AtomicBool::new(false));
    let first = new_watcher(&dir, name.clone(), tx.clone(), dir_lost.clone())?;
    let current = Arc::new(Mutex::new(Some(first)));
    let weak = Arc::downgrade(&current);
    let mut watched = identity(&dir);
    tracing::info!(dir = %dir.display(), "Watching the configuration file.");
    let reload = move |supervisor: Addr<Supervisor>| async move {
        crate::systemd::notify_reloading();
        let _ = supervisor.send(Reload).await;
        crate::systemd::notify_ready(None);
    };
    actix::spawn(async move {
        let mut tick = tokio::time::interval(REARM_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut waiting_logged = false;
        loop {
            tokio::select! {
                ev = rx.recv() => {
                    if ev.is_none() {
                        return;
                    }
                    // Debounce: wait until no event arrived for DEBOUNCE.
                    loop {
                        match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                            Ok(Some(())) => continue,
                            Ok(None) => return,
                            Err(_) => break,
                        }
                    }
                    tracing::info!("Configuration file changed; reloading.");
                    reload(supervisor.clone()).await;
                }
                _ = tick.tick() => {
                    let Some(slot) = weak.upgrade() else {
                        return; // The daemon dropped the watcher.
                    };
                    let now = identity(&dir);
                    let lost = dir_lost.load(Ordering::SeqCst);
                    let replaced = now.is_some() && now != watched;
                    if now.is_none() {
                        if !waiting_logged {
                            tracing::warn!(dir = %dir.display(), "The configuration directory is gone; waiting for it to come back.");
                            waiting_logged = true;
                        }
                        continue;
                    }
                    if !(lost || replaced) {
                        continue;
                    }
                    match new_watcher(&dir, name.clone(), tx.clone(), dir_lost.clone()) {
                        Ok(w) => {
                            dir_lost.store(false, Ordering::SeqCst);
                            watched = now;
                            waiting_logged = false;
                            // The old watcher is dropped after the new one is in place.
                            let old = slot
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .replace(w);
                            drop(old);
                            tracing::warn!(dir = %dir.display(), "The configuration directory was removed or replaced; config watcher re-created. Reloading the configuration.");
                            reload(supervisor.clone()).await;
                        }
                        Err(e) => {
                            tracing::warn!(dir = %dir.display(), error = %e, "Cannot re-create the config watcher yet; will retry.");
                        }
                    }
                }
            }
        }
    });
    Ok(ConfigWatcher { _current: current })
}
