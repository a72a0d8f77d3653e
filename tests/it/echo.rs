//! The echo itself, over real sockets.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

use crate::util::{TIMEOUT, daemon, echo, recv};

#[tokio::test]
async fn text_and_binary_keep_their_type() {
    let d = daemon().start().await;
    let mut ws = d.connect().await;
    echo(&mut ws, Message::text("hello")).await;
    echo(&mut ws, Message::binary(vec![0u8, 1, 2, 255])).await;
    echo(&mut ws, Message::text("")).await;
    echo(&mut ws, Message::text("x".repeat(100_000))).await;
    echo(&mut ws, Message::binary(vec![7u8; 1 << 20])).await;
}

#[tokio::test]
async fn the_greeting_comes_first_with_its_placeholders_filled_in() {
    let d = daemon()
        .config("[websocket]\ngreeting = \"Request served by {hostname} to {peer} via {local}, {{conn}} {conn_id}\"\n")
        .start()
        .await;
    let mut ws = d.connect().await;
    // The client's own address is the daemon's peer, and the daemon's the client's peer.
    let client = ws.get_ref().local_addr().unwrap();
    let server = ws.get_ref().peer_addr().unwrap();
    let Message::Text(greeting) = recv(&mut ws).await else {
        panic!("the greeting is a text message")
    };
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(
        greeting.as_str(),
        format!("Request served by {host} to {client} via {server}, {{conn}} 1")
    );
    // Then an exact echo.
    echo(&mut ws, Message::text("after")).await;
}

#[tokio::test]
async fn by_default_there_is_no_greeting() {
    let d = daemon().start().await;
    let mut ws = d.connect().await;
    ws.send(Message::binary(vec![9u8])).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::binary(vec![9u8]));
}

#[tokio::test]
async fn reply_prefix_from_config() {
    let d = daemon()
        .config("[websocket]\nreply_prefix = \"서버에서 응답: \"\n")
        .start()
        .await;
    let mut ws = d.connect().await;
    ws.send(Message::text("안녕")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("서버에서 응답: 안녕"));
    echo(&mut ws, Message::binary(vec![1u8, 2])).await;
}

fn fragment(op: OpCode, fin: bool, data: &[u8]) -> Message {
    let mut f = Frame::message(data.to_vec(), op, fin);
    f.header_mut().is_final = fin;
    Message::Frame(f)
}

#[tokio::test]
async fn fragments_are_reassembled_and_oversize_gets_1009() {
    let d = daemon()
        .config("[websocket]\nmax_message_size = \"1KiB\"\nmax_frame_size = \"1KiB\"\n")
        .start()
        .await;
    let mut ws = d.connect().await;
    ws.send(fragment(OpCode::Data(Data::Text), false, b"frag"))
        .await
        .unwrap();
    ws.send(fragment(OpCode::Data(Data::Continue), false, b"men"))
        .await
        .unwrap();
    ws.send(fragment(OpCode::Data(Data::Continue), true, b"ted"))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("fragmented"));
    echo(&mut ws, Message::binary(vec![0u8; 1024])).await;
    ws.send(Message::binary(vec![0u8; 1025])).await.unwrap();
    let Message::Close(Some(f)) = recv(&mut ws).await else {
        panic!("expected close")
    };
    assert_eq!(f.code, CloseCode::Size);
    d.wait_metric("wsechod_close_frames_sent_total{code=\"1009\"}", 1.0)
        .await;
}

#[tokio::test]
async fn invalid_utf8_gets_1007() {
    let d = daemon().start().await;
    let mut ws = d.connect().await;
    let f = Frame::message(vec![b'o', b'k', 0xc3, 0x28], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(f)).await.unwrap();
    let Message::Close(Some(f)) = recv(&mut ws).await else {
        panic!("expected close")
    };
    assert_eq!(f.code, CloseCode::Invalid);
    d.wait_metric(
        "wsechod_connections_aborted_total{reason=\"protocol_error\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn pings_are_answered() {
    let d = daemon().start().await;
    let mut ws = d.connect().await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut ws).await,
        Message::Pong(b"are you there".to_vec().into())
    );
}

#[tokio::test]
async fn client_close_gets_its_own_code_and_reason_then_tcp_ends() {
    let d = daemon().start().await;
    let mut ws = d.connect().await;
    echo(&mut ws, Message::text("one")).await;
    let frame = CloseFrame {
        code: CloseCode::Library(4321),
        reason: "done here".into(),
    };
    ws.close(Some(frame.clone())).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::Close(Some(frame)));
    // Then the server ends the TCP connection.
    let end = tokio::time::timeout(TIMEOUT, ws.next()).await.unwrap();
    assert!(end.is_none() || end.unwrap().is_err());
    d.wait_metric("wsechod_connections_ended_total{state=\"closed\"}", 1.0)
        .await;
    let text = d.scrape().await;
    let other = "wsechod_close_frames_received_total{code=\"other\"}";
    assert_eq!(crate::util::metric_value(&text, other), 1.0);
}

#[tokio::test]
async fn debug_log_names_type_and_size_but_not_content_by_default() {
    let d = daemon().env("RUST_LOG", "debug").start().await;
    let mut ws = d.connect().await;
    echo(&mut ws, Message::text("secret-content")).await;
    ws.close(None).await.unwrap();
    d.wait_metric("wsechod_connections_ended_total{state=\"closed\"}", 1.0)
        .await;
    let log = d.wait_stderr("type=\"text\" size=14").await;
    assert!(log.contains("conn{conn_id=1 peer=127.0.0.1:"), "{log}");
    assert!(!log.contains("secret-content"), "{log}");
}

#[tokio::test]
async fn content_is_logged_truncated_when_enabled() {
    let d = daemon()
        .env("RUST_LOG", "debug")
        .config("[websocket]\nlog_message_content = true\n")
        .start()
        .await;
    let mut ws = d.connect().await;
    let long = format!("visible-{}", "z".repeat(500));
    echo(&mut ws, Message::text(long)).await;
    ws.close(None).await.unwrap();
    d.wait_metric("wsechod_connections_ended_total{state=\"closed\"}", 1.0)
        .await;
    let log = d.wait_stderr("visible-").await;
    assert!(!log.contains(&"z".repeat(200)), "content must be truncated");
}

#[tokio::test]
async fn no_ansi_colours_when_stderr_is_not_a_terminal() {
    let d = daemon().start().await;
    let log = d.wait_stderr("listening on ws://127.0.0.1:").await;
    assert!(!log.contains('\x1b'), "{log:?}");
}
