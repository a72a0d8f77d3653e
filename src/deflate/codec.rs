//! The compressors and decompressors, and where they live.
//!
//! zlib's compressor with a 15-bit window holds about 256 KiB and its decompressor about
//! 40 KiB, so they are never allocated before a connection needs one:
//! - with `server_no_context_takeover`, one compressor per thread and window size serves
//!   every connection: a message is compressed whole, synchronously, then the compressor is
//!   reset (see [`compress`]);
//! - with context takeover, the connection owns its compressor from its first echo on;
//! - a decompressor is taken when a compressed message starts; with
//!   `client_no_context_takeover` it goes back to a small per-thread pool when the message
//!   ends, else the connection keeps it.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress};

/// The four bytes a sync flush ends with, which RFC 7692 section 7.2.1 removes from every
/// message (and the receiver appends again).
pub(crate) const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Idle decompressors kept per thread for connections without context takeover.
const POOL_MAX: usize = 16;

thread_local! {
    /// Shared compressors, by (window bits, level).
    static COMPRESSORS: RefCell<Vec<(u8, u32, Box<Compress>)>> = const { RefCell::new(Vec::new()) };
    /// Idle decompressors, by window bits, reset.
    static DECOMPRESSORS: RefCell<Vec<(u8, Box<Decompress>)>> = const { RefCell::new(Vec::new()) };
}

/// A raw-deflate decompressor with a `bits` window: from the thread's pool, or new.
pub(crate) fn take_decompressor(bits: u8) -> Box<Decompress> {
    DECOMPRESSORS
        .with(|pool| {
            let mut pool = pool.borrow_mut();
            let i = pool.iter().position(|(b, _)| *b == bits)?;
            Some(pool.swap_remove(i).1)
        })
        .unwrap_or_else(|| Box::new(Decompress::new_with_window_bits(false, bits)))
}

/// Resets a decompressor and gives it back to the thread's pool (or frees it).
pub(crate) fn give_decompressor(bits: u8, mut d: Box<Decompress>) {
    d.reset(false);
    DECOMPRESSORS.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push((bits, d));
        }
    });
}

/// Compresses `data` as one message into `out` (cleared first): raw deflate, sync-flushed,
/// without the trailing [`TRAILER`]. `own` is the connection's compressor under context
/// takeover; `None` uses (and resets) the thread's shared one.
pub(crate) fn compress(
    own: Option<&mut Option<Box<Compress>>>,
    bits: u8,
    level: u32,
    data: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    match own {
        Some(slot) => {
            let c = slot.get_or_insert_with(|| {
                Box::new(Compress::new_with_window_bits(
                    Compression::new(level),
                    false,
                    bits,
                ))
            });
            deflate(c, data, out);
        }
        None => COMPRESSORS.with(|cell| {
            let mut all = cell.borrow_mut();
            let i = match all.iter().position(|(b, l, _)| *b == bits && *l == level) {
                Some(i) => i,
                None => {
                    let c = Compress::new_with_window_bits(Compression::new(level), false, bits);
                    all.push((bits, level, Box::new(c)));
                    all.len() - 1
                }
            };
            let c = &mut all[i].2;
            deflate(c, data, out);
            c.reset();
        }),
    }
    // RFC 7692 section 7.2.1: output that does not end with an empty stored block gets one
    // (0x00 0x00 0x00 0xff 0xff), then the last four octets go. zlib sync-flushes nothing
    // at all for an empty message after another (no input, flushed already): that is the
    // single 0x00, not an empty payload, which a receiver that appends the four octets
    // reads as the start of a stored block, spoiling every later message (a fuzz finding).
    if out.ends_with(&TRAILER) {
        out.truncate(out.len() - TRAILER.len());
    } else {
        out.push(0x00);
    }
}

/// Feeds all of `data` and sync-flushes, growing `out` as needed.
fn deflate(c: &mut Compress, data: &[u8], out: &mut Vec<u8>) {
    let start = c.total_in();
    loop {
        let used = usize::try_from(c.total_in() - start).unwrap_or(data.len());
        if out.capacity() - out.len() < 64 {
            out.reserve(out.len().max(256));
        }
        c.compress_vec(&data[used..], out, FlushCompress::Sync)
            .expect("deflate cannot fail on valid state");
        let done = usize::try_from(c.total_in() - start).unwrap_or(data.len()) == data.len();
        // With room left after a sync flush, the flush is complete.
        if done && out.len() < out.capacity() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use flate2::{FlushDecompress, Status};

    use super::*;

    /// Inflates one message the way a receiver does: the payload plus the trailer.
    fn inflate(d: &mut Decompress, payload: &[u8]) -> Vec<u8> {
        let input = [payload, &TRAILER].concat();
        let mut out = Vec::with_capacity(1 << 20);
        let start = d.total_in();
        loop {
            let used = (d.total_in() - start) as usize;
            let status = d
                .decompress_vec(&input[used..], &mut out, FlushDecompress::Sync)
                .unwrap();
            if (d.total_in() - start) as usize == input.len() || status == Status::BufError {
                return out;
            }
        }
    }

    #[test]
    fn messages_round_trip_with_and_without_context_takeover() {
        let messages: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"hello hello hello hello".to_vec(),
            "안녕하세요 ".repeat(2000).into_bytes(),
            (0..300_000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ];
        for bits in [9u8, 12, 15] {
            let mut own = None;
            let mut d = Decompress::new_with_window_bits(false, bits);
            let mut out = Vec::new();
            for m in &messages {
                compress(Some(&mut own), bits, 1, m, &mut out);
                assert_eq!(&inflate(&mut d, &out), m, "own, {bits} bits");
            }
            // Shared: each message stands alone (a fresh decompressor per message works).
            for m in &messages {
                compress(None, bits, 6, m, &mut out);
                let mut fresh = Decompress::new_with_window_bits(false, bits);
                assert_eq!(&inflate(&mut fresh, &out), m, "shared, {bits} bits");
            }
        }
    }

    #[test]
    fn an_empty_message_is_one_zero_byte_and_repetition_compresses() {
        let mut out = Vec::new();
        compress(None, 15, 1, b"", &mut out);
        assert_eq!(out, [0x00]);
        let text = b"{\"id\":1,\"name\":\"wsechod\"}".repeat(40);
        compress(None, 15, 1, &text, &mut out);
        assert!(
            out.len() * 5 < text.len(),
            "{} of {}",
            out.len(),
            text.len()
        );
    }

    #[test]
    fn an_empty_message_after_another_is_still_one_zero_byte_under_context_takeover() {
        let mut own = None;
        let mut d = Decompress::new_with_window_bits(false, 15);
        let mut out = Vec::new();
        for m in [&b"hello"[..], b"", b"", b"world", b""] {
            compress(Some(&mut own), 15, 1, m, &mut out);
            if m.is_empty() {
                assert_eq!(out, [0x00]);
            }
            assert_eq!(inflate(&mut d, &out), m);
        }
    }

    #[test]
    fn the_pool_hands_back_reset_decompressors_of_the_right_window() {
        let d = take_decompressor(10);
        give_decompressor(10, d);
        let again = take_decompressor(10);
        assert_eq!(again.total_in(), 0);
        let other = take_decompressor(11);
        give_decompressor(11, other);
        give_decompressor(10, again);
        DECOMPRESSORS.with(|p| assert_eq!(p.borrow().len(), 2));
    }
}
