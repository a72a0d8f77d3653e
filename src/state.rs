//! The six connection states of the original ASP.NET `WebSocketState`, and why a connection
//! ended Aborted. Plain values with their metric labels; `tracker.rs` moves a connection
//! through them.

/// Where a connection is in its life, as `System.Net.WebSockets.WebSocketState` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    /// TCP accepted, WebSocket handshake not finished.
    Connecting = 0,
    /// Handshake done; messages flow.
    Open = 1,
    /// We sent a close frame first and wait for the peer's.
    CloseSent = 2,
    /// The peer sent a close frame first and our reply is not sent yet.
    CloseReceived = 3,
    /// The close handshake completed and the connection ended.
    Closed = 4,
    /// The connection ended any other way: error, timeout, reset, handshake failure.
    Aborted = 5,
}

impl ConnState {
    /// The four states a connection can be in while it lives, in gauge order.
    pub const LIVE: [ConnState; 4] = [
        ConnState::Connecting,
        ConnState::Open,
        ConnState::CloseSent,
        ConnState::CloseReceived,
    ];

    /// The `state` label value.
    pub fn label(self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Open => "open",
            ConnState::CloseSent => "close_sent",
            ConnState::CloseReceived => "close_received",
            ConnState::Closed => "closed",
            ConnState::Aborted => "aborted",
        }
    }

    /// Closed or Aborted.
    pub fn is_terminal(self) -> bool {
        matches!(self, ConnState::Closed | ConnState::Aborted)
    }

    pub(crate) fn from_u8(v: u8) -> ConnState {
        match v {
            0 => ConnState::Connecting,
            1 => ConnState::Open,
            2 => ConnState::CloseSent,
            3 => ConnState::CloseReceived,
            4 => ConnState::Closed,
            _ => ConnState::Aborted,
        }
    }
}

/// Why a connection ended Aborted. A small fixed set, so it can be a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AbortReason {
    /// The HTTP request was answered with an error status instead of 101.
    HandshakeRejected = 0,
    /// The client vanished, sent malformed HTTP or was too slow before the upgrade.
    HandshakeFailed = 1,
    /// The peer broke the WebSocket protocol (bad frame, invalid UTF-8, message too big).
    ProtocolError = 2,
    /// The TCP connection ended or failed without a close handshake.
    Reset = 3,
    /// Still open when the shutdown drain ended (deadline or second signal).
    DrainDeadline = 4,
    /// No pong within `pong_timeout` of our keepalive ping.
    PongTimeout = 5,
    /// No message either way for `idle_timeout` (closed with 1001).
    IdleTimeout = 6,
    /// Open for `max_lifetime` (closed with 1001).
    MaxLifetime = 7,
    /// The peer did not take our data for `write_timeout` (closed with 1008).
    WriteTimeout = 8,
    /// The TCP connection closed before a request arrived: port probes and TCP health
    /// checks.
    NoRequest = 9,
    /// permessage-deflate data that does not inflate (closed with 1007).
    CompressionError = 10,
    /// The request fetched the console page instead of upgrading.
    ConsolePage = 11,
}

impl AbortReason {
    /// All reasons, in label order.
    pub const ALL: [AbortReason; 12] = [
        AbortReason::HandshakeRejected,
        AbortReason::HandshakeFailed,
        AbortReason::ProtocolError,
        AbortReason::Reset,
        AbortReason::DrainDeadline,
        AbortReason::PongTimeout,
        AbortReason::IdleTimeout,
        AbortReason::MaxLifetime,
        AbortReason::WriteTimeout,
        AbortReason::NoRequest,
        AbortReason::CompressionError,
        AbortReason::ConsolePage,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            AbortReason::HandshakeRejected => "handshake_rejected",
            AbortReason::HandshakeFailed => "handshake_failed",
            AbortReason::ProtocolError => "protocol_error",
            AbortReason::Reset => "reset",
            AbortReason::DrainDeadline => "drain_deadline",
            AbortReason::PongTimeout => "pong_timeout",
            AbortReason::IdleTimeout => "idle_timeout",
            AbortReason::MaxLifetime => "max_lifetime",
            AbortReason::WriteTimeout => "write_timeout",
            AbortReason::NoRequest => "no_request",
            AbortReason::CompressionError => "compression_error",
            AbortReason::ConsolePage => "console_page",
        }
    }
}
