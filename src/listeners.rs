//! The listening sockets: passed by systemd (socket activation) or bound from the
//! configuration, all before READY=1.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tracing::info;

use crate::config::Config;
use crate::error::{Exit, Fatal};
use crate::systemd::activation;

/// Backlog of every listening socket: room for bursts of connection attempts.
const LISTEN_BACKLOG: i32 = 4096;

/// Every listening socket the daemon serves.
pub struct Listeners {
    /// WebSocket listeners.
    pub websocket: Vec<TcpListener>,
    /// The metrics, health and readiness listener, unless metrics are off.
    pub metrics: Option<TcpListener>,
}

/// The address a listener is bound to, for logs and `STATUS=`.
pub fn local(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Takes the sockets systemd passed, or binds the configured addresses.
pub fn bind(config: &Config) -> Result<Listeners, Fatal> {
    let unavailable = |what: String| Fatal::new(Exit::Unavailable, what);
    let activated = activation::activated()
        .map_err(|e| unavailable(format!("unusable sockets from systemd: {e}")))?;
    let to_tokio = |l: std::net::TcpListener| {
        TcpListener::from_std(l).map_err(|e| unavailable(format!("passed socket: {e}")))
    };
    let (websocket, passed_metrics) = match activated {
        Some(a) => {
            info!(
                sockets = a.websocket.len() + usize::from(a.metrics.is_some()),
                "using sockets passed by systemd; [server] listen is ignored"
            );
            let ws = a
                .websocket
                .into_iter()
                .map(to_tokio)
                .collect::<Result<_, _>>()?;
            (ws, a.metrics.map(to_tokio).transpose()?)
        }
        None => {
            let ws = config
                .server
                .listen
                .iter()
                .map(|addr| listen(*addr))
                .collect::<Result<_, _>>()?;
            (ws, None)
        }
    };
    let metrics = match passed_metrics {
        Some(l) => Some(l),
        None if config.metrics.enabled => Some(listen(config.metrics.listen)?),
        None => None,
    };
    Ok(Listeners { websocket, metrics })
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
