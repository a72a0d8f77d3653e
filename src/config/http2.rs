//! `[http2]`: WebSockets over HTTP/2 (RFC 8441) on the same listeners.

use serde::{Deserialize, Serialize};

use super::units::{ByteSize, KIB, MIB};

/// `[http2]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http2Config {
    /// Serve HTTP/2: ALPN `h2` with TLS, prior knowledge (h2c) without.
    pub enabled: bool,
    /// WebSocket streams one TCP connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Flow-control window of each stream: what a client may send before we read.
    pub stream_window: ByteSize,
    /// Flow-control window of each TCP connection, shared by its streams.
    pub connection_window: ByteSize,
    /// Echo bytes buffered per stream while the client's window is closed.
    pub send_buffer: ByteSize,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrent_streams: 100,
            stream_window: ByteSize(64 * KIB),
            connection_window: ByteSize(MIB),
            send_buffer: ByteSize(64 * KIB),
        }
    }
}
