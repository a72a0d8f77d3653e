//! The WebSocket listener: the accept loop, and each connection from accept to end (TLS,
//! the HTTP handshake, then [`crate::connection`]).
//!
//! The caller binds the listener and owns shutdown (`run(listener, shared, stop, probes)`),
//! so tests bind port 0 and the daemon can bind every address before it reports ready.
//!
//! Invariants:
//! - every accepted connection runs in its own task, tracked in [`Shared::tasks`], with one
//!   tracing span (`conn{conn_id, peer}`) and one [`ConnTracker`];
//! - per-connection errors stay in the connection: they are logged at debug level in its
//!   span and never reach the accept loop.

mod fast;
mod h2;
mod handshake;
mod limits;
mod sniff;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, warn};

use self::limits::{Admission, Counts};
use self::sniff::{Prefixed, Protocol};
use crate::connection;
use crate::http::Limit;
use crate::latch::Latch;
use crate::metrics::Http;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::shutdown::Drain;
use crate::state::AbortReason;
use crate::systemd::watchdog::Probe;
use crate::tracker::ConnTracker;

/// State shared by the listeners, every connection and the daemon's life cycle.
pub struct Shared {
    /// Current settings; replaced on reload, read once per new connection.
    pub settings: ArcSwap<Settings>,
    /// All metrics, including the connection-state gauges and readiness.
    pub metrics: Arc<Metrics>,
    /// The drain: when it starts, and each open connection's turn to send its close frame.
    pub drain: Drain,
    /// Fired when the drain ends: connections still open are aborted.
    pub abort: Latch,
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
            drain: Drain::new(),
            abort: Latch::new(),
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

/// What the accept loop knows about a new connection.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    /// Its id in the logs (`conn{conn_id}`).
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The address it connected to, when the greeting shows it (else the peer's).
    pub local: SocketAddr,
    /// The limit it is over, if any (answered with 503 or 429 instead of 101).
    pub limit: Limit,
    /// When its TLS and HTTP handshake must be done.
    pub deadline: Instant,
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
    // One wait for the whole loop, not one registered and dropped per accepted connection.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            () = &mut stopped => break,
            Some(probe) = probes.recv() => { let _ = probe.send(()); }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                    // Its fields are journal fields under journald (CONN_ID, PEER). A debug
                    // span of the connection lines' target: no connection logs anything
                    // above debug, and an enabled span costs every idle connection about
                    // 400 bytes.
                    let span = debug_span!(target: "wsechod::connection", "conn", conn_id = id, %peer);
                    let task = Handler::new(id, stream, peer, shared.clone()).run();
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
    /// Who it is and the limit it is over.
    accepted: Accepted,
    /// Its state, mirrored in the gauges.
    tracker: ConnTracker,
}

impl Handler {
    fn new(id: u64, stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) -> Self {
        let settings = shared.settings.load_full();
        let tracker = ConnTracker::new(shared.metrics.clone());
        let (admission, limit) = Admission::take(
            &shared.counts,
            peer.ip(),
            settings.max_connections,
            settings.max_connections_per_ip,
        );
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            id,
            peer,
            // Only the greeting shows it: a `getsockname` per connection otherwise spent.
            local: match &settings.greeting {
                Some(g) if g.uses_local() => stream.local_addr().unwrap_or(peer),
                _ => peer,
            },
            limit,
            // One deadline for TLS and HTTP together.
            deadline: Instant::now() + settings.handshake_timeout,
        };
        Handler {
            stream,
            settings,
            shared,
            _admission: admission,
            accepted,
            tracker,
        }
    }

    /// Serves the connection; at the drain's end, whatever is left of it is aborted.
    ///
    /// This and the functions below it are not `async fn`s: an `async fn` keeps its
    /// arguments in its state for as long as it runs, so the socket would be kept once per
    /// level, beside the copy the connection uses, in every open connection's task.
    fn run(self) -> impl Future<Output = ()> + 'static {
        let Handler {
            stream,
            settings,
            shared,
            _admission: admission,
            accepted,
            tracker,
        } = self;
        async move {
            let _place = &admission;
            tokio::select! {
                biased;
                () = shared.abort.wait() => tracker.aborted(AbortReason::DrainDeadline),
                () = serve(stream, &accepted, &tracker, &settings, &shared) => {}
            }
        }
    }
}

