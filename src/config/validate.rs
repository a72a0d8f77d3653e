//! Validation: the checks a configuration must pass after it has loaded (every key known,
//! every value of the right type), covering ranges and relations between keys. It runs
//! on every load, so `--check-config`, start and SIGHUP judge a file the same way.
//!
//! The result is typed ([`Invalid`]: a key and a [`Problem`]) so that callers and tests
//! can tell problems apart without reading messages.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use super::Config;
use super::units::{ByteSize, Dur, GIB, KIB, MIB};
use crate::origin::{self, NotAnOrigin};

/// A value that loads but cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The dotted key, such as `server.path`.
    pub key: &'static str,
    /// What is wrong with its value.
    pub problem: Problem,
}

/// What is wrong with a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A list that needs at least one entry has none.
    Empty,
    /// A list holds this entry twice.
    Duplicate(String),
    /// Outside the allowed range; all three written in the key's own unit.
    OutOfRange {
        /// The value given.
        value: String,
        /// The smallest allowed.
        min: String,
        /// The largest allowed.
        max: String,
    },
    /// Not a path a client can put on its request line.
    NotAPath(String),
    /// Not an origin any browser sends.
    NotAnOrigin(String, NotAnOrigin),
    /// Not an HTTP token (RFC 9110), as subprotocol names must be.
    NotAToken(String),
    /// Longer than the protocol allows.
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The most allowed.
        max: usize,
        /// What holds it.
        within: &'static str,
    },
    /// Not a log level or tracing filter.
    NotALogFilter {
        /// The value given.
        value: String,
        /// The filter parser's complaint, if it had one.
        detail: Option<String>,
    },
    /// Inconsistent with another key; says which and why.
    Conflict(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Empty => write!(f, "needs at least one entry"),
            Problem::Duplicate(v) => write!(f, "{v} is listed twice"),
            Problem::OutOfRange { value, min, max } => {
                write!(f, "{value} is out of range ({min} to {max})")
            }
            Problem::NotAPath(p) => write!(
                f,
                "{p:?} is not a URL path a client can request: it must start with '/' and hold \
                 only the characters RFC 3986 allows in a path (percent-encode others)"
            ),
            Problem::NotAnOrigin(o, why) => write!(
                f,
                "{o:?} is not an origin a browser sends ({why}), such as \"https://example.com\" \
                 or \"http://localhost:8080\""
            ),
            Problem::NotAToken(t) => write!(f, "{t:?} is not a valid protocol token"),
            Problem::TooLong { len, max, within } => {
                write!(f, "is {len} bytes; {within} holds at most {max}")
            }
            Problem::NotALogFilter { value, detail } => {
                write!(
                    f,
                    "{value:?} is not a level (error, warn, info, debug, trace) or a filter such \
                     as \"info,wsechod=debug\""
                )?;
                match detail {
                    Some(d) => write!(f, ": {d}"),
                    None => Ok(()),
                }
            }
            Problem::Conflict(why) => f.write_str(why),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key `{}`: {}", self.key, self.problem)
    }
}

impl std::error::Error for Invalid {}

fn invalid(key: &'static str, problem: Problem) -> Invalid {
    Invalid { key, problem }
}

fn within(key: &'static str, v: Duration, min: Duration, max: Duration) -> Result<(), Invalid> {
    if v < min || v > max {
        return Err(invalid(
            key,
            Problem::OutOfRange {
                value: Dur(v).to_string(),
                min: Dur(min).to_string(),
                max: Dur(max).to_string(),
            },
        ));
    }
    Ok(())
}

fn within_size(key: &'static str, v: ByteSize, min: u64, max: u64) -> Result<(), Invalid> {
    if v.0 < min || v.0 > max {
        return Err(invalid(
            key,
            Problem::OutOfRange {
                value: v.to_string(),
                min: ByteSize(min).to_string(),
                max: ByteSize(max).to_string(),
            },
        ));
    }
    Ok(())
}

