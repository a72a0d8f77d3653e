//! The HTTP side of the handshake: decide, from a request alone, whether it upgrades to a
//! WebSocket or which error status it gets. Pure functions, so every rule has a unit test.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};

/// The only WebSocket protocol version there is (RFC 6455).
const WS_VERSION: &str = "13";

/// The rules a handshake is judged by, from `[server]`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The one path that upgrades.
    pub path: String,
    /// Normalized allowed origins; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Refuse requests without `Origin`.
    pub require_origin: bool,
    /// Subprotocols we speak.
    pub subprotocols: Vec<String>,
    /// Refuse clients offering none of them.
    pub require_subprotocol: bool,
    /// What we ask for in permessage-deflate; `None` when compression is off.
    pub deflate: Option<crate::deflate::Preferences>,
    /// The console page, when it is served: its path and its HTML.
    pub console: Option<(String, Bytes)>,
}

#[cfg(test)]
impl Policy {
    /// A policy that only checks the path.
    pub fn for_path(path: &str) -> Self {
        Policy {
            path: path.to_string(),
            ..Policy::default()
        }
    }
}

/// Why a connection is over a limit before it upgrades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Within every limit.
    None,
    /// `max_connections` reached: 503.
    Total,
    /// `max_connections_per_ip` reached for this client: 429.
    PerIp,
    /// The daemon is shutting down (an HTTP/2 connection asks for a new stream): 503.
    Draining,
}

/// What to answer an upgrade request with.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// 101 Switching Protocols (HTTP/1.1) or 200 (HTTP/2).
    Upgrade {
        /// The `Sec-WebSocket-Accept` value derived from the client's key (HTTP/1.1 only;
        /// empty on HTTP/2, which has no key).
        accept: String,
        /// The selected subprotocol, if any.
        protocol: Option<String>,
        /// permessage-deflate, if it was offered, is on and an offer could be honoured.
        deflate: Option<crate::deflate::Negotiated>,
    },
    /// An HTTP error instead of an upgrade.
    Reject(Rejection),
    /// 200 with the console page (`head`: without the body, for a HEAD request).
    Page {
        /// The page.
        html: Bytes,
        /// Only the head was asked for.
        head: bool,
    },
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

/// The first subprotocol the client offers that we speak.
fn select_protocol(headers: &HeaderMap, ours: &[String]) -> Option<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|offered| ours.iter().any(|p| p == offered))
        .map(str::to_string)
}

