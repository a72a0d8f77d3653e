//! WebSockets over HTTP/2 (RFC 8441): one TCP connection, served by hyper's HTTP/2 server
//! with the extended CONNECT protocol enabled, carrying WebSockets as streams.
//!
//! Invariants:
//! - every stream that asks for a WebSocket is a connection in its own right: a tracker (the
//!   six states), a place in the connection limits, a span `conn{id, peer}`, and a task in
//!   the daemon's task tracker, so the drain waits for it;
//! - the TCP connection's own tracker is handed over (`wsechod_http2_connections`), and its
//!   place in `max_connections` is kept while it lives, so HTTP/2 connections without
//!   streams are bounded too;
//! - on drain, every stream gets its close frame first; the connection sends GOAWAY once its
//!   streams have ended (new streams meanwhile get 503);
//! - a connection with no stream for `server.handshake_timeout` is closed (GOAWAY), and one
//!   that stops answering HTTP/2 PINGs (sent every `websocket.ping_interval`) within
//!   `websocket.pong_timeout` is dropped.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span};

use super::limits::Admission;
use super::{Accepted, Shared};
use crate::connection::{self, Opening};
use crate::greeting::Facts;
use crate::http::{self, Decision, Limit, Rejection};
use crate::metrics::Http;
use crate::settings::Settings;
use crate::state::AbortReason;
use crate::tracker::ConnTracker;

/// The WebSocket streams of one HTTP/2 connection that are still running.
#[derive(Debug)]
struct Streams {
    /// How many.
    live: AtomicUsize,
    /// Woken whenever one ends.
    ended: Notify,
    /// When the last one ended, or the connection began: where its time without a stream
    /// starts once `live` is 0.
    last_ended: Mutex<Instant>,
}

/// One stream's place in [`Streams`], given back when it ends.
struct StreamGuard(Arc<Streams>);

impl Streams {
    fn new() -> Self {
        Streams {
            live: AtomicUsize::new(0),
            ended: Notify::new(),
            last_ended: Mutex::new(Instant::now()),
        }
    }

    fn enter(self: &Arc<Self>) -> StreamGuard {
        self.live.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Since when the connection has had no stream; `None` while one runs.
    fn none_since(&self) -> Option<Instant> {
        if self.live() > 0 {
            return None;
        }
        Some(*self.last_ended.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until no stream runs.
    async fn all_ended(&self) {
        loop {
            let ended = self.ended.notified();
            if self.live() == 0 {
                return;
            }
            ended.await;
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // Before the count goes down: whoever sees 0 streams sees this time too.
        *self.0.last_ended.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.live.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

/// Marks the TCP connection as an HTTP/2 connection for as long as it lives.
struct Http2Connection<'a>(&'a Shared);

impl Drop for Http2Connection<'_> {
    fn drop(&mut self) {
        self.0.metrics.http2_connection(false);
    }
}

/// Serves an HTTP/2 connection on `io` until it ends.
pub(crate) async fn serve<IO>(
    io: IO,
    accepted: &Accepted,
    tracker: &ConnTracker,
    settings: &Arc<Settings>,
    shared: &Arc<Shared>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(h2) = settings.http2 else {
        tracker.aborted(AbortReason::HandshakeFailed);
        return;
    };
    if !tracker.hand_over_to_http2() {
        return;
    }
    let _counted = Http2Connection(shared);
    debug!("HTTP/2 connection");
    let streams = Arc::new(Streams::new());
    let service = {
        let (settings, shared, streams) = (settings.clone(), shared.clone(), streams.clone());
        let accepted = *accepted;
        service_fn(move |req: Request<Incoming>| {
            let response = stream(req, &accepted, &settings, &shared, &streams);
            std::future::ready(Ok::<_, Infallible>(response))
        })
    };
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .enable_connect_protocol()
        .max_concurrent_streams(h2.max_streams)
        .initial_stream_window_size(h2.stream_window)
        .initial_connection_window_size(h2.connection_window)
        .max_send_buf_size(h2.send_buffer)
        // Twice ours: a header list over ours reaches `stream`, which answers 431 and
        // counts it as HTTP/1.1's are counted; one over twice ours hyper's h2 answers with
        // 431 itself, uncounted, and one far over that ends the connection.
        .max_header_list_size(
            u32::try_from(settings.max_header_size.saturating_mul(2)).unwrap_or(u32::MAX),
        )
        // Rapid reset (CVE-2023-44487): streams a client may reset before we accept them,
        // and streams it may make us reset, before the connection is closed.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(Some(1024))
        .timer(TokioTimer::new());
    if let Some(interval) = settings.timers.ping_interval {
        builder
            .keep_alive_interval(interval)
            .keep_alive_timeout(settings.timers.pong_timeout);
    }
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle_for = settings.handshake_timeout;
    let idle = tokio::time::sleep(idle_for);
    tokio::pin!(idle);
    let mut draining = false;
    let mut goaway = false;
    loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "HTTP/2 connection ended");
                }
                return;
            }
            () = shared.drain.started(), if !draining => draining = true,
            // Every stream got its close frame and ended: now GOAWAY.
            () = streams.all_ended(), if draining && !goaway => {
                debug!("drained, sending GOAWAY");
                conn.as_mut().graceful_shutdown();
                goaway = true;
            }
            // Idle since the last stream ended, not merely idle now: a stream that ended a
            // moment ago does not make the connection idle for `idle_for`.
            () = &mut idle, if !goaway => match streams.none_since() {
                Some(since) if since + idle_for <= Instant::now() => {
                    debug!("no stream for {idle_for:?}, sending GOAWAY");
                    conn.as_mut().graceful_shutdown();
                    goaway = true;
                }
                Some(since) => idle.as_mut().reset(since + idle_for),
                None => idle.as_mut().reset(Instant::now() + idle_for),
            },
        }
    }
}

