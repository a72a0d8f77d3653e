//! A fleet of WebSocket clients that never stop talking, for the fleet test
//! (`tests/fleet/run.py`): many clients behind a load balancer while the servers behind it
//! restart one after another.
//!
//! ```text
//! fleet URL [--clients N] [--every MS] [--greeting] [--status-ms MS]
//! ```
//!
//! Each of the N clients (200 by default) keeps one connection open and sends a numbered
//! text message every MS ms (10 by default) without waiting for the echoes, which must come
//! back exactly: the same text, in the order sent. When the server closes a connection, the
//! client answers the close frame and reconnects at once. With `--greeting` the first
//! message of every connection is the server's greeting (`[websocket] greeting`), kept in
//! the record instead of being checked as an echo.
//!
//! It runs until SIGTERM or SIGINT. Then every client stops sending, waits (at most 3 s)
//! for the echoes of what it sent, closes with 1000 and waits for the server's reply; then
//! the totals are printed as one line `totals {JSON}` and the program exits 0. The JSON
//! holds the counts (attempts: connected, refused, failed; messages sent and echoed; closes
//! by code, the server's and the final ones apart), every failed attempt with its reason,
//! and one record per connection. While it runs it prints `status ...` lines every
//! `--status-ms` (500 by default).
//!
//! Times are CLOCK_MONOTONIC in milliseconds, the clock of `journalctl -o json`'s
//! `__MONOTONIC_TIMESTAMP` (the container shares the host's kernel).
//!
//! Accounting, per connection: `sent` counts the messages the WebSocket layer accepted (they
//! reach the socket ahead of anything written later, our close reply included), `echoed`
//! the echoes received in order. A message that crossed the server's close frame on the
//! wire stays unanswered: RFC 6455 forbids the server to send data after its close frame.

use std::fmt::Write as _;
use std::io::ErrorKind;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Ws = WebSocketStream<TcpStream>;

/// Bounds every step that waits for the other side.
const STEP: Duration = Duration::from_secs(5);
/// After the stop signal: how long a client waits for its last echoes.
const LAST_ECHOES: Duration = Duration::from_secs(3);
/// After a failed attempt, before the next (a refusing balancer must not be hammered).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// CLOCK_MONOTONIC in milliseconds.
fn now_ms() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as f64 * 1e3 + t.tv_nsec() as f64 / 1e6
}

/// Options from the command line.
#[derive(Debug, Clone)]
struct Options {
    url: String,
    clients: usize,
    every: Duration,
    greeting: bool,
    status: Duration,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let usage = "usage: fleet URL [--clients N] [--every MS] [--greeting] [--status-ms MS]";
        let mut it = args.iter();
        let url = it.next().ok_or(usage)?.clone();
        if !url.starts_with("ws://") {
            return Err(format!("not a ws:// URL: {url}"));
        }
        let mut o = Options {
            url,
            clients: 200,
            every: Duration::from_millis(10),
            greeting: false,
            status: Duration::from_millis(500),
        };
        while let Some(a) = it.next() {
            let mut num = || -> Result<u64, String> {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("{a} needs a number; {usage}"))
            };
            match a.as_str() {
                "--clients" => o.clients = num()? as usize,
                "--every" => o.every = Duration::from_millis(num()?.max(1)),
                "--status-ms" => o.status = Duration::from_millis(num()?.max(10)),
                "--greeting" => o.greeting = true,
                _ => return Err(usage.into()),
            }
        }
        Ok(o)
    }
}

/// Live counts, for the status lines.
#[derive(Debug, Default)]
struct Live {
    open: AtomicU64,
    attempts: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    sent: AtomicU64,
    echoed: AtomicU64,
    server_closes: AtomicU64,
}

/// How one connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The server closed first, with this code (None: a close frame without a code).
    ServerClose(Option<u16>),
    /// We closed (at the stop); the server answered with this code.
    OurClose(Option<u16>),
    /// Anything else: the connection broke, an echo was wrong, a step timed out.
    Error(String),
}

