//! What SIGHUP may change. This file is the one place that knows which keys a running
//! daemon applies (to new connections) and which need a restart; the daemon asks it for a
//! [`Reload`] and applies that as a whole.
//!
//! Invariant: the configuration a reload produces differs from the running one only in keys
//! that can change live. A restart-only key that changed is kept at its running value and
//! reported in [`Reload::needs_restart`].

use super::Config;

/// A key (or a part of one) that only takes effect at start.
struct RestartOnly {
    /// How it is reported.
    key: &'static str,
    /// Whether `new` changes it.
    differs: fn(running: &Config, new: &Config) -> bool,
    /// Puts the running value back into `new`.
    keep: fn(new: &mut Config, running: &Config),
}

/// Listeners are bound and the runtime is built once, at start.
const RESTART_ONLY: &[RestartOnly] = &[
    RestartOnly {
        key: "server.listen",
        differs: |a, b| a.server.listen != b.server.listen,
        keep: |n, r| n.server.listen = r.server.listen.clone(),
    },
    RestartOnly {
        key: "server.worker_threads",
        differs: |a, b| a.server.worker_threads != b.server.worker_threads,
        keep: |n, r| n.server.worker_threads = r.server.worker_threads,
    },
    RestartOnly {
        key: "metrics",
        differs: |a, b| a.metrics != b.metrics,
        keep: |n, r| n.metrics = r.metrics.clone(),
    },
    // New certificate files apply live; turning TLS on or off changes the URL scheme.
    RestartOnly {
        key: "tls (switching it on or off)",
        differs: |a, b| a.tls.enabled() != b.tls.enabled(),
        keep: |n, r| n.tls = r.tls.clone(),
    },
];

/// One changed key, in TOML notation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `section.key`.
    pub key: String,
    /// The running value.
    pub before: String,
    /// The value in the reloaded file and environment.
    pub after: String,
}

/// The outcome of reading the configuration again.
#[derive(Debug, Clone)]
pub struct Reload {
    /// What to run with from now on: the loaded configuration, with every restart-only key
    /// kept at its running value.
    pub config: Config,
    /// Every key whose loaded value differs from the running one.
    pub changed: Vec<Change>,
    /// Restart-only keys that changed (and were kept).
    pub needs_restart: Vec<&'static str>,
}

/// Plans a reload from the `running` configuration to a freshly `loaded` one.
pub fn plan(running: &Config, loaded: Config) -> Reload {
    let changed = diff(running, &loaded);
    let mut config = loaded;
    let mut needs_restart = Vec::new();
    for r in RESTART_ONLY {
        if (r.differs)(running, &config) {
            needs_restart.push(r.key);
            (r.keep)(&mut config, running);
        }
    }
    Reload {
        config,
        changed,
        needs_restart,
    }
}

/// Keys whose value differs, compared in TOML notation (as `--print-config` shows them).
/// A key that only one side sets (an optional key) shows as `(unset)` on the other.
fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let before: std::collections::BTreeMap<_, _> = flatten(old).into_iter().collect();
    let after: std::collections::BTreeMap<_, _> = flatten(new).into_iter().collect();
    let unset = || "(unset)".to_string();
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let b = before.get(key).cloned().unwrap_or_else(unset);
            let a = after.get(key).cloned().unwrap_or_else(unset);
            (b != a).then(|| Change {
                key: key.clone(),
                before: b,
                after: a,
            })
        })
        .collect()
}

fn flatten(c: &Config) -> Vec<(String, String)> {
    c.to_table()
        .iter()
        .flat_map(|(section, keys)| {
            keys.as_table()
                .into_iter()
                .flatten()
                .map(move |(k, v)| (format!("{section}.{k}"), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_apply_and_restart_keys_are_kept() {
        let running = Config::default();
        let mut loaded = Config::default();
        loaded.websocket.reply_prefix = "> ".into();
        loaded.server.worker_threads = 3;
        loaded.server.listen = vec!["127.0.0.1:1".parse().unwrap()];
        loaded.metrics.enabled = false;
        let r = plan(&running, loaded);
        assert_eq!(r.config.websocket.reply_prefix, "> ");
        assert_eq!(r.config.server.worker_threads, 0);
        assert_eq!(r.config.server.listen, running.server.listen);
        assert!(r.config.metrics.enabled);
        assert_eq!(
            r.needs_restart,
            ["server.listen", "server.worker_threads", "metrics"]
        );
        let keys: Vec<_> = r.changed.iter().map(|c| c.key.as_str()).collect();
        assert!(keys.contains(&"websocket.reply_prefix"), "{keys:?}");
        assert!(keys.contains(&"server.worker_threads"), "{keys:?}");
        let prefix = r
            .changed
            .iter()
            .find(|c| c.key == "websocket.reply_prefix")
            .unwrap();
        assert_eq!(
            (prefix.before.as_str(), prefix.after.as_str()),
            ("\"\"", "\"> \"")
        );
    }

    #[test]
    fn new_certificate_files_apply_but_switching_tls_needs_a_restart() {
        let mut running = Config::default();
        running.tls.cert_file = "/a.crt".into();
        running.tls.key_file = "/a.key".into();
        let mut renewed = running.clone();
        renewed.tls.cert_file = "/b.crt".into();
        let r = plan(&running, renewed);
        assert!(r.needs_restart.is_empty());
        assert_eq!(r.config.tls.cert_file, "/b.crt");
        let r = plan(&running, Config::default());
        assert_eq!(r.needs_restart, ["tls (switching it on or off)"]);
        assert_eq!(r.config.tls, running.tls);
    }

    #[test]
    fn an_unset_key_shows_as_unset() {
        let mut running = Config::default();
        running.websocket.max_frame_size = Some(super::super::ByteSize(4096));
        let r = plan(&running, Config::default());
        let c = r
            .changed
            .iter()
            .find(|c| c.key == "websocket.max_frame_size")
            .unwrap();
        assert_eq!(c.before, "\"4KiB\"");
        assert_eq!(c.after, "(unset)");
    }
}