/// Answers one request on the connection; a WebSocket runs on in a task of its own.
fn stream(
    mut req: Request<Incoming>,
    accepted: &Accepted,
    settings: &Arc<Settings>,
    shared: &Arc<Shared>,
    streams: &Arc<Streams>,
) -> Response<http_body_util::Full<hyper::body::Bytes>> {
    let tracker = ConnTracker::new(shared.metrics.clone());
    let (admission, limit) = Admission::take(
        &shared.counts,
        accepted.peer.ip(),
        settings.max_connections,
        settings.max_connections_per_ip,
    );
    let limit = if shared.drain.is_started() {
        Limit::Draining
    } else {
        limit
    };
    let decision = if header_list_size(&req) > settings.max_header_size {
        Decision::Reject(Rejection {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            body: "header list too large\n",
            header: None,
        })
    } else {
        http::decide_h2(&req, &settings.policy, limit)
    };
    let response = http::response_h2(&decision);
    let deflate = match decision {
        Decision::Upgrade { deflate, .. } => deflate,
        Decision::Reject(r) => {
            debug!(
                status = r.status.as_u16(),
                path = req.uri().path(),
                "HTTP/2 request rejected"
            );
            shared.metrics.handshake_rejected(r.status.as_u16());
            tracker.aborted(AbortReason::HandshakeRejected);
            return response;
        }
        Decision::Page { .. } => {
            tracker.aborted(AbortReason::ConsolePage);
            return response;
        }
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    // Its own root span: a stream is a connection, not a part of the TCP connection's.
    let span = debug_span!(
        target: "wsechod::connection",
        parent: None,
        "conn",
        conn_id = id,
        peer = %accepted.peer,
        http = 2
    );
    let place = (admission, streams.enter());
    let greeting = settings.greeting.as_ref().map(|g| {
        g.render(&Facts {
            conn_id: id,
            peer: accepted.peer,
            local: accepted.local,
            protocol: "HTTP/2",
        })
    });
    let opening = Opening {
        early: Vec::new(),
        deflate: deflate.map(|d| d.agreed),
        greeting,
    };
    let task = task(upgrade, place, opening, tracker, settings, shared);
    shared.tasks.spawn(task.instrument(span));
    response
}

/// The size of a request's header list as HTTP/2 counts it (RFC 9113 section 6.5.2): each
/// field's name and value, plus 32, pseudo-header fields included.
fn header_list_size<B>(req: &Request<B>) -> usize {
    const OVERHEAD: usize = 32;
    let uri = req.uri();
    let pseudo = [
        Some((":method", req.method().as_str().len())),
        uri.scheme_str().map(|s| (":scheme", s.len())),
        uri.authority().map(|a| (":authority", a.as_str().len())),
        uri.path_and_query().map(|p| (":path", p.as_str().len())),
        req.extensions()
            .get::<hyper::ext::Protocol>()
            .map(|p| (":protocol", p.as_str().len())),
    ];
    let pseudo = pseudo.into_iter().flatten().map(|(n, v)| n.len() + v);
    let fields = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len());
    pseudo.chain(fields).map(|n| n + OVERHEAD).sum()
}

