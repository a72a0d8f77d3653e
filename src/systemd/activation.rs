//! Socket activation: listening sockets systemd passed to this process (`LISTEN_FDS`,
//! `LISTEN_FDNAMES`). A socket named `metrics` is the metrics listener; every other one
//! serves WebSockets.

use std::net::TcpListener as StdListener;

use tracing::debug;

/// Sockets passed by systemd socket activation, by role.
#[derive(Debug, Default)]
pub struct Activated {
    /// Sockets for the WebSocket listener (every name but `metrics`).
    pub websocket: Vec<StdListener>,
    /// The socket named `metrics` (`FileDescriptorName=metrics`), if any.
    pub metrics: Option<StdListener>,
}

/// Takes the sockets systemd passed (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`), if any.
pub fn activated() -> std::io::Result<Option<Activated>> {
    let fds: Vec<_> = sd_notify::listen_fds_with_names()?.collect();
    if fds.is_empty() {
        return Ok(None);
    }
    let mut out = Activated::default();
    for (fd, name) in fds {
        let listener = adopt(fd)?;
        listener.set_nonblocking(true)?;
        debug!(fd, name, "socket passed by systemd");
        if name == "metrics" {
            if out.metrics.replace(listener).is_some() {
                return Err(std::io::Error::other("more than one socket named metrics"));
            }
        } else {
            out.websocket.push(listener);
        }
    }
    if out.websocket.is_empty() {
        return Err(std::io::Error::other(
            "systemd passed only a metrics socket; the WebSocket socket is missing",
        ));
    }
    Ok(Some(out))
}

/// Takes ownership of an inherited listening socket.
#[allow(unsafe_code)]
fn adopt(fd: std::os::fd::RawFd) -> std::io::Result<StdListener> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: `sd_notify::listen_fds` yields only descriptors from SD_LISTEN_FDS_START to
    // LISTEN_FDS that systemd passed to this very process (LISTEN_PID matched), each
    // exactly once; nothing else in the process owns them.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = StdListener::from(owned);
    // Fail early if the descriptor is not a listening TCP socket.
    socket.local_addr()?;
    Ok(socket)
}
