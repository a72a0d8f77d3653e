//! `tcp-echo ADDR`: the raw-TCP echo baseline.
//!
//! A current-thread tokio runtime, an accept loop, and for each connection a task that reads
//! into one 64 KiB buffer, reused, and writes back what it read. TCP_NODELAY is set, as
//! wsechod does. The buffer is read into without being zeroed first (`read_buf`), so its
//! pages only become resident once data arrives: an idle connection costs its task, its
//! socket registration and the allocator's bookkeeping.
//!
//! Prints `listening on tcp://ADDR` to stderr once it accepts.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BUFFER: usize = 64 * 1024;

fn main() {
    let addr: SocketAddr = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(a)) => a,
        _ => {
            eprintln!("usage: tcp-echo HOST:PORT   (port 0 picks a free port)");
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
                eprintln!("tcp-echo: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        eprintln!(
            "listening on tcp://{}",
            listener.local_addr().expect("local address")
        );
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(echo(stream));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    eprintln!("tcp-echo: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
}

async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
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
