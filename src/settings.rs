//! The configuration turned into what connections use, computed once per (re)load so that
//! accepting a connection only clones an `Arc`.
//!
//! Invariant: a [`Settings`] is only ever built from a validated [`Config`]
//! ([`Settings::new`]); its fields are private to the crate, so nothing (a test, the fuzz
//! targets) can serve with settings no configuration could produce.

use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as WsConfig;

use hyper::body::Bytes;

use crate::config::{Config, ConfigError};
use crate::greeting::Template as Greeting;
use crate::http::Policy;

/// The console page, as embedded.
const CONSOLE: &str = include_str!("console/console.html");

/// The console page with the WebSocket path it connects to written into its
/// `wsechod-ws-path` meta tag.
fn console_page(ws_path: &str) -> Bytes {
    // Validated paths hold no '"' or '<'; '&' is escaped for the attribute.
    let escaped = ws_path.replace('&', "&amp;");
    let html = CONSOLE.replacen(
        r#"<meta name="wsechod-ws-path" content="/ws">"#,
        &format!(r#"<meta name="wsechod-ws-path" content="{escaped}">"#),
        1,
    );
    Bytes::from(html)
}

/// Keepalive and timeouts of an open connection (`None`: off).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timers {
    /// Send a ping this often.
    pub ping_interval: Option<Duration>,
    /// Abort when the pong is this late.
    pub pong_timeout: Duration,
    /// Close after this long without a message either way.
    pub idle_timeout: Option<Duration>,
    /// Close this long after opening (before jitter).
    pub max_lifetime: Option<Duration>,
    /// Abort when the peer does not take our data for this long.
    pub write_timeout: Duration,
}

/// How HTTP/2 connections are served.
#[derive(Debug, Clone, Copy)]
pub struct Http2 {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub max_streams: u32,
    /// Each stream's flow-control window.
    pub stream_window: u32,
    /// The connection's flow-control window.
    pub connection_window: u32,
    /// Bytes buffered per stream for sending.
    pub send_buffer: usize,
}

/// Everything a new connection needs, derived from one [`Config`].
#[derive(Clone)]
pub struct Settings {
    /// Path, origin and subprotocol rules of the handshake.
    pub(crate) policy: Policy,
    /// Deadline for the TLS handshake plus the complete upgrade request.
    pub(crate) handshake_timeout: Duration,
    /// Request line plus headers, at most.
    pub(crate) max_header_size: usize,
    /// Connections served at once.
    pub(crate) max_connections: usize,
    /// Connections from one address at once; 0 means no limit.
    pub(crate) max_connections_per_ip: usize,
    /// tungstenite's limits and buffer sizes.
    pub(crate) ws: WsConfig,
    /// Keepalive and timeouts.
    pub(crate) timers: Timers,
    /// Put before echoed text messages; `None` for an exact echo.
    pub(crate) reply_prefix: Option<String>,
    /// Log message contents at debug level.
    pub(crate) log_message_content: bool,
    /// Count messages and bytes and observe message sizes (off with `[metrics] enabled =
    /// false`; connection states are tracked either way).
    pub(crate) count_messages: bool,
    /// Code and reason of the close frame sent on shutdown.
    pub(crate) close_code: u16,
    /// Reason of the close frame sent on shutdown.
    pub(crate) close_reason: Utf8Bytes,
    /// zlib level of compressed echoes.
    pub(crate) compression_level: u32,
    /// The greeting sent first on every connection, if any.
    pub(crate) greeting: Option<Greeting>,
    /// HTTP/2, when it is served.
    pub(crate) http2: Option<Http2>,
    /// TLS for `wss://`, when configured.
    pub(crate) tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl Settings {
    /// Derives settings from a validated configuration. Reads the TLS files, so it can fail.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let w = &config.websocket;
        let s = &config.server;
        let ws = WsConfig::default()
            .read_buffer_size(w.read_buffer_size.as_usize())
            .write_buffer_size(w.write_buffer_size.as_usize())
            .max_write_buffer_size(w.max_write_buffer_size.as_usize())
            .max_message_size(Some(w.max_message_size.as_usize()))
            .max_frame_size(Some(w.frame_limit().as_usize()));
        let h = &config.http2;
        let http2 = h.enabled.then(|| Http2 {
            max_streams: h.max_concurrent_streams,
            stream_window: u32::try_from(h.stream_window.0).unwrap_or(u32::MAX),
            connection_window: u32::try_from(h.connection_window.0).unwrap_or(u32::MAX),
            send_buffer: h.send_buffer.as_usize(),
        });
        let tls = if config.tls.enabled() {
            Some(crate::tls::load(&config.tls, http2.is_some())?)
        } else {
            None
        };
        Ok(Settings {
            policy: Policy {
                path: s.path.clone(),
                allowed_origins: s
                    .allowed_origins
                    .iter()
                    .filter_map(|o| crate::origin::normalize(o))
                    .collect(),
                require_origin: s.require_origin,
                subprotocols: s.subprotocols.clone(),
                require_subprotocol: s.require_subprotocol,
                deflate: w.deflate(),
                console: config
                    .console
                    .enabled
                    .then(|| (config.console.path.clone(), console_page(&s.path))),
            },
            handshake_timeout: s.handshake_timeout.0,
            max_header_size: s.max_header_size.as_usize(),
            max_connections: usize::try_from(s.max_connections).unwrap_or(usize::MAX),
            max_connections_per_ip: usize::try_from(s.max_connections_per_ip).unwrap_or(usize::MAX),
            ws,
            timers: Timers {
                ping_interval: w.ping_interval.nonzero(),
                pong_timeout: w.pong_timeout.0,
                idle_timeout: w.idle_timeout.nonzero(),
                max_lifetime: w.max_lifetime.nonzero(),
                write_timeout: w.write_timeout.0,
            },
            reply_prefix: Some(w.reply_prefix.clone()).filter(|p| !p.is_empty()),
            log_message_content: w.log_message_content,
            count_messages: config.metrics.enabled,
            close_code: config.shutdown.close_code,
            close_reason: Utf8Bytes::from(config.shutdown.close_reason.clone()),
            compression_level: w.compression_level,
            http2,
            greeting: match w.greeting.as_str() {
                "" => None,
                text => Some(Greeting::parse(text).map_err(|e| ConfigError {
                    origin: "configuration".into(),
                    key: Some("websocket.greeting".into()),
                    kind: crate::config::ErrorKind::Value(e),
                })?),
            },
            tls,
        })
    }

    /// The handshake rules.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// tungstenite's limits and buffer sizes.
    pub fn ws(&self) -> &WsConfig {
        &self.ws
    }

    /// The deadline for TLS plus the upgrade request.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The reply prefix of text echoes, if any.
    pub fn reply_prefix(&self) -> Option<&str> {
        self.reply_prefix.as_deref()
    }

    /// The keepalive and timeouts.
    pub fn timers(&self) -> Timers {
        self.timers
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::new(&Config::default()).expect("the defaults need no files")
    }
}
