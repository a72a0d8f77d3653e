//! How a connection is ended from our side, carrying out the rules of `close.rs`: sending
//! our close frame, the drain's close at this connection's turn, failing the connection on
//! an error, and the linger after that.
//!
//! Invariants:
//! - our close frame goes out at most once (Open → CloseSent), bounded in time by
//!   [`CLOSE_LINGER`];
//! - the drain closes only after echoing what was already waiting (at most [`DRAIN_READS`]
//!   reads), so it loses nothing that was read;
//! - every path here that ends the connection records Closed or Aborted on the tracker;
//! - the linger never half-closes while the peer still sends, and lasts at most
//!   [`LINGER_MAX`];
//! - its log lines keep the target `wsechod::connection`.

use std::future::poll_fn;
use std::io::ErrorKind::WouldBlock;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Utf8Bytes};
use tracing::debug;

use super::Connection;
use super::close::{
    CLOSE_LINGER, LINGER_IDLE, LINGER_MAX, LINGER_QUIET, ReadError, Tail, classify,
};
use super::echo::Step;
use super::wire::{SCRATCH, SyncIo};
use crate::state::{AbortReason, ConnState};

/// When a drain reaches a connection, it echoes what is already waiting before sending its
/// close frame: at most this many reads of it.
const DRAIN_READS: usize = 64;

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<'_, S> {
    /// Sends our close frame first (Open → CloseSent), bounded in time.
    pub(super) async fn send_close(&mut self, code: CloseCode, reason: Utf8Bytes) -> bool {
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
    pub(super) async fn close_for_drain(&mut self) -> bool {
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
    /// Maps a read error to the close code RFC 6455 asks for, fails the connection with it
    /// and records the end.
    pub(super) async fn failed(&mut self, e: WsError) {
        match classify(&e) {
            ReadError::Closed => self.echo.end_after_close(),
            ReadError::Reset => {
                debug!(target: "wsechod::connection", error = %e, "connection reset");
                // A peer that half-closed may still read: deliver the echoes of this batch.
                let _ = self.flush_within(CLOSE_LINGER).await;
                self.echo.tracker.aborted(AbortReason::Reset);
            }
            ReadError::Fail(cause) => {
                debug!(
                    target: "wsechod::connection",
                    error = %e,
                    code = u16::from(cause.code()),
                    "failing the connection"
                );
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
    pub(super) async fn linger(&mut self) {
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
