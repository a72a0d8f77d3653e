//! The systemd watchdog: `WATCHDOG=1` at half the interval systemd asks for, but only while
//! the runtime runs new tasks and every accept loop answers a probe. A wedged daemon thus
//! stops pinging and systemd kills and restarts it.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A request from the watchdog: answer it to prove the accept loop is being polled.
pub type Probe = oneshot::Sender<()>;

/// Pings systemd every `interval / 2` while the daemon is healthy. Once `stopping` is
/// cancelled the accept loops are gone, and only the runtime itself is checked.
pub async fn run(
    interval: Duration,
    probes: Vec<mpsc::Sender<Probe>>,
    stopping: CancellationToken,
) {
    let period = interval / 2;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let probes: &[_] = if stopping.is_cancelled() {
            &[]
        } else {
            &probes
        };
        if healthy(probes, period).await {
            super::watchdog();
        } else {
            warn!("health check failed, withholding the watchdog ping");
        }
    }
}

/// Whether a new task runs and every probe is answered, each within `within`.
async fn healthy(probes: &[mpsc::Sender<Probe>], within: Duration) -> bool {
    if tokio::time::timeout(within, tokio::spawn(async {}))
        .await
        .is_err()
    {
        return false;
    }
    for probe in probes {
        let (tx, rx) = oneshot::channel();
        if probe.try_send(tx).is_err() {
            return false;
        }
        if !matches!(tokio::time::timeout(within, rx).await, Ok(Ok(()))) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_is_not_answered_makes_the_daemon_unhealthy() {
        let (tx, mut rx) = mpsc::channel::<Probe>(1);
        let answering = tokio::spawn(async move {
            if let Some(p) = rx.recv().await {
                let _ = p.send(());
            }
            rx
        });
        assert!(healthy(std::slice::from_ref(&tx), Duration::from_secs(1)).await);
        // The loop is gone (its receiver is kept but never read): no answer in time.
        let _rx = answering.await.unwrap();
        assert!(!healthy(&[tx], Duration::from_secs(1)).await);
        assert!(healthy(&[], Duration::from_secs(1)).await);
    }
}
