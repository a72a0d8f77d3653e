//! The configuration: TOML file plus `WSECHOD_<SECTION>__<KEY>` environment overrides,
//! deserialized into typed structs, then validated.
//!
//! Loading happens in three steps, each with its own kind of error:
//! 1. the `config` crate merges built-in defaults, the file and the environment;
//! 2. serde turns the merged tree into [`Config`] (unknown keys are errors);
//! 3. [`Config::validate`] checks ranges and relations between keys.
//!
//! Every error names where the offending value came from (the file or the environment
//! variable) and its key, so the operator can fix it without guessing.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/wsechod/wsechod.toml";

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "WSECHOD";

/// The whole configuration. Every section and key has a default, so an empty file (or
/// none) is a valid configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The WebSocket listener and its HTTP front.
    pub server: ServerConfig,
    /// Per-connection WebSocket behaviour.
    pub websocket: WebSocketConfig,
    /// The metrics, health and readiness listener.
    pub metrics: MetricsConfig,
    /// TLS for `wss://` on the WebSocket listeners.
    pub tls: TlsConfig,
    /// What SIGTERM does.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses the WebSocket listener binds. Restart needed.
    pub listen: Vec<SocketAddr>,
    /// The URL path that accepts WebSocket upgrades; every other path gets 404.
    pub path: String,
    /// Time a client has to send its complete upgrade request.
    pub handshake_timeout: Dur,
    /// Upper bound on the size of the request line plus headers.
    pub max_header_size: ByteSize,
    /// Connections served at once (handshaking or open); over it, 503 before upgrading.
    pub max_connections: u32,
    /// Connections at once from one client address; 0 means no limit. Over it: 429.
    pub max_connections_per_ip: u32,
    /// Tokio worker threads; 0 means one per CPU the process may run on. Restart needed.
    pub worker_threads: u16,
    /// Exact `Origin` values (scheme://host[:port]) allowed to connect; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Refuse requests without an `Origin` header (403); by default non-browser clients,
    /// which send none, are allowed.
    pub require_origin: bool,
    /// Subprotocols we speak, in no particular order; the first one the client offers that
    /// is on this list is selected.
    pub subprotocols: Vec<String>,
    /// Refuse (400) a client that offers none of `subprotocols`.
    pub require_subprotocol: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
            path: "/ws".into(),
            handshake_timeout: Dur::secs(10),
            max_header_size: ByteSize(16 * KIB),
            max_connections: 100_000,
            max_connections_per_ip: 0,
            worker_threads: 0,
            allowed_origins: Vec::new(),
            require_origin: false,
            subprotocols: Vec::new(),
            require_subprotocol: false,
        }
    }
}

