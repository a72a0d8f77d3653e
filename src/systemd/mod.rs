//! The systemd side: the notify protocol (READY, STATUS, RELOADING, STOPPING, WATCHDOG),
//! socket activation (`activation.rs`) and the watchdog task (`watchdog.rs`). Every function
//! is a no-op outside systemd.

pub mod activation;
pub mod watchdog;

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

/// Sends `states` to the service manager if `NOTIFY_SOCKET` is set.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=…`.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC`, as systemd ≥ 253 requires for `notify-reload`.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(e) => {
            warn!(error = %e, "cannot read the monotonic clock");
            notify(&[NotifyState::Reloading]);
        }
    }
}

/// `STOPPING=1` with a status line.
pub fn stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// `WATCHDOG=1`.
pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// The watchdog interval systemd expects pings within, if it set one for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}
