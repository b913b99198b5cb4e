//! systemd notifications (`Type=notify`). READY=1 means: the configuration is parsed, the
//! store is open, secrets are read, the supervisor has started its accounts and the HTTP
//! API is listening (docs/operations.md). `NOTIFY_SOCKET` is never unset, so reloads can
//! notify too.

use sd_notify::NotifyState;

pub fn notify_ready(status: Option<&str>) {
    let mut states = vec![NotifyState::Ready];
    if let Some(s) = status {
        states.push(NotifyState::Status(s));
    }
    let _ = sd_notify::notify(false, &states);
}

pub fn notify_reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(m) = NotifyState::monotonic_usec_now() {
        states.push(m);
    }
    let _ = sd_notify::notify(false, &states);
}

pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

pub fn notify_status(s: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(s)]);
}
