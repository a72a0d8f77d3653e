//! `tcp-echo ADDR`: the raw-TCP echo baseline.
//!
//! A current-thread tokio runtime, an accept loop, and for each connection a task that reads
//! into one 64 KiB buffer, reused, and writes back what it read. TCP_NODELAY is set, as
//! wsechod does. The buffer is read into without being zeroed first (`read_buf`), so its
//! pages only become resident once data arrives: an idle connection costs its task, its
//! socket registration and the allocator's bookkeeping.
//!
//! Prints `listening on tcp://ADDR` to stderr once it accepts.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "baseline.rs"]
mod baseline;

const BUFFER: usize = 64 * 1024;

fn main() {
    baseline::serve("tcp-echo", |a| format!("tcp://{a}"), echo);
}

async fn echo(mut stream: TcpStream) {
    let mut buf = Vec::with_capacity(BUFFER);
    loop {
        buf.clear();
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if stream.write_all(&buf).await.is_err() {
                    return;
                }
            }
        }
    }
}
