//! How a connection ends: which close code and reason each cause gets (one wording per
//! cause), and the linger after failing a connection.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::deflate::InflateError;
use crate::state::AbortReason;

/// Why we close a connection from our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The peer broke the protocol (RFC 6455 framing, control frames, close codes).
    Protocol,
    /// A text message that is not UTF-8.
    Utf8,
    /// A frame or message over the configured limit.
    TooBig,
    /// permessage-deflate data that does not inflate.
    Compressed,
    /// An error of ours.
    Internal,
    /// No message either way for `idle_timeout`.
    Idle,
    /// `max_lifetime` reached.
    Lifetime,
    /// The peer did not take our data for `write_timeout`.
    WriteTimeout,
}

impl Cause {
    /// The close code RFC 6455 section 7.4.1 gives this cause.
    pub(crate) fn code(self) -> CloseCode {
        match self {
            Cause::Protocol => CloseCode::Protocol,
            Cause::Utf8 | Cause::Compressed => CloseCode::Invalid,
            Cause::TooBig => CloseCode::Size,
            Cause::Internal => CloseCode::Error,
            Cause::Idle | Cause::Lifetime => CloseCode::Away,
            Cause::WriteTimeout => CloseCode::Policy,
        }
    }

    /// The abort reason a connection failed for this cause ends with.
    pub(crate) fn abort_reason(self) -> AbortReason {
        match self {
            Cause::Compressed => AbortReason::CompressionError,
            Cause::Idle => AbortReason::IdleTimeout,
            Cause::Lifetime => AbortReason::MaxLifetime,
            Cause::WriteTimeout => AbortReason::WriteTimeout,
            Cause::Protocol | Cause::Utf8 | Cause::TooBig | Cause::Internal => {
                AbortReason::ProtocolError
            }
        }
    }

    /// The reason text. 1002 uses tungstenite's own wording, which it sends when it replaces
    /// a peer's invalid close code, so that every 1002 reads the same.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Cause::Protocol => "Protocol violation",
            Cause::Utf8 => "invalid UTF-8 in text message",
            Cause::Compressed => "invalid compressed data",
            Cause::TooBig => "message too big",
            Cause::Internal => "internal error",
            Cause::Idle => "idle timeout",
            Cause::Lifetime => "maximum connection lifetime reached",
            Cause::WriteTimeout => "write timeout: read your messages",
        }
    }
}

/// What a read error from tungstenite means for the connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The close handshake is over (tungstenite ends the stream after it).
    Closed,
    /// The TCP connection ended or failed without a close handshake.
    Reset,
    /// The peer broke a rule: fail the connection with this cause.
    Fail(Cause),
}

/// Maps a read error to what to do about it.
pub(crate) fn classify(e: &WsError) -> ReadError {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => ReadError::Closed,
        WsError::Io(io) => match InflateError::from_io(io) {
            Some(InflateError::Protocol(_)) => ReadError::Fail(Cause::Protocol),
            Some(InflateError::TooBig) => ReadError::Fail(Cause::TooBig),
            Some(InflateError::Corrupt) => ReadError::Fail(Cause::Compressed),
            None => ReadError::Reset,
        },
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => ReadError::Reset,
        WsError::Utf8(_) => ReadError::Fail(Cause::Utf8),
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => ReadError::Fail(Cause::TooBig),
        WsError::Capacity(_) => ReadError::Fail(Cause::TooBig),
        WsError::Protocol(_) => ReadError::Fail(Cause::Protocol),
        _ => ReadError::Fail(Cause::Internal),
    }
}

/// How long we wait to hand a close frame to a peer that does not read.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// After failing a connection we half-close and read (and discard) what the peer still
/// sends until it closes, so that the kernel does not answer its data with a reset that
/// destroys our close frame before the peer reads it. This long at most in all...
pub(crate) const LINGER_MAX: Duration = Duration::from_secs(30);

/// ...and this long at most without a byte from the peer.
pub(crate) const LINGER_IDLE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn each_code_reads_one_way_per_cause() {
        use Cause::*;
        let all = [
            Protocol,
            Utf8,
            TooBig,
            Compressed,
            Internal,
            Idle,
            Lifetime,
            WriteTimeout,
        ];
        let mut seen: HashMap<&str, Cause> = HashMap::new();
        for c in all {
            assert!(!c.reason().is_empty());
            assert!(c.reason().len() <= 123);
            if let Some(other) = seen.insert(c.reason(), c) {
                panic!("{c:?} and {other:?} share a reason");
            }
        }
        assert_eq!(u16::from(Protocol.code()), 1002);
        assert_eq!(u16::from(Utf8.code()), 1007);
        assert_eq!(u16::from(TooBig.code()), 1009);
        assert_eq!(u16::from(WriteTimeout.code()), 1008);
        assert_eq!(u16::from(Idle.code()), 1001);
    }

    #[test]
    fn errors_map_to_causes() {
        assert_eq!(classify(&WsError::ConnectionClosed), ReadError::Closed);
        assert_eq!(
            classify(&WsError::Io(std::io::ErrorKind::ConnectionReset.into())),
            ReadError::Reset
        );
        assert_eq!(
            classify(&WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            )),
            ReadError::Reset
        );
        let inflate =
            |e: InflateError| WsError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        assert_eq!(
            classify(&inflate(InflateError::Corrupt)),
            ReadError::Fail(Cause::Compressed)
        );
        assert_eq!(
            classify(&inflate(InflateError::Protocol("x"))),
            ReadError::Fail(Cause::Protocol)
        );
        assert_eq!(
            classify(&inflate(InflateError::TooBig)),
            ReadError::Fail(Cause::TooBig)
        );
        assert_eq!(
            classify(&WsError::Protocol(ProtocolError::NonZeroReservedBits)),
            ReadError::Fail(Cause::Protocol)
        );
        assert_eq!(
            classify(&WsError::Capacity(CapacityError::MessageTooLong {
                size: 2,
                max_size: 1
            })),
            ReadError::Fail(Cause::TooBig)
        );
    }
}