/// Decides the fate of a request on the WebSocket listener.
///
/// Order: path (404), method (405), is it a WebSocket upgrade at all (400), version (426),
/// the details of a well-formed upgrade (400), origin (403), subprotocol (400), then the
/// connection limits (503, 429), which are checked only for requests that would otherwise
/// upgrade, so a curl probe still gets its honest answer.
pub fn decide<B>(req: &Request<B>, policy: &Policy, limit: Limit) -> Decision {
    if let Some(page) = console(req, policy) {
        return page;
    }
    if req.uri().path() != policy.path {
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
    if let Some(r) = check_version(h) {
        return r;
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
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    settle(h, policy, limit, accept)
}

/// Decides the fate of a request on an HTTP/2 connection (RFC 8441): an extended CONNECT
/// with `:protocol` `websocket` on the path opens a WebSocket, with the same checks as
/// HTTP/1.1 from the version on. A plain GET of the path is 400, another method 405.
pub fn decide_h2<B>(req: &Request<B>, policy: &Policy, limit: Limit) -> Decision {
    if let Some(page) = console(req, policy) {
        return page;
    }
    let protocol = req.extensions().get::<hyper::ext::Protocol>();
    let websocket = protocol.is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    // Before the path: a plain CONNECT (a proxy tunnel, `:authority` only) has no path.
    if req.method() == Method::CONNECT && !websocket {
        return reject(
            StatusCode::BAD_REQUEST,
            "not a WebSocket request: CONNECT needs :protocol websocket\n",
        );
    }
    if req.uri().path() != policy.path {
        return reject(StatusCode::NOT_FOUND, "not found\n");
    }
    match *req.method() {
        Method::CONNECT => {}
        Method::GET => return reject(StatusCode::BAD_REQUEST, "not a WebSocket request\n"),
        _ => {
            return Decision::Reject(Rejection {
                status: StatusCode::METHOD_NOT_ALLOWED,
                body: "only CONNECT with :protocol websocket opens a WebSocket over HTTP/2\n",
                header: Some((header::ALLOW, "CONNECT")),
            });
        }
    }
    let h = req.headers();
    if let Some(r) = check_version(h) {
        return r;
    }
    settle(h, policy, limit, String::new())
}

/// The console page, if the request is for it.
fn console<B>(req: &Request<B>, policy: &Policy) -> Option<Decision> {
    let (path, html) = policy.console.as_ref()?;
    if req.uri().path() != path {
        return None;
    }
    Some(match *req.method() {
        Method::GET | Method::HEAD => Decision::Page {
            html: html.clone(),
            head: req.method() == Method::HEAD,
        },
        _ => Decision::Reject(Rejection {
            status: StatusCode::METHOD_NOT_ALLOWED,
            body: "the console page answers GET and HEAD\n",
            header: Some((header::ALLOW, "GET, HEAD")),
        }),
    })
}

/// `Sec-WebSocket-Version` must be 13: 400 when missing, 426 when another.
fn check_version(h: &HeaderMap) -> Option<Decision> {
    match h.get(header::SEC_WEBSOCKET_VERSION) {
        None => Some(reject(
            StatusCode::BAD_REQUEST,
            "not a WebSocket request: Sec-WebSocket-Version missing\n",
        )),
        Some(v) if v.as_bytes().trim_ascii() != WS_VERSION.as_bytes() => {
            Some(Decision::Reject(Rejection {
                status: StatusCode::UPGRADE_REQUIRED,
                body: "unsupported WebSocket version; this server speaks 13\n",
                header: Some((header::SEC_WEBSOCKET_VERSION, WS_VERSION)),
            }))
        }
        Some(_) => None,
    }
}

/// The checks every WebSocket request goes through, whatever its HTTP version: origin (403),
/// subprotocol (400), the limits (503, 429), then the upgrade with what was negotiated.
fn settle(h: &HeaderMap, policy: &Policy, limit: Limit, accept: String) -> Decision {
    match h.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        None if policy.require_origin => {
            return reject(StatusCode::FORBIDDEN, "an Origin header is required\n");
        }
        Some(origin) if !policy.allowed_origins.is_empty() => {
            let allowed = crate::origin::normalize(origin)
                .is_some_and(|o| policy.allowed_origins.contains(&o));
            if !allowed {
                return reject(StatusCode::FORBIDDEN, "origin not allowed\n");
            }
        }
        _ => {}
    }
    let protocol = select_protocol(h, &policy.subprotocols);
    if protocol.is_none() && policy.require_subprotocol {
        return reject(
            StatusCode::BAD_REQUEST,
            "no supported subprotocol offered in Sec-WebSocket-Protocol\n",
        );
    }
    let (status, body) = match limit {
        Limit::None => (None, ""),
        Limit::Total => (
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "too many connections, try again later\n",
        ),
        Limit::Draining => (
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "shutting down, try again later\n",
        ),
        Limit::PerIp => (
            Some(StatusCode::TOO_MANY_REQUESTS),
            "too many connections from your address, try again later\n",
        ),
    };
    if let Some(status) = status {
        return Decision::Reject(Rejection {
            status,
            body,
            header: Some((header::RETRY_AFTER, "1")),
        });
    }
    let deflate = policy.deflate.as_ref().and_then(|ours| {
        crate::deflate::negotiate(
            h.get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .map(HeaderValue::as_bytes),
            ours,
        )
    });
    Decision::Upgrade {
        accept,
        protocol,
        deflate,
    }
}

/// The HTTP/2 response for a decision: 200 instead of 101, and no `Upgrade`,
/// `Connection` or `Sec-WebSocket-Accept` (RFC 8441 section 5).
pub fn response_h2(decision: &Decision) -> Response<Full<Bytes>> {
    let mut r = match decision {
        Decision::Upgrade {
            protocol, deflate, ..
        } => {
            let mut b = Response::builder().status(StatusCode::OK);
            if let Some(p) = protocol {
                b = b.header(header::SEC_WEBSOCKET_PROTOCOL, p.as_str());
            }
            if let Some(d) = deflate {
                b = b.header(header::SEC_WEBSOCKET_EXTENSIONS, d.response.as_str());
            }
            b.body(Full::default())
                .expect("static response parts are valid")
        }
        other => response(other),
    };
    // Connection-specific headers are not allowed in HTTP/2.
    r.headers_mut().remove(header::CONNECTION);
    r
}

/// The HTTP/1.1 response for a decision.
pub fn response(decision: &Decision) -> Response<Full<Bytes>> {
    match decision {
        Decision::Upgrade {
            accept,
            protocol,
            deflate,
        } => {
            let mut b = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::UPGRADE, "websocket")
                .header(header::CONNECTION, "Upgrade")
                .header(header::SEC_WEBSOCKET_ACCEPT, accept.as_str());
            if let Some(p) = protocol {
                b = b.header(header::SEC_WEBSOCKET_PROTOCOL, p.as_str());
            }
            if let Some(d) = deflate {
                b = b.header(header::SEC_WEBSOCKET_EXTENSIONS, d.response.as_str());
            }
            b.body(Full::default())
        }
        Decision::Reject(r) => text(r.status, r.body, r.header.clone()),
        Decision::Page { html, head } => {
            let body = if *head { Bytes::new() } else { html.clone() };
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .header(header::CONTENT_LENGTH, html.len())
                .header(header::CACHE_CONTROL, "no-cache")
                .header("x-content-type-options", "nosniff")
                // The page's WebSocket opens a connection of its own: this one is done.
                .header(header::CONNECTION, "close")
                .body(Full::new(body))
        }
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
        status_with(req, &Policy::for_path("/ws"))
    }

    fn status_with(req: Request<()>, policy: &Policy) -> StatusCode {
        match decide(&req, policy, Limit::None) {
            Decision::Upgrade { .. } => StatusCode::SWITCHING_PROTOCOLS,
            Decision::Reject(r) => r.status,
            Decision::Page { .. } => StatusCode::OK,
        }
    }

    #[test]
    fn valid_upgrade_gets_rfc_accept_key() {
        let d = decide(
            &upgrade().body(()).unwrap(),
            &Policy::for_path("/ws"),
            Limit::None,
        );
        // The example from RFC 6455 section 1.3.
        assert_eq!(
            d,
            Decision::Upgrade {
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                protocol: None,
                deflate: None,
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
        let d = decide(
            &Request::post("/ws").body(()).unwrap(),
            &Policy::for_path("/ws"),
            Limit::None,
        );
        let Decision::Reject(r) = d else { panic!() };
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.header, Some((header::ALLOW, "GET")));
    }

    #[test]
    fn wrong_version_is_426_with_version_header() {
        let mut req = upgrade().body(()).unwrap();
        req.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        let Decision::Reject(r) = decide(&req, &Policy::for_path("/ws"), Limit::None) else {
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
    fn over_limit_is_503_or_429_with_retry_after_only_for_real_upgrades() {
        let p = Policy::for_path("/ws");
        let Decision::Reject(r) = decide(&upgrade().body(()).unwrap(), &p, Limit::Total) else {
            panic!()
        };
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.header, Some((header::RETRY_AFTER, "1")));
        let Decision::Reject(r) = decide(&upgrade().body(()).unwrap(), &p, Limit::PerIp) else {
            panic!()
        };
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        let Decision::Reject(r) = decide(&Request::get("/ws").body(()).unwrap(), &p, Limit::Total)
        else {
            panic!()
        };
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }

    fn with_origin(origin: Option<&str>) -> Request<()> {
        let mut b = upgrade();
        if let Some(o) = origin {
            b = b.header("Origin", o);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn origin_allow_list_is_exact() {
        let policy = Policy {
            allowed_origins: vec![
                crate::origin::parse("https://example.com").unwrap(),
                crate::origin::parse("http://localhost:8080").unwrap(),
            ],
            ..Policy::for_path("/ws")
        };
        let ok = StatusCode::SWITCHING_PROTOCOLS;
        let no = StatusCode::FORBIDDEN;
        for (origin, want) in [
            (Some("https://example.com"), ok),
            (Some("HTTPS://Example.COM"), ok),
            (Some("https://example.com:443"), ok),
            (Some("http://localhost:8080"), ok),
            (None, ok),
            (Some("https://example.com.evil.test"), no),
            (Some("https://evilexample.com"), no),
            (Some("http://example.com"), no),
            (Some("https://example.com:8443"), no),
            (Some("https://sub.example.com"), no),
            (Some("null"), no),
            (Some("http://localhost:8081"), no),
            (Some("https://example.com/"), no),
            (Some(""), no),
        ] {
            assert_eq!(
                status_with(with_origin(origin), &policy),
                want,
                "{origin:?}"
            );
        }
        let strict = Policy {
            require_origin: true,
            ..policy
        };
        assert_eq!(status_with(with_origin(None), &strict), no);
        assert_eq!(
            status_with(with_origin(Some("https://example.com")), &strict),
            ok
        );
    }

    /// An RFC 8441 extended CONNECT for `path`.
    fn connect(path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(Method::CONNECT)
            .uri(format!("https://localhost{path}"))
            .extension(hyper::ext::Protocol::from_static("websocket"))
            .header("sec-websocket-version", "13")
    }

    fn h2_status(req: Request<()>, policy: &Policy, limit: Limit) -> StatusCode {
        response_h2(&decide_h2(&req, policy, limit)).status()
    }

    #[test]
    fn http2_extended_connect_gets_the_same_decisions() {
        let p = Policy {
            allowed_origins: vec!["https://example.com".into()],
            subprotocols: vec!["chat".into()],
            ..Policy::for_path("/ws")
        };
        let ok = connect("/ws")
            .header("origin", "https://example.com")
            .header("sec-websocket-protocol", "mqtt, chat")
            .body(())
            .unwrap();
        let r = response_h2(&decide_h2(&ok, &p, Limit::None));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["sec-websocket-protocol"], "chat");
        assert!(r.headers().get("sec-websocket-accept").is_none());
        assert!(r.headers().get("connection").is_none());
        for (req, limit, want) in [
            (
                connect("/other").body(()).unwrap(),
                Limit::None,
                StatusCode::NOT_FOUND,
            ),
            (
                connect("/ws")
                    .header("origin", "https://evil.example")
                    .body(())
                    .unwrap(),
                Limit::None,
                StatusCode::FORBIDDEN,
            ),
            (
                connect("/ws").body(()).unwrap(),
                Limit::Total,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                connect("/ws").body(()).unwrap(),
                Limit::Draining,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                connect("/ws").body(()).unwrap(),
                Limit::PerIp,
                StatusCode::TOO_MANY_REQUESTS,
            ),
            (
                Request::get("/ws").body(()).unwrap(),
                Limit::None,
                StatusCode::BAD_REQUEST,
            ),
            (
                Request::post("/ws").body(()).unwrap(),
                Limit::None,
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Request::builder()
                    .method(Method::CONNECT)
                    .uri("/ws")
                    .body(())
                    .unwrap(),
                Limit::None,
                StatusCode::BAD_REQUEST,
            ),
            // A plain CONNECT, as a proxy client sends it: authority only, no path.
            (
                Request::builder()
                    .method(Method::CONNECT)
                    .uri("example.com:443")
                    .body(())
                    .unwrap(),
                Limit::None,
                StatusCode::BAD_REQUEST,
            ),
            (
                connect("/ws")
                    .extension(hyper::ext::Protocol::from_static("not-websocket"))
                    .body(())
                    .unwrap(),
                Limit::None,
                StatusCode::BAD_REQUEST,
            ),
        ] {
            assert_eq!(h2_status(req, &p, limit), want);
        }
        let mut old = connect("/ws").body(()).unwrap();
        old.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        let r = response_h2(&decide_h2(&old, &p, Limit::None));
        assert_eq!(r.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(r.headers()["sec-websocket-version"], "13");
        // Error answers carry no connection-specific header in HTTP/2.
        assert!(r.headers().get("connection").is_none());
    }

    #[test]
    fn the_console_page_is_served_at_its_path_only() {
        let policy = Policy {
            console: Some(("/console".into(), Bytes::from_static(b"<html></html>"))),
            ..Policy::for_path("/ws")
        };
        let get = |method: Method, path: &str| {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap();
            response(&decide(&req, &policy, Limit::Total))
        };
        let page = get(Method::GET, "/console");
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(page.headers()["connection"], "close");
        assert_eq!(get(Method::HEAD, "/console").status(), StatusCode::OK);
        let post = get(Method::POST, "/console");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()["allow"], "GET, HEAD");
        // Every other answer stays as it was.
        assert_eq!(get(Method::GET, "/").status(), StatusCode::NOT_FOUND);
        assert_eq!(get(Method::GET, "/ws").status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            get(Method::GET, "/console/x").status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn permessage_deflate_is_negotiated_only_when_on_and_offered() {
        let ours = crate::deflate::Preferences {
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            server_no_context_takeover: true,
            client_no_context_takeover: false,
        };
        let on = Policy {
            deflate: Some(ours),
            ..Policy::for_path("/ws")
        };
        let offer = || {
            upgrade()
                .header(
                    "Sec-WebSocket-Extensions",
                    "permessage-deflate; client_max_window_bits",
                )
                .body(())
                .unwrap()
        };
        let d = decide(&offer(), &on, Limit::None);
        let r = response(&d);
        assert_eq!(
            r.headers()["sec-websocket-extensions"],
            "permessage-deflate; server_no_context_takeover"
        );
        // Off, or not offered: no extension in the answer.
        let off = Policy::for_path("/ws");
        let r = response(&decide(&offer(), &off, Limit::None));
        assert!(r.headers().get("sec-websocket-extensions").is_none());
        let r = response(&decide(&upgrade().body(()).unwrap(), &on, Limit::None));
        assert!(r.headers().get("sec-websocket-extensions").is_none());
    }

    #[test]
    fn first_offered_supported_subprotocol_is_selected() {
        let policy = Policy {
            subprotocols: vec!["chat.v2".into(), "chat.v1".into()],
            ..Policy::for_path("/ws")
        };
        let req = upgrade()
            .header("Sec-WebSocket-Protocol", "mqtt, chat.v1")
            .header("Sec-WebSocket-Protocol", "chat.v2")
            .body(())
            .unwrap();
        let Decision::Upgrade { protocol, .. } = decide(&req, &policy, Limit::None) else {
            panic!()
        };
        assert_eq!(protocol.as_deref(), Some("chat.v1"));
        let r = response(&Decision::Upgrade {
            accept: "x".into(),
            protocol,
            deflate: None,
        });
        assert_eq!(r.headers()["sec-websocket-protocol"], "chat.v1");

        // None offered on our list: allowed without a protocol, unless required.
        let req = upgrade()
            .header("Sec-WebSocket-Protocol", "mqtt")
            .body(())
            .unwrap();
        assert!(matches!(
            decide(&req, &policy, Limit::None),
            Decision::Upgrade { protocol: None, .. }
        ));
        let strict = Policy {
            require_subprotocol: true,
            ..policy
        };
        assert_eq!(
            status_with(upgrade().body(()).unwrap(), &strict),
            StatusCode::BAD_REQUEST
        );
    }
}
