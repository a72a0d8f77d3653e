//! One WebSocket connection after the upgrade: the echo loop, the close handshake and the
//! mapping of every failure to a close code and an end state.
//!
//! The loop drives tungstenite's protocol core (`WebSocketContext`) from our own async I/O
//! (see `wire.rs`): one read of the socket is one batch; tungstenite parses every frame of
//! it (framing, control frames, UTF-8, limits, the close handshake) and we queue an echo
//! for each message, then flush once. Echoes of [`DIRECT_MIN`] bytes or more skip
//! tungstenite's buffer and go out as header plus payload in one vectored write.
//!
//! Invariants:
//! - every message read is answered (echoed) before anything that comes after it, including
//!   our close frame on shutdown: the drain loses nothing that was read. Data read after our
//!   close frame is counted as discarded and never answered (RFC 6455 section 5.5.1);
//! - while the peer does not take our output, nothing more is read from it (backpressure),
//!   for at most `write_timeout`;
//! - the loop never returns without recording Closed or Aborted on the tracker.

mod close;
mod deadlines;
pub(crate) mod wire;

use std::future::poll_fn;
use std::io::ErrorKind::WouldBlock;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
// tokio's clock, not std's: the same one the timer sleeps on (and that tests can pause).
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketContext};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use tracing::debug;

use self::close::{
    CLOSE_LINGER, Cause, LINGER_IDLE, LINGER_MAX, LINGER_QUIET, ReadError, Tail, classify,
};
use self::deadlines::{Deadlines, Due};
use self::wire::{SCRATCH, SyncIo, Wire};
use crate::deflate::{Agreed, Inbound, Outbound};
use crate::metrics::{Kind, Metrics};
use crate::settings::Settings;
use crate::shutdown::Drain;
use crate::state::{AbortReason, ConnState};
use crate::tracker::ConnTracker;

/// Echoes at least this large are written as header plus payload, past tungstenite's buffer.
const DIRECT_MIN: usize = 1024;

/// Message contents are logged truncated to this many bytes.
const LOG_CONTENT_MAX: usize = 128;

/// When a drain reaches a connection, it echoes what is already waiting before sending its
/// close frame: at most this many reads of it.
const DRAIN_READS: usize = 64;

/// What the opening handshake settled for a connection.
#[derive(Debug, Default)]
pub struct Opening {
    /// Bytes the client sent right behind its upgrade request.
    pub early: Vec<u8>,
    /// permessage-deflate, if negotiated.
    pub deflate: Option<Agreed>,
    /// A text message to send before any echo (`[websocket] greeting`, filled in).
    pub greeting: Option<String>,
}

/// Serves one upgraded connection until it ends, recording its end state on `tracker`.
/// `drain` starts a graceful close with the configured code and reason, at this
/// connection's turn.
///
/// Not an `async fn`: one would keep its arguments (the socket, the opening) in its state
/// beside the connection built from them, for the connection's whole life.
pub fn serve<'a, S>(
    io: S,
    opening: Opening,
    tracker: &'a ConnTracker,
    metrics: &'a Metrics,
    settings: &'a Settings,
    drain: &'a Drain,
) -> impl Future<Output = ()> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + 'a,
{
    let mut conn = Connection::new(io, opening, tracker, metrics, settings);
    async move {
        conn.run(drain).await;
        conn.echo.log_end();
    }
}

/// What one batch (one read's worth of input) came to.
#[derive(Debug)]
enum Step {
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
enum Flow {
    /// Read on.
    Next,
    /// Our output waits for the peer: read nothing more for now.
    Blocked,
    /// The batch is over.
    End(Step),
}

/// Messages one connection handled, for its last log line.
#[derive(Debug, Default)]
struct Counts {
    /// Data messages read.
    read: u64,
    /// Data messages echoed.
    echoed: u64,
    /// Data messages read after our close frame, not answered.
    discarded: u64,
    /// The code of the last close frame sent or received.
    close_code: Option<u16>,
}

/// Everything about one connection but the socket and tungstenite's state.
struct Echo<'a> {
    /// This connection's state and its mirror in the gauges.
    tracker: &'a ConnTracker,
    /// Counters and histograms.
    metrics: &'a Metrics,
    /// The settings it was accepted under.
    settings: &'a Settings,
    /// Keepalive, idle, lifetime and write deadlines.
    deadlines: Deadlines,
    /// Output waits for the peer to read.
    blocked: bool,
    /// A data message arrived or left in the last batch.
    data: bool,
    /// What it handled.
    counts: Counts,
    /// The compressing side of permessage-deflate, if negotiated.
    outbound: Option<Box<Outbound>>,
}

