//! The echo side of a connection: what each message tungstenite returns gets (an echo, a
//! pong's count, the close handshake's next state), and how an echo is queued: into
//! tungstenite's buffer, compressed (permessage-deflate), or straight to the socket as
//! header plus payload ([`DIRECT_MIN`] bytes or more).
//!
//! No I/O of its own: everything goes through the [`SyncIo`] of the batch in progress, and
//! what the batch must do next comes back as a [`Flow`].
//!
//! Invariants:
//! - echoes are queued in the order their messages were read: a direct or compressed echo
//!   first empties tungstenite's buffer, or waits behind it;
//! - a data message read after our close frame is counted as discarded, never answered;
//! - its log lines keep the target `wsechod::connection` (what `RUST_LOG` filters and the
//!   man page name), message contents the target `wsechod::message`.

use std::io::ErrorKind::WouldBlock;

use tokio::io::{AsyncRead, AsyncWrite};
// tokio's clock, not std's: the same one the timer sleeps on (and that tests can pause).
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketContext;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use tracing::debug;

use super::deadlines::Deadlines;
use super::wire::SyncIo;
use crate::deflate::Outbound;
use crate::metrics::{Kind, Metrics};
use crate::settings::Settings;
use crate::state::{AbortReason, ConnState};
use crate::tracker::ConnTracker;

/// Echoes at least this large are written as header plus payload, past tungstenite's buffer.
const DIRECT_MIN: usize = 1024;

/// Message contents are logged truncated to this many bytes.
const LOG_CONTENT_MAX: usize = 128;

/// What one batch (one read's worth of input) came to.
#[derive(Debug)]
pub(super) enum Step {
    /// Keep going.
    Continue,
    /// The peer sent its close frame first; tungstenite queued our reply with this code.
    PeerClosed(Option<u16>),
    /// The peer answered our close frame: the close handshake is complete.
    Closed,
    /// Reading or writing failed.
    Failed(WsError),
}

/// What handling one message asks of the batch.
pub(super) enum Flow {
    /// Read on.
    Next,
    /// Our output waits for the peer: read nothing more for now.
    Blocked,
    /// The batch is over.
    End(Step),
}

/// Messages one connection handled, for its last log line.
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// Data messages read.
    read: u64,
    /// Data messages echoed.
    echoed: u64,
    /// Data messages read after our close frame, not answered.
    discarded: u64,
    /// The code of the last close frame sent or received.
    pub(super) close_code: Option<u16>,
}

/// Everything about one connection but the socket and tungstenite's state.
pub(super) struct Echo<'a> {
    /// This connection's state and its mirror in the gauges.
    pub(super) tracker: &'a ConnTracker,
    /// Counters and histograms.
    pub(super) metrics: &'a Metrics,
    /// The settings it was accepted under.
    pub(super) settings: &'a Settings,
    /// Keepalive, idle, lifetime and write deadlines.
    pub(super) deadlines: Deadlines,
    /// Output waits for the peer to read.
    pub(super) blocked: bool,
    /// A data message arrived or left in the last batch.
    pub(super) data: bool,
    /// What it handled.
    pub(super) counts: Counts,
    /// The compressing side of permessage-deflate, if negotiated.
    outbound: Option<Box<Outbound>>,
}

impl<'a> Echo<'a> {
    /// The echo side of a connection that just opened.
    pub(super) fn new(
        tracker: &'a ConnTracker,
        metrics: &'a Metrics,
        settings: &'a Settings,
        outbound: Option<Box<Outbound>>,
    ) -> Self {
        Echo {
            tracker,
            metrics,
            settings,
            deadlines: Deadlines::new(settings.timers, Instant::now(), fastrand::f64()),
            blocked: false,
            data: false,
            counts: Counts::default(),
            outbound,
        }
    }
}