/// `[websocket]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Largest message accepted after reassembly of fragments; over it: close 1009.
    pub max_message_size: ByteSize,
    /// Largest single frame payload accepted; over it: close 1009.
    pub max_frame_size: ByteSize,
    /// Size of each connection's read buffer.
    pub read_buffer_size: ByteSize,
    /// Outgoing bytes buffered before a write to the socket is attempted.
    pub write_buffer_size: ByteSize,
    /// Outgoing bytes buffered at most while the peer does not read.
    pub max_write_buffer_size: ByteSize,
    /// Put before every echoed text message; empty means an exact echo.
    pub reply_prefix: String,
    /// Log message contents (truncated) at debug level.
    pub log_message_content: bool,
    /// Send a ping this often; 0 turns keepalive pings off.
    pub ping_interval: Dur,
    /// Abort a connection whose pong has not arrived this long after our ping.
    pub pong_timeout: Dur,
    /// Close a connection with no message either way for this long; 0 means never.
    pub idle_timeout: Dur,
    /// Close a connection this long after it opened (minus up to 10% random jitter, so
    /// reconnects spread out); 0 means never.
    pub max_lifetime: Dur,
    /// Abort a connection whose peer does not take our echoes for this long.
    pub write_timeout: Dur,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            max_message_size: ByteSize(16 * MIB),
            max_frame_size: ByteSize(16 * MIB),
            read_buffer_size: ByteSize(256),
            write_buffer_size: ByteSize(8 * KIB),
            max_write_buffer_size: ByteSize(32 * MIB),
            reply_prefix: String::new(),
            log_message_content: false,
            ping_interval: Dur::secs(30),
            pong_timeout: Dur::secs(15),
            idle_timeout: Dur::secs(0),
            max_lifetime: Dur::secs(0),
            write_timeout: Dur::secs(30),
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics`, `/healthz` and `/readyz`. Restart needed.
    pub enabled: bool,
    /// Address of that listener. Restart needed.
    pub listen: SocketAddr,
}

/// Default port of the metrics listener.
pub const DEFAULT_METRICS_PORT: u16 = 9180;

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT)),
        }
    }
}

/// `[tls]`: serve `wss://` when both files are set. SIGHUP re-reads them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first; empty means plain `ws://`.
    pub cert_file: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long SIGTERM waits for clients to answer the close frame before aborting them.
    pub drain_timeout: Dur,
    /// Reason text of the 1000 close frame sent on shutdown.
    pub close_reason: String,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: Dur::secs(10),
            close_reason: "server shutting down".into(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A level (`error` … `trace`) or a tracing filter directive; `RUST_LOG` wins over it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// A byte count, written in the file as `"16MiB"`, `"4 KiB"`, `"512"` or a bare integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size as `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let number: u64 = digits.parse().map_err(|_| {
            format!("invalid size {s:?}: expected e.g. \"16MiB\", \"4KiB\", \"512B\"")
        })?;
        let factor = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => KIB,
            "MiB" | "M" => MIB,
            "GiB" | "G" => GIB,
            "kB" | "KB" => 1000,
            "MB" => 1000 * 1000,
            "GB" => 1000 * 1000 * 1000,
            other => {
                return Err(format!(
                    "invalid size unit {other:?} in {s:?}: use B, KiB, MiB, GiB (or kB, MB, GB)"
                ));
            }
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, factor) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
            if n >= factor && n.is_multiple_of(factor) {
                return write!(f, "{}{unit}", n / factor);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"16MiB\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("size must not be negative, got {v}")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A duration, written as `"30s"`, `"500ms"`, `"2m"` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"500ms\" or \"2m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                humantime::parse_duration(v.trim())
                    .map(Dur)
                    .map_err(|e| E::custom(format!("invalid duration {v:?}: {e} (e.g. \"30s\")")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "a duration needs a unit: write \"{v}s\" or \"{v}ms\""
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dur, E> {
                self.visit_u64(v.unsigned_abs())
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A configuration error, ready to show to an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, the environment variable, or the command line the problem comes from.
    pub origin: String,
    /// The dotted key (`server.path`), if the problem is about one key.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: key `{key}`: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Which file to read, and whether its absence is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    /// The path.
    pub path: PathBuf,
    /// Given with `--config`: then a missing file is an error.
    pub explicit: bool,
}

impl ConfigPath {
    /// The path to use for an optional `--config` argument.
    pub fn new(arg: Option<PathBuf>) -> Self {
        match arg {
            Some(path) => Self {
                path,
                explicit: true,
            },
            None => Self {
                path: PathBuf::from(DEFAULT_PATH),
                explicit: false,
            },
        }
    }
}

/// A loaded, validated configuration and whether the file existed.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective configuration.
    pub config: Config,
    /// False when the default path did not exist and built-in defaults were used.
    pub file_found: bool,
}

/// Reads the file at `path` (if it exists) and the process environment, then validates.
pub fn load(path: &ConfigPath) -> Result<Loaded, ConfigError> {
    load_with_env(path, std::env::vars())
}

/// [`load`] with an explicit environment, so tests need not touch the process's.
pub fn load_with_env(
    path: &ConfigPath,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let file_found = path.path.exists();
    if !file_found && path.explicit {
        return Err(ConfigError {
            origin: path.path.display().to_string(),
            key: None,
            message: "no such file".into(),
        });
    }
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}_")))
        .collect();
    let sources = Sources {
        file: file_found.then(|| path.path.clone()),
        env: env.iter().map(|(k, _)| k.clone()).collect(),
    };

    let mut builder = config::Config::builder();
    if let Some(file) = &sources.file {
        // Read it ourselves: a clear I/O error, and special files such as /dev/null work.
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            origin: file.display().to_string(),
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
    }
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("server.listen")
            .with_list_parse_key("server.allowed_origins")
            .with_list_parse_key("server.subprotocols")
            .try_parsing(true)
            .source(Some(env.into_iter().collect())),
    );
    let merged = builder.build().map_err(|e| sources.translate(e))?;
    let config: Config = merged.try_deserialize().map_err(|e| sources.translate(e))?;
    config.validate().map_err(|(key, message)| ConfigError {
        origin: sources.origin_of(key),
        key: Some(key.to_string()),
        message,
    })?;
    Ok(Loaded { config, file_found })
}

