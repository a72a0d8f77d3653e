//! The rewriter against real compressed frames, fed in every possible split.

use flate2::{Compress, Compression, FlushCompress};

use super::*;

const AGREED: Agreed = Agreed {
    server_window_bits: 15,
    client_window_bits: 15,
    server_no_context_takeover: true,
    client_no_context_takeover: false,
};

/// A masked client frame.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![b0];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// Raw deflate of `data`, sync-flushed, without the trailer (as a client sends it).
fn deflate(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 2 + 1024);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    // zlib flushes nothing for an empty message right after a flush: an empty payload,
    // which inflates (with the trailer) to an empty message.
    if out.ends_with(&TRAILER) {
        out.truncate(out.len() - 4);
    }
    out
}

/// Runs `input` through a rewriter in pieces of `step` bytes, reading `read` at a time,
/// and parses what comes out into (fin, opcode, payload) frames.
fn rewrite(
    agreed: Agreed,
    max_message: usize,
    input: &[u8],
    step: usize,
    read: usize,
) -> Result<Vec<(bool, u8, Vec<u8>)>, InflateError> {
    let mut r = Inbound::new(agreed, Some(max_message), Some(max_message));
    let mut out = Vec::new();
    let mut buf = vec![0u8; read];
    for piece in input.chunks(step.max(1)) {
        let mut pos = 0;
        loop {
            match r.read(piece, &mut pos, false, &mut buf) {
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(InflateError::from_io(&e).expect("an inflate error")),
            }
        }
        assert_eq!(pos, piece.len(), "every raw byte is used");
    }
    Ok(parse(&out))
}

/// Parses masked frames (the rewriter's output) into (fin, opcode, unmasked payload).
fn parse(mut bytes: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let (h, len) = FrameHeader::parse(&mut Cursor::new(bytes))
            .unwrap()
            .unwrap();
        let hlen = h.len(len);
        let payload: Vec<u8> = bytes[hlen..hlen + len as usize]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ h.mask.map_or(0, |m| m[i % 4]))
            .collect();
        assert!(!h.rsv1, "the rewriter hands on no RSV1");
        frames.push((h.is_final, u8::from(h.opcode), payload));
        bytes = &bytes[hlen + len as usize..];
    }
    frames
}

/// The messages in a list of frames, as (opcode, payload); control frames as they are.
fn messages(frames: &[(bool, u8, Vec<u8>)]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut partial: Option<(u8, Vec<u8>)> = None;
    for (fin, op, p) in frames {
        match op {
            0 => partial.as_mut().unwrap().1.extend_from_slice(p),
            8..=10 => {
                out.push((*op, p.clone()));
                continue;
            }
            _ => partial = Some((*op, p.clone())),
        }
        if *fin {
            out.push(partial.take().unwrap());
        }
    }
    out
}

#[test]
fn compressed_plain_and_control_frames_come_out_as_plain_messages_in_every_split() {
    let mut c = Compress::new(Compression::new(6), false);
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 97) as u8).collect();
    let text = "안녕하세요, wsechod! ".repeat(50);
    let mut input = Vec::new();
    input.extend(frame(0xc1, &deflate(&mut c, text.as_bytes()))); // text, RSV1, FIN
    input.extend(frame(0x82, b"plain binary")); // uncompressed message
    // A fragmented compressed message with a ping between its fragments.
    let z = deflate(&mut c, &big);
    let (a, b) = z.split_at(z.len() / 3);
    input.extend(frame(0x42, a)); // binary, RSV1, not FIN
    input.extend(frame(0x89, b"ping"));
    input.extend(frame(0x80, b)); // continuation, FIN
    input.extend(frame(0xc2, &deflate(&mut c, b""))); // empty compressed message
    let want = vec![
        (1u8, text.into_bytes()),
        (2, b"plain binary".to_vec()),
        (9, b"ping".to_vec()),
        (2, big),
        (2, Vec::new()),
    ];
    for (step, read) in [
        (1, 7),
        (3, 256),
        (100, 2048),
        (4096, 16384),
        (1 << 20, 100_000),
    ] {
        let frames = rewrite(AGREED, 1 << 20, &input, step, read).unwrap();
        assert!(frames.iter().all(|(_, _, p)| p.len() <= CHUNK));
        let got = messages(&frames);
        // The ping is handed on where it came: inside the fragmented message.
        let mut got_sorted = got.clone();
        got_sorted.sort_by_key(|(op, _)| *op == 9);
        let mut want_sorted = want.clone();
        want_sorted.sort_by_key(|(op, _)| *op == 9);
        assert_eq!(got.len(), want.len(), "step {step}");
        assert_eq!(got_sorted, want_sorted, "step {step}");
    }
}

