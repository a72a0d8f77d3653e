//! The common HTTP/1.1 upgrade without hyper: when the bytes the sniffer read already hold
//! a whole request head that [`http::decide`] upgrades, it is parsed here (`httparse`, the
//! parser hyper uses) and answered with a 101 written from a template. Anything else (a
//! partial head, a request with a body, every rejection, the console page, a head over
//! `max_header_size`) goes to hyper with the same bytes in front, exactly as before.
//!
//! Invariants:
//! - the fast path only ever answers 101: every other answer, and its metrics and logs, is
//!   hyper's and `handshake.rs`'s, so both paths decide with the same pure function;
//! - it consumes nothing it does not answer: on `None` from [`decide`] the bytes stay in
//!   the [`Prefixed`] for hyper; on an upgrade, what followed the head is handed on to the
//!   WebSocket as early bytes;
//! - a 101 written here carries the same header fields as hyper's, less `date` (optional
//!   in a 1xx response, RFC 9110 section 6.6.1).

use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::connection::Opening;
use crate::deflate::Agreed;
use crate::http::{self, Decision, Limit, Policy};
use crate::settings::Settings;
use crate::tracker::ConnTracker;

use super::Accepted;
use super::handshake::{Upgraded, failed, greeting};
use super::sniff::Prefixed;

/// Headers a request may have and still take the fast path; more go to hyper.
const MAX_HEADERS: usize = 32;

/// An upgrade the fast path answers: the length of the request head, the response to
/// write and the extension agreed.
#[derive(Debug)]
pub(crate) struct Fast {
    /// Bytes of the request head (what follows is the client's first frames).
    head_len: usize,
    /// The whole 101 response.
    response: Vec<u8>,
    /// permessage-deflate, if agreed.
    deflate: Option<Agreed>,
}

/// Decides whether `bytes` (what the client sent first) is a whole request head that
/// upgrades, within `max_header_size`. `None`: hyper is to handle it.
pub(crate) fn decide(
    bytes: &[u8],
    policy: &Policy,
    limit: Limit,
    max_header_size: usize,
) -> Option<Fast> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) if n <= max_header_size => n,
        _ => return None,
    };
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    // One copy of the head; the path and every header value are slices of it, not copies
    // of their own (as hyper does it). httparse's slices point into `bytes`: the same
    // offsets in `head`.
    let head = Bytes::copy_from_slice(&bytes[..head_len]);
    let part = |s: &[u8]| {
        let start = s.as_ptr() as usize - bytes.as_ptr() as usize;
        head.slice(start..start + s.len())
    };
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    *req.version_mut() = Version::HTTP_11;
    *req.uri_mut() = Uri::from_maybe_shared(part(parsed.path?.as_bytes())).ok()?;
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        // A body (or a claim of one) is hyper's to frame.
        if name == hyper::header::CONTENT_LENGTH || name == hyper::header::TRANSFER_ENCODING {
            return None;
        }
        map.append(name, HeaderValue::from_maybe_shared(part(h.value)).ok()?);
    }
    *req.headers_mut() = map;
    let Decision::Upgrade {
        accept,
        protocol,
        deflate,
    } = http::decide(&req, policy, limit)
    else {
        return None;
    };
    let mut response = Vec::with_capacity(160);
    response.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ",
    );
    response.extend_from_slice(accept.as_bytes());
    if let Some(p) = &protocol {
        response.extend_from_slice(b"\r\nsec-websocket-protocol: ");
        response.extend_from_slice(p.as_bytes());
    }
    if let Some(d) = &deflate {
        response.extend_from_slice(b"\r\nsec-websocket-extensions: ");
        response.extend_from_slice(d.response.as_bytes());
    }
    response.extend_from_slice(b"\r\n\r\n");
    Some(Fast {
        head_len,
        response,
        deflate: deflate.map(|d| d.agreed),
    })
}

