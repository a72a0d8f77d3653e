//! `[websocket]`: how each WebSocket connection behaves once it is open.

use serde::{Deserialize, Serialize};

use super::units::{ByteSize, Dur, KIB, MIB};

/// `[websocket]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Largest message accepted after reassembly of fragments; over it: close 1009.
    pub max_message_size: ByteSize,
    /// Largest single frame payload accepted; over it: close 1009. Unset: the same as
    /// `max_message_size`, so that lowering the message limit lowers this one too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frame_size: Option<ByteSize>,
    /// Size of each connection's read buffer.
    pub read_buffer_size: ByteSize,
    /// Outgoing bytes buffered before a write to the socket is attempted.
    pub write_buffer_size: ByteSize,
    /// Outgoing bytes buffered at most while the peer does not read.
    pub max_write_buffer_size: ByteSize,
    /// Put before every echoed text message; empty means an exact echo.
    pub reply_prefix: String,
    /// Log message contents (truncated) at debug level.
    pub log_message_content: bool,
    /// Send a ping this often; 0 turns keepalive pings off.
    pub ping_interval: Dur,
    /// Abort a connection whose pong has not arrived this long after our ping.
    pub pong_timeout: Dur,
    /// Close a connection with no message either way for this long; 0 means never.
    pub idle_timeout: Dur,
    /// Close a connection this long after it opened (minus up to 10% random jitter, so
    /// reconnects spread out); 0 means never.
    pub max_lifetime: Dur,
    /// Abort a connection whose peer does not take our echoes for this long.
    pub write_timeout: Dur,
}

impl WebSocketConfig {
    /// The frame limit in force: `max_frame_size`, or `max_message_size` when unset.
    pub fn frame_limit(&self) -> ByteSize {
        self.max_frame_size.unwrap_or(self.max_message_size)
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            max_message_size: ByteSize(16 * MIB),
            max_frame_size: None,
            read_buffer_size: ByteSize(256),
            write_buffer_size: ByteSize(8 * KIB),
            max_write_buffer_size: ByteSize(32 * MIB),
            reply_prefix: String::new(),
            log_message_content: false,
            ping_interval: Dur::secs(30),
            pong_timeout: Dur::secs(15),
            idle_timeout: Dur::secs(0),
            max_lifetime: Dur::secs(0),
            write_timeout: Dur::secs(30),
        }
    }
}
