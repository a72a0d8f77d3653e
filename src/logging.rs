//! Logging with `tracing`: plain text on stderr, a level that SIGHUP can change.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::ParseError;
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
        let filter = parse_filter(level).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Parses a log filter (`[log] level`, `RUST_LOG`): comma-separated directives, each trimmed.
///
/// `EnvFilter::builder().parse` alone panics on some of them: tracing-subscriber (0.3.23)
/// walks each directive trimmed but slices the untrimmed one at those offsets, so a
/// directive after leading whitespace that holds a multi-byte character (`"info, é=debug"`)
/// is cut inside that character. Trimming each directive first is what it means to do, and
/// what it does for one without whitespace around it; an empty one is skipped, as after `,,`.
pub fn parse_filter(dirs: &str) -> Result<EnvFilter, ParseError> {
    let directives: Vec<&str> = dirs.split(',').map(str::trim).collect();
    EnvFilter::builder().parse(directives.join(","))
}

/// Installs the global subscriber. Without a terminal on stderr (under systemd, journald
/// adds time stamps) it writes no ANSI colours and no time stamps.
pub fn init(level: &str) -> LogHandle {
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let env_override = env.is_some();
    let filter = env
        .and_then(|v| parse_filter(&v).ok())
        .or_else(|| parse_filter(level).ok())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_trimmed_before_tracing_subscriber_sees_them() {
        // Leading whitespace, then a multi-byte character: tracing-subscriber's own parser
        // panicked here (a fuzz finding, fuzz/seeds/config/log-filter-space-then-utf8.toml).
        for (spaced, plain) in [
            ("info, é=debug", "info,é=debug"),
            ("\t\té=", "é="),
            (" warn , wsechod=debug ", "warn,wsechod=debug"),
        ] {
            let got = parse_filter(spaced).expect("a valid filter").to_string();
            let want = parse_filter(plain).expect("a valid filter").to_string();
            assert_eq!(got, want, "{spaced:?}");
        }
        assert!(parse_filter("info, [é").is_err());
    }
}
