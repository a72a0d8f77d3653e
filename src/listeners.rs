//! The listening sockets: passed by systemd, or bound from the configuration, all before
//! READY=1.
//!
//! Under systemd the daemon keeps its listeners in the unit's file descriptor store
//! (`FDSTORE=1`, with `FileDescriptorStoreMax=` in the unit): after `systemctl restart` or
//! a package upgrade the next process gets the very same sockets back, so the port never
//! closes and no connection attempt is refused meanwhile (attempts wait in the listen
//! backlog until the new process accepts them).
//!
//! Invariants:
//! - the configuration decides the addresses: a stored socket is reused only for the
//!   address it is bound to, and a stored socket for an address no longer configured is
//!   closed and removed from the store;
//! - a socket unit (socket activation) decides instead, as before: `[server] listen` is
//!   then ignored.

use std::net::SocketAddr;
use std::os::fd::AsFd;

use tokio::net::TcpListener;
use tracing::info;

use crate::config::Config;
use crate::error::{Exit, Fatal};
use crate::systemd::{self, activation};

/// Backlog of every listening socket: room for bursts of connection attempts.
const LISTEN_BACKLOG: i32 = 4096;

/// Every listening socket the daemon serves.
pub struct Listeners {
    /// WebSocket listeners.
    pub websocket: Vec<TcpListener>,
    /// The metrics, health and readiness listener, unless metrics are off.
    pub metrics: Option<TcpListener>,
    /// They came from a socket unit (then they are not the daemon's to store).
    pub activated: bool,
}

/// The address a listener is bound to, for logs and `STATUS=`.
pub fn local(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Takes the sockets systemd passed, or binds the configured addresses (reusing stored
/// sockets for the addresses they are bound to).
pub fn bind(config: &Config) -> Result<Listeners, Fatal> {
    let unavailable = |what: String| Fatal::new(Exit::Unavailable, what);
    let passed = activation::take()
        .map_err(|e| unavailable(format!("unusable sockets from systemd: {e}")))?;
    let to_tokio = |l: std::net::TcpListener| {
        TcpListener::from_std(l).map_err(|e| unavailable(format!("passed socket: {e}")))
    };
    if !passed.websocket.is_empty() {
        info!(
            sockets = passed.websocket.len() + usize::from(passed.metrics.is_some()),
            "using sockets passed by systemd; [server] listen is ignored"
        );
        forget_stored(&passed.stored_websocket, activation::STORED_WEBSOCKET);
        let websocket = passed
            .websocket
            .into_iter()
            .map(to_tokio)
            .collect::<Result<_, _>>()?;
        let metrics = match passed.metrics {
            Some(l) => Some(to_tokio(l)?),
            None => metrics_listener(config, passed.stored_metrics)?,
        };
        return Ok(Listeners {
            websocket,
            metrics,
            activated: true,
        });
    }
    let mut stored = passed.stored_websocket;
    let mut websocket = Vec::new();
    for addr in &config.server.listen {
        match stored
            .iter()
            .position(|l| l.local_addr().is_ok_and(|a| a == *addr))
        {
            Some(i) => {
                info!("listening on {addr} again: the socket was kept across the restart");
                websocket.push(to_tokio(stored.swap_remove(i))?);
            }
            None => websocket.push(listen(*addr)?),
        }
    }
    forget_stored(&stored, activation::STORED_WEBSOCKET);
    let metrics = metrics_listener(config, passed.stored_metrics)?;
    Ok(Listeners {
        websocket,
        metrics,
        activated: false,
    })
}

/// The metrics listener: the stored one if it is bound to the configured address.
fn metrics_listener(
    config: &Config,
    stored: Option<std::net::TcpListener>,
) -> Result<Option<TcpListener>, Fatal> {
    let m = &config.metrics;
    let (reuse, unused): (Vec<_>, Vec<_>) = stored
        .into_iter()
        .partition(|l| m.enabled && l.local_addr().is_ok_and(|a| a == m.listen));
    // Else systemd would keep the old port bound, with nobody accepting on it.
    forget_stored(&unused, activation::STORED_METRICS);
    match reuse.into_iter().next() {
        Some(l) => TcpListener::from_std(l)
            .map(Some)
            .map_err(|e| Fatal::new(Exit::Unavailable, format!("stored socket: {e}"))),
        None if m.enabled => listen(m.listen).map(Some),
        None => Ok(None),
    }
}

/// Stored sockets the configuration no longer wants: out of the store (they close when
/// dropped here).
fn forget_stored(unused: &[std::net::TcpListener], name: &str) {
    if !unused.is_empty() {
        info!(
            count = unused.len(),
            "closing sockets kept from before the restart for addresses no longer configured"
        );
        systemd::remove_stored(name);
    }
}

impl Listeners {
    /// Puts the daemon's own listeners in systemd's file descriptor store, for the next
    /// process after a restart (a no-op outside systemd or with socket activation).
    pub fn store(&self) {
        if self.activated {
            return;
        }
        let ws: Vec<_> = self.websocket.iter().map(AsFd::as_fd).collect();
        systemd::store_fds(activation::STORED_WEBSOCKET, &ws);
        if let Some(m) = &self.metrics {
            systemd::store_fds(activation::STORED_METRICS, &[m.as_fd()]);
        }
    }
}

/// Binds one listening socket. IPv6 sockets are IPv6-only, so `0.0.0.0:8080` and
/// `[::]:8080` can be listed together, as with nginx.
fn listen(addr: SocketAddr) -> Result<TcpListener, Fatal> {
    use socket2::{Domain, Socket, Type};
    let fail =
        |e: std::io::Error| Fatal::new(Exit::Unavailable, format!("cannot listen on {addr}: {e}"));
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail)?;
    }
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(LISTEN_BACKLOG).map_err(fail)?;
    TcpListener::from_std(socket.into()).map_err(fail)
}