fn serve<'a>(
    stream: TcpStream,
    accepted: &'a Accepted,
    tracker: &'a ConnTracker,
    settings: &'a Arc<Settings>,
    shared: &'a Arc<Shared>,
) -> impl Future<Output = ()> + 'a {
    match &settings.tls {
        None => Either::Left(serve_io(stream, accepted, tracker, settings, shared)),
        // Boxed as a whole: the TLS handshake's result (a TLS stream, kilobytes) would
        // otherwise take room in every plain connection's task, also after the upgrade.
        Some(tls) => Either::Right(Box::pin(serve_tls(
            stream,
            tls.clone(),
            accepted,
            tracker,
            settings,
            shared,
        ))),
    }
}

/// The TLS handshake, then HTTP/2 (ALPN `h2`) or HTTP/1.1, then the WebSocket.
async fn serve_tls(
    stream: TcpStream,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    accepted: &Accepted,
    tracker: &ConnTracker,
    settings: &Arc<Settings>,
    shared: &Arc<Shared>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let handshake = tokio::time::timeout_at(accepted.deadline, acceptor.accept(stream)).await;
    match handshake {
        Ok(Ok(tls_stream)) => {
            if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                Box::pin(h2::serve(tls_stream, accepted, tracker, settings, shared)).await;
            } else {
                // The first read, so that a whole upgrade request takes the fast path.
                let first = tokio::time::timeout_at(accepted.deadline, sniff::sniff(tls_stream));
                let Ok((_, io)) = first.await else {
                    debug!("no request within the handshake timeout");
                    tracker.aborted(AbortReason::HandshakeFailed);
                    return;
                };
                Box::pin(serve_http1(io, accepted, tracker, settings, shared)).await;
            }
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

/// A cleartext connection on any byte stream (TCP, or a test's in-memory pipe): HTTP/2
/// with prior knowledge when it opens with the preface and HTTP/2 is on, else the
/// HTTP/1.1 handshake (the sniffer's read is its first), then the WebSocket.
pub fn serve_io<'a, IO>(
    io: IO,
    accepted: &'a Accepted,
    tracker: &'a ConnTracker,
    settings: &'a Arc<Settings>,
    shared: &'a Arc<Shared>,
) -> impl Future<Output = ()> + 'a
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed, with the socket in it: it is over once the protocol is known.
    let sniffing = Box::pin(tokio::time::timeout_at(accepted.deadline, sniff::sniff(io)));
    async move {
        let Ok((protocol, io)) = sniffing.await else {
            debug!("nothing to tell the protocol by within the handshake timeout");
            tracker.aborted(AbortReason::HandshakeFailed);
            return;
        };
        match protocol {
            Protocol::Http2 if settings.http2.is_some() => {
                Box::pin(h2::serve(io, accepted, tracker, settings, shared)).await;
            }
            // With HTTP/2 off, hyper answers the preface as the bad HTTP/1.1 it is.
            _ => serve_http1(io, accepted, tracker, settings, shared).await,
        }
    }
}

/// The HTTP/1.1 exchange, then the WebSocket.
fn serve_http1<'a, IO>(
    io: Prefixed<IO>,
    accepted: &'a Accepted,
    tracker: &'a ConnTracker,
    settings: &'a Settings,
    shared: &'a Shared,
) -> impl Future<Output = ()> + 'a
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed: hyper's connection state is large and dead once the upgrade is done, so it
    // should not stay in every open connection's task.
    let handshake = Box::pin(handshake::upgrade(
        io,
        accepted,
        tracker,
        settings,
        &shared.metrics,
    ));
    async move {
        let Some(handshake::Upgraded { io, opening }) = handshake.await else {
            return;
        };
        shared.metrics.handshake_completed(Http::V1);
        debug!("WebSocket open");
        connection::serve(
            io,
            opening,
            tracker,
            &shared.metrics,
            settings,
            &shared.drain,
        )
        .await;
    }
}
