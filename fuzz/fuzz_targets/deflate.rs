//! permessage-deflate (RFC 7692) end to end through `wsechod::server::serve_io`: a fuzzed
//! offer in the upgrade request, then messages that the harness compresses as a client
//! would (so that valid compressed messages are reached), fragments, and corrupts.
//!
//! Input: a flags byte, an offer byte, a window-bits byte, then operations.
//!
//! Flags:
//!
//! | bits | meaning |
//! | ---- | ------- |
//! | 0-1  | settings: 0 the defaults (compression on, `server_no_context_takeover`); 1 tight (125-byte frames, 250-byte messages, reply prefix, context takeover both ways, 9-bit windows, level 9); 2 64 KiB messages in 4 KiB frames, `client_no_context_takeover`, a 10-bit server window, level 0; 3 compression off |
//! | 2    | send in small pieces |
//! | 3    | drain once the client has sent everything |
//!
//! Offer (`Sec-WebSocket-Extensions: permessage-deflate...`): bit 0 `server_no_context_takeover`,
//! 1 `client_no_context_takeover`, 2 `server_max_window_bits=N` (N the low nibble of the
//! window-bits byte), 3 `client_max_window_bits` (bare), 4 `client_max_window_bits=N` (the high
//! nibble), 5 a junk parameter (declines the offer), 6 a plain second offer after it, 7 no
//! header at all.
//!
//! Operations, each a tag byte (bits 0-2 the kind, bit 3 a ping between fragments, bits 4-7
//! the compression level) and its arguments:
//!
//! - 0, 1, 6, 7: a compressed message (0, 6 text; 1, 7 binary; 6, 7 with a fresh compressor):
//!   an argument byte (bits 0-1: fragments - 1; 2-4: what goes wrong, 0-2 nothing, 3 a
//!   flipped byte, 4 truncated, 5 RSV1 on a continuation (or a ping), 6 a junk byte
//!   appended, 7 the deflate stream ended with BFINAL (valid); 5-7: the payload repeated 2^n
//!   times), a length byte, the payload, and for 3, 4 and 6 one more byte (where, what);
//! - 2: a bomb: two bytes N, a message of N × 32 zero bytes (up to 2 MiB, from 2 KiB) compressed, into 1 + (tag bits 4-5) fragments, text if tag bit 6;
//! - 3: an uncompressed frame: its first header byte (RSV1 included), a length byte, the payload;
//! - 4: a close frame with the two code bytes that follow;
//! - 5: raw bytes as the payload of a compressed binary frame: a length byte, the bytes.
//!
//! Findings, beyond those of `handshake_and_frames` (`wsechod_fuzz::check_output`): a 101
//! whose `Sec-WebSocket-Extensions` is not what the offer allows; a compressed echo that
//! does not inflate with the window the server announced (or needs context it promised not
//! to keep); an echo that is not the message sent; a failure with another close code than
//! the one RFC 6455 and 7692 call for (1002 for RSV1 where it may not be, 1007 for text that
//! is not UTF-8, 1009 past the limits, bombs included).

#![no_main]

use std::sync::{Arc, OnceLock};

use flate2::{Compress, Compression, FlushCompress, Status};
use libfuzzer_sys::fuzz_target;
use wsechod::config::{ByteSize, Config};
use wsechod::deflate::negotiate;
use wsechod::http::Limit;
use wsechod::metrics::Metrics;
use wsechod::settings::Settings;
use wsechod_fuzz::{
    ACCEPT, Check, Drain, Exchange, Hold, check_output, play, runtime, strict, upgrade_request,
};

fn settings(variant: u8) -> Settings {
    let mut c = Config::default();
    let w = &mut c.websocket;
    match variant {
        0 => {}
        1 => {
            w.max_message_size = ByteSize(250);
            w.max_frame_size = Some(ByteSize(125));
            w.reply_prefix = "écho: ".into();
            w.server_no_context_takeover = false;
            w.client_no_context_takeover = false;
            w.server_max_window_bits = 9;
            w.client_max_window_bits = 9;
            w.compression_level = 9;
        }
        2 => {
            w.max_message_size = ByteSize(64 * 1024);
            w.max_frame_size = Some(ByteSize(4096));
            w.client_no_context_takeover = true;
            w.server_max_window_bits = 10;
            w.compression_level = 0;
        }
        _ => w.compression = false,
    }
    c.validate().expect("a valid configuration");
    Settings::new(&c).expect("no TLS files to read")
}

