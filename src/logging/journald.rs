//! Logging to the journal over its native protocol: one datagram per event, sent to
//! journald's socket (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>).
//!
//! Invariants:
//! - **MESSAGE is the plain-text line less its level.** The formatter of the plain-text log
//!   ([`super::plain`]) writes it, with the level left out, into a per-thread buffer instead
//!   of stderr: the spans with their fields (`conn{conn_id=42 peer=…}:`), the target, the
//!   message, then the event's fields as `key=value`. So `journalctl -u wsechod` shows what
//!   stderr would.
//! - **Every field is also a journal field of its own**, as with tracing-journald 0.3 (which
//!   this replaces): the fields of the event's spans (root first) and of the event, each
//!   under its name upper-cased, `.` made `_`, a leading `_` or `r#` dropped and anything
//!   but `[A-Z0-9_]` left out (`conn_id` → `CONN_ID`, `r#type` → `TYPE`); a name left
//!   empty is skipped. So `journalctl CONN_ID=42` matches. The event's `message` is only in
//!   MESSAGE. A field's value is its `Display` for `%` fields and strings, else `Debug`.
//! - Each span also adds SPAN_NAME, SPAN_TARGET, SPAN_CODE_FILE and SPAN_CODE_LINE; each
//!   event PRIORITY (error 3, warn 4, info 5, debug 6, trace 7), SYSLOG_IDENTIFIER=wsechod,
//!   TARGET, CODE_FILE and CODE_LINE.
//! - **An entry fits one datagram**: no value is longer than [`MAX_VALUE`] bytes; a longer
//!   one is cut at a character boundary and ends in [`CUT`]. (journald also takes a larger
//!   entry in a memfd passed with SCM_RIGHTS; a log line that large helps nobody.)
//! - A value with a newline goes length-prefixed (`NAME\n`, its length as u64 little
//!   endian, the bytes, `\n`), any other as `NAME=value\n`.
//! - An entry that cannot be sent is dropped: logging never fails the daemon. Sending
//!   blocks while journald's queue is full, as writing to stderr would.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// journald's socket for the native protocol.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// SYSLOG_IDENTIFIER of every entry.
const IDENTIFIER: &str = "wsechod";

/// The longest value sent, in bytes, [`CUT`] included.
pub const MAX_VALUE: usize = 16 * 1024;

/// How a value cut at [`MAX_VALUE`] ends.
pub const CUT: &str = "…[cut]";

/// Journal fields, name and value, in the order sent.
type Fields = Vec<(String, String)>;

/// A span's journal fields, kept in its extensions.
struct SpanFields(Fields);

/// A layer that sends every event to journald (or whatever listens at its socket path).
pub struct JournalLayer<S> {
    /// The plain-text formatter, writing MESSAGE into [`TEXT`].
    text: super::Plain<S, fn() -> TextSink>,
    socket: UnixDatagram,
    path: PathBuf,
}

impl<S> JournalLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    /// A layer sending to the socket at `path` ([`SOCKET`] but in tests); fails when
    /// nothing listens there.
    pub fn new(path: impl Into<PathBuf>) -> io::Result<Self> {
        let layer = Self {
            text: super::plain(TextSink::new as fn() -> TextSink).with_level(false),
            socket: UnixDatagram::unbound()?,
            path: path.into(),
        };
        // An empty datagram, which journald discards: fails if nobody listens.
        layer.socket.send_to(&[], &layer.path)?;
        Ok(layer)
    }
}

impl<S> Layer<S> for JournalLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        self.text.on_new_span(attrs, id, ctx.clone());
        let Some(span) = ctx.span(id) else { return };
        let meta = span.metadata();
        let mut fields = vec![("SPAN_NAME".to_owned(), meta.name().to_owned())];
        put_metadata(&mut fields, "SPAN_", meta);
        attrs.record(&mut Collect(&mut fields));
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.text.on_record(id, values, ctx.clone());
        if let Some(span) = ctx.span(id)
            && let Some(SpanFields(fields)) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(&mut Collect(fields));
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.text.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.text.on_exit(id, ctx);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.text.on_close(id, ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        TEXT.with_borrow_mut(Vec::clear);
        self.text.on_event(event, ctx.clone());
        let text = TEXT.with_borrow_mut(std::mem::take);
        let message = String::from_utf8_lossy(&text);
        let meta = event.metadata();
        let mut fields = vec![
            ("PRIORITY".to_owned(), priority(meta.level()).to_owned()),
            ("SYSLOG_IDENTIFIER".to_owned(), IDENTIFIER.to_owned()),
            (
                "MESSAGE".to_owned(),
                message.trim_end_matches('\n').to_owned(),
            ),
        ];
        put_metadata(&mut fields, "", meta);
        for span in ctx
            .event_scope(event)
            .into_iter()
            .flat_map(|s| s.from_root())
        {
            if let Some(SpanFields(f)) = span.extensions().get::<SpanFields>() {
                fields.extend(f.iter().cloned());
            }
        }
        event.record(&mut Collect(&mut fields));
        let _ = self.socket.send_to(&datagram(&fields), &self.path);
    }
}

