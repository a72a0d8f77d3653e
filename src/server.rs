//! The WebSocket listener: accept loop, HTTP handshake through hyper, then hand-over of the
//! upgraded socket to [`crate::connection`].
//!
//! The caller binds the listener and owns shutdown (`run(listener, shared, stop)`), so tests
//! bind port 0 and the daemon can bind every address before it reports ready.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::connection;
use crate::http::{self, Decision, Limit};
use crate::metrics::Metrics;
use crate::readahead::ReadAhead;
use crate::settings::Settings;
use crate::state::{AbortReason, ConnTracker};

/// State shared by the listeners, every connection and the daemon's life cycle.
pub struct Shared {
    /// Current settings; replaced on reload, read once per new connection.
    pub settings: ArcSwap<Settings>,
    /// All metrics, including the connection-state gauges.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the drain starts: open connections send close 1000.
    pub drain: CancellationToken,
    /// Cancelled when the drain ends: connections still open are aborted.
    pub abort: CancellationToken,
    /// Every connection task, so the drain can wait for them all.
    pub tasks: TaskTracker,
    /// True from READY until the drain starts (`/readyz`).
    pub ready: AtomicBool,
    /// Connections being served now (handshaking or open), for `max_connections`.
    active: AtomicUsize,
    /// Connections per client address, for `max_connections_per_ip`. Touched on accept and
    /// on close only, never per message.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
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
            ready: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            next_id: AtomicU64::new(1),
        })
    }

    /// Connections being served now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// Holds one place in `Shared::active` for as long as it lives.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    /// Takes a place and returns it with the number of connections including this one.
    fn take(active: &'a AtomicUsize) -> (Self, usize) {
        let n = active.fetch_add(1, Ordering::Relaxed) + 1;
        (Slot(active), n)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Holds one place in `Shared::per_ip` for its address for as long as it lives.
struct IpSlot<'a> {
    map: &'a Mutex<HashMap<IpAddr, usize>>,
    ip: IpAddr,
}

impl<'a> IpSlot<'a> {
    /// Takes a place and returns it with the number of connections from `ip`, this one
    /// included. IPv4-mapped IPv6 addresses count as their IPv4 address.
    fn take(map: &'a Mutex<HashMap<IpAddr, usize>>, ip: IpAddr) -> (Self, usize) {
        let ip = ip.to_canonical();
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        *n += 1;
        let n = *n;
        drop(m);
        (IpSlot { map, ip }, n)
    }
}

impl Drop for IpSlot<'_> {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// A request from the watchdog: answer to prove the accept loop is being polled.
pub type Probe = oneshot::Sender<()>;

/// Accepts connections on `listener` until `stop` is cancelled, then drops the listener so
/// that new connection attempts are refused. Each connection runs in its own task, tracked
/// in `shared.tasks`. `probes` lets the watchdog check that this loop is alive.
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
                    let shared2 = shared.clone();
                    shared.tasks.spawn(handle(stream, peer, shared2).instrument(span));
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

