//! The echo loop over `tokio::io::duplex`, on tokio's paused clock where timers matter: a
//! keepalive schedule of minutes runs in microseconds and never flakes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use super::close::{LINGER_IDLE, LINGER_QUIET};
use super::*;
use crate::config::{ByteSize, Config, Dur};

/// How the server side ended, read before its tracker was dropped (a tracker dropped while
/// live records Reset by itself; these tests check what the loop recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct End {
    state: ConnState,
    reason: Option<AbortReason>,
}

struct Harness {
    client: WebSocketStream<DuplexStream>,
    metrics: Arc<Metrics>,
    drain: Arc<Drain>,
    server: tokio::task::JoinHandle<End>,
}

fn settings(change: impl FnOnce(&mut Config)) -> Settings {
    let mut c = Config::default();
    change(&mut c);
    c.validate().expect("a valid test configuration");
    Settings::new(&c).unwrap()
}

/// Starts the loop on one end of a pipe of `pipe` bytes and a client on the other.
async fn start_with(settings: Settings, pipe: usize) -> Harness {
    let (a, b) = tokio::io::duplex(pipe);
    let metrics = Arc::new(Metrics::new());
    let drain = Arc::new(Drain::new());
    let server = {
        let (metrics, drain) = (metrics.clone(), drain.clone());
        tokio::spawn(async move {
            let tracker = ConnTracker::new(metrics.clone());
            serve(a, Opening::default(), &tracker, &metrics, &settings, &drain).await;
            let state = tracker.state();
            let reason = AbortReason::ALL
                .into_iter()
                .find(|r| metrics.aborted_for(*r) > 0);
            End { state, reason }
        })
    };
    let cfg = WebSocketConfig::default()
        .max_frame_size(None)
        .max_message_size(None);
    let client = WebSocketStream::from_raw_socket(b, Role::Client, Some(cfg)).await;
    Harness {
        client,
        metrics,
        drain,
        server,
    }
}

async fn start(settings: Settings) -> Harness {
    start_with(settings, 1 << 16).await
}

/// Longer than any timer in these tests, in virtual time.
const PATIENCE: Duration = Duration::from_secs(3600);

async fn recv(ws: &mut WebSocketStream<DuplexStream>) -> Message {
    tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("no answer")
        .expect("stream ended")
        .expect("read error")
}

async fn recv_close(ws: &mut WebSocketStream<DuplexStream>) -> CloseFrame {
    loop {
        match recv(ws).await {
            Message::Close(Some(f)) => return f,
            Message::Ping(_) => {}
            m => panic!("expected a close frame, got {m:?}"),
        }
    }
}

async fn end(server: tokio::task::JoinHandle<End>) -> End {
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("server did not end")
        .unwrap()
}

fn closed() -> End {
    End {
        state: ConnState::Closed,
        reason: None,
    }
}

fn aborted(r: AbortReason) -> End {
    End {
        state: ConnState::Aborted,
        reason: Some(r),
    }
}

fn part(op: OpCode, fin: bool, data: &[u8]) -> Message {
    let mut f = Frame::message(data.to_vec(), op, fin);
    f.header_mut().is_final = fin;
    Message::Frame(f)
}

#[tokio::test]
async fn echoes_text_and_binary_keeping_type_small_and_large() {
    let mut h = start(Settings::default()).await;
    for m in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 255]),
        Message::text(""),
        Message::text("안녕하세요".repeat(100)),
        Message::binary(vec![7u8; 1 << 20]),
    ] {
        h.client.send(m.clone()).await.unwrap();
        assert_eq!(recv(&mut h.client).await, m);
    }
    h.client.close(None).await.unwrap();
    assert!(matches!(recv(&mut h.client).await, Message::Close(None)));
    let metrics = h.metrics.clone();
    assert_eq!(end(h.server).await, closed());
    assert_eq!(metrics.messages_received_total(), 5);
}

