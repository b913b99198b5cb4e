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

/// How often [`StartKeepalive`] tells systemd the start goes on.
const EXTEND_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// How long [`StartKeepalive`] keeps extending in all: a start that hangs still times out.
const EXTEND_AT_MOST: std::time::Duration = std::time::Duration::from_secs(3600);

/// While alive, tells systemd every [`EXTEND_EVERY`] that the start is still going
/// (`EXTEND_TIMEOUT_USEC`, systemd 236 and later), so that a long first step is not killed
/// by `TimeoutStartSec=` and started again from scratch: sled recovering a large store, or
/// the matching index rebuilt after an upgrade or a `default_region` change (it starts over
/// when cut short, so a start killed by the timeout would never finish). systemd applies an
/// extension only past the configured timeout, so a short start is unaffected. Dropped
/// before `READY=1`; stops by itself after [`EXTEND_AT_MOST`].
pub struct StartKeepalive {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A [`StartKeepalive`] when systemd waits for our notifications (`NOTIFY_SOCKET` is set).
pub fn keep_starting() -> StartKeepalive {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return StartKeepalive {
            stop: None,
            thread: None,
        };
    }
    keep_starting_with(EXTEND_EVERY, EXTEND_AT_MOST, |states| {
        let _ = sd_notify::notify(false, states);
    })
}

fn keep_starting_with(
    every: std::time::Duration,
    at_most: std::time::Duration,
    send: impl Fn(&[NotifyState]) + Send + 'static,
) -> StartKeepalive {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    // Each message gives three periods more: one missed tick is no reason to fail.
    let usec = u32::try_from((every * 3).as_micros()).unwrap_or(u32::MAX);
    let thread = std::thread::Builder::new()
        .name("start-keepalive".into())
        .spawn(move || {
            let began = std::time::Instant::now();
            loop {
                send(&[NotifyState::ExtendTimeoutUsec(usec)]);
                if began.elapsed() >= at_most {
                    tracing::warn!(
                        "Start-up still not done; no longer extending systemd's start timeout."
                    );
                    return;
                }
                match stopped.recv_timeout(every) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => return,
                }
            }
        })
        .ok();
    StartKeepalive {
        stop: Some(stop),
        thread,
    }
}

impl Drop for StartKeepalive {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// What a keepalive sent, as the lines systemd would read.
    type Sent = Arc<Mutex<Vec<String>>>;

    fn recorder() -> (Sent, impl Fn(&[NotifyState]) + Send + 'static) {
        let sent: Sent = Arc::default();
        let s2 = sent.clone();
        (sent, move |states: &[NotifyState]| {
            let mut s = s2.lock().unwrap();
            s.extend(states.iter().map(|st| st.to_string()));
        })
    }

    #[test]
    fn start_keepalive_extends_the_start_timeout_until_it_is_dropped() {
        let (sent, send) = recorder();
        let k = keep_starting_with(Duration::from_millis(20), Duration::from_secs(600), send);
        std::thread::sleep(Duration::from_millis(300));
        drop(k);
        let after_drop = sent.lock().unwrap().clone();
        assert!(after_drop.len() >= 2, "{after_drop:?}");
        assert!(
            after_drop.iter().all(|m| m == "EXTEND_TIMEOUT_USEC=60000"),
            "{after_drop:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            *sent.lock().unwrap(),
            after_drop,
            "nothing is sent once dropped"
        );
    }

    #[test]
    fn start_keepalive_stops_extending_after_its_bound() {
        let (sent, send) = recorder();
        let _k = keep_starting_with(Duration::from_millis(10), Duration::from_millis(50), send);
        std::thread::sleep(Duration::from_millis(400));
        let n = sent.lock().unwrap().len();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            sent.lock().unwrap().len(),
            n,
            "still extending after the bound"
        );
        assert!((1..=10).contains(&n), "{n}");
    }
}
