//! Origin policy, subprotocol negotiation and TLS (wss://).

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::util::{UPGRADE, daemon, echo, http_get};

#[tokio::test]
async fn origin_allow_list_is_exact() {
    let d = daemon()
        .config(
            "[server]\nallowed_origins = [\"https://example.com\", \"http://localhost:8080\"]\n",
        )
        .start()
        .await;
    let status = |origin: &'static str| {
        let addr = d.ws_addr();
        async move {
            let mut headers = UPGRADE.to_vec();
            headers.push(("Origin", origin));
            http_get(addr, "/ws", &headers).await.0
        }
    };
    for bad in [
        "https://example.com.evil.test",
        "https://evilexample.com",
        "null",
        "http://example.com",
        "https://example.com:8443",
        "http://localhost:8081",
    ] {
        assert_eq!(status(bad).await, 403, "{bad}");
    }
    // An allowed origin upgrades (shown by a real client), and so does no Origin at all.
    let mut req = d.url().into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", "https://EXAMPLE.com:443".parse().unwrap());
    let tcp = TcpStream::connect(d.ws_addr()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    echo(&mut ws, Message::text("same origin")).await;
    let mut no_origin = d.connect().await;
    echo(&mut no_origin, Message::text("cli client")).await;
    d.wait_metric("wsechod_handshakes_rejected_total{status=\"403\"}", 6.0)
        .await;
}

#[tokio::test]
async fn require_origin_refuses_requests_without_one() {
    let d = daemon()
        .config("[server]\nrequire_origin = true\n")
        .start()
        .await;
    assert_eq!(http_get(d.ws_addr(), "/ws", &UPGRADE).await.0, 403);
}

#[tokio::test]
async fn subprotocol_is_negotiated() {
    let d = daemon()
        .config("[server]\nsubprotocols = [\"echo.v2\", \"echo.v1\"]\nrequire_subprotocol = true\n")
        .start()
        .await;
    let mut req = d.url().into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt, echo.v1".parse().unwrap());
    let tcp = TcpStream::connect(d.ws_addr()).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "echo.v1");
    echo(&mut ws, Message::text("v1")).await;
    // Required: a client offering nothing we speak gets 400.
    let mut headers = UPGRADE.to_vec();
    headers.push(("Sec-WebSocket-Protocol", "mqtt"));
    assert_eq!(http_get(d.ws_addr(), "/ws", &headers).await.0, 400);
}

/// A self-signed certificate for `localhost`, as PEM files in `dir`.
fn certificate(dir: &std::path::Path, name: &str) -> (CertificateDer<'static>, String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    (
        c.cert.der().clone(),
        cert.display().to_string(),
        key.display().to_string(),
    )
}

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Connects over TLS trusting only `trusted`; returns the socket and the server's leaf, and
/// checks that the 101 came from the fast path (hyper's would carry `date`).
async fn connect_tls(
    addr: std::net::SocketAddr,
    trusted: &CertificateDer<'static>,
) -> (Wss, Vec<u8>) {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (ws, resp) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert!(
        resp.headers().get("date").is_none(),
        "hyper answered over TLS, not the fast path: {:?}",
        resp.headers()
    );
    (ws, leaf)
}

#[tokio::test]
async fn tls_serves_wss_and_reloads_the_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (first, cert, key) = certificate(dir.path(), "first");
    let config = format!("[tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n");
    let mut d = daemon().config(&config).start().await;
    assert!(
        d.messages
            .iter()
            .any(|m| m.contains("READY=1") && m.contains("wss://127.0.0.1:")),
        "{:?}",
        d.messages
    );
    let (mut old, leaf) = connect_tls(d.ws_addr(), &first).await;
    assert_eq!(leaf, first.to_vec());
    old.send(Message::text("secure")).await.unwrap();
    assert_eq!(old.next().await.unwrap().unwrap(), Message::text("secure"));

    // Plain ws:// on the TLS port fails the handshake.
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio_tungstenite::client_async(
                d.url(),
                TcpStream::connect(d.ws_addr()).await.unwrap()
            )
        )
        .await
        .unwrap()
        .is_err()
    );

    // A renewed certificate: new sessions get it, the open one keeps working.
    let (second, cert2, key2) = certificate(dir.path(), "second");
    d.write_config(&format!(
        "[tls]\ncert_file = \"{cert2}\"\nkey_file = \"{key2}\"\n"
    ));
    d.signal(Signal::SIGHUP);
    d.wait_for_notify("RELOADING=1").await;
    let ready = d.wait_for_notify("READY=1").await;
    assert!(ready.contains("last reload OK"), "{ready}");
    let (mut new, leaf) = connect_tls(d.ws_addr(), &second).await;
    assert_eq!(leaf, second.to_vec());
    new.send(Message::binary(vec![1u8, 2])).await.unwrap();
    assert_eq!(
        new.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2])
    );
    old.send(Message::text("old session")).await.unwrap();
    assert_eq!(
        old.next().await.unwrap().unwrap(),
        Message::text("old session")
    );

    // A missing key file on reload keeps the running certificate.
    d.write_config(&format!(
        "[tls]\ncert_file = \"{cert2}\"\nkey_file = \"/nonexistent.key\"\n"
    ));
    d.signal(Signal::SIGHUP);
    d.wait_for_notify("RELOADING=1").await;
    let ready = d.wait_for_notify("READY=1").await;
    assert!(
        ready.contains("FAILED") && ready.contains("tls.key_file"),
        "{ready}"
    );
    let (_again, leaf) = connect_tls(d.ws_addr(), &second).await;
    assert_eq!(leaf, second.to_vec());
}

#[test]
fn missing_certificate_is_a_config_error() {
    let (code, _, err) = crate::util::run(
        &["--check-config", "-c", "/dev/null"],
        &[
            ("WSECHOD_TLS__CERT_FILE", "/nonexistent.crt"),
            ("WSECHOD_TLS__KEY_FILE", "/nonexistent.key"),
        ],
    );
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("tls.cert_file") && err.contains("/nonexistent.crt"),
        "{err}"
    );
}
