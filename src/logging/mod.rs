//! Logging with `tracing`, to stderr: natively to the journal (structured fields) when
//! stderr is the journal, else as plain text; with a level that SIGHUP can change.
//!
//! Under systemd, stderr is a journal stream (`JOURNAL_STREAM` names its device and inode).
//! Then every line goes to journald directly ([`journald`]): its MESSAGE is the plain-text
//! line without the level (`conn{conn_id=42 peer=…}: wsechod::connection: connection ended
//! state=closed …`), so `journalctl -u wsechod` reads like stderr; and each field is also a
//! journal field: the span of a connection gives `CONN_ID` and `PEER` (and `HTTP=2` for an
//! HTTP/2 stream), events add theirs (`STATE`, `CODE`, `REASON`, `ERROR`, ...), so
//! `journalctl -u wsechod CONN_ID=42` finds one connection's lines.

mod journald;

use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{DefaultFields, Format, Full};
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

/// Whether stderr is the journal stream systemd connected it to.
pub fn stderr_is_journal() -> bool {
    std::env::var("JOURNAL_STREAM").is_ok_and(|v| is_stream(&v, std::io::stderr().as_fd()))
}

/// Whether `fd` is the file `JOURNAL_STREAM` describes (`DEVICE:INODE`).
fn is_stream(journal_stream: &str, fd: BorrowedFd<'_>) -> bool {
    let Some((dev, ino)) = journal_stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
    else {
        return false;
    };
    nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
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

/// A plain-text formatter writing to `W`.
type Plain<S, W> = tracing_subscriber::fmt::Layer<S, DefaultFields, Format<Full, ()>, W>;

/// The plain-text log's formatter, writing to `writer`: "LEVEL spans: target: message
/// key=value ...", without time stamp or ANSI colours. The journal's MESSAGE is its line
/// without the level.
fn plain<S, W>(writer: W) -> Plain<S, W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .without_time()
}

/// Installs the global subscriber: journald when stderr is the journal, else text on
/// stderr, without ANSI colours and time stamps unless stderr is a terminal.
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
    let registry = tracing_subscriber::registry().with(filter);
    let journald = stderr_is_journal()
        .then(|| journald::JournalLayer::new(journald::SOCKET).ok())
        .flatten();
    // `try_init` fails only when a subscriber exists already (tests start several daemons).
    if let Some(journald) = journald {
        let _ = registry.with(journald).try_init();
    } else if std::io::stderr().is_terminal() {
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(true);
        let _ = registry.with(fmt).try_init();
    } else {
        let _ = registry.with(plain(std::io::stderr)).try_init();
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
    fn journal_stream_names_a_device_and_inode() {
        let f = tempfile::tempfile().unwrap();
        let st = nix::sys::stat::fstat(f.as_fd()).unwrap();
        assert!(is_stream(
            &format!("{}:{}", st.st_dev, st.st_ino),
            f.as_fd()
        ));
        assert!(!is_stream(
            &format!("{}:{}", st.st_dev, st.st_ino + 1),
            f.as_fd()
        ));
        assert!(!is_stream("garbage", f.as_fd()));
        assert!(!is_stream("", f.as_fd()));
    }

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
