//! Every metric wsechod exports, registered once, with each labelled series resolved up
//! front so that the per-message path only touches atomics (no map lookup, no lock).

use std::time::{Instant, SystemTime};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::state::{AbortReason, ConnState};

/// The exact content type Prometheus 3 requires for the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Message kinds, as the `type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A text message (valid UTF-8).
    Text = 0,
    /// A binary message.
    Binary = 1,
}

impl Kind {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Binary => "binary",
        }
    }
}

/// Close codes with their own label value; every other code counts as `other`, a close
/// frame without a code as `none`.
const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
];
const CLOSE_LABELS: usize = CLOSE_CODES.len() + 2;

fn close_label(i: usize) -> String {
    match CLOSE_CODES.get(i) {
        Some(code) => code.to_string(),
        None if i == CLOSE_CODES.len() => "other".into(),
        None => "none".into(),
    }
}

fn close_index(code: Option<u16>) -> usize {
    match code {
        None => CLOSE_CODES.len() + 1,
        Some(c) => CLOSE_CODES
            .iter()
            .position(|k| *k == c)
            .unwrap_or(CLOSE_CODES.len()),
    }
}

/// All metrics. Cheap to share (`Arc<Metrics>`); every field is an atomic handle.
pub struct Metrics {
    /// The registry `/metrics` gathers from.
    registry: Registry,
    /// `wsechod_connections{state}`: live connections per live state, in [`ConnState::LIVE`] order.
    live: [IntGauge; 4],
    /// `wsechod_connections_ended_total{state}`: `[closed, aborted]`.
    ended: [IntCounter; 2],
    /// `wsechod_connections_aborted_total{reason}`, in [`AbortReason::ALL`] order.
    aborted: [IntCounter; AbortReason::ALL.len()],
    /// `wsechod_connections_accepted_total`.
    accepted: IntCounter,
    /// `wsechod_connection_duration_seconds`, observed when a connection ends.
    duration: Histogram,
    /// `wsechod_handshakes_rejected_total{status}`.
    rejected: IntCounterVec,
    /// `wsechod_messages_received_total{type}`.
    messages_received: [IntCounter; 2],
    /// `wsechod_messages_sent_total{type}`.
    messages_sent: [IntCounter; 2],
    /// `wsechod_received_bytes_total{type}` (message payload bytes).
    bytes_received: [IntCounter; 2],
    /// `wsechod_sent_bytes_total{type}` (message payload bytes).
    bytes_sent: [IntCounter; 2],
    /// `wsechod_message_size_bytes`: sizes of received messages.
    message_size: Histogram,
    /// `wsechod_close_frames_received_total{code}`.
    close_received: [IntCounter; CLOSE_LABELS],
    /// `wsechod_close_frames_sent_total{code}`.
    close_sent: [IntCounter; CLOSE_LABELS],
    /// `wsechod_pings_received_total`.
    pings_received: IntCounter,
    /// `wsechod_pongs_received_total`.
    pongs_received: IntCounter,
    /// `wsechod_pings_sent_total` (keepalive).
    pings_sent: IntCounter,
    /// `wsechod_config_reloads_total{result}`: `[success, failure]`.
    reloads: [IntCounter; 2],
    /// `wsechod_config_last_reload_successful`.
    last_reload_ok: IntGauge,
    /// `wsechod_config_last_reload_success_timestamp_seconds`.
    last_reload_time: Gauge,
    /// `wsechod_messages_discarded_total`: data messages read after our close frame, which
    /// RFC 6455 forbids answering.
    discarded: IntCounter,
    /// `wsechod_ready`: 1 while serving (`/readyz` 200), 0 before READY and once a drain
    /// starts. The one source of readiness.
    ready: IntGauge,
    /// `wsechod_draining`: 1 while a shutdown drain runs.
    draining: IntGauge,
    /// `wsechod_max_connections`: the configured limit, for alerts on the headroom.
    max_connections: IntGauge,
    /// `wsechod_drain_timeout_seconds`: the configured drain timeout.
    drain_timeout: Gauge,
    /// `wsechod_connections_compressed_total`: connections that negotiated
    /// permessage-deflate.
    compressed: IntCounter,
    /// `wsechod_compression_payload_bytes_total{direction}`: `[received, sent]` payload
    /// bytes of compressed messages, uncompressed.
    compression_payload: [IntCounter; 2],
    /// `wsechod_compression_wire_bytes_total{direction}`: `[received, sent]` the same
    /// messages' bytes as compressed on the wire.
    compression_wire: [IntCounter; 2],
    /// `wsechod_handshakes_total{http}`: `[1.1, 2]` WebSocket handshakes completed.
    handshakes: [IntCounter; 2],
    /// `wsechod_http2_connections`: TCP connections serving HTTP/2 now.
    http2_connections: IntGauge,
    /// `wsechod_http2_connections_total`: TCP connections that turned out to speak HTTP/2.
    http2_connections_total: IntCounter,
    /// `wsechod_http2_streams`: WebSocket streams open over HTTP/2 now.
    http2_streams: IntGauge,
}

