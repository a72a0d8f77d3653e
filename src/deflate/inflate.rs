//! The receiving side of permessage-deflate, below tungstenite: a rewriter on the byte
//! stream that passes every frame through unchanged except those of compressed messages,
//! which it inflates and hands on as ordinary frames.
//!
//! tungstenite rejects RSV1 and has no extension API, so it never sees a compressed frame:
//! a compressed message (first frame with RSV1, then continuations) reaches it as a
//! fragmented message of plain frames, each at most [`CHUNK`] bytes (and never more than
//! `max_frame_size`). tungstenite therefore still does everything else: UTF-8 validation
//! of text, the limits (its `max_message_size` answers 1009 as soon as the inflated
//! message passes it), control frames between fragments, the close handshake.
//!
//! Invariants:
//! - inflating is lazy: output is produced only when tungstenite asks for more bytes, one
//!   chunk at a time, so a decompression bomb costs at most `max_message_size` (held by
//!   tungstenite) plus one chunk before it fails with 1009;
//! - bytes are consumed from the raw input only as far as they are used; the position the
//!   caller passes in says exactly how far, so the rest can wait for a later batch;
//! - RSV1 on a control or continuation frame, or a compressed frame that is not masked, is
//!   a protocol error (1002); data that does not inflate is 1007.

use std::fmt;
use std::io::{self, Cursor};

use flate2::{Decompress, FlushDecompress};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use super::Agreed;
use super::codec::{TRAILER, give_decompressor, take_decompressor};

/// The largest frame the rewriter hands on (or `max_frame_size`, if smaller).
pub(crate) const CHUNK: usize = 16 * 1024;

/// The longest frame header (with a 64-bit length and a mask key).
const HEAD_MAX: usize = 14;

/// Raw bytes unmasked at a time, on the stack.
const STEP: usize = 4096;

/// Why a compressed stream fails the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// RSV1 where RFC 7692 forbids it, a new message inside a compressed one, or an
    /// unmasked compressed frame: 1002.
    Protocol(&'static str),
    /// A compressed frame over `max_frame_size`, or a message that inflates past
    /// `max_message_size`: 1009.
    TooBig,
    /// Data that is not a valid deflate stream: 1007.
    Corrupt,
}

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InflateError::Protocol(why) => write!(f, "permessage-deflate: {why}"),
            InflateError::TooBig => f.write_str("permessage-deflate: message too big"),
            InflateError::Corrupt => f.write_str("permessage-deflate: invalid compressed data"),
        }
    }
}

impl std::error::Error for InflateError {}

impl InflateError {
    /// As an I/O error that tungstenite passes on and the connection recognizes.
    fn io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }

    /// The inflate error inside an I/O error, if that is what it is.
    pub fn from_io(e: &io::Error) -> Option<InflateError> {
        e.get_ref()?.downcast_ref::<InflateError>().copied()
    }
}

/// What the current frame's payload gets.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Collecting a frame header.
    Header,
    /// Handed on unchanged: this many bytes left.
    Pass { left: u64 },
    /// Inflated: this many raw bytes left, their mask key and where in it we are, and
    /// whether this frame ends the message.
    Inflate {
        left: u64,
        mask: [u8; 4],
        at: usize,
        fin: bool,
    },
}

/// One compressed message being inflated.
struct Message {
    /// Its decompressor.
    d: Box<Decompress>,
    /// The opcode of the first frame we hand on; continuation frames follow it.
    first: Option<Data>,
    /// How much of [`TRAILER`] has been fed, once the last frame's payload is in.
    trailer: usize,
    /// The sender ended the deflate stream inside this message (a block with BFINAL).
    ended: bool,
    /// Bytes inflated so far.
    total: u64,
}

/// Where the next bytes for tungstenite come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// Nothing is waiting.
    None,
    /// A passed-through frame header, from `head[at..len]`.
    Head { at: usize },
    /// A re-framed chunk, from `frame[at..]`.
    Frame { at: usize },
}

