//! Telling HTTP/2 with prior knowledge (h2c) from HTTP/1.1 on a cleartext connection: an
//! HTTP/2 client opens with the fixed preface `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, which no
//! HTTP/1.1 request starts with.
//!
//! Invariant: sniffing consumes nothing. The bytes read to decide are replayed, before the
//! socket's, to whichever protocol gets the connection ([`Prefixed`]); the first read is
//! large enough to hold a whole upgrade request, so HTTP/1.1 costs no extra system call.
//! Every HTTP/1.1 connection (also with HTTP/2 off, and over TLS) starts with this read,
//! so that a whole upgrade request in it can take the fast path (`fast.rs`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much the first read asks for: a typical upgrade request whole.
const FIRST_READ: usize = 2048;

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1 (or anything that is not HTTP/2: HTTP/1.1 answers it).
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
}

/// Reads until the first bytes show the protocol (or the peer stops sending), and returns
/// it with the connection, those bytes in front.
pub(crate) async fn sniff<IO: AsyncRead + Unpin>(mut io: IO) -> (Protocol, Prefixed<IO>) {
    let mut seen = Vec::with_capacity(FIRST_READ);
    loop {
        match io.read_buf(&mut seen).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let n = seen.len().min(PREFACE.len());
        if seen[..n] != PREFACE[..n] {
            break;
        }
        if n == PREFACE.len() {
            return (Protocol::Http2, Prefixed::new(seen, io));
        }
        // A prefix of the preface so far: read on (bounded by the caller's deadline).
        seen.reserve(PREFACE.len());
    }
    (Protocol::Http1, Prefixed::new(seen, io))
}

/// A byte stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Prefixed<IO> {
    /// Bytes to hand out before the stream's own.
    prefix: Vec<u8>,
    /// How many of them are handed out.
    at: usize,
    /// The stream.
    inner: IO,
}

impl<IO> Prefixed<IO> {
    pub(crate) fn new(prefix: Vec<u8>, inner: IO) -> Self {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }

    /// The prefix bytes not handed out yet.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.prefix[self.at..]
    }

    /// The stream, and the prefix bytes not handed out yet.
    pub(crate) fn into_parts(mut self) -> (IO, Vec<u8>) {
        self.prefix.drain(..self.at);
        (self.inner, self.prefix)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                // Handed out: free it for the rest of the connection's life.
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
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
    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn sniffed(parts: &[&[u8]]) -> (Protocol, Vec<u8>) {
        let (mut a, b) = tokio::io::duplex(4096);
        for p in parts {
            a.write_all(p).await.unwrap();
            tokio::task::yield_now().await;
        }
        drop(a);
        let (proto, mut io) = sniff(b).await;
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        (proto, all)
    }

    #[tokio::test]
    async fn the_preface_is_http2_and_nothing_is_lost() {
        let (p, all) = sniffed(&[PREFACE, b"\x00\x00\x00\x04"]).await;
        assert_eq!(p, Protocol::Http2);
        assert!(all.starts_with(PREFACE));
        // In pieces, too.
        let (p, all) = sniffed(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM", b"\r\n\r\nrest"]).await;
        assert_eq!(p, Protocol::Http2);
        assert_eq!(all, [PREFACE, b"rest"].concat());
    }

    #[tokio::test]
    async fn anything_else_is_http1_and_replayed_whole() {
        for input in [
            &b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/1.1\r\n",
            b"",
            b"\x16\x03\x01",
        ] {
            let (p, all) = sniffed(&[input]).await;
            assert_eq!(p, Protocol::Http1, "{input:?}");
            assert_eq!(all, input);
        }
    }

    #[tokio::test]
    async fn what_the_protocol_has_not_read_is_given_back() {
        let (mut a, b) = tokio::io::duplex(4096);
        a.write_all(b"GET / HTTP/1.1\r\n\r\nearly").await.unwrap();
        let (_, mut io) = sniff(b).await;
        let mut head = [0u8; 18];
        io.read_exact(&mut head).await.unwrap();
        let (_, rest) = io.into_parts();
        assert_eq!(rest, b"early");
    }
}
