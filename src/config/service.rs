//! The sections about the daemon as a service rather than about connections: `[metrics]`,
//! `[tls]`, `[shutdown]` and `[log]`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::units::Dur;

/// Default port of the metrics listener.
pub const DEFAULT_METRICS_PORT: u16 = 9180;

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics`, `/healthz` and `/readyz`. Restart needed.
    pub enabled: bool,
    /// Address of that listener. Restart needed.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT)),
        }
    }
}

/// `[tls]`: serve `wss://` when both files are set. SIGHUP re-reads them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first; empty means plain `ws://`.
    pub cert_file: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long to keep serving (and accepting) while `/readyz` already says
    /// 503, so that load balancers stop sending new clients before the listeners close.
    pub delay: Dur,
    /// How long SIGTERM waits for clients to answer the close frame before aborting them.
    pub drain_timeout: Dur,
    /// Close code of the close frame sent on shutdown: 1000, 1001 or 1012.
    pub close_code: u16,
    /// Reason text of the close frame sent on shutdown.
    pub close_reason: String,
    /// Close frames sent per second during the drain; 0 sends them all at once.
    pub close_rate: u32,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            delay: Dur::secs(0),
            drain_timeout: Dur::secs(10),
            close_code: 1000,
            close_reason: "server shutting down".into(),
            close_rate: 0,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A level (`error` … `trace`) or a tracing filter directive; `RUST_LOG` wins over it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}
