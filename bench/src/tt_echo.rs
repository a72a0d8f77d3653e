//! `tt-echo ADDR`: the "hand-written tokio-tungstenite echo" that wsechod is measured against.
//!
//! Plain tokio-tungstenite 0.30 from crates.io with its default configuration: a
//! current-thread runtime, `accept_async` on every accepted connection (any path), and every
//! Text or Binary message sent straight back with `send`. Ping, Pong and Close are left to
//! tungstenite, which answers them itself. TCP_NODELAY is set, as wsechod does.
//!
//! Prints `listening on ws://ADDR/` to stderr once it accepts.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;

#[path = "baseline.rs"]
mod baseline;

fn main() {
    baseline::serve("tt-echo", |a| format!("ws://{a}/"), echo);
}

async fn echo(stream: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}
