//! The label values of wsechod's metrics: message kinds (`type`), HTTP versions (`http`)
//! and close codes (`code`).
//!
//! Invariants:
//! - each enum's discriminant is the index of its series in the arrays of [`Metrics`], so
//!   that recording is an array index, never a map lookup;
//! - every close code maps to exactly one of [`CLOSE_LABELS`] series: a listed code to its
//!   own, any other to `other`, a close frame without a code to `none`.
//!
//! [`Metrics`]: super::Metrics

/// Message kinds, as the `type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A text message (valid UTF-8).
    Text = 0,
    /// A binary message.
    Binary = 1,
}

impl Kind {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Binary => "binary",
        }
    }
}

/// Close codes with their own label value; every other code counts as `other`, a close
/// frame without a code as `none`.
const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
];

/// How many `code` label values there are: the listed codes, `other` and `none`.
pub(super) const CLOSE_LABELS: usize = CLOSE_CODES.len() + 2;

/// The `code` label value of series `i`.
pub(super) fn close_label(i: usize) -> String {
    match CLOSE_CODES.get(i) {
        Some(code) => code.to_string(),
        None if i == CLOSE_CODES.len() => "other".into(),
        None => "none".into(),
    }
}

/// The index of the series that counts a close frame with `code`.
pub(super) fn close_index(code: Option<u16>) -> usize {
    match code {
        None => CLOSE_CODES.len() + 1,
        Some(c) => CLOSE_CODES
            .iter()
            .position(|k| *k == c)
            .unwrap_or(CLOSE_CODES.len()),
    }
}

/// The HTTP version a WebSocket came over, as the `http` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http {
    /// HTTP/1.1 (the Upgrade handshake).
    V1 = 0,
    /// HTTP/2 (extended CONNECT, RFC 8441).
    V2 = 1,
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;

    #[test]
    fn close_codes_map_to_labels() {
        let m = Metrics::new();
        m.close_received(Some(1000));
        m.close_received(Some(4000));
        m.close_received(None);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains("wsechod_close_frames_received_total{code=\"1000\"} 1"));
        assert!(text.contains("wsechod_close_frames_received_total{code=\"other\"} 1"));
        assert!(text.contains("wsechod_close_frames_received_total{code=\"none\"} 1"));
    }
}
