//! Life cycle under a notify socket the test owns: READY, STATUS, STOPPING, the SIGTERM
//! drain, SIGHUP reload, socket activation and the watchdog.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::util::{Daemon, TIMEOUT, daemon, echo, recv};

#[tokio::test]
async fn ready_after_bind_then_stopping_on_sigterm() {
    let mut d = daemon().start().await;
    // READY=1 came with a STATUS naming where we listen, and the port accepts right away.
    let ready = d
        .messages
        .iter()
        .find(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap();
    assert!(ready.contains("STATUS=serving ws://127.0.0.1:"), "{ready}");
    // Before it, the listeners went to systemd's file descriptor store.
    let stored = d.messages.iter().position(|m| m.contains("FDSTORE=1"));
    let ready_at = d.messages.iter().position(|m| m.contains("READY=1"));
    assert!(stored.is_some() && stored < ready_at, "{:?}", d.messages);
    assert!(
        d.messages
            .iter()
            .any(|m| m.contains("FDNAME=stored-websocket"))
    );
    let mut ws = d.connect().await;
    echo(&mut ws, Message::text("x")).await;
    drop(ws);
    d.signal(Signal::SIGTERM);
    let msg = d.wait_for_notify("STOPPING=1").await;
    assert!(msg.contains("STATUS=draining"), "{msg}");
    assert_eq!(d.wait_exit(TIMEOUT).code(), Some(0));
    d.collect_notifications();
    // It asked systemd for the drain time (10 s) plus grace (2 s) and margin (5 s).
    assert!(
        d.messages
            .iter()
            .any(|m| m.contains("EXTEND_TIMEOUT_USEC=17000000")),
        "{:?}",
        d.messages
    );
}

/// `[shutdown] delay`: not ready at once, new connections still accepted and served for
/// the delay, then the drain with the configured close code.
#[tokio::test]
async fn sigterm_with_a_delay_reports_not_ready_and_serves_on_before_draining() {
    let mut d = daemon()
        .config("[shutdown]\ndelay = \"2s\"\nclose_code = 1012\nclose_reason = \"restarting\"\n")
        .start()
        .await;
    let mut before = d.connect().await;
    d.signal(Signal::SIGTERM);
    let msg = d.wait_for_notify("STOPPING=1").await;
    assert!(msg.contains("not ready"), "{msg}");
    let sent = Instant::now();
    assert_eq!(d.metrics_get("/readyz").await.0, 503);
    // During the delay: the old connection echoes, and a new one is accepted and echoes.
    echo(&mut before, Message::text("still here")).await;
    let mut during = d.connect().await;
    echo(&mut during, Message::text("just arrived")).await;
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "the delay ran out before the checks: rerun on a less busy machine"
    );
    for ws in [&mut before, &mut during] {
        let f = loop {
            match recv(ws).await {
                Message::Close(Some(f)) => break f,
                Message::Ping(_) => {}
                m => panic!("unexpected {m:?}"),
            }
        };
        assert_eq!(u16::from(f.code), 1012);
        assert_eq!(f.reason.as_str(), "restarting");
    }
    assert!(sent.elapsed() >= Duration::from_millis(1500));
    while let Some(Ok(_)) = before.next().await {}
    while let Some(Ok(_)) = during.next().await {}
    assert_eq!(d.wait_exit(TIMEOUT).code(), Some(0));
    d.collect_notifications();
    // Delay, drain, grace and margin: 2 + 10 + 2 + 5 s.
    assert!(
        d.messages
            .iter()
            .any(|m| m.contains("EXTEND_TIMEOUT_USEC=19000000")),
        "{:?}",
        d.messages
    );
}

#[tokio::test]
async fn a_second_sigterm_skips_the_rest_of_the_delay() {
    let mut d = daemon()
        .config("[shutdown]\ndelay = \"60s\"\n")
        .start()
        .await;
    let mut ws = d.connect().await;
    d.signal(Signal::SIGTERM);
    d.wait_for_notify("STOPPING=1").await;
    echo(&mut ws, Message::text("delayed")).await;
    let second = Instant::now();
    d.signal(Signal::SIGTERM);
    let Message::Close(Some(f)) = recv(&mut ws).await else {
        panic!("expected the close frame")
    };
    assert_eq!(f.code, CloseCode::Normal);
    while let Some(Ok(_)) = ws.next().await {}
    assert_eq!(d.wait_exit(TIMEOUT).code(), Some(0));
    assert!(second.elapsed() < Duration::from_secs(10));
    d.wait_stderr("during the delay: draining now").await;
}