/// Answers the upgrade `fast` found in `io`'s first bytes with its 101, by the handshake
/// deadline. `None` after recording why the connection ended.
pub(crate) async fn upgrade<IO>(
    io: Prefixed<IO>,
    fast: Fast,
    accepted: &Accepted,
    tracker: &ConnTracker,
    settings: &Settings,
) -> Option<Upgraded<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (mut io, first) = io.into_parts();
    let written = tokio::time::timeout_at(accepted.deadline, io.write_all(&fast.response)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return failed(tracker, Some(&e)),
        Err(_) => return failed(tracker, None),
    }
    let early = first.get(fast.head_len..).unwrap_or_default().to_vec();
    Some(Upgraded {
        io,
        opening: Opening {
            early,
            deflate: fast.deflate,
            greeting: greeting(settings, accepted),
        },
    })
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;
    use hyper::Response;
    use hyper::body::Bytes;

    use super::*;
    use crate::deflate::Preferences;

    const REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    fn policy() -> Policy {
        Policy {
            subprotocols: vec!["echo".into()],
            deflate: Some(Preferences {
                server_max_window_bits: 15,
                client_max_window_bits: 15,
                server_no_context_takeover: true,
                client_no_context_takeover: false,
            }),
            console: Some(("/console".into(), Bytes::from_static(b"<html>"))),
            ..Policy::for_path("/ws")
        }
    }

    /// `REQUEST` with `extra` header lines, ended.
    fn request(extra: &str) -> Vec<u8> {
        [REQUEST, extra.as_bytes(), b"\r\n"].concat()
    }

    /// `REQUEST`, ended, with the first `from` replaced by `to`.
    fn replaced(from: &str, to: &str) -> Vec<u8> {
        String::from_utf8(request(""))
            .unwrap()
            .replacen(from, to, 1)
            .into()
    }

    fn fast(bytes: &[u8]) -> Option<Fast> {
        decide(bytes, &policy(), Limit::None, 8192)
    }

    /// The header fields of a response head, names lowercased, in order.
    fn fields(head: &[u8]) -> (u16, Vec<(String, String)>) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        assert!(r.parse(head).unwrap().is_complete());
        let fields = r
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8(h.value.to_vec()).unwrap();
                (h.name.to_ascii_lowercase(), value)
            })
            .collect();
        (r.code.unwrap(), fields)
    }

    /// What hyper is given to write for the same request (without the `date` it adds).
    fn hypers(bytes: &[u8]) -> (u16, Vec<(String, String)>) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        parsed.parse(bytes).unwrap();
        let mut b = Request::get(parsed.path.unwrap());
        for h in parsed.headers.iter() {
            b = b.header(h.name, h.value);
        }
        let r: Response<Full<Bytes>> =
            http::response(&http::decide(&b.body(()).unwrap(), &policy(), Limit::None));
        let fields = r
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        (r.status().as_u16(), fields)
    }

    #[test]
    fn an_upgrade_gets_hypers_101_from_the_template() {
        for extra in [
            "",
            "Sec-WebSocket-Protocol: chat, echo\r\n",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            "Sec-WebSocket-Protocol: echo\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
        ] {
            let bytes = request(extra);
            let f = fast(&bytes).unwrap_or_else(|| panic!("no fast path for {extra:?}"));
            assert_eq!(f.head_len, bytes.len());
            assert_eq!(fields(&f.response), hypers(&bytes), "{extra:?}");
            assert_eq!(f.deflate.is_some(), extra.contains("deflate"));
        }
        // The RFC 6455 example key.
        let f = fast(&request("")).unwrap();
        let text = String::from_utf8(f.response).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn bytes_behind_the_head_are_not_part_of_it() {
        let head = request("");
        let bytes = [&head[..], b"\x81\x85early"].concat();
        assert_eq!(fast(&bytes).unwrap().head_len, head.len());
    }

    #[test]
    fn everything_but_a_whole_plain_upgrade_goes_to_hyper() {
        let whole = request("");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("partial head", whole[..whole.len() - 2].to_vec()),
            ("404", replaced("/ws", "/nope")),
            ("console", replaced("/ws", "/console")),
            ("POST", [b"POST".as_slice(), &whole[3..]].concat()),
            ("HTTP/1.0", replaced("HTTP/1.1", "HTTP/1.0")),
            ("body", request("Content-Length: 5\r\n")),
            ("chunked", request("Transfer-Encoding: chunked\r\n")),
            ("version 8", replaced(": 13", ": 8")),
            ("bad key", replaced("dGhl", "!")),
            (
                "too many headers",
                request(&"X-A: b\r\n".repeat(MAX_HEADERS)),
            ),
            (
                "not HTTP",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            ),
        ];
        for (what, bytes) in cases {
            assert!(fast(&bytes).is_none(), "{what} took the fast path");
        }
    }

    #[test]
    fn limits_and_header_size_go_to_hyper() {
        let bytes = request("");
        assert!(decide(&bytes, &policy(), Limit::Total, 8192).is_none());
        assert!(decide(&bytes, &policy(), Limit::PerIp, 8192).is_none());
        assert!(decide(&bytes, &policy(), Limit::None, bytes.len() - 1).is_none());
        assert!(decide(&bytes, &policy(), Limit::None, bytes.len()).is_some());
    }
}
