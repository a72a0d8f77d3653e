//! Logging with `tracing`: plain text on stderr, a level that SIGHUP can change.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// Lets the daemon change the log filter after start.
pub struct LogHandle {
    handle: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    /// `RUST_LOG` was set at start; it then wins over `[log] level`, also on reload.
    env_override: bool,
}

impl LogHandle {
    /// Applies a new `[log] level`, unless `RUST_LOG` is in charge.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        if self.env_override {
            return Ok(());
        }
        let filter = EnvFilter::builder()
            .parse(level)
            .map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the global subscriber. Without a terminal on stderr (under systemd, journald
/// adds time stamps) it writes no ANSI colours and no time stamps.
pub fn init(level: &str) -> LogHandle {
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let env_override = env.is_some();
    let filter = env
        .and_then(|v| EnvFilter::builder().parse(v).ok())
        .or_else(|| EnvFilter::builder().parse(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let terminal = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(terminal);
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init` fails only when a subscriber exists already (tests start several daemons).
    if terminal {
        let _ = registry.with(fmt).try_init();
    } else {
        let _ = registry.with(fmt.without_time()).try_init();
    }
    LogHandle {
        handle,
        env_override,
    }
}
