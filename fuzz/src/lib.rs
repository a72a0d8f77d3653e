//! The harness behind wsechod's fuzz targets: one connection driven through the daemon's own
//! [`serve_io`] (hyper handshake, then the WebSocket echo loop) over an in-memory pipe, on a
//! current-thread runtime whose clock is paused, and the checks on what the server sent.
//!
//! Everything here panics on a finding; libFuzzer turns the panic into a crash artifact.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use wsechod::http::Limit;
use wsechod::metrics::Metrics;
use wsechod::server::{Accepted, Shared, serve_io};
use wsechod::settings::Settings;
use wsechod::state::ConnState;
use wsechod::tracker::ConnTracker;

/// The `Sec-WebSocket-Key` of RFC 6455 section 1.3 ...
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// ... and its `Sec-WebSocket-Accept`.
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Virtual time after which a connection counts as stuck. With the paused clock this costs
/// no real time: when every task waits, tokio jumps to the next timer. The longest legitimate
/// life of a connection whose client has stopped sending is a handshake timeout, a keepalive
/// ping and its pong timeout, and two close lingers (well under two minutes by default).
pub const STALL_LIMIT: Duration = Duration::from_secs(3600);

/// Bytes the in-memory pipe buffers each way (a small socket buffer).
const PIPE_BUF: usize = 16 * 1024;

/// Statuses the WebSocket listener may answer with: ours (see `wsechod::http::decide`) and
/// hyper's automatic answers to requests it cannot parse (400, also for an unknown HTTP
/// version; 431; and 414 for a URI of 64 KiB or more, unreachable with a header limit under
/// that).
pub const STATUSES: [u16; 10] = [101, 400, 403, 404, 405, 414, 426, 429, 431, 503];

/// A fresh current-thread runtime with the clock paused.
///
/// One per input rather than one per process: tokio's paused clock only ever moves forward,
/// by every timer an input waits on, so a shared runtime would carry every earlier input's
/// virtual time into the next. A fresh runtime makes every crash reproduce from its input
/// alone.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}

/// When the daemon's drain (SIGTERM) starts during the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// It does not.
    Never,
    /// Before the connection is accepted.
    AtStart,
    /// Once the client has written everything (before it half-closes).
    AfterWrite,
}

/// One connection to play.
pub struct Exchange<'a> {
    /// The settings the daemon serves it with.
    pub settings: &'a Arc<Settings>,
    /// The connection limit verdict the accept loop would have given it.
    pub limit: Limit,
    /// Every byte the client sends.
    pub input: &'a [u8],
    /// Send the input in small pieces with a yield between them, so that parsers see
    /// partial requests and frames.
    pub chunked: bool,
    /// When the drain starts.
    pub drain: Drain,
    /// When the client half-closes once it has sent everything.
    pub hold: Hold,
}

/// When the client half-closes its side of the connection after its last byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// At once.
    No,
    /// After this much (virtual) time, so that the server's handshake timers run.
    For(Duration),
    /// Never: the client waits until the server ends the connection, so only the server's
    /// timers (handshake timeout, keepalive, idle, lifetime) can end it.
    UntilServerEnds,
}

impl Hold {
    /// `UntilServerEnds` with `WSECHOD_FUZZ_STRICT=keepalive` (see [`Check::Keepalive`]),
    /// else `For(d)`.
    pub fn keep_open_or(d: Duration) -> Hold {
        if strict(Check::Keepalive) {
            Hold::UntilServerEnds
        } else {
            Hold::For(d)
        }
    }
}

