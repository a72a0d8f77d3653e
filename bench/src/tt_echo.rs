//! `tt-echo ADDR`: the "hand-written tokio-tungstenite echo" that wsechod is measured against.
//!
//! Plain tokio-tungstenite 0.30 from crates.io with its default configuration: a
//! current-thread runtime, `accept_async` on every accepted connection (any path), and every
//! Text or Binary message sent straight back with `send`. Ping, Pong and Close are left to
//! tungstenite, which answers them itself. TCP_NODELAY is set, as wsechod does.
//!
//! Prints `listening on ws://ADDR/` to stderr once it accepts.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let addr: SocketAddr = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(a)) => a,
        _ => {
            eprintln!("usage: tt-echo HOST:PORT   (port 0 picks a free port)");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("tt-echo: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        eprintln!(
            "listening on ws://{}/",
            listener.local_addr().expect("local address")
        );
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(echo(stream));
                }
                Err(e) => {
                    eprintln!("tt-echo: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
}

async fn echo(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}
