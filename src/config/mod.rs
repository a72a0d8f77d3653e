//! The configuration: what `wsechod.toml` and `WSECHOD_<SECTION>__<KEY>` environment
//! variables may say, and how it is loaded, checked and reloaded. One file per concern:
//!
//! - the schema, one struct per section with `deny_unknown_fields`: `server.rs` (server,
//!   console), `websocket.rs`, `http2.rs`, `service.rs` (metrics, tls, shutdown, log);
//! - `units.rs`: sizes and durations as the file writes them;
//! - `load.rs`: merging defaults, file and environment, naming the origin of every error;
//! - `validate.rs`: ranges and relations, as a typed [`Invalid`];
//! - `reload.rs`: what SIGHUP may change and what needs a restart.
//!
//! Invariant: every section and key has a default, so an empty file (or none) is a valid
//! configuration, and `--print-config` output loads back to the same configuration.

mod http2;
mod load;
pub mod reload;
mod server;
mod service;
pub mod units;
mod validate;
mod websocket;

use serde::{Deserialize, Serialize};

pub use http2::Http2Config;
pub use load::{
    ConfigError, ConfigPath, ErrorKind, Loaded, describe, env_var_for, list_keys, load,
    load_with_env,
};
pub use server::{ConsoleConfig, ServerConfig};
pub use service::{DEFAULT_METRICS_PORT, LogConfig, MetricsConfig, ShutdownConfig, TlsConfig};
pub use units::{ByteSize, Dur};
pub use validate::{Invalid, Problem};
pub use websocket::WebSocketConfig;

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
    /// WebSockets over HTTP/2.
    pub http2: Http2Config,
    /// The metrics, health and readiness listener.
    pub metrics: MetricsConfig,
    /// TLS for `wss://` on the WebSocket listeners.
    pub tls: TlsConfig,
    /// The page for trying the echo from a browser.
    pub console: ConsoleConfig,
    /// What SIGTERM does.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
}

impl Config {
    /// The configuration as TOML, as `--print-config` shows it. Optional keys that are unset
    /// are left out.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration always serializes")
    }

    /// The configuration as a TOML table of sections.
    pub fn to_table(&self) -> toml::Table {
        toml::Table::try_from(self).expect("the configuration always serializes")
    }

    /// Every section and key that exists, each at its default (optional keys at a value of
    /// their type): what [`load`] accepts, and what the shipped `etc/wsechod.toml` shows.
    pub fn schema() -> toml::Table {
        let mut every = Config::default();
        every.websocket.max_frame_size = Some(every.websocket.frame_limit());
        every.to_table()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::units::{KIB, MIB};
    use super::*;

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
        include_str!("../../etc/wsechod.toml")
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
        let text = include_str!("../../etc/wsechod.toml");
        assert_eq!(load_str(text, &[]).unwrap(), Config::default());
        // Uncommented, optional keys are set to the value they have when unset.
        let uncommented = load_str(&shipped_uncommented(), &[]).unwrap();
        let mut every = Config::default();
        every.websocket.max_frame_size = Some(every.websocket.frame_limit());
        assert_eq!(uncommented, every);
    }

    #[test]
    fn shipped_example_shows_every_key() {
        let shown: toml::Table = toml::from_str(&shipped_uncommented()).unwrap();
        for (section, keys) in &Config::schema() {
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
        assert_eq!(c.websocket.max_frame_size, Some(ByteSize(64 * KIB)));
        assert_eq!(c.shutdown.drain_timeout, Dur(Duration::from_secs(90)));
    }

    #[test]
    fn the_frame_limit_follows_a_lower_message_limit() {
        let c = load_str("[websocket]\nmax_message_size = \"1MiB\"\n", &[]).unwrap();
        assert_eq!(c.websocket.frame_limit(), ByteSize(MIB));
        let c = load_str(
            "[websocket]\nmax_message_size = \"1MiB\"\nmax_frame_size = \"64KiB\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.websocket.frame_limit(), ByteSize(64 * KIB));
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
    fn every_list_key_splits_at_commas_in_the_environment() {
        let values = [
            ("server.listen", "127.0.0.1:1,127.0.0.1:2"),
            (
                "server.allowed_origins",
                "https://a.example,http://b.example:8080",
            ),
            ("server.subprotocols", "echo.v1,echo.v2"),
        ];
        let lists = list_keys();
        assert_eq!(lists.len(), values.len(), "{lists:?}");
        for key in lists {
            let (_, value) = values
                .iter()
                .find(|(k, _)| *k == key)
                .unwrap_or_else(|| panic!("give a test value for the list key {key}"));
            let var = env_var_for(&key);
            let c = load_str("", &[(var.as_str(), value)]).unwrap();
            let (section, name) = key.split_once('.').unwrap();
            let got = c.to_table()[section][name].as_array().unwrap().len();
            assert_eq!(got, 2, "{key} from {var}={value}");
        }
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let (f, p) = file("[server]\npaht = \"/x\"\n");
        let e = load_with_env(&p, []).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.paht"), "{e}");
        assert_eq!(e.kind, ErrorKind::UnknownKey);
        assert_eq!(e.origin, f.path().display().to_string());
    }

    #[test]
    fn unknown_section_is_an_error() {
        let e = load_str("[sever]\npath = \"/x\"\n", &[]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sever"), "{e}");
        assert_eq!(e.kind, ErrorKind::UnknownSection);
    }

    #[test]
    fn unknown_environment_key_names_the_variable() {
        let e = load_str("", &[("WSECHOD_SERVER__PAHT", "/x")]).unwrap_err();
        assert_eq!(e.origin, "environment variable WSECHOD_SERVER__PAHT", "{e}");
        assert_eq!(e.kind, ErrorKind::UnknownKey);
    }

    #[test]
    fn type_error_names_key() {
        let e = load_str("[server]\nmax_connections = \"many\"\n", &[]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.max_connections"), "{e}");
        let e = load_str("[shutdown]\ndrain_timeout = 30\n", &[]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("shutdown.drain_timeout"), "{e}");
        assert!(e.to_string().contains("30s"), "{e}");
    }

    #[test]
    fn validation_errors_are_typed_and_name_their_origin() {
        let e = load_str("", &[("WSECHOD_SHUTDOWN__DRAIN_TIMEOUT", "2h")]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("shutdown.drain_timeout"));
        assert!(matches!(
            e.kind,
            ErrorKind::Invalid(Problem::OutOfRange { .. })
        ));
        assert_eq!(
            e.origin,
            "environment variable WSECHOD_SHUTDOWN__DRAIN_TIMEOUT"
        );
        let (f, p) = file("[server]\nmax_connections = 0\n");
        let e = load_with_env(&p, []).unwrap_err();
        assert_eq!(e.origin, f.path().display().to_string());
        assert_eq!(e.key.as_deref(), Some("server.max_connections"));
    }

    #[test]
    fn bad_toml_names_the_file() {
        let (f, p) = file("[server\n");
        let e = load_with_env(&p, []).unwrap_err();
        assert!(e.origin.contains(&*f.path().display().to_string()), "{e}");
        assert!(matches!(e.kind, ErrorKind::Syntax(_)), "{e}");
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
        for text in [
            "[websocket]\nreply_prefix = \"> \"\n",
            "[websocket]\nmax_frame_size = \"4KiB\"\n",
        ] {
            let c = load_str(text, &[]).unwrap();
            let again = load_str(&c.to_toml(), &[]).unwrap();
            assert_eq!(c, again);
        }
    }
}
