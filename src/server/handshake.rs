//! The HTTP/1.1 exchange on a new connection, through hyper: one request, answered with
//! 101 (and the socket handed back for the WebSocket) or with an error status.
//!
//! Invariant: every path out of [`upgrade`] that returns `None` has recorded why the
//! connection ended on its tracker: no request at all, a request answered with an error,
//! or a handshake that failed or timed out.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::debug;

use crate::http::{self, Decision, Limit};
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::state::AbortReason;
use crate::tracker::ConnTracker;

/// What the request handler found, left for us by the hyper service.
enum Outcome {
    /// No request arrived.
    NoRequest,
    /// The request was answered with an error status.
    Rejected,
    /// 101: the socket comes back once hyper has written the response.
    Upgrade(hyper::upgrade::OnUpgrade),
}

/// The socket after a 101, with the bytes the client sent right behind its request.
pub(crate) struct Upgraded<IO> {
    /// The socket, taken back from hyper.
    pub(crate) io: IO,
    /// Bytes hyper read past the request.
    pub(crate) early: Vec<u8>,
}

/// Runs the HTTP exchange on `io` until `deadline`. Returns the socket after a 101, or
/// `None` after recording why the connection ended.
pub(crate) async fn upgrade<IO>(
    io: IO,
    deadline: Instant,
    tracker: &ConnTracker,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    limit: Limit,
) -> Option<Upgraded<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let outcome = Arc::new(Mutex::new(Outcome::NoRequest));
    let service = {
        let outcome = outcome.clone();
        let metrics = metrics.clone();
        let policy = settings.policy.clone();
        service_fn(move |mut req: Request<Incoming>| {
            let decision = http::decide(&req, &policy, limit);
            let next = match &decision {
                Decision::Upgrade { .. } => Outcome::Upgrade(hyper::upgrade::on(&mut req)),
                Decision::Reject(r) => {
                    debug!(
                        status = r.status.as_u16(),
                        path = req.uri().path(),
                        "handshake rejected"
                    );
                    metrics.handshake_rejected(r.status.as_u16());
                    Outcome::Rejected
                }
            };
            *outcome.lock().unwrap_or_else(|e| e.into_inner()) = next;
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
    let outcome = std::mem::replace(
        &mut *outcome.lock().unwrap_or_else(|e| e.into_inner()),
        Outcome::NoRequest,
    );
    let pending = match outcome {
        Outcome::Upgrade(pending) => pending,
        Outcome::Rejected => {
            tracker.aborted(AbortReason::HandshakeRejected);
            return None;
        }
        Outcome::NoRequest => {
            debug!("closed without a request");
            tracker.aborted(AbortReason::NoRequest);
            return None;
        }
    };
    let upgraded = match pending.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            tracker.aborted(AbortReason::HandshakeFailed);
            return None;
        }
    };
    // Take our own socket back from hyper: no boxed, dynamically dispatched I/O on the
    // message path. Bytes the client sent right behind its request are handed on.
    match upgraded.downcast::<TokioIo<IO>>() {
        Ok(parts) => {
            let hyper::upgrade::Parts { io, read_buf, .. } = parts;
            // A copy, so that hyper's read buffer (which `read_buf` points into) is freed.
            let early = read_buf.to_vec();
            Some(Upgraded {
                io: io.into_inner(),
                early,
            })
        }
        Err(_) => {
            debug!("upgraded connection of an unexpected type");
            tracker.aborted(AbortReason::HandshakeFailed);
            None
        }
    }
}
