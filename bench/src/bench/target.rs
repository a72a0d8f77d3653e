//! What is being driven: parsing the URL, connecting (from a chosen source address), the
//! WebSocket upgrade, and the exact bytes of client and server frames.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::conn::Conn;
use crate::h2::Pool;

/// The `Sec-WebSocket-Key` of RFC 6455 section 1.3 and the accept value it must produce.
/// One fixed key is enough: the server computes the SHA-1 for it all the same.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A fixed, non-zero masking key, so that the server really unmasks.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Ws,
    Tcp,
}

pub struct Target {
    pub kind: Kind,
    pub url: String,
    pub addr: SocketAddr,
    /// `Host` header value.
    host: String,
    /// Request target of the upgrade.
    path: String,
    /// Source addresses to spread over; empty means the kernel's choice.
    sources: Vec<IpAddr>,
    /// Offer (and require) permessage-deflate in the upgrade.
    pub deflate: bool,
    /// WebSockets over HTTP/2 (RFC 8441, h2c): the shared TCP connections.
    http2: Option<Pool>,
}

impl Target {
    pub fn parse(url: &str, source_ips: u8, deflate: bool) -> Result<Target, String> {
        let (kind, rest) = if let Some(r) = url.strip_prefix("ws://") {
            (Kind::Ws, r)
        } else if let Some(r) = url.strip_prefix("tcp://") {
            (Kind::Tcp, r)
        } else {
            return Err(format!(
                "{url}: expected ws://HOST:PORT/PATH or tcp://HOST:PORT"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if kind == Kind::Tcp && path != "/" {
            return Err(format!("{url}: a tcp:// target has no path"));
        }
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: {authority} has no address"))?;
        let sources = match addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() && source_ips > 1 => (1..=source_ips)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Target {
            kind,
            url: url.to_owned(),
            addr,
            host: authority.to_owned(),
            path: path.to_owned(),
            sources,
            deflate,
            http2: None,
        })
    }

    /// Carries the WebSockets as HTTP/2 streams (extended CONNECT, h2c with prior knowledge),
    /// `per_conn` of the `streams` on each TCP connection.
    pub fn over_http2(mut self, streams: usize, per_conn: usize) -> Result<Target, String> {
        if self.kind != Kind::Ws {
            return Err(format!("{}: HTTP/2 needs a ws:// target", self.url));
        }
        self.http2 = Some(Pool::new(streams, per_conn));
        Ok(self)
    }

    /// The TCP connections of an HTTP/2 run.
    pub fn http2_tcp_conns(&self) -> Option<usize> {
        self.http2.as_ref().map(Pool::tcp_conns)
    }

    /// The `Host` header value (`:authority` over HTTP/2).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The request target of the upgrade (`:path` over HTTP/2).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Connection number `n`, ready for frames: connected and upgraded (a stream opened with
    /// an extended CONNECT over HTTP/2). Also returns bytes that came after the upgrade.
    pub async fn open(&self, n: usize) -> io::Result<(Conn, Vec<u8>)> {
        if let Some(pool) = &self.http2 {
            return Ok((Conn::H2(pool.open(self, n).await?), Vec::new()));
        }
        let mut s = self.connect(n).await?;
        let rest = self.upgrade(&mut s).await?;
        Ok((Conn::Tcp(s), rest))
    }

    pub fn source_count(&self) -> usize {
        self.sources.len().max(1)
    }

    /// Connects with TCP_NODELAY, from source address number `n` (modulo their count).
    pub async fn connect(&self, n: usize) -> io::Result<TcpStream> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if !self.sources.is_empty() {
            let src = self.sources[n % self.sources.len()];
            // Leave the port choice to connect(), which knows the destination: bind() alone
            // would reserve a port for every destination and run out far sooner.
            let one: libc::c_int = 1;
            // SAFETY: a valid socket, option value of the size given.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            socket.bind(SocketAddr::new(src, 0))?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// For ws:// targets, sends the upgrade request and checks the 101 response. Returns any
    /// bytes that came after the response head.
    pub async fn upgrade(&self, stream: &mut TcpStream) -> io::Result<Vec<u8>> {
        if self.kind == Kind::Tcp {
            return Ok(Vec::new());
        }
        // What Chromium offers.
        let offer = if self.deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n",
            self.path, self.host
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        let end = loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during the upgrade",
                ));
            }
            let from = buf.len().saturating_sub(3);
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                break from + i + 4;
            }
            if buf.len() > 16 * 1024 {
                return Err(bad("upgrade response head over 16 KiB"));
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]);
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or("");
        if !status.starts_with("HTTP/1.1 101") {
            return Err(bad(format!("upgrade refused: {status}")));
        }
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                let (name, value) = l.split_once(':')?;
                Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            })
            .collect();
        let header = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        let accept = header("sec-websocket-accept");
        if accept != Some(ACCEPT) {
            return Err(bad(format!("wrong Sec-WebSocket-Accept {accept:?}")));
        }
        let negotiated =
            header("sec-websocket-extensions").is_some_and(|e| e.starts_with("permessage-deflate"));
        if negotiated != self.deflate {
            return Err(bad(format!(
                "permessage-deflate offered: {}, negotiated: {negotiated}",
                self.deflate
            )));
        }
        Ok(buf[end..].to_vec())
    }

    /// The bytes the server sends back for one `client_frame`: the unmasked server frame for
    /// WebSocket, the very same bytes for a raw TCP echo.
    pub fn reply_for(&self, opcode: u8, payload: &[u8]) -> Vec<u8> {
        match self.kind {
            Kind::Ws => frame(opcode, payload, None),
            Kind::Tcp => frame(opcode, payload, Some(MASK)),
        }
    }
}