thread_local! {
    /// What the plain-text formatter wrote for the event at hand on this thread.
    static TEXT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The plain-text formatter's writer: appends to [`TEXT`].
struct TextSink;

impl TextSink {
    fn new() -> Self {
        TextSink
    }
}

impl Write for TextSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        TEXT.with_borrow_mut(|t| t.extend_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// journald's PRIORITY for a level (syslog's severities).
fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "5",
        Level::DEBUG => "6",
        Level::TRACE => "7",
    }
}

/// TARGET, CODE_FILE and CODE_LINE, their names after `prefix`.
fn put_metadata(fields: &mut Fields, prefix: &str, meta: &Metadata<'_>) {
    fields.push((format!("{prefix}TARGET"), meta.target().to_owned()));
    if let Some(file) = meta.file() {
        fields.push((format!("{prefix}CODE_FILE"), file.to_owned()));
    }
    if let Some(line) = meta.line() {
        fields.push((format!("{prefix}CODE_LINE"), line.to_string()));
    }
}

/// Appends the fields it visits, all but `message`, under their journal names.
struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Collect<'_> {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            return;
        }
        if let Some(name) = journal_name(field.name()) {
            self.0.push((name, value));
        }
    }
}

/// A tracing field's journal name: upper case, `.` as `_`, without a leading `_` or `r#`,
/// only `[A-Z0-9_]`; `None` if nothing is left.
pub fn journal_name(name: &str) -> Option<String> {
    let name: String = name
        .strip_prefix("r#")
        .unwrap_or(name)
        .chars()
        .map(|c| if c == '.' { '_' } else { c })
        .skip_while(|&c| c == '_')
        .filter(|&c| c == '_' || c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (!name.is_empty()).then_some(name)
}

/// `value`, or its first bytes and [`CUT`] if it is longer than [`MAX_VALUE`].
fn cut(value: &str) -> Cow<'_, str> {
    if value.len() <= MAX_VALUE {
        return Cow::Borrowed(value);
    }
    let mut end = MAX_VALUE - CUT.len();
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{CUT}", &value[..end]))
}

