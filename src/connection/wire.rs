//! The socket side of a connection, and the synchronous view of it that tungstenite reads
//! and writes through.
//!
//! tungstenite's protocol core ([`WebSocketContext`](tokio_tungstenite::tungstenite::protocol::WebSocketContext))
//! wants `std::io::Read + Write`. [`SyncIo`] gives it that for the length of one poll: reads
//! come from bytes already read off the socket (`WouldBlock` when they run out), writes go
//! straight to the socket with the poll's context (`WouldBlock` when it would block, the
//! waker being registered).
//!
//! Invariants:
//! - the socket is read into [`SCRATCH`], one buffer per thread; it is never borrowed across
//!   an await, so input a batch does not consume is moved to [`Wire::leftover`], which is
//!   empty and unallocated otherwise: an idle connection holds no read buffer of its own;
//! - bytes reach the socket in the order they were queued: a large echo written around
//!   tungstenite's buffer ([`Wire::write_direct`]) is finished before tungstenite may write
//!   again.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Bytes;

use crate::deflate::Inbound;

/// Bytes read from the socket at once.
pub(crate) const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    /// The read buffer, one per thread, shared by the connections it runs.
    pub(crate) static SCRATCH: RefCell<Box<[u8]>> =
        RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// A frame header plus payload being written past tungstenite's buffer.
#[derive(Debug)]
struct Direct {
    /// The header, formatted (at most 10 bytes for a server frame).
    header: [u8; 10],
    /// How many of `header` are used.
    header_len: u8,
    /// The payload (shared with the received message: no copy).
    payload: Bytes,
    /// Bytes of header plus payload already written.
    written: usize,
}

impl Direct {
    fn total(&self) -> usize {
        usize::from(self.header_len) + self.payload.len()
    }
}

/// The byte stream of one connection and what is in flight on it.
#[derive(Debug)]
pub(crate) struct Wire<S> {
    /// The upgraded socket (TCP, TLS, or anything else that reads and writes).
    pub(crate) io: S,
    /// A large echo not fully written yet.
    direct: Option<Box<Direct>>,
    /// Input read but not consumed by the last batch; unallocated when empty.
    pub(crate) leftover: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub(crate) fn new(io: S) -> Self {
        Wire {
            io,
            direct: None,
            leftover: Vec::new(),
        }
    }

