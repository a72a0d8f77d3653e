//! Connection limits, keepalive and timeouts, slow and non-reading clients, on the real
//! binary. The timers' schedules are tested on paused time in src/connection/tests.rs; the
//! ones here prove the wiring end to end.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{TIMEOUT, UPGRADE, connect, daemon, echo, http_get};

#[tokio::test]
async fn max_connections_answers_503_with_retry_after() {
    let d = daemon()
        .config("[server]\nmax_connections = 2\n")
        .start()
        .await;
    let mut a = d.connect().await;
    let mut b = d.connect().await;
    let (status, text) = http_get(d.ws_addr(), "/ws", &UPGRADE).await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    // The others are not slowed down, and the slot comes back.
    echo(&mut a, Message::text("a")).await;
    echo(&mut b, Message::text("b")).await;
    drop(b);
    d.wait_metric("wsechod_connections{state=\"open\"}", 1.0)
        .await;
    let mut c = d.connect().await;
    echo(&mut c, Message::text("c")).await;
    d.wait_metric("wsechod_handshakes_rejected_total{status=\"503\"}", 1.0)
        .await;
}

#[tokio::test]
async fn max_connections_per_ip_answers_429() {
    let d = daemon()
        .config("[server]\nmax_connections_per_ip = 1\n")
        .env("WSECHOD_SERVER__LISTEN", "0.0.0.0:0")
        .start()
        .await;
    let port = d.ws_addr().port();
    let mut first = connect(&format!("ws://127.0.0.1:{port}/ws")).await;
    let (status, _) = http_get(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "/ws",
        &UPGRADE,
    )
    .await;
    assert_eq!(status, 429);
    // Another address is another client.
    let source = Some("127.0.0.2".parse().unwrap());
    let mut other = crate::util::connect_from(source, &format!("ws://127.0.0.1:{port}/ws")).await;
    echo(&mut first, Message::text("1")).await;
    echo(&mut other, Message::text("2")).await;
    d.wait_metric("wsechod_handshakes_rejected_total{status=\"429\"}", 1.0)
        .await;
}

#[tokio::test]
async fn keepalive_pings_and_dead_peers_are_aborted() {
    let d = daemon()
        .config("[websocket]\nping_interval = \"1s\"\npong_timeout = \"500ms\"\n")
        .start()
        .await;
    // A live client (tungstenite answers pings while we read) outlives several intervals.
    let mut live = d.connect().await;
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        match tokio::time::timeout(Duration::from_millis(200), live.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => {}
        }
    }
    assert!(pings >= 2, "{pings} pings");
    echo(&mut live, Message::text("still alive")).await;
    // A dead one (never reads, so never answers) is aborted after ping + pong_timeout.
    let _dead = d.connect().await;
    let aborted = d.wait_metric(
        "wsechod_connections_aborted_total{reason=\"pong_timeout\"}",
        1.0,
    );
    tokio::pin!(aborted);
    // Meanwhile the live client keeps reading, and so keeps answering pings.
    loop {
        tokio::select! {
            () = &mut aborted => break,
            m = live.next() => assert!(matches!(m, Some(Ok(Message::Ping(_)))), "{m:?}"),
        }
    }
    echo(&mut live, Message::text("and still")).await;
    assert!(d.metric("wsechod_pings_sent_total").await >= 3.0);
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_after_write_timeout() {
    let d = daemon()
        .config("[websocket]\nwrite_timeout = \"1s\"\n")
        .start()
        .await;
    let ws = d.connect().await;
    let (mut tx, _rx) = ws.split();
    // Send until the echoes we never read fill every buffer and the server gives up.
    let payload = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match tokio::time::timeout(
            Duration::from_secs(2),
            tx.send(Message::binary(payload.clone())),
        )
        .await
        {
            Ok(Ok(())) => {}
            // Blocked (the server stopped reading) or failed (it gave up): either way, done.
            _ => break,
        }
        assert!(Instant::now() < deadline, "the server never pushed back");
    }
    d.wait_metric(
        "wsechod_connections_aborted_total{reason=\"write_timeout\"}",
        1.0,
    )
    .await;
    // Everyone else is unaffected.
    let mut other = d.connect().await;
    echo(&mut other, Message::text("fine")).await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The bound we promise: 1 GiB streamed by clients that never read keeps RSS under this.
const NO_READ_RSS_BOUND_MIB: u64 = 64;

#[tokio::test]
async fn one_gib_from_clients_that_never_read_keeps_memory_bounded() {
    const TOTAL: u64 = 1 << 30;
    const CLIENTS: usize = 16;
    let d = daemon()
        .config("[websocket]\nwrite_timeout = \"1s\"\n")
        .start()
        .await;
    let pid = d.child.id();
    let url = d.url();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, sent) = (url.clone(), sent.clone());
            tokio::spawn(async move {
                let payload = Message::binary(vec![0x5au8; 64 * 1024]);
                while sent.load(std::sync::atomic::Ordering::Relaxed) < TOTAL {
                    let ws = connect(&url).await;
                    let (mut tx, _never_read) = ws.split();
                    loop {
                        let send = tx.send(payload.clone());
                        match tokio::time::timeout(Duration::from_secs(3), send).await {
                            Ok(Ok(())) => {
                                let n =
                                    sent.fetch_add(64 * 1024, std::sync::atomic::Ordering::Relaxed);
                                if n >= TOTAL {
                                    return;
                                }
                            }
                            _ => break,
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        tokio::time::timeout(Duration::from_secs(300), w)
            .await
            .expect("1 GiB within 5 minutes")
            .unwrap();
    }
    sampler.abort();
    let peak_mib = peak.load(std::sync::atomic::Ordering::Relaxed) / 1024;
    println!(
        "no-read test: {} MiB sent in {:.1?} by {CLIENTS} clients; daemon peak RSS {peak_mib} MiB",
        sent.load(std::sync::atomic::Ordering::Relaxed) >> 20,
        started.elapsed()
    );
    assert!(
        peak_mib < NO_READ_RSS_BOUND_MIB,
        "peak RSS {peak_mib} MiB over the bound {NO_READ_RSS_BOUND_MIB} MiB"
    );
}

#[tokio::test]
async fn ten_thousand_slowloris_sockets_do_not_block_a_real_client() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const SOCKETS: usize = 10_000;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= 12_000,
        "the test needs 12k file descriptors, the hard limit is {hard}"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();

    let d = daemon().start().await;
    let addr = d.ws_addr();
    // Half connect and send nothing; half drip one header byte a second.
    let mut idle = Vec::with_capacity(SOCKETS / 2);
    let mut drip = Vec::with_capacity(SOCKETS / 2);
    for i in 0..SOCKETS {
        let s = TcpStream::connect(addr).await.expect("connect");
        if i % 2 == 0 {
            idle.push(s)
        } else {
            drip.push(s)
        }
    }
    let dripping = tokio::spawn(async move {
        let request = b"GET /ws HTTP/1.1\r\nHost: x\r\n";
        for byte in request.iter().cycle().take(30) {
            for s in &mut drip {
                let _ = s.write_all(&[*byte]).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        drip
    });
    d.wait_metric("wsechod_connections{state=\"connecting\"}", SOCKETS as f64)
        .await;
    let started = Instant::now();
    let mut ws = d.connect().await;
    echo(&mut ws, Message::text("through the crowd")).await;
    let took = started.elapsed();
    println!(
        "slowloris: a real client connected and echoed in {took:?} with {SOCKETS} slow sockets open"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    dripping.abort();
    drop(idle);
}
