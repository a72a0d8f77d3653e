//! SIGTERM/SIGINT: the drain. The listeners are closed by the caller first; then every
//! connection is told to close, and the drain waits for them up to `drain_timeout` (or a
//! second signal) before aborting the rest.
//!
//! Invariants:
//! - no close frame goes out before the listeners are closed, so a new connection attempt
//!   is refused rather than accepted and dropped;
//! - the report counts only the connections that ended during this drain.

use std::time::Duration;

use tracing::{info, warn};

use crate::server::Shared;
use crate::signals::{Signal, Signals};
use crate::state::{AbortReason, ConnState};
use crate::systemd;

/// After the drain, how long aborted connections get to finish their tasks.
pub(crate) const ABORT_GRACE: Duration = Duration::from_secs(2);

/// SIGTERM with `[shutdown] delay`: not ready at once, but serving (and accepting) on for
/// `delay`, so that load balancers notice `/readyz` and stop sending new clients before the
/// listeners close. A second terminating signal skips what is left of it. Returns whether
/// the whole delay passed.
pub(crate) async fn not_ready_for(delay: Duration, signal: &str, signals: &mut Signals) -> bool {
    if delay.is_zero() {
        return true;
    }
    let ends = humantime::format_duration(delay);
    info!("{signal}: not ready; serving for {ends} more, then draining");
    systemd::stopping(&format!(
        "stopping: not ready (/readyz 503), still serving for {ends}, then draining"
    ));
    let wait = tokio::time::sleep(delay);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            () = &mut wait => return true,
            s = signals.recv() => match s {
                Some(Signal::Terminate(name)) => {
                    info!("{name} during the delay: draining now");
                    return false;
                }
                Some(other) => info!("ignoring {other:?} while stopping"),
                None => return false,
            },
        }
    }
}

/// How a drain went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Report {
    /// Connections open when it started.
    pub(crate) open: usize,
    /// Connections that ended Closed during it.
    pub(crate) closed: u64,
    /// Connections that ended Aborted during it (any reason).
    pub(crate) aborted: u64,
    /// Of those, the ones still open at the deadline or the second signal.
    pub(crate) at_deadline: u64,
    /// Every connection ended before the deadline.
    pub(crate) complete: bool,
}

/// What the metrics said when the drain started.
struct Before {
    closed: u64,
    aborted: u64,
    at_deadline: u64,
}

