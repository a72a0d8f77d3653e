//! `[server]`: the WebSocket listener and its HTTP front.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::units::{ByteSize, Dur, KIB};

/// `[server]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses the WebSocket listener binds. Restart needed.
    pub listen: Vec<SocketAddr>,
    /// The URL path that accepts WebSocket upgrades; every other path gets 404.
    pub path: String,
    /// Time a client has to send its complete upgrade request.
    pub handshake_timeout: Dur,
    /// Upper bound on the size of the request line plus headers.
    pub max_header_size: ByteSize,
    /// Connections served at once (handshaking or open); over it, 503 before upgrading.
    pub max_connections: u32,
    /// Connections at once from one client address; 0 means no limit. Over it: 429.
    pub max_connections_per_ip: u32,
    /// Tokio worker threads; 0 means one per CPU the process may run on. Restart needed.
    pub worker_threads: u16,
    /// Exact `Origin` values (scheme://host[:port]) allowed to connect; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Refuse requests without an `Origin` header (403); by default non-browser clients,
    /// which send none, are allowed.
    pub require_origin: bool,
    /// Subprotocols we speak, in no particular order; the first one the client offers that
    /// is on this list is selected.
    pub subprotocols: Vec<String>,
    /// Refuse (400) a client that offers none of `subprotocols`.
    pub require_subprotocol: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
            path: "/ws".into(),
            handshake_timeout: Dur::secs(10),
            max_header_size: ByteSize(16 * KIB),
            max_connections: 100_000,
            max_connections_per_ip: 0,
            worker_threads: 0,
            allowed_origins: Vec::new(),
            require_origin: false,
            subprotocols: Vec::new(),
            require_subprotocol: false,
        }
    }
}

/// `[console]`: the page for trying the echo from a browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the page.
    pub enabled: bool,
    /// Where, on the WebSocket listener.
    pub path: String,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/console".into(),
        }
    }
}
