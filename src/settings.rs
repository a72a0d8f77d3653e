//! The configuration turned into what connections use, computed once per (re)load so that
//! accepting a connection only clones an `Arc`.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as WsConfig;

use crate::config::Config;

/// Everything a new connection needs, derived from one [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration these settings come from.
    pub config: Config,
    /// The path that upgrades (`[server] path`).
    pub path: String,
    /// Deadline for the complete upgrade request.
    pub handshake_timeout: Duration,
    /// Request line plus headers, at most.
    pub max_header_size: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// tungstenite's limits and buffer sizes.
    pub ws: WsConfig,
    /// Put before echoed text messages; `None` for an exact echo.
    pub reply_prefix: Option<String>,
    /// Log message contents at debug level.
    pub log_message_content: bool,
    /// Reason of the 1000 close frame sent on shutdown.
    pub close_reason: Utf8Bytes,
}

impl Settings {
    /// Derives settings from a validated configuration.
    pub fn new(config: &Config) -> Self {
        let w = &config.websocket;
        let ws = WsConfig::default()
            .read_buffer_size(w.read_buffer_size.as_usize())
            .write_buffer_size(w.write_buffer_size.as_usize())
            .max_write_buffer_size(w.max_write_buffer_size.as_usize())
            .max_message_size(Some(w.max_message_size.as_usize()))
            .max_frame_size(Some(w.max_frame_size.as_usize()));
        Settings {
            config: config.clone(),
            path: config.server.path.clone(),
            handshake_timeout: config.server.handshake_timeout.0,
            max_header_size: config.server.max_header_size.as_usize(),
            max_connections: usize::try_from(config.server.max_connections).unwrap_or(usize::MAX),
            ws,
            reply_prefix: Some(w.reply_prefix.clone()).filter(|p| !p.is_empty()),
            log_message_content: w.log_message_content,
            close_reason: Utf8Bytes::from(config.shutdown.close_reason.clone()),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::new(&Config::default())
    }
}