#[tokio::test]
async fn pipelined_messages_of_every_size_come_back_in_order() {
    // Large echoes go out past tungstenite's buffer; small ones through it: order holds.
    let h = start_with(Settings::default(), 4096).await;
    let msg = |i: usize| {
        let size = [5, 900, 1024, 3000, 20_000][i % 5];
        Message::binary(vec![(i % 251) as u8; size])
    };
    let (mut tx, mut rx) = h.client.split();
    let writer = tokio::spawn(async move {
        for i in 0..300 {
            tx.feed(msg(i)).await.unwrap();
        }
        tx.flush().await.unwrap();
        tx
    });
    for i in 0..300 {
        let got = tokio::time::timeout(PATIENCE, rx.next()).await.unwrap();
        assert_eq!(got.unwrap().unwrap(), msg(i), "message {i}");
    }
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn reply_prefix_applies_to_text_only() {
    let mut h = start(settings(|c| {
        c.websocket.reply_prefix = "서버에서 응답: ".into()
    }))
    .await;
    h.client.send(Message::text("안녕")).await.unwrap();
    assert_eq!(
        recv(&mut h.client).await,
        Message::text("서버에서 응답: 안녕")
    );
    h.client.send(Message::binary(vec![1u8])).await.unwrap();
    assert_eq!(recv(&mut h.client).await, Message::binary(vec![1u8]));
}

#[tokio::test]
async fn client_close_is_answered_with_its_code_and_reason() {
    let mut h = start(Settings::default()).await;
    let frame = CloseFrame {
        code: CloseCode::Library(4321),
        reason: "bye".into(),
    };
    h.client.close(Some(frame.clone())).await.unwrap();
    assert_eq!(recv(&mut h.client).await, Message::Close(Some(frame)));
    let metrics = h.metrics.clone();
    assert_eq!(end(h.server).await, closed());
    let text = String::from_utf8(metrics.encode()).unwrap();
    assert!(text.contains("wsechod_close_frames_sent_total{code=\"other\"} 1"));
}

#[tokio::test]
async fn pings_are_answered() {
    let mut h = start(Settings::default()).await;
    h.client
        .send(Message::Ping(vec![7u8].into()))
        .await
        .unwrap();
    assert_eq!(recv(&mut h.client).await, Message::Pong(vec![7u8].into()));
}

#[tokio::test]
async fn too_big_message_gets_1009_and_is_a_protocol_error() {
    let mut h = start(settings(|c| c.websocket.max_message_size = ByteSize(1000))).await;
    h.client
        .send(Message::binary(vec![0u8; 1001]))
        .await
        .unwrap();
    let f = recv_close(&mut h.client).await;
    assert_eq!(
        (f.code, f.reason.as_str()),
        (CloseCode::Size, "message too big")
    );
    drop(h.client);
    assert_eq!(end(h.server).await, aborted(AbortReason::ProtocolError));
}

#[tokio::test]
async fn fragmented_message_is_reassembled_up_to_the_limit() {
    let mut h = start(settings(|c| c.websocket.max_message_size = ByteSize(1000))).await;
    h.client
        .send(part(OpCode::Data(Data::Text), false, b"hel"))
        .await
        .unwrap();
    h.client
        .send(part(OpCode::Data(Data::Continue), true, b"lo"))
        .await
        .unwrap();
    assert_eq!(recv(&mut h.client).await, Message::text("hello"));
    // 3 × 400 bytes: every frame fits, the message does not.
    for (op, fin) in [
        (Data::Binary, false),
        (Data::Continue, false),
        (Data::Continue, true),
    ] {
        h.client
            .send(part(OpCode::Data(op), fin, &[0; 400]))
            .await
            .unwrap();
    }
    assert_eq!(recv_close(&mut h.client).await.code, CloseCode::Size);
}

#[tokio::test]
async fn invalid_utf8_gets_1007_and_protocol_errors_1002() {
    let mut h = start(Settings::default()).await;
    let f = Frame::message(vec![0xff, 0xfe], OpCode::Data(Data::Text), true);
    h.client.send(Message::Frame(f)).await.unwrap();
    assert_eq!(recv_close(&mut h.client).await.code, CloseCode::Invalid);

    let mut h = start(Settings::default()).await;
    let mut f = Frame::message(vec![1u8], OpCode::Data(Data::Binary), true);
    f.header_mut().rsv2 = true;
    h.client.send(Message::Frame(f)).await.unwrap();
    let f = recv_close(&mut h.client).await;
    assert_eq!(
        (f.code, f.reason.as_str()),
        (CloseCode::Protocol, "Protocol violation")
    );
}

#[tokio::test]
async fn an_oversized_message_is_read_to_its_end_so_the_client_sees_1009() {
    // The client writes a 256 KiB frame over a 64 KiB limit through a 4 KiB pipe: it can
    // only finish (and then read our close) if the server keeps reading after failing.
    let mut h = start_with(
        settings(|c| c.websocket.max_message_size = ByteSize(64 * 1024)),
        4096,
    )
    .await;
    h.client
        .send(Message::binary(vec![1u8; 256 * 1024]))
        .await
        .expect("the whole message is taken");
    assert_eq!(recv_close(&mut h.client).await.code, CloseCode::Size);
    drop(h.client);
    assert_eq!(end(h.server).await, aborted(AbortReason::ProtocolError));
}

/// The loop on one end of a pipe; the raw other end, for a client that breaks the rules.
fn start_raw() -> (DuplexStream, tokio::task::JoinHandle<End>) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        let metrics = Arc::new(Metrics::new());
        let tracker = ConnTracker::new(metrics.clone());
        let settings = Settings::default();
        serve(
            a,
            Opening::default(),
            &tracker,
            &metrics,
            &settings,
            &Drain::new(),
        )
        .await;
        let state = tracker.state();
        let reason = AbortReason::ALL
            .into_iter()
            .find(|r| metrics.aborted_for(*r) > 0);
        End { state, reason }
    });
    (b, server)
}

