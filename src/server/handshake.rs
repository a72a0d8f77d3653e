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
use tracing::debug;

use crate::connection::Opening;
use crate::deflate::Agreed;
use crate::greeting::Facts;
use crate::http::{self, Decision};
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::state::AbortReason;
use crate::tracker::ConnTracker;

use super::Accepted;
use super::fast;
use super::sniff::Prefixed;

/// What the request handler found, left for us by the hyper service.
enum Outcome {
    /// No request arrived.
    NoRequest,
    /// The request was answered with an error status.
    Rejected,
    /// The request fetched the console page.
    Page,
    /// 101: the socket comes back once hyper has written the response; with
    /// permessage-deflate if it was agreed.
    Upgrade(hyper::upgrade::OnUpgrade, Option<Agreed>),
}

/// The socket after a 101, and what the handshake settled.
pub(crate) struct Upgraded<IO> {
    /// The socket, taken back from hyper.
    pub(crate) io: IO,
    /// Bytes hyper read past the request, and the negotiated extension.
    pub(crate) opening: Opening,
}

/// Runs the HTTP exchange on `io` until `deadline`. Returns the socket after a 101, or
/// `None` after recording why the connection ended.
pub(crate) async fn upgrade<IO>(
    io: Prefixed<IO>,
    accepted: &Accepted,
    tracker: &ConnTracker,
    settings: &Settings,
    metrics: &Arc<Metrics>,
) -> Option<Upgraded<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The common case, a whole upgrade request in the first read, without hyper.
    let first = io.pending();
    if !first.is_empty()
        && let Some(fast) = fast::decide(
            first,
            &settings.policy,
            accepted.limit,
            settings.max_header_size,
        )
    {
        return fast::upgrade(io, fast, accepted, tracker, settings).await;
    }
    let outcome = Arc::new(Mutex::new(Outcome::NoRequest));
    let service = {
        let outcome = outcome.clone();
        let metrics = metrics.clone();
        let policy = settings.policy.clone();
        let limit = accepted.limit;
        service_fn(move |mut req: Request<Incoming>| {
            let decision = http::decide(&req, &policy, limit);
            let next = match &decision {
                Decision::Upgrade { deflate, .. } => Outcome::Upgrade(
                    hyper::upgrade::on(&mut req),
                    deflate.as_ref().map(|d| d.agreed),
                ),
                Decision::Page { .. } => Outcome::Page,
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
    match tokio::time::timeout_at(accepted.deadline, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            if e.is_parse_too_large() {
                metrics.handshake_rejected(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.as_u16());
            }
            return failed(tracker, Some(&e));
        }
        Err(_) => return failed(tracker, None),
    }
    let outcome = std::mem::replace(
        &mut *outcome.lock().unwrap_or_else(|e| e.into_inner()),
        Outcome::NoRequest,
    );
    let (pending, deflate) = match outcome {
        Outcome::Upgrade(pending, deflate) => (pending, deflate),
        Outcome::Rejected => {
            tracker.aborted(AbortReason::HandshakeRejected);
            return None;
        }
        Outcome::Page => {
            tracker.aborted(AbortReason::ConsolePage);
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
    match upgraded.downcast::<TokioIo<Prefixed<IO>>>() {
        Ok(parts) => {
            let hyper::upgrade::Parts { io, read_buf, .. } = parts;
            // What hyper read past the request, then what the sniffer read and hyper did
            // not (stream order); copied, so that hyper's read buffer (which `read_buf`
            // points into) is freed.
            let (io, rest) = io.into_inner().into_parts();
            let mut early = read_buf.to_vec();
            early.extend_from_slice(&rest);
            Some(Upgraded {
                io,
                opening: Opening {
                    early,
                    deflate,
                    greeting: greeting(settings, accepted),
                },
            })
        }
        Err(_) => {
            debug!("upgraded connection of an unexpected type");
            tracker.aborted(AbortReason::HandshakeFailed);
            None
        }
    }
}

/// The greeting of a connection upgraded over HTTP/1.1, filled in, if one is configured.
pub(crate) fn greeting(settings: &Settings, accepted: &Accepted) -> Option<String> {
    settings.greeting.as_ref().map(|g| {
        g.render(&Facts {
            conn_id: accepted.id,
            peer: accepted.peer,
            local: accepted.local,
            protocol: "HTTP/1.1",
        })
    })
}

/// Records a handshake that failed with `error`, or timed out (`None`). Returns `None`, the
/// handshake's result.
pub(crate) fn failed<T>(tracker: &ConnTracker, error: Option<&dyn std::fmt::Display>) -> Option<T> {
    match error {
        Some(e) => debug!(error = %e, "handshake failed"),
        None => debug!("handshake timed out"),
    }
    tracker.aborted(AbortReason::HandshakeFailed);
    None
}