fn fixture() -> &'static [Arc<Settings>; 4] {
    static F: OnceLock<[Arc<Settings>; 4]> = OnceLock::new();
    F.get_or_init(|| [0, 1, 2, 3].map(|v| Arc::new(settings(v))))
}

thread_local! {
    static METRICS: Arc<Metrics> = Arc::new(Metrics::new());
}

/// The `Sec-WebSocket-Extensions` header lines of offer byte `o` and window-bits byte `b`.
fn offer(o: u8, b: u8) -> Vec<String> {
    if o & 0x80 != 0 {
        return Vec::new();
    }
    let mut v = String::from("permessage-deflate");
    if o & 0x01 != 0 {
        v.push_str("; server_no_context_takeover");
    }
    if o & 0x02 != 0 {
        v.push_str("; client_no_context_takeover");
    }
    if o & 0x04 != 0 {
        v.push_str(&format!("; server_max_window_bits={}", b & 0x0f));
    }
    if o & 0x10 != 0 {
        v.push_str(&format!("; client_max_window_bits={}", b >> 4));
    } else if o & 0x08 != 0 {
        v.push_str("; client_max_window_bits");
    }
    if o & 0x20 != 0 {
        v.push_str(match b & 0x30 {
            0x00 => "; x-junk",
            0x10 => "; server_no_context_takeover; server_no_context_takeover",
            0x20 => "; client_max_window_bits=\"1 5\"",
            _ => ";; =",
        });
    }
    let mut lines = vec![v];
    if o & 0x40 != 0 {
        lines.push("x-webkit-deflate-frame, permessage-deflate".into());
    }
    lines
}

/// How a failure must show: the close codes the server may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    /// Nothing goes wrong (so far).
    None,
    /// The connection must fail with one of these codes.
    With(&'static [u16]),
    /// Anything may happen from here on (a corrupt stream may still inflate to something).
    Unknown,
}

/// The client: its compressor, and what a correct server must echo.
struct Client<'a> {
    settings: &'a Settings,
    /// What was agreed, if anything.
    agreed: Option<wsechod::deflate::Agreed>,
    /// The compressor kept between messages (context takeover).
    kept: Option<Compress>,
    /// The wire bytes.
    wire: Vec<u8>,
    /// The messages a correct server echoes, as (opcode, payload).
    echoes: Vec<(u8, Vec<u8>)>,
    /// How the connection fails.
    fail: Fail,
    /// A close frame ended the conversation (no more ops count).
    closed: bool,
    /// Mask key counter.
    n: u8,
}