/// What one client of the drain test saw.
struct Streamed {
    /// Its local port, which names it in the daemon's log.
    port: u16,
    /// Messages it handed to its socket before it answered our close frame.
    sent: usize,
    /// The echoes it got, in order.
    echoes: Vec<Message>,
    /// Our close frame.
    close: CloseFrame,
}

/// Streams numbered messages without pause until the daemon's close frame arrives.
/// `streaming` counts down once this client has seen 50 echoes.
async fn stream_until_closed(
    ws: crate::util::Ws,
    streaming: Arc<(AtomicUsize, Notify)>,
) -> Streamed {
    let port = ws.get_ref().local_addr().unwrap().port();
    let (mut tx, mut rx) = ws.split();
    let closed = Arc::new(AtomicBool::new(false));
    let writer = {
        let closed = closed.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            while !closed.load(Ordering::Acquire) {
                // Once tungstenite has read our close frame it refuses data: that is the
                // client's last message.
                if tx.feed(Message::text(sent.to_string())).await.is_err() {
                    break;
                }
                sent += 1;
                if sent % 16 == 0 && tx.flush().await.is_err() {
                    break;
                }
            }
            let _ = tx.flush().await;
            sent
        })
    };
    let mut echoes = Vec::new();
    let close = loop {
        match tokio::time::timeout(TIMEOUT, rx.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => break f,
            Ok(Some(Ok(m @ Message::Text(_)))) => {
                echoes.push(m);
                if echoes.len() == 50 && streaming.0.fetch_sub(1, Ordering::AcqRel) == 1 {
                    streaming.1.notify_one();
                }
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("client {port}: {other:?} before the close frame"),
        }
    };
    closed.store(true, Ordering::Release);
    let sent = writer.await.unwrap();
    // tungstenite answers the close; the server then ends the connection.
    while let Some(Ok(_)) = rx.next().await {}
    Streamed {
        port,
        sent,
        echoes,
        close,
    }
}

/// `key=N` in a log line.
fn field(line: &str, key: &str) -> usize {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .trim_matches('"')
        .parse()
        .unwrap()
}

/// The drain's promise, checked per client: every message the daemon read before it sent
/// that client's close frame is echoed ahead of the close; what it read after is counted as
/// discarded (RFC 6455 forbids answering it), and nothing is lost in between.
#[tokio::test]
async fn drain_echoes_exactly_what_was_read_before_each_close_frame() {
    const CLIENTS: usize = 20;
    let mut d = daemon()
        .env("RUST_LOG", "info,wsechod::connection=debug")
        .config("[shutdown]\ndrain_timeout = \"10s\"\nclose_reason = \"maintenance\"\n")
        .start()
        .await;
    let streaming = Arc::new((AtomicUsize::new(CLIENTS), Notify::new()));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let ws = d.connect().await;
        clients.push(tokio::spawn(stream_until_closed(ws, streaming.clone())));
    }
    // SIGTERM while every client is mid-stream.
    tokio::time::timeout(TIMEOUT, streaming.1.notified())
        .await
        .expect("every client streaming");
    d.signal(Signal::SIGTERM);
    let mut discarded = 0;
    let mut results = Vec::new();
    for c in clients {
        results.push(c.await.unwrap());
    }
    assert_eq!(d.wait_exit(TIMEOUT).code(), Some(0));
    let log = d.wait_stderr(&format!("closed={CLIENTS} aborted=0")).await;
    for r in results {
        assert_eq!(r.close.code, CloseCode::Normal);
        assert_eq!(r.close.reason.as_str(), "maintenance");
        // The echoes are an unbroken prefix of what was sent: nothing lost or reordered.
        for (i, m) in r.echoes.iter().enumerate() {
            assert_eq!(*m, Message::text(i.to_string()), "client {}", r.port);
        }
        let line = log
            .lines()
            .find(|l| l.contains(&format!(":{}}}", r.port)) && l.contains("connection ended"))
            .unwrap_or_else(|| panic!("no end line for client {}:\n{log}", r.port));
        let (read, echoed, dropped) = (
            field(line, "read"),
            field(line, "echoed"),
            field(line, "discarded"),
        );
        assert_eq!(read, r.sent, "client {}: read all it sent: {line}", r.port);
        assert_eq!(
            echoed,
            r.echoes.len(),
            "client {}: every echo arrived: {line}",
            r.port
        );
        assert_eq!(
            read,
            echoed + dropped,
            "client {}: none lost: {line}",
            r.port
        );
        discarded += dropped;
    }
    println!("drain: {CLIENTS} clients; {discarded} messages crossed the close frame");
}

