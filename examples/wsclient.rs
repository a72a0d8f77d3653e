//! A small WebSocket client for trying wsechod, also used by the end-to-end tests.
//!
//! ```text
//! wsclient echo URL [--close CODE]       send a text and a binary message, check the echoes;
//!                                        with --close, close with CODE, check that the reply
//!                                        carries it, and print the local address
//! wsclient hold URL N [--every MS]       hold N connections (echoing on each every MS ms);
//!                                        print one line per close frame received, exit when
//!                                        every connection is closed
//! wsclient loop URL SECONDS [--timeout S]
//!                                        open a connection and upgrade it, again and again,
//!                                        one at a time, for SECONDS or until SIGTERM/SIGINT;
//!                                        each attempt is bounded by S seconds (default 30);
//!                                        print every attempt that did not get 101 or was slow,
//!                                        and a last line counting them (see `run_loop`)
//! ```
//! Exit status 0 on success, 1 on any failure (with a message on stderr); `loop` exits 0
//! when it could count, whatever the attempts got.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws = WebSocketStream<TcpStream>;

async fn connect(url: &str) -> Result<Ws, String> {
    let authority = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .ok_or_else(|| format!("not a ws:// URL: {url}"))?;
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    // Small buffers: tungstenite's default 128 KiB per connection would make holding
    // thousands of connections slow and large.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// The next data or close message, answering pings on the way.
async fn next(ws: &mut Ws) -> Result<Message, String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Err(_) => return Err("no message within 10 s".into()),
            Ok(None) => return Err("connection ended without a close frame".into()),
            Ok(Some(Err(e))) => return Err(format!("read: {e}")),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(m))) => return Ok(m),
        }
    }
}

async fn echo_once(ws: &mut Ws, msg: Message) -> Result<(), String> {
    ws.send(msg.clone())
        .await
        .map_err(|e| format!("send: {e}"))?;
    match next(ws).await? {
        m if m == msg => Ok(()),
        m => Err(format!("sent {msg:?}, got {m:?}")),
    }
}

async fn echo(url: &str, close: Option<u16>) -> Result<(), String> {
    let mut ws = connect(url).await?;
    let local = ws
        .get_ref()
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    echo_once(&mut ws, Message::text("hello from wsclient")).await?;
    echo_once(&mut ws, Message::binary(vec![0u8, 1, 2, 253, 254, 255])).await?;
    let Some(code) = close else {
        ws.close(None).await.map_err(|e| format!("close: {e}"))?;
        println!("echo ok: text and binary");
        return Ok(());
    };
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: "wsclient".into(),
    };
    ws.close(Some(frame))
        .await
        .map_err(|e| format!("close: {e}"))?;
    let reply = match next(&mut ws).await? {
        Message::Close(Some(f)) => u16::from(f.code),
        m => return Err(format!("closed with {code}, got {m:?}")),
    };
    while let Some(Ok(_)) = ws.next().await {}
    if reply != code {
        return Err(format!("closed with {code}, the reply carries {reply}"));
    }
    println!("echo ok: text and binary");
    println!("closed {code} from {local}");
    Ok(())
}

/// How one attempt of `loop` ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Upgraded,
    Refused,
    Reset,
    Timeout,
    Other,
}

/// One connection attempt: TCP connect, upgrade request, 101 (checked by tungstenite,
/// accept key included), then a close handshake so the server sees a clean end.
async fn attempt(url: &str, authority: &str) -> (Outcome, String) {
    use std::io::ErrorKind;
    use tokio_tungstenite::tungstenite::Error;
    let io_outcome = |e: &std::io::Error| match e.kind() {
        ErrorKind::ConnectionRefused => Outcome::Refused,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => Outcome::Reset,
        _ => Outcome::Other,
    };
    let tcp = match TcpStream::connect(authority).await {
        Ok(t) => t,
        Err(e) => return (io_outcome(&e), format!("connect: {e}")),
    };
    let mut ws = match tokio_tungstenite::client_async(url, tcp).await {
        Ok((ws, _)) => ws,
        Err(Error::Io(e)) => return (io_outcome(&e), format!("handshake: {e}")),
        Err(Error::Http(r)) => return (Outcome::Other, format!("HTTP {}", r.status())),
        Err(e) => return (Outcome::Other, format!("handshake: {e}")),
    };
    // The 101 is what counts; the close is courtesy, bounded and not judged.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    (Outcome::Upgraded, String::new())
}

