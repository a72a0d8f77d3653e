//! The systemd side: the notify protocol (READY, STATUS, RELOADING, STOPPING, WATCHDOG),
//! socket activation (`activation.rs`) and the watchdog task (`watchdog.rs`). Every function
//! is a no-op outside systemd.

pub mod activation;
mod notify;
pub mod watchdog;

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

/// Sends `states` to the service manager if `NOTIFY_SOCKET` is set, without blocking.
fn notify(states: &[NotifyState]) {
    notify_with(states, &[]);
}

fn notify_with(states: &[NotifyState], fds: &[std::os::fd::BorrowedFd<'_>]) {
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    if let Err(e) = notify::send(&message, fds) {
        warn!(error = %e, "cannot notify systemd; dropped {:?}", message.trim_end());
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

/// `EXTEND_TIMEOUT_USEC=`: asks systemd for at least `d` more before it gives up on the
/// current start or stop (`TimeoutStopSec=` then covers a long drain).
pub fn extend_timeout(d: Duration) {
    // As text: sd-notify's `ExtendTimeoutUsec` is a u32, about 71 minutes at most, and
    // delay plus drain_timeout may be longer; systemd reads the value as 64 bits.
    let usec = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    notify(&[NotifyState::Custom(&format!("EXTEND_TIMEOUT_USEC={usec}"))]);
}

/// `FDSTORE=1` with `FDNAME=name`: keeps `fds` in the unit's file descriptor store, so
/// that they are passed back to the next process after a restart. systemd keeps one copy
/// of each socket, however often it is stored. A no-op outside systemd; ignored by
/// systemd when the unit has no `FileDescriptorStoreMax=`.
pub fn store_fds(name: &str, fds: &[std::os::fd::BorrowedFd<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() || fds.is_empty() {
        return;
    }
    let store = NotifyState::Custom("FDSTORE=1");
    let name = format!("FDNAME={name}");
    notify_with(&[store, NotifyState::Custom(&name)], fds);
}

/// `FDSTOREREMOVE=1` with `FDNAME=name`: drops stored descriptors of that name.
pub fn remove_stored(name: &str) {
    let name = format!("FDNAME={name}");
    notify(&[
        NotifyState::Custom("FDSTOREREMOVE=1"),
        NotifyState::Custom(&name),
    ]);
}

/// `WATCHDOG=1`.
pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// The watchdog interval systemd expects pings within, if it set one for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}