/// One upgraded connection.
struct Connection<'a, S> {
    /// The socket and what is in flight on it.
    wire: Wire<S>,
    /// tungstenite's protocol state: framing, control frames, UTF-8, close handshake, limits.
    ctx: WebSocketContext,
    /// The echo side.
    echo: Echo<'a>,
    /// The inflating side of permessage-deflate, if negotiated: below tungstenite.
    inbound: Option<Box<Inbound>>,
    /// tungstenite may hold whole frames it has not returned yet (a batch stopped early).
    buffered: bool,
    /// The greeting, until it is sent.
    greeting: Option<String>,
    /// The last bytes of the read that failed the connection, for [`Self::linger`].
    failed_on: Option<Box<Tail>>,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Connection<'a, S> {
    fn new(
        io: S,
        opening: Opening,
        tracker: &'a ConnTracker,
        metrics: &'a Metrics,
        settings: &'a Settings,
    ) -> Self {
        tracker.set(ConnState::Open);
        let (inbound, outbound) = match opening.deflate {
            None => (None, None),
            Some(agreed) => {
                metrics.compression_negotiated();
                let ws = &settings.ws;
                (
                    Some(Box::new(Inbound::new(
                        agreed,
                        ws.max_frame_size,
                        ws.max_message_size,
                    ))),
                    Some(Box::new(Outbound::new(agreed, settings.compression_level))),
                )
            }
        };
        // Bytes that came with the request go the way of all later input (as leftover), so
        // through the permessage-deflate rewriter too: straight into tungstenite, a
        // compressed frame among them failed with 1002 (a fuzz finding).
        let mut wire = Wire::new(io);
        wire.leftover = opening.early;
        Connection {
            wire,
            ctx: WebSocketContext::new(Role::Server, Some(settings.ws)),
            echo: Echo {
                tracker,
                metrics,
                settings,
                deadlines: Deadlines::new(settings.timers, Instant::now(), fastrand::f64()),
                blocked: false,
                data: false,
                counts: Counts::default(),
                outbound,
            },
            inbound,
            buffered: false,
            greeting: opening.greeting,
            failed_on: None,
        }
    }

    /// The loop: batches of input, the timer, and the drain, until the connection ends.
    async fn run(&mut self, drain: &Drain) {
        if let Some(text) = self.greeting.take()
            && Box::pin(self.greet(text)).await
        {
            return;
        }
        let timer = tokio::time::sleep_until(self.echo.deadlines.next());
        tokio::pin!(timer);
        let mut turn_taken = false;
        loop {
            let open = self.echo.tracker.state() == ConnState::Open;
            let done = tokio::select! {
                biased;
                () = drain.started(), if open && !turn_taken => {
                    turn_taken = true;
                    let at = drain.turn();
                    if at <= Instant::now() {
                        Box::pin(self.close_for_drain()).await
                    } else {
                        // Paced: keep echoing until this connection's turn.
                        self.echo.deadlines.drain_at(at);
                        false
                    }
                }
                () = &mut timer => {
                    let due = self.echo.deadlines.fire(Instant::now());
                    Box::pin(self.on_timer(due)).await
                }
                step = poll_fn(|cx| self.poll_batch(cx)) => match step {
                    Step::Continue => {
                        self.after_continue();
                        false
                    }
                    // Boxed, like every rare path: an idle connection's task stays small.
                    step => Box::pin(self.after_batch(step)).await,
                },
            };
            if done {
                return;
            }
            // Cheap when nothing moved: tokio only touches the timer wheel on a change.
            timer.as_mut().reset(self.echo.deadlines.next());
        }
    }

    /// Sends the greeting before anything else. Returns whether the connection is over.
    async fn greet(&mut self, text: String) -> bool {
        let len = text.len();
        if self.echo.settings.count_messages {
            self.echo.metrics.message_sent(Kind::Text, len);
        }
        let step = poll_fn(|cx| {
            let mut sio = SyncIo::new(&mut self.wire, cx, &[], false);
            let step =
                match self
                    .echo
                    .queue(&mut self.ctx, &mut sio, Message::text(text.clone()), len)
                {
                    Flow::Next => match self.ctx.flush(&mut sio) {
                        Ok(()) => Step::Continue,
                        Err(WsError::Io(e)) if e.kind() == WouldBlock => {
                            self.echo.blocked = true;
                            Step::Continue
                        }
                        Err(e) => Step::Failed(e),
                    },
                    Flow::Blocked => {
                        self.echo.blocked = true;
                        Step::Continue
                    }
                    Flow::End(step) => step,
                };
            Poll::Ready(step)
        })
        .await;
        self.after_batch(step).await
    }

    /// One batch: output that waited goes out first, then one read of input is fed to
    /// tungstenite and every message in it is answered.
    fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        if self.echo.blocked {
            match self.poll_output(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Step::Failed(e)),
                Poll::Ready(Ok(())) => self.echo.blocked = false,
            }
        }
        if self.buffered || !self.wire.leftover.is_empty() {
            let input = std::mem::take(&mut self.wire.leftover);
            return Poll::Ready(self.feed(cx, &input, false));
        }
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            match self.wire.poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Step::Failed(WsError::Io(e))),
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    Poll::Ready(self.feed(cx, &scratch[..n], n == 0))
                }
            }
        })
    }

    /// Feeds `input` (then end of file, if `eof`) to tungstenite and answers every message.
    fn feed(&mut self, cx: &mut Context<'_>, input: &[u8], eof: bool) -> Step {
        self.buffered = false;
        let mut sio =
            SyncIo::new(&mut self.wire, cx, input, eof).through(self.inbound.as_deref_mut());
        let step = loop {
            let msg = match self.ctx.read(&mut sio) {
                Ok(msg) => msg,
                // All of the input is consumed.
                Err(WsError::Io(e)) if e.kind() == WouldBlock => break Step::Continue,
                Err(e) => {
                    let mut tail = Box::<Tail>::default();
                    tail.push(input);
                    self.failed_on = Some(tail);
                    break Step::Failed(e);
                }
            };
            match self.echo.on_message(&mut self.ctx, &mut sio, msg) {
                Flow::Next => {}
                Flow::Blocked => {
                    // Read nothing more until the peer takes our output; keep the rest.
                    let rest = sio.unread();
                    self.wire.leftover = rest.to_vec();
                    self.buffered = true;
                    self.echo.blocked = true;
                    return Step::Continue;
                }
                Flow::End(step) => return step,
            }
        };
        if let Step::Failed(_) = step {
            return step;
        }
        // One flush for the whole batch.
        match self.ctx.flush(&mut sio) {
            Ok(()) => Step::Continue,
            Err(WsError::Io(e)) if e.kind() == WouldBlock => {
                self.echo.blocked = true;
                Step::Continue
            }
            Err(e) => Step::Failed(e),
        }
    }

    /// Writes what waits: the rest of a direct echo, then tungstenite's buffer.
    fn poll_output(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let mut sio = SyncIo::new(&mut self.wire, cx, &[], false);
        match self.ctx.flush(&mut sio) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(WsError::Io(e)) if e.kind() == WouldBlock => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// After a batch that keeps the connection going: note activity and backpressure.
    fn after_continue(&mut self) {
        if let Some(inbound) = self.inbound.as_deref_mut() {
            let (wire, payload) = inbound.take_counts();
            if payload > 0 || wire > 0 {
                self.echo.metrics.compressed_received(payload, wire);
            }
        }
        let now = Instant::now();
        if std::mem::take(&mut self.echo.data) {
            // Data, not pings and pongs, counts as activity.
            self.echo.deadlines.activity(now);
        }
        self.echo.deadlines.set_blocked(self.echo.blocked, now);
    }

    /// Acts on a batch's outcome. Returns whether the connection is over.
    async fn after_batch(&mut self, step: Step) -> bool {
        match step {
            Step::Continue => {
                self.after_continue();
                false
            }
            Step::Closed => {
                self.echo.tracker.closed();
                true
            }
            Step::PeerClosed(reply) => {
                // The peer closed first: tungstenite queued a reply with the peer's code and
                // reason (1002 if that code may not be sent). Flush it, then end.
                if self.flush_within(CLOSE_LINGER).await {
                    self.echo.metrics.close_sent(reply);
                    self.echo.tracker.closed();
                } else {
                    self.echo.tracker.aborted(AbortReason::Reset);
                }
                true
            }
            Step::Failed(e) => {
                Box::pin(self.failed(e)).await;
                true
            }
        }
    }

    /// Writes everything queued, waiting at most `limit` for the peer to take it. The end of
    /// the close handshake counts as written.
    async fn flush_within(&mut self, limit: Duration) -> bool {
        let flushed = poll_fn(|cx| match self.poll_output(cx) {
            Poll::Ready(Ok(())) | Poll::Ready(Err(WsError::ConnectionClosed)) => Poll::Ready(true),
            Poll::Ready(Err(_)) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        });
        matches!(tokio::time::timeout(limit, flushed).await, Ok(true))
    }

    /// Sends our close frame first (Open → CloseSent), bounded in time.
    async fn send_close(&mut self, code: CloseCode, reason: Utf8Bytes) -> bool {
        self.echo.tracker.set(ConnState::CloseSent);
        self.echo.deadlines.closing();
        let frame = CloseFrame { code, reason };
        let queued = poll_fn(|cx| {
            let mut sio = SyncIo::new(&mut self.wire, cx, &[], false);
            Poll::Ready(self.ctx.close(&mut sio, Some(frame.clone())))
        })
        .await;
        let sent = match queued {
            Ok(()) => true,
            Err(WsError::Io(e)) if e.kind() == WouldBlock => self.flush_within(CLOSE_LINGER).await,
            Err(_) => false,
        };
        if sent {
            self.echo.metrics.close_sent(Some(u16::from(code)));
            self.echo.counts.close_code = Some(u16::from(code));
        }
        sent
    }

    /// The drain reached this connection: echo what is already waiting, then close.
    async fn close_for_drain(&mut self) -> bool {
        let step = poll_fn(|cx| {
            for _ in 0..DRAIN_READS {
                match self.poll_batch(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Step::Continue) if !self.echo.blocked => {}
                    Poll::Ready(step) => return Poll::Ready(step),
                }
            }
            Poll::Ready(Step::Continue)
        })
        .await;
        if self.after_batch(step).await {
            return true;
        }
        let settings = self.echo.settings;
        if !self
            .send_close(
                CloseCode::from(settings.close_code),
                settings.close_reason.clone(),
            )
            .await
        {
            self.echo.tracker.aborted(AbortReason::Reset);
            return true;
        }
        false
    }

    /// Acts on what the timer found due. Returns whether the connection is over.
    async fn on_timer(&mut self, due: Due) -> bool {
        let (cause, reason) = match due {
            Due::Nothing => return false,
            Due::Ping => {
                self.echo.metrics.ping_sent();
                let sent = poll_fn(|cx| {
                    let mut sio = SyncIo::new(&mut self.wire, cx, &[], false);
                    let r = self
                        .ctx
                        .write(&mut sio, Message::Ping(Bytes::new()))
                        .and_then(|()| self.ctx.flush(&mut sio));
                    Poll::Ready(r)
                })
                .await;
                return match sent {
                    Ok(()) => false,
                    Err(WsError::Io(e)) if e.kind() == WouldBlock => {
                        self.echo.blocked = true;
                        self.echo.deadlines.set_blocked(true, Instant::now());
                        false
                    }
                    Err(e) => {
                        self.failed(e).await;
                        true
                    }
                };
            }
            Due::PongTimeout => {
                debug!("no pong in time, aborting");
                self.echo.tracker.aborted(AbortReason::PongTimeout);
                return true;
            }
            Due::WriteTimeout => {
                debug!("peer does not read, closing");
                // Best effort: the peer is not reading, so this rarely gets through.
                let c = Cause::WriteTimeout;
                let _ = tokio::time::timeout(
                    Duration::from_millis(100),
                    self.send_close(c.code(), Utf8Bytes::from_static(c.reason())),
                )
                .await;
                self.echo.tracker.aborted(AbortReason::WriteTimeout);
                return true;
            }
            Due::Drain => return Box::pin(self.close_for_drain()).await,
            Due::Idle => (Cause::Idle, AbortReason::IdleTimeout),
            Due::Lifetime => (Cause::Lifetime, AbortReason::MaxLifetime),
        };
        debug!("{}, closing", cause.reason());
        let _ = self
            .send_close(cause.code(), Utf8Bytes::from_static(cause.reason()))
            .await;
        self.linger().await;
        self.echo.tracker.aborted(reason);
        true
    }

    /// Maps a read error to the close code RFC 6455 asks for, fails the connection with it
    /// and records the end.
    async fn failed(&mut self, e: WsError) {
        match classify(&e) {
            ReadError::Closed => self.echo.end_after_close(),
            ReadError::Reset => {
                debug!(error = %e, "connection reset");
                // A peer that half-closed may still read: deliver the echoes of this batch.
                let _ = self.flush_within(CLOSE_LINGER).await;
                self.echo.tracker.aborted(AbortReason::Reset);
            }
            ReadError::Fail(cause) => {
                debug!(error = %e, code = u16::from(cause.code()), "failing the connection");
                if self.echo.tracker.state() == ConnState::Open {
                    let _ = self
                        .send_close(cause.code(), Utf8Bytes::from_static(cause.reason()))
                        .await;
                }
                self.linger().await;
                self.echo.tracker.aborted(cause.abort_reason());
            }
        }
    }

    /// After failing a connection: read and discard what the peer still sends, so the kernel
    /// does not answer it with a reset that could destroy our close frame before the peer
    /// reads it. We half-close once the peer has closed its side, has sent its close frame
    /// (then after [`LINGER_QUIET`]; also when that frame is what failed the connection), or
    /// has been silent for [`LINGER_IDLE`], never while it is still sending: a proxy in HTTP
    /// mode ends the client's side as soon as ours ends.
    /// Then we discard until the peer closes or is silent for [`LINGER_IDLE`];
    /// [`LINGER_MAX`] in all.
    async fn linger(&mut self) {
        let failed_on = self.failed_on.take();
        let wire = &mut self.wire;
        let discard = async {
            let mut tail = failed_on.map_or_else(Tail::default, |t| *t);
            let mut half_closed = false;
            loop {
                let silence = if !half_closed && tail.ends_with_client_close() {
                    LINGER_QUIET
                } else {
                    LINGER_IDLE
                };
                let read = poll_fn(|cx| {
                    SCRATCH.with(|cell| {
                        let mut scratch = cell.borrow_mut();
                        let mut buf = ReadBuf::new(&mut scratch[..]);
                        wire.poll_read(cx, &mut buf).map_ok(|()| {
                            tail.push(buf.filled());
                            buf.filled().len()
                        })
                    })
                });
                match tokio::time::timeout(silence, read).await {
                    Ok(Ok(n)) if n > 0 => {}
                    Err(_) if !half_closed => {
                        let _ = poll_fn(|cx| wire.poll_shutdown(cx)).await;
                        half_closed = true;
                    }
                    _ => break,
                }
            }
            if !half_closed {
                let _ = poll_fn(|cx| wire.poll_shutdown(cx)).await;
            }
        };
        let _ = tokio::time::timeout(LINGER_MAX, discard).await;
    }
}

impl Echo<'_> {
    /// Handles one message from tungstenite.
    fn on_message<S: AsyncRead + AsyncWrite + Unpin>(
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
    fn queue<S: AsyncRead + AsyncWrite + Unpin>(
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
    fn end_after_close(&self) {
        match self.tracker.state() {
            ConnState::CloseSent | ConnState::CloseReceived => self.tracker.closed(),
            _ => self.tracker.aborted(AbortReason::Reset),
        }
    }

    /// The connection's last line: what it handled and how it ended.
    fn log_end(&self) {
        let c = &self.counts;
        debug!(
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

#[cfg(test)]
mod tests;
