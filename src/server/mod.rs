//! The WebSocket listener: the accept loop, and each connection from accept to end (TLS,
//! the HTTP handshake, then [`crate::connection`]).
//!
//! The caller binds the listener and owns shutdown (`run(listener, shared, stop, probes)`),
//! so tests bind port 0 and the daemon can bind every address before it reports ready.
//!
//! Invariants:
//! - every accepted connection runs in its own task, tracked in [`Shared::tasks`], with one
//!   tracing span (`conn{id, peer}`) and one [`ConnTracker`];
//! - per-connection errors stay in the connection: they are logged at debug level in its
//!   span and never reach the accept loop.

mod handshake;
mod limits;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use self::limits::{Admission, Counts};
use crate::connection;
use crate::http::Limit;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::state::AbortReason;
use crate::systemd::watchdog::Probe;
use crate::tracker::ConnTracker;

/// State shared by the listeners, every connection and the daemon's life cycle.
pub struct Shared {
    /// Current settings; replaced on reload, read once per new connection.
    pub settings: ArcSwap<Settings>,
    /// All metrics, including the connection-state gauges and readiness.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the drain starts: open connections send their close frame.
    pub drain: CancellationToken,
    /// Cancelled when the drain ends: connections still open are aborted.
    pub abort: CancellationToken,
    /// Every connection task, so the drain can wait for them all.
    pub tasks: TaskTracker,
    /// Connections served now, in all and per client address.
    counts: Arc<Counts>,
    /// Source of connection ids for logs.
    next_id: AtomicU64,
}

impl Shared {
    /// Fresh shared state for `settings`.
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Shared {
            settings: ArcSwap::from_pointee(settings),
            metrics,
            drain: CancellationToken::new(),
            abort: CancellationToken::new(),
            tasks: TaskTracker::new(),
            counts: Arc::default(),
            next_id: AtomicU64::new(1),
        })
    }

    /// Connections being served now (handshaking or open).
    pub fn active(&self) -> usize {
        self.counts.active()
    }
}

/// Accepts connections on `listener` until `stop` is cancelled, then drops the listener so
/// that new connection attempts are refused. `probes` lets the watchdog check that this
/// loop is alive.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    mut probes: mpsc::Receiver<Probe>,
) {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(probe) = probes.recv() => { let _ = probe.send(()); }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                    let span = info_span!("conn", id, %peer);
                    let task = Handler::new(stream, peer, shared.clone()).run();
                    shared.tasks.spawn(task.instrument(span));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener stays.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
}

/// One accepted TCP connection, from accept to end.
struct Handler {
    /// The socket.
    stream: TcpStream,
    /// The settings at accept time; a reload applies to later connections.
    settings: Arc<Settings>,
    /// What the daemon shares with every connection.
    shared: Arc<Shared>,
    /// This connection's place in the connection counts.
    _admission: Admission,
    /// The limit it is over, if any (answered with 503 or 429 instead of 101).
    limit: Limit,
    /// Its state, mirrored in the gauges.
    tracker: ConnTracker,
}

impl Handler {
    fn new(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) -> Self {
        let settings = shared.settings.load_full();
        let tracker = ConnTracker::new(shared.metrics.clone());
        let (admission, limit) = Admission::take(
            &shared.counts,
            peer.ip(),
            settings.max_connections,
            settings.max_connections_per_ip,
        );
        let _ = stream.set_nodelay(true);
        Handler {
            stream,
            settings,
            shared,
            _admission: admission,
            limit,
            tracker,
        }
    }

    /// Serves the connection; at the drain's end, whatever is left of it is aborted.
    async fn run(self) {
        let Handler {
            stream,
            settings,
            shared,
            _admission,
            limit,
            tracker,
        } = self;
        let abort = shared.abort.clone();
        tokio::select! {
            biased;
            () = abort.cancelled() => tracker.aborted(AbortReason::DrainDeadline),
            () = serve(stream, &tracker, &settings, &shared, limit) => {}
        }
    }
}

async fn serve(
    stream: TcpStream,
    tracker: &ConnTracker,
    settings: &Settings,
    shared: &Shared,
    limit: Limit,
) {
    // One deadline for TLS and HTTP together.
    let deadline = Instant::now() + settings.handshake_timeout;
    match &settings.tls {
        None => serve_io(stream, deadline, tracker, settings, shared, limit).await,
        // Boxed: TLS state is large, and plain connections should not carry its size.
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
            let accepted = tokio::time::timeout_at(deadline, acceptor.accept(stream));
            match Box::pin(accepted).await {
                Ok(Ok(tls_stream)) => {
                    Box::pin(serve_io(
                        tls_stream, deadline, tracker, settings, shared, limit,
                    ))
                    .await;
                }
                Ok(Err(e)) => {
                    debug!(error = %e, "TLS handshake failed");
                    tracker.aborted(AbortReason::HandshakeFailed);
                }
                Err(_) => {
                    debug!("TLS handshake timed out");
                    tracker.aborted(AbortReason::HandshakeFailed);
                }
            }
        }
    }
}

/// The HTTP exchange, then the WebSocket, on any byte stream (TCP, TLS, or a test's
/// in-memory pipe).
pub async fn serve_io<IO>(
    io: IO,
    deadline: Instant,
    tracker: &ConnTracker,
    settings: &Settings,
    shared: &Shared,
    limit: Limit,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed: hyper's connection state is large and dead once the upgrade is done, so it
    // should not stay in every open connection's task.
    let upgraded = Box::pin(handshake::upgrade(
        io,
        deadline,
        tracker,
        settings,
        &shared.metrics,
        limit,
    ))
    .await;
    let Some(up) = upgraded else {
        return;
    };
    debug!("WebSocket open");
    connection::serve(
        up.io,
        up.early,
        tracker,
        &shared.metrics,
        settings,
        &shared.drain,
    )
    .await;
}