/// Closes every connection (`rate` close frames a second, 0: all at once) and waits for
/// them, at most `timeout` or until a second terminating signal. The accept loops must be
/// stopped already.
pub(crate) async fn drain(
    shared: &Shared,
    timeout: Duration,
    rate: u32,
    signals: &mut Signals,
) -> Report {
    let m = &shared.metrics;
    m.set_ready(false);
    m.set_draining(true);
    let before = Before {
        closed: m.ended(ConnState::Closed),
        aborted: m.ended(ConnState::Aborted),
        at_deadline: m.aborted_for(AbortReason::DrainDeadline),
    };
    let open = usize::try_from(m.live_total()).unwrap_or(0);
    systemd::stopping(&format!("draining: {open} of {open} connections left"));
    shared.drain.start(open, rate, timeout);
    shared.tasks.close();

    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let complete = loop {
        tokio::select! {
            () = shared.tasks.wait() => break true,
            () = &mut deadline => {
                warn!(left = shared.active(), "drain timeout reached, aborting the remaining connections");
                break false;
            }
            s = signals.recv() => match s {
                Some(Signal::Terminate(name)) => {
                    warn!(left = shared.active(), "{name} during drain: aborting the remaining connections");
                    break false;
                }
                Some(other) => info!("ignoring {other:?} during the drain"),
                None => break false,
            },
            _ = tick.tick() => {
                let left = m.live_total();
                systemd::status(&format!("draining: {left} of {open} connections left"));
            }
        }
    };
    if !complete {
        shared.abort.fire();
        if tokio::time::timeout(ABORT_GRACE, shared.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                left = shared.active(),
                "connections still running after abort"
            );
        }
    }
    m.set_draining(false);
    Report {
        open,
        closed: m.ended(ConnState::Closed) - before.closed,
        aborted: m.ended(ConnState::Aborted) - before.aborted,
        at_deadline: m.aborted_for(AbortReason::DrainDeadline) - before.at_deadline,
        complete,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::{SinkExt, StreamExt};
    use tokio::io::DuplexStream;
    use tokio::time::Instant;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::metrics::Metrics;
    use crate::settings::Settings;
    use crate::tracker::ConnTracker;

    /// A connection served by the daemon's task tracker, as the accept loop would.
    async fn open(shared: &Arc<Shared>) -> WebSocketStream<DuplexStream> {
        let (a, b) = tokio::io::duplex(1 << 16);
        let s = shared.clone();
        shared.tasks.spawn(async move {
            let tracker = ConnTracker::new(s.metrics.clone());
            let settings = s.settings.load_full();
            tokio::select! {
                () = s.abort.wait() => tracker.aborted(AbortReason::DrainDeadline),
                () = crate::connection::serve(a, crate::connection::Opening::default(), &tracker, &s.metrics, &settings, &s.drain) => {}
            }
        });
        WebSocketStream::from_raw_socket(b, Role::Client, None).await
    }

    fn no_signals() -> Signals {
        Signals::from_stream(futures_util::stream::pending())
    }

    #[tokio::test(start_paused = true)]
    async fn polite_clients_close_and_silent_ones_are_aborted_at_the_deadline() {
        let shared = Shared::new(Settings::default(), Arc::new(Metrics::new()));
        // One connection ended before the drain: not part of its report.
        let mut early = open(&shared).await;
        early.close(None).await.unwrap();
        while let Some(Ok(_)) = early.next().await {}
        let mut polite = open(&shared).await;
        let _silent = open(&shared).await;
        polite.send(Message::text("x")).await.unwrap();
        assert_eq!(polite.next().await.unwrap().unwrap(), Message::text("x"));
        let client = tokio::spawn(async move {
            // tungstenite answers the close frame while we read.
            while let Some(Ok(_)) = polite.next().await {}
        });
        let t0 = Instant::now();
        let report = drain(&shared, Duration::from_secs(10), 0, &mut no_signals()).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        assert_eq!(
            report,
            Report {
                open: 2,
                closed: 1,
                aborted: 1,
                at_deadline: 1,
                complete: false
            }
        );
        client.await.unwrap();
        assert!(!shared.metrics.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_signal_ends_the_drain_at_once() {
        let shared = Shared::new(Settings::default(), Arc::new(Metrics::new()));
        let _silent = open(&shared).await;
        let signals = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Signal::Terminate("SIGINT")
        })
        .chain(futures_util::stream::pending());
        let t0 = Instant::now();
        let report = drain(
            &shared,
            Duration::from_secs(60),
            0,
            &mut Signals::from_stream(signals),
        )
        .await;
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
        assert_eq!(report.at_deadline, 1);
        assert!(!report.complete);
    }

    /// Clients that answer the close at once, each noting (virtual) when its close came.
    async fn polite_clients(
        shared: &Arc<Shared>,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<Duration>> {
        let t0 = Instant::now();
        let mut clients = Vec::new();
        for _ in 0..n {
            let mut c = open(shared).await;
            clients.push(tokio::spawn(async move {
                let mut closed_at = Duration::ZERO;
                while let Some(Ok(m)) = c.next().await {
                    if let Message::Close(Some(f)) = m {
                        assert_eq!(u16::from(f.code), 1012);
                        closed_at = t0.elapsed();
                    }
                }
                closed_at
            }));
        }
        while shared.metrics.live(ConnState::Open) < n as i64 {
            tokio::task::yield_now().await;
        }
        clients
    }

    fn with_close_code(code: u16) -> Settings {
        let mut c = crate::config::Config::default();
        c.shutdown.close_code = code;
        Settings::new(&c).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn closes_are_paced_at_the_rate_with_the_configured_code() {
        let shared = Shared::new(with_close_code(1012), Arc::new(Metrics::new()));
        let clients = polite_clients(&shared, 10).await;
        let report = drain(&shared, Duration::from_secs(60), 5, &mut no_signals()).await;
        assert_eq!((report.closed, report.complete), (10, true));
        let mut at: Vec<Duration> = Vec::new();
        for c in clients {
            at.push(c.await.unwrap());
        }
        at.sort();
        // 5 a second: one every 200 ms, the first at once.
        for (n, t) in at.iter().enumerate() {
            let want = Duration::from_millis(200 * n as u64);
            assert!(
                *t >= want && *t < want + Duration::from_millis(50),
                "close {n} at {t:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_too_slow_for_the_timeout_is_sped_up_to_fit() {
        let shared = Shared::new(with_close_code(1012), Arc::new(Metrics::new()));
        let clients = polite_clients(&shared, 21).await;
        // 21 closes at 1 a second would take 20 s; they must fit 80% of the 10 s timeout.
        let report = drain(&shared, Duration::from_secs(10), 1, &mut no_signals()).await;
        assert_eq!((report.closed, report.aborted), (21, 0));
        let mut last = Duration::ZERO;
        for c in clients {
            last = last.max(c.await.unwrap());
        }
        assert!(
            last >= Duration::from_secs(8) && last < Duration::from_millis(8100),
            "{last:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_runs_its_course_or_ends_at_a_second_signal() {
        let t0 = Instant::now();
        assert!(not_ready_for(Duration::from_secs(5), "SIGTERM", &mut no_signals()).await);
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        let second = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Signal::Terminate("SIGTERM")
        })
        .chain(futures_util::stream::pending());
        let t0 = Instant::now();
        let whole = not_ready_for(
            Duration::from_secs(30),
            "SIGTERM",
            &mut Signals::from_stream(second),
        )
        .await;
        assert!(!whole);
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        let t0 = Instant::now();
        assert!(not_ready_for(Duration::ZERO, "SIGTERM", &mut no_signals()).await);
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_with_everyone_polite_completes_early() {
        let shared = Shared::new(Settings::default(), Arc::new(Metrics::new()));
        let mut clients = Vec::new();
        for _ in 0..5 {
            let mut c = open(&shared).await;
            clients.push(tokio::spawn(async move {
                while let Some(Ok(_)) = c.next().await {}
            }));
        }
        let t0 = Instant::now();
        let report = drain(&shared, Duration::from_secs(60), 0, &mut no_signals()).await;
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(
            (report.closed, report.aborted, report.complete),
            (5, 0, true)
        );
    }
}