/// The rewriter of one connection that negotiated permessage-deflate.
pub struct Inbound {
    /// What was agreed.
    agreed: Agreed,
    /// `max_frame_size`, applied to compressed frames as they arrive.
    max_frame: u64,
    /// `max_message_size`, applied to the inflated message.
    max_message: u64,
    /// The size of the frames we hand on.
    chunk: usize,
    /// A frame header being collected, and how much of it is there.
    head: [u8; HEAD_MAX],
    head_len: usize,
    /// The current frame.
    mode: Mode,
    /// The compressed message being inflated.
    message: Option<Box<Message>>,
    /// The decompressor kept between messages under context takeover.
    kept: Option<Box<Decompress>>,
    /// [`HEAD_MAX`] bytes of room for a header, then inflated bytes; empty between
    /// messages.
    frame: Vec<u8>,
    /// What is waiting for tungstenite.
    out: Out,
    /// Compressed bytes used and bytes inflated since [`Inbound::take_counts`].
    counts: (u64, u64),
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound")
            .field("mode", &self.mode)
            .field("in_message", &self.message.is_some())
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// A rewriter for a connection that agreed on `agreed`, under tungstenite's limits.
    pub fn new(agreed: Agreed, max_frame: Option<usize>, max_message: Option<usize>) -> Self {
        let max_frame = max_frame.unwrap_or(usize::MAX);
        Inbound {
            agreed,
            max_frame: max_frame as u64,
            max_message: max_message.map_or(u64::MAX, |m| m as u64),
            chunk: CHUNK.min(max_frame).max(1),
            head: [0; HEAD_MAX],
            head_len: 0,
            mode: Mode::Header,
            message: None,
            kept: None,
            frame: Vec::new(),
            out: Out::None,
            counts: (0, 0),
        }
    }

