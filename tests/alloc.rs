//! Regression guard for the hot path: echoing a small message allocates nothing on the
//! server, once the connection is warm. Counted by a global allocator that counts only
//! while the server's future is being polled, on the server's thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use wsechod::metrics::Metrics;
use wsechod::settings::Settings;
use wsechod::tracker::ConnTracker;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static IN_SERVER: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if ARMED.load(Ordering::Relaxed) && IN_SERVER.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Marks the thread as "in the server" while the inner future is polled.
struct ServerSide<F>(Pin<Box<F>>);

impl<F: Future> Future for ServerSide<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        IN_SERVER.with(|c| c.set(true));
        let r = self.0.as_mut().poll(cx);
        IN_SERVER.with(|c| c.set(false));
        r
    }
}

fn run(messages: impl Fn(usize) -> Message + Send + 'static) -> usize {
    const WARMUP: usize = 200;
    const MEASURED: usize = 2000;
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let settings = Settings::default();
            let metrics = Arc::new(Metrics::new());
            let drain = wsechod::shutdown::Drain::new();
            let tracker = ConnTracker::new(metrics.clone());
            // Unconstrained: when a task's cooperative budget runs out (how often depends
            // on the machine's load), tokio grows its list of deferred wakers once, which
            // is the runtime's allocation, not the message path's.
            tokio::task::unconstrained(ServerSide(Box::pin(wsechod::connection::serve(
                server_io,
                wsechod::connection::Opening::default(),
                &tracker,
                &metrics,
                &settings,
                &drain,
            ))))
            .await;
        });
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut ws = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        for i in 0..WARMUP + MEASURED {
            if i == WARMUP {
                ARMED.store(true, Ordering::SeqCst);
            }
            let m = messages(i);
            ws.send(m.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), m);
        }
        ARMED.store(false, Ordering::SeqCst);
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    });
    server.join().unwrap();
    ALLOCATIONS.swap(0, Ordering::SeqCst)
}

#[test]
fn small_messages_allocate_nothing_on_the_server() {
    // One test function: the counter is global, so the cases run one after the other.
    let text = run(|i| Message::text(format!("message {i:06}")));
    let binary = run(|i| Message::binary(vec![(i % 251) as u8; 100]));
    assert_eq!(
        (text, binary),
        (0, 0),
        "allocations over 2000 echoes (text, binary)"
    );
}
