//! Web origins as browsers send them in the `Origin` header (RFC 6454 section 6.2, the
//! WHATWG URL standard's serialization): `scheme://host[:port]`, in ASCII, with the host in
//! lower case, internationalized names in punycode, no path, no trailing slash, and no port
//! when it is the scheme's default.
//!
//! One parser serves both sides, so that an entry that passes validation in
//! `[server] allowed_origins` is exactly a value some browser can send:
//! - [`parse`] explains why a configured entry is not such an origin;
//! - [`normalize`] maps a received header to the form entries are stored in (lower case,
//!   default port dropped), or `None`, which no allow-list contains.

use std::fmt;

/// Why a string is not a serialized origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAnOrigin {
    /// No `scheme://`.
    NoScheme,
    /// A scheme other than `http` or `https` (browsers send no other origin a server can match;
    /// `file:` and sandboxed pages send `null`).
    Scheme,
    /// A character outside ASCII: browsers send internationalized names in punycode.
    NotAscii,
    /// A path, query or fragment, or a trailing slash.
    Path,
    /// User information (`user@`).
    UserInfo,
    /// An empty or malformed host.
    Host,
    /// A port that is not a number from 1 to 65535.
    Port,
}

impl fmt::Display for NotAnOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotAnOrigin::NoScheme => "it needs a scheme, as in \"https://example.com\"",
            NotAnOrigin::Scheme => "browsers send origins with scheme http or https only",
            NotAnOrigin::NotAscii => {
                "browsers send origins in ASCII: write an internationalized name in punycode (xn--...)"
            }
            NotAnOrigin::Path => {
                "an origin has no path, query or trailing slash: write only scheme://host[:port]"
            }
            NotAnOrigin::UserInfo => "an origin has no user@ part",
            NotAnOrigin::Host => "the host is empty or not a valid host name or IP address",
            NotAnOrigin::Port => "the port must be a number from 1 to 65535",
        })
    }
}

/// Parses `s` as a serialized origin and returns its normal form: lower case, without the
/// scheme's default port. Upper-case letters are accepted (and folded), as hosts are
/// case-insensitive.
pub fn parse(s: &str) -> Result<String, NotAnOrigin> {
    if !s.is_ascii() {
        return Err(NotAnOrigin::NotAscii);
    }
    let s = s.to_ascii_lowercase();
    let (scheme, authority) = s.split_once("://").ok_or(NotAnOrigin::NoScheme)?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return Err(NotAnOrigin::Scheme),
    };
    if authority.contains(['/', '?', '#']) {
        return Err(NotAnOrigin::Path);
    }
    if authority.contains('@') {
        return Err(NotAnOrigin::UserInfo);
    }
    let (host, port) = split_host_port(authority)?;
    if !valid_host(host) {
        return Err(NotAnOrigin::Host);
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(NotAnOrigin::Port),
                Ok(n) => Some(n),
            }
        }
        Some(_) => return Err(NotAnOrigin::Port),
    };
    Ok(match port {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// The normal form of a received `Origin` header, or `None` when no allowed origin can
/// equal it (such as `null`).
pub fn normalize(header: &str) -> Option<String> {
    parse(header.trim()).ok()
}

/// `host[:port]`, where an IPv6 host is bracketed.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), NotAnOrigin> {
    if authority.starts_with('[') {
        let end = authority.find(']').ok_or(NotAnOrigin::Host)? + 1;
        let (host, rest) = authority.split_at(end);
        return match rest {
            "" => Ok((host, None)),
            _ => Ok((host, Some(rest.strip_prefix(':').ok_or(NotAnOrigin::Port)?))),
        };
    }
    Ok(match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    })
}

/// A bracketed IPv6 address, or a domain name or IPv4 address made of labels of letters,
/// digits, `-` and `_` (browsers allow `_` in domains).
fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_origins_parse_to_their_normal_form() {
        for (input, want) in [
            ("https://example.com", "https://example.com"),
            ("HTTPS://Example.COM", "https://example.com"),
            ("https://example.com:443", "https://example.com"),
            ("http://example.com:80", "http://example.com"),
            ("http://localhost:8080", "http://localhost:8080"),
            ("https://xn--9n2bp8q.example", "https://xn--9n2bp8q.example"),
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("http://[::1]", "http://[::1]"),
            ("https://a_b.example", "https://a_b.example"),
        ] {
            assert_eq!(parse(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn what_no_browser_sends_is_refused_with_the_reason() {
        use NotAnOrigin::*;
        for (input, why) in [
            ("https://exampl\u{FFFD}\u{FFFD}\u{FFFD}~m", NotAscii),
            ("https://한국.example", NotAscii),
            ("example.com", NoScheme),
            ("null", NoScheme),
            ("ws://example.com", Scheme),
            ("ftp://x", Scheme),
            ("https://example.com/", Path),
            ("https://example.com/app", Path),
            ("https://example.com?x", Path),
            ("https://user@example.com", UserInfo),
            ("https://", Host),
            ("https://exa mple.com", Host),
            ("https://example..com", Host),
            ("https://exa~mple.com", Host),
            ("http://::1", Host),
            ("http://[::1", Host),
            ("http://[zz]:80", Host),
            ("https://a:99999", Port),
            ("https://a:0", Port),
            ("https://a:", Port),
            ("https://a:8x", Port),
        ] {
            assert_eq!(parse(input), Err(why), "{input}");
        }
    }

    #[test]
    fn received_headers_normalize_or_match_nothing() {
        assert_eq!(
            normalize(" https://Example.com:443 ").as_deref(),
            Some("https://example.com")
        );
        assert_eq!(normalize("null"), None);
        assert_eq!(normalize(""), None);
    }
}
