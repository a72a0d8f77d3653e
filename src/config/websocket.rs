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
    /// A text message sent first on every connection, with placeholders filled in (see
    /// [`crate::greeting`]); empty sends none, for an exact echo.
    pub greeting: String,
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
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it.
    pub compression: bool,
    /// zlib compression level of our echoes, 0 (none) to 9 (smallest).
    pub compression_level: u32,
    /// The largest window our compressor uses, 9 to 15 (a client may ask for less).
    pub server_max_window_bits: u8,
    /// The window we ask clients that offer `client_max_window_bits` to compress with, 9 to
    /// 15 (15 asks nothing). Smaller windows cost our decompressor less memory.
    pub client_max_window_bits: u8,
    /// Reset our compressor after every message, so that one per thread serves every
    /// connection instead of one (256 KiB at 15 bits) per connection.
    pub server_no_context_takeover: bool,
    /// Ask clients to reset their compressor after every message, so that our
    /// decompressor is freed between messages instead of kept per connection.
    pub client_no_context_takeover: bool,
}

impl WebSocketConfig {
    /// What we ask for in permessage-deflate, or `None` when compression is off.
    pub fn deflate(&self) -> Option<crate::deflate::Preferences> {
        self.compression.then_some(crate::deflate::Preferences {
            server_max_window_bits: self.server_max_window_bits,
            client_max_window_bits: self.client_max_window_bits,
            server_no_context_takeover: self.server_no_context_takeover,
            client_no_context_takeover: self.client_no_context_takeover,
        })
    }

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
            greeting: String::new(),
            log_message_content: false,
            ping_interval: Dur::secs(30),
            pong_timeout: Dur::secs(15),
            idle_timeout: Dur::secs(0),
            max_lifetime: Dur::secs(0),
            write_timeout: Dur::secs(30),
            compression: true,
            compression_level: 1,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            server_no_context_takeover: true,
            client_no_context_takeover: false,
        }
    }
}
