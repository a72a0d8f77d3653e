//! Unix signals, turned at one place into the small set of things they mean to the daemon.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// What a signal asks the daemon to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: drain and exit (a second one: abort the drain).
    Terminate(&'static str),
    /// SIGHUP: reload the configuration.
    Reload,
    /// SIGUSR2 in a build with the `test-wedge` feature: wedge the runtime.
    #[cfg(feature = "test-wedge")]
    Wedge,
}

/// The daemon's signal stream. Create it before reporting ready, so that no signal sent
/// after READY=1 can take the default action (death).
pub struct Signals(Pin<Box<dyn Stream<Item = Signal> + Send>>);

impl Signals {
    /// Registers the handlers.
    pub fn new() -> std::io::Result<Self> {
        #[cfg(not(feature = "test-wedge"))]
        let raw = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        #[cfg(feature = "test-wedge")]
        let raw = signal_hook_tokio::Signals::new([
            SIGTERM,
            SIGINT,
            SIGHUP,
            signal_hook::consts::SIGUSR2,
        ])?;
        Ok(Signals(Box::pin(raw.filter_map(|s| async move {
            match s {
                SIGTERM => Some(Signal::Terminate("SIGTERM")),
                SIGINT => Some(Signal::Terminate("SIGINT")),
                SIGHUP => Some(Signal::Reload),
                #[cfg(feature = "test-wedge")]
                signal_hook::consts::SIGUSR2 => Some(Signal::Wedge),
                _ => None,
            }
        }))))
    }

    /// Signals from any stream, for tests.
    pub fn from_stream(s: impl Stream<Item = Signal> + Send + 'static) -> Self {
        Signals(Box::pin(s))
    }

    /// The next signal.
    pub async fn recv(&mut self) -> Option<Signal> {
        self.0.next().await
    }
}
