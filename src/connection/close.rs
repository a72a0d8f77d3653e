//! How a connection ends: which close code and reason each cause gets (one wording per
//! cause), and the bounds of the linger after failing a connection. Pure rules: `ending.rs`
//! carries them out.

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

/// After failing a connection we read (and discard) what the peer still sends until it
/// closes, so that the kernel does not answer its data with a reset that destroys our close
/// frame before the peer reads it. This long at most in all...
pub(crate) const LINGER_MAX: Duration = Duration::from_secs(30);

/// ...and, before we half-close and again after, this long at most without a byte from the
/// peer. We half-close (send our FIN) only when the peer has closed its side, has sent its
/// close frame, or has been silent this long: a proxy in HTTP mode (HAProxy, nginx) ends
/// the client's side as soon as ours ends, and would reset a client that is still sending.
pub(crate) const LINGER_IDLE: Duration = Duration::from_secs(2);

/// How long the bytes read last must stay the last, when they end with the peer's close
/// frame, before we half-close: a client that waits for our FIN after its close frame
/// (browsers, Autobahn, which allows a server 1 s) gets it this much later. The pause also
/// keeps a message that merely ends in such bytes from ending the linger.
pub(crate) const LINGER_QUIET: Duration = Duration::from_millis(100);

/// How many of the last bytes read from a peer we keep while lingering: a close frame
/// with a 16-bit length (a malformed one, over 125 bytes) fits.
const TAIL_LEN: usize = 256;

/// The last bytes read from a peer: those of the read that failed the connection, then
/// those read while we linger.
pub(crate) struct Tail {
    buf: [u8; TAIL_LEN],
    len: usize,
}

impl Default for Tail {
    fn default() -> Self {
        Tail {
            buf: [0; TAIL_LEN],
            len: 0,
        }
    }
}

impl Tail {
    /// Appends what was just read, keeping the last `TAIL_LEN` bytes.
    pub(crate) fn push(&mut self, read: &[u8]) {
        if read.len() >= TAIL_LEN {
            self.buf.copy_from_slice(&read[read.len() - TAIL_LEN..]);
            self.len = TAIL_LEN;
            return;
        }
        let keep = self.len.min(TAIL_LEN - read.len());
        self.buf.copy_within(self.len - keep..self.len, 0);
        self.buf[keep..keep + read.len()].copy_from_slice(read);
        self.len = keep + read.len();
    }

    /// Whether the bytes read so far end with a whole close frame from a client.
    pub(crate) fn ends_with_client_close(&self) -> bool {
        ends_with_client_close(&self.buf[..self.len])
    }
}

/// Whether `tail` ends with a whole masked close frame: what a client sends last, after our
/// close frame or as the frame that failed the connection, before it waits for our FIN.
/// Malformed ones count (a payload of one byte or over 125, a reason not UTF-8: Autobahn
/// fails connections so), but a code, when there is one, must be one a peer may send;
/// that keeps the end of random data from looking like a close frame as often.
pub(crate) fn ends_with_client_close(tail: &[u8]) -> bool {
    (0..=TAIL_LEN - 8).any(|n| {
        // 0x88, the mask bit and the length (7 bits, or 126 then 16 bits), mask, payload.
        let head = if n < 126 { 2 } else { 4 };
        let Some(start) = tail.len().checked_sub(head + 4 + n) else {
            return false;
        };
        let f = &tail[start..];
        let length = if n < 126 {
            usize::from(f[1]) == 0x80 | n
        } else {
            f[1] == 0x80 | 126 && usize::from(u16::from_be_bytes([f[2], f[3]])) == n
        };
        if f[0] != 0x88 || !length {
            return false;
        }
        let (mask, payload) = f[head..].split_at(4);
        match payload {
            [a, b, ..] => {
                CloseCode::from(u16::from_be_bytes([a ^ mask[0], b ^ mask[1]])).is_allowed()
            }
            _ => true,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A masked client close frame with `payload` (7-bit or 16-bit length).
    fn client_close(payload: &[u8]) -> Vec<u8> {
        let key = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut f = vec![0x88];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    fn code_and(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        p
    }

    #[test]
    fn a_client_close_frame_is_recognised_at_the_end_only() {
        let bye = client_close(&code_and(1000, b"bye"));
        let data = vec![0x88u8; 300];
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("code and reason", bye.clone(), true),
            ("no payload", client_close(b""), true),
            (
                "125 bytes",
                client_close(&code_and(4000, &[b'a'; 123])),
                true,
            ),
            ("after data", [data.clone(), bye.clone()].concat(), true),
            ("code 3000", client_close(&code_and(3000, b"")), true),
            // Malformed, as Autobahn 7.3.2, 7.3.6 and 7.5.1 send them.
            ("a one-byte payload", client_close(&[3]), true),
            (
                "126 bytes",
                client_close(&code_and(1000, &[b'a'; 124])),
                true,
            ),
            (
                "a reason not UTF-8",
                client_close(&code_and(1000, &[0xff])),
                true,
            ),
            ("nothing", vec![], false),
            ("data", data.clone(), false),
            ("one byte short", bye[..bye.len() - 1].to_vec(), false),
            ("one byte more", [bye.clone(), vec![0]].concat(), false),
            (
                "unmasked",
                [&[0x88u8, 0x02][..], &1000u16.to_be_bytes()].concat(),
                false,
            ),
            ("code 1005", client_close(&code_and(1005, b"")), false),
            ("code 999", client_close(&code_and(999, b"")), false),
            ("a ping", [&[0x89u8][..], &bye[1..]].concat(), false),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(ends_with_client_close(&bytes), want, "{name}");
        }
    }

    #[test]
    fn the_tail_keeps_the_last_bytes_across_reads() {
        let stream = [vec![7u8; 1000], client_close(&code_and(1001, b"gone"))].concat();
        for piece in [1, 5, 255, 256, 257, 4096] {
            let mut tail = Tail::default();
            for chunk in stream.chunks(piece) {
                tail.push(chunk);
            }
            assert_eq!(
                &tail.buf[..tail.len],
                &stream[stream.len() - TAIL_LEN..],
                "pieces of {piece}"
            );
            assert!(tail.ends_with_client_close(), "pieces of {piece}");
        }
        let mut tail = Tail::default();
        tail.push(&client_close(b"")[..3]);
        assert!(!tail.ends_with_client_close());
        tail.push(&client_close(b"")[3..]);
        assert!(tail.ends_with_client_close());
        assert_eq!(tail.len, 6);
    }

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
