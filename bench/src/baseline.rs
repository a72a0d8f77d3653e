//! What the two baseline servers share: argument, current-thread runtime, bind, the
//! `listening on ...` line the bench script waits for, and an accept loop that spawns one
//! task per connection.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// Serves `HOST:PORT` from the first argument with `handle` per connection. `name` is the
/// program's name for messages; `url` turns the bound address into the announced URL.
pub fn serve<F, Fut>(name: &str, url: fn(SocketAddr) -> String, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr: SocketAddr = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(a)) => a,
        _ => {
            eprintln!("usage: {name} HOST:PORT   (port 0 picks a free port)");
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
                eprintln!("{name}: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        eprintln!(
            "listening on {}",
            url(listener.local_addr().expect("local address"))
        );
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(handle(stream));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    eprintln!("{name}: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
}
