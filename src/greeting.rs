//! The optional greeting: a text message sent first on every connection, such as
//! `"Request served by {hostname}"`, so that a client behind a balancer sees which instance
//! answered (jmalloc's echo-server does the same). Off by default: a pure echo must stay
//! exact.
//!
//! Placeholders, in braces (`{{` and `}}` write a brace):
//! - per process: `{hostname}`, `{pid}`, `{version}`;
//! - per connection: `{conn_id}` (as in the logs), `{peer}` (the client address as seen by
//!   the daemon, so the balancer's behind one), `{local}` (the address it connected to),
//!   `{protocol}` (`HTTP/1.1` or `HTTP/2`).
//!
//! A template is checked when the configuration loads (an unknown placeholder is an
//! error), and the per-process parts are filled in once per (re)load.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// One part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Text as it is.
    Text(String),
    /// `{conn_id}`.
    ConnId,
    /// `{peer}`.
    Peer,
    /// `{local}`.
    Local,
    /// `{protocol}`.
    Protocol,
}

/// A parsed greeting with the per-process placeholders filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

/// What a greeting knows about one connection.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// The connection's id in the logs.
    pub conn_id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The address it connected to.
    pub local: SocketAddr,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
}

/// The placeholders there are, for the error message.
const KNOWN: &str = "{hostname}, {pid}, {version}, {conn_id}, {peer}, {local}, {protocol}";

impl Template {
    /// Whether it shows `{local}` (the only fact that costs a system call to learn).
    pub fn uses_local(&self) -> bool {
        self.0.contains(&Part::Local)
    }

    /// Parses `text`; an unknown placeholder or a lone brace is an error that says so.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            lit.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(r) = tail.strip_prefix("{{") {
                lit.push('{');
                rest = r;
                continue;
            }
            if let Some(r) = tail.strip_prefix("}}") {
                lit.push('}');
                rest = r;
                continue;
            }
            if tail.starts_with('}') {
                return Err("a lone '}': write '}}' for a brace".into());
            }
            let end = tail
                .find('}')
                .ok_or_else(|| "a '{' that does not close: write '{{' for a brace".to_string())?;
            let name = &tail[1..end];
            let part = match name {
                "hostname" => Part::Text(hostname()),
                "pid" => Part::Text(std::process::id().to_string()),
                "version" => Part::Text(env!("CARGO_PKG_VERSION").to_string()),
                "conn_id" => Part::ConnId,
                "peer" => Part::Peer,
                "local" => Part::Local,
                "protocol" => Part::Protocol,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}}; there are {KNOWN}"
                    ));
                }
            };
            match part {
                Part::Text(t) => lit.push_str(&t),
                p => {
                    if !lit.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut lit)));
                    }
                    parts.push(p);
                }
            }
            rest = &tail[end + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        Ok(Template(parts))
    }

    /// The greeting for one connection.
    pub fn render(&self, facts: &Facts) -> String {
        let mut s = String::new();
        for p in &self.0 {
            let _ = match p {
                Part::Text(t) => write!(s, "{t}"),
                Part::ConnId => write!(s, "{}", facts.conn_id),
                Part::Peer => write!(s, "{}", facts.peer),
                Part::Local => write!(s, "{}", facts.local),
                Part::Protocol => write!(s, "{}", facts.protocol),
            };
        }
        s
    }
}

/// This host's name (from the kernel), or `localhost` if it cannot be read.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            conn_id: 42,
            peer: "10.0.0.7:51000".parse().unwrap(),
            local: "10.0.0.1:8080".parse().unwrap(),
            protocol: "HTTP/2",
        }
    }

    #[test]
    fn only_a_template_with_local_needs_it() {
        assert!(Template::parse("via {local}").unwrap().uses_local());
        assert!(
            !Template::parse("to {peer} over {protocol}")
                .unwrap()
                .uses_local()
        );
    }

    #[test]
    fn placeholders_are_filled_in() {
        let t = Template::parse(
            "Request served by {hostname} (pid {pid}) to {peer} via {local}, conn {conn_id} over {protocol} {{ok}}",
        )
        .unwrap();
        let s = t.render(&facts());
        assert_eq!(
            s,
            format!(
                "Request served by {} (pid {}) to 10.0.0.7:51000 via 10.0.0.1:8080, conn 42 over HTTP/2 {{ok}}",
                hostname(),
                std::process::id()
            )
        );
    }

    #[test]
    fn mistakes_are_errors_that_say_so() {
        assert!(
            Template::parse("{hostnme}")
                .unwrap_err()
                .contains("{hostname}")
        );
        assert!(Template::parse("open {").is_err());
        assert!(Template::parse("close }").is_err());
        assert_eq!(Template::parse("").unwrap().render(&facts()), "");
        assert_eq!(
            Template::parse("안녕 {{}}").unwrap().render(&facts()),
            "안녕 {}"
        );
    }
}
