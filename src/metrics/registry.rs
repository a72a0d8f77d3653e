//! The definition of every metric: its name, help text, labels and buckets, registered
//! once in [`Metrics::new`], with each labelled series resolved up front.
//!
//! Invariants:
//! - every series exists from the start (at 0), so a dashboard or alert never sees one
//!   appear late;
//! - a name is registered once: a duplicate or an invalid name panics at start, never later.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::labels::{CLOSE_LABELS, close_label};
use super::messages::Messages;
use super::{Metrics, unix_now};
use crate::state::{AbortReason, ConnState};

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn float_gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn by_label<const N: usize>(vec: &IntCounterVec, labels: [&str; N]) -> [IntCounter; N] {
    labels.map(|l| vec.with_label_values(&[l]))
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

impl Metrics {
    /// Registers every metric, all series present from the start (also at 0).
    pub fn new() -> Self {
        let registry = Registry::new();

        let live_vec = IntGaugeVec::new(
            Opts::new(
                "wsechod_connections",
                "Connections now in each live WebSocketState (Connecting, Open, CloseSent, CloseReceived).",
            ),
            &["state"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(live_vec.clone()))
            .expect("unique metric");
        let live = ConnState::LIVE.map(|s| live_vec.with_label_values(&[s.label()]));

        let ended = by_label(
            &counter_vec(
                &registry,
                "wsechod_connections_ended_total",
                "Connections that ended, by final WebSocketState: closed (complete close handshake) or aborted.",
                "state",
            ),
            ["closed", "aborted"],
        );
        let aborted = by_label(
            &counter_vec(
                &registry,
                "wsechod_connections_aborted_total",
                "Connections that ended Aborted, by reason.",
                "reason",
            ),
            AbortReason::ALL.map(AbortReason::label),
        );
        let accepted = counter(
            &registry,
            "wsechod_connections_accepted_total",
            "Connections accepted: TCP connections on the WebSocket listeners, and WebSocket streams \
             over HTTP/2 (a TCP connection that turns out to speak HTTP/2 is counted in \
             wsechod_http2_connections_total instead of closed or aborted).",
        );
        let duration = histogram(
            &registry,
            "wsechod_connection_duration_seconds",
            "Time from TCP accept to the end of the connection.",
            vec![
                0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
            ],
        );
        let rejected = counter_vec(
            &registry,
            "wsechod_handshakes_rejected_total",
            "Upgrade requests answered with an HTTP error instead of 101, by status.",
            "status",
        );
        for status in ["400", "403", "404", "405", "426", "429", "431", "503"] {
            rejected.with_label_values(&[status]);
        }
        let messages = Messages::new();
        registry
            .register(Box::new(messages.clone()))
            .expect("unique metric");
        let close_labels: [String; CLOSE_LABELS] = std::array::from_fn(close_label);
        let close_labels = close_labels.each_ref().map(String::as_str);
        let close_received = by_label(
            &counter_vec(
                &registry,
                "wsechod_close_frames_received_total",
                "Close frames received, by close code (none = no code, other = unlisted code).",
                "code",
            ),
            close_labels,
        );
        let close_sent = by_label(
            &counter_vec(
                &registry,
                "wsechod_close_frames_sent_total",
                "Close frames sent, by close code (none = no code, other = unlisted code).",
                "code",
            ),
            close_labels,
        );
        let pings_received = counter(
            &registry,
            "wsechod_pings_received_total",
            "Ping frames received (each is answered with a pong).",
        );
        let pongs_received = counter(
            &registry,
            "wsechod_pongs_received_total",
            "Pong frames received.",
        );
        let pings_sent = counter(
            &registry,
            "wsechod_pings_sent_total",
            "Keepalive ping frames sent.",
        );
        let reloads = by_label(
            &counter_vec(
                &registry,
                "wsechod_config_reloads_total",
                "Configuration reloads (SIGHUP), by result.",
                "result",
            ),
            ["success", "failure"],
        );
        let last_reload_ok = gauge(
            &registry,
            "wsechod_config_last_reload_successful",
            "Whether the last configuration reload succeeded (1) or failed (0); 1 before any reload.",
        );
        last_reload_ok.set(1);
        let last_reload_time = float_gauge(
            &registry,
            "wsechod_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start or reload).",
        );
        last_reload_time.set(unix_now());

        let discarded = counter(
            &registry,
            "wsechod_messages_discarded_total",
            "Data messages read after our close frame and not echoed (RFC 6455 forbids data after a close).",
        );
        let ready = gauge(
            &registry,
            "wsechod_ready",
            "1 while the daemon serves (/readyz answers 200); 0 before READY and once a drain starts.",
        );
        let draining = gauge(
            &registry,
            "wsechod_draining",
            "1 while a shutdown drain is closing connections, else 0.",
        );
        let max_connections = gauge(
            &registry,
            "wsechod_max_connections",
            "The configured [server] max_connections.",
        );
        let drain_timeout = float_gauge(
            &registry,
            "wsechod_drain_timeout_seconds",
            "The configured [shutdown] drain_timeout.",
        );

        let compressed = counter(
            &registry,
            "wsechod_connections_compressed_total",
            "Connections that negotiated permessage-deflate.",
        );
        let directions = ["received", "sent"];
        let compression_payload = by_label(
            &counter_vec(
                &registry,
                "wsechod_compression_payload_bytes_total",
                "Payload bytes of compressed messages, uncompressed, by direction.",
                "direction",
            ),
            directions,
        );
        let compression_wire = by_label(
            &counter_vec(
                &registry,
                "wsechod_compression_wire_bytes_total",
                "Bytes of compressed messages as sent on the wire (frame payloads), by direction.",
                "direction",
            ),
            directions,
        );

        let handshakes = by_label(
            &counter_vec(
                &registry,
                "wsechod_handshakes_total",
                "WebSocket handshakes completed (101 on HTTP/1.1, 200 on HTTP/2), by HTTP version.",
                "http",
            ),
            ["1.1", "2"],
        );
        let http2_connections = gauge(
            &registry,
            "wsechod_http2_connections",
            "TCP connections serving HTTP/2 now (each carries WebSockets as streams).",
        );
        let http2_connections_total = counter(
            &registry,
            "wsechod_http2_connections_total",
            "TCP connections that spoke HTTP/2; they leave the connection states as they start carrying streams.",
        );
        let http2_streams = gauge(
            &registry,
            "wsechod_http2_streams",
            "WebSocket connections open as HTTP/2 streams now.",
        );

        let build_info = IntGaugeVec::new(
            Opts::new("wsechod_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(build_info))
            .expect("unique metric");

        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");

        Metrics {
            registry,
            live,
            ended,
            aborted,
            accepted,
            duration,
            rejected,
            messages,
            close_received,
            close_sent,
            pings_received,
            pongs_received,
            pings_sent,
            reloads,
            last_reload_ok,
            last_reload_time,
            discarded,
            ready,
            draining,
            max_connections,
            drain_timeout,
            compressed,
            compression_payload,
            compression_wire,
            handshakes,
            http2_connections,
            http2_connections_total,
            http2_streams,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_live_state_series_is_present_at_zero() {
        let text = String::from_utf8(Metrics::new().encode()).unwrap();
        for s in ConnState::LIVE {
            let line = format!("wsechod_connections{{state=\"{}\"}} 0", s.label());
            assert!(text.contains(&line), "missing {line}");
        }
        for r in AbortReason::ALL {
            assert!(text.contains(&format!("reason=\"{}\"", r.label())));
        }
        assert!(text.contains("wsechod_build_info{version=\""));
    }
}
