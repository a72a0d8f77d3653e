//! A small WebSocket client for trying wsechod, also used by the end-to-end tests.
//!
//! ```text
//! wsclient echo URL                      send a text and a binary message, check the echoes
//! wsclient hold URL N [--every MS]       hold N connections (echoing on each every MS ms);
//!                                        print one line per close frame received, exit when
//!                                        every connection is closed
//! ```
//! Exit status 0 on success, 1 on any failure (with a message on stderr).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

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

async fn echo(url: &str) -> Result<(), String> {
    let mut ws = connect(url).await?;
    echo_once(&mut ws, Message::text("hello from wsclient")).await?;
    echo_once(&mut ws, Message::binary(vec![0u8, 1, 2, 253, 254, 255])).await?;
    ws.close(None).await.map_err(|e| format!("close: {e}"))?;
    println!("echo ok: text and binary");
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
        ["echo", url] => echo(url).await,
        ["hold", url, n] => match n.parse() {
            Ok(n) => hold(url, n, None).await,
            Err(_) => Err(format!("not a number: {n}")),
        },
        ["hold", url, n, "--every", ms] => match (n.parse(), ms.parse()) {
            (Ok(n), Ok(ms)) => hold(url, n, Some(Duration::from_millis(ms))).await,
            _ => Err("usage: wsclient hold URL N [--every MS]".into()),
        },
        _ => Err("usage: wsclient echo URL | wsclient hold URL N [--every MS]".into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsclient: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