/// Serves one TCP connection from accept to end.
async fn handle(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let (_slot, active) = Slot::take(&shared.active);
    let settings = shared.settings.load_full();
    let tracker = ConnTracker::new(shared.metrics.clone());
    let (_ip_slot, from_ip) = IpSlot::take(&shared.per_ip, peer.ip());
    let limit = if active > settings.max_connections {
        Limit::Total
    } else if settings.max_connections_per_ip > 0 && from_ip > settings.max_connections_per_ip {
        Limit::PerIp
    } else {
        Limit::None
    };
    let _ = stream.set_nodelay(true);
    tokio::select! {
        biased;
        () = shared.abort.cancelled() => tracker.aborted(AbortReason::DrainDeadline),
        () = serve(stream, &tracker, &settings, &shared, limit) => {}
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
    let deadline = tokio::time::Instant::now() + settings.handshake_timeout;
    match &settings.tls {
        None => serve_io(stream, deadline, tracker, settings, shared, limit).await,
        // Boxed: TLS state is large, and plain connections should not carry its size.
        Some(tls) => {
            let tls = tls.clone();
            Box::pin(serve_tls(
                stream, tls, deadline, tracker, settings, shared, limit,
            ))
            .await;
        }
    }
}

async fn serve_tls(
    stream: TcpStream,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    deadline: tokio::time::Instant,
    tracker: &ConnTracker,
    settings: &Settings,
    shared: &Shared,
    limit: Limit,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => {
            serve_io(tls_stream, deadline, tracker, settings, shared, limit).await;
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

/// The HTTP exchange, then the WebSocket, on any byte stream (TCP, TLS, or a test's
/// in-memory pipe).
pub async fn serve_io<IO>(
    io: IO,
    deadline: tokio::time::Instant,
    tracker: &ConnTracker,
    settings: &Settings,
    shared: &Shared,
    limit: Limit,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed: hyper's connection state is large and dead once the upgrade is done, so it
    // should not stay in every open connection's task.
    let handshake = Box::pin(handshake(
        io,
        deadline,
        tracker,
        settings,
        &shared.metrics,
        limit,
    ));
    let Some(upgraded) = handshake.await else {
        return;
    };
    // Take our own socket back from hyper: no boxed, dynamically dispatched I/O on the
    // message path. Bytes the client sent right behind its request are handed on.
    let parts = match upgraded.downcast::<TokioIo<IO>>() {
        Ok(parts) => parts,
        Err(_) => {
            debug!("upgraded connection of an unexpected type");
            tracker.aborted(AbortReason::HandshakeFailed);
            return;
        }
    };
    let hyper::upgrade::Parts { io, read_buf, .. } = parts;
    let early = read_buf.to_vec();
    // Frees hyper's read buffer, which `read_buf` points into, for the connection's life.
    drop(read_buf);
    let io = ReadAhead::new(io.into_inner());
    let ws = WebSocketStream::from_partially_read(io, early, Role::Server, Some(settings.ws)).await;
    debug!("WebSocket open");
    connection::serve(ws, tracker, &shared.metrics, settings, &shared.drain).await;
}

/// Runs the HTTP exchange. Returns the upgraded socket after a 101, or `None` after
/// recording why the connection ended.
async fn handshake<IO>(
    io: IO,
    deadline: tokio::time::Instant,
    tracker: &ConnTracker,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    limit: Limit,
) -> Option<hyper::upgrade::Upgraded>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The service runs inside hyper; it leaves the pending upgrade here for us.
    let slot: Arc<Mutex<Option<hyper::upgrade::OnUpgrade>>> = Arc::default();
    let service = {
        let slot = slot.clone();
        let metrics = metrics.clone();
        let policy = settings.policy.clone();
        service_fn(move |mut req: Request<Incoming>| {
            let decision = http::decide(&req, &policy, limit);
            match &decision {
                Decision::Upgrade { .. } => {
                    let on = hyper::upgrade::on(&mut req);
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(on);
                }
                Decision::Reject(r) => {
                    debug!(
                        status = r.status.as_u16(),
                        path = req.uri().path(),
                        "handshake rejected"
                    );
                    metrics.handshake_rejected(r.status.as_u16());
                }
            }
            std::future::ready(Ok::<_, Infallible>(http::response(&decision)))
        })
    };
    let mut builder = http1::Builder::new();
    // Keep-alive stays on (hyper would otherwise overwrite the 101's `Connection: Upgrade`);
    // error responses carry `Connection: close` and the whole exchange is bounded anyway.
    builder
        // A client that sends its request and then FIN (`nc -N`, health checkers) still
        // gets its answer; the exchange stays bounded by the deadline.
        .half_close(true)
        .max_buf_size(settings.max_header_size)
        .timer(TokioTimer::new())
        .header_read_timeout(settings.handshake_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    match tokio::time::timeout_at(deadline, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            if e.is_parse_too_large() {
                metrics.handshake_rejected(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.as_u16());
            }
            debug!(error = %e, "handshake failed");
            tracker.aborted(AbortReason::HandshakeFailed);
            return None;
        }
        Err(_) => {
            debug!("handshake timed out");
            tracker.aborted(AbortReason::HandshakeFailed);
            return None;
        }
    }
    let pending = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(pending) = pending else {
        tracker.aborted(AbortReason::HandshakeRejected);
        return None;
    };
    match pending.await {
        Ok(upgraded) => Some(upgraded),
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            tracker.aborted(AbortReason::HandshakeFailed);
            None
        }
    }
}