impl Echo<'_> {
    /// Handles one message from tungstenite.
    pub(super) fn on_message<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ctx: &mut WebSocketContext,
        sio: &mut SyncIo<'_, '_, '_, S>,
        msg: Message,
    ) -> Flow {
        match msg {
            Message::Text(text) => {
                if !self.received(Kind::Text, text.as_bytes()) {
                    return Flow::Next;
                }
                let reply = match &self.settings.reply_prefix {
                    None => text,
                    Some(prefix) => {
                        let mut s = String::with_capacity(prefix.len() + text.len());
                        s.push_str(prefix);
                        s.push_str(&text);
                        Utf8Bytes::from(s)
                    }
                };
                self.send(ctx, sio, Message::Text(reply))
            }
            Message::Binary(data) => {
                if !self.received(Kind::Binary, &data) {
                    return Flow::Next;
                }
                self.send(ctx, sio, Message::Binary(data))
            }
            Message::Ping(_) => {
                // tungstenite queued the pong; it goes out with this batch's flush.
                self.metrics.ping_received();
                Flow::Next
            }
            Message::Pong(_) => {
                self.metrics.pong_received();
                self.deadlines.pong_received();
                Flow::Next
            }
            Message::Close(frame) => {
                let code = frame.as_ref().map(|f| u16::from(f.code));
                self.metrics.close_received(code);
                self.counts.close_code = code.or(self.counts.close_code);
                debug!(
                    target: "wsechod::connection",
                    code,
                    reason = frame.as_ref().map(|f| f.reason.as_str()),
                    "close received"
                );
                if self.tracker.state() == ConnState::CloseSent {
                    return Flow::End(Step::Closed);
                }
                self.tracker.set(ConnState::CloseReceived);
                let reply = frame.map(|f| {
                    if f.code.is_allowed() {
                        u16::from(f.code)
                    } else {
                        u16::from(CloseCode::Protocol)
                    }
                });
                Flow::End(Step::PeerClosed(reply))
            }
            Message::Frame(_) => Flow::Next,
        }
    }

    /// Counts and logs a received data message; false when it must not be answered (it
    /// arrived after our close frame).
    fn received(&mut self, kind: Kind, payload: &[u8]) -> bool {
        self.counts.read += 1;
        if self.settings.count_messages {
            self.metrics.message_received(kind, payload.len());
        }
        log_message(self.settings, kind, payload);
        if self.tracker.state() != ConnState::Open {
            self.counts.discarded += 1;
            self.metrics.message_discarded();
            return false;
        }
        true
    }

    /// Queues the echo `msg`: small ones into tungstenite's buffer (flushed once per batch),
    /// large ones straight to the socket as header plus payload.
    fn send<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ctx: &mut WebSocketContext,
        sio: &mut SyncIo<'_, '_, '_, S>,
        msg: Message,
    ) -> Flow {
        let (kind, len) = match &msg {
            Message::Text(t) => (Kind::Text, t.len()),
            Message::Binary(b) => (Kind::Binary, b.len()),
            _ => unreachable!("only data messages are echoed"),
        };
        if self.settings.count_messages {
            self.metrics.message_sent(kind, len);
        }
        self.counts.echoed += 1;
        self.data = true;
        self.queue(ctx, sio, msg, len)
    }

    /// Queues a data message of `len` payload bytes: compressed when negotiated, small ones
    /// into tungstenite's buffer, large ones straight to the socket.
    pub(super) fn queue<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ctx: &mut WebSocketContext,
        sio: &mut SyncIo<'_, '_, '_, S>,
        msg: Message,
        len: usize,
    ) -> Flow {
        if self.outbound.is_some() {
            return self.send_compressed(ctx, sio, msg);
        }
        if len >= DIRECT_MIN {
            // tungstenite's buffer must be empty first, so that order is kept.
            match ctx.flush(sio) {
                Ok(()) => {
                    let (opcode, payload) = data_of(msg);
                    return self.send_direct(sio, opcode, false, payload);
                }
                Err(WsError::Io(e)) if e.kind() == WouldBlock => {}
                Err(e) => return Flow::End(Step::Failed(e)),
            }
        }
        match ctx.write(sio, msg) {
            Ok(()) => Flow::Next,
            // Queued; the socket is full.
            Err(WsError::Io(e)) if e.kind() == WouldBlock => Flow::Blocked,
            Err(e) => Flow::End(Step::Failed(e)),
        }
    }

    /// Compresses the echo and queues it as one frame with RSV1 (RFC 7692 section 6).
    fn send_compressed<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ctx: &mut WebSocketContext,
        sio: &mut SyncIo<'_, '_, '_, S>,
        msg: Message,
    ) -> Flow {
        let (opcode, payload) = data_of(msg);
        let outbound = self
            .outbound
            .as_deref_mut()
            .expect("compression negotiated");
        let mut out = Vec::new();
        outbound.compress(&payload, &mut out);
        self.metrics
            .compressed_sent(payload.len() as u64, out.len() as u64);
        let compressed = Bytes::from(out);
        if compressed.len() >= DIRECT_MIN {
            match ctx.flush(sio) {
                Ok(()) => return self.send_direct(sio, opcode, true, compressed),
                Err(WsError::Io(e)) if e.kind() == WouldBlock => {}
                Err(e) => return Flow::End(Step::Failed(e)),
            }
        }
        let mut frame = Frame::message(compressed, OpCode::Data(opcode), true);
        frame.header_mut().rsv1 = true;
        match ctx.write(sio, Message::Frame(frame)) {
            Ok(()) => Flow::Next,
            Err(WsError::Io(e)) if e.kind() == WouldBlock => Flow::Blocked,
            Err(e) => Flow::End(Step::Failed(e)),
        }
    }

    /// Writes one frame (`opcode`, `rsv1`, `payload`) straight to the socket.
    fn send_direct<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sio: &mut SyncIo<'_, '_, '_, S>,
        opcode: Data,
        rsv1: bool,
        payload: Bytes,
    ) -> Flow {
        let header = FrameHeader {
            opcode: OpCode::Data(opcode),
            rsv1,
            ..FrameHeader::default()
        };
        let mut buf = [0u8; 10];
        let mut out = &mut buf[..];
        header
            .format(payload.len() as u64, &mut out)
            .expect("a server frame header fits in 10 bytes");
        let used = 10 - out.len();
        let (wire, cx) = sio.wire();
        match wire.write_direct(cx, &buf[..used], payload) {
            Ok(true) => Flow::Next,
            Ok(false) => Flow::Blocked,
            Err(e) => Flow::End(Step::Failed(WsError::Io(e))),
        }
    }

    /// The stream ended: Closed if the close handshake completed, else Aborted.
    pub(super) fn end_after_close(&self) {
        match self.tracker.state() {
            ConnState::CloseSent | ConnState::CloseReceived => self.tracker.closed(),
            _ => self.tracker.aborted(AbortReason::Reset),
        }
    }

    /// The connection's last line: what it handled and how it ended.
    pub(super) fn log_end(&self) {
        let c = &self.counts;
        debug!(
            target: "wsechod::connection",
            state = self.tracker.state().label(),
            reason = self.tracker.abort_reason().map(AbortReason::label),
            code = c.close_code,
            read = c.read,
            echoed = c.echoed,
            discarded = c.discarded,
            "connection ended"
        );
    }
}

/// The opcode and payload of a data message.
fn data_of(msg: Message) -> (Data, Bytes) {
    match msg {
        Message::Text(t) => (Data::Text, Bytes::from(t)),
        Message::Binary(b) => (Data::Binary, b),
        _ => unreachable!("only data messages are echoed"),
    }
}

/// Logs one message at debug level under its own target, `wsechod::message`, so that
/// `RUST_LOG=wsechod::connection=debug` shows connections without every message.
fn log_message(settings: &Settings, kind: Kind, payload: &[u8]) {
    if !tracing::enabled!(target: "wsechod::message", tracing::Level::DEBUG) {
        return;
    }
    if settings.log_message_content {
        let shown = &payload[..payload.len().min(LOG_CONTENT_MAX)];
        let content = match kind {
            Kind::Text => String::from_utf8_lossy(shown).into_owned(),
            Kind::Binary => shown.iter().map(|b| format!("{b:02x}")).collect(),
        };
        debug!(
            target: "wsechod::message",
            r#type = kind.label(),
            size = payload.len(),
            truncated = payload.len() > LOG_CONTENT_MAX,
            content,
            "message"
        );
    } else {
        debug!(target: "wsechod::message", r#type = kind.label(), size = payload.len(), "message");
    }
}
