//! Unix signals, turned into the small set of things they mean to the daemon.

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// What a signal asks the daemon to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: drain and exit (a second one: abort the drain).
    Terminate(&'static str),
    /// SIGHUP: reload the configuration.
    Reload,
}

/// The daemon's signal stream. Create it before reporting ready, so that no signal sent
/// after READY=1 can take the default action (death).
pub struct Signals(signal_hook_tokio::Signals);

impl Signals {
    /// Registers the handlers.
    pub fn new() -> std::io::Result<Self> {
        signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]).map(Signals)
    }

    /// The next signal.
    pub async fn recv(&mut self) -> Option<Signal> {
        loop {
            match self.0.next().await? {
                SIGTERM => return Some(Signal::Terminate("SIGTERM")),
                SIGINT => return Some(Signal::Terminate("SIGINT")),
                SIGHUP => return Some(Signal::Reload),
                _ => continue,
            }
        }
    }
}
