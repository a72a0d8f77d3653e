//! WebSockets over HTTP/2 (RFC 8441) for the load generator: h2c with prior knowledge, many
//! WebSocket streams sharing each TCP connection, and each stream as a byte stream
//! ([`H2Stream`]) that the echo and idle modes drive exactly like a TCP connection.
//!
//! WebSocket number `i` rides on TCP connection `i / streams_per_conn`; the first stream of
//! a connection to need it opens it (the HTTP/2 handshake), the others wait for that.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OnceCell;

use crate::target::{Target, bad};

/// The TCP connections of one run, opened on demand.
pub struct Pool {
    /// WebSocket streams per TCP connection.
    per_conn: usize,
    /// One cell per TCP connection: the handle to open streams on it.
    conns: Vec<OnceCell<SendRequest<Bytes>>>,
}

impl Pool {
    /// Room for `streams` WebSockets, `per_conn` on each TCP connection.
    pub fn new(streams: usize, per_conn: usize) -> Pool {
        let per_conn = per_conn.max(1);
        Pool {
            per_conn,
            conns: (0..streams.div_ceil(per_conn).max(1))
                .map(|_| OnceCell::new())
                .collect(),
        }
    }

    /// TCP connections the run uses.
    pub fn tcp_conns(&self) -> usize {
        self.conns.len()
    }

    /// Opens WebSocket number `i`: an extended CONNECT on its TCP connection, checked for
    /// 200 (and permessage-deflate when the target asks for it).
    pub async fn open(&self, target: &Target, i: usize) -> io::Result<H2Stream> {
        let c = (i / self.per_conn).min(self.conns.len() - 1);
        let send = self.conns[c]
            .get_or_try_init(|| async {
                let tcp = target.connect(c).await?;
                let (send, conn) = h2::client::Builder::new()
                    .handshake::<_, Bytes>(tcp)
                    .await
                    .map_err(|e| bad(format!("HTTP/2 handshake: {e}")))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok::<_, io::Error>(send)
            })
            .await?;
        let mut request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("http://{}{}", target.host(), target.path()))
            .header("sec-websocket-version", "13")
            .extension(h2::ext::Protocol::from_static("websocket"));
        if target.deflate {
            request = request.header(
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            );
        }
        let request = request.body(()).map_err(|e| bad(e.to_string()))?;
        let mut send = send
            .clone()
            .ready()
            .await
            .map_err(|e| bad(format!("HTTP/2 connection: {e}")))?;
        let (response, stream) = send
            .send_request(request, false)
            .map_err(|e| bad(format!("extended CONNECT: {e}")))?;
        let response = response
            .await
            .map_err(|e| bad(format!("extended CONNECT: {e}")))?;
        if response.status() != http::StatusCode::OK {
            return Err(bad(format!(
                "extended CONNECT answered {}",
                response.status()
            )));
        }
        let negotiated = response
            .headers()
            .get("sec-websocket-extensions")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|e| e.starts_with("permessage-deflate"));
        if negotiated != target.deflate {
            return Err(bad(format!(
                "permessage-deflate offered: {}, negotiated: {negotiated}",
                target.deflate
            )));
        }
        Ok(H2Stream {
            read: H2Read {
                recv: response.into_body(),
                pending: Bytes::new(),
            },
            write: H2Write { send: stream },
        })
    }
}

/// One WebSocket stream as bytes in both directions.
pub struct H2Stream {
    pub read: H2Read,
    pub write: H2Write,
}

/// The receiving half: DATA frames, their flow-control window given back as they are read.
pub struct H2Read {
    recv: RecvStream,
    /// Received and not yet read.
    pending: Bytes,
}

/// The sending half: writes as much as the stream's send window allows.
pub struct H2Write {
    send: SendStream<Bytes>,
}

fn h2_error(e: h2::Error) -> io::Error {
    io::Error::other(e)
}

impl AsyncRead for H2Read {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())), // end of stream
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                Some(Ok(data)) => {
                    this.recv
                        .flow_control()
                        .release_capacity(data.len())
                        .map_err(h2_error)?;
                    this.pending = data;
                }
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Write {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        while this.send.capacity() == 0 {
            this.send.reserve_capacity(buf.len());
            match ready!(this.send.poll_capacity(cx)) {
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                Some(Ok(_)) => {}
            }
        }
        let n = this.send.capacity().min(buf.len());
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Poll::Ready(this.send.send_data(Bytes::new(), true).map_err(h2_error))
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_read(cx, buf)
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().write).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_shutdown(cx)
    }
}
