//! Command line, configuration errors and exit codes.

use crate::util::{run, write_temp};

#[test]
fn version_and_help() {
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for flag in ["--config", "--check-config", "--print-config"] {
        assert!(out.contains(flag), "{out}");
    }
}

#[test]
fn check_config_accepts_the_shipped_file() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/wsechod.toml");
    let (code, out, err) = run(&["--check-config", "-c", shipped], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration OK"), "{out}");
}

#[test]
fn check_config_names_file_and_key_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp(dir.path(), "bad.toml", "[server]\nmax_connections = 0\n");
    let (code, _, err) = run(&["--check-config", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    assert!(err.contains("server.max_connections"), "{err}");
}

#[test]
fn unknown_key_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp(
        dir.path(),
        "typo.toml",
        "[websocket]\nreply_prefx = \"x\"\n",
    );
    let (code, _, err) = run(&["-c", path.to_str().unwrap()], &[]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("websocket.reply_prefx"), "{err}");
}

#[test]
fn environment_error_names_the_variable() {
    let (code, _, err) = run(
        &["--check-config", "-c", "/dev/null"],
        &[("WSECHOD_SHUTDOWN__DRAIN_TIMEOUT", "soon")],
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("WSECHOD_SHUTDOWN__DRAIN_TIMEOUT"), "{err}");
    assert!(err.contains("shutdown.drain_timeout"), "{err}");
}

#[test]
fn missing_explicit_config_is_an_error() {
    let (code, _, err) = run(&["-c", "/nonexistent/wsechod.toml"], &[]);
    assert_eq!(code, 78);
    assert!(err.contains("/nonexistent/wsechod.toml"), "{err}");
}

#[test]
fn print_config_merges_defaults_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp(dir.path(), "c.toml", "[shutdown]\ndrain_timeout = \"3s\"\n");
    let (code, out, err) = run(
        &["--print-config", "-c", path.to_str().unwrap()],
        &[("WSECHOD_SERVER__PATH", "/echo")],
    );
    assert_eq!(code, 0, "{err}");
    let printed: toml::Table = toml::from_str(&out).unwrap();
    assert_eq!(printed["server"]["path"].as_str(), Some("/echo"));
    assert_eq!(printed["shutdown"]["drain_timeout"].as_str(), Some("3s"));
    assert_eq!(
        printed["metrics"]["listen"].as_str(),
        Some("127.0.0.1:9180")
    );
}

#[test]
fn bind_failure_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(
        &["-c", "/dev/null"],
        &[
            ("WSECHOD_SERVER__LISTEN", &addr),
            ("WSECHOD_METRICS__ENABLED", "false"),
        ],
    );
    assert_eq!(code, 69, "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}