    /// The compressed bytes used and the bytes inflated from them since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.counts)
    }

    /// Reads rewritten bytes into `buf` from `input[*pos..]`, advancing `pos` past the raw
    /// bytes used. At the end of `input`: `WouldBlock`, or end of file (0) when `eof`.
    pub fn read(
        &mut self,
        input: &[u8],
        pos: &mut usize,
        eof: bool,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        loop {
            if let Some(n) = self.drain_out(buf) {
                return Ok(n);
            }
            let more = match self.mode {
                Mode::Header => self.header(input, pos)?,
                Mode::Pass { left } => {
                    if left == 0 {
                        self.mode = Mode::Header;
                        continue;
                    }
                    let n = (input.len() - *pos).min(buf.len());
                    let n = usize::try_from(left).map_or(n, |l| n.min(l));
                    if n == 0 {
                        false
                    } else {
                        buf[..n].copy_from_slice(&input[*pos..*pos + n]);
                        *pos += n;
                        self.mode = Mode::Pass {
                            left: left - n as u64,
                        };
                        return Ok(n);
                    }
                }
                Mode::Inflate { .. } => self.inflate(input, pos)?,
            };
            if !more {
                return if eof && *pos == input.len() {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
        }
    }

    /// Copies waiting bytes into `buf`; `None` when nothing waits.
    fn drain_out(&mut self, buf: &mut [u8]) -> Option<usize> {
        let (src, at) = match self.out {
            Out::None => return None,
            Out::Head { at } => (&self.head[..self.head_len], at),
            Out::Frame { at } => (&self.frame[..], at),
        };
        let n = (src.len() - at).min(buf.len());
        buf[..n].copy_from_slice(&src[at..at + n]);
        let at = at + n;
        self.out = match self.out {
            _ if at < src.len() => match self.out {
                Out::Head { .. } => Out::Head { at },
                _ => Out::Frame { at },
            },
            Out::Head { .. } => {
                self.head_len = 0;
                Out::None
            }
            _ => {
                if self.message.is_some() {
                    self.frame.truncate(HEAD_MAX);
                } else {
                    // The message's last frame: its buffer goes too.
                    self.frame = Vec::new();
                }
                Out::None
            }
        };
        Some(n)
    }

    /// Collects a header; once whole, decides what its frame gets. Returns false when the
    /// input ran out first.
    fn header(&mut self, input: &[u8], pos: &mut usize) -> io::Result<bool> {
        loop {
            let need = match self.head_len {
                0 | 1 => 2,
                _ => {
                    let len7 = self.head[1] & 0x7f;
                    let ext = match len7 {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
                    2 + ext + mask
                }
            };
            if self.head_len >= need {
                break;
            }
            if *pos == input.len() {
                return Ok(false);
            }
            let n = (need - self.head_len).min(input.len() - *pos);
            self.head[self.head_len..self.head_len + n].copy_from_slice(&input[*pos..*pos + n]);
            self.head_len += n;
            *pos += n;
        }
        let parsed = FrameHeader::parse(&mut Cursor::new(&self.head[..self.head_len]));
        let Ok(Some((header, len))) = parsed else {
            // tungstenite will find the same fault in these bytes and fail with it.
            self.pass(0);
            return Ok(true);
        };
        self.start(&header, len)?;
        Ok(true)
    }

    /// Hands the collected header on unchanged, then `len` payload bytes.
    fn pass(&mut self, len: u64) {
        self.out = Out::Head { at: 0 };
        self.mode = Mode::Pass { left: len };
    }

    /// Decides what a frame with `header` and `len` payload bytes gets.
    fn start(&mut self, header: &FrameHeader, len: u64) -> io::Result<()> {
        let continuation = header.opcode == OpCode::Data(Data::Continue);
        let message_start = matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
        if header.rsv2 || header.rsv3 {
            // No extension gives them a meaning: tungstenite fails the connection with 1002
            // (inflated instead, the frame failed as corrupt data, 1007: a fuzz finding).
            self.pass(len);
            return Ok(());
        }
        let compressed = if header.rsv1 {
            match header.opcode {
                OpCode::Control(_) => {
                    return Err(InflateError::Protocol("RSV1 set on a control frame").io());
                }
                OpCode::Data(Data::Continue) => {
                    return Err(InflateError::Protocol("RSV1 set on a continuation frame").io());
                }
                _ if self.message.is_some() => {
                    return Err(
                        InflateError::Protocol("a new message inside a compressed one").io(),
                    );
                }
                OpCode::Data(Data::Text | Data::Binary) => true,
                // An unknown opcode: tungstenite rejects it.
                OpCode::Data(_) => false,
            }
        } else if message_start && self.message.is_some() {
            return Err(InflateError::Protocol("a new message inside a compressed one").io());
        } else {
            continuation && self.message.is_some()
        };
        if !compressed {
            self.pass(len);
            return Ok(());
        }
        let Some(mask) = header.mask else {
            return Err(InflateError::Protocol("a client frame that is not masked").io());
        };
        if len > self.max_frame {
            return Err(InflateError::TooBig.io());
        }
        if self.message.is_none() {
            let bits = self.agreed.client_window_bits;
            let d = self.kept.take().unwrap_or_else(|| take_decompressor(bits));
            let first = match header.opcode {
                OpCode::Data(Data::Text) => Data::Text,
                _ => Data::Binary,
            };
            self.message = Some(Box::new(Message {
                d,
                first: Some(first),
                trailer: 0,
                ended: false,
                total: 0,
            }));
            self.frame = Vec::with_capacity(HEAD_MAX + self.chunk.min(1024));
            self.frame.resize(HEAD_MAX, 0);
        }
        self.head_len = 0;
        self.mode = Mode::Inflate {
            left: len,
            mask,
            at: 0,
            fin: header.is_final,
        };
        Ok(())
    }

    /// Inflates until a chunk is ready (and framed) or the input runs out. Returns false
    /// when the input ran out first.
    fn inflate(&mut self, input: &[u8], pos: &mut usize) -> io::Result<bool> {
        loop {
            let Mode::Inflate {
                left,
                mask,
                at,
                fin,
            } = self.mode
            else {
                unreachable!("called in Inflate mode only")
            };
            let filled = self.frame.len() - HEAD_MAX;
            if filled >= self.chunk {
                self.emit(false);
                return Ok(true);
            }
            // Grow the chunk buffer with the message, so small messages stay small.
            let room = (self.chunk - filled).min(filled.max(1024));
            let m = self.message.as_mut().expect("a message in Inflate mode");
            if left == 0 && !fin {
                // This frame is done; the message goes on in a continuation frame.
                self.mode = Mode::Header;
                return Ok(true);
            }
            if m.ended {
                // The sender ended the deflate stream (a block with BFINAL): what follows
                // in this message carries nothing.
                if left > 0 {
                    let n = usize::try_from(left)
                        .map_or(input.len() - *pos, |l| l.min(input.len() - *pos));
                    if n == 0 {
                        return Ok(false);
                    }
                    *pos += n;
                    self.counts.0 += n as u64;
                    self.mode = Mode::Inflate {
                        left: left - n as u64,
                        mask,
                        at,
                        fin,
                    };
                    continue;
                }
                self.emit(true);
                self.end_message();
                self.mode = Mode::Header;
                return Ok(true);
            }
            let mut raw = [0u8; STEP];
            let piece: &[u8] = if left > 0 {
                let avail = (input.len() - *pos).min(STEP);
                let n = usize::try_from(left).map_or(avail, |l| avail.min(l));
                if n == 0 {
                    return Ok(false);
                }
                for (i, (r, b)) in raw.iter_mut().zip(&input[*pos..*pos + n]).enumerate() {
                    *r = b ^ mask[(at + i) % 4];
                }
                &raw[..n]
            } else {
                &TRAILER[m.trailer..]
            };
            let (used, produced, ended) = inflate_into(&mut m.d, piece, &mut self.frame, room)?;
            m.total += produced as u64;
            self.counts.1 += produced as u64;
            if left > 0 {
                self.counts.0 += used as u64;
            }
            if m.total > self.max_message {
                return Err(InflateError::TooBig.io());
            }
            if ended {
                m.ended = true;
            }
            if left > 0 {
                *pos += used;
                self.mode = Mode::Inflate {
                    left: left - used as u64,
                    mask,
                    at: (at + used) % 4,
                    fin,
                };
                if used == 0 && produced == 0 && !ended {
                    // Input and room, and no progress: not a deflate stream.
                    return Err(InflateError::Corrupt.io());
                }
            } else {
                m.trailer += used;
                if m.trailer == TRAILER.len() && produced == 0 {
                    self.emit(true);
                    self.end_message();
                    self.mode = Mode::Header;
                    return Ok(true);
                }
            }
        }
    }

    /// Frames what `frame` holds after its header room and makes it the next output.
    fn emit(&mut self, fin: bool) {
        let message = self.message.as_mut().expect("a message to frame");
        let opcode = OpCode::Data(message.first.take().unwrap_or(Data::Continue));
        let header = FrameHeader {
            is_final: fin,
            opcode,
            mask: Some([0; 4]),
            ..FrameHeader::default()
        };
        let len = self.frame.len() - HEAD_MAX;
        let mut h = [0u8; HEAD_MAX];
        let mut w = &mut h[..];
        header
            .format(len as u64, &mut w)
            .expect("a header fits in 14 bytes");
        let hlen = HEAD_MAX - w.len();
        self.frame[HEAD_MAX - hlen..HEAD_MAX].copy_from_slice(&h[..hlen]);
        self.out = Out::Frame {
            at: HEAD_MAX - hlen,
        };
    }

    /// The message is inflated: keep its decompressor (context takeover) or give it back.
    /// After a stream that ended, the context is gone either way.
    fn end_message(&mut self) {
        let m = self.message.take().expect("a message to end");
        if self.agreed.client_no_context_takeover || m.ended {
            give_decompressor(self.agreed.client_window_bits, m.d);
        } else {
            self.kept = Some(m.d);
        }
    }
}

/// Inflates `input` into at most `room` more bytes at the end of `out`. Returns the input
/// bytes used, the bytes produced, and whether the deflate stream ended.
fn inflate_into(
    d: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    room: usize,
) -> io::Result<(usize, usize, bool)> {
    let end = out.len();
    out.reserve_exact(room);
    out.resize(end + room, 0);
    let (in0, out0) = (d.total_in(), d.total_out());
    let status = d.decompress(input, &mut out[end..], FlushDecompress::None);
    let produced = (d.total_out() - out0) as usize;
    out.truncate(end + produced);
    let status = status.map_err(|_| InflateError::Corrupt.io())?;
    Ok((
        (d.total_in() - in0) as usize,
        produced,
        status == flate2::Status::StreamEnd,
    ))
}

#[cfg(test)]
mod tests;
