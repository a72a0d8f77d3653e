//! The HTTP front: statuses for everything that is not a valid upgrade.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{UPGRADE, daemon, http_get, http_raw};

#[tokio::test]
async fn statuses() {
    let d = daemon().start().await;
    let addr = d.ws_addr();

    let (status, text) = http_get(addr, "/ws", &[]).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.ends_with("not a WebSocket request\n"), "{text}");

    let (status, _) = http_get(addr, "/elsewhere", &[]).await;
    assert_eq!(status, 404);

    let (status, text) = http_raw(
        addr,
        b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405, "{text}");
    assert!(text.to_ascii_lowercase().contains("allow: get"), "{text}");

    let mut headers = UPGRADE.to_vec();
    headers[2] = ("Sec-WebSocket-Version", "8");
    let (status, text) = http_get(addr, "/ws", &headers).await;
    assert_eq!(status, 426, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{text}"
    );

    let mut headers = UPGRADE.to_vec();
    headers[3] = ("Sec-WebSocket-Key", "not base64");
    let (status, _) = http_get(addr, "/ws", &headers).await;
    assert_eq!(status, 400);

    let mut ws = d.connect().await;
    crate::util::echo(&mut ws, "still fine".into()).await;

    let text = d.scrape().await;
    for (code, n) in [("400", 2.0), ("404", 1.0), ("405", 1.0), ("426", 1.0)] {
        let series = format!("wsechod_handshakes_rejected_total{{status=\"{code}\"}}");
        assert_eq!(crate::util::metric_value(&text, &series), n, "{series}");
    }
}

#[tokio::test]
async fn the_console_page_connects_to_the_configured_path() {
    let d = daemon()
        .config("[server]\npath = \"/echo\"\n[console]\npath = \"/try\"\n")
        .start()
        .await;
    let (status, text) = http_get(d.ws_addr(), "/try", &[]).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("content-type: text/html; charset=utf-8"),
        "{text}"
    );
    assert!(
        text.contains(r#"<meta name="wsechod-ws-path" content="/echo">"#),
        "{text}"
    );
    // The other answers are unchanged: / is 404, the WebSocket path 400 to a plain GET.
    assert_eq!(http_get(d.ws_addr(), "/", &[]).await.0, 404);
    assert_eq!(http_get(d.ws_addr(), "/echo", &[]).await.0, 400);
    assert_eq!(http_get(d.ws_addr(), "/console", &[]).await.0, 404);
    d.wait_metric(
        "wsechod_connections_aborted_total{reason=\"console_page\"}",
        1.0,
    )
    .await;
    // Off: 404.
    let off = daemon()
        .config("[console]\nenabled = false\n")
        .start()
        .await;
    assert_eq!(http_get(off.ws_addr(), "/console", &[]).await.0, 404);
}

#[tokio::test]
async fn configured_path_is_used() {
    let d = daemon()
        .config("[server]\npath = \"/echo\"\n")
        .start()
        .await;
    let (status, _) = http_get(d.ws_addr(), "/ws", &[]).await;
    assert_eq!(status, 404);
    let mut ws = crate::util::connect(&format!("ws://{}/echo", d.ws_addr())).await;
    crate::util::echo(&mut ws, "hi".into()).await;
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let d = daemon()
        .config("[server]\nmax_header_size = \"8KiB\"\n")
        .start()
        .await;
    let big = "a".repeat(16 * 1024);
    let (status, _) = http_get(d.ws_addr(), "/ws", &[("X-Big", &big)]).await;
    assert_eq!(status, 431);
}

#[tokio::test]
async fn slow_client_is_dropped_after_handshake_timeout() {
    let d = daemon()
        .config("[server]\nhandshake_timeout = \"500ms\"\n")
        .start()
        .await;
    let mut s = TcpStream::connect(d.ws_addr()).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    // The server must end the connection; the bound is generous, the point is "not never".
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("a slow client must be dropped")
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(400));
    d.wait_metric(
        "wsechod_connections_aborted_total{reason=\"handshake_failed\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn garbage_bytes_get_an_error_not_a_hang() {
    let d = daemon().start().await;
    let (status, _) = http_raw(
        d.ws_addr(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    )
    .await;
    assert!(status == 400 || status == 0, "{status}");
    d.wait_metric("wsechod_connections{state=\"connecting\"}", 0.0)
        .await;
}

#[tokio::test]
async fn a_port_probe_is_no_request_not_a_rejection() {
    let d = daemon().start().await;
    // A TCP health check: connect, send nothing, close.
    drop(TcpStream::connect(d.ws_addr()).await.unwrap());
    d.wait_metric(
        "wsechod_connections_aborted_total{reason=\"no_request\"}",
        1.0,
    )
    .await;
    let text = d.scrape().await;
    let v = |s: &str| crate::util::metric_value(&text, s);
    assert_eq!(
        v("wsechod_connections_aborted_total{reason=\"handshake_rejected\"}"),
        0.0
    );
    assert_eq!(v("wsechod_handshakes_rejected_total{status=\"400\"}"), 0.0);
}

/// An upgrade request and the client's first frame in one write: the 101 comes from the
/// fast path (hyper's would carry `date`), and the frame behind the head is echoed. With
/// HTTP/2 on (the shipped default) and off: both read the request the same way.
#[tokio::test]
async fn a_request_and_its_first_frame_in_one_write_take_the_fast_path() {
    for config in ["", "[http2]\nenabled = false\n"] {
        let d = daemon().config(config).start().await;
        let mut s = TcpStream::connect(d.ws_addr()).await.unwrap();
        let mut out =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                .to_vec();
        // A masked text frame "early" (mask 0: the payload goes as is).
        out.extend_from_slice(b"\x81\x85\0\0\0\0early");
        s.write_all(&out).await.unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !got.ends_with(b"\x81\x05early") {
            assert!(Instant::now() < deadline, "no echo: {got:?}");
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("the daemon answers")
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(
            head.starts_with("http/1.1 101 switching protocols\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nsec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
            "{head}"
        );
        assert!(
            !head.contains("\r\ndate:"),
            "hyper answered, not the fast path: {head}"
        );
        assert_eq!(
            d.metric("wsechod_handshakes_total{http=\"1.1\"}").await,
            1.0
        );
    }
}