/// Sends an unmasked frame (1002) and reads the server's close frame; returns its code.
async fn fail_with_unmasked_frame(b: &mut DuplexStream) -> u16 {
    b.write_all(&[0x82, 0x01, 0x00]).await.unwrap();
    let mut head = [0u8; 2];
    b.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x88, "a close frame");
    let mut rest = vec![0u8; usize::from(head[1])];
    b.read_exact(&mut rest).await.unwrap();
    u16::from_be_bytes([rest[0], rest[1]])
}

/// After failing a connection the server does not half-close while the client still sends,
/// even with pauses (a proxy, HAProxy or nginx, would end the client's side with ours and
/// reset a client that has more to write). The client's close frame brings the FIN,
/// LINGER_QUIET later.
#[tokio::test(start_paused = true)]
async fn after_failing_we_half_close_only_after_the_clients_close_frame() {
    let (mut b, server) = start_raw();
    assert_eq!(fail_with_unmasked_frame(&mut b).await, 1002);
    let mut one = [0u8; 1];
    let pause = LINGER_IDLE / 2;
    for i in 0..10 {
        b.write_all(&[0x88; 4096]).await.unwrap();
        let read = tokio::time::timeout(pause, b.read(&mut one)).await;
        assert!(
            read.is_err(),
            "no FIN while the client sends (chunk {i}): {read:?}"
        );
    }
    b.write_all(&masked(0x8, &1002u16.to_be_bytes()))
        .await
        .unwrap();
    let t0 = Instant::now();
    let n = tokio::time::timeout(PATIENCE, b.read(&mut one))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "our FIN");
    let waited = t0.elapsed();
    assert!(
        waited >= LINGER_QUIET && waited <= LINGER_QUIET + Duration::from_millis(5),
        "{waited:?}"
    );
    // The client's FIN ends the connection at once.
    b.shutdown().await.unwrap();
    let t1 = Instant::now();
    assert_eq!(end(server).await, aborted(AbortReason::ProtocolError));
    assert!(
        t1.elapsed() < Duration::from_millis(5),
        "{:?}",
        t1.elapsed()
    );
}