/// The native protocol's datagram for `fields`.
pub fn datagram(fields: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    for (name, value) in fields {
        let value = cut(value);
        out.extend_from_slice(name.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// A datagram's fields, as journald reads them.
    fn parse(mut d: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while !d.is_empty() {
            let eol = d
                .iter()
                .position(|&b| b == b'\n')
                .expect("a field ends in \\n");
            let line = &d[..eol];
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                let name = String::from_utf8(line[..eq].to_vec()).unwrap();
                fields.push((name, String::from_utf8(line[eq + 1..].to_vec()).unwrap()));
                d = &d[eol + 1..];
            } else {
                let name = String::from_utf8(line.to_vec()).unwrap();
                let rest = &d[eol + 1..];
                let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
                let value = String::from_utf8(rest[8..8 + len].to_vec()).unwrap();
                assert_eq!(rest[8 + len], b'\n', "{name}: the value ends in \\n");
                fields.push((name, value));
                d = &rest[8 + len + 1..];
            }
        }
        fields
    }

    /// The events of the tests: in a connection's span as the server opens it, a drain
    /// report, and a warning whose field holds a newline and non-ASCII text.
    fn emit() {
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let span = tracing::info_span!("conn", conn_id = 42u64, %peer);
        let _in = span.enter();
        tracing::info!(closed = 3, aborted = 0, "drain complete, exiting");
        tracing::warn!(error = %"line one\nzwei: grüße", r#type = "text", "naïve");
    }

    /// The entries a [`JournalLayer`] sends for [`emit`], read from a fake journal.
    fn journal_entries() -> Vec<Vec<(String, String)>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let journal = UnixDatagram::bind(&path).unwrap();
        journal.set_nonblocking(true).unwrap();
        let layer = JournalLayer::new(&path).expect("the fake journal listens");
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        let mut entries = Vec::new();
        let mut buf = vec![0; 1 << 16];
        while let Ok(n) = journal.recv(&mut buf) {
            if n > 0 {
                entries.push(parse(&buf[..n]));
            }
        }
        entries
    }

    fn get<'a>(entry: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        entry
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn message_has_the_fields_and_each_is_a_journal_field() {
        let entries = journal_entries();
        assert_eq!(entries.len(), 2, "{entries:?}");
        let drain = &entries[0];
        let target = "wsechod::logging::journald::tests";
        assert_eq!(
            get(drain, "MESSAGE"),
            [format!(
                "conn{{conn_id=42 peer=127.0.0.1:4000}}: {target}: \
                 drain complete, exiting closed=3 aborted=0"
            )]
        );
        for (name, value) in [
            ("PRIORITY", "5"),
            ("SYSLOG_IDENTIFIER", "wsechod"),
            ("TARGET", target),
            ("CODE_FILE", file!()),
            ("CONN_ID", "42"),
            ("PEER", "127.0.0.1:4000"),
            ("CLOSED", "3"),
            ("ABORTED", "0"),
            ("SPAN_NAME", "conn"),
            ("SPAN_TARGET", target),
        ] {
            assert_eq!(get(drain, name), [value], "{name} in {drain:?}");
        }
        assert_eq!(get(drain, "CODE_LINE").len(), 1);
        assert!(get(drain, "message").is_empty() && get(drain, "MESSAGE_").is_empty());

        let warning = &entries[1];
        assert_eq!(get(warning, "PRIORITY"), ["4"]);
        assert_eq!(get(warning, "ERROR"), ["line one\nzwei: grüße"]);
        assert_eq!(get(warning, "TYPE"), ["text"]);
        assert_eq!(get(warning, "CONN_ID"), ["42"]);
        assert_eq!(
            get(warning, "MESSAGE"),
            [format!(
                "conn{{conn_id=42 peer=127.0.0.1:4000}}: {target}: \
                 naïve error=line one\nzwei: grüße type=\"text\""
            )]
        );
    }

    #[test]
    fn message_is_the_plain_text_line_without_its_level() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let plain = super::super::plain(move || SharedBuf(sink.clone()));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(plain), emit);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        // Each event's text starts with its level, padded to five characters; the
        // warning's holds the newline of its field.
        let lines: Vec<&str> = text
            .strip_prefix(" INFO ")
            .and_then(|t| t.strip_suffix('\n'))
            .expect("an info line first")
            .split("\n WARN ")
            .collect();
        let messages: Vec<String> = journal_entries()
            .iter()
            .map(|e| get(e, "MESSAGE")[0].to_owned())
            .collect();
        assert_eq!(messages, lines, "plain text:\n{text}");
    }

    /// A writer into a shared buffer.
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn field_names_become_journal_names() {
        for (name, want) in [
            ("conn_id", Some("CONN_ID")),
            ("peer", Some("PEER")),
            ("r#type", Some("TYPE")),
            ("http.version", Some("HTTP_VERSION")),
            ("__private", Some("PRIVATE")),
            ("größe", Some("GRE")),
            ("é", None),
            ("", None),
        ] {
            assert_eq!(journal_name(name).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn a_value_with_a_newline_is_length_prefixed() {
        let fields = [
            ("MESSAGE".to_owned(), "zwei\nZeilen: ü".to_owned()),
            ("PEER".to_owned(), "[::1]:80".to_owned()),
        ];
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&15u64.to_le_bytes());
        want.extend_from_slice("zwei\nZeilen: ü\nPEER=[::1]:80\n".as_bytes());
        assert_eq!(datagram(&fields), want);
        assert_eq!(parse(&want), fields);
    }

    #[test]
    fn an_overlong_value_is_cut_at_a_character_with_a_marker() {
        let long = "ä".repeat(MAX_VALUE);
        let d = datagram(&[("CONTENT".to_owned(), long)]);
        let (_, value) = parse(&d).pop().unwrap();
        assert!(value.len() <= MAX_VALUE, "{}", value.len());
        assert!(value.len() > MAX_VALUE - CUT.len() - 2, "{}", value.len());
        assert!(value.ends_with(&format!("ä{CUT}")));
        let short = "ä".repeat(MAX_VALUE / 2);
        assert_eq!(
            parse(&datagram(&[("C".to_owned(), short.clone())]))[0].1,
            short
        );
    }
}
