//! The HTTP side of the handshake: decide, from a request alone, whether it upgrades to a
//! WebSocket or which error status it gets. Pure functions, so every rule has a unit test.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};

/// The only WebSocket protocol version there is (RFC 6455).
const WS_VERSION: &str = "13";

/// What to answer an upgrade request with.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// 101 Switching Protocols, with this `Sec-WebSocket-Accept`.
    Upgrade {
        /// The `Sec-WebSocket-Accept` value derived from the client's key.
        accept: String,
    },
    /// An HTTP error instead of an upgrade.
    Reject(Rejection),
}

/// An error response: status, a short text body and at most one extra header.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The status code.
    pub status: StatusCode,
    /// A one-line explanation for humans (curl users).
    pub body: &'static str,
    /// An extra header, such as `Allow` or `Sec-WebSocket-Version`.
    pub header: Option<(header::HeaderName, &'static str)>,
}

fn reject(status: StatusCode, body: &'static str) -> Decision {
    Decision::Reject(Rejection {
        status,
        body,
        header: None,
    })
}

/// Whether a comma-separated header holds `token` (case-insensitively), in any of its lines.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A `Sec-WebSocket-Key` must be the base64 encoding of 16 bytes: 22 characters and `==`.
fn valid_key(key: &HeaderValue) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b.ends_with(b"==")
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// Decides the fate of a request on the WebSocket listener.
///
/// Order: path (404), method (405), is it a WebSocket upgrade at all (400), version (426),
/// then the details of a well-formed upgrade (400). `over_limit` (503) is checked only for
/// requests that would otherwise upgrade, so a curl probe still gets its honest answer.
pub fn decide<B>(req: &Request<B>, path: &str, over_limit: bool) -> Decision {
    if req.uri().path() != path {
        return reject(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET {
        return Decision::Reject(Rejection {
            status: StatusCode::METHOD_NOT_ALLOWED,
            body: "only GET upgrades to a WebSocket\n",
            header: Some((header::ALLOW, "GET")),
        });
    }
    let h = req.headers();
    if !has_token(h, header::UPGRADE, "websocket") {
        return reject(StatusCode::BAD_REQUEST, "not a WebSocket request\n");
    }
    if !has_token(h, header::CONNECTION, "upgrade") {
        return reject(
            StatusCode::BAD_REQUEST,
            "not a WebSocket request: Connection must include Upgrade\n",
        );
    }
    match h.get(header::SEC_WEBSOCKET_VERSION) {
        None => {
            return reject(
                StatusCode::BAD_REQUEST,
                "not a WebSocket request: Sec-WebSocket-Version missing\n",
            );
        }
        Some(v) if v.as_bytes().trim_ascii() != WS_VERSION.as_bytes() => {
            return Decision::Reject(Rejection {
                status: StatusCode::UPGRADE_REQUIRED,
                body: "unsupported WebSocket version; this server speaks 13\n",
                header: Some((header::SEC_WEBSOCKET_VERSION, WS_VERSION)),
            });
        }
        Some(_) => {}
    }
    if req.version() < Version::HTTP_11 {
        return reject(StatusCode::BAD_REQUEST, "WebSocket needs HTTP/1.1\n");
    }
    let key = match h.get(header::SEC_WEBSOCKET_KEY) {
        Some(k) if valid_key(k) => k,
        _ => {
            return reject(
                StatusCode::BAD_REQUEST,
                "not a WebSocket request: bad or missing Sec-WebSocket-Key\n",
            );
        }
    };
    if over_limit {
        return Decision::Reject(Rejection {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: "too many connections, try again later\n",
            header: Some((header::RETRY_AFTER, "1")),
        });
    }
    Decision::Upgrade {
        accept: tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
    }
}

/// The response for a decision.
pub fn response(decision: &Decision) -> Response<Full<Bytes>> {
    match decision {
        Decision::Upgrade { accept } => Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept.as_str())
            .body(Full::default()),
        Decision::Reject(r) => text(r.status, r.body, r.header.clone()),
    }
    .expect("static response parts are valid")
}

/// A small `text/plain` response.
pub fn text(
    status: StatusCode,
    body: &'static str,
    extra: Option<(header::HeaderName, &'static str)>,
) -> Result<Response<Full<Bytes>>, hyper::http::Error> {
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    if status.is_client_error() || status.is_server_error() {
        // One request per connection on the WebSocket listener: hyper closes after this.
        b = b.header(header::CONNECTION, "close");
    }
    if let Some((name, value)) = extra {
        b = b.header(name, value);
    }
    b.body(Full::new(Bytes::from_static(body.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade() -> hyper::http::request::Builder {
        Request::get("/ws")
            .header("Host", "localhost")
            .header("Upgrade", "websocket")
            .header("Connection", "keep-alive, Upgrade")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", KEY)
    }

    fn status(req: Request<()>) -> StatusCode {
        match decide(&req, "/ws", false) {
            Decision::Upgrade { .. } => StatusCode::SWITCHING_PROTOCOLS,
            Decision::Reject(r) => r.status,
        }
    }

    #[test]
    fn valid_upgrade_gets_rfc_accept_key() {
        let d = decide(&upgrade().body(()).unwrap(), "/ws", false);
        // The example from RFC 6455 section 1.3.
        assert_eq!(
            d,
            Decision::Upgrade {
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
            }
        );
        let r = response(&d);
        assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            r.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn tokens_are_case_insensitive_and_may_span_lines() {
        let req = Request::get("/ws")
            .header("Upgrade", "WebSocket")
            .header("Connection", "keep-alive")
            .header("Connection", "UPGRADE")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", KEY)
            .body(())
            .unwrap();
        assert_eq!(status(req), StatusCode::SWITCHING_PROTOCOLS);
    }

    #[test]
    fn plain_get_is_400() {
        assert_eq!(
            status(Request::get("/ws").body(()).unwrap()),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn other_path_is_404_and_query_is_ignored() {
        assert_eq!(
            status(Request::get("/other").body(()).unwrap()),
            StatusCode::NOT_FOUND
        );
        let req = Request::get("/ws?x=1")
            .header("Upgrade", "websocket")
            .header("Connection", "Upgrade")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", KEY)
            .body(())
            .unwrap();
        assert_eq!(status(req), StatusCode::SWITCHING_PROTOCOLS);
    }

    #[test]
    fn non_get_is_405_with_allow() {
        let d = decide(&Request::post("/ws").body(()).unwrap(), "/ws", false);
        let Decision::Reject(r) = d else { panic!() };
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.header, Some((header::ALLOW, "GET")));
    }

    #[test]
    fn wrong_version_is_426_with_version_header() {
        let mut req = upgrade().body(()).unwrap();
        req.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        let Decision::Reject(r) = decide(&req, "/ws", false) else {
            panic!()
        };
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
        let resp = response(&Decision::Reject(r));
        assert_eq!(resp.headers()["sec-websocket-version"], "13");
    }

    #[test]
    fn malformed_upgrades_are_400() {
        let bad_keys = [
            "",
            "short",
            "dGhlIHNhbXBsZSBub25jZQ=!",
            "dGhlIHNhbXBsZSBub25jZQ",
        ];
        for key in bad_keys {
            let mut req = upgrade().body(()).unwrap();
            req.headers_mut()
                .insert("sec-websocket-key", HeaderValue::from_str(key).unwrap());
            assert_eq!(status(req), StatusCode::BAD_REQUEST, "key {key:?}");
        }
        let mut req = upgrade().body(()).unwrap();
        req.headers_mut().remove("sec-websocket-key");
        assert_eq!(status(req), StatusCode::BAD_REQUEST);
        let mut req = upgrade().body(()).unwrap();
        req.headers_mut().remove("connection");
        assert_eq!(status(req), StatusCode::BAD_REQUEST);
        let mut req = upgrade().body(()).unwrap();
        req.headers_mut().remove("sec-websocket-version");
        assert_eq!(status(req), StatusCode::BAD_REQUEST);
        let mut req = upgrade().body(()).unwrap();
        *req.version_mut() = Version::HTTP_10;
        assert_eq!(status(req), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn over_limit_is_503_with_retry_after_only_for_real_upgrades() {
        let Decision::Reject(r) = decide(&upgrade().body(()).unwrap(), "/ws", true) else {
            panic!()
        };
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.header, Some((header::RETRY_AFTER, "1")));
        let Decision::Reject(r) = decide(&Request::get("/ws").body(()).unwrap(), "/ws", true)
        else {
            panic!()
        };
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
}