/// A client that neither sends nor closes gets our FIN after LINGER_IDLE, and the server
/// gives up LINGER_IDLE after that.
#[tokio::test(start_paused = true)]
async fn after_failing_a_silent_client_gets_our_fin_after_linger_idle() {
    let (mut b, server) = start_raw();
    assert_eq!(fail_with_unmasked_frame(&mut b).await, 1002);
    let t0 = Instant::now();
    let mut one = [0u8; 1];
    let n = tokio::time::timeout(PATIENCE, b.read(&mut one))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "our FIN");
    let waited = t0.elapsed();
    assert!(
        waited >= LINGER_IDLE && waited <= LINGER_IDLE + Duration::from_millis(5),
        "{waited:?}"
    );
    assert_eq!(end(server).await, aborted(AbortReason::ProtocolError));
    let ended = t0.elapsed();
    assert!(
        ended >= 2 * LINGER_IDLE && ended <= 2 * LINGER_IDLE + Duration::from_millis(5),
        "{ended:?}"
    );
}

/// A malformed close frame that fails the connection (Autobahn 7.3.2) is the client's last
/// frame: it waits for our FIN, and gets it LINGER_QUIET after our close frame.
#[tokio::test(start_paused = true)]
async fn a_malformed_close_frame_gets_our_fin_after_linger_quiet() {
    let (mut b, server) = start_raw();
    b.write_all(&masked(0x8, &[3])).await.unwrap();
    let mut head = [0u8; 2];
    b.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x88, "a close frame");
    let mut rest = vec![0u8; usize::from(head[1])];
    b.read_exact(&mut rest).await.unwrap();
    assert_eq!(u16::from_be_bytes([rest[0], rest[1]]), 1002);
    let t0 = Instant::now();
    let mut one = [0u8; 1];
    let n = tokio::time::timeout(PATIENCE, b.read(&mut one))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "our FIN");
    let waited = t0.elapsed();
    assert!(
        waited >= LINGER_QUIET && waited <= LINGER_QUIET + Duration::from_millis(5),
        "{waited:?}"
    );
    drop(b);
    assert_eq!(end(server).await, aborted(AbortReason::ProtocolError));
}

/// A client that sends to the end and then closes its side gets our FIN at once, without
/// waiting for LINGER_QUIET.
#[tokio::test(start_paused = true)]
async fn after_failing_a_client_that_closes_gets_our_fin_at_once() {
    let (mut b, server) = start_raw();
    assert_eq!(fail_with_unmasked_frame(&mut b).await, 1002);
    b.write_all(&[0u8; 50_000]).await.unwrap();
    b.shutdown().await.unwrap();
    let t0 = Instant::now();
    let mut rest = Vec::new();
    b.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "nothing after the close frame: {rest:?}");
    assert!(
        t0.elapsed() < Duration::from_millis(5),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(end(server).await, aborted(AbortReason::ProtocolError));
}

#[tokio::test]
async fn reset_without_close_is_aborted_by_the_loop() {
    let h = start(Settings::default()).await;
    drop(h.client);
    let e = tokio::time::timeout(PATIENCE, h.server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e, aborted(AbortReason::Reset));
}

#[tokio::test]
async fn a_message_before_the_fin_is_still_echoed() {
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let metrics = Arc::new(Metrics::new());
    let server = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let tracker = ConnTracker::new(metrics.clone());
            let settings = Settings::default();
            serve(
                a,
                Opening::default(),
                &tracker,
                &metrics,
                &settings,
                &Drain::new(),
            )
            .await;
            tracker.state()
        })
    };
    // A masked text frame "hi", then the client half-closes.
    b.write_all(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .await
        .unwrap();
    b.shutdown().await.unwrap();
    let mut got = Vec::new();
    b.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, [0x81, 0x02, b'h', b'i']);
    assert_eq!(server.await.unwrap(), ConnState::Aborted);
}

