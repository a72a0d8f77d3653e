//! `STATUS=`: what `systemctl status` shows while the daemon serves, kept current at most
//! once a second and only sent when it changed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::server::Shared;
use crate::state::ConnState;
use crate::systemd;

/// What the WebSocket listeners speak now (`[http2] enabled` can change on reload).
fn protocols(shared: &Shared) -> &'static str {
    if shared.settings.load().http2.is_some() {
        "HTTP/1.1 and HTTP/2"
    } else {
        "HTTP/1.1 only"
    }
}

/// The parts of the status line that do not come from the metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    /// Where we listen, e.g. `ws://0.0.0.0:8080/ws, metrics http://127.0.0.1:9180/metrics`.
    pub(crate) urls: String,
    /// How the last reload went (empty before any).
    pub(crate) note: Arc<Mutex<String>>,
}

impl Status {
    /// The status line with `rate` messages per second.
    pub(crate) fn line(&self, shared: &Shared, rate: u64) -> String {
        let open = shared.metrics.live(ConnState::Open);
        let note = self.note.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut s = format!(
            "serving {} ({}): {open} open connections, {rate} messages/s",
            self.urls,
            protocols(shared)
        );
        if !note.is_empty() {
            s.push_str("; ");
            s.push_str(&note);
        }
        s
    }

    /// The line `READY=1` goes with: where we listen, and over what.
    pub(crate) fn ready_line(&self, shared: &Shared) -> String {
        format!("serving {} ({})", self.urls, protocols(shared))
    }

    /// Records how the last reload went.
    pub(crate) fn set_note(&self, note: String) {
        *self.note.lock().unwrap_or_else(|e| e.into_inner()) = note;
    }

    /// Keeps `STATUS=` current until the task is aborted.
    pub(crate) async fn run(self, shared: Arc<Shared>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_count = shared.metrics.messages_received_total();
        let mut last_status = String::new();
        loop {
            tick.tick().await;
            let count = shared.metrics.messages_received_total();
            let status = self.line(&shared, count - last_count);
            last_count = count;
            if status != last_status {
                systemd::status(&status);
                last_status = status;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::settings::Settings;

    #[test]
    fn the_status_says_whether_http2_is_served() {
        let status = Status {
            urls: "ws://127.0.0.1:1/ws".into(),
            ..Status::default()
        };
        let mut config = Config::default();
        let on = Shared::new(Settings::new(&config).unwrap(), Arc::new(Metrics::new()));
        assert_eq!(
            status.line(&on, 7),
            "serving ws://127.0.0.1:1/ws (HTTP/1.1 and HTTP/2): 0 open connections, 7 messages/s"
        );
        config.http2.enabled = false;
        on.settings.store(Arc::new(Settings::new(&config).unwrap()));
        assert_eq!(
            status.ready_line(&on),
            "serving ws://127.0.0.1:1/ws (HTTP/1.1 only)"
        );
    }
}