#[tokio::test]
async fn silent_client_is_aborted_at_the_drain_deadline() {
    let mut d = daemon()
        .config("[shutdown]\ndrain_timeout = \"1s\"\n")
        .start()
        .await;
    let mut polite = d.connect().await;
    // This one never reads, so it never answers the close frame.
    let _silent = d.connect().await;
    d.wait_metric("wsechod_connections{state=\"open\"}", 2.0)
        .await;
    let started = Instant::now();
    d.signal(Signal::SIGTERM);
    d.wait_for_notify("STOPPING=1").await;
    // Draining: not ready, and new connections are refused rather than accepted.
    assert_eq!(d.metrics_get("/readyz").await.0, 503);
    assert!(tokio::net::TcpStream::connect(d.ws_addr()).await.is_err());
    // The polite client completes its close handshake.
    let Message::Close(Some(f)) = recv(&mut polite).await else {
        panic!("expected close")
    };
    assert_eq!(f.code, CloseCode::Normal);
    while let Some(Ok(_)) = polite.next().await {}
    assert_eq!(d.wait_exit(TIMEOUT).code(), Some(0));
    // The deadline's timing is tested on paused time (src/daemon/drain.rs); here only that
    // the real binary gets there.
    assert!(started.elapsed() < TIMEOUT);
    d.wait_stderr("closed=1 aborted=1 aborted_at_deadline=1")
        .await;
}

#[tokio::test]
async fn second_sigterm_aborts_the_drain() {
    let mut d = daemon()
        .config("[shutdown]\ndrain_timeout = \"60s\"\n")
        .start()
        .await;
    let _silent = d.connect().await;
    d.wait_metric("wsechod_connections{state=\"open\"}", 1.0)
        .await;
    d.signal(Signal::SIGTERM);
    d.wait_for_notify("STOPPING=1").await;
    let started = Instant::now();
    d.signal(Signal::SIGINT);
    assert_eq!(d.wait_exit(TIMEOUT).code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5));
    d.wait_stderr("aborted_at_deadline=1").await;
}

#[tokio::test]
async fn sighup_reloads_without_dropping_sessions() {
    let mut d = daemon().start().await;
    let mut before = d.connect().await;
    echo(&mut before, Message::text("plain")).await;

    d.write_config("[websocket]\nreply_prefix = \"> \"\n");
    d.signal(Signal::SIGHUP);
    let reloading = d.wait_for_notify("RELOADING=1").await;
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1");
    assert!(usec.parse::<u64>().unwrap() > 0);
    let ready = d.wait_for_notify("READY=1").await;
    assert!(ready.contains("last reload OK"), "{ready}");

    // The old session still works; a new one gets the new prefix.
    echo(&mut before, Message::text("still here")).await;
    let mut after = d.connect().await;
    after.send(Message::text("hi")).await.unwrap();
    assert_eq!(recv(&mut after).await, Message::text("> hi"));
    d.wait_metric("wsechod_config_reloads_total{result=\"success\"}", 1.0)
        .await;

    // A broken file: the old configuration stays.
    d.write_config("[websocket]\nreply_prefix = 42\nbogus = true\n");
    d.signal(Signal::SIGHUP);
    d.wait_for_notify("RELOADING=1").await;
    let ready = d.wait_for_notify("READY=1").await;
    assert!(ready.contains("FAILED"), "{ready}");
    assert!(ready.contains("websocket.bogus"), "{ready}");
    d.wait_metric("wsechod_config_reloads_total{result=\"failure\"}", 1.0)
        .await;
    d.wait_metric("wsechod_config_last_reload_successful", 0.0)
        .await;
    let mut third = d.connect().await;
    third.send(Message::text("hi")).await.unwrap();
    assert_eq!(recv(&mut third).await, Message::text("> hi"));
    echo(&mut before, Message::text("and still")).await;
    d.wait_stderr(&format!(
        "reload failed, keeping the running configuration: {}",
        d.config_path.display()
    ))
    .await;

    // A change that needs a restart is reported as such, and nothing else changes.
    d.write_config("[server]\nworker_threads = 3\n");
    d.signal(Signal::SIGHUP);
    d.wait_for_notify("RELOADING=1").await;
    let ready = d.wait_for_notify("READY=1").await;
    assert!(
        ready.contains("restart needed for server.worker_threads"),
        "{ready}"
    );
    echo(&mut before, Message::text("unaffected")).await;
}

#[tokio::test]
async fn log_level_changes_on_reload() {
    let mut d = daemon().start().await;
    let mut ws = d.connect().await;
    echo(&mut ws, Message::text("quiet")).await;
    d.write_config("[log]\nlevel = \"debug\"\n");
    d.signal(Signal::SIGHUP);
    d.wait_for_notify("RELOADING=1").await;
    d.wait_for_notify("READY=1").await;
    echo(&mut ws, Message::text("loud")).await;
    let mut other = d.connect().await;
    echo(&mut other, Message::text("loud")).await;
    d.wait_stderr("size=4").await;
    d.wait_stderr("log.level: \"info\" -> \"debug\"").await;
}

