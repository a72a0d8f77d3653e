//! No configuration file crashes the loader: arbitrary bytes (as UTF-8, lossily) as
//! `wsechod.toml` through `wsechod::config::load_with_env`, with no environment.
//!
//! Findings (panics): a panic while loading; an error that displays as nothing; for a file
//! that loads, `--print-config` output (`Config::to_toml`) that does not load back to the
//! same configuration, or settings derived from it that cannot serve one WebSocket echo
//! without a panic or a broken answer (with `WSECHOD_FUZZ_STRICT=path`: that do not answer
//! 101 to a request for their own path, see `wsechod_fuzz::Check::Path`).

#![no_main]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wsechod::config::{ConfigPath, load_with_env};
use wsechod::http::Limit;
use wsechod::metrics::Metrics;
use wsechod::settings::Settings;
use wsechod_fuzz::{
    Check, Drain, Exchange, Hold, check_output, mask_frames, play, runtime, strict, upgrade_request,
};

/// There is no string entry point, so the input goes through a file: in /dev/shm (memory)
/// when there is one, one per process.
fn scratch(name: &str) -> PathBuf {
    let dir = ["/dev/shm", "/tmp"]
        .into_iter()
        .map(PathBuf::from)
        .find(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("wsechod-fuzz-{}-{name}.toml", std::process::id()))
}

thread_local! {
    static PATHS: (PathBuf, PathBuf) = (scratch("config"), scratch("printed"));
    static METRICS: Arc<Metrics> = Arc::new(Metrics::new());
}

fn load(
    path: &PathBuf,
    text: &str,
) -> Result<wsechod::config::Loaded, wsechod::config::ConfigError> {
    std::fs::write(path, text).expect("write the scratch config");
    let cp = ConfigPath {
        path: path.clone(),
        explicit: true,
    };
    load_with_env(&cp, Vec::<(String, String)>::new())
}

/// `path` as a client puts it in a request line: RFC 3986 path characters as they are (and
/// `%`, taken as an escape already), every other byte percent-encoded.
fn url_path(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    PATHS.with(|(file, printed)| {
        let loaded = match load(file, &text) {
            Ok(loaded) => loaded,
            Err(e) => {
                assert!(
                    !e.to_string().trim().is_empty(),
                    "an error that says nothing: {e:?}"
                );
                assert!(
                    !e.kind.to_string().trim().is_empty(),
                    "an error without a message: {e:?}"
                );
                return;
            }
        };
        let config = loaded.config;

        // `wsechod --print-config` shows this; loading it back must give the same config.
        let shown = config.to_toml();
        match load(printed, &shown) {
            Ok(again) => assert_eq!(
                again.config, config,
                "--print-config output loads as a different configuration:\n{shown}"
            ),
            Err(e) => panic!("--print-config output does not load: {e}\n{shown}"),
        }

        // Every configuration that loads can serve: one echo through the daemon's code.
        if config.tls.enabled() {
            return; // Settings::new would read the named files.
        }
        let settings = Arc::new(Settings::new(&config).expect("settings without TLS cannot fail"));
        // A request the configuration should accept: its origin, its subprotocol.
        let origin = config
            .server
            .allowed_origins
            .first()
            .map_or("https://example.com", String::as_str);
        let mut extra = format!("Origin: {origin}\r\n");
        if let Some(p) = config.server.subprotocols.first() {
            extra.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        let strict_path = strict(Check::Path);
        let path = if strict_path {
            url_path(&config.server.path)
        } else {
            config.server.path.clone()
        };
        // A text frame "hi", then a close 1000 (frames as `mask_frames` takes them).
        let frames = mask_frames(b"\x81\x02hi\x88\x02\x03\xe8");
        let input = [upgrade_request(&path, &extra), frames].concat();
        let ex = Exchange {
            settings: &settings,
            limit: Limit::None,
            input: &input,
            chunked: false,
            drain: Drain::Never,
            // Long enough for hyper to answer before it reads the FIN, shorter than any
            // keepalive, idle or lifetime timer (1 s at least).
            hold: Hold::For(Duration::from_millis(10)),
        };
        let rt = runtime();
        let outcome = METRICS.with(|m| play(&rt, m, &ex));
        let answer = check_output(&outcome.output);
        if strict_path {
            assert_eq!(
                answer.status,
                Some(101),
                "server.path = {:?} (requested as {path:?}) cannot be reached",
                config.server.path
            );
        }
    });
});