/// The HTTP version a WebSocket came over, as the `http` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http {
    /// HTTP/1.1 (the Upgrade handshake).
    V1 = 0,
    /// HTTP/2 (extended CONNECT, RFC 8441).
    V2 = 1,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

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
        let kinds = [Kind::Text.label(), Kind::Binary.label()];
        let messages_received = by_label(
            &counter_vec(
                &registry,
                "wsechod_messages_received_total",
                "WebSocket messages received, by type.",
                "type",
            ),
            kinds,
        );
        let messages_sent = by_label(
            &counter_vec(
                &registry,
                "wsechod_messages_sent_total",
                "WebSocket messages sent (echoes), by type.",
                "type",
            ),
            kinds,
        );
        let bytes_received = by_label(
            &counter_vec(
                &registry,
                "wsechod_received_bytes_total",
                "Payload bytes of WebSocket messages received, by type.",
                "type",
            ),
            kinds,
        );
        let bytes_sent = by_label(
            &counter_vec(
                &registry,
                "wsechod_sent_bytes_total",
                "Payload bytes of WebSocket messages sent, by type.",
                "type",
            ),
            kinds,
        );
        let message_size = histogram(
            &registry,
            "wsechod_message_size_bytes",
            "Size of received WebSocket messages.",
            prometheus::exponential_buckets(16.0, 4.0, 10).expect("valid buckets"),
        );
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
        let last_reload_ok = IntGauge::new(
            "wsechod_config_last_reload_successful",
            "Whether the last configuration reload succeeded (1) or failed (0); 1 before any reload.",
        )
        .expect("valid metric");
        last_reload_ok.set(1);
        registry
            .register(Box::new(last_reload_ok.clone()))
            .expect("unique metric");
        let last_reload_time = Gauge::new(
            "wsechod_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start or reload).",
        )
        .expect("valid metric");
        last_reload_time.set(unix_now());
        registry
            .register(Box::new(last_reload_time.clone()))
            .expect("unique metric");

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
        let drain_timeout = Gauge::new(
            "wsechod_drain_timeout_seconds",
            "The configured [shutdown] drain_timeout.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(drain_timeout.clone()))
            .expect("unique metric");

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
            messages_received,
            messages_sent,
            bytes_received,
            bytes_sent,
            message_size,
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

    /// The text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding into a Vec cannot fail");
        buf
    }

    pub(crate) fn connection_accepted(&self) {
        self.accepted.inc();
        self.live[ConnState::Connecting as usize].inc();
    }

    pub(crate) fn state_changed(
        &self,
        old: ConnState,
        new: ConnState,
        reason: Option<AbortReason>,
        started: Instant,
    ) {
        self.live[old as usize].dec();
        match new {
            ConnState::Closed => self.ended[0].inc(),
            ConnState::Aborted => {
                self.ended[1].inc();
                self.aborted[reason.unwrap_or(AbortReason::Reset) as usize].inc();
            }
            live => self.live[live as usize].inc(),
        }
        if new.is_terminal() {
            self.duration.observe(started.elapsed().as_secs_f64());
        }
    }

    /// A TCP connection left `from` to serve HTTP/2 (see `ConnTracker::hand_over_to_http2`).
    pub(crate) fn handed_over(&self, from: ConnState) {
        self.live[from as usize].dec();
        self.http2_connection(true);
    }

    /// An upgrade request was answered with `status` instead of 101.
    pub fn handshake_rejected(&self, status: u16) {
        self.rejected
            .with_label_values(&[status.to_string().as_str()])
            .inc();
    }

    /// A message of `len` payload bytes arrived.
    #[inline]
    pub fn message_received(&self, kind: Kind, len: usize) {
        self.messages_received[kind as usize].inc();
        self.bytes_received[kind as usize].inc_by(len as u64);
        self.message_size.observe(len as f64);
    }

    /// A message of `len` payload bytes was queued for sending.
    #[inline]
    pub fn message_sent(&self, kind: Kind, len: usize) {
        self.messages_sent[kind as usize].inc();
        self.bytes_sent[kind as usize].inc_by(len as u64);
    }

    /// A close frame arrived (`None`: without a code).
    pub fn close_received(&self, code: Option<u16>) {
        self.close_received[close_index(code)].inc();
    }

    /// A close frame was sent.
    pub fn close_sent(&self, code: Option<u16>) {
        self.close_sent[close_index(code)].inc();
    }

    /// A ping arrived.
    pub fn ping_received(&self) {
        self.pings_received.inc();
    }

    /// A keepalive ping was sent.
    pub fn ping_sent(&self) {
        self.pings_sent.inc();
    }

    /// A pong arrived.
    pub fn pong_received(&self) {
        self.pongs_received.inc();
    }

    /// Records the result of a configuration reload.
    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
        self.last_reload_ok.set(i64::from(ok));
        if ok {
            self.last_reload_time.set(unix_now());
        }
    }

    /// A WebSocket handshake completed over `http`.
    pub fn handshake_completed(&self, http: Http) {
        self.handshakes[http as usize].inc();
    }

    /// A TCP connection started (`true`) or stopped serving HTTP/2.
    pub fn http2_connection(&self, open: bool) {
        if open {
            self.http2_connections_total.inc();
            self.http2_connections.inc();
        } else {
            self.http2_connections.dec();
        }
    }

    /// An HTTP/2 WebSocket stream opened (`true`) or ended.
    pub fn http2_stream(&self, open: bool) {
        if open {
            self.http2_streams.inc();
        } else {
            self.http2_streams.dec();
        }
    }

    /// TCP connections that turned out to speak HTTP/2, so far.
    pub fn http2_connections_total(&self) -> u64 {
        self.http2_connections_total.get()
    }

    /// A connection negotiated permessage-deflate.
    pub fn compression_negotiated(&self) {
        self.compressed.inc();
    }

    /// Compressed messages arrived: `payload` bytes inflated from `wire` bytes.
    pub fn compressed_received(&self, payload: u64, wire: u64) {
        self.compression_payload[0].inc_by(payload);
        self.compression_wire[0].inc_by(wire);
    }

    /// A compressed message was queued: `payload` bytes deflated to `wire` bytes.
    pub fn compressed_sent(&self, payload: u64, wire: u64) {
        self.compression_payload[1].inc_by(payload);
        self.compression_wire[1].inc_by(wire);
    }

    /// A data message arrived after our close frame and was not answered.
    pub fn message_discarded(&self) {
        self.discarded.inc();
    }

    /// Data messages discarded so far.
    pub fn messages_discarded(&self) -> u64 {
        self.discarded.get()
    }

    /// Marks the daemon ready (serving) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Whether the daemon is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }

    /// Marks a drain as running or not.
    pub fn set_draining(&self, draining: bool) {
        self.draining.set(i64::from(draining));
    }

    /// Publishes the configured limits the alert rules compare against.
    pub fn set_limits(&self, max_connections: usize, drain_timeout: std::time::Duration) {
        self.max_connections
            .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
        self.drain_timeout.set(drain_timeout.as_secs_f64());
    }

    /// Connections now in live state `s`.
    pub fn live(&self, s: ConnState) -> i64 {
        self.live.get(s as usize).map_or(0, IntGauge::get)
    }

    /// All live connections.
    pub fn live_total(&self) -> i64 {
        self.live.iter().map(IntGauge::get).sum()
    }

    /// Connections that ended in terminal state `s`.
    pub fn ended(&self, s: ConnState) -> u64 {
        match s {
            ConnState::Closed => self.ended[0].get(),
            ConnState::Aborted => self.ended[1].get(),
            _ => 0,
        }
    }

    /// Connections aborted for `reason`.
    pub fn aborted_for(&self, reason: AbortReason) -> u64 {
        self.aborted[reason as usize].get()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.get()
    }

    /// Messages received so far, all types.
    pub fn messages_received_total(&self) -> u64 {
        self.messages_received.iter().map(IntCounter::get).sum()
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
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

    #[test]
    fn close_codes_map_to_labels() {
        let m = Metrics::new();
        m.close_received(Some(1000));
        m.close_received(Some(4000));
        m.close_received(None);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains("wsechod_close_frames_received_total{code=\"1000\"} 1"));
        assert!(text.contains("wsechod_close_frames_received_total{code=\"other\"} 1"));
        assert!(text.contains("wsechod_close_frames_received_total{code=\"none\"} 1"));
    }
}
