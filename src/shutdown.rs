//! The drain as every connection sees it: the moment it starts, and when each
//! connection's close frame is due.
//!
//! Closing 100,000 connections in one instant makes them reconnect in one instant, so the
//! closes can be paced: `[shutdown] close_rate` per second, but never slower than it takes
//! to send every close within 80% of `drain_timeout` (the rest is the clients' time to
//! answer). Until its turn a connection keeps echoing.
//!
//! Invariant: each connection takes exactly one turn ([`Drain::turn`]), turns are handed
//! out in order, and turn N is due at `start + N × interval`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::latch::Latch;

/// The share of `drain_timeout` within which every close frame is sent.
const SEND_WITHIN: f64 = 0.8;

/// The drain signal and its pacing.
#[derive(Debug, Default)]
pub struct Drain {
    /// Fired when the drain starts.
    started: Latch,
    /// When the first close goes out, and the time between two.
    pace: OnceLock<(Instant, Duration)>,
    /// Turns handed out so far.
    turns: AtomicU64,
}

impl Drain {
    /// A drain that has not started.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the drain of `connections` open connections: at `rate` closes per second (0:
    /// all at once), but all within [`SEND_WITHIN`] of `window`.
    pub fn start(&self, connections: usize, rate: u32, window: Duration) {
        let _ = self
            .pace
            .set((Instant::now(), interval(connections, rate, window)));
        self.started.fire();
    }

    /// Whether the drain has started.
    pub fn is_started(&self) -> bool {
        self.started.is_fired()
    }

    /// Waits for the drain to start.
    pub async fn started(&self) {
        self.started.wait().await;
    }

    /// Takes the next turn: when the caller's close frame is due.
    pub fn turn(&self) -> Instant {
        let (start, interval) = *self.pace.get_or_init(|| (Instant::now(), Duration::ZERO));
        let n = self.turns.fetch_add(1, Ordering::Relaxed);
        start + interval.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

/// The time between two closes.
fn interval(connections: usize, rate: u32, window: Duration) -> Duration {
    if rate == 0 || connections <= 1 {
        return Duration::ZERO;
    }
    let wanted = Duration::from_secs_f64(1.0 / f64::from(rate));
    let fit = window.mul_f64(SEND_WITHIN) / u32::try_from(connections - 1).unwrap_or(u32::MAX);
    wanted.min(fit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_rate_is_kept_unless_it_would_not_fit_the_window() {
        assert_eq!(interval(100, 0, 10 * S), Duration::ZERO);
        assert_eq!(interval(10, 100, 10 * S), Duration::from_millis(10));
        // 1,000 closes at 10 per second would take 100 s; within 80% of 10 s instead.
        let i = interval(1001, 10, 10 * S);
        assert_eq!(i, Duration::from_millis(8));
        assert_eq!(interval(1, 10, 10 * S), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn turns_are_spread_from_the_start() {
        let d = Drain::new();
        assert!(!d.is_started());
        d.start(5, 2, 60 * S);
        assert!(d.is_started());
        let t0 = Instant::now();
        let turns: Vec<_> = (0..5).map(|_| d.turn() - t0).collect();
        let want: Vec<_> = (0..5).map(|n| Duration::from_millis(500 * n)).collect();
        assert_eq!(turns, want);
    }
}