pub fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;

/// One final frame; masked (a client frame) when `mask` is given.
pub fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    frame_rsv(opcode, false, payload, mask)
}

/// The client frame of one message: compressed (RSV1) when `deflate`.
pub fn client_frame(opcode: u8, payload: &[u8], deflate: bool) -> Vec<u8> {
    if deflate {
        frame_rsv(opcode, true, &compress(payload), Some(MASK))
    } else {
        frame(opcode, payload, Some(MASK))
    }
}

/// One final frame with RSV1 as given.
pub fn frame_rsv(opcode: u8, rsv1: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | if rsv1 { 0x40 } else { 0 } | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xffff {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// The trailer RFC 7692 strips from (and appends to) every compressed message.
const TRAILER: [u8; 4] = [0, 0, 0xff, 0xff];

/// `data` as one permessage-deflate message: raw deflate, sync-flushed, trailer removed.
/// Each message stands alone (no context taken over), so the same bytes can be sent again.
pub fn compress(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(1), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, flate2::FlushCompress::Sync)
        .expect("deflate");
    out.truncate(out.len().saturating_sub(TRAILER.len()));
    out
}

/// Inflates one permessage-deflate message (each inflated alone: the server under test
/// resets its compressor per message by default).
pub fn inflate(payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut d = flate2::Decompress::new(false);
    let input = [payload, &TRAILER].concat();
    let mut out = Vec::with_capacity(payload.len() * 8 + 1024);
    loop {
        let before = d.total_in();
        d.decompress_vec(
            &input[before as usize..],
            &mut out,
            flate2::FlushDecompress::Sync,
        )
        .map_err(|e| bad(format!("inflate: {e}")))?;
        if d.total_in() as usize == input.len() {
            return Ok(out);
        }
        out.reserve(out.capacity());
    }
}

/// Reads one whole server frame: (first byte, its bytes on the wire, payload). `pending`
/// holds bytes already read; what follows the frame stays in it.
pub async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    pending: &mut Vec<u8>,
) -> io::Result<(u8, Vec<u8>, Vec<u8>)> {
    loop {
        if pending.len() >= 2 {
            let (ext, len7) = match pending[1] & 0x7f {
                126 => (2, None),
                127 => (8, None),
                n => (0, Some(u64::from(n))),
            };
            if pending.len() >= 2 + ext {
                let len = len7.unwrap_or_else(|| {
                    pending[2..2 + ext]
                        .iter()
                        .fold(0u64, |a, b| (a << 8) | u64::from(*b))
                }) as usize;
                let total = 2 + ext + len;
                if pending.len() >= total {
                    let wire: Vec<u8> = pending.drain(..total).collect();
                    let payload = wire[2 + ext..].to_vec();
                    return Ok((wire[0], wire, payload));
                }
            }
        }
        let mut buf = [0u8; 16384];
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(bad("closed in the middle of a frame"));
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// A payload of `size` bytes: ASCII letters for text, a fixed pseudo-random pattern for binary.
pub fn payload(size: usize, text: bool) -> Vec<u8> {
    if text {
        (0..size).map(|i| b'a' + (i % 26) as u8).collect()
    } else {
        let mut x: u32 = 0x9e37_79b9;
        (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }
}

/// `size` bytes of JSON-like text: an array of small records, cut to length.
pub fn json(size: usize) -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0u32;
    while s.len() < size {
        s.push_str(&format!(
            "{{\"id\":{i},\"user\":\"user-{:05}\",\"active\":{},\"score\":{}.{},\"tags\":[\"alpha\",\"beta\"]}},",
            i * 7919 % 100_000,
            i.is_multiple_of(3),
            i % 100,
            i * 37 % 10
        ));
        i += 1;
    }
    s.truncate(size);
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths() {
        assert_eq!(frame(TEXT, &[0; 125], None).len(), 2 + 125);
        assert_eq!(frame(TEXT, &[0; 126], None).len(), 4 + 126);
        assert_eq!(frame(BINARY, &[0; 65536], None).len(), 10 + 65536);
        assert_eq!(frame(BINARY, &[0; 32], Some(MASK)).len(), 6 + 32);
    }

    #[test]
    fn masking_round_trips() {
        let f = frame(TEXT, b"hello", Some(MASK));
        assert_eq!(f[1], 0x80 | 5);
        let unmasked: Vec<u8> = f[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4])
            .collect();
        assert_eq!(unmasked, b"hello");
    }

    #[test]
    fn parses_urls() {
        let t = Target::parse("ws://127.0.0.1:9/ws", 4, false).unwrap();
        assert_eq!(t.kind, Kind::Ws);
        assert_eq!(t.path, "/ws");
        assert_eq!(t.source_count(), 4);
        let t = Target::parse("tcp://127.0.0.1:9", 0, false).unwrap();
        assert_eq!(t.kind, Kind::Tcp);
        assert_eq!(t.source_count(), 1);
        assert!(Target::parse("http://127.0.0.1:9/", 0, false).is_err());
    }

    #[test]
    fn compressed_messages_round_trip_and_json_is_text() {
        let j = json(1024);
        assert_eq!(j.len(), 1024);
        assert!(std::str::from_utf8(&j).is_ok());
        let z = compress(&j);
        assert!(z.len() < j.len() / 3, "{}", z.len());
        assert_eq!(inflate(&z).unwrap(), j);
        assert_eq!(client_frame(TEXT, &j, true)[0], 0xc1);
    }
}
