//! Negotiation of permessage-deflate (RFC 7692 section 7): a pure function from the
//! client's `Sec-WebSocket-Extensions` headers and our configuration to the agreed
//! parameters and our response header, or nothing.
//!
//! Rules kept here:
//! - offers are tried in the order the client lists them, over every header line; the first
//!   one we can honour is accepted, the rest declined;
//! - an offer with an unknown, repeated or malformed parameter is declined, as is one we
//!   cannot honour: `server_max_window_bits=8` (zlib compresses with at least a 9-bit
//!   window, which a client that asked for 8 could not inflate);
//! - a header that cannot be parsed at all declines every offer in it; none is ever answered
//!   with an error status: the client then simply gets an uncompressed echo;
//! - the response never carries a parameter the RFC forbids in it: `client_max_window_bits`
//!   only when the client offered it, and only values from 9 to 15.

use std::fmt::Write as _;

/// The extension's name.
pub const NAME: &str = "permessage-deflate";

/// What we ask for, from `[websocket]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preferences {
    /// The largest window our compressor uses (9 to 15).
    pub server_max_window_bits: u8,
    /// The window we ask clients that offer `client_max_window_bits` to stay within (9 to
    /// 15; 15 asks nothing).
    pub client_max_window_bits: u8,
    /// Reset our compressor after each message.
    pub server_no_context_takeover: bool,
    /// Ask the client to reset its compressor after each message.
    pub client_no_context_takeover: bool,
}

/// The parameters both sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// Our compressor's window (9 to 15).
    pub server_window_bits: u8,
    /// The largest window the client compresses with, so our decompressor's (9 to 15).
    pub client_window_bits: u8,
    /// We reset our compressor after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message, so we may reset (and give
    /// back) our decompressor after each message too.
    pub client_no_context_takeover: bool,
}

/// One parsed `permessage-deflate` offer.
#[derive(Debug, Default, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    /// `server_max_window_bits=N`.
    server_max_window_bits: Option<u8>,
    /// `client_max_window_bits` with its value, if it had one.
    client_max_window_bits: Option<Option<u8>>,
}

/// The outcome of a negotiation: the parameters, and our response header's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// What was agreed.
    pub agreed: Agreed,
    /// The `Sec-WebSocket-Extensions` value to send.
    pub response: String,
}

/// Accepts the first `permessage-deflate` offer in `headers` that we can honour.
pub fn negotiate<'a>(
    headers: impl IntoIterator<Item = &'a [u8]>,
    ours: &Preferences,
) -> Option<Negotiated> {
    headers
        .into_iter()
        .filter_map(|h| std::str::from_utf8(h).ok())
        .filter_map(split_list)
        .flatten()
        .filter_map(|ext| parse_offer(&ext))
        .find_map(|offer| accept(&offer, ours))
}

/// Our answer to one offer, or `None` if we cannot honour it.
fn accept(offer: &Offer, ours: &Preferences) -> Option<Negotiated> {
    let server_window_bits = match offer.server_max_window_bits {
        Some(8) => return None,
        Some(n) => n.min(ours.server_max_window_bits),
        None => ours.server_max_window_bits,
    };
    // The client's window: any (15) unless it offered the parameter. Then we may ask for
    // less than its hint (never more), and inflate with at least 9 bits, which also
    // inflates what an 8-bit window compressed.
    let (client_window_bits, ask_client) = match offer.client_max_window_bits {
        None => (15, None),
        Some(hint) => {
            let hint = hint.unwrap_or(15);
            let ask = hint.min(ours.client_max_window_bits);
            (ask.max(9), (ask < hint).then_some(ask))
        }
    };
    let agreed = Agreed {
        server_window_bits,
        client_window_bits,
        server_no_context_takeover: offer.server_no_context_takeover
            || ours.server_no_context_takeover,
        client_no_context_takeover: offer.client_no_context_takeover
            || ours.client_no_context_takeover,
    };
    let mut response = String::from(NAME);
    if agreed.server_no_context_takeover {
        response.push_str("; server_no_context_takeover");
    }
    if agreed.client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if offer.server_max_window_bits.is_some() || server_window_bits < 15 {
        let _ = write!(response, "; server_max_window_bits={server_window_bits}");
    }
    if let Some(bits) = ask_client {
        let _ = write!(response, "; client_max_window_bits={bits}");
    }
    Some(Negotiated { agreed, response })
}

/// A `permessage-deflate` offer from one list element, or `None` for another extension or
/// a malformed offer.
fn parse_offer(element: &str) -> Option<Offer> {
    let mut parts = split_outside_quotes(element, ';').into_iter();
    if !parts.next()?.trim().eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut offer = Offer::default();
    let mut seen: Vec<String> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param.trim(), None),
        };
        let name = name.to_ascii_lowercase();
        if !is_token(&name) || seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) => offer.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => offer.client_no_context_takeover = true,
            ("server_max_window_bits", Some(v)) => {
                offer.server_max_window_bits = Some(window_bits(&v)?);
            }
            ("client_max_window_bits", None) => offer.client_max_window_bits = Some(None),
            ("client_max_window_bits", Some(v)) => {
                offer.client_max_window_bits = Some(Some(window_bits(&v)?));
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(offer)
}

/// A window size: a decimal from 8 to 15 without leading zeros.
fn window_bits(v: &str) -> Option<u8> {
    if v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|n| (8..=15).contains(n))
}