/// Checks added for findings in the daemon, all fixed now and so on by default.
/// `WSECHOD_FUZZ_STRICT` can narrow them to a comma-separated list of names, or `none`
/// (to reproduce the behaviour of an older daemon). See fuzz/README.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `keepalive`: the client of flags 0x30 keeps its write half open until the server ends
    /// the connection, so the keepalive, idle and lifetime timers run. The daemon computed
    /// those deadlines from `std::time::Instant`, which the paused clock does not move: when
    /// tokio jumped to the connection's timer, nothing was due and the timer was re-armed at
    /// the same, passed deadline, so the connection spun until the real clock got there and
    /// the input was reported as a timeout. Fixed: src/connection/deadlines.rs uses tokio's
    /// clock.
    Keepalive,
    /// `echo`: a connection that ends without a reason to fail it (every frame valid, then a
    /// FIN or a valid close) has echoed every message it read. The daemon dropped the echoes
    /// it had queued but not flushed when it read the client's FIN in the same batch (fixed:
    /// `Connection::failed` in src/connection/mod.rs flushes first, bounded in time).
    Echo,
    /// `halfclose`: a client that half-closes (sends its FIN) right after a valid request still
    /// gets its answer. The daemon's hyper connection kept its default `half_close(false)`,
    /// so hyper dropped the request unanswered when it read the FIN before it had written
    /// the response (fixed: `half_close(true)` in src/server/handshake.rs).
    HalfClose,
    /// `path`: a configuration that loads serves its own path, requested as a client writes
    /// it in a URL (percent-encoding what must be). `server.path` could hold `#`, control
    /// characters, `"` or non-ASCII, which no client can send as they are (fixed: validation
    /// allows only RFC 3986 path characters).
    Path,
}

/// Whether the check of an open finding is on (`WSECHOD_FUZZ_STRICT`).
pub fn strict(check: Check) -> bool {
    static ON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let on =
        ON.get_or_init(|| std::env::var("WSECHOD_FUZZ_STRICT").unwrap_or_else(|_| "all".into()));
    let name = match check {
        Check::Keepalive => "keepalive",
        Check::Echo => "echo",
        Check::HalfClose => "halfclose",
        Check::Path => "path",
    };
    on.split(',')
        .map(str::trim)
        .any(|w| w == name || w == "all" || w == "1")
}

/// What came of it.
pub struct Outcome {
    /// Everything the server sent, up to its end of the connection.
    pub output: Vec<u8>,
    /// The connection's final state.
    pub state: ConnState,
    /// Virtual time the exchange took.
    pub elapsed: Duration,
}

/// Plays `ex` on `rt` against `metrics` and checks the connection's bookkeeping: when
/// `serve_io` returns, the connection is in a terminal state and no connection is counted
/// live. (`metrics` may be shared between exchanges: every counter invariant is global.)
pub fn play(rt: &Runtime, metrics: &Arc<Metrics>, ex: &Exchange<'_>) -> Outcome {
    rt.block_on(async {
        let start = tokio::time::Instant::now();
        let shared = Shared::new(Settings::clone(ex.settings), metrics.clone());
        if ex.drain == Drain::AtStart {
            shared.drain.start(1, 0, Duration::ZERO);
        }
        let (client, server_io) = tokio::io::duplex(PIPE_BUF);
        let (mut rd, mut wr) = tokio::io::split(client);
        let tracker = ConnTracker::new(metrics.clone());
        let server_done = Notify::new();
        let end_state = Cell::new(None);

        let server = async {
            let accepted = Accepted {
                id: 1,
                peer: "192.0.2.1:50000".parse().expect("an address"),
                local: "192.0.2.2:8080".parse().expect("an address"),
                limit: ex.limit,
                deadline: tokio::time::Instant::now() + ex.settings.handshake_timeout(),
            };
            serve_io(server_io, &accepted, &tracker, ex.settings, &shared).await;
            // Checked right away, before anything else runs and before the tracker's Drop
            // could paper over a connection that ended without recording it. (A connection
            // handed over to HTTP/2 reads as Closed.)
            let state = tracker.state();
            assert!(
                state.is_terminal(),
                "serve_io returned with the connection still {state:?}"
            );
            // An HTTP/2 connection's WebSocket streams are connections of their own, in
            // tasks of the daemon's task tracker that may outlive serve_io by a moment:
            // the drain waits for them, and so does this.
            shared.tasks.close();
            shared.tasks.wait().await;
            assert_eq!(
                metrics.live_total(),
                0,
                "a connection is still counted live after serve_io returned (state {state:?})"
            );
            end_state.set(Some(state));
            server_done.notify_one();
        };
        let writer = async {
            if ex.chunked {
                let mut rest = ex.input;
                for size in [1, 3, 7, 2, 13, 5, 64, 1].into_iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (now, later) = rest.split_at(size.min(rest.len()));
                    if wr.write_all(now).await.is_err() {
                        break;
                    }
                    rest = later;
                    tokio::task::yield_now().await;
                }
            } else {
                // The server may stop reading and go away early: then the rest is lost.
                let _ = wr.write_all(ex.input).await;
            }
            if ex.drain == Drain::AfterWrite {
                shared.drain.start(1, 0, Duration::ZERO);
            }
            match ex.hold {
                Hold::No => {}
                Hold::For(d) => {
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = server_done.notified() => {}
                    }
                }
                Hold::UntilServerEnds => server_done.notified().await,
            }
            let _ = wr.shutdown().await;
        };
        let reader = async {
            let mut out = Vec::new();
            // Ends when the server drops its side of the pipe.
            let _ = rd.read_to_end(&mut out).await;
            out
        };
        let all = async { tokio::join!(server, writer, reader) };
        let Ok(((), (), output)) = tokio::time::timeout(STALL_LIMIT, all).await else {
            panic!(
                "the connection was still being served after {STALL_LIMIT:?} of (virtual) time, in state {:?}",
                tracker.state()
            );
        };
        // A TCP connection that turned out to speak HTTP/2 is counted there instead of
        // closed or aborted; each of its WebSocket streams is accepted and ends itself.
        let accepted = metrics.accepted();
        let ended = metrics.ended(ConnState::Closed)
            + metrics.ended(ConnState::Aborted)
            + metrics.http2_connections_total();
        assert_eq!(
            accepted, ended,
            "accepted = closed + aborted + handed over to HTTP/2 must hold once every connection has ended"
        );
        let outcome = Outcome {
            output,
            state: end_state.get().expect("the server finished"),
            elapsed: start.elapsed(),
        };
        if debug() {
            eprintln!(
                "--- client sent ({} bytes, {:?}, {:?}, {:?}, chunked {}):\n{}\n--- server sent ({} bytes) in {:?} of virtual time, ending {:?}:\n{}",
                ex.input.len(),
                ex.limit,
                ex.drain,
                ex.hold,
                ex.chunked,
                escape(ex.input),
                outcome.output.len(),
                outcome.elapsed,
                outcome.state,
                escape(&outcome.output),
            );
        }
        outcome
    })
}