/// `sh` execs the daemon with `LISTEN_PID` set to its own PID, like systemd does.
fn activated(sockets: Vec<(std::net::TcpListener, i32)>, names: &str) -> Command {
    use command_fds::{CommandFdExt, FdMapping};
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(crate::util::binary())
        .env("LISTEN_FDS", sockets.len().to_string())
        .env("LISTEN_FDNAMES", names);
    let mappings = sockets
        .into_iter()
        .map(|(l, child_fd)| FdMapping {
            parent_fd: OwnedFd::from(l),
            child_fd,
        })
        .collect();
    cmd.fd_mappings(mappings).unwrap();
    cmd
}

#[tokio::test]
async fn socket_activation_uses_the_passed_sockets() {
    let ws = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ws_addr = ws.local_addr().unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    // Were the daemon to bind these itself, it would fail: the addresses are taken.
    let d = daemon()
        .command(activated(vec![(ws, 3), (metrics, 4)], "websocket:metrics"))
        .env("WSECHOD_SERVER__LISTEN", &ws_addr.to_string())
        .env("WSECHOD_METRICS__LISTEN", &metrics_addr.to_string())
        .start()
        .await;
    assert_eq!(d.ws_addr(), ws_addr);
    assert_eq!(d.metrics_addr(), metrics_addr);
    let mut c = d.connect().await;
    echo(&mut c, Message::text("activated")).await;
    assert_eq!(d.metrics_get("/readyz").await.0, 200);
    d.wait_stderr("using sockets passed by systemd").await;
}

/// The listeners a previous process stored, handed back as systemd does after a restart.
async fn restarted_with(metrics: &str) -> (Daemon, SocketAddr) {
    let ws = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let old_metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ws_addr = ws.local_addr().unwrap();
    let old_metrics_addr = old_metrics.local_addr().unwrap();
    let d = daemon()
        .command(activated(
            vec![(ws, 3), (old_metrics, 4)],
            "stored-websocket:stored-metrics",
        ))
        .env("WSECHOD_SERVER__LISTEN", &ws_addr.to_string())
        .env("WSECHOD_METRICS__ENABLED", metrics)
        .start()
        .await;
    assert_eq!(
        d.ws_addr(),
        ws_addr,
        "the stored WebSocket listener is reused"
    );
    (d, old_metrics_addr)
}

fn removed_from_store(d: &Daemon, name: &str) -> bool {
    d.messages.iter().any(|m| {
        m.lines().any(|l| l == "FDSTOREREMOVE=1")
            && m.lines().any(|l| l == format!("FDNAME={name}"))
    })
}

#[tokio::test]
async fn a_stored_metrics_socket_for_another_address_leaves_the_store() {
    // The configuration now says 127.0.0.1:0, so a new port; the old one must not stay
    // bound in systemd's store with nobody accepting on it.
    let (d, old) = restarted_with("true").await;
    assert_ne!(d.metrics_addr(), old);
    assert!(removed_from_store(&d, "stored-metrics"), "{:?}", d.messages);
    assert!(
        !removed_from_store(&d, "stored-websocket"),
        "{:?}",
        d.messages
    );
}

#[tokio::test]
async fn a_stored_metrics_socket_leaves_the_store_when_metrics_are_off() {
    let (d, _) = restarted_with("false").await;
    assert!(removed_from_store(&d, "stored-metrics"), "{:?}", d.messages);
    assert!(
        !d.messages.iter().any(|m| {
            m.lines().any(|l| l == "FDSTORE=1") && m.lines().any(|l| l == "FDNAME=stored-metrics")
        }),
        "{:?}",
        d.messages
    );
}

#[tokio::test]
async fn watchdog_pings_at_half_the_interval() {
    let mut d = daemon().env("WATCHDOG_USEC", "400000").start().await;
    let window = Duration::from_secs(2);
    let pings = d
        .notifications_for(window)
        .await
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    // One every 200 ms: about 10 in 2 s. Fewer than 2 would let systemd kill us (one is due
    // every 400 ms); far over 10 would be flooding. (A busy machine delays ticks, so the lower
    // bound is loose; src/systemd/watchdog.rs tests the health check on paused time.)
    assert!((2..=13).contains(&pings), "{pings} pings in {window:?}");
}

#[tokio::test]
async fn status_reports_open_connections() {
    let mut d = daemon().start().await;
    let _a = d.connect().await;
    let _b = d.connect().await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let msgs = d.notifications_for(Duration::from_millis(1200)).await;
        if msgs.iter().any(|m| m.contains("2 open connections")) {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", d.messages);
    }
}