/// What went into a merge, to name the origin of a bad value.
struct Sources {
    file: Option<PathBuf>,
    env: Vec<String>,
}

impl Sources {
    /// The environment variable that sets `key`, if any, else the file.
    fn origin_of(&self, key: &str) -> String {
        let var = env_var_for(key);
        if self.env.iter().any(|k| k.eq_ignore_ascii_case(&var)) {
            return format!("environment variable {var}");
        }
        match &self.file {
            Some(file) => file.display().to_string(),
            None => "built-in defaults".into(),
        }
    }

    fn translate(&self, e: config::ConfigError) -> ConfigError {
        use config::ConfigError as E;
        match e {
            E::FileParse { uri, cause } => ConfigError {
                origin: uri.unwrap_or_else(|| self.origin_of("")),
                key: None,
                message: format!("not valid TOML: {cause}"),
            },
            E::Type {
                unexpected,
                expected,
                key,
                ..
            } => self.keyed(
                key,
                format!("invalid type: {unexpected}, expected {expected}"),
            ),
            E::At { error, key, .. } => {
                let message = match *error {
                    E::Message(m) => m,
                    other => other.to_string(),
                };
                self.keyed(key, message)
            }
            E::Message(m) => self.unknown_field(m),
            other => ConfigError {
                origin: self.origin_of(""),
                key: None,
                message: other.to_string(),
            },
        }
    }

    fn keyed(&self, key: Option<String>, message: String) -> ConfigError {
        match key {
            Some(key) => {
                // An unknown key inside a section arrives keyed by the section only.
                if let Some(field) = unknown_field_name(&message) {
                    let full = format!("{key}.{field}");
                    return ConfigError {
                        origin: self.origin_of(&full),
                        key: Some(full),
                        message: "unknown key".into(),
                    };
                }
                ConfigError {
                    origin: self.origin_of(&key),
                    key: Some(key),
                    message,
                }
            }
            None => self.unknown_field(message),
        }
    }

    fn unknown_field(&self, message: String) -> ConfigError {
        if let Some(field) = unknown_field_name(&message) {
            return ConfigError {
                origin: self.origin_of(&field),
                key: Some(field),
                message: "unknown section or key".into(),
            };
        }
        ConfigError {
            origin: self.origin_of(""),
            key: None,
            message,
        }
    }
}