/// `WSECHOD_FUZZ_DEBUG=1`: print every exchange (to reproduce a finding with
/// `target/.../handshake_and_frames ARTIFACT`).
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| {
        std::env::var_os("WSECHOD_FUZZ_DEBUG").is_some_and(|v| !v.is_empty() && v != "0")
    })
}

/// Bytes as text with everything else escaped, truncated to a screenful.
fn escape(bytes: &[u8]) -> String {
    let shown: String = bytes[..bytes.len().min(2000)]
        .escape_ascii()
        .to_string()
        .replace("\\r\\n", "\\r\\n\n");
    if bytes.len() > 2000 {
        format!("{shown}... ({} more bytes)", bytes.len() - 2000)
    } else {
        shown
    }
}

/// An upgrade request for `path` that the default policy accepts, with `extra` header lines
/// (each ending in CRLF).
pub fn upgrade_request(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// Turns "frames without mask keys" into client frames: each frame is the first header byte
/// as given, then a length byte whose top bit means "leave this frame unmasked" (a protocol
/// error) instead of "masked", the extended length if the length byte asks for one, and the
/// payload; a mask key is inserted and the payload masked with it. A declared length longer
/// than what is left just takes the rest, so truncated frames stay possible.
pub fn mask_frames(raw: &[u8]) -> Vec<u8> {
    client_frames(raw).0
}

/// One frame of [`mask_frames`]' input.
#[derive(Debug)]
pub struct ClientFrame {
    /// First header byte: FIN, RSV1-3, opcode.
    pub b0: u8,
    /// Sent masked, as a client must.
    pub masked: bool,
    /// The payload (unmasked).
    pub payload: Vec<u8>,
    /// All of it was there.
    pub complete: bool,
}

/// [`mask_frames`], also returning the frames it made.
pub fn client_frames(raw: &[u8]) -> (Vec<u8>, Vec<ClientFrame>) {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 2 + 8);
    let mut frames = Vec::new();
    let mut i = 0;
    let mut n: u8 = 0;
    while i < raw.len() {
        let b0 = raw[i];
        i += 1;
        out.push(b0);
        let Some(&b1) = raw.get(i) else { break };
        i += 1;
        let masked = b1 & 0x80 == 0;
        let code = b1 & 0x7f;
        out.push(if masked { 0x80 | code } else { code });
        let ext = match code {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let ext_bytes = &raw[i..(i + ext).min(raw.len())];
        out.extend_from_slice(ext_bytes);
        i += ext_bytes.len();
        if ext_bytes.len() < ext {
            break;
        }
        let declared = match code {
            126 => u64::from(u16::from_be_bytes([ext_bytes[0], ext_bytes[1]])),
            127 => u64::from_be_bytes(ext_bytes.try_into().expect("8 bytes")),
            c => u64::from(c),
        };
        let len = usize::try_from(declared)
            .unwrap_or(usize::MAX)
            .min(raw.len() - i);
        let payload = &raw[i..i + len];
        i += len;
        if masked {
            n = n.wrapping_add(1);
            let key = [n, n ^ 0x5a, n.wrapping_mul(7) ^ 0xa5, !n];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(j, b)| b ^ key[j % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        frames.push(ClientFrame {
            b0,
            masked,
            payload: payload.to_vec(),
            complete: len as u64 == declared,
        });
    }
    (out, frames)
}

/// What a correct echo server sends back for a client's frames.
#[derive(Debug)]
pub struct Echoes {
    /// The data messages, in order, as (opcode, payload), with the reply prefix before each
    /// text message: the complete messages up to the first frame that ends the conversation
    /// (close, a protocol violation, invalid UTF-8, a size limit, a truncated frame). What the
    /// daemon echoes must be a prefix of this list: it may stop earlier (a drain, a write
    /// that fails), never send something else.
    pub messages: Vec<(u8, Vec<u8>)>,
    /// Nothing in the frames gives the server a reason to fail the connection: every frame
    /// was valid and within the limits, up to the end or up to a valid close frame. Then
    /// every message should be echoed.
    pub clean: bool,
}

/// The [`Echoes`] of `frames` under the size limits and reply prefix of `settings`.
pub fn expected_echoes(frames: &[ClientFrame], settings: &Settings) -> Echoes {
    let prefix = settings.reply_prefix().unwrap_or("");
    let max_frame = settings.ws().max_frame_size.unwrap_or(usize::MAX);
    let max_message = settings.ws().max_message_size.unwrap_or(usize::MAX);
    let mut messages = Vec::new();
    let mut partial: Option<(u8, Vec<u8>)> = None;
    let mut clean = true;
    for f in frames {
        let (fin, rsv, op) = (f.b0 & 0x80 != 0, f.b0 & 0x70, f.b0 & 0x0f);
        if !f.complete || !f.masked || rsv != 0 || f.payload.len() > max_frame {
            clean = false;
            break;
        }
        match op {
            0x1 | 0x2 if partial.is_none() => partial = Some((op, f.payload.clone())),
            0x0 if partial.is_some() => {
                partial
                    .as_mut()
                    .expect("checked")
                    .1
                    .extend_from_slice(&f.payload);
            }
            0x9 | 0xa if fin && f.payload.len() <= 125 => continue,
            0x8 => {
                let p = &f.payload;
                clean = fin
                    && p.len() <= 125
                    && p.len() != 1
                    && (p.is_empty()
                        || (close_code_sendable(u16::from_be_bytes([p[0], p[1]]))
                            && std::str::from_utf8(&p[2..]).is_ok()));
                break;
            }
            _ => {
                clean = false;
                break;
            }
        }
        if partial.as_ref().is_some_and(|(_, m)| m.len() > max_message) {
            clean = false;
            break;
        }
        if fin {
            let (op, payload) = partial.take().expect("a message is being assembled");
            if op == 0x1 {
                let Ok(text) = std::str::from_utf8(&payload) else {
                    clean = false;
                    break;
                };
                messages.push((op, format!("{prefix}{text}").into_bytes()));
            } else {
                messages.push((op, payload));
            }
        }
    }
    Echoes { messages, clean }
}

/// What [`check_output`] found in a well-formed answer.
#[derive(Debug)]
pub struct Answer {
    /// The status code, or `None` when the server sent nothing at all (or spoke HTTP/2).
    pub status: Option<u16>,
    /// After a 101: the server's frames, as (opcode, payload), compressed messages
    /// inflated.
    pub frames: Vec<(u8, Vec<u8>)>,
    /// The 101's `Sec-WebSocket-Extensions`, if it had one.
    pub extensions: Option<String>,
}

/// The HTTP/2 connection preface (RFC 9113 section 3.4): a client that opens with it gets
/// HTTP/2 with prior knowledge (h2c), as HTTP/2 is on in every setting the targets use.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// [`check_output`] for a client that sent `input`: one that opened with the HTTP/2
/// preface gets HTTP/2 frames instead (see [`check_h2_frames`]).
pub fn check_answer(input: &[u8], out: &[u8]) -> Answer {
    if input.starts_with(PREFACE) {
        check_h2_frames(out);
        return Answer {
            status: None,
            frames: Vec::new(),
            extensions: None,
        };
    }
    check_output(out)
}

/// Checks what an HTTP/2 server sent: nothing, or whole frames (RFC 9113 section 4.1), the
/// first its SETTINGS, with the reserved bit of every stream id clear and every frame type
/// on the kind of stream it belongs to.
pub fn check_h2_frames(out: &[u8]) {
    let mut i = 0;
    let mut n = 0;
    while i < out.len() {
        let head = out.get(i..i + 9).unwrap_or_else(|| {
            panic!(
                "a truncated HTTP/2 frame header at byte {i}: {:02x?}",
                &out[i..]
            )
        });
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
        assert_eq!(
            stream >> 31,
            0,
            "HTTP/2 frame at {i} with the reserved bit set"
        );
        assert!(
            out.len() - i - 9 >= len,
            "HTTP/2 frame at {i} (type {kind}) declares {len} bytes, {} are there",
            out.len() - i - 9
        );
        if n == 0 {
            assert!(
                kind == 0x4 && flags & 0x1 == 0 && stream == 0,
                "the server's HTTP/2 preface is not a SETTINGS frame: {head:02x?}"
            );
        }
        match kind {
            // SETTINGS, PING, GOAWAY: the connection's.
            0x4 | 0x6 | 0x7 => assert_eq!(stream, 0, "HTTP/2 frame type {kind} on a stream"),
            // DATA, HEADERS, PRIORITY, RST_STREAM, PUSH_PROMISE, CONTINUATION: a stream's.
            0x0 | 0x1 | 0x2 | 0x3 | 0x5 | 0x9 => {
                assert_ne!(stream, 0, "HTTP/2 frame type {kind} on stream 0");
            }
            _ => {}
        }
        assert_ne!(kind, 0x5, "the server pushed (PUSH_PROMISE)");
        i += 9 + len;
        n += 1;
    }
}

/// Checks everything the server sent: nothing at all, or one HTTP/1.x response with a
/// status from [`STATUSES`] and nothing after its body, or a 101 followed by nothing but
/// well-formed server frames (see [`check_frames`]). Panics on anything else.
pub fn check_output(out: &[u8]) -> Answer {
    if out.is_empty() {
        return Answer {
            status: None,
            frames: Vec::new(),
            extensions: None,
        };
    }
    let shown = || String::from_utf8_lossy(&out[..out.len().min(300)]).into_owned();
    let version = &out[..out.len().min(9)];
    assert!(
        version == b"HTTP/1.1 " || version == b"HTTP/1.0 ",
        "the answer does not start with an HTTP/1.x status line: {:?}",
        shown()
    );
    let code = out.get(9..12).unwrap_or_default();
    assert!(
        code.len() == 3 && code.iter().all(u8::is_ascii_digit) && out.get(12) == Some(&b' '),
        "no 3-digit status in {:?}",
        shown()
    );
    let status: u16 = std::str::from_utf8(code).unwrap().parse().unwrap();
    assert!(
        STATUSES.contains(&status),
        "unexpected status {status} in {:?}",
        shown()
    );
    let head_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("the response head never ends: {:?}", shown()))
        + 4;
    let head = std::str::from_utf8(&out[..head_end])
        .unwrap_or_else(|_| panic!("the response head is not UTF-8: {:?}", shown()));
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let rest = &out[head_end..];
    if status == 101 {
        assert_eq!(version, b"HTTP/1.1 ", "a 101 to an HTTP/1.0 request");
        assert!(
            header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
            "101 without Upgrade: websocket: {head:?}"
        );
        assert!(
            header("sec-websocket-accept").is_some(),
            "101 without Sec-WebSocket-Accept: {head:?}"
        );
        let extensions = header("sec-websocket-extensions");
        let deflate = extensions.as_deref().map(server_deflate);
        let frames = check_frames(rest, deflate);
        return Answer {
            status: Some(status),
            frames,
            extensions,
        };
    }
    // An error answer ends the connection: its body, then nothing (no second response).
    // A HEAD request gets the head alone.
    match header("content-length") {
        Some(cl) => {
            let cl: usize = cl
                .parse()
                .unwrap_or_else(|_| panic!("bad Content-Length in {head:?}"));
            assert!(
                rest.len() == cl || rest.is_empty(),
                "{} bytes after a {status} whose Content-Length is {cl}: {:?}",
                rest.len(),
                shown()
            );
        }
        None => assert!(
            rest.is_empty(),
            "a body without Content-Length after a {status}: {:?}",
            shown()
        ),
    }
    Answer {
        status: Some(status),
        frames: Vec::new(),
        extensions: None,
    }
}

/// What the server's side of permessage-deflate means for reading its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerDeflate {
    /// The server compresses with at most this window (`server_max_window_bits`, else 15).
    pub window_bits: u8,
    /// The server resets its compressor after every message.
    pub no_context_takeover: bool,
}

/// Parses and checks a 101's `Sec-WebSocket-Extensions` (RFC 7692 section 7): exactly one
/// `permessage-deflate` with known parameters, each at most once, window sizes 8 to 15.
pub fn server_deflate(value: &str) -> ServerDeflate {
    let mut parts = value.split(';').map(str::trim);
    assert_eq!(
        parts.next(),
        Some("permessage-deflate"),
        "the server agreed to an extension other than permessage-deflate alone: {value:?}"
    );
    let mut d = ServerDeflate {
        window_bits: 15,
        no_context_takeover: false,
    };
    let mut seen = Vec::new();
    for p in parts {
        let (name, v) = p.split_once('=').map_or((p, None), |(n, v)| (n, Some(v)));
        assert!(!seen.contains(&name), "{name} twice in {value:?}");
        seen.push(name);
        let bits = || {
            let b: u8 = v
                .unwrap_or_else(|| panic!("{name} without a value in {value:?}"))
                .parse()
                .unwrap_or_else(|_| panic!("bad {name} in {value:?}"));
            assert!((8..=15).contains(&b), "{name}={b} in {value:?}");
            b
        };
        match name {
            "server_no_context_takeover" | "client_no_context_takeover" => {
                assert!(v.is_none(), "{name} with a value in {value:?}");
                if name == "server_no_context_takeover" {
                    d.no_context_takeover = true;
                }
            }
            "server_max_window_bits" => d.window_bits = bits(),
            "client_max_window_bits" => {
                bits();
            }
            _ => panic!("unknown parameter {name:?} in the server's {value:?}"),
        }
    }
    d
}

/// Inflates one compressed message the server sent (the payload, then the sync flush's
/// tail that RFC 7692 section 7.2.2 has the receiver append) with `d`.
pub fn inflate_message(d: &mut flate2::Decompress, payload: &[u8]) -> Vec<u8> {
    use flate2::{FlushDecompress, Status};
    let input = [payload, &[0x00, 0x00, 0xff, 0xff]].concat();
    let start = d.total_in();
    let mut out = Vec::with_capacity(input.len() * 4 + 64);
    loop {
        let used = usize::try_from(d.total_in() - start).expect("a length");
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let before = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(&input[used..], &mut out, FlushDecompress::Sync)
            .unwrap_or_else(|e| {
                panic!("the server sent a compressed message that does not inflate: {e}")
            });
        let used = usize::try_from(d.total_in() - start).expect("a length");
        if status == Status::StreamEnd || (used == input.len() && out.len() < out.capacity()) {
            return out;
        }
        assert!(
            (d.total_in(), d.total_out()) != before || out.len() == out.capacity(),
            "inflating the server's message makes no progress"
        );
        assert!(
            out.len() <= 64 << 20,
            "the server's compressed message inflates past 64 MiB"
        );
    }
}

/// Whether a close code may be sent (RFC 6455 section 7.4 and the IANA registry): never
/// 1004–1006, 1015, 1016–2999 or anything outside 1000–4999.
pub fn close_code_sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses `bytes` as the frames a server sends and checks each one: no mask, no RSV bits
/// but RSV1 on data frames when permessage-deflate was agreed (`deflate`; their payloads
/// are inflated with the agreed window, and must inflate), a known opcode, the shortest length encoding, whole frames
/// only, control frames final and at most 125 bytes, text valid UTF-8, a close frame empty
/// or with a sendable code and a UTF-8 reason, and nothing after the close frame. The
/// daemon never fragments what it sends, so every frame is final. Returns (opcode, payload)
/// of each frame.
pub fn check_frames(bytes: &[u8], deflate: Option<ServerDeflate>) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut inflater =
        deflate.map(|d| flate2::Decompress::new_with_window_bits(false, d.window_bits.max(9)));
    let mut i = 0;
    while i < bytes.len() {
        let at = i;
        assert!(
            !frames.iter().any(|(op, _)| *op == 0x8),
            "{} bytes after the server's close frame",
            bytes.len() - at
        );
        let Some(&[b0, b1]) = bytes
            .get(i..i + 2)
            .map(|s| <&[u8; 2]>::try_from(s).unwrap())
        else {
            panic!("a truncated frame header at byte {at} of the server's frames");
        };
        i += 2;
        let (fin, rsv, opcode) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f);
        let compressed = rsv == 0x40 && deflate.is_some() && matches!(opcode, 0x1 | 0x2);
        assert!(
            rsv == 0 || compressed,
            "server frame at {at} (opcode {opcode:#x}) has RSV bits {rsv:#x} (extensions agreed: {deflate:?})"
        );
        assert!(
            matches!(opcode, 0x1 | 0x2 | 0x8 | 0x9 | 0xa),
            "server frame at {at} has opcode {opcode:#x}"
        );
        assert!(
            fin,
            "server frame at {at} (opcode {opcode:#x}) is not final"
        );
        assert_eq!(b1 & 0x80, 0, "server frame at {at} is masked");
        let len = match b1 & 0x7f {
            126 => {
                let ext = bytes
                    .get(i..i + 2)
                    .unwrap_or_else(|| panic!("truncated length at {at}"));
                i += 2;
                let n = u64::from(u16::from_be_bytes([ext[0], ext[1]]));
                assert!(n >= 126, "non-minimal 16-bit length {n} at {at}");
                n
            }
            127 => {
                let ext = bytes
                    .get(i..i + 8)
                    .unwrap_or_else(|| panic!("truncated length at {at}"));
                i += 8;
                let n = u64::from_be_bytes(ext.try_into().unwrap());
                assert!(n > 0xffff && n >> 63 == 0, "bad 64-bit length {n} at {at}");
                n
            }
            n => u64::from(n),
        };
        let len = usize::try_from(len).unwrap();
        let payload = bytes.get(i..i.saturating_add(len)).unwrap_or_else(|| {
            panic!(
                "server frame at {at} declares {len} bytes, {} are there",
                bytes.len() - i
            )
        });
        i += len;
        let inflated;
        let payload = if compressed {
            let d = inflater.as_mut().expect("deflate agreed");
            inflated = inflate_message(d, payload);
            if deflate.is_some_and(|d| d.no_context_takeover) {
                // The server promised not to use the previous messages: neither do we.
                d.reset(false);
            }
            &inflated[..]
        } else {
            payload
        };
        if opcode >= 0x8 {
            assert!(len <= 125, "control frame at {at} of {len} bytes");
        }
        match opcode {
            0x1 => assert!(
                std::str::from_utf8(payload).is_ok(),
                "the server sent a text frame that is not UTF-8 at {at}: {payload:02x?}"
            ),
            0x8 => {
                assert!(
                    payload.len() != 1,
                    "close frame at {at} with a 1-byte payload"
                );
                if payload.len() >= 2 {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    assert!(
                        close_code_sendable(code),
                        "the server sent close code {code}, which may not be sent"
                    );
                    assert!(
                        std::str::from_utf8(&payload[2..]).is_ok(),
                        "close reason not UTF-8: {payload:02x?}"
                    );
                }
            }
            _ => {}
        }
        frames.push((opcode, payload.to_vec()));
    }
    frames
}
