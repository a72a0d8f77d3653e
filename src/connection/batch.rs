//! One batch of a connection: output that waited goes out first, then one read of the
//! socket is fed to tungstenite, every message in it is answered (see `echo.rs`), and the
//! answers are flushed once.
//!
//! Invariants:
//! - while our output waits for the peer, nothing more is read: the unread rest of the
//!   input stays in `Wire::leftover` and is fed before the next read of the socket;
//! - one flush per batch, however many messages it held;
//! - when reading fails, the input of that read is kept (`Connection::failed_on`) for the
//!   linger in `ending.rs`.

use std::future::poll_fn;
use std::io::ErrorKind::WouldBlock;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Error as WsError;

use super::Connection;
use super::close::Tail;
use super::echo::{Flow, Step};
use super::wire::{SCRATCH, SyncIo};

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<'_, S> {
    /// One batch: output that waited goes out first, then one read of input is fed to
    /// tungstenite and every message in it is answered.
    pub(super) fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
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
    /// Writes everything queued, waiting at most `limit` for the peer to take it. The end of
    /// the close handshake counts as written.
    pub(super) async fn flush_within(&mut self, limit: Duration) -> bool {
        let flushed = poll_fn(|cx| match self.poll_output(cx) {
            Poll::Ready(Ok(())) | Poll::Ready(Err(WsError::ConnectionClosed)) => Poll::Ready(true),
            Poll::Ready(Err(_)) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        });
        matches!(tokio::time::timeout(limit, flushed).await, Ok(true))
    }
}