/// The task of one WebSocket stream, from our 200 to its end; at the drain's end, whatever
/// is left of it is aborted.
///
/// Not an `async fn`: one keeps its arguments in its state for as long as it runs, so the
/// opening and the wait for hyper's hand-over would take room in every idle stream's task
/// beside the connection built from them. The WebSocket gets them boxed.
fn task(
    upgrade: OnUpgrade,
    place: (Admission, StreamGuard),
    opening: Opening,
    tracker: ConnTracker,
    settings: &Arc<Settings>,
    shared: &Arc<Shared>,
) -> impl Future<Output = ()> + Send + 'static {
    let deadline = Instant::now() + settings.handshake_timeout;
    // Boxed, with the opening in it: it is over once hyper has handed the stream over.
    let handover = Box::pin(handover(upgrade, deadline, opening));
    let (settings, shared) = (settings.clone(), shared.clone());
    async move {
        let _place = place;
        // Not an `async fn` of its own either: one keeps each argument twice
        // (rust-lang/rust#62958).
        let open = async {
            let Some((upgraded, opening)) = handover.await else {
                tracker.aborted(AbortReason::HandshakeFailed);
                return;
            };
            shared.metrics.handshake_completed(Http::V2);
            shared.metrics.http2_stream(true);
            debug!("WebSocket open over HTTP/2");
            let io = TokioIo::new(upgraded);
            let m = &shared.metrics;
            connection::serve(io, opening, &tracker, m, &settings, &shared.drain).await;
            shared.metrics.http2_stream(false);
        };
        tokio::select! {
            biased;
            () = shared.abort.wait() => tracker.aborted(AbortReason::DrainDeadline),
            () = open => {}
        }
    }
}