/// The elements of a comma-separated header list, or `None` when its quotes do not close.
fn split_list(header: &str) -> Option<Vec<String>> {
    if !quotes_balance(header) {
        return None;
    }
    Some(
        split_outside_quotes(header, ',')
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

fn quotes_balance(s: &str) -> bool {
    let mut quoted = false;
    let mut escaped = false;
    for c in s.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ => {}
        }
    }
    !quoted
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A token, or a quoted string whose content (unescaped) is a token (RFC 6455 9.1).
fn unquote(v: &str) -> Option<String> {
    let inner = match v.strip_prefix('"') {
        None => v.to_string(),
        Some(rest) => {
            let body = rest.strip_suffix('"')?;
            let mut out = String::new();
            let mut escaped = false;
            for c in body.chars() {
                match c {
                    _ if escaped => {
                        out.push(c);
                        escaped = false;
                    }
                    '\\' => escaped = true,
                    '"' => return None,
                    c => out.push(c),
                }
            }
            out
        }
    };
    is_token(&inner).then_some(inner)
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Preferences = Preferences {
        server_max_window_bits: 15,
        client_max_window_bits: 15,
        server_no_context_takeover: true,
        client_no_context_takeover: false,
    };

    fn answer(headers: &[&str], ours: &Preferences) -> Option<String> {
        negotiate(headers.iter().map(|h| h.as_bytes()), ours).map(|n| n.response)
    }

    #[test]
    fn what_clients_offer_is_answered() {
        let cases: &[(&[&str], Option<&str>)] = &[
            // Chromium, Firefox, Node ws, Python websockets.
            (
                &["permessage-deflate; client_max_window_bits"],
                Some("permessage-deflate; server_no_context_takeover"),
            ),
            (
                &["permessage-deflate"],
                Some("permessage-deflate; server_no_context_takeover"),
            ),
            (
                &["permessage-deflate; server_max_window_bits=10"],
                Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=10"),
            ),
            (
                &["permessage-deflate; client_no_context_takeover"],
                Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            ),
            // Case, spaces and quoted values are fine.
            (
                &["Permessage-Deflate ;Server_Max_Window_Bits=\"12\""],
                Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=12"),
            ),
            // Nothing offered, or another extension only.
            (&[], None),
            (&["x-webkit-deflate-frame"], None),
        ];
        for (headers, want) in cases {
            assert_eq!(answer(headers, &OURS).as_deref(), *want, "{headers:?}");
        }
    }

    #[test]
    fn the_first_offer_we_can_honour_wins_across_lines() {
        // 8 bits we cannot honour; the malformed one is declined; the third is taken.
        let headers = [
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; bogus",
            "x-foo, permessage-deflate; server_max_window_bits=9; client_max_window_bits",
            "permessage-deflate",
        ];
        assert_eq!(
            answer(&headers, &OURS).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=9")
        );
    }

    #[test]
    fn malformed_or_unhonourable_offers_are_declined() {
        for offer in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; server_max_window_bits=1x",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_max_window_bits=\"1 2\"",
            "permessage-deflate; server_max_window_bits=\"12",
            "permessage-deflate; =",
        ] {
            assert_eq!(answer(&[offer], &OURS), None, "{offer}");
        }
    }

    #[test]
    fn our_preferences_shape_the_answer_within_the_rfc() {
        let small = Preferences {
            server_max_window_bits: 12,
            client_max_window_bits: 10,
            server_no_context_takeover: false,
            client_no_context_takeover: true,
        };
        // client_max_window_bits only when offered; the smaller of its hint and ours.
        assert_eq!(
            answer(&["permessage-deflate"], &small).as_deref(),
            Some("permessage-deflate; client_no_context_takeover; server_max_window_bits=12")
        );
        let n = negotiate(
            [b"permessage-deflate; client_max_window_bits=9".as_slice()],
            &small,
        )
        .unwrap();
        // The client's own hint (9) is below ours (10): nothing to ask.
        assert_eq!(n.agreed.client_window_bits, 9);
        assert_eq!(
            n.response,
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=12"
        );
        let n = negotiate(
            [b"permessage-deflate; client_max_window_bits=14".as_slice()],
            &small,
        )
        .unwrap();
        assert_eq!(
            n.response,
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=12; client_max_window_bits=10"
        );
        let n = negotiate(
            [b"permessage-deflate; client_max_window_bits".as_slice()],
            &small,
        )
        .unwrap();
        assert_eq!(n.agreed.client_window_bits, 10);
        // A client that may use any window gets a 15-bit decompressor.
        let n = negotiate([b"permessage-deflate".as_slice()], &small).unwrap();
        assert_eq!(n.agreed.client_window_bits, 15);
        assert_eq!(n.agreed.server_window_bits, 12);
    }

    #[test]
    fn a_client_hint_of_8_bits_is_inflated_with_9_and_never_answered_with_more() {
        let n = negotiate(
            [b"permessage-deflate; client_max_window_bits=8".as_slice()],
            &OURS,
        )
        .unwrap();
        assert_eq!(n.agreed.client_window_bits, 9);
        assert_eq!(n.response, "permessage-deflate; server_no_context_takeover");
        let small = Preferences {
            client_max_window_bits: 9,
            ..OURS
        };
        let n = negotiate(
            [b"permessage-deflate; client_max_window_bits=8".as_slice()],
            &small,
        )
        .unwrap();
        assert_eq!(n.response, "permessage-deflate; server_no_context_takeover");
    }
}