    /// Writes what is left of the direct echo; `Pending` while the socket is full.
    fn poll_direct(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(d) = self.direct.as_deref_mut() {
            let header = &d.header[..usize::from(d.header_len)];
            let n = if d.written < header.len() {
                let bufs = [IoSlice::new(&header[d.written..]), IoSlice::new(&d.payload)];
                std::task::ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &bufs))?
            } else {
                let at = d.written - header.len();
                std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &d.payload[at..]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            d.written += n;
            if d.written == d.total() {
                self.direct = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Starts writing `header` + `payload` with one vectored write. What the socket does not
    /// take now is finished by later writes, before anything else; returns whether all of it
    /// went out.
    pub(crate) fn write_direct(
        &mut self,
        cx: &mut Context<'_>,
        header: &[u8],
        payload: Bytes,
    ) -> io::Result<bool> {
        debug_assert!(self.direct.is_none(), "one direct write at a time");
        let mut d = Direct {
            header: [0; 10],
            header_len: header.len() as u8,
            payload,
            written: 0,
        };
        d.header[..header.len()].copy_from_slice(header);
        self.direct = Some(Box::new(d));
        match self.poll_direct(cx) {
            Poll::Ready(Ok(())) => Ok(true),
            Poll::Pending => Ok(false),
            Poll::Ready(Err(e)) => Err(e),
        }
    }

    /// Whether a direct write is unfinished.
    #[cfg(test)]
    pub(crate) fn direct_pending(&self) -> bool {
        self.direct.is_some()
    }

    /// Reads from the socket into `buf`.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }

    /// Half-closes the socket (our FIN).
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The socket as tungstenite sees it during one poll.
pub(crate) struct SyncIo<'w, 'c, 'i, S> {
    wire: &'w mut Wire<S>,
    cx: &'w mut Context<'c>,
    /// Input for tungstenite to read.
    input: &'i [u8],
    /// How much of `input` it has read.
    pos: usize,
    /// The socket is at end of file once `input` is consumed.
    eof: bool,
    /// The permessage-deflate rewriter the input goes through, if negotiated.
    inbound: Option<&'w mut Inbound>,
}

impl<'w, 'c, 'i, S: AsyncRead + AsyncWrite + Unpin> SyncIo<'w, 'c, 'i, S> {
    /// A view with `input` to read, followed by end of file when `eof`.
    pub(crate) fn new(
        wire: &'w mut Wire<S>,
        cx: &'w mut Context<'c>,
        input: &'i [u8],
        eof: bool,
    ) -> Self {
        SyncIo {
            wire,
            cx,
            input,
            pos: 0,
            eof,
            inbound: None,
        }
    }

    /// The same, reading through `inbound` (permessage-deflate) when there is one.
    pub(crate) fn through(mut self, inbound: Option<&'w mut Inbound>) -> Self {
        self.inbound = inbound;
        self
    }

    /// The input tungstenite has not read.
    pub(crate) fn unread(&self) -> &'i [u8] {
        &self.input[self.pos..]
    }

    /// The socket, with this poll's context.
    pub(crate) fn wire(&mut self) -> (&mut Wire<S>, &mut Context<'c>) {
        (self.wire, self.cx)
    }
}

fn would_block<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Read for SyncIo<'_, '_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(inbound) = self.inbound.as_deref_mut() {
            return inbound.read(self.input, &mut self.pos, self.eof, buf);
        }
        let rest = &self.input[self.pos..];
        if rest.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Write for SyncIo<'_, '_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        would_block(self.wire.poll_direct(self.cx))?;
        would_block(Pin::new(&mut self.wire.io).poll_write(self.cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        would_block(self.wire.poll_direct(self.cx))?;
        would_block(Pin::new(&mut self.wire.io).poll_flush(self.cx))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::task::noop_waker_ref;
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn reads_the_input_then_would_block_or_eof() {
        let (a, _b) = tokio::io::duplex(64);
        let mut wire = Wire::new(a);
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut sio = SyncIo::new(&mut wire, &mut cx, b"hello", false);
        let mut buf = [0u8; 3];
        assert_eq!(sio.read(&mut buf).unwrap(), 3);
        assert_eq!(sio.unread(), b"lo");
        assert_eq!(sio.read(&mut buf).unwrap(), 2);
        assert_eq!(
            sio.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let mut sio = SyncIo::new(&mut wire, &mut cx, b"", true);
        assert_eq!(sio.read(&mut buf).unwrap(), 0);
    }

    #[tokio::test]
    async fn a_blocked_direct_write_goes_out_first_and_whole() {
        // A pipe that holds 16 bytes: the direct write cannot finish at once.
        let (a, mut b) = tokio::io::duplex(16);
        let mut wire = Wire::new(a);
        let payload = Bytes::from(vec![7u8; 40]);
        let done = std::future::poll_fn(|cx| {
            Poll::Ready(wire.write_direct(cx, &[0x82, 40], payload.clone()).unwrap())
        })
        .await;
        assert!(!done);
        assert!(wire.direct_pending());
        // tungstenite's next write must wait for the rest of the direct one.
        let blocked = std::future::poll_fn(|cx| {
            let mut sio = SyncIo::new(&mut wire, cx, b"", false);
            Poll::Ready(sio.write(b"after").unwrap_err().kind())
        })
        .await;
        assert_eq!(blocked, io::ErrorKind::WouldBlock);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 42 + 5];
            b.read_exact(&mut got).await.unwrap();
            got
        });
        let mut sent = 0;
        std::future::poll_fn(|cx| {
            let mut sio = SyncIo::new(&mut wire, cx, b"", false);
            while sent < 5 {
                match sio.write(&b"after"[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                    Err(e) => panic!("{e}"),
                }
            }
            Poll::Ready(())
        })
        .await;
        let got = reader.await.unwrap();
        assert_eq!(&got[..2], &[0x82, 40]);
        assert_eq!(&got[2..42], &[7u8; 40][..]);
        assert_eq!(&got[42..], b"after");
    }
}
