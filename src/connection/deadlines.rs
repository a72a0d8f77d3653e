//! The timers of one open connection (keepalive ping, pong timeout, idle timeout, maximum
//! lifetime, write timeout), served by a single tokio timer: [`Deadlines::next`] says when
//! to wake up, [`Deadlines::fire`] what is due then.
//!
//! Pure bookkeeping on `tokio::time::Instant` (the clock tests can pause): nothing here
//! sleeps, so every rule has a unit test with made-up times.

use std::time::Duration;

use tokio::time::Instant;

use crate::settings::Timers;

/// What the connection's timer asks for when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing yet (the deadline moved).
    Nothing,
    /// Time for a keepalive ping.
    Ping,
    /// Our ping went unanswered.
    PongTimeout,
    /// No message either way for `idle_timeout`.
    Idle,
    /// `max_lifetime` reached.
    Lifetime,
    /// The peer has not taken our output for `write_timeout`.
    WriteTimeout,
    /// The paced drain has come to this connection: time for its close frame.
    Drain,
}

/// Keepalive, idle, lifetime and write deadlines of one connection.
#[derive(Debug)]
pub(crate) struct Deadlines {
    /// The configured intervals.
    timers: Timers,
    /// When to send the next ping (`None`: keepalive off, or closing).
    ping_at: Option<Instant>,
    /// When the outstanding ping's pong is due.
    pong_due: Option<Instant>,
    /// When the last data message arrived or left (updated once per batch, not per message).
    last_activity: Instant,
    /// When the connection reaches its (jittered) maximum lifetime.
    end_of_life: Option<Instant>,
    /// Since when our output has waited for the peer to read.
    blocked_since: Option<Instant>,
    /// The connection is closing: only the write timeout still applies.
    closing: bool,
    /// When the paced drain sends this connection's close frame.
    drain_at: Option<Instant>,
}

/// Far enough away to mean "never", near enough not to overflow.
const NEVER: Duration = Duration::from_secs(86400 * 365);

impl Deadlines {
    /// The deadlines of a connection opened at `now`. `jitter` (0 to 1) takes up to 10% off
    /// the maximum lifetime, so that clients reconnecting together spread out.
    pub(crate) fn new(timers: Timers, now: Instant, jitter: f64) -> Self {
        Deadlines {
            timers,
            ping_at: timers.ping_interval.map(|i| now + i),
            pong_due: None,
            last_activity: now,
            end_of_life: timers
                .max_lifetime
                .map(|l| now + l.mul_f64(1.0 - 0.1 * jitter.clamp(0.0, 1.0))),
            blocked_since: None,
            closing: false,
            drain_at: None,
        }
    }

    /// The earliest deadline (far away when every timer is off).
    pub(crate) fn next(&self) -> Instant {
        let write = self.blocked_since.map(|t| t + self.timers.write_timeout);
        let others = if self.closing {
            [None; 4]
        } else {
            [
                self.ping_at,
                self.pong_due,
                self.timers.idle_timeout.map(|t| self.last_activity + t),
                self.end_of_life,
            ]
        };
        others
            .into_iter()
            .chain([write, self.drain_at.filter(|_| !self.closing)])
            .flatten()
            .min()
            .unwrap_or_else(|| self.last_activity + NEVER)
    }

    /// What is due at `now`; a ping due is rearmed for the next interval.
    pub(crate) fn fire(&mut self, now: Instant) -> Due {
        if self
            .blocked_since
            .is_some_and(|t| now >= t + self.timers.write_timeout)
        {
            return Due::WriteTimeout;
        }
        if self.closing {
            return Due::Nothing;
        }
        if self.drain_at.is_some_and(|t| now >= t) {
            return Due::Drain;
        }
        if self.end_of_life.is_some_and(|t| now >= t) {
            return Due::Lifetime;
        }
        if self.pong_due.is_some_and(|t| now >= t) {
            return Due::PongTimeout;
        }
        if self
            .timers
            .idle_timeout
            .is_some_and(|t| now >= self.last_activity + t)
        {
            return Due::Idle;
        }
        if let (Some(at), Some(interval)) = (self.ping_at, self.timers.ping_interval)
            && now >= at
        {
            self.ping_at = Some(now + interval);
            if self.pong_due.is_none() {
                self.pong_due = Some(now + self.timers.pong_timeout);
            }
            return Due::Ping;
        }
        Due::Nothing
    }

    /// A pong arrived: the outstanding ping is answered.
    pub(crate) fn pong_received(&mut self) {
        self.pong_due = None;
    }

    /// A data message arrived or left at `now`. Returns whether the next deadline moved.
    pub(crate) fn activity(&mut self, now: Instant) -> bool {
        self.last_activity = now;
        self.timers.idle_timeout.is_some()
    }

    /// Whether our output waits for the peer (since `now` if it starts waiting). Returns
    /// whether the next deadline moved.
    pub(crate) fn set_blocked(&mut self, blocked: bool, now: Instant) -> bool {
        match (blocked, self.blocked_since) {
            (true, None) => self.blocked_since = Some(now),
            (false, Some(_)) => self.blocked_since = None,
            _ => return false,
        }
        true
    }

    /// The paced drain sends this connection's close frame at `at`.
    pub(crate) fn drain_at(&mut self, at: Instant) {
        self.drain_at = Some(at);
    }