/// `loop`: attempts one after another until `seconds` pass or SIGTERM/SIGINT arrives (the
/// attempt under way is finished first). Prints `fail +T s after MS ms: KIND: MESSAGE` for
/// each attempt without 101, `slow +T s: MS ms` for each 101 that took over 100 ms,
/// `progress upgraded=N` every 1000 upgrades, and last
/// `loop: attempts=N upgraded=N refused=N reset=N timeout=N other=N longest_ms=N`.
async fn run_loop(url: &str, seconds: u64, timeout: Duration) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let authority = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .ok_or_else(|| format!("not a ws:// URL: {url}"))?
        .to_string();
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let start = std::time::Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut counts = [0u64; 5];
    let (mut attempts, mut longest) = (0u64, Duration::ZERO);
    let mut stopped = false;
    println!("loop: started");
    while !stopped && std::time::Instant::now() < end {
        let t = std::time::Instant::now();
        let one = tokio::time::timeout(timeout, attempt(url, &authority));
        tokio::pin!(one);
        let (outcome, msg) = loop {
            tokio::select! {
                r = &mut one => break r.unwrap_or((Outcome::Timeout, format!("no 101 within {timeout:?}"))),
                _ = term.recv(), if !stopped => stopped = true,
                _ = int.recv(), if !stopped => stopped = true,
            }
        };
        let took = t.elapsed();
        attempts += 1;
        counts[outcome as usize] += 1;
        longest = longest.max(took);
        let at = t.duration_since(start).as_secs_f64();
        let ms = took.as_millis();
        match outcome {
            Outcome::Upgraded if took > Duration::from_millis(100) => {
                println!("slow +{at:.3} s: {ms} ms");
            }
            Outcome::Upgraded => {}
            Outcome::Refused => println!("fail +{at:.3} s after {ms} ms: refused: {msg}"),
            Outcome::Reset => println!("fail +{at:.3} s after {ms} ms: reset: {msg}"),
            Outcome::Timeout => println!("fail +{at:.3} s after {ms} ms: timeout: {msg}"),
            Outcome::Other => println!("fail +{at:.3} s after {ms} ms: other: {msg}"),
        }
        let upgraded = counts[Outcome::Upgraded as usize];
        if outcome == Outcome::Upgraded && upgraded % 1000 == 0 {
            println!("progress upgraded={upgraded}");
        }
        if outcome == Outcome::Refused {
            // Do not spin on a closed port: a refusal comes back in microseconds.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    println!(
        "loop: attempts={attempts} upgraded={} refused={} reset={} timeout={} other={} longest_ms={}",
        counts[Outcome::Upgraded as usize],
        counts[Outcome::Refused as usize],
        counts[Outcome::Reset as usize],
        counts[Outcome::Timeout as usize],
        counts[Outcome::Other as usize],
        longest.as_millis()
    );
    Ok(())
}

/// Holds one connection until the server closes it; returns the close line.
async fn hold_one(mut ws: Ws, every: Option<Duration>, id: usize) -> Result<String, String> {
    let mut echoes = 0u64;
    loop {
        let msg = match every {
            Some(period) => {
                tokio::time::sleep(period).await;
                let m = Message::text(format!("{id}:{echoes}"));
                if let Err(e) = ws.send(m.clone()).await {
                    return Err(format!("connection {id}: send: {e}"));
                }
                let got = next(&mut ws)
                    .await
                    .map_err(|e| format!("connection {id}: {e}"))?;
                if got == m {
                    echoes += 1;
                    println!("echo {id} {echoes}");
                    continue;
                }
                got
            }
            None => loop {
                match ws.next().await {
                    None => return Err(format!("connection {id}: ended without a close frame")),
                    Some(Err(e)) => return Err(format!("connection {id}: read: {e}")),
                    Some(Ok(Message::Close(f))) => break Message::Close(f),
                    Some(Ok(_)) => continue,
                }
            },
        };
        let Message::Close(frame) = msg else {
            return Err(format!("connection {id}: unexpected {msg:?}"));
        };
        // Our reply to the close goes out as the stream is polled to its end.
        while let Some(Ok(_)) = ws.next().await {}
        return Ok(match frame {
            Some(f) => format!("close {} {}", u16::from(f.code), f.reason),
            None => "close none".into(),
        });
    }
}

async fn hold(url: &str, n: usize, every: Option<Duration>) -> Result<(), String> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(connect(url).await?);
    }
    println!("held {n}");
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(id, ws)| tokio::spawn(hold_one(ws, every, id)))
        .collect();
    let mut failed = false;
    for t in tasks {
        match t.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    if failed {
        Err("some connections failed".into())
    } else {
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["echo", url] => echo(url, None).await,
        ["echo", url, "--close", code] => match code.parse() {
            Ok(code) => echo(url, Some(code)).await,
            Err(_) => Err(format!("not a close code: {code}")),
        },
        ["loop", url, secs] => match secs.parse() {
            Ok(secs) => run_loop(url, secs, Duration::from_secs(30)).await,
            Err(_) => Err(format!("not a number: {secs}")),
        },
        ["loop", url, secs, "--timeout", t] => match (secs.parse(), t.parse()) {
            (Ok(secs), Ok(t)) => run_loop(url, secs, Duration::from_secs(t)).await,
            _ => Err("usage: wsclient loop URL SECONDS [--timeout S]".into()),
        },
        ["hold", url, n] => match n.parse() {
            Ok(n) => hold(url, n, None).await,
            Err(_) => Err(format!("not a number: {n}")),
        },
        ["hold", url, n, "--every", ms] => match (n.parse(), ms.parse()) {
            (Ok(n), Ok(ms)) => hold(url, n, Some(Duration::from_millis(ms))).await,
            _ => Err("usage: wsclient hold URL N [--every MS]".into()),
        },
        _ => Err(
            "usage: wsclient echo URL [--close CODE] | wsclient hold URL N [--every MS] \
                  | wsclient loop URL SECONDS [--timeout S]"
                .into(),
        ),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsclient: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
