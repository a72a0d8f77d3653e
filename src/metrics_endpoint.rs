//! The metrics listener: `GET /metrics` (Prometheus text format), `/healthz` (the process
//! runs) and `/readyz` (serving; 503 before READY and from the moment a drain starts).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::http::text;
use crate::metrics::{CONTENT_TYPE, Metrics};

/// Time a scraper has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the metrics listener until `stop` is cancelled.
pub async fn run(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                std::future::ready(Ok::<_, Infallible>(route(
                    req.method(),
                    req.uri().path(),
                    &metrics,
                )))
            });
            let result = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                debug!(%peer, error = %e, "metrics connection failed");
            }
        });
    }
}

/// Answers one request on the metrics listener.
fn route(method: &Method, path: &str, metrics: &Metrics) -> Response<Full<Bytes>> {
    let plain = |status, body| text(status, body, None).expect("static response");
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n",
            Some((header::ALLOW, "GET, HEAD")),
        )
        .expect("static response");
    }
    match path {
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(metrics.encode())));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            resp
        }
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/readyz" if metrics.is_ready() => plain(StatusCode::OK, "ready\n"),
        "/readyz" => plain(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let metrics = Metrics::new();
        let get = |p| route(&Method::GET, p, &metrics).status();
        assert_eq!(get("/healthz"), StatusCode::OK);
        assert_eq!(get("/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        metrics.set_ready(true);
        assert_eq!(get("/readyz"), StatusCode::OK);
        metrics.set_ready(false);
        assert_eq!(get("/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get("/nope"), StatusCode::NOT_FOUND);
        let m = route(&Method::GET, "/metrics", &metrics);
        assert_eq!(m.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(
            route(&Method::POST, "/metrics", &metrics).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