    /// We sent our close frame: keepalive, idle and lifetime no longer apply.
    pub(crate) fn closing(&mut self) {
        self.closing = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn timers() -> Timers {
        Timers {
            ping_interval: Some(30 * S),
            pong_timeout: 15 * S,
            idle_timeout: None,
            max_lifetime: None,
            write_timeout: 30 * S,
        }
    }

    #[test]
    fn pings_every_interval_and_times_out_without_a_pong() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(timers(), t0, 0.0);
        assert_eq!(d.next(), t0 + 30 * S);
        assert_eq!(d.fire(t0 + 29 * S), Due::Nothing);
        assert_eq!(d.fire(t0 + 30 * S), Due::Ping);
        // The pong is due 15 s after the ping, before the next ping.
        assert_eq!(d.next(), t0 + 45 * S);
        assert_eq!(d.fire(t0 + 44 * S), Due::Nothing);
        assert_eq!(d.fire(t0 + 45 * S), Due::PongTimeout);
    }

    #[test]
    fn a_pong_clears_the_timeout_and_the_next_ping_follows() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(timers(), t0, 0.0);
        assert_eq!(d.fire(t0 + 30 * S), Due::Ping);
        d.pong_received();
        assert_eq!(d.next(), t0 + 60 * S);
        assert_eq!(d.fire(t0 + 60 * S), Due::Ping);
    }

    #[test]
    fn a_late_pong_timeout_longer_than_the_interval_keeps_the_first_ping_due() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(
            Timers {
                pong_timeout: 45 * S,
                ..timers()
            },
            t0,
            0.0,
        );
        assert_eq!(d.fire(t0 + 30 * S), Due::Ping);
        assert_eq!(d.fire(t0 + 60 * S), Due::Ping);
        // Still measured from the first, unanswered ping.
        assert_eq!(d.fire(t0 + 75 * S), Due::PongTimeout);
    }

    #[test]
    fn idle_counts_from_the_last_data_message() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(
            Timers {
                ping_interval: None,
                idle_timeout: Some(10 * S),
                ..timers()
            },
            t0,
            0.0,
        );
        assert_eq!(d.next(), t0 + 10 * S);
        assert!(d.activity(t0 + 8 * S));
        assert_eq!(d.fire(t0 + 10 * S), Due::Nothing);
        assert_eq!(d.next(), t0 + 18 * S);
        assert_eq!(d.fire(t0 + 18 * S), Due::Idle);
    }

    #[test]
    fn activity_moves_nothing_without_an_idle_timeout() {
        let mut d = Deadlines::new(timers(), Instant::now(), 0.0);
        assert!(!d.activity(Instant::now()));
    }

    #[test]
    fn lifetime_is_jittered_by_up_to_ten_percent() {
        let t0 = Instant::now();
        let t = Timers {
            ping_interval: None,
            max_lifetime: Some(100 * S),
            ..timers()
        };
        assert_eq!(Deadlines::new(t, t0, 0.0).next(), t0 + 100 * S);
        assert_eq!(Deadlines::new(t, t0, 1.0).next(), t0 + 90 * S);
        let mut d = Deadlines::new(t, t0, 0.5);
        assert_eq!(d.fire(t0 + 94 * S), Due::Nothing);
        assert_eq!(d.fire(t0 + 95 * S), Due::Lifetime);
    }

    #[test]
    fn lifetime_wins_over_a_due_pong() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(
            Timers {
                max_lifetime: Some(40 * S),
                ..timers()
            },
            t0,
            0.0,
        );
        assert_eq!(d.fire(t0 + 30 * S), Due::Ping);
        assert_eq!(d.fire(t0 + 50 * S), Due::Lifetime);
    }

    #[test]
    fn write_timeout_runs_only_while_blocked_and_also_when_closing() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(timers(), t0, 0.0);
        assert!(d.set_blocked(true, t0 + 5 * S));
        assert!(!d.set_blocked(true, t0 + 6 * S), "the first block counts");
        assert_eq!(d.next(), t0 + 30 * S, "the ping comes first");
        assert!(d.set_blocked(false, t0 + 7 * S));
        assert!(d.set_blocked(true, t0 + 20 * S));
        d.closing();
        assert_eq!(d.next(), t0 + 50 * S);
        assert_eq!(d.fire(t0 + 49 * S), Due::Nothing);
        assert_eq!(d.fire(t0 + 50 * S), Due::WriteTimeout);
    }

    #[test]
    fn the_drain_turn_comes_first_and_only_once() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(timers(), t0, 0.0);
        d.drain_at(t0 + 5 * S);
        assert_eq!(d.next(), t0 + 5 * S);
        assert_eq!(d.fire(t0 + 4 * S), Due::Nothing);
        assert_eq!(d.fire(t0 + 5 * S), Due::Drain);
        d.closing();
        assert_eq!(d.fire(t0 + 6 * S), Due::Nothing);
    }

    #[test]
    fn closing_stops_keepalive_and_every_timer_off_means_never() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(timers(), t0, 0.0);
        d.closing();
        assert_eq!(d.fire(t0 + 100 * S), Due::Nothing);
        assert!(d.next() > t0 + 86400 * S);
        let off = Timers {
            ping_interval: None,
            ..timers()
        };
        assert!(Deadlines::new(off, t0, 0.0).next() > t0 + 86400 * S);
    }
}
