//! No input crashes the WebSocket listener: arbitrary bytes from a client go through the
//! daemon's own HTTP handshake (the fast path or hyper) and, after a 101, its WebSocket echo
//! loop, exactly as `wsechod::server::serve_io` runs them for a TCP connection.
//!
//! Input: one flags byte, then the client's bytes.
//!
//! | bits | meaning |
//! | ---- | ------- |
//! | 0-1  | 0: the rest is sent as is (opening with the HTTP/2 preface, it is served as h2c, and the answer checked as HTTP/2 frames); 1: a valid upgrade request, then the rest as is (frames must carry their own mask); 2: a valid upgrade request, then the rest as frames that the harness masks (`mask_frames`); 3: as 2, with `Origin` and `Sec-WebSocket-Protocol` |
//! | 2    | tight settings: the smallest limits the configuration allows, a reply prefix, short keepalive and idle timers, and an origin and subprotocol policy |
//! | 3    | send in small pieces |
//! | 4-5  | 0: no drain; 1: drain before the connection; 2: drain after the client's last byte; 3: no drain, and the client waits 500 ms (virtual) before it half-closes, or with `WSECHOD_FUZZ_STRICT=keepalive` until the server ends the connection (see `Check::Keepalive`) |
//! | 6-7  | connection limit: 1 over `max_connections` (503), 2 over `max_connections_per_ip` (429), else within limits |
//!
//! Findings (panics): a panic anywhere in the daemon; `serve_io` returning with the connection
//! not Closed/Aborted or still counted live; an answer that is not one HTTP/1.x response with
//! an expected status; after a 101, anything but well-formed, unmasked server frames with
//! sendable close codes; for a valid upgrade request, any status but the expected one; an
//! echo that does not match; a connection still served after an hour of virtual time.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wsechod::config::{ByteSize, Config, Dur};
use wsechod::http::Limit;
use wsechod::metrics::Metrics;
use wsechod::settings::Settings;
use wsechod_fuzz::{
    ACCEPT, Check, Drain, Exchange, Hold, check_answer, client_frames, expected_echoes, play,
    runtime, strict, upgrade_request,
};

/// The two settings every input is served with, built once.
struct Fixture {
    plain: Arc<Settings>,
    tight: Arc<Settings>,
}

/// The smallest limits the configuration accepts (see `Config::validate`), so that every
/// size limit is within reach of a small input, plus every optional behaviour switched on.
/// Built through a `Config`, like every `Settings`.
fn tight() -> Settings {
    let mut c = Config::default();
    let w = &mut c.websocket;
    w.max_message_size = ByteSize(250);
    w.max_frame_size = Some(ByteSize(125));
    w.read_buffer_size = ByteSize(256);
    w.write_buffer_size = ByteSize(0);
    w.max_write_buffer_size = ByteSize(4096);
    w.ping_interval = Dur::secs(1);
    w.pong_timeout = Dur::millis(100);
    w.idle_timeout = Dur::secs(1);
    w.max_lifetime = Dur::secs(5);
    w.write_timeout = Dur::millis(100);
    w.reply_prefix = "écho: ".into();
    let s = &mut c.server;
    s.max_header_size = ByteSize(8 * 1024);
    s.handshake_timeout = Dur::millis(100);
    s.allowed_origins = vec!["https://example.com".into()];
    s.subprotocols = vec!["chat.v2".into(), "echo".into()];
    c.validate().expect("the tight configuration is valid");
    Settings::new(&c).expect("no TLS files to read")
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        plain: Arc::new(Settings::default()),
        tight: Arc::new(tight()),
    })
}

thread_local! {
    /// Shared by every input: its invariants (nothing live, accepted = closed + aborted)
    /// hold between connections.
    static METRICS: Arc<Metrics> = Arc::new(Metrics::new());
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let settings = if flags & 0x04 != 0 {
        &f.tight
    } else {
        &f.plain
    };
    let mode = flags & 0x03;
    let path = &settings.policy().path;
    let (body, sent) = if mode >= 2 {
        let (wire, frames) = client_frames(rest);
        (wire, Some(frames))
    } else {
        (rest.to_vec(), None)
    };
    let input = match mode {
        0 => body,
        1 | 2 => [upgrade_request(path, ""), body].concat(),
        _ => [
            upgrade_request(
                path,
                "Origin: https://EXAMPLE.com:443\r\nSec-WebSocket-Protocol: mqtt, echo\r\n",
            ),
            body,
        ]
        .concat(),
    };
    let (drain, hold) = match (flags >> 4) & 0x03 {
        0 => (Drain::Never, Hold::No),
        1 => (Drain::AtStart, Hold::No),
        2 => (Drain::AfterWrite, Hold::No),
        // Less than the shortest keepalive, idle or lifetime timer (1 s in `tight`).
        _ => (Drain::Never, Hold::keep_open_or(Duration::from_millis(500))),
    };
    let limit = match flags >> 6 {
        1 => Limit::Total,
        2 => Limit::PerIp,
        _ => Limit::None,
    };
    let ex = Exchange {
        settings,
        limit,
        input: &input,
        chunked: flags & 0x08 != 0,
        drain,
        hold,
    };
    let rt = runtime();
    let outcome = METRICS.with(|m| play(&rt, m, &ex));
    let answer = check_answer(&input, &outcome.output);

    // A valid upgrade request: its answer is certain. Except that a client that half-closes
    // right after its last byte may get nothing at all (see `Check::HalfClose`).
    let dropped = answer.status.is_none() && ex.hold == Hold::No && !strict(Check::HalfClose);
    if mode != 0 && !dropped {
        let want = match limit {
            Limit::None => 101,
            Limit::Total | Limit::Draining => 503,
            Limit::PerIp => 429,
        };
        assert_eq!(
            answer.status,
            Some(want),
            "the answer to a valid upgrade request"
        );
        let out = String::from_utf8_lossy(&outcome.output);
        if want == 101 {
            assert!(out.contains(ACCEPT), "wrong Sec-WebSocket-Accept: {out:?}");
            if mode == 3 && !settings.policy().subprotocols.is_empty() {
                assert!(
                    out.to_ascii_lowercase()
                        .contains("sec-websocket-protocol: echo\r\n"),
                    "the offered subprotocol was not selected: {out:?}"
                );
            }
        }
    }
    // The echo: what came back is what was sent, in order, with the reply prefix on text.
    let prefix = settings.reply_prefix().unwrap_or("");
    let echoed: Vec<_> = answer
        .frames
        .iter()
        .filter(|(op, _)| matches!(op, 0x1 | 0x2))
        .collect();
    match &sent {
        Some(sent) => {
            let want = expected_echoes(sent, settings);
            assert!(
                echoed.len() <= want.messages.len(),
                "{} messages echoed, {} sent",
                echoed.len(),
                want.messages.len()
            );
            for (i, (got, want)) in echoed.iter().zip(&want.messages).enumerate() {
                assert!(
                    **got == *want,
                    "echo {i} is {got:02x?}, the message sent was {want:02x?}"
                );
            }
            if strict(Check::Echo)
                && want.clean
                && answer.status == Some(101)
                && drain == Drain::Never
            {
                assert_eq!(
                    echoed.len(),
                    want.messages.len(),
                    "messages read but not echoed before the connection ended {:?}",
                    outcome.state
                );
            }
        }
        None => {
            for (op, payload) in &echoed {
                assert!(
                    *op != 0x1 || payload.starts_with(prefix.as_bytes()),
                    "a text echo without the reply prefix: {payload:02x?}"
                );
            }
        }
    }
});
