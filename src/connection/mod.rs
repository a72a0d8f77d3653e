//! One WebSocket connection after the upgrade: the echo loop, the close handshake and the
//! mapping of every failure to a close code and an end state.
//!
//! The loop drives tungstenite's protocol core (`WebSocketContext`) from our own async I/O
//! (see `wire.rs`): one read of the socket is one batch; tungstenite parses every frame of
//! it (framing, control frames, UTF-8, limits, the close handshake) and we queue an echo
//! for each message, then flush once. Echoes of `echo::DIRECT_MIN` bytes or more skip
//! tungstenite's buffer and go out as header plus payload in one vectored write.
//!
//! This file holds [`Connection`] and its loop ([`Connection::run`]), which hands each
//! step to the file that owns it:
//! - `batch.rs`: one batch, from the read to the flush;
//! - `echo.rs`: what each message gets, and how an echo is queued;
//! - `ending.rs`: our close frame, the drain's close, failing and the linger;
//! - `close.rs`: which close code, reason and end state each cause gets;
//! - `deadlines.rs`: the timers; `wire.rs`: the socket.
//!
//! Invariants:
//! - every message read is answered (echoed) before anything that comes after it, including
//!   our close frame on shutdown: the drain loses nothing that was read. Data read after our
//!   close frame is counted as discarded and never answered (RFC 6455 section 5.5.1);
//! - while the peer does not take our output, nothing more is read from it (backpressure),
//!   for at most `write_timeout`;
//! - the loop never returns without recording Closed or Aborted on the tracker.

mod batch;
mod close;
mod deadlines;
mod echo;
mod ending;
pub(crate) mod wire;

use std::future::poll_fn;
use std::io::ErrorKind::WouldBlock;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
// tokio's clock, not std's: the same one the timer sleeps on (and that tests can pause).
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketContext};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use tracing::debug;

use self::close::{CLOSE_LINGER, Cause, Tail};
use self::deadlines::Due;
use self::echo::{Echo, Flow, Step};
use self::wire::{SyncIo, Wire};
use crate::deflate::{Agreed, Inbound, Outbound};
use crate::metrics::{Kind, Metrics};
use crate::settings::Settings;
use crate::shutdown::Drain;
use crate::state::{AbortReason, ConnState};
use crate::tracker::ConnTracker;

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
            echo: Echo::new(tracker, metrics, settings, outbound),
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
        let mut armed = self.echo.deadlines.next();
        let timer = tokio::time::sleep_until(armed);
        tokio::pin!(timer);
        // One wait for the whole loop: registered once, then a flag load per wake-up.
        let started = drain.started();
        tokio::pin!(started);
        let mut turn_taken = false;
        loop {
            let open = self.echo.tracker.state() == ConnState::Open;
            let mut fired = false;
            let done = tokio::select! {
                biased;
                () = &mut started, if open && !turn_taken => {
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
                    fired = true;
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
            // Activity only moves deadlines later: the timer then stays armed for the earlier
            // one, finds nothing due when it fires (`Due::Nothing`) and is armed anew, once
            // per interval instead of once per batch. An earlier deadline (output blocked,
            // the drain's turn) is armed at once.
            let next = self.echo.deadlines.next();
            if fired || next < armed {
                timer.as_mut().reset(next);
                armed = next;
            }
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
}

#[cfg(test)]
mod tests;
