//! permessage-deflate (RFC 7692), with tungstenite still the protocol engine:
//!
//! - `offer.rs` negotiates, as a pure function of the request's headers;
//! - `inflate.rs` rewrites incoming compressed messages into plain frames below tungstenite;
//! - `codec.rs` holds the compressors and decompressors, allocated only when used.
//!
//! A connection that did not negotiate compression has none of this: no rewriter, no
//! state, not one branch per byte (its `Option` is `None`).

mod codec;
pub mod inflate;
pub mod offer;

pub use inflate::{Inbound, InflateError};
pub use offer::{Agreed, Negotiated, Preferences, negotiate};

/// The sending side of one connection: compresses each echo.
#[derive(Debug)]
pub struct Outbound {
    /// What was agreed.
    agreed: Agreed,
    /// The compression level (0 to 9).
    level: u32,
    /// The connection's own compressor, under context takeover.
    own: Option<Box<flate2::Compress>>,
}

impl Outbound {
    /// The sending side for `agreed`, compressing at `level`.
    pub fn new(agreed: Agreed, level: u32) -> Self {
        Outbound {
            agreed,
            level,
            own: None,
        }
    }

    /// Compresses one message's payload into `out`, ready to go out in a frame with RSV1.
    pub fn compress(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let own = (!self.agreed.server_no_context_takeover).then_some(&mut self.own);
        codec::compress(own, self.agreed.server_window_bits, self.level, data, out);
    }
}