/// One connection, from the handshake to its end.
#[derive(Debug)]
struct Conn {
    client: usize,
    /// This client's n-th connection, from 0.
    n: u64,
    /// Our local port (what the balancer saw as the client).
    port: u16,
    /// The first message, with `--greeting`.
    greeting: Option<String>,
    sent: u64,
    echoed: u64,
    opened_ms: f64,
    /// When the server's close frame arrived (or ours went out).
    close_ms: Option<f64>,
    reason: String,
    end: End,
    ended_ms: f64,
}

/// A failed connection attempt.
#[derive(Debug)]
struct Failure {
    client: usize,
    at_ms: f64,
    refused: bool,
    reason: String,
}

/// What one client did, all its connections.
#[derive(Debug, Default)]
struct Record {
    attempts: u64,
    conns: Vec<Conn>,
    failures: Vec<Failure>,
}

/// The text of message `seq` of connection `n` of `client`.
fn text(client: usize, n: u64, seq: u64) -> String {
    format!("{client}.{n}.{seq}")
}

async fn connect(o: &Options) -> Result<Ws, (bool, String)> {
    let authority = o
        .url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .unwrap_or_default();
    let tcp = match tokio::time::timeout(STEP, TcpStream::connect(authority)).await {
        Err(_) => return Err((false, format!("connect {authority}: timed out"))),
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {
            return Err((true, format!("connect {authority}: {e}")));
        }
        Ok(Err(e)) => return Err((false, format!("connect {authority}: {e}"))),
        Ok(Ok(t)) => t,
    };
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let handshake = tokio_tungstenite::client_async_with_config(o.url.as_str(), tcp, Some(config));
    match tokio::time::timeout(STEP, handshake).await {
        Err(_) => Err((false, "handshake: timed out".into())),
        Ok(Err(WsError::Http(r))) => Err((false, format!("handshake: HTTP {}", r.status()))),
        Ok(Err(e)) => Err((false, format!("handshake: {e}"))),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// One client: connects, talks, reconnects when closed, until `stop`.
async fn client(
    id: usize,
    o: Rc<Options>,
    live: Rc<Live>,
    mut stop: watch::Receiver<bool>,
) -> Record {
    let mut rec = Record::default();
    // Spread the clients' sends over the period.
    let offset = o.every.mul_f64(fastrand::f64());
    while !*stop.borrow() {
        rec.attempts += 1;
        live.attempts.fetch_add(1, Relaxed);
        let ws = match connect(&o).await {
            Ok(ws) => ws,
            Err((refused, reason)) => {
                let counter = if refused { &live.refused } else { &live.failed };
                counter.fetch_add(1, Relaxed);
                rec.failures.push(Failure {
                    client: id,
                    at_ms: now_ms(),
                    refused,
                    reason,
                });
                tokio::select! {
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        live.open.fetch_add(1, Relaxed);
        let n = rec.conns.len() as u64;
        let conn = talk(ws, id, n, offset, &o, &live, &mut stop).await;
        live.open.fetch_sub(1, Relaxed);
        rec.conns.push(conn);
    }
    rec
}

/// One connection until it ends.
async fn talk(
    mut ws: Ws,
    client: usize,
    n: u64,
    offset: Duration,
    o: &Options,
    live: &Live,
    stop: &mut watch::Receiver<bool>,
) -> Conn {
    let port = ws.get_ref().local_addr().map_or(0, |a| a.port());
    let mut c = Conn {
        client,
        n,
        port,
        greeting: None,
        sent: 0,
        echoed: 0,
        opened_ms: now_ms(),
        close_ms: None,
        reason: String::new(),
        end: End::Error("not ended".into()),
        ended_ms: 0.0,
    };
    let mut want_greeting = o.greeting;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, o.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The stop signal was seen (it may have come while we connected).
    let mut stop_seen = *stop.borrow_and_update();
    // Set at the stop signal: no more sending; close once every echo is in, or at this time.
    let mut stopping: Option<tokio::time::Instant> = None;
    let mut closing = false;
    let end = loop {
        if stop_seen && stopping.is_none() {
            stopping = Some(tokio::time::Instant::now() + LAST_ECHOES);
        }
        if let Some(give_up) = stopping
            && !closing
            && ((c.echoed == c.sent && !want_greeting) || tokio::time::Instant::now() >= give_up)
        {
            // At the give-up time echoes are missing: the record shows it; close anyway.
            if let Err(e) = close(&mut ws, &mut c).await {
                break End::Error(e);
            }
            closing = true;
        }
        let give_up = stopping.unwrap_or_else(|| tokio::time::Instant::now() + STEP);
        tokio::select! {
            _ = stop.changed(), if !stop_seen => stop_seen = true,
            () = tokio::time::sleep_until(give_up), if stopping.is_some() && !closing => {}
            _ = tick.tick(), if stopping.is_none() => {
                let m = Message::text(text(client, n, c.sent));
                // `feed` succeeded: the message is queued ahead of anything written later.
                if let Err(e) = ws.feed(m).await {
                    break End::Error(format!("send: {e}"));
                }
                c.sent += 1;
                live.sent.fetch_add(1, Relaxed);
                if let Err(e) = ws.flush().await {
                    break End::Error(format!("flush: {e}"));
                }
            }
            m = tokio::time::timeout(STEP * 2, ws.next()) => match m {
                Err(_) => break End::Error("nothing received for 10 s".into()),
                Ok(None) => break End::Error("connection ended without a close frame".into()),
                Ok(Some(Err(e))) => break End::Error(format!("read: {e}")),
                Ok(Some(Ok(Message::Text(t)))) if want_greeting => {
                    want_greeting = false;
                    c.greeting = Some(t.to_string());
                }
                Ok(Some(Ok(Message::Text(t)))) => {
                    let want = text(client, n, c.echoed);
                    if t.as_str() != want {
                        break End::Error(format!("echo {:?} where {want:?} was due", t.as_str()));
                    }
                    c.echoed += 1;
                    live.echoed.fetch_add(1, Relaxed);
                }
                Ok(Some(Ok(Message::Close(f)))) => {
                    let code = f.as_ref().map(|f| u16::from(f.code));
                    if let Some(f) = &f {
                        c.reason = f.reason.to_string();
                    }
                    if closing {
                        break End::OurClose(code);
                    }
                    c.close_ms = Some(now_ms());
                    live.server_closes.fetch_add(1, Relaxed);
                    break End::ServerClose(code);
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(Some(Ok(m))) => break End::Error(format!("unexpected {m:?}")),
            },
        }
    };
    // The close handshake: tungstenite sends our reply (or has sent our close) while the
    // stream is read to its end, which the server marks by closing the TCP connection.
    c.end = match end {
        End::Error(e) => End::Error(e),
        end => match tokio::time::timeout(STEP, finish(&mut ws)).await {
            Ok(Ok(())) => end,
            Ok(Err(e)) => End::Error(format!("after the close: {e}")),
            Err(_) => End::Error("the server did not end the connection after the close".into()),
        },
    };
    c.ended_ms = now_ms();
    c
}

/// Sends our close frame (1000) at the stop.
async fn close(ws: &mut Ws, c: &mut Conn) -> Result<(), String> {
    c.close_ms = Some(now_ms());
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "fleet done".into(),
    }))
    .await
    .map_err(|e| format!("close: {e}"))
}

/// Reads the stream to its end after the close frames crossed; data is an error now.
async fn finish(ws: &mut Ws) -> Result<(), String> {
    while let Some(m) = ws.next().await {
        match m {
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_)) => {}
            Ok(m) => return Err(format!("{m:?} after the close frame")),
            Err(WsError::ConnectionClosed) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_code(code: Option<u16>) -> String {
    code.map_or("null".into(), |c| c.to_string())
}

/// The totals line.
fn totals(records: &[Record], started_ms: f64) -> String {
    use std::collections::BTreeMap;
    let mut server: BTreeMap<String, u64> = BTreeMap::new();
    let mut ours: BTreeMap<String, u64> = BTreeMap::new();
    let (mut sent, mut echoed, mut errors, mut attempts) = (0, 0, 0, 0);
    let mut conns = Vec::new();
    let mut failures = Vec::new();
    for r in records {
        attempts += r.attempts;
        for c in &r.conns {
            sent += c.sent;
            echoed += c.echoed;
            let (kind, code, error) = match &c.end {
                End::ServerClose(code) => {
                    *server.entry(json_code(*code)).or_default() += 1;
                    ("server_close", json_code(*code), "null".into())
                }
                End::OurClose(code) => {
                    *ours.entry(json_code(*code)).or_default() += 1;
                    ("our_close", json_code(*code), "null".into())
                }
                End::Error(e) => {
                    errors += 1;
                    ("error", "null".into(), json_str(e))
                }
            };
            conns.push(format!(
                "{{\"client\":{},\"n\":{},\"port\":{},\"greeting\":{},\"sent\":{},\"echoed\":{},\
                 \"end\":\"{kind}\",\"code\":{code},\"reason\":{},\"error\":{error},\
                 \"opened_ms\":{:.3},\"close_ms\":{},\"ended_ms\":{:.3}}}",
                c.client,
                c.n,
                c.port,
                c.greeting.as_deref().map_or("null".into(), json_str),
                c.sent,
                c.echoed,
                json_str(&c.reason),
                c.opened_ms,
                c.close_ms.map_or("null".into(), |t| format!("{t:.3}")),
                c.ended_ms,
            ));
        }
        for f in &r.failures {
            failures.push(format!(
                "{{\"client\":{},\"at_ms\":{:.3},\"refused\":{},\"reason\":{}}}",
                f.client,
                f.at_ms,
                f.refused,
                json_str(&f.reason)
            ));
        }
    }
    let map = |m: &BTreeMap<String, u64>| {
        let inner: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", inner.join(","))
    };
    let refused = records
        .iter()
        .flat_map(|r| &r.failures)
        .filter(|f| f.refused)
        .count();
    format!(
        "{{\"started_ms\":{started_ms:.3},\"ended_ms\":{:.3},\"clients\":{},\"attempts\":{attempts},\
         \"connected\":{},\"refused\":{refused},\"failed\":{},\"sent\":{sent},\"echoed\":{echoed},\
         \"unanswered\":{},\"connection_errors\":{errors},\"server_closes\":{},\"our_closes\":{},\
         \"failures\":[{}],\"conns\":[{}]}}",
        now_ms(),
        records.len(),
        conns.len(),
        failures.len() - refused,
        sent - echoed,
        map(&server),
        map(&ours),
        failures.join(","),
        conns.join(","),
    )
}

async fn run(o: Options) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let started_ms = now_ms();
    let o = Rc::new(o);
    let live = Rc::new(Live::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let local = tokio::task::LocalSet::new();
    let handles: Vec<_> = (0..o.clients)
        .map(|id| local.spawn_local(client(id, o.clone(), live.clone(), stop_rx.clone())))
        .collect();
    let status = {
        let live = live.clone();
        let every = o.status;
        local.spawn_local(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                println!(
                    "status t_ms={:.0} open={} attempts={} refused={} failed={} sent={} echoed={} server_closes={}",
                    now_ms(),
                    live.open.load(Relaxed),
                    live.attempts.load(Relaxed),
                    live.refused.load(Relaxed),
                    live.failed.load(Relaxed),
                    live.sent.load(Relaxed),
                    live.echoed.load(Relaxed),
                    live.server_closes.load(Relaxed),
                );
            }
        })
    };
    let records = local
        .run_until(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            println!("stopping t_ms={:.0}", now_ms());
            let _ = stop_tx.send(true);
            let mut records = Vec::new();
            for h in handles {
                records.push(h.await.map_err(|e| e.to_string())?);
            }
            status.abort();
            Ok::<_, String>(records)
        })
        .await?;
    println!("totals {}", totals(&records, started_ms));
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match Options::parse(&args) {
        Ok(o) => run(o).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
