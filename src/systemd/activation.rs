//! Listening sockets systemd passes to the process (`LISTEN_FDS`, `LISTEN_FDNAMES`): those
//! of a socket unit (socket activation), and those the daemon stored in its own file
//! descriptor store before a restart.
//!
//! Names say which is which:
//! - `metrics` (`FileDescriptorName=metrics`): the metrics listener of a socket unit;
//! - `stored-websocket`, `stored-metrics`: listeners the daemon itself bound and stored
//!   (`FDSTORE=1`), handed back after `systemctl restart` or a package upgrade, so that the
//!   port never closes in between (see `listeners.rs`);
//! - any other name: a WebSocket listener of a socket unit.
//!
//! Taking ownership of inherited descriptors is done by the `listenfd` crate, which checks
//! each is a TCP listener; this crate has no `unsafe` code of its own.

use std::net::TcpListener as StdListener;

use tracing::debug;

/// `FDNAME` of a WebSocket listener in the file descriptor store.
pub const STORED_WEBSOCKET: &str = "stored-websocket";
/// `FDNAME` of the metrics listener in the file descriptor store.
pub const STORED_METRICS: &str = "stored-metrics";

/// Sockets passed by systemd, by origin and role.
#[derive(Debug, Default)]
pub struct Passed {
    /// WebSocket listeners of a socket unit.
    pub websocket: Vec<StdListener>,
    /// The metrics listener of a socket unit (named `metrics`), if any.
    pub metrics: Option<StdListener>,
    /// WebSocket listeners from the daemon's own file descriptor store.
    pub stored_websocket: Vec<StdListener>,
    /// The metrics listener from the store, if any.
    pub stored_metrics: Option<StdListener>,
}

/// Takes every socket systemd passed (none outside systemd).
pub fn take() -> std::io::Result<Passed> {
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Passed::default();
    for i in 0..fds.len() {
        let Some(listener) = fds.take_tcp_listener(i)? else {
            continue;
        };
        listener.set_nonblocking(true)?;
        // Fail early on a socket that is not bound.
        listener.local_addr()?;
        let name = names.get(i).map_or("", String::as_str);
        debug!(index = i, name, "socket passed by systemd");
        match name {
            "metrics" => {
                if out.metrics.replace(listener).is_some() {
                    return Err(std::io::Error::other("more than one socket named metrics"));
                }
            }
            STORED_METRICS => out.stored_metrics = Some(listener),
            STORED_WEBSOCKET => out.stored_websocket.push(listener),
            _ => out.websocket.push(listener),
        }
    }
    if out.metrics.is_some() && out.websocket.is_empty() {
        return Err(std::io::Error::other(
            "systemd passed only a metrics socket; the WebSocket socket is missing",
        ));
    }
    Ok(out)
}