/// Waits for hyper to hand over the stream (after our 200 went out); `None` if it does not
/// within the handshake timeout.
async fn handover(
    upgrade: OnUpgrade,
    deadline: Instant,
    opening: Opening,
) -> Option<(Upgraded, Opening)> {
    match tokio::time::timeout_at(deadline, upgrade).await {
        Ok(Ok(upgraded)) => Some((upgraded, opening)),
        Ok(Err(e)) => {
            debug!(error = %e, "HTTP/2 stream not upgraded");
            None
        }
        Err(_) => {
            debug!("HTTP/2 stream not handed over within the handshake timeout");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, WriteHalf};
    use tokio::sync::mpsc;

    use super::*;
    use crate::metrics::Metrics;

    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const END_HEADERS: u8 = 0x4;
    const CANCEL: u32 = 0x8;

    /// Frames the server sent: (virtual time it arrived, type, stream).
    type Frames = mpsc::UnboundedReceiver<(Instant, u8, u32)>;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = len[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    /// The header block of an extended CONNECT (RFC 8441) for `/ws`, as HPACK literals
    /// without indexing or Huffman coding.
    fn connect() -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "http"),
            (":path", "/ws"),
            (":authority", "localhost"),
            ("sec-websocket-version", "13"),
        ] {
            block.push(0);
            block.push(u8::try_from(name.len()).unwrap());
            block.extend(name.as_bytes());
            block.push(u8::try_from(value.len()).unwrap());
            block.extend(value.as_bytes());
        }
        block
    }

    /// An h2c connection served as the accept loop serves one, after the client's preface
    /// and SETTINGS: the client's writing half, and the frames the server sends.
    async fn connection(settings: Settings) -> (WriteHalf<DuplexStream>, Frames) {
        let shared = Shared::new(settings, Arc::new(Metrics::new()));
        let (client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let settings = shared.settings.load_full();
            let tracker = ConnTracker::new(shared.metrics.clone());
            let accepted = Accepted {
                id: 1,
                peer: "192.0.2.1:50000".parse().unwrap(),
                local: "192.0.2.2:8080".parse().unwrap(),
                limit: Limit::None,
                deadline: Instant::now() + settings.handshake_timeout,
            };
            super::super::serve_io(server, &accepted, &tracker, &settings, &shared).await;
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(super::super::sniff::PREFACE).await.unwrap();
        wr.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut head = [0u8; 9];
            while rd.read_exact(&mut head).await.is_ok() {
                let len =
                    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                let mut payload = vec![0; len];
                if rd.read_exact(&mut payload).await.is_err() {
                    break;
                }
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                if tx.send((Instant::now(), head[3], stream)).is_err() {
                    break;
                }
            }
        });
        (wr, rx)
    }

    /// The next frame of `kind`: when it came, and its stream.
    async fn next(frames: &mut Frames, kind: u8) -> (Instant, u32) {
        loop {
            let (at, k, stream) = frames.recv().await.expect("the connection ended first");
            if k == kind {
                return (at, stream);
            }
        }
    }

    #[test]
    fn the_header_list_size_counts_pseudo_headers_and_32_per_field() {
        let req = Request::builder()
            .method("CONNECT")
            .uri("http://localhost/ws")
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        let fields = [
            (":method", "CONNECT"),
            (":scheme", "http"),
            (":authority", "localhost"),
            (":path", "/ws"),
            ("sec-websocket-version", "13"),
        ];
        let expected: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
        assert_eq!(header_list_size(&req), expected);
    }

    /// Every idle WebSocket stream keeps its task: what it holds beyond the connection
    /// itself is paid 10,000 times over by 10,000 idle streams.
    #[test]
    fn an_idle_streams_task_is_small() {
        let shared = Shared::new(Settings::default(), Arc::new(Metrics::new()));
        let settings = shared.settings.load_full();
        let streams = Arc::new(Streams::new());
        let (admission, _) = Admission::take(&shared.counts, [192, 0, 2, 1].into(), 0, 0);
        let upgrade = hyper::upgrade::on(Request::new(()));
        let tracker = ConnTracker::new(shared.metrics.clone());
        let place = (admission, streams.enter());
        let task = task(
            upgrade,
            place,
            Opening::default(),
            tracker,
            &settings,
            &shared,
        );
        let size = std::mem::size_of_val(&task);
        // The connection itself, on an in-memory pipe (16 bytes; hyper's stream is 48).
        let (io, _client) = tokio::io::duplex(16);
        let tracker = ConnTracker::new(shared.metrics.clone());
        let opening = Opening::default();
        let conn = connection::serve(
            io,
            opening,
            &tracker,
            &shared.metrics,
            &settings,
            &shared.drain,
        );
        let conn = std::mem::size_of_val(&conn);
        eprintln!("an HTTP/2 stream's task: {size} bytes, its connection {conn}");
        // 1360 before the opening and the hand-over's wait left it, 1240 after.
        assert!(
            size - conn <= 384,
            "an HTTP/2 stream's task: {size} bytes, its connection {conn}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_streams_gets_goaway_after_the_handshake_timeout() {
        let settings = Settings::default();
        let idle = settings.handshake_timeout;
        let start = Instant::now();
        let (_client, mut frames) = connection(settings).await;
        let (goaway, _) = next(&mut frames, GOAWAY).await;
        let after = goaway - start;
        assert!(
            after >= idle && after < idle + Duration::from_secs(1),
            "GOAWAY after {after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn goaway_waits_a_whole_handshake_timeout_after_the_last_stream_ended() {
        let settings = Settings::default();
        let idle = settings.handshake_timeout;
        let start = Instant::now();
        let (mut client, mut frames) = connection(settings).await;
        client
            .write_all(&frame(HEADERS, END_HEADERS, 1, &connect()))
            .await
            .unwrap();
        assert_eq!(next(&mut frames, HEADERS).await.1, 1, "the 200 on stream 1");
        // The stream lives until a second before the timeout, then the client resets it:
        // the connection has been without a stream for a second, not for the timeout.
        tokio::time::sleep_until(start + idle - Duration::from_secs(1)).await;
        client
            .write_all(&frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()))
            .await
            .unwrap();
        let ended = Instant::now();
        let (goaway, _) = next(&mut frames, GOAWAY).await;
        let after = goaway - ended;
        assert!(
            after >= idle && after < idle + Duration::from_secs(1),
            "GOAWAY {after:?} after the last stream ended (handshake_timeout {idle:?})"
        );
    }
}
