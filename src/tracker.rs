//! The tracker that moves one connection through the six states while keeping the shared
//! gauges right.
//!
//! Invariant: every accepted TCP connection, and every request (stream) on an HTTP/2
//! connection, has exactly one [`ConnTracker`]; while it lives, it is counted in exactly one
//! live-state gauge; when it ends (explicitly or by being dropped) it is counted exactly
//! once as Closed or Aborted, or, for a TCP connection that turns out to speak HTTP/2,
//! handed over to `wsechod_http2_connections_total` (its streams are the connections from
//! then on). So `accepted = closed + aborted + sum(live gauges) + http2 connections` holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use crate::metrics::Metrics;
use crate::state::{AbortReason, ConnState};

/// No abort reason recorded.
const NO_REASON: u8 = u8::MAX;

/// The state of a tracker whose TCP connection went on as HTTP/2: terminal, and counted
/// nowhere among the six states.
const HANDED_OVER: u8 = u8::MAX;

/// Tracks one connection's state and mirrors every change into the shared metrics.
///
/// Methods take `&self` (the state is atomic) so that the connection's future and the code
/// that aborts it from outside can both hold it.
pub struct ConnTracker {
    /// Shared metrics the state is mirrored into.
    metrics: Arc<Metrics>,
    /// The current [`ConnState`] as `u8`.
    state: AtomicU8,
    /// Why it ended Aborted, as `AbortReason as u8` ([`NO_REASON`] before).
    reason: AtomicU8,
    /// When the TCP connection was accepted, for the duration histogram.
    started: Instant,
}

impl ConnTracker {
    /// A connection just accepted: counted as accepted and Connecting.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        metrics.connection_accepted();
        ConnTracker {
            metrics,
            state: AtomicU8::new(ConnState::Connecting as u8),
            reason: AtomicU8::new(NO_REASON),
            started: Instant::now(),
        }
    }

    /// The current state (a connection handed over to HTTP/2 reads as Closed: it is over
    /// as far as the six states go).
    pub fn state(&self) -> ConnState {
        match self.state.load(Ordering::Acquire) {
            HANDED_OVER => ConnState::Closed,
            s => ConnState::from_u8(s),
        }
    }

    /// Why the connection ended Aborted, once it has.
    pub fn abort_reason(&self) -> Option<AbortReason> {
        let r = self.reason.load(Ordering::Acquire);
        AbortReason::ALL.into_iter().find(|a| *a as u8 == r)
    }

    /// Moves to a live state. Ignored once the connection has ended.
    pub fn set(&self, new: ConnState) {
        debug_assert!(!new.is_terminal());
        self.transition(new, None);
    }

    /// Ends the connection as Closed (complete close handshake).
    pub fn closed(&self) {
        self.transition(ConnState::Closed, None);
    }

    /// Ends the connection as Aborted for `reason`.
    pub fn aborted(&self, reason: AbortReason) {
        self.transition(ConnState::Aborted, Some(reason));
    }

    /// The TCP connection turned out to speak HTTP/2: it leaves Connecting without ending
    /// as a WebSocket, and is counted as an HTTP/2 connection instead. Returns false (and
    /// does nothing) unless it was Connecting.
    pub fn hand_over_to_http2(&self) -> bool {
        let connecting = ConnState::Connecting as u8;
        if self
            .state
            .compare_exchange(connecting, HANDED_OVER, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.metrics.handed_over(ConnState::Connecting);
        true
    }

    fn transition(&self, new: ConnState, reason: Option<AbortReason>) {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current == HANDED_OVER {
                return;
            }
            let old = ConnState::from_u8(current);
            if old.is_terminal() || old == new {
                return;
            }
            match self.state.compare_exchange(
                current,
                new as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if let Some(r) = reason {
                        self.reason.store(r as u8, Ordering::Release);
                    }
                    self.metrics.state_changed(old, new, reason, self.started);
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }
}

impl Drop for ConnTracker {
    /// A connection dropped while live ended without a close handshake.
    fn drop(&mut self) {
        self.aborted(AbortReason::Reset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(m: &Metrics) -> Vec<i64> {
        ConnState::LIVE.iter().map(|s| m.live(*s)).collect()
    }

    #[test]
    fn a_clean_life_ends_closed() {
        let m = Arc::new(Metrics::new());
        let t = ConnTracker::new(m.clone());
        assert_eq!(live(&m), [1, 0, 0, 0]);
        t.set(ConnState::Open);
        assert_eq!(live(&m), [0, 1, 0, 0]);
        t.set(ConnState::CloseReceived);
        assert_eq!(live(&m), [0, 0, 0, 1]);
        t.closed();
        assert_eq!(live(&m), [0, 0, 0, 0]);
        assert_eq!(m.ended(ConnState::Closed), 1);
        assert_eq!(m.ended(ConnState::Aborted), 0);
        // Ended is final: nothing counts twice.
        t.aborted(AbortReason::Reset);
        t.set(ConnState::Open);
        drop(t);
        assert_eq!(live(&m), [0, 0, 0, 0]);
        assert_eq!(m.ended(ConnState::Aborted), 0);
        assert_eq!(m.accepted(), 1);
    }

    #[test]
    fn drop_while_live_counts_as_reset() {
        let m = Arc::new(Metrics::new());
        let t = ConnTracker::new(m.clone());
        t.set(ConnState::Open);
        t.set(ConnState::CloseSent);
        drop(t);
        assert_eq!(live(&m), [0, 0, 0, 0]);
        assert_eq!(m.ended(ConnState::Aborted), 1);
        assert_eq!(m.aborted_for(AbortReason::Reset), 1);
    }

    #[test]
    fn explicit_abort_reason_is_kept() {
        let m = Arc::new(Metrics::new());
        let t = ConnTracker::new(m.clone());
        t.aborted(AbortReason::HandshakeRejected);
        drop(t);
        assert_eq!(m.aborted_for(AbortReason::HandshakeRejected), 1);
        assert_eq!(m.aborted_for(AbortReason::Reset), 0);
    }

    #[test]
    fn a_connection_handed_over_to_http2_leaves_the_states_once() {
        let m = Arc::new(Metrics::new());
        let t = ConnTracker::new(m.clone());
        assert!(t.hand_over_to_http2());
        assert!(!t.hand_over_to_http2());
        t.aborted(AbortReason::Reset);
        t.set(ConnState::Open);
        drop(t);
        assert_eq!(live(&m), [0, 0, 0, 0]);
        assert_eq!(m.ended(ConnState::Aborted), 0);
        assert_eq!(m.ended(ConnState::Closed), 0);
        assert_eq!(m.accepted(), 1);
        assert_eq!(m.http2_connections_total(), 1);
        // An open connection is not handed over.
        let t = ConnTracker::new(m.clone());
        t.set(ConnState::Open);
        assert!(!t.hand_over_to_http2());
    }

    #[test]
    fn concurrent_connections_add_up() {
        let m = Arc::new(Metrics::new());
        std::thread::scope(|s| {
            for i in 0..8 {
                let m = m.clone();
                s.spawn(move || {
                    for _ in 0..1000 {
                        let t = ConnTracker::new(m.clone());
                        t.set(ConnState::Open);
                        if i % 2 == 0 {
                            t.set(ConnState::CloseSent);
                            t.closed();
                        }
                    }
                });
            }
        });
        assert_eq!(live(&m), [0, 0, 0, 0]);
        assert_eq!(m.ended(ConnState::Closed), 4000);
        assert_eq!(m.ended(ConnState::Aborted), 4000);
        assert_eq!(m.accepted(), 8000);
    }
}
