//! What the rest of the daemon calls on [`Metrics`] when something happens (a connection
//! changes state, a message arrives, a reload ends), and the values it reads back for its
//! status line, its health endpoints and tests.
//!
//! Invariants:
//! - the per-message and per-connection calls touch only atomics resolved in `registry.rs`
//!   (the per-message ones the calling thread's own, `messages.rs`): no lookup, no lock, no
//!   allocation (only a rejected handshake looks its status up);
//! - a connection is in exactly one live series at a time: each state change moves it from
//!   its old series to its new one, or to an ended one, or (handed over to HTTP/2) out.

use std::time::Instant;

use prometheus::IntGauge;

use super::labels::{Http, Kind, close_index};
use super::{Metrics, unix_now};
use crate::state::{AbortReason, ConnState};

impl Metrics {
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
        self.messages.received(kind, len);
    }

    /// A message of `len` payload bytes was queued for sending.
    #[inline]
    pub fn message_sent(&self, kind: Kind, len: usize) {
        self.messages.sent(kind, len);
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
        self.messages.received_total()
    }
}
