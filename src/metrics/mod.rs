//! Every metric wsechod exports, registered once, with each labelled series resolved up
//! front so that the per-message path only touches atomics (no map lookup, no lock).
//!
//! This file holds [`Metrics`] (one field a metric family) and its text exposition;
//! `registry.rs` defines and registers every metric, `record.rs` is what the daemon calls
//! when something happens, `labels.rs` holds the label values and `messages.rs` the
//! per-message counters, kept per thread.

mod labels;
mod messages;
mod record;
mod registry;

use std::time::SystemTime;

use prometheus::{
    Encoder, Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, Registry, TextEncoder,
};

use self::labels::CLOSE_LABELS;
pub use self::labels::{Http, Kind};
use self::messages::Messages;
use crate::state::AbortReason;

/// The exact content type Prometheus 3 requires for the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// All metrics. Cheap to share (`Arc<Metrics>`); every field is an atomic handle.
pub struct Metrics {
    /// The registry `/metrics` gathers from.
    registry: Registry,
    /// `wsechod_connections{state}`: live connections per live state, in
    /// [`ConnState::LIVE`](crate::state::ConnState::LIVE) order.
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
    /// `wsechod_messages_received_total{type}`, `wsechod_messages_sent_total{type}`,
    /// `wsechod_received_bytes_total{type}`, `wsechod_sent_bytes_total{type}` and
    /// `wsechod_message_size_bytes`: per thread, summed when scraped.
    messages: Messages,
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding into a Vec cannot fail");
        buf
    }
}

/// Now, as Unix time in seconds.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