fn deflate(c: &mut Compress, data: &[u8], finish: bool) -> Vec<u8> {
    let flush = if finish {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let start = c.total_in();
    let mut out = Vec::with_capacity(64 + data.len() / 8);
    loop {
        let used = usize::try_from(c.total_in() - start).expect("a length");
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        let status = c
            .compress_vec(&data[used..], &mut out, flush)
            .expect("deflate works");
        let done = usize::try_from(c.total_in() - start).expect("a length") == data.len();
        if done && (status == Status::StreamEnd || (!finish && out.len() < out.capacity())) {
            break;
        }
    }
    // RFC 7692 section 7.2.1: end with an empty stored block, less its last four octets.
    // (zlib sync-flushes nothing for an empty message after another: then that is 0x00.)
    if !finish {
        if out.ends_with(&[0x00, 0x00, 0xff, 0xff]) {
            out.truncate(out.len() - 4);
        } else {
            out.push(0x00);
        }
    }
    out
}

impl Client<'_> {
    fn frame(&mut self, b0: u8, payload: &[u8]) {
        self.n = self.n.wrapping_add(1);
        let n = self.n;
        let key = [n, n ^ 0x5a, n.wrapping_mul(7) ^ 0xa5, !n];
        self.wire.push(b0);
        match payload.len() {
            l @ 0..=125 => self.wire.push(0x80 | l as u8),
            l @ 126..=0xffff => {
                self.wire.push(0x80 | 126);
                self.wire.extend((l as u16).to_be_bytes());
            }
            l => {
                self.wire.push(0x80 | 127);
                self.wire.extend((l as u64).to_be_bytes());
            }
        }
        self.wire.extend(key);
        self.wire
            .extend(payload.iter().enumerate().map(|(j, b)| b ^ key[j % 4]));
    }

    /// Records the outcome of one message; only the first failure counts.
    fn outcome(&mut self, f: Fail, echo: Option<(u8, Vec<u8>)>) {
        if self.fail != Fail::None || self.closed {
            return;
        }
        match f {
            Fail::None => self.echoes.extend(echo),
            f => self.fail = f,
        }
    }

    /// The echo of an intact message of `op` with `payload`, or how it fails.
    fn judge(&self, op: u8, payload: &[u8]) -> (Fail, Option<(u8, Vec<u8>)>) {
        let max = self.settings.ws().max_message_size.unwrap_or(usize::MAX);
        let utf8 = op != 0x1 || std::str::from_utf8(payload).is_ok();
        match (payload.len() > max, utf8) {
            (true, true) => (Fail::With(&[1009]), None),
            (true, false) => (Fail::With(&[1007, 1009]), None),
            (false, false) => (Fail::With(&[1007]), None),
            (false, true) => {
                let prefix = if op == 0x1 {
                    self.settings.reply_prefix().unwrap_or("").as_bytes()
                } else {
                    b""
                };
                (Fail::None, Some((op, [prefix, payload].concat())))
            }
        }
    }

    /// A bomb: `n` zero bytes as a compressed message, from 64 KiB blocks compressed once
    /// (sync-flushed deflate streams without context concatenate) so that megabytes cost
    /// no compressing per input.
    fn bomb(&mut self, op: u8, n: usize, parts: usize, ping: bool) {
        static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
        const BLOCK_LEN: usize = 64 * 1024;
        if self.agreed.is_none() {
            self.compressed(op, &vec![0; n], 1, parts, ping, true, Spoil::None);
            return;
        }
        let block = BLOCK.get_or_init(|| {
            let mut c = Compress::new_with_window_bits(Compression::new(9), false, 9);
            let mut b = deflate(&mut c, &[0; BLOCK_LEN], false);
            b.extend([0x00, 0x00, 0xff, 0xff]);
            b
        });
        let mut c = Compress::new_with_window_bits(Compression::new(9), false, 9);
        let data = [
            block.repeat(n / BLOCK_LEN),
            deflate(&mut c, &vec![0; n % BLOCK_LEN], false),
        ]
        .concat();
        self.kept = None;
        self.send(op, &vec![0; n], data, parts, ping, Fail::None, Spoil::None);
    }

    /// A compressed message of `op` with `payload` (compressed at `level`, into `parts`
    /// fragments, a ping between them if `ping`), spoiled by `spoil`.
    #[allow(clippy::too_many_arguments)]
    fn compressed(
        &mut self,
        op: u8,
        payload: &[u8],
        level: u32,
        parts: usize,
        ping: bool,
        fresh: bool,
        spoil: Spoil,
    ) {
        let Some(agreed) = self.agreed else {
            // RSV1 without the extension: tungstenite's protocol error.
            let mut c = Compress::new(Compression::new(level), false);
            let data = deflate(&mut c, payload, false);
            self.frame(0xc0 | op, &data);
            let max_frame = self.settings.ws().max_frame_size.unwrap_or(usize::MAX);
            // tungstenite refuses the header for either reason, whichever it checks first.
            let codes: &'static [u16] = if data.len() > max_frame {
                &[1002, 1009]
            } else {
                &[1002]
            };
            self.outcome(Fail::With(codes), None);
            return;
        };
        let bits = agreed.client_window_bits;
        let finish = spoil == Spoil::Final;
        let takeover = !agreed.client_no_context_takeover && !fresh && !finish;
        let mut c = match self.kept.take() {
            Some(c) if !fresh => c,
            _ => Compress::new_with_window_bits(Compression::new(level), false, bits),
        };
        let mut data = deflate(&mut c, payload, finish);
        if takeover {
            self.kept = Some(c);
        }
        let mut fail = Fail::None;
        match spoil {
            Spoil::None | Spoil::Final => {}
            Spoil::Flip(at, x) if !data.is_empty() => {
                let i = at % data.len();
                data[i] ^= x.max(1);
                fail = Fail::Unknown;
            }
            Spoil::Truncate(at) if !data.is_empty() => {
                data.truncate(at % data.len());
                fail = Fail::Unknown;
            }
            Spoil::Junk(b) => {
                data.push(b);
                fail = Fail::Unknown;
            }
            Spoil::Rsv1Again => fail = Fail::With(&[1002]),
            _ => {}
        }
        self.send(op, payload, data, parts, ping, fail, spoil);
    }

    /// Sends `data`, the compressed `payload` of a message of `op`, in `parts` fragments
    /// (a ping between them if `ping`), spoiled by `spoil` (`fail` so far), and records
    /// what must come of it.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        op: u8,
        payload: &[u8],
        data: Vec<u8>,
        parts: usize,
        ping: bool,
        fail: Fail,
        spoil: Spoil,
    ) {
        let lone = data.len() <= 1 || parts == 1;
        // Whatever goes wrong after a spoiled stream, the client's context is gone.
        if fail != Fail::None {
            self.kept = None;
        }
        let max_frame = self.settings.ws().max_frame_size.unwrap_or(usize::MAX);
        let parts = parts.clamp(1, data.len().max(1));
        let size = data.len().div_ceil(parts);
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![&[]]
        } else {
            data.chunks(size.max(1)).collect()
        };
        let last = chunks.len() - 1;
        let mut too_big = false;
        for (i, chunk) in chunks.iter().enumerate() {
            too_big |= chunk.len() > max_frame;
            let fin = if i == last { 0x80 } else { 0 };
            let b0 = match i {
                0 => fin | 0x40 | op,
                // RSV1 on a continuation: 1002.
                _ if spoil == Spoil::Rsv1Again && i == 1 => fin | 0x40,
                _ => fin,
            };
            self.frame(b0, chunk);
            if ping && i < last {
                self.frame(0x89, b"p");
            }
        }
        if spoil == Spoil::Rsv1Again && chunks.len() == 1 {
            debug_assert!(lone);
            // No continuation: RSV1 on a control frame instead.
            self.frame(0xc9, b"p");
        }
        if too_big {
            // The first (largest) compressed frame is over max_frame_size: 1009, before
            // anything is inflated.
            self.outcome(Fail::With(&[1009]), None);
            return;
        }
        if spoil == Spoil::Rsv1Again && lone {
            // The message is whole; the ping after it carries the RSV1.
            let (f, echo) = self.judge(op, payload);
            self.outcome(f, echo);
            self.outcome(Fail::With(&[1002]), None);
            return;
        }
        if fail != Fail::None {
            if fail == Fail::With(&[1002]) {
                // The message may fail first on its size or text, before the RSV1 is read.
                let (f, _) = self.judge(op, payload);
                if let Fail::With(codes) = f {
                    let both: &'static [u16] = if codes.contains(&1007) {
                        &[1002, 1007, 1009]
                    } else {
                        &[1002, 1009]
                    };
                    self.outcome(Fail::With(both), None);
                    return;
                }
            }
            self.outcome(fail, None);
            return;
        }
        let (f, echo) = self.judge(op, payload);
        self.outcome(f, echo);
    }
}