/// An optional timer: zero (off) or within `min..=max`.
fn off_or_within(key: &'static str, d: Dur, min: Duration, max: Duration) -> Result<(), Invalid> {
    match d.nonzero() {
        None => Ok(()),
        Some(d) => within(key, d, min, max),
    }
}

/// An absolute path as a client sends it on the request line: `/` followed by RFC 3986
/// `pchar`s and `/` (unreserved, sub-delims, `:`, `@`, percent-escapes); no query or fragment.
pub(crate) fn valid_path(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: Option<&u8>| c.is_some_and(u8::is_ascii_hexdigit);
                if !(hex(b.get(i + 1)) && hex(b.get(i + 2))) {
                    return false;
                }
                i += 3;
                continue;
            }
            c if c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&c) => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// An HTTP token (RFC 9110 section 5.6.2).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

impl Config {
    /// Checks ranges and relations. The error names the key and says what is allowed.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.validate_server()?;
        self.validate_websocket()?;
        self.validate_console()?;
        self.validate_http2()?;
        self.validate_service()
    }

    fn validate_server(&self) -> Result<(), Invalid> {
        let s = &self.server;
        if s.listen.is_empty() {
            return Err(invalid("server.listen", Problem::Empty));
        }
        let mut seen = HashSet::new();
        for addr in &s.listen {
            if !seen.insert(addr) {
                return Err(invalid(
                    "server.listen",
                    Problem::Duplicate(addr.to_string()),
                ));
            }
        }
        if !valid_path(&s.path) {
            return Err(invalid("server.path", Problem::NotAPath(s.path.clone())));
        }
        within(
            "server.handshake_timeout",
            s.handshake_timeout.0,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?;
        within_size("server.max_header_size", s.max_header_size, 8 * KIB, MIB)?;
        if s.max_connections == 0 {
            return Err(invalid(
                "server.max_connections",
                Problem::OutOfRange {
                    value: "0".into(),
                    min: "1".into(),
                    max: u32::MAX.to_string(),
                },
            ));
        }
        for o in &s.allowed_origins {
            if let Err(why) = origin::parse(o) {
                return Err(invalid(
                    "server.allowed_origins",
                    Problem::NotAnOrigin(o.clone(), why),
                ));
            }
        }
        for p in &s.subprotocols {
            if !is_token(p) {
                return Err(invalid(
                    "server.subprotocols",
                    Problem::NotAToken(p.clone()),
                ));
            }
        }
        if s.require_subprotocol && s.subprotocols.is_empty() {
            return Err(invalid(
                "server.require_subprotocol",
                Problem::Conflict(
                    "is true but server.subprotocols is empty, so every client would be refused"
                        .into(),
                ),
            ));
        }
        if s.worker_threads > 1024 {
            return Err(invalid(
                "server.worker_threads",
                Problem::OutOfRange {
                    value: s.worker_threads.to_string(),
                    min: "0 (one per CPU)".into(),
                    max: "1024".into(),
                },
            ));
        }
        Ok(())
    }

    fn validate_websocket(&self) -> Result<(), Invalid> {
        let w = &self.websocket;
        within_size("websocket.max_message_size", w.max_message_size, 125, GIB)?;
        if let Some(frame) = w.max_frame_size {
            within_size("websocket.max_frame_size", frame, 125, GIB)?;
            if frame > w.max_message_size {
                return Err(invalid(
                    "websocket.max_frame_size",
                    Problem::Conflict(format!(
                        "{frame} is larger than websocket.max_message_size ({})",
                        w.max_message_size
                    )),
                ));
            }
        }
        within_size(
            "websocket.read_buffer_size",
            w.read_buffer_size,
            256,
            16 * MIB,
        )?;
        within_size(
            "websocket.write_buffer_size",
            w.write_buffer_size,
            0,
            16 * MIB,
        )?;
        within_size(
            "websocket.max_write_buffer_size",
            w.max_write_buffer_size,
            4 * KIB,
            4 * GIB,
        )?;
        if w.max_write_buffer_size.0 < w.write_buffer_size.0 + w.max_message_size.0 {
            return Err(invalid(
                "websocket.max_write_buffer_size",
                Problem::Conflict(format!(
                    "must hold websocket.write_buffer_size plus one largest message ({} + {})",
                    w.write_buffer_size, w.max_message_size
                )),
            ));
        }
        if !w.ping_interval.0.is_zero() {
            within(
                "websocket.ping_interval",
                w.ping_interval.0,
                Duration::from_secs(1),
                Duration::from_secs(3600),
            )?;
            within(
                "websocket.pong_timeout",
                w.pong_timeout.0,
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?;
        }
        for (key, d) in [
            ("websocket.idle_timeout", w.idle_timeout),
            ("websocket.max_lifetime", w.max_lifetime),
        ] {
            off_or_within(
                key,
                d,
                Duration::from_secs(1),
                Duration::from_secs(30 * 86400),
            )?;
        }
        within(
            "websocket.write_timeout",
            w.write_timeout.0,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?;
        if w.compression_level > 9 {
            return Err(invalid(
                "websocket.compression_level",
                Problem::OutOfRange {
                    value: w.compression_level.to_string(),
                    min: "0".into(),
                    max: "9".into(),
                },
            ));
        }
        for (key, bits) in [
            ("websocket.server_max_window_bits", w.server_max_window_bits),
            ("websocket.client_max_window_bits", w.client_max_window_bits),
        ] {
            if !(9..=15).contains(&bits) {
                return Err(invalid(
                    key,
                    Problem::OutOfRange {
                        value: bits.to_string(),
                        min: "9 (zlib compresses with no smaller window)".into(),
                        max: "15".into(),
                    },
                ));
            }
        }
        if w.greeting.len() > 4096 {
            return Err(invalid(
                "websocket.greeting",
                Problem::TooLong {
                    len: w.greeting.len(),
                    max: 4096,
                    within: "a greeting",
                },
            ));
        }
        if let Err(e) = crate::greeting::Template::parse(&w.greeting) {
            return Err(invalid("websocket.greeting", Problem::Conflict(e)));
        }
        if w.reply_prefix.len() > 4096 {
            return Err(invalid(
                "websocket.reply_prefix",
                Problem::TooLong {
                    len: w.reply_prefix.len(),
                    max: 4096,
                    within: "a reply prefix",
                },
            ));
        }
        Ok(())
    }

    fn validate_http2(&self) -> Result<(), Invalid> {
        let h = &self.http2;
        if h.max_concurrent_streams == 0 || h.max_concurrent_streams > 10_000 {
            return Err(invalid(
                "http2.max_concurrent_streams",
                Problem::OutOfRange {
                    value: h.max_concurrent_streams.to_string(),
                    min: "1".into(),
                    max: "10000".into(),
                },
            ));
        }
        // RFC 9113 allows windows up to 2^31 - 1 bytes (its default is 65,535); below our
        // floor of 1 KiB a stream would crawl, a frame at a time.
        for (key, v) in [
            ("http2.stream_window", h.stream_window),
            ("http2.connection_window", h.connection_window),
        ] {
            within_size(key, v, 1024, (1 << 31) - 1)?;
        }
        if h.connection_window < h.stream_window {
            return Err(invalid(
                "http2.connection_window",
                Problem::Conflict(format!(
                    "{} is smaller than http2.stream_window ({})",
                    h.connection_window, h.stream_window
                )),
            ));
        }
        within_size("http2.send_buffer", h.send_buffer, 1024, GIB)?;
        Ok(())
    }

    fn validate_console(&self) -> Result<(), Invalid> {
        let c = &self.console;
        if !c.enabled {
            return Ok(());
        }
        if !valid_path(&c.path) {
            return Err(invalid("console.path", Problem::NotAPath(c.path.clone())));
        }
        if c.path == self.server.path {
            return Err(invalid(
                "console.path",
                Problem::Conflict(format!(
                    "{:?} is also server.path, which upgrades to the WebSocket",
                    c.path
                )),
            ));
        }
        Ok(())
    }

    fn validate_service(&self) -> Result<(), Invalid> {
        let m = &self.metrics;
        if m.enabled && m.listen.port() != 0 && self.server.listen.contains(&m.listen) {
            return Err(invalid(
                "metrics.listen",
                Problem::Conflict(format!("{} is also in server.listen", m.listen)),
            ));
        }
        let t = &self.tls;
        if t.cert_file.is_empty() != t.key_file.is_empty() {
            let key = if t.cert_file.is_empty() {
                "tls.cert_file"
            } else {
                "tls.key_file"
            };
            return Err(invalid(
                key,
                Problem::Conflict("tls.cert_file and tls.key_file go together".into()),
            ));
        }
        let d = &self.shutdown;
        within(
            "shutdown.drain_timeout",
            d.drain_timeout.0,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        within(
            "shutdown.delay",
            d.delay.0,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        if !matches!(d.close_code, 1000 | 1001 | 1012) {
            return Err(invalid(
                "shutdown.close_code",
                Problem::Conflict(format!(
                    "{} is not one of 1000 (normal closure), 1001 (going away) and 1012 \
                     (service restart)",
                    d.close_code
                )),
            ));
        }
        if d.close_rate > 1_000_000 {
            return Err(invalid(
                "shutdown.close_rate",
                Problem::OutOfRange {
                    value: d.close_rate.to_string(),
                    min: "0 (all at once)".into(),
                    max: "1000000".into(),
                },
            ));
        }
        if d.close_reason.len() > 123 {
            return Err(invalid(
                "shutdown.close_reason",
                Problem::TooLong {
                    len: d.close_reason.len(),
                    max: 123,
                    within: "a close frame",
                },
            ));
        }
        let level = self.log.level.trim();
        let is_directive = level.contains('=') || level.contains(',');
        let is_level = ["off", "error", "warn", "info", "debug", "trace"]
            .iter()
            .any(|l| l.eq_ignore_ascii_case(level));
        let bad = |detail| {
            invalid(
                "log.level",
                Problem::NotALogFilter {
                    value: self.log.level.clone(),
                    detail,
                },
            )
        };
        if !is_directive && !is_level {
            return Err(bad(None));
        }
        if let Err(e) = crate::logging::parse_filter(level) {
            return Err(bad(Some(e.to_string())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults with one change.
    fn with(change: impl FnOnce(&mut Config)) -> Result<(), Invalid> {
        let mut c = Config::default();
        change(&mut c);
        c.validate()
    }

    fn key_of(r: Result<(), Invalid>) -> &'static str {
        r.expect_err("should be invalid").key
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn a_log_filter_with_spaces_and_non_ascii_is_judged_not_a_panic() {
        // A fuzz finding (fuzz/seeds/config/log-filter-space-then-utf8.toml): tracing-subscriber
        // panicked on a directive after ", " holding a multi-byte character, so loading such a
        // file (start, --check-config, SIGHUP) brought the daemon down.
        with(|c| c.log.level = "info, é=debug".into()).unwrap();
        with(|c| c.log.level = "info,\t\té=".into()).unwrap();
        assert_eq!(
            key_of(with(|c| c.log.level = "info, é[=debug".into())),
            "log.level"
        );
    }

    #[test]
    fn each_rule_names_its_key() {
        type Change = Box<dyn FnOnce(&mut Config)>;
        let cases: Vec<(&str, Change)> = vec![
            ("server.listen", Box::new(|c| c.server.listen.clear())),
            (
                "server.listen",
                Box::new(|c| c.server.listen.push(c.server.listen[0])),
            ),
            ("server.path", Box::new(|c| c.server.path = "ws".into())),
            ("server.path", Box::new(|c| c.server.path = "/ws#x".into())),
            (
                "server.path",
                Box::new(|c| c.server.path = "/ws?x=1".into()),
            ),
            ("server.path", Box::new(|c| c.server.path = "/é".into())),
            ("server.path", Box::new(|c| c.server.path = "/a b".into())),
            ("server.path", Box::new(|c| c.server.path = "/bad%2".into())),
            (
                "server.max_header_size",
                Box::new(|c| c.server.max_header_size = ByteSize(KIB)),
            ),
            (
                "server.max_connections",
                Box::new(|c| c.server.max_connections = 0),
            ),
            (
                "server.allowed_origins",
                Box::new(|c| c.server.allowed_origins = vec!["https://example.com/".into()]),
            ),
            (
                "server.subprotocols",
                Box::new(|c| c.server.subprotocols = vec!["a b".into()]),
            ),
            (
                "server.require_subprotocol",
                Box::new(|c| c.server.require_subprotocol = true),
            ),
            (
                "websocket.max_frame_size",
                Box::new(|c| {
                    c.websocket.max_message_size = ByteSize(MIB);
                    c.websocket.max_frame_size = Some(ByteSize(2 * MIB));
                }),
            ),
            (
                "websocket.max_write_buffer_size",
                Box::new(|c| c.websocket.max_write_buffer_size = ByteSize(8 * MIB)),
            ),
            (
                "websocket.ping_interval",
                Box::new(|c| c.websocket.ping_interval = Dur::millis(10)),
            ),
            (
                "websocket.idle_timeout",
                Box::new(|c| c.websocket.idle_timeout = Dur::millis(10)),
            ),
            (
                "websocket.reply_prefix",
                Box::new(|c| c.websocket.reply_prefix = "x".repeat(4097)),
            ),
            ("log.level", Box::new(|c| c.log.level = "loud".into())),
            (
                "websocket.compression_level",
                Box::new(|c| c.websocket.compression_level = 10),
            ),
            (
                "websocket.server_max_window_bits",
                Box::new(|c| c.websocket.server_max_window_bits = 8),
            ),
            (
                "websocket.client_max_window_bits",
                Box::new(|c| c.websocket.client_max_window_bits = 16),
            ),
            (
                "metrics.listen",
                Box::new(|c| c.metrics.listen = c.server.listen[0]),
            ),
            ("tls.key_file", Box::new(|c| c.tls.cert_file = "x".into())),
            ("console.path", Box::new(|c| c.console.path = "/ws".into())),
            (
                "http2.max_concurrent_streams",
                Box::new(|c| c.http2.max_concurrent_streams = 0),
            ),
            (
                "http2.connection_window",
                Box::new(|c| c.http2.connection_window = ByteSize(2048)),
            ),
            (
                "console.path",
                Box::new(|c| c.console.path = "console".into()),
            ),
            (
                "websocket.greeting",
                Box::new(|c| c.websocket.greeting = "served by {hostnme}".into()),
            ),
            (
                "shutdown.close_reason",
                Box::new(|c| c.shutdown.close_reason = "x".repeat(124)),
            ),
            (
                "shutdown.drain_timeout",
                Box::new(|c| c.shutdown.drain_timeout = Dur::secs(7200)),
            ),
            (
                "shutdown.close_code",
                Box::new(|c| c.shutdown.close_code = 1002),
            ),
            (
                "shutdown.delay",
                Box::new(|c| c.shutdown.delay = Dur::secs(7200)),
            ),
        ];
        for (key, change) in cases {
            assert_eq!(key_of(with(change)), key);
        }
    }

    #[test]
    fn the_fuzzers_origin_is_refused_as_not_ascii() {
        let e = with(|c| {
            c.server.allowed_origins = vec!["https://exampl\u{FFFD}\u{FFFD}\u{FFFD}~m".into()];
            c.server.require_origin = true;
        })
        .unwrap_err();
        assert!(matches!(
            e.problem,
            Problem::NotAnOrigin(_, NotAnOrigin::NotAscii)
        ));
        assert!(e.to_string().contains("punycode"), "{e}");
    }

    #[test]
    fn a_lower_message_limit_alone_is_valid() {
        with(|c| c.websocket.max_message_size = ByteSize(MIB)).unwrap();
    }

    #[test]
    fn reachable_paths_are_valid() {
        for p in [
            "/",
            "/ws",
            "/echo/v1",
            "/a-b_c.d~e",
            "/%C3%A9",
            "/x:y@z;v=1",
        ] {
            assert!(valid_path(p), "{p}");
        }
    }
}