/// The drain's promise, exactly: everything read before our close frame is echoed ahead of
/// it, and everything read after it is discarded and counted.
#[tokio::test]
async fn drain_echoes_exactly_what_was_read_before_the_close() {
    let mut h = start(settings(|c| c.shutdown.close_reason = "bye now".into())).await;
    for i in 0..100 {
        h.client.feed(Message::text(i.to_string())).await.unwrap();
    }
    h.client.flush().await.unwrap();
    // The 100 messages sit in the pipe, unread by the server, when the drain starts.
    h.drain.start(1, 0, Duration::from_secs(10));
    let mut echoes = Vec::new();
    let close = loop {
        match recv(&mut h.client).await {
            Message::Close(f) => break f.expect("a code"),
            m => echoes.push(m),
        }
    };
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::Normal, "bye now")
    );
    let want: Vec<_> = (0..100).map(|i| Message::text(i.to_string())).collect();
    assert_eq!(
        echoes, want,
        "every message waiting at the drain is echoed first"
    );
    // Our reply completes the handshake (tungstenite sends it on the next poll).
    assert!(h.client.next().await.is_none());
    let metrics = h.metrics.clone();
    assert_eq!(end(h.server).await, closed());
    assert_eq!(metrics.messages_discarded(), 0);
}

/// A client frame, masked with a fixed key.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [1u8, 2, 3, 4];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