/// Extracts `foo` from serde's "unknown field `foo`, expected ...".
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// `server.max_connections` → `WSECHOD_SERVER__MAX_CONNECTIONS`.
pub fn env_var_for(key: &str) -> String {
    format!(
        "{ENV_PREFIX}_{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

impl Config {
    /// Checks ranges and relations. The error names the key and says what is allowed.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let s = &self.server;
        if s.listen.is_empty() {
            return Err(("server.listen", "needs at least one address".into()));
        }
        let mut seen = HashSet::new();
        for addr in &s.listen {
            if !seen.insert(addr) {
                return Err(("server.listen", format!("{addr} is listed twice")));
            }
        }
        if !valid_path(&s.path) {
            return Err((
                "server.path",
                format!(
                    "{:?} is not a URL path a client can request: it must start with '/' and \
                     hold only the characters RFC 3986 allows in a path (percent-encode others)",
                    s.path
                ),
            ));
        }
        within(
            "server.handshake_timeout",
            s.handshake_timeout.0,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?;
        within_size("server.max_header_size", s.max_header_size, 8 * KIB, MIB)?;
        if s.max_connections == 0 {
            return Err(("server.max_connections", "must be at least 1".into()));
        }
        for origin in &s.allowed_origins {
            if crate::http::normalize_origin(origin).is_none() {
                return Err((
                    "server.allowed_origins",
                    format!(
                        "{origin:?} is not an origin such as \"https://example.com\" or \"http://localhost:8080\""
                    ),
                ));
            }
        }
        for p in &s.subprotocols {
            if p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
            {
                return Err((
                    "server.subprotocols",
                    format!("{p:?} is not a valid protocol token"),
                ));
            }
        }
        if s.require_subprotocol && s.subprotocols.is_empty() {
            return Err((
                "server.require_subprotocol",
                "is true but server.subprotocols is empty, so every client would be refused".into(),
            ));
        }
        if s.worker_threads > 1024 {
            return Err((
                "server.worker_threads",
                "must be 0 (one per CPU) to 1024".into(),
            ));
        }

        let w = &self.websocket;
        within_size("websocket.max_message_size", w.max_message_size, 125, GIB)?;
        within_size("websocket.max_frame_size", w.max_frame_size, 125, GIB)?;
        if w.max_frame_size > w.max_message_size {
            return Err((
                "websocket.max_frame_size",
                format!(
                    "{} is larger than websocket.max_message_size ({})",
                    w.max_frame_size, w.max_message_size
                ),
            ));
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
        if w.max_write_buffer_size.0 <= w.write_buffer_size.0 {
            return Err((
                "websocket.max_write_buffer_size",
                "must be larger than websocket.write_buffer_size".into(),
            ));
        }
        if w.max_write_buffer_size.0 < w.write_buffer_size.0 + w.max_message_size.0 {
            return Err((
                "websocket.max_write_buffer_size",
                format!(
                    "must hold websocket.write_buffer_size plus one largest message ({} + {})",
                    w.write_buffer_size, w.max_message_size
                ),
            ));
        }
        let ping = w.ping_interval.0;
        if !ping.is_zero() {
            within(
                "websocket.ping_interval",
                ping,
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
            if !d.0.is_zero() {
                within(
                    key,
                    d.0,
                    Duration::from_secs(1),
                    Duration::from_secs(30 * 86400),
                )?;
            }
        }
        within(
            "websocket.write_timeout",
            w.write_timeout.0,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?;
        if w.reply_prefix.len() > 4096 {
            return Err((
                "websocket.reply_prefix",
                "must be at most 4096 bytes".into(),
            ));
        }

        if self.metrics.enabled
            && self.metrics.listen.port() != 0
            && s.listen.contains(&self.metrics.listen)
        {
            return Err((
                "metrics.listen",
                format!("{} is also in server.listen", self.metrics.listen),
            ));
        }

        let t = &self.tls;
        if t.cert_file.is_empty() != t.key_file.is_empty() {
            let key = if t.cert_file.is_empty() {
                "tls.cert_file"
            } else {
                "tls.key_file"
            };
            return Err((key, "tls.cert_file and tls.key_file go together".into()));
        }

        let d = &self.shutdown;
        within(
            "shutdown.drain_timeout",
            d.drain_timeout.0,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        if d.close_reason.len() > 123 {
            return Err((
                "shutdown.close_reason",
                format!(
                    "is {} bytes; a close frame holds at most 123",
                    d.close_reason.len()
                ),
            ));
        }

        let level = self.log.level.trim();
        let is_directive = level.contains('=') || level.contains(',');
        let is_level = ["off", "error", "warn", "info", "debug", "trace"]
            .iter()
            .any(|l| l.eq_ignore_ascii_case(level));
        if !is_directive && !is_level {
            return Err((
                "log.level",
                format!(
                    "{:?} is not a level (error, warn, info, debug, trace) or a filter such as \"info,wsechod=debug\"",
                    self.log.level
                ),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level) {
            return Err((
                "log.level",
                format!(
                    "{:?} is not a level (error, warn, info, debug, trace) or filter: {e}",
                    self.log.level
                ),
            ));
        }
        Ok(())
    }

    /// The configuration as TOML, as `--print-config` shows it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration always serializes")
    }

    /// Keys whose new value only takes effect after a restart, paired with a description.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.server.listen != new.server.listen {
            keys.push("server.listen");
        }
        if self.server.worker_threads != new.server.worker_threads {
            keys.push("server.worker_threads");
        }
        if self.metrics != new.metrics {
            keys.push("metrics");
        }
        if self.tls.enabled() != new.tls.enabled() {
            keys.push("tls (switching it on or off)");
        }
        keys
    }
}

/// An absolute path as a client sends it on the request line: `/` followed by RFC 3986
/// `pchar`s and `/` (unreserved, sub-delims, `:`, `@`, percent-escapes); no query or fragment.
fn valid_path(path: &str) -> bool {
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

fn within(
    key: &'static str,
    v: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), (&'static str, String)> {
    if v < min || v > max {
        return Err((
            key,
            format!("{} is out of range ({} to {})", Dur(v), Dur(min), Dur(max)),
        ));
    }
    Ok(())
}

fn within_size(
    key: &'static str,
    v: ByteSize,
    min: u64,
    max: u64,
) -> Result<(), (&'static str, String)> {
    if v.0 < min || v.0 > max {
        return Err((
            key,
            format!(
                "{v} is out of range ({} to {})",
                ByteSize(min),
                ByteSize(max)
            ),
        ));
    }
    Ok(())
}

/// Gives a path for logs: the file's, or a note that none was read.
pub fn describe(path: &Path, found: bool) -> String {
    if found {
        path.display().to_string()
    } else {
        format!("built-in defaults ({} not found)", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(contents: &str) -> (tempfile::NamedTempFile, ConfigPath) {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        let p = ConfigPath {
            path: f.path().to_path_buf(),
            explicit: true,
        };
        (f, p)
    }

    fn load_str(contents: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let (_f, p) = file(contents);
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        load_with_env(&p, env).map(|l| l.config)
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(load_str("", &[]).unwrap(), Config::default());
    }

    /// The shipped file, with its `#key = value` lines uncommented.
    fn shipped_uncommented() -> String {
        include_str!("../etc/wsechod.toml")
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn shipped_example_is_valid_and_at_defaults() {
        let text = include_str!("../etc/wsechod.toml");
        assert_eq!(load_str(text, &[]).unwrap(), Config::default());
        let uncommented = shipped_uncommented();
        assert_eq!(load_str(&uncommented, &[]).unwrap(), Config::default());
    }

    #[test]
    fn shipped_example_shows_every_key() {
        let shown: toml::Table = toml::from_str(&shipped_uncommented()).unwrap();
        let all: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
        for (section, keys) in &all {
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    shown.get(section).and_then(|s| s.get(key)).is_some(),
                    "etc/wsechod.toml does not show {section}.{key}"
                );
            }
        }
    }

    #[test]
    fn sizes_and_durations_parse() {
        let c = load_str(
            "[websocket]\nmax_message_size = \"1MiB\"\nmax_frame_size = 65536\n\
             [shutdown]\ndrain_timeout = \"1m 30s\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.websocket.max_message_size, ByteSize(MIB));
        assert_eq!(c.websocket.max_frame_size, ByteSize(64 * KIB));
        assert_eq!(c.shutdown.drain_timeout, Dur(Duration::from_secs(90)));
    }

    #[test]
    fn byte_size_round_trips() {
        for s in ["16MiB", "4KiB", "1000B", "1GiB"] {
            assert_eq!(s.parse::<ByteSize>().unwrap().to_string(), s);
        }
        assert_eq!("2 MB".parse::<ByteSize>().unwrap(), ByteSize(2_000_000));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
        assert!("99999999999999GiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn environment_overrides_file() {
        let c = load_str(
            "[server]\npath = \"/file\"\n",
            &[
                ("WSECHOD_SERVER__PATH", "/echo"),
                ("WSECHOD_SERVER__LISTEN", "127.0.0.1:1,[::1]:2"),
                ("WSECHOD_WEBSOCKET__REPLY_PREFIX", "서버에서 응답: "),
                ("WSECHOD_SERVER__MAX_CONNECTIONS", "12"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.path, "/echo");
        assert_eq!(c.server.listen.len(), 2);
        assert_eq!(c.server.max_connections, 12);
        assert_eq!(c.websocket.reply_prefix, "서버에서 응답: ");
    }

    #[test]
    fn every_list_key_can_come_from_the_environment() {
        let c = load_str(
            "",
            &[
                (
                    "WSECHOD_SERVER__ALLOWED_ORIGINS",
                    "https://a.example,http://b.example:8080",
                ),
                ("WSECHOD_SERVER__SUBPROTOCOLS", "echo.v1"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.allowed_origins.len(), 2);
        assert_eq!(c.server.subprotocols, ["echo.v1"]);
        // Every list in the configuration is covered by a list key above.
        let all: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
        for (section, keys) in &all {
            for (key, value) in keys.as_table().unwrap() {
                if value.is_array() {
                    let src = include_str!("config.rs");
                    let key = format!("{section}.{key}");
                    assert!(
                        src.contains(&format!(".with_list_parse_key(\"{key}\")")),
                        "{key} is a list but not parsed as one from the environment"
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let (f, p) = file("[server]\npaht = \"/x\"\n");
        let e = load_with_env(&p, []).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.paht"), "{e}");
        assert_eq!(e.origin, f.path().display().to_string());
    }

    #[test]
    fn unknown_section_is_an_error() {
        let e = load_str("[sever]\npath = \"/x\"\n", &[]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sever"), "{e}");
    }

    #[test]
    fn unknown_environment_key_names_the_variable() {
        let e = load_str("", &[("WSECHOD_SERVER__PAHT", "/x")]).unwrap_err();
        assert_eq!(e.origin, "environment variable WSECHOD_SERVER__PAHT", "{e}");
    }

    #[test]
    fn type_error_names_key() {
        let e = load_str("[server]\nmax_connections = \"many\"\n", &[]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.max_connections"), "{e}");
        let e = load_str("[shutdown]\ndrain_timeout = 30\n", &[]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("shutdown.drain_timeout"), "{e}");
        assert!(e.message.contains("30s"), "{e}");
    }

    #[test]
    fn range_error_names_variable_when_from_environment() {
        let e = load_str("", &[("WSECHOD_SHUTDOWN__DRAIN_TIMEOUT", "2h")]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("shutdown.drain_timeout"));
        assert_eq!(
            e.origin,
            "environment variable WSECHOD_SHUTDOWN__DRAIN_TIMEOUT"
        );
    }

    #[test]
    fn validation_rejects_bad_values() {
        let cases = [
            ("[server]\nlisten = []\n", "server.listen"),
            ("[server]\npath = \"ws\"\n", "server.path"),
            ("[server]\npath = \"/ws#live\"\n", "server.path"),
            ("[server]\npath = \"/ws?x=1\"\n", "server.path"),
            ("[server]\npath = \"/é\"\n", "server.path"),
            ("[server]\npath = \"/a b\"\n", "server.path"),
            ("[server]\npath = \"/bad%2\"\n", "server.path"),
            (
                "[server]\nmax_header_size = \"1KiB\"\n",
                "server.max_header_size",
            ),
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            (
                "[websocket]\nmax_message_size = \"1MiB\"\nmax_frame_size = \"2MiB\"\n",
                "websocket.max_frame_size",
            ),
            ("[log]\nlevel = \"loud\"\n", "log.level"),
            ("[metrics]\nlisten = \"0.0.0.0:8080\"\n", "metrics.listen"),
            (
                "[shutdown]\nclose_reason = \"%REASON%\"\n",
                "shutdown.close_reason",
            ),
        ];
        for (text, key) in cases {
            let text = text.replace("%REASON%", &"x".repeat(124));
            let e = load_str(&text, &[]).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
        }
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

    #[test]
    fn bad_toml_names_the_file() {
        let (f, p) = file("[server\n");
        let e = load_with_env(&p, []).unwrap_err();
        assert!(e.origin.contains(&*f.path().display().to_string()), "{e}");
    }

    #[test]
    fn missing_explicit_file_is_an_error_but_default_is_not() {
        let p = ConfigPath {
            path: "/nonexistent/wsechod.toml".into(),
            explicit: true,
        };
        assert!(load_with_env(&p, []).is_err());
        let p = ConfigPath {
            explicit: false,
            ..p
        };
        let l = load_with_env(&p, []).unwrap();
        assert!(!l.file_found);
        assert_eq!(l.config, Config::default());
    }

    #[test]
    fn print_config_round_trips() {
        let c = load_str("[websocket]\nreply_prefix = \"> \"\n", &[]).unwrap();
        let again = load_str(&c.to_toml(), &[]).unwrap();
        assert_eq!(c, again);
    }
}