/// The operations' bytes, taken from the front.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// Up to `n` bytes; `None` when there are none left.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return None;
        }
        let (now, later) = self.0.split_at(n.min(self.0.len()));
        self.0 = later;
        Some(now)
    }
}

/// What goes wrong with a compressed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spoil {
    None,
    Flip(usize, u8),
    Truncate(usize),
    Rsv1Again,
    Junk(u8),
    Final,
}

fuzz_target!(|data: &[u8]| {
    let [flags, offer_byte, bits, ops @ ..] = data else {
        return;
    };
    let settings = &fixture()[usize::from(flags & 0x03)];
    let lines = offer(*offer_byte, *bits);
    let extra: String = lines
        .iter()
        .map(|l| format!("Sec-WebSocket-Extensions: {l}\r\n"))
        .collect();
    let negotiated = settings
        .policy()
        .deflate
        .as_ref()
        .and_then(|ours| negotiate(lines.iter().map(|l| l.as_bytes()), ours));
    let mut client = Client {
        settings,
        agreed: negotiated.as_ref().map(|n| n.agreed),
        kept: None,
        wire: upgrade_request(&settings.policy().path, &extra),
        echoes: Vec::new(),
        fail: Fail::None,
        closed: false,
        n: 0,
    };

    let mut input = Input(ops);
    let mut take = |n: usize| input.take(n);
    while let Some(&[tag]) = take(1) {
        let level = u32::from(tag >> 4).min(9);
        let ping = tag & 0x08 != 0;
        match tag & 0x07 {
            k @ (0 | 1 | 6 | 7) => {
                let Some(&[arg]) = take(1) else { break };
                let Some(&[len]) = take(1) else { break };
                let Some(body) = take(usize::from(len)) else {
                    break;
                };
                let payload = body.repeat(1 << (arg >> 5));
                let spoil = match (arg >> 2) & 0x07 {
                    3 | 4 | 6 => {
                        let Some(&[p]) = take(1) else { break };
                        match (arg >> 2) & 0x07 {
                            3 => Spoil::Flip(usize::from(p), p.rotate_left(3)),
                            4 => Spoil::Truncate(usize::from(p)),
                            _ => Spoil::Junk(p),
                        }
                    }
                    5 => Spoil::Rsv1Again,
                    7 => Spoil::Final,
                    _ => Spoil::None,
                };
                let op = if k % 2 == 0 { 0x1 } else { 0x2 };
                let parts = usize::from(arg & 0x03) + 1;
                client.compressed(op, &payload, level, parts, ping, k >= 6, spoil);
            }
            2 => {
                let Some(&[a, b]) = take(2) else { break };
                let n = usize::from(u16::from_be_bytes([a, b])) * 32;
                let op = if tag & 0x40 != 0 { 0x1 } else { 0x2 };
                let parts = usize::from((tag >> 4) & 0x03) + 1;
                client.bomb(op, n, parts, ping);
            }
            3 => {
                let Some(&[b0, len]) = take(2) else { break };
                let Some(body) = take(usize::from(len)) else {
                    break;
                };
                let body = body.to_vec();
                client.frame(b0, &body);
                let (fin, rsv, op) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f);
                let max_frame = settings.ws().max_frame_size.unwrap_or(usize::MAX);
                let f = match (fin, rsv, op) {
                    (_, r, _) if r & 0x30 != 0 => Fail::With(&[1002]),
                    (_, 0x40, 0x1 | 0x2) if client.agreed.is_some() => Fail::Unknown,
                    (_, 0x40, _) => Fail::With(&[1002]),
                    (_, _, 0x3..=0x7 | 0xb..=0xf) => Fail::With(&[1002]),
                    (_, _, 0x0) => Fail::With(&[1002]),
                    (_, _, 0x8..=0xa) if !fin || body.len() > 125 => Fail::With(&[1002, 1009]),
                    (_, _, _) if body.len() > max_frame => Fail::With(&[1009]),
                    (true, _, 0x9 | 0xa) => Fail::None,
                    (true, _, 0x1 | 0x2) => {
                        let (f, echo) = client.judge(op, &body);
                        client.outcome(f, echo);
                        continue;
                    }
                    _ => Fail::Unknown,
                };
                client.outcome(f, None);
                if op == 0x8 && f == Fail::None {
                    client.closed = true;
                }
            }
            4 => {
                let Some(&[a, b]) = take(2) else { break };
                client.frame(0x88, &[a, b]);
                let code = u16::from_be_bytes([a, b]);
                if !wsechod_fuzz::close_code_sendable(code) {
                    client.outcome(Fail::With(&[1002]), None);
                }
                client.closed = true;
            }
            _ => {
                let Some(&[len]) = take(1) else { break };
                let Some(body) = take(usize::from(len)) else {
                    break;
                };
                let body = body.to_vec();
                client.frame(0xc2, &body);
                let f = if client.agreed.is_some() {
                    Fail::Unknown
                } else {
                    Fail::With(&[1002])
                };
                client.outcome(f, None);
            }
        }
    }

    let drain = if flags & 0x08 != 0 {
        Drain::AfterWrite
    } else {
        Drain::Never
    };
    let ex = Exchange {
        settings,
        limit: Limit::None,
        input: &client.wire,
        chunked: flags & 0x04 != 0,
        drain,
        hold: Hold::No,
    };
    let rt = runtime();
    let outcome = METRICS.with(|m| play(&rt, m, &ex));
    let answer = check_output(&outcome.output);
    if answer.status.is_none() && !strict(Check::HalfClose) {
        return;
    }
    assert_eq!(
        answer.status,
        Some(101),
        "the answer to a valid upgrade request"
    );
    let out = String::from_utf8_lossy(&outcome.output);
    assert!(out.contains(ACCEPT), "wrong Sec-WebSocket-Accept: {out:?}");
    // The agreement: what the negotiation allows for this offer, checked against the offer
    // (the server may not grant more than it was offered).
    assert_eq!(
        answer.extensions,
        negotiated.as_ref().map(|n| n.response.clone()),
        "the extensions agreed to offer {lines:?}"
    );
    // (With one offer only: a declined first offer says nothing about the second.)
    if let (Some(n), 0) = (&negotiated, *offer_byte & 0x40) {
        let offered = lines.concat();
        if offered.contains("server_no_context_takeover") {
            assert!(n.agreed.server_no_context_takeover, "{offered:?}");
        }
        if !offered.contains("client_max_window_bits") {
            assert!(
                !n.response.contains("client_max_window_bits"),
                "client_max_window_bits not offered: {offered:?} → {:?}",
                n.response
            );
        }
        if *offer_byte & 0x24 == 0x04 {
            assert!(
                n.agreed.server_window_bits <= (bits & 0x0f),
                "server_max_window_bits={} offered, {} agreed",
                bits & 0x0f,
                n.agreed.server_window_bits
            );
        }
    }

    let echoed: Vec<_> = answer
        .frames
        .iter()
        .filter(|(op, _)| matches!(op, 0x1 | 0x2))
        .collect();
    let bounded = client.fail != Fail::Unknown;
    if bounded {
        assert!(
            echoed.len() <= client.echoes.len(),
            "{} messages echoed, {} sent ({:?})",
            echoed.len(),
            client.echoes.len(),
            client.fail
        );
    }
    for (i, (got, want)) in echoed.iter().zip(&client.echoes).enumerate() {
        assert!(
            **got == *want,
            "echo {i} is {:02x?} ({} bytes), the message sent was {:02x?} ({} bytes)",
            &got.1[..got.1.len().min(64)],
            got.1.len(),
            &want.1[..want.1.len().min(64)],
            want.1.len()
        );
    }
    if drain == Drain::Never && strict(Check::Echo) && client.fail == Fail::None {
        assert_eq!(
            echoed.len(),
            client.echoes.len(),
            "messages read but not echoed before the connection ended {:?}",
            outcome.state
        );
    }
    if let (Fail::With(codes), Drain::Never) = (client.fail, drain) {
        let close = answer.frames.iter().find(|(op, _)| *op == 0x8);
        if let Some((_, p)) = close {
            let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
            assert!(
                code.is_some_and(|c| codes.contains(&c)),
                "the server closed with {code:?}, expected one of {codes:?}"
            );
        }
    }
});