#[test]
fn context_takeover_keeps_the_window_and_no_takeover_resets_it() {
    let mut c = Compress::new(Compression::new(6), false);
    let m = b"the same words again and again and again".to_vec();
    let (first, second) = (deflate(&mut c, &m), deflate(&mut c, &m));
    assert!(
        second.len() < first.len(),
        "the second refers back to the first"
    );
    let input = [frame(0xc1, &first), frame(0xc1, &second)].concat();
    let frames = rewrite(AGREED, 1 << 20, &input, 5, 64).unwrap();
    assert_eq!(messages(&frames), vec![(1, m.clone()), (1, m.clone())]);
    // Without context takeover, the second (which refers back) cannot inflate alone.
    let no_takeover = Agreed {
        client_no_context_takeover: true,
        ..AGREED
    };
    assert_eq!(
        rewrite(no_takeover, 1 << 20, &input, 5, 64).unwrap_err(),
        InflateError::Corrupt
    );
}

#[test]
fn a_bomb_stops_at_the_message_limit_holding_at_most_a_chunk() {
    // 8 MiB of zeros compress to about 8 KiB.
    let mut c = Compress::new(Compression::new(1), false);
    let mut z = Vec::with_capacity(1 << 17);
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..8 {
        c.compress_vec(&zeros, &mut z, FlushCompress::None).unwrap();
    }
    c.compress_vec(&[], &mut z, FlushCompress::Sync).unwrap();
    assert!(z.len() < 128 * 1024, "{}", z.len());
    let input = frame(0xc2, &z[..z.len() - 4]);
    let mut r = Inbound::new(AGREED, Some(1 << 20), Some(1 << 20));
    let mut buf = vec![0u8; 4096];
    let mut pos = 0;
    let mut handed_on = 0usize;
    let err = loop {
        match r.read(&input, &mut pos, false, &mut buf) {
            Ok(n) => handed_on += n,
            Err(e) => break InflateError::from_io(&e),
        }
        assert!(r.frame.capacity() <= HEAD_MAX + CHUNK);
    };
    assert_eq!(err, Some(InflateError::TooBig));
    assert!(handed_on <= (1 << 20) + 2 * CHUNK, "{handed_on}");
}

#[test]
fn rsv1_where_it_may_not_be_and_corrupt_data_fail() {
    let mut c = Compress::new(Compression::new(6), false);
    let z = deflate(&mut c, b"hello");
    for (input, want) in [
        (
            frame(0xc9, b"x"),
            InflateError::Protocol("RSV1 set on a control frame"),
        ),
        (
            [frame(0x41, &z), frame(0xc0, b"x")].concat(),
            InflateError::Protocol("RSV1 set on a continuation frame"),
        ),
        (
            [frame(0x41, &z), frame(0x81, b"x")].concat(),
            InflateError::Protocol("a new message inside a compressed one"),
        ),
        (
            frame(0xc1, &[0xff, 0xff, 0xff, 0xff]),
            InflateError::Corrupt,
        ),
        (
            // A compressed frame over max_frame_size (1 KiB here).
            frame(0xc2, &vec![0u8; 2000]),
            InflateError::TooBig,
        ),
    ] {
        assert_eq!(rewrite(AGREED, 1024, &input, 3, 100).unwrap_err(), want);
    }
    // An unmasked compressed frame.
    let mut f = frame(0xc1, &z);
    f[1] &= 0x7f;
    f.drain(2..6);
    assert_eq!(
        rewrite(AGREED, 1024, &f, 100, 100).unwrap_err(),
        InflateError::Protocol("a client frame that is not masked")
    );
}

/// A fuzz finding: RSV1 with RSV2 or RSV3 was inflated (and failed as corrupt data, 1007)
/// instead of reaching tungstenite, which fails it as the protocol error it is (1002).
#[test]
fn rsv2_or_rsv3_pass_through_for_tungstenite_to_refuse() {
    for b0 in [0xf2u8, 0xe1, 0xd1, 0xa2, 0x70] {
        let mut r = Inbound::new(AGREED, Some(1024), Some(1024));
        let input = frame(b0, b"xyz");
        let (mut buf, mut pos, mut out) = (vec![0u8; 100], 0, Vec::new());
        loop {
            match r.read(&input, &mut pos, false, &mut buf) {
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{b0:#x}: {e}");
                    break;
                }
            }
        }
        assert_eq!(out, input, "{b0:#x}");
    }
}

#[test]
fn uncompressed_frames_pass_through_byte_for_byte() {
    let input = [frame(0x81, b"hi"), frame(0x88, &[0x03, 0xe8])].concat();
    let mut r = Inbound::new(AGREED, None, None);
    let mut out = vec![0u8; 64];
    let mut pos = 0;
    let mut got = Vec::new();
    while let Ok(n) = r.read(&input, &mut pos, false, &mut out) {
        got.extend_from_slice(&out[..n]);
    }
    assert_eq!(got, input);
}

#[test]
fn end_of_file_inside_a_message_is_end_of_file() {
    let mut c = Compress::new(Compression::new(6), false);
    let f = frame(0xc1, &deflate(&mut c, b"hello"));
    let mut r = Inbound::new(AGREED, None, None);
    let mut buf = [0u8; 64];
    let mut pos = 0;
    let cut = &f[..f.len() - 2];
    assert_eq!(r.read(cut, &mut pos, true, &mut buf).unwrap(), 0);
}
