//! Large socket reads behind a small per-connection read buffer.
//!
//! tungstenite reads at most `read_buffer_size` bytes per call into a buffer each connection
//! keeps for its whole life. A small buffer keeps idle connections cheap, but a 64 KiB
//! message then costs 64 system calls at 1 KiB each. [`ReadAhead`] serves those small reads
//! from one large read instead:
//! - a small read request is served by one `read` of up to [`SCRATCH`] bytes into a buffer
//!   shared by every connection on the thread;
//! - whatever the caller has no room for is kept in a per-connection stash that exists
//!   only until it has been handed out, then is freed.
//!
//! So an idle connection holds no extra memory, small messages cost one small copy, and a
//! large message costs one extra copy instead of dozens of system calls.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once for a small request.
pub const SCRATCH: usize = 64 * 1024;

/// Requests at least this large go straight to the socket.
const DIRECT: usize = 16 * 1024;

thread_local! {
    /// The large read buffer, one per thread, shared by the connections it runs.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// A byte stream whose small reads are served from large ones (see the module docs).
#[derive(Debug)]
pub struct ReadAhead<S> {
    /// The socket.
    inner: S,
    /// Bytes read but not handed out yet, from `pos` on; freed once empty.
    stash: Vec<u8>,
    /// How much of `stash` was handed out.
    pos: usize,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            stash: Vec::new(),
            pos: 0,
        }
    }

    /// Bytes waiting in the stash.
    #[cfg(test)]
    fn stashed(&self) -> usize {
        self.stash.len() - self.pos
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.stash.len() {
            let n = buf.remaining().min(this.stash.len() - this.pos);
            buf.put_slice(&this.stash[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.stash.len() {
                this.stash = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= DIRECT {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH_BUF.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut big = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut big))?;
            let got = big.filled();
            let n = got.len().min(buf.remaining());
            buf.put_slice(&got[..n]);
            if n < got.len() {
                this.stash = got[n..].to_vec();
                this.pos = 0;
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_of_a_large_write_come_out_whole_and_in_order() {
        let (mut tx, rx) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&data).await.unwrap();
        drop(tx);
        let mut r = ReadAhead::new(rx);
        let mut out = Vec::new();
        let mut chunk = [0u8; 1000];
        loop {
            let n = r.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
            // One large read at most stashes the rest of SCRATCH; it never grows past that.
            assert!(r.stashed() < SCRATCH);
        }
        assert_eq!(out, data);
        assert_eq!(r.stashed(), 0);
        assert_eq!(r.stash.capacity(), 0, "the stash is freed once empty");
    }

    #[tokio::test]
    async fn large_requests_go_direct_and_writes_pass_through() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut r = ReadAhead::new(b);
        a.write_all(b"hello").await.unwrap();
        let mut big = vec![0u8; DIRECT];
        let n = r.read(&mut big).await.unwrap();
        assert_eq!(&big[..n], b"hello");
        r.write_all(b"back").await.unwrap();
        let mut got = [0u8; 4];
        a.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"back");
    }
}