#[tokio::test]
async fn data_after_our_close_frame_is_discarded_and_counted() {
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let metrics = Arc::new(Metrics::new());
    let drain = Arc::new(Drain::new());
    let server = {
        let (metrics, drain) = (metrics.clone(), drain.clone());
        tokio::spawn(async move {
            let tracker = ConnTracker::new(metrics.clone());
            serve(
                a,
                Opening::default(),
                &tracker,
                &metrics,
                &Settings::default(),
                &drain,
            )
            .await;
            tracker.state()
        })
    };
    drain.start(1, 0, Duration::from_secs(10));
    // Our close frame: 0x88, length, code 1000, "server shutting down".
    let mut head = [0u8; 2];
    b.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x88);
    let mut rest = vec![0u8; usize::from(head[1])];
    b.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest[..2], &1000u16.to_be_bytes());
    // The client had a message on the wire before it saw our close; then it answers.
    b.write_all(&masked(0x1, b"late")).await.unwrap();
    b.write_all(&masked(0x8, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let mut tail = Vec::new();
    b.read_to_end(&mut tail).await.unwrap();
    assert!(
        tail.is_empty(),
        "nothing answers the late message: {tail:?}"
    );
    assert_eq!(server.await.unwrap(), ConnState::Closed);
    assert_eq!(metrics.messages_discarded(), 1);
}

#[tokio::test(start_paused = true)]
async fn keepalive_pings_keep_a_live_peer_and_abort_a_dead_one() {
    let s = || {
        settings(|c| {
            c.websocket.ping_interval = Dur::secs(30);
            c.websocket.pong_timeout = Dur::secs(15);
        })
    };
    // A live client: tungstenite answers each ping while we read.
    let mut h = start(s()).await;
    let t0 = Instant::now();
    for n in 1..=4u32 {
        assert_eq!(recv(&mut h.client).await, Message::Ping(Bytes::new()));
        assert_eq!(t0.elapsed(), Duration::from_secs(30) * n, "ping {n}");
    }
    h.client.send(Message::text("alive")).await.unwrap();
    assert_eq!(recv(&mut h.client).await, Message::text("alive"));

    // A dead one never reads, so never answers: aborted 15 s after the first ping.
    let h = start(s()).await;
    let t0 = Instant::now();
    let e = end(h.server).await;
    assert_eq!(e, aborted(AbortReason::PongTimeout));
    assert_eq!(t0.elapsed(), Duration::from_secs(45));
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_quiet_connections_only() {
    let s = || {
        settings(|c| {
            c.websocket.idle_timeout = Dur::secs(60);
            c.websocket.ping_interval = Dur::secs(0);
        })
    };
    let mut busy = start(s()).await;
    let mut quiet = start(s()).await;
    let t0 = Instant::now();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        busy.client.send(Message::text("tick")).await.unwrap();
        assert_eq!(recv(&mut busy.client).await, Message::text("tick"));
    }
    let f = recv_close(&mut quiet.client).await;
    assert_eq!(
        (f.code, f.reason.as_str()),
        (CloseCode::Away, "idle timeout")
    );
    drop(quiet.client);
    assert_eq!(end(quiet.server).await, aborted(AbortReason::IdleTimeout));
    assert!(t0.elapsed() >= Duration::from_secs(200));
    busy.client.send(Message::text("still")).await.unwrap();
    assert_eq!(recv(&mut busy.client).await, Message::text("still"));
}

#[tokio::test(start_paused = true)]
async fn the_idle_close_comes_exactly_idle_timeout_after_the_last_message() {
    // The timer stays armed for the first deadline while messages move the idle deadline
    // later; when it fires early it must find nothing due and be armed for the new one.
    let mut h = start(settings(|c| {
        c.websocket.idle_timeout = Dur::secs(60);
        c.websocket.ping_interval = Dur::secs(0);
    }))
    .await;
    let t0 = Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        h.client.send(Message::text("tick")).await.unwrap();
        assert_eq!(recv(&mut h.client).await, Message::text("tick"));
    }
    let f = tokio::time::timeout(Duration::from_secs(600), recv_close(&mut h.client))
        .await
        .expect("the idle timeout fires");
    assert_eq!(f.reason.as_str(), "idle timeout");
    assert_eq!(t0.elapsed().as_secs(), 90, "{:?}", t0.elapsed());
    drop(h.client);
    assert_eq!(end(h.server).await, aborted(AbortReason::IdleTimeout));
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_closes_within_its_jitter() {
    let mut h = start(settings(|c| c.websocket.max_lifetime = Dur::secs(100))).await;
    let t0 = Instant::now();
    let f = recv_close(&mut h.client).await;
    assert_eq!(
        (f.code, f.reason.as_str()),
        (CloseCode::Away, "maximum connection lifetime reached")
    );
    let lived = t0.elapsed();
    assert!(
        lived >= Duration::from_secs(90) && lived <= Duration::from_secs(100),
        "{lived:?}"
    );
    drop(h.client);
    assert_eq!(end(h.server).await, aborted(AbortReason::MaxLifetime));
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reads_is_aborted_after_write_timeout() {
    let h = start_with(
        settings(|c| c.websocket.write_timeout = Dur::secs(30)),
        8192,
    )
    .await;
    let (mut tx, _never_read) = h.client.split();
    let t0 = Instant::now();
    // Send until the echoes we never read fill the pipe and the server stops reading.
    let mut sent = 0;
    while tokio::time::timeout(
        Duration::from_secs(1),
        tx.send(Message::binary(vec![0u8; 4096])),
    )
    .await
    .is_ok()
    {
        sent += 1;
        assert!(sent < 1000, "the server never pushed back");
    }
    let blocked_at = t0.elapsed();
    let e = tokio::time::timeout(PATIENCE, h.server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e, aborted(AbortReason::WriteTimeout));
    let took = t0.elapsed() - blocked_at;
    assert!(took <= Duration::from_secs(31), "{took:?}");
}

mod compressed {
    //! permessage-deflate on the echo loop, with a client that speaks it by hand.

    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

    use super::*;
    use crate::deflate::Agreed;

    const AGREED: Agreed = Agreed {
        server_window_bits: 15,
        client_window_bits: 15,
        server_no_context_takeover: true,
        client_no_context_takeover: false,
    };

    /// A masked client frame with first byte `b0`.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let key = [9u8, 8, 7, 6];
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    fn deflate(c: &mut Compress, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() * 2 + 1024);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        if out.ends_with(&[0, 0, 0xff, 0xff]) {
            out.truncate(out.len() - 4);
        }
        out
    }

    fn inflate(payload: &[u8]) -> Vec<u8> {
        // Our side resets after every message: each inflates alone.
        let mut d = Decompress::new(false);
        let input = [payload, &[0, 0, 0xff, 0xff]].concat();
        let mut out = Vec::with_capacity(4 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    /// One server frame: (first byte, payload).
    async fn server_frame(b: &mut DuplexStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        b.read_exact(&mut h).await.unwrap();
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut e = [0u8; 2];
                b.read_exact(&mut e).await.unwrap();
                u64::from(u16::from_be_bytes(e))
            }
            127 => {
                let mut e = [0u8; 8];
                b.read_exact(&mut e).await.unwrap();
                u64::from_be_bytes(e)
            }
            n => u64::from(n),
        };
        let mut p = vec![0u8; len as usize];
        b.read_exact(&mut p).await.unwrap();
        (h[0], p)
    }

    /// The loop with compression agreed, on one end of a pipe; the raw other end.
    fn start(settings: Settings) -> (DuplexStream, Arc<Metrics>, tokio::task::JoinHandle<End>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let metrics = Arc::new(Metrics::new());
        let server = {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let tracker = ConnTracker::new(metrics.clone());
                let opening = Opening {
                    deflate: Some(AGREED),
                    ..Opening::default()
                };
                serve(a, opening, &tracker, &metrics, &settings, &Drain::new()).await;
                let state = tracker.state();
                let reason = AbortReason::ALL
                    .into_iter()
                    .find(|r| metrics.aborted_for(*r) > 0);
                End { state, reason }
            })
        };
        (b, metrics, server)
    }

    /// A fuzz finding: the bytes read with the upgrade request went straight to tungstenite,
    /// around the rewriter, so a compressed frame pipelined after the request got 1002.
    #[tokio::test]
    async fn a_compressed_frame_sent_with_the_request_is_inflated() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let metrics = Arc::new(Metrics::new());
        let mut c = Compress::new(Compression::new(6), false);
        let early = [
            frame(0xc1, &deflate(&mut c, b"hello")),
            frame(0x01, b"pl"),
            frame(0x80, b"ain"),
        ]
        .concat();
        let server = {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let tracker = ConnTracker::new(metrics.clone());
                let opening = Opening {
                    deflate: Some(AGREED),
                    early,
                    ..Opening::default()
                };
                let settings = Settings::default();
                serve(a, opening, &tracker, &metrics, &settings, &Drain::new()).await;
            })
        };
        let (h, p) = server_frame(&mut b).await;
        assert_eq!((h, inflate(&p)), (0xc1, b"hello".to_vec()));
        let (h, p) = server_frame(&mut b).await;
        assert_eq!((h, inflate(&p)), (0xc1, b"plain".to_vec()));
        b.write_all(&frame(0x88, &[0x03, 0xe8])).await.unwrap();
        let (h, p) = server_frame(&mut b).await;
        assert_eq!((h, p), (0x88, vec![0x03, 0xe8]));
        drop(b);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn compressed_and_plain_messages_are_echoed_compressed() {
        let (mut b, metrics, _server) = start(Settings::default());
        let mut c = Compress::new(Compression::new(6), false);
        let text = "안녕하세요, wsechod! ".repeat(4000);
        let binary: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let cases = [
            (
                0xc1,
                deflate(&mut c, text.as_bytes()),
                0x1,
                text.as_bytes().to_vec(),
            ),
            (0xc2, deflate(&mut c, &binary), 0x2, binary.clone()),
            (0x82, b"plain".to_vec(), 0x2, b"plain".to_vec()),
            (0xc1, deflate(&mut c, b""), 0x1, Vec::new()),
        ];
        for (b0, payload, op, want) in cases {
            b.write_all(&frame(b0, &payload)).await.unwrap();
            let (h, p) = server_frame(&mut b).await;
            assert_eq!(h, 0xc0 | op, "FIN, RSV1, opcode {op}");
            assert_eq!(inflate(&p), want);
        }
        let text = String::from_utf8(metrics.encode()).unwrap();
        assert!(
            text.contains("wsechod_connections_compressed_total 1"),
            "{text}"
        );
        let v = |series: &str| crate_metric(&text, series);
        assert!(v("wsechod_compression_wire_bytes_total{direction=\"received\"}") > 0.0);
        assert!(
            v("wsechod_compression_payload_bytes_total{direction=\"sent\"}")
                > v("wsechod_compression_wire_bytes_total{direction=\"sent\"}")
        );
    }

    fn crate_metric(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series}"))
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn a_fragmented_compressed_message_with_a_ping_inside() {
        let (mut b, _metrics, _server) = start(Settings::default());
        let mut c = Compress::new(Compression::new(6), false);
        let msg = "fragmented ".repeat(1000);
        let z = deflate(&mut c, msg.as_bytes());
        let (x, y) = z.split_at(z.len() / 2);
        b.write_all(&frame(0x41, x)).await.unwrap(); // text, RSV1, more to come
        b.write_all(&frame(0x89, b"hi")).await.unwrap(); // ping
        b.write_all(&frame(0x80, y)).await.unwrap(); // continuation, FIN
        assert_eq!(
            server_frame(&mut b).await,
            (0x8a, b"hi".to_vec()),
            "the pong, plain"
        );
        let (h, p) = server_frame(&mut b).await;
        assert_eq!(h, 0xc1);
        assert_eq!(inflate(&p), msg.as_bytes());
    }

    /// The close code and reason the server sends for `input`, and how it ended.
    async fn close_for(settings: Settings, input: Vec<u8>) -> (u16, End) {
        let (mut b, _metrics, server) = start(settings);
        b.write_all(&input).await.unwrap();
        let (h, p) = server_frame(&mut b).await;
        assert_eq!(h, 0x88, "a close frame");
        b.shutdown().await.unwrap();
        let end = tokio::time::timeout(PATIENCE, server)
            .await
            .unwrap()
            .unwrap();
        (u16::from_be_bytes([p[0], p[1]]), end)
    }

    #[tokio::test(start_paused = true)]
    async fn bombs_corrupt_data_and_misplaced_rsv1_get_their_close_codes() {
        let mut c = Compress::new(Compression::new(9), false);
        let bomb = deflate(&mut c, &vec![0u8; 8 << 20]);
        assert!(bomb.len() < 16 * 1024);
        let small = settings(|c| c.websocket.max_message_size = ByteSize(1 << 20));
        assert_eq!(
            close_for(small, frame(0xc2, &bomb)).await,
            (1009, aborted(AbortReason::ProtocolError))
        );
        assert_eq!(
            close_for(Settings::default(), frame(0xc1, &[0xff; 16])).await,
            (1007, aborted(AbortReason::CompressionError))
        );
        assert_eq!(
            close_for(Settings::default(), frame(0xc9, b"")).await,
            (1002, aborted(AbortReason::ProtocolError))
        );
    }
}

#[tokio::test]
async fn rsv1_without_negotiated_compression_is_1002() {
    let mut h = start(Settings::default()).await;
    let mut f = Frame::message(vec![1u8], OpCode::Data(Data::Binary), true);
    f.header_mut().rsv1 = true;
    h.client.send(Message::Frame(f)).await.unwrap();
    assert_eq!(recv_close(&mut h.client).await.code, CloseCode::Protocol);
}
