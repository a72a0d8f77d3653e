#!/usr/bin/python3
"""WebSockets over HTTP/2 (RFC 8441, h2c prior knowledge) against the release daemon.

    /usr/bin/python3 tests/http2/run.py [CASE ...]     (after cargo build --release --locked)

A non-browser HTTP/2 client (Python's `h2` package, pinned below, in a venv under
${XDG_CACHE_HOME:-~/.cache}/wsechod/http2-venv that this script creates once and then reuses)
drives target/release/wsechod over a plain socket. For the hostile cases, which no well-behaved
library sends, raw frames go on the socket. One fresh daemon per case (port 0, its own notify
socket, its own config when the case needs one); every wait has a deadline; every daemon's
process group is ended however the case ends.

Cases (`--list` prints them; name some to run only those):
  echo            SETTINGS_ENABLE_CONNECT_PROTOCOL, extended CONNECT, exact echo (Korean text,
                  binary, >= 64 KiB both ways through flow control), metrics while open, close
                  1000, a configured subprotocol selected, permessage-deflate in both directions
  statuses        404 403 503 429 400 405 426 on HTTP/2 (503 and 429 with retry-after), CONNECT
                  without :protocol, the console page, the rejection counters
  many-streams    50 WebSockets on one connection, numbered messages interleaved
  stream-limit    max_concurrent_streams = 10 advertised; the 11th gets REFUSED_STREAM
  drain           SIGTERM: echoes, then close 1000 + close_reason on every stream, then GOAWAY,
                  exit 0; a new CONNECT during the drain gets 503
  drain-deadline  a stream that never answers the close is aborted at drain_timeout
  reload          SIGHUP keeps the streams
  keepalive-ws    WebSocket pings per stream: a stream that does not pong is aborted, the
                  connection stays
  keepalive-h2    HTTP/2 PINGs: a client that stops reading loses the whole connection
  idle-goaway     GOAWAY a handshake_timeout after the last stream ended (or after connecting)
  rapid-reset     HEADERS + RST_STREAM by the hundred per write (CVE-2023-44487), then paced
  stream-flood    600 and 3000 streams at once, beyond max_concurrent_streams
  huge-headers    header lists over server.max_header_size: just over, and 1 MiB
  continuation    HEADERS without END_HEADERS, then CONTINUATION frames without end
  window-update   WINDOW_UPDATE overflowing 2^31-1 on the connection and on a stream, and 0
  silent-stream   a stream opened (200) that never sends its WebSocket data
  garbage         garbage after the preface, an oversized frame, DATA on stream 0
  http1           HTTP/1.1 upgrade still works on the same port; "PRI ..." that is not the
                  preface gets an HTTP/1.1 answer; a preface sent byte by byte is HTTP/2

Each hostile case ends its connection within END_BOUND_S and then checks that the daemon stays
healthy: a fresh client still echoes and the daemon's peak RSS (VmHWM) stays under
RSS_BOUND_MIB. Each case prints what it got (codes, times, metrics). Ends with
`http2: N passed, N failed`; exit status 0 only if nothing failed.

HTTP2_DAEMON=PATH runs another wsechod binary; HTTP2_KEEP_TMP=1 keeps each case's directory
(config, daemon log).
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The h2 package and its two dependencies, pinned; the venv is rebuilt when this changes.
PINS = ("h2==4.4.1", "hpack==4.2.0", "hyperframe==6.1.0")


def venv_dir():
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "wsechod" / "http2-venv"


def ensure_h2():
    """Runs this script under the venv's Python, creating the venv with PINS if needed."""
    venv = venv_dir()
    py = venv / "bin" / "python3"
    stamp = venv / "wsechod-pins.txt"
    wanted = "\n".join(PINS) + "\n"
    if Path(sys.prefix).resolve() == venv.resolve():
        return
    if not (py.exists() and stamp.exists() and stamp.read_text() == wanted):
        print(f"http2: creating {venv} with {' '.join(PINS)}", flush=True)
        subprocess.run(["rm", "-rf", str(venv)], check=True, timeout=60)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *PINS], check=True, timeout=600)
        stamp.write_text(wanted)
    os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])


if __name__ == "__main__":
    ensure_h2()

import collections  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import urllib.request  # noqa: E402
import zlib  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "pylib"))
import wsechod_harness as harness  # noqa: E402

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.errors  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
import h2.settings  # noqa: E402
import hpack  # noqa: E402

# HTTP2_DAEMON=PATH tests another build (e.g. a copy, while cargo rebuilds this one).
WSECHOD = Path(os.environ.get("HTTP2_DAEMON") or ROOT / "target" / "release" / "wsechod")
CONFIG = ROOT / "etc" / "wsechod.toml"
# Peak resident memory (VmHWM) of the daemon allowed after any hostile case. An idle daemon
# peaks at about 6 MiB, and so does it after every attack here.
RSS_BOUND_MIB = 32
# How long a hostile connection may take to be ended by the daemon once the attack is sent.
END_BOUND_S = 5.0
CASE_LIMIT_S = 120  # a case still running after this is failed (SIGALRM)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
ENABLE_CONNECT_PROTOCOL = 0x8
MAX_CONCURRENT_STREAMS = 0x3
KOREAN = "서버에서 응답: 안녕하세요, 웹소켓 세계! "


def code_name(code):
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


def setting_name(code):
    try:
        return h2.settings.SettingCodes(code).name
    except ValueError:
        return f"0x{code:x}"


def log(msg):
    print(msg, flush=True)


class Failed(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise Failed(msg)


def eq(got, want, what):
    if got != want:
        raise Failed(f"{what}: got {short(got)}, want {short(want)}")


def short(v, n=200):
    s = repr(v)
    return s if len(s) <= n else s[:n] + f"... ({len(s)} chars)"


def wait_until(what, timeout, probe, interval=0.05):
    """Polls probe() until it returns something truthy; raises Failed naming `what`."""
    return harness.wait_until(what, timeout, probe, interval, Failed)


# ---------------------------------------------------------------------------------------------
# The daemon.


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string: the same escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_config(path, overrides):
    """The shipped config with `overrides` ({section: {key: value}}) set in their sections."""
    text = CONFIG.read_text()
    for section, keys in overrides.items():
        header = f"\n[{section}]\n"
        if header not in text:
            raise ValueError(f"no [{section}] in {CONFIG}")
        lines = "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items())
        text = text.replace(header, header + lines, 1)
    path.write_text(text)


class Daemon:
    """target/release/wsechod on 127.0.0.1 port 0 with its own notify socket and config."""

    def __init__(self, tmp, overrides, procs):
        self.tmp = tmp
        self.config = tmp / "wsechod.toml"
        write_config(self.config, overrides)
        self.notify_path = tmp / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.messages = []
        # Not the caller's WSECHOD_*, RUST_LOG or journal: the log is read from the file.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("WSECHOD_") and k not in ("RUST_LOG", "JOURNAL_STREAM")}
        env.update({
            "WSECHOD_SERVER__LISTEN": "127.0.0.1:0",
            "WSECHOD_METRICS__LISTEN": "127.0.0.1:0",
            "NOTIFY_SOCKET": str(self.notify_path),
        })
        self.logfile = tmp / "wsechod.log"
        self.log = open(self.logfile, "wb")
        self.proc = subprocess.Popen([str(WSECHOD), "-c", str(self.config)], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log, env=env, start_new_session=True)
        procs.append(self)  # ended by the case's cleanup, even if READY never comes
        self.wait_notify("READY=1", 15)
        text = wait_until("the listening lines on stderr", 5, lambda: self._addresses())
        self.ws_addr, self.metrics_addr = text
        host, port = self.ws_addr.rsplit(":", 1)
        self.addr = (host, int(port))
        self.started = time.monotonic()

    def _addresses(self):
        text = self.logfile.read_text(errors="replace")
        ws = re.search(r"listening on ws://([0-9.:]+)/", text)
        m = re.search(r"metrics on http://([0-9.:]+)/metrics", text)
        return (ws.group(1), m.group(1)) if ws and m else None

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def wait_notify(self, field, timeout, after=0):
        """Waits for a notify datagram (the `after`-th or later) with a line equal to `field`."""
        def exited():
            return None if self.alive() else f"wsechod exited ({self.proc.returncode}):\n{self.tail()}"
        return harness.wait_notify(self.notify, self.messages, field, timeout, after,
                                   exited, Failed)

    def metrics(self):
        """{'name{labels}': value} from /metrics."""
        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=5) as r:
            return harness.parse_metrics(r.read().decode())

    def metric(self, key):
        return self.metrics().get(key, 0.0)

    def wait_metric(self, key, want, timeout=5):
        """Waits until metric `key` equals `want` (or want(value) is true)."""
        last = []

        def probe():
            v = self.metric(key)
            last[:] = [v]
            return want(v) if callable(want) else v == want
        try:
            wait_until(f"{key} == {want}", timeout, probe)
        except Failed as e:
            raise Failed(f"{e} (last {last})") from None
        return last[0]

    def status_kb(self, field):
        """VmRSS, VmHWM, ... of the daemon in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise Failed(f"wsechod still running {timeout} s later") from None

    def tail(self, n=25):
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(f"    wsechod| {line}" for line in text.splitlines()[-n:])

    def stop(self):
        """SIGTERM to the process group, SIGKILL 10 s later; always closes what it opened."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        self.log.close()
        self.notify.close()


def m_handshakes(http):
    return f'wsechod_handshakes_total{{http="{http}"}}'


def m_state(state):
    return f'wsechod_connections{{state="{state}"}}'


def m_aborted(reason):
    return f'wsechod_connections_aborted_total{{reason="{reason}"}}'


def m_rejected(status):
    return f'wsechod_handshakes_rejected_total{{status="{status}"}}'


# ---------------------------------------------------------------------------------------------
# WebSocket frames (RFC 6455) and permessage-deflate (RFC 7692).


def ws_frame(opcode, payload, fin=True, rsv1=False, mask=True):
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, mbit | n])
    elif n < 65536:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + xor_mask(payload, key)


def xor_mask(data, key):
    n = len(data)
    if n == 0:
        return b""
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ k).to_bytes(n, "big")


def close_payload(code, reason=""):
    return struct.pack("!H", code) + reason.encode()


def deflate(data):
    """One message compressed as RFC 7692 says: raw deflate, the final 00 00 ff ff removed."""
    c = zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


class Inflater:
    """The client's decompressor of one stream (the server may keep its context or not)."""

    def __init__(self):
        self.d = zlib.decompressobj(wbits=-15)

    def inflate(self, data):
        return self.d.decompress(data + b"\x00\x00\xff\xff")


# ---------------------------------------------------------------------------------------------
# A well-behaved HTTP/2 client on the h2 package, carrying WebSockets as streams.


class WsStream:
    """One extended CONNECT stream and the WebSocket on it."""

    def __init__(self, client, sid):
        self.client = client
        self.sid = sid
        self.status = None
        self.headers = {}
        self.body = b""  # DATA of a rejected request
        self.buf = bytearray()
        self.frag = None  # (opcode, rsv1, [payloads]) of a fragmented message
        self.messages = collections.deque()  # (opcode, payload, rsv1)
        self.close = None  # (code, reason) of the peer's close frame
        self.close_at = None
        self.pings = 0
        self.auto_pong = True
        self.ended = False  # END_STREAM from the server
        self.ended_at = None
        self.reset = None  # RST_STREAM error code
        self.events = []  # (time, what) in order
        self.is_ws = True  # DATA is WebSocket frames once 200 (not so for a GET)

    def feed(self, data):
        self.buf += data
        while True:
            f = parse_frame(self.buf)
            if f is None:
                return
            fin, rsv1, opcode, payload, used = f
            del self.buf[:used]
            self.on_frame(fin, rsv1, opcode, payload)

    def on_frame(self, fin, rsv1, opcode, payload):
        if opcode == 8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            self.close = (code, payload[2:].decode(errors="replace"))
            self.close_at = time.monotonic()
            self.events.append((self.close_at, "close"))
        elif opcode == 9:
            self.pings += 1
            if self.auto_pong and not self.client.closed:
                self.client.send_ws(self.sid, 10, payload)
        elif opcode == 10:
            pass
        elif opcode == 0:
            if self.frag is None:
                raise Failed(f"stream {self.sid}: continuation frame without a start")
            self.frag[2].append(payload)
            if fin:
                op, r, parts = self.frag
                self.frag = None
                self._message(op, b"".join(parts), r)
        else:
            if self.frag is not None:
                raise Failed(f"stream {self.sid}: new message inside a fragmented one")
            if fin:
                self._message(opcode, payload, rsv1)
            else:
                self.frag = (opcode, rsv1, [payload])

    def _message(self, opcode, payload, rsv1):
        self.messages.append((opcode, payload, rsv1))
        self.events.append((time.monotonic(), "message"))

    # Convenience, all bounded.
    def send(self, opcode, payload, **kw):
        self.client.send_ws(self.sid, opcode, payload, **kw)

    def send_text(self, text):
        self.send(1, text.encode())

    def recv(self, timeout=10):
        self.client.wait(lambda: self.messages or self.reset is not None or self.ended,
                         timeout, f"a message on stream {self.sid}")
        if not self.messages:
            raise Failed(f"stream {self.sid} ended (reset {self.reset}, end {self.ended}) "
                         f"instead of a message")
        return self.messages.popleft()

    def echo(self, opcode, payload, timeout=10):
        """Sends a message and checks that the next one back is it, exactly."""
        self.send(opcode, payload)
        op, got, rsv1 = self.recv(timeout)
        check(not rsv1, f"stream {self.sid}: compressed echo on an uncompressed stream")
        eq((op, len(got)), (opcode, len(payload)), f"stream {self.sid}: echo opcode and size")
        check(got == payload, f"stream {self.sid}: echo of {len(payload)} bytes differs")

    def close_and_wait(self, code=1000, reason="", timeout=10):
        """Our close, the server's answer, and the end of the stream."""
        self.send(8, close_payload(code, reason))
        self.client.wait(lambda: self.close is not None and (self.ended or self.reset is not None),
                         timeout, f"the close answer and end of stream {self.sid}")
        return self.close


def clean_end(st):
    """END_STREAM from the server, and at most RST_STREAM NO_ERROR after it (RFC 9113 8.1: a
    server that has sent its whole response may so tell the client to stop sending)."""
    return st.ended and st.reset in (None, 0)


def parse_frame(buf):
    """(fin, rsv1, opcode, payload, bytes used) of the first whole frame in buf, or None."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    n = b1 & 0x7F
    at = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack_from("!H", buf, 2)[0]
        at = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack_from("!Q", buf, 2)[0]
        at = 10
    key = None
    if b1 & 0x80:
        key = bytes(buf[at:at + 4])
        at += 4
    if len(buf) < at + n:
        return None
    payload = bytes(buf[at:at + n])
    if key:
        payload = xor_mask(payload, key)
    return bool(b0 & 0x80), bool(b0 & 0x40), b0 & 0x0F, payload, at + n


class H2Client:
    """An HTTP/2 connection with prior knowledge, driven by h2 in this thread: pump() reads
    and handles what arrived (acknowledging DATA at once, answering PINGs and SETTINGS as h2
    does), every wait is wait(pred, timeout)."""

    def __init__(self, addr, source=None, validate=True):
        self.addr = addr
        self.authority = f"{addr[0]}:{addr[1]}"
        self.sock = socket.create_connection(addr, timeout=5,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=validate,
                                        normalize_outbound_headers=validate)
        self.conn = h2.connection.H2Connection(cfg)
        self.conn.initiate_connection()
        self.streams = {}
        self.server_settings = {}  # every setting the server's SETTINGS frames carried
        self.settings_seen = False
        self.goaways = []  # (time, error code, last stream id, debug data)
        self.h2_pings = 0  # HTTP/2 PINGs received (h2 answers them)
        self.protocol_error = None
        self.closed = False  # the socket ended (EOF, reset) or we closed it
        self.closed_at = None
        self.inbuf = bytearray()
        self.in_pump = False
        self.events = []  # (time, what) in order, connection-wide
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data and not self.closed:
            try:
                self.sock.sendall(data)
            except OSError as e:
                self._ended(f"send: {e}")

    def _ended(self, why):
        if not self.closed:
            self.closed = True
            self.closed_at = time.monotonic()
            self.events.append((self.closed_at, f"socket ended ({why})"))

    def pump(self, timeout):
        """Reads once (waiting at most `timeout`) and handles what came. False on timeout."""
        if self.closed:
            return False
        if self.in_pump:  # sending from inside pump (a pong) and waiting for the window
            return self._pump(timeout)
        self.in_pump = True
        try:
            return self._pump(timeout)
        finally:
            self.in_pump = False

    def _pump(self, timeout):
        r, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not r:
            return False
        try:
            data = self.sock.recv(1 << 16)
        except OSError as e:
            self._ended(f"recv: {e}")
            return True
        if not data:
            self._ended("EOF")
            return True
        self.inbuf += data
        # Frame by frame, so that a frame h2 refuses loses nothing else.
        while len(self.inbuf) >= 9:
            n = int.from_bytes(self.inbuf[:3], "big")
            if len(self.inbuf) < 9 + n:
                break
            f = bytes(self.inbuf[:9 + n])
            del self.inbuf[:9 + n]
            if self.goaways:
                self.after_goaway(f)
                continue
            try:
                events = self.conn.receive_data(f)
            except h2.exceptions.ProtocolError as e:
                self.protocol_error = e
                self.events.append((time.monotonic(), f"h2 refused a frame: {e!r}"))
                continue
            for ev in events:
                self.handle(ev)
        self.flush()
        return True

    def after_goaway(self, f):
        """h2 takes no frame once it has a GOAWAY, but a server's graceful shutdown goes on:
        PING (answered, as RFC 9113 6.7 asks), a second GOAWAY, the last frames of streams."""
        ftype, flags = f[3], f[4]
        sid = int.from_bytes(f[5:9], "big") & 0x7FFFFFFF
        payload = f[9:]
        now = time.monotonic()
        st = self.streams.get(sid)
        if ftype == PING and not flags & ACK:
            self.h2_pings += 1
            self.events.append((now, "PING after GOAWAY (answered)"))
            try:
                self.sock.sendall(frame(PING, ACK, 0, payload))
            except OSError as e:
                self._ended(f"send: {e}")
        elif ftype == GOAWAY:
            last, code = struct.unpack_from("!II", payload)
            self.goaways.append((now, code, last & 0x7FFFFFFF, payload[8:]))
            self.events.append((now, f"GOAWAY {code_name(code)} last {last & 0x7FFFFFFF}"))
        elif ftype == RST_STREAM and st:
            st.reset = struct.unpack("!I", payload)[0]
            st.ended_at = now
            st.events.append((now, f"reset {code_name(st.reset)}"))
        elif ftype == DATA and st:
            if st.status == 200 and st.is_ws:
                st.feed(payload)
            if flags & END_STREAM:
                st.ended, st.ended_at = True, now
                st.events.append((now, "end_stream"))
        else:
            self.events.append((now, f"frame type {ftype} after GOAWAY"))

    def handle(self, ev):
        now = time.monotonic()
        st = self.streams.get(getattr(ev, "stream_id", None) or -1)
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            self.settings_seen = True
            for code, ch in ev.changed_settings.items():
                self.server_settings[int(code)] = ch.new_value
        elif isinstance(ev, h2.events.ResponseReceived) and st:
            st.headers = {k: v for k, v in ev.headers}
            st.status = int(st.headers[":status"])
            st.events.append((now, f"response {st.status}"))
        elif isinstance(ev, h2.events.DataReceived):
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if st:
                if st.status == 200 and st.is_ws:
                    st.feed(ev.data)
                else:
                    st.body += ev.data
        elif isinstance(ev, h2.events.StreamEnded) and st:
            st.ended, st.ended_at = True, now
            st.events.append((now, "end_stream"))
        elif isinstance(ev, h2.events.StreamReset) and st:
            st.reset = int(ev.error_code)
            st.ended_at = now
            st.events.append((now, f"reset {code_name(st.reset)}"))
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaways.append((now, int(ev.error_code), ev.last_stream_id, ev.additional_data))
            self.events.append((now, f"GOAWAY {code_name(int(ev.error_code))} last {ev.last_stream_id}"))
        elif isinstance(ev, h2.events.PingReceived):
            self.h2_pings += 1

    def wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed(f"timed out after {timeout} s waiting for {what}")
            if self.closed:
                raise Failed(f"the connection ended while waiting for {what}: {self.events[-3:]}")
            self.pump(min(left, 0.2))

    def wait_closed(self, timeout):
        """Reads (and handles) everything until the server closes the socket."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed(f"the server did not close the connection within {timeout} s: "
                             f"{self.events}")
            self.pump(min(left, 0.2))

    def wait_settings(self, timeout=5):
        self.wait(lambda: self.settings_seen, timeout, "the server's SETTINGS")
        return self.server_settings

    def request(self, headers, end_stream=False, over_limit=False):
        """Opens a stream with `headers` (pseudo-headers first); returns its WsStream."""
        self.wait_settings()
        sid = self.conn.get_next_available_stream_id()
        st = WsStream(self, sid)
        st.is_ws = dict(headers).get(":method") == "CONNECT"
        self.streams[sid] = st
        if over_limit:
            # h2 refuses to open more streams than the server allows: lift that for one
            # request, to see what the server does with it.
            s = self.conn.remote_settings._settings
            saved = s.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
            s[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = collections.deque([2**31 - 1])
            try:
                self.conn.send_headers(sid, headers, end_stream=end_stream)
            finally:
                if saved is None:
                    del s[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS]
                else:
                    s[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = saved
        else:
            self.conn.send_headers(sid, headers, end_stream=end_stream)
        self.flush()
        return st

    def ws_headers(self, path="/ws", extra=(), protocol="websocket", method="CONNECT"):
        h = [(":method", method)]
        if protocol is not None:
            h.append((":protocol", protocol))
        h += [(":scheme", "http"), (":path", path), (":authority", self.authority),
              ("sec-websocket-version", "13")]
        return h + list(extra)

    def open_ws(self, path="/ws", extra=(), over_limit=False):
        return self.request(self.ws_headers(path, extra), over_limit=over_limit)

    def connect_ws(self, path="/ws", extra=(), timeout=5):
        """Opens a WebSocket stream and waits for its response (any status)."""
        st = self.open_ws(path, extra)
        self.wait_response(st, timeout)
        return st

    def wait_response(self, st, timeout=5):
        self.wait(lambda: st.status is not None or st.reset is not None, timeout,
                  f"the response on stream {st.sid}")
        if st.status is not None and (st.status != 200 or not st.is_ws):
            # A whole response (not a WebSocket): its body too.
            self.wait(lambda: st.ended or st.reset is not None, timeout,
                      f"the end of the response on stream {st.sid}")
        return st

    def ws(self, extra=(), timeout=5):
        """An open WebSocket stream (200), or Failed."""
        st = self.connect_ws(extra=extra, timeout=timeout)
        check(st.status == 200, f"extended CONNECT got {st.status} (reset {st.reset}): {st.body!r}")
        return st

    def send_ws(self, sid, opcode, payload, fin=True, rsv1=False):
        self.send_bytes(sid, ws_frame(opcode, payload, fin=fin, rsv1=rsv1))

    def send_bytes(self, sid, data, timeout=10):
        """DATA within the flow-control windows, waiting for WINDOW_UPDATEs as needed."""
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                if time.monotonic() > deadline:
                    raise Failed(f"stream {sid}: the server's window stayed closed for {timeout} s")
                if self.closed:
                    raise Failed(f"the connection ended while sending on stream {sid}")
                self.pump(0.2)
                continue
            n = min(window, len(view))
            self.conn.send_data(sid, bytes(view[:n]))
            view = view[n:]
            self.flush()
            if not self.in_pump:
                self.pump(0)

    def end(self, sid):
        self.conn.end_stream(sid)
        self.flush()

    def close(self):
        if not self.closed:
            self._ended("closed by us")
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# Raw frames, for what no library sends.


def frame(ftype, flags, sid, payload=b""):
    return struct.pack("!I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack("!I", sid) + payload


class RawH2:
    """A socket speaking HTTP/2 frames by hand. A thread reads and records every frame (and
    answers SETTINGS and, unless told not to, PING); the caller writes what it likes."""

    def __init__(self, addr, preface=True, answer_pings=True):
        self.addr = addr
        # The timeout bounds every sendall (a server that stops reading fails it after 5 s)
        # and lets the reader look at `closing` once in a while.
        self.sock = socket.create_connection(addr, timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.answer_pings = answer_pings
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = 65536
        self.wlock = threading.Lock()
        self.cond = threading.Condition()
        self.frames = []  # (time, type, flags, sid, payload)
        self.goaway = None  # (time, error code, last stream id, debug)
        self.rst = {}  # sid -> error code
        self.status = {}  # sid -> :status
        self.settings = {}
        self.eof_at = None
        self.eof_why = None
        self.send_error = None
        self.sent_bytes = 0
        self.acks_skipped = 0
        self.closing = False
        if preface:
            self.send(PREFACE + frame(SETTINGS, 0, 0))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def send(self, data):
        """Writes data; False (and the error kept) once the server has gone."""
        with self.wlock:
            if self.send_error:
                return False
            try:
                self.sock.sendall(data)
                self.sent_bytes += len(data)
                return True
            except OSError as e:
                self.send_error = e
                return False

    def _read(self):
        buf = bytearray()
        why = "EOF"
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                if self.closing:
                    why = "closed by us"
                    break
                continue
            except OSError as e:
                why = str(e)
                break
            if not data:
                break
            buf += data
            while len(buf) >= 9:
                n = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + n:
                    break
                ftype, flags = buf[3], buf[4]
                sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload = bytes(buf[9:9 + n])
                del buf[:9 + n]
                self._frame(ftype, flags, sid, payload)
        with self.cond:
            self.eof_at = time.monotonic()
            self.eof_why = why
            self.cond.notify_all()

    def _ack(self, data):
        """An ACK from the reader: never waits long for the writer (whose sendall may be
        blocked because the server stopped reading), or nothing would read the GOAWAY."""
        if self.wlock.acquire(timeout=0.2):
            try:
                if not self.send_error:
                    self.sock.sendall(data)
            except OSError as e:
                self.send_error = e
            finally:
                self.wlock.release()
        else:
            self.acks_skipped += 1

    def _frame(self, ftype, flags, sid, payload):
        now = time.monotonic()
        if ftype == SETTINGS and not flags & ACK:
            for i in range(0, len(payload), 6):
                k, v = struct.unpack_from("!HI", payload, i)
                self.settings[k] = v
            self._ack(frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK and self.answer_pings:
            self._ack(frame(PING, ACK, 0, payload))
        with self.cond:
            self.frames.append((now, ftype, flags, sid, payload))
            if ftype == GOAWAY and self.goaway is None:
                last, code = struct.unpack_from("!II", payload)
                self.goaway = (now, code, last & 0x7FFFFFFF, payload[8:])
            elif ftype == RST_STREAM:
                self.rst[sid] = struct.unpack("!I", payload)[0]
            elif ftype == HEADERS:
                try:
                    headers = dict(self.decoder.decode(payload))
                    self.status[sid] = int(headers.get(":status", "0"))
                except Exception as e:  # noqa: BLE001 - recorded, the test decides
                    self.status[sid] = f"undecodable: {e!r}"
            self.cond.notify_all()

    def wait(self, pred, timeout):
        """Waits until pred() (under the lock) or the timeout; returns pred()'s last value."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = pred()
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    return got
                self.cond.wait(min(left, 0.5))

    def wait_end(self, timeout):
        """Waits for a GOAWAY or the end of the socket; returns (GOAWAY, EOF time)."""
        self.wait(lambda: self.goaway is not None or self.eof_at is not None, timeout)
        return self.goaway, self.eof_at

    def headers_block(self, headers, huffman=True):
        # hpack's Huffman coder is slow on big values (seconds per 100 KiB): big ones go raw.
        return self.encoder.encode(headers, huffman=huffman)

    def connect_headers(self, path="/ws", extra=()):
        host, port = self.addr
        return [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                (":path", path), (":authority", f"{host}:{port}"), ("sec-websocket-version", "13"),
                *extra]

    def ending(self, t0):
        """A one-line account of how the connection ended, times from t0."""
        parts = []
        if self.goaway:
            t, code, last, debug = self.goaway
            parts.append(f"GOAWAY {code_name(code)} (last stream {last}"
                         f"{', ' + repr(debug.decode(errors='replace')) if debug else ''}) "
                         f"after {(t - t0) * 1000:.1f} ms")
        if self.eof_at:
            parts.append(f"socket closed after {(self.eof_at - t0) * 1000:.1f} ms ({self.eof_why})")
        return "; ".join(parts) or "still open"

    def close(self):
        self.closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.reader.join(5)


# ---------------------------------------------------------------------------------------------
# Cases.

CASES = []


def case(name):
    def register(fn):
        CASES.append((name, fn))
        return fn
    return register


class Ctx:
    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []
        self.clients = []
        self.notes = []

    def daemon(self, **overrides):
        """A fresh daemon; overrides are {section: {key: value}}."""
        d = Daemon(self.tmp, overrides, self.procs)
        return d

    def client(self, d, **kw):
        c = H2Client(d.addr, **kw)
        self.clients.append(c)
        return c

    def raw(self, d, **kw):
        c = RawH2(d.addr, **kw)
        self.clients.append(c)
        return c

    def note(self, msg):
        self.notes.append(msg)
        log(f"    {msg}")

    def cleanup(self):
        for c in self.clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass
        for p in self.procs:
            p.stop()


def accounted(d):
    """Every TCP connection and every stream is accounted for (src/tracker.rs): accepted =
    closed + aborted + live + TCP connections handed over to HTTP/2."""
    m = d.metrics()
    live = sum(m.get(m_state(s), 0) for s in ("connecting", "open", "close_sent", "close_received"))
    ended = sum(m.get(f'wsechod_connections_ended_total{{state="{s}"}}', 0) for s in ("closed", "aborted"))
    eq(m["wsechod_connections_accepted_total"], ended + live + m["wsechod_http2_connections_total"],
       "accepted = closed + aborted + live + HTTP/2 connections")


def healthy(ctx, d, what):
    """The daemon after an attack: alive, a fresh client still echoes, peak RSS bounded."""
    check(d.alive(), f"the daemon died after {what}:\n{d.tail()}")
    c = ctx.client(d)
    st = c.ws()
    st.echo(1, f"still here after {what} — 여전히".encode())
    st.close_and_wait()
    c.close()
    hwm = d.status_kb("VmHWM")
    rss = d.status_kb("VmRSS")
    check(hwm < RSS_BOUND_MIB * 1024, f"peak RSS {hwm} KiB over {RSS_BOUND_MIB} MiB after {what}")
    return f"daemon healthy (fresh client echoes), RSS {rss // 1024} MiB, peak {hwm // 1024} MiB " \
           f"(bound {RSS_BOUND_MIB} MiB)"


@case("echo")
def case_echo(ctx):
    d = ctx.daemon(server={"subprotocols": ["echo.v1"]})
    c = ctx.client(d)
    s = c.wait_settings()
    eq(s.get(ENABLE_CONNECT_PROTOCOL), 1, "SETTINGS_ENABLE_CONNECT_PROTOCOL")
    ctx.note("server SETTINGS: " + ", ".join(f"{setting_name(k)} {v}" for k, v in s.items()))
    st = c.ws()
    eq(st.status, 200, "extended CONNECT status")
    check("sec-websocket-accept" not in st.headers, "sec-websocket-accept in an HTTP/2 answer")
    check("sec-websocket-protocol" not in st.headers, "a subprotocol selected though none offered")
    check("sec-websocket-extensions" not in st.headers, "an extension though none offered")
    big_text = (KOREAN * (70 * 1024 // len(KOREAN.encode()) + 1)).encode()
    check(len(big_text) >= 64 * 1024, "big text is >= 64 KiB")
    big_bin = os.urandom(200 * 1024)
    for opcode, payload in [(1, b"hello"), (1, KOREAN.encode()), (2, bytes(range(256))), (2, b""),
                            (1, big_text), (2, big_bin)]:
        st.echo(opcode, payload)
    ctx.note(f"echoed exactly: text 5 B, Korean {len(KOREAN.encode())} B, binary 256 B, empty, "
             f"text {len(big_text)} B, binary {len(big_bin)} B (stream window 64 KiB, so through "
             f"WINDOW_UPDATEs both ways)")
    m = d.metrics()
    for key, want in [(m_handshakes("2"), 1), (m_handshakes("1.1"), 0),
                      ("wsechod_http2_connections", 1), ("wsechod_http2_connections_total", 1),
                      ("wsechod_http2_streams", 1), (m_state("open"), 1), (m_state("connecting"), 0)]:
        eq(m.get(key), want, key)
    code, reason = st.close_and_wait(1000, "bye")
    eq(code, 1000, "the server's answer to close 1000")
    check(clean_end(st), f"stream ended with END_STREAM: {st.events}")
    how = [e[1] for e in st.events if e[0] >= st.close_at][1:]
    d.wait_metric("wsechod_http2_streams", 0)
    d.wait_metric('wsechod_connections_ended_total{state="closed"}', 1)
    eq(d.metric("wsechod_http2_connections"), 1, "the connection outlives its stream")
    ctx.note(f"close 1000 answered with {code} {reason!r}, then {' + '.join(how)}; streams 0, "
             f"connection stays")

    # Subprotocol and permessage-deflate on a second stream of the same connection.
    st = c.ws(extra=[("sec-websocket-protocol", "chat.v9, echo.v1"),
                     ("sec-websocket-extensions", "permessage-deflate; client_max_window_bits")])
    eq(st.headers.get("sec-websocket-protocol"), "echo.v1", "selected subprotocol")
    ext = st.headers.get("sec-websocket-extensions", "")
    check(ext.startswith("permessage-deflate"), f"permessage-deflate answered: {ext!r}")
    inflater = Inflater()
    for opcode, data in [(1, (KOREAN * 40).encode()), (2, bytes(range(256)) * 64)]:
        st.send(opcode, deflate(data), rsv1=True)
        op, got, rsv1 = st.recv()
        eq(op, opcode, "compressed echo opcode")
        check(rsv1, "the echo of a compressed message is compressed (RSV1)")
        check(inflater.inflate(got) == data, "the RSV1 echo inflates to the message")
    # A compressed message in two fragments (RSV1 on the first only).
    data = ("조각난 메시지 " * 100).encode()
    z = deflate(data)
    st.send(1, z[:len(z) // 2], fin=False, rsv1=True)
    st.send(0, z[len(z) // 2:])
    op, got, rsv1 = st.recv()
    check(op == 1 and rsv1 and inflater.inflate(got) == data, "fragmented compressed message echo")
    # An uncompressed message on the same stream is echoed too (compressed or not).
    st.send(1, b"plain")
    op, got, rsv1 = st.recv()
    eq((op, inflater.inflate(got) if rsv1 else got), (1, b"plain"), "uncompressed message's echo")
    eq(d.metric("wsechod_connections_compressed_total"), 1, "connections_compressed_total")
    eq(d.metric(m_handshakes("2")), 2, "handshakes_total{http=2}")
    st.close_and_wait()
    accounted(d)
    ctx.note(f"subprotocol echo.v1 selected; extensions answered {ext!r}; RSV1 echoes of a "
             f"compressed text, binary and fragmented text message inflate to them")


def rejected_counts(d):
    m = d.metrics()
    return {s: m.get(m_rejected(s), 0) for s in ("400", "403", "404", "405", "426", "429", "503")}


@case("statuses")
def case_statuses(ctx):
    d = ctx.daemon(server={"allowed_origins": ["https://good.example"], "max_connections": 3,
                           "max_connections_per_ip": 2})
    before = rejected_counts(d)
    c = ctx.client(d, validate=False)
    got = {}

    def status(name, headers, want, header=None, end_stream=True):
        st = c.wait_response(c.request(headers, end_stream=end_stream))
        check(st.status is not None, f"{name}: RST_STREAM {st.reset} instead of a response")
        eq(st.status, want, name)
        if header:
            check(header in st.headers, f"{name}: no {header} header in {st.headers}")
        got[name] = f"{st.status}" + (f" {header}: {st.headers[header]}" if header else "")
        return st

    ws = c.ws_headers
    status("other path", ws(path="/nope"), 404)
    status("Origin not allowed", ws(extra=[("origin", "https://evil.example")]), 403)
    status("plain GET of the path", [(":method", "GET"), (":scheme", "http"), (":path", "/ws"),
                                     (":authority", c.authority)], 400)
    status("CONNECT with :protocol other than websocket", ws(protocol="chat"), 400)
    status("CONNECT without sec-websocket-version", ws()[:-1], 400)
    status("POST", ws(method="POST", protocol=None), 405, "allow")
    status("sec-websocket-version 8",
           [h if h[0] != "sec-websocket-version" else (h[0], "8") for h in ws()], 426,
           "sec-websocket-version")
    # CONNECT without :protocol: an ordinary CONNECT (RFC 9113 8.5) names only :authority,
    # so it has no path; with :scheme and :path it is malformed (a stream error).
    ordinary = c.wait_response(c.request([(":method", "CONNECT"), (":authority", c.authority),
                                          ("sec-websocket-version", "13")]))
    check(ordinary.status is not None and 400 <= ordinary.status < 500,
          f"ordinary CONNECT got {ordinary.status} (reset {ordinary.reset})")
    got["CONNECT without :protocol, authority-form (ordinary CONNECT)"] = f"{ordinary.status}"
    malformed = c.wait_response(c.request(ws(protocol=None)))
    eq((malformed.status, code_name(malformed.reset or 0)), (None, "PROTOCOL_ERROR"),
       "CONNECT with :path but without :protocol")
    got["CONNECT without :protocol, with :scheme and :path (malformed)"] = \
        f"RST_STREAM {code_name(malformed.reset)}, the connection stays"
    page = status("console page", [(":method", "GET"), (":scheme", "http"), (":path", "/console"),
                                   (":authority", c.authority)], 200)
    check(page.headers.get("content-type", "").startswith("text/html"),
          f"console content-type {page.headers.get('content-type')}")
    check(b"<html" in page.body.lower(), f"console body is HTML: {page.body[:80]!r}")
    eq(len(page.body), int(page.headers["content-length"]), "console body length")
    check("connection" not in page.headers, "a Connection header in an HTTP/2 answer")
    # Limits: this TCP connection holds one place (1 of 3, 1 of 2 from 127.0.0.1).
    ok = c.ws()  # 2 of 3, 2 of 2
    status("max_connections_per_ip", ws(), 429, "retry-after", end_stream=False)
    other = ctx.client(d, source="127.0.0.2")  # 3 of 3 in all, 1 of 2 from 127.0.0.2
    st = other.wait_response(other.request(other.ws_headers()))
    eq(st.status, 503, "max_connections (a stream from 127.0.0.2, 4 of 3)")
    check("retry-after" in st.headers, "503 has retry-after")
    got["max_connections"] = f"503 retry-after: {st.headers['retry-after']}"
    ok.echo(1, b"the open stream is untouched")
    after = rejected_counts(d)
    delta = {s: after[s] - before[s] for s in after}
    want = {"400": 3, "403": 1, "404": 1, "405": 1, "426": 1, "429": 1, "503": 1}
    want[str(ordinary.status)] = want.get(str(ordinary.status), 0) + 1
    eq(delta, want, "wsechod_handshakes_rejected_total increments")
    eq(d.metric(m_aborted("console_page")), 1, "console page counted as console_page")
    for k, v in got.items():
        ctx.note(f"{k}: {v}")
    ctx.note(f"rejections counted: {delta}")


@case("many-streams")
def case_many_streams(ctx):
    n, per = 50, 20
    d = ctx.daemon()
    c = ctx.client(d)
    streams = [c.open_ws() for _ in range(n)]
    c.wait(lambda: all(s.status is not None or s.reset is not None for s in streams), 10,
           "50 responses")
    eq([s.status for s in streams], [200] * n, "statuses of 50 streams")
    d.wait_metric("wsechod_http2_streams", n)
    eq(d.metric(m_state("open")), n, "connections{state=open}")
    eq(d.metric("wsechod_http2_connections"), 1, "one TCP connection")
    for i in range(per):
        for s in streams:  # interleaved: message i of every stream, then i + 1
            s.send_text(f"stream {s.sid} message {i} 번")
    for s in streams:
        c.wait(lambda s=s: len(s.messages) >= per, 20, f"{per} echoes on stream {s.sid}")
        got = [(op, p.decode()) for op, p, _ in s.messages]
        eq(got, [(1, f"stream {s.sid} message {i} 번") for i in range(per)], f"stream {s.sid} echoes")
    for s in streams:
        s.send(8, close_payload(1000))
    c.wait(lambda: all(s.close and s.ended for s in streams), 10, "every stream closed")
    d.wait_metric("wsechod_http2_streams", 0)
    eq(d.metric('wsechod_connections_ended_total{state="closed"}'), n, "closed streams")
    accounted(d)
    ctx.note(f"{n} streams on one connection, {per} messages each interleaved: all exact, "
             f"all closed 1000")


@case("stream-limit")
def case_stream_limit(ctx):
    d = ctx.daemon(http2={"max_concurrent_streams": 10})
    c = ctx.client(d)
    eq(c.wait_settings().get(MAX_CONCURRENT_STREAMS), 10, "SETTINGS_MAX_CONCURRENT_STREAMS")
    streams = [c.ws() for _ in range(10)]
    extra = c.open_ws(over_limit=True)
    c.wait(lambda: extra.reset is not None or extra.status is not None, 5, "the 11th stream's fate")
    eq(extra.status, None, "the 11th stream gets no response")
    eq(code_name(extra.reset), "REFUSED_STREAM", "the 11th stream's RST_STREAM")
    for s in streams:
        s.echo(1, f"stream {s.sid} still works".encode())
    eq(d.metric("wsechod_http2_streams"), 10, "http2_streams")
    eq(c.goaways, [], "no GOAWAY")
    # Once one ends, a new one fits again.
    streams[0].close_and_wait()
    d.wait_metric("wsechod_http2_streams", 9)
    c.ws().echo(2, b"\x00\x01 a new 10th")
    ctx.note("SETTINGS_MAX_CONCURRENT_STREAMS = 10; the 11th got RST_STREAM REFUSED_STREAM; the "
             "10 kept echoing; after one closed a new one opened")


def drain_setup(ctx, drain_timeout, reason):
    return ctx.daemon(shutdown={"drain_timeout": drain_timeout, "close_reason": reason})


@case("drain")
def case_drain(ctx):
    reason = "h2 test: 서버 종료"
    d = drain_setup(ctx, "5s", reason)
    c = ctx.client(d)
    quiet = [c.ws() for _ in range(3)]
    for s in quiet:
        s.echo(1, b"before")
    talker = c.ws()
    sent = 0
    # The talker sends numbered messages without waiting; SIGTERM comes in the middle.
    while sent < 20:
        talker.send_text(f"n{sent}")
        sent += 1
    c.wait(lambda: len(talker.messages) >= 10, 5, "the first echoes")
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    deadline = t0 + 5
    while talker.close is None and time.monotonic() < deadline:
        talker.send_text(f"n{sent}")
        sent += 1
        c.pump(0)
    c.wait(lambda: all(s.close for s in quiet + [talker]), 5, "close frames on every stream")
    echoes = [p.decode() for _, p, _ in talker.messages]
    eq(echoes, [f"n{i}" for i in range(len(echoes))], "echoes before the close, in order")
    check(len(echoes) >= 10, "echoes")
    for s in quiet + [talker]:
        eq(s.close, (1000, reason), f"stream {s.sid} close frame")
        check(not s.ended and s.reset is None, f"stream {s.sid} ended before our close answer")
        after_close = [e for e in s.events if e[0] > s.close_at and e[1] == "message"]
        eq(after_close, [], f"stream {s.sid}: messages after the close frame")
    eq(c.goaways, [], "GOAWAY before the streams ended")
    # A new stream during the drain.
    late = c.open_ws()
    c.wait(lambda: late.status is not None or late.reset is not None, 5, "the late stream's fate")
    late_fate = f"{late.status}" if late.status else f"RST_STREAM {code_name(late.reset)}"
    eq(late.status, 503, "a new CONNECT during the drain")
    # What was in flight when the server sent its close is read and discarded (RFC 6455 5.5.1).
    discarded = d.wait_metric("wsechod_messages_discarded_total", sent - len(echoes))
    m = d.metrics()
    eq(m.get(m_state("close_sent")), 4, "streams in close_sent")
    eq(m.get("wsechod_draining"), 1, "wsechod_draining")
    # The client answers every close; the streams end; GOAWAY follows.
    answered = time.monotonic()
    for s in quiet + [talker]:
        s.send(8, close_payload(1000))
    c.wait(lambda: all(s.ended for s in quiet + [talker]), 5, "every stream's END_STREAM")
    for s in quiet + [talker]:
        check(clean_end(s), f"stream {s.sid} ended cleanly: {s.events}")
    c.wait(lambda: c.goaways or c.closed, 5, "GOAWAY")
    timeline = sorted([(t, f"stream {s.sid} {w}") for s in quiet + [talker] for t, w in s.events
                       if w != "message"] + c.events)
    check(c.goaways, f"the connection ended without GOAWAY: {timeline}")
    t_go, code, last, _ = c.goaways[0]
    eq(code_name(code), "NO_ERROR", "GOAWAY error code")
    check(t_go > answered, f"GOAWAY only after every stream's close handshake: {timeline}")
    after = [w for t, w in timeline if t > t_go and "end_stream" in w]
    # Then the server closes the connection (its second GOAWAY names the last stream).
    c.wait(lambda: c.closed, 5, "the server closing the connection")
    c.close()
    rc = d.wait_exit(5)
    took = time.monotonic() - t0
    eq(rc, 0, "exit status")
    check(took < 5, f"exit within drain_timeout (took {took:.2f} s)")
    report = re.search(r"drain complete.*", d.logfile.read_text())
    check(report and "open=4 closed=4" in report.group(0) and "aborted_at_deadline=0" in
          report.group(0), f"drain report: {report and report.group(0)}")
    ctx.note(f"SIGTERM: {len(echoes)} echoes then close (1000, {reason!r}) on all 4 streams; "
             f"{int(discarded)} messages sent after it discarded (counted); new CONNECT during "
             f"the drain: {late_fate}")
    ctx.note(f"after the client's close answers: GOAWAY {code_name(code)} (last stream {last}) "
             f"{(t_go - answered) * 1000:.1f} ms later"
             f"{'; END_STREAM of ' + ', '.join(after) + ' after it' if after else ''}; then "
             f"{', '.join(w for t, w in c.events if t > t_go)}; exit 0 after {took:.2f} s "
             f"(drain_timeout 5 s)")


@case("drain-deadline")
def case_drain_deadline(ctx):
    d = drain_setup(ctx, "1s", "bye")
    c = ctx.client(d)
    polite, silent = c.ws(), c.ws()
    silent.auto_pong = False
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    c.wait(lambda: polite.close and silent.close, 3, "close frames")
    polite.send(8, close_payload(1000))
    c.wait(lambda: polite.ended, 3, "the polite stream's end")
    # The silent stream never answers: aborted at drain_timeout (1 s), then the daemon exits.
    c.wait(lambda: silent.reset is not None or silent.ended or c.closed or c.goaways, 5,
           "the silent stream's end")
    ended = time.monotonic() - t0
    fate = ("RST_STREAM " + code_name(silent.reset)) if silent.reset is not None else (
        "END_STREAM" if silent.ended else ("GOAWAY" if c.goaways else "connection closed"))
    rc = d.wait_exit(5)
    took = time.monotonic() - t0
    eq(rc, 0, "exit status")
    check(0.9 <= ended < 3, f"silent stream ended {ended:.2f} s after SIGTERM (drain_timeout 1 s)")
    text = d.logfile.read_text()
    m = re.search(r"drain complete.*", text)
    check(m and "aborted_at_deadline=1" in m.group(0) and "closed=1" in m.group(0),
          f"drain report: {m and m.group(0)}")
    ctx.note(f"silent stream ended {ended:.2f} s after SIGTERM by {fate}; connection events "
             f"{[e[1] for e in c.events]}; exit 0 after {took:.2f} s; report: "
             f"{re.sub(r'.*drain complete, exiting ?', '', m.group(0))}")


@case("reload")
def case_reload(ctx):
    d = ctx.daemon()
    c = ctx.client(d)
    a, b = c.ws(), c.ws()
    a.echo(1, b"a before")
    b.echo(2, b"b before")
    key = 'wsechod_config_reloads_total{result="success"}'
    before = d.metric(key)
    mark = len(d.messages)
    d.signal(signal.SIGHUP)
    d.wait_notify("RELOADING=1", 10, mark)
    d.wait_notify("READY=1", 10, mark + 1)
    d.wait_metric(key, before + 1)
    a.echo(1, "a after 재시작 없이".encode())
    b.echo(2, b"b after")
    check(a.close is None and b.close is None and a.reset is None and b.reset is None,
          "streams untouched by SIGHUP")
    c.ws().echo(1, b"a new stream on the same connection")
    eq(c.goaways, [], "GOAWAY")
    eq(d.metric("wsechod_http2_streams"), 3, "http2_streams")
    ctx.note("SIGHUP: reload counted (success +1), both streams echo before and after, a new "
             "stream opens on the same connection, no GOAWAY")


KEEPALIVE = {"websocket": {"ping_interval": "1s", "pong_timeout": "1s"}}


@case("keepalive-ws")
def case_keepalive_ws(ctx):
    d = ctx.daemon(server={"handshake_timeout": "30s"}, **KEEPALIVE)
    c = ctx.client(d)
    mute, live = c.ws(), c.ws()
    mute.auto_pong = False
    t0 = time.monotonic()
    c.wait(lambda: mute.reset is not None or mute.ended, 6, "the mute stream's end")
    took = time.monotonic() - t0
    fate = " + ".join(w for t, w in mute.events if t >= t0 and w != "message") or "nothing"
    check(mute.pings >= 1, "WebSocket pings arrived on the mute stream")
    d.wait_metric(m_aborted("pong_timeout"), 1)
    check(1.5 <= took < 4, f"aborted {took:.2f} s after opening (ping 1 s + pong timeout 1 s)")
    # Two more ping rounds on both levels: the live stream and the connection stay.
    pings = (live.pings, c.h2_pings)
    c.wait(lambda: live.pings >= pings[0] + 2 and c.h2_pings >= pings[1] + 2, 6,
           "two more WebSocket and HTTP/2 ping rounds")
    check(not c.closed and not c.goaways, f"the connection stays: {c.events}")
    live.echo(1, b"the other stream still echoes")
    eq(d.metric("wsechod_http2_connections"), 1, "http2_connections")
    eq(d.metric("wsechod_http2_streams"), 1, "http2_streams")
    eq(d.metric(m_aborted("pong_timeout")), 1, "pong_timeout aborts")
    ctx.note(f"stream that never pongs: {fate} after {took:.2f} s, counted pong_timeout; the "
             f"connection (answering {c.h2_pings} HTTP/2 PINGs) and the other stream "
             f"({live.pings} pongs) stay")


@case("keepalive-h2")
def case_keepalive_h2(ctx):
    # handshake_timeout 30 s: the GOAWAY for a connection without streams cannot be the cause.
    d = ctx.daemon(server={"handshake_timeout": "30s"}, **KEEPALIVE)
    bare = ctx.client(d)  # no stream at all: only HTTP/2 PINGs can find it dead
    bare.wait_settings()
    c = ctx.client(d)
    st = c.ws()
    st.echo(1, b"then silence")
    d.wait_metric("wsechod_http2_connections", 2)
    t0 = time.monotonic()
    # Both stop reading entirely: no PING ACK, no pong, nothing. Watch from the metrics side.
    d.wait_metric("wsechod_http2_connections", 0, timeout=8)
    took = time.monotonic() - t0
    d.wait_metric("wsechod_http2_streams", 0)
    check(took < 5, f"dropped {took:.2f} s after the clients stopped reading (< handshake_timeout)")
    # Now read what the sockets hold: the server's PINGs, its GOAWAY, the end.
    for x in (bare, c):
        x.wait_closed(2)
        check(x.h2_pings >= 1, "HTTP/2 PINGs were sent")
    aborted = {r: d.metric(m_aborted(r)) for r in ("pong_timeout", "reset")}
    for x, what in ((bare, "no stream"), (c, "one open stream")):
        ctx.note(f"client with {what} that stops reading: it had been sent "
                 f"{x.h2_pings} PING(s), then {', '.join(e[1] for e in x.events)}")
    ctx.note(f"both connections dropped within {took:.2f} s (ping_interval 1 s + pong_timeout 1 s; "
             f"the idle GOAWAY would be at 30 s); the open stream ended counted as "
             f"{ {k: int(v) for k, v in aborted.items()} }")


@case("idle-goaway")
def case_idle_goaway(ctx):
    # A connection with no stream for handshake_timeout gets GOAWAY (src/server/h2.rs).
    d = ctx.daemon(server={"handshake_timeout": "2s"})
    bare = ctx.client(d)
    t0 = time.monotonic()
    bare.wait(lambda: bare.goaways, 5, "GOAWAY on a connection without streams")
    first = bare.goaways[0][0] - t0
    check(1.8 <= first < 3, f"GOAWAY {first:.2f} s after connecting (handshake_timeout 2 s)")
    bare.wait_closed(5)
    # A stream that ends 1.5 s in: the idle time starts there, not at the connection's start.
    c = ctx.client(d)
    t0 = time.monotonic()
    st = c.ws()
    c.wait(lambda: time.monotonic() - t0 >= 1.5, 3, "1.5 s with the stream open")
    st.close_and_wait()
    ended = st.ended_at
    c.wait(lambda: c.goaways, 5, "GOAWAY after the last stream")
    after = c.goaways[0][0] - ended
    check(1.8 <= after < 3, f"GOAWAY {after:.2f} s after the last stream ended (2 s expected)")
    code = code_name(c.goaways[0][1])
    eq(code, "NO_ERROR", "idle GOAWAY code")
    ctx.note(f"no stream at all: GOAWAY {code} {first:.2f} s after connecting; a stream closed "
             f"1.5 s in: GOAWAY {after:.2f} s after it ended (handshake_timeout 2 s)")


# ---- hostile ----


@case("rapid-reset")
def case_rapid_reset(ctx):
    d = ctx.daemon()
    # The CVE-2023-44487 pattern: HEADERS and RST_STREAM back to back, 100 pairs per write,
    # up to 10000, until the server says stop.
    r = ctx.raw(d)
    r.wait(lambda: r.settings, 5)
    n_max, batch = 10000, 100
    t0 = time.monotonic()
    sid, sent = 1, 0
    while sent < n_max and r.goaway is None and r.eof_at is None:
        out = bytearray()
        for _ in range(batch):
            out += frame(HEADERS, END_HEADERS, sid, r.headers_block(r.connect_headers()))
            out += frame(RST_STREAM, 0, sid, struct.pack("!I", 8))  # CANCEL
            sid += 2
        if not r.send(bytes(out)):
            break
        sent += batch
    goaway, eof = r.wait_end(END_BOUND_S)
    check(goaway, f"no GOAWAY {END_BOUND_S} s after {sent} resets: {r.ending(t0)}")
    eq(code_name(goaway[1]), "ENHANCE_YOUR_CALM", "GOAWAY code")
    r.wait(lambda: r.eof_at, END_BOUND_S)
    check(r.eof_at, "the socket closed after the GOAWAY")
    d.wait_metric("wsechod_http2_connections", 0)
    d.wait_metric(m_state("connecting"), 0)
    streams = int(d.metric("wsechod_connections_accepted_total")) - 1
    ctx.note(f"{sent} HEADERS+RST_STREAM pairs written ({batch} per write) before the client saw "
             f"{r.ending(t0)}; the server had processed {goaway[2] // 2 + 1} streams, "
             f"{streams} of them reached the daemon's service")
    accounted(d)
    # Paced: each stream's 200 arrives before its reset (as over a real network, where the
    # server accepts every stream before the reset gets there). Nothing is pending, so h2's
    # reset counter never trips: each stream is a whole handshake, done and ended.
    r = ctx.raw(d)
    r.wait(lambda: r.settings, 5)
    before = d.metrics()
    n = 2000
    t0 = time.monotonic()
    peak_streams = 0
    for i in range(n):
        sid = 2 * i + 1
        r.send(frame(HEADERS, END_HEADERS, sid, r.headers_block(r.connect_headers())))
        r.wait(lambda: sid in r.status or r.goaway or r.eof_at, 5)
        if r.goaway or r.eof_at:
            break
        r.send(frame(RST_STREAM, 0, sid, struct.pack("!I", 8)))
        if i % 500 == 0:
            peak_streams = max(peak_streams, d.metric("wsechod_http2_streams"))
    took = time.monotonic() - t0
    d.wait_metric("wsechod_http2_streams", 0)
    after = d.metrics()

    def delta(k):
        return int(after.get(k, 0) - before.get(k, 0))
    ended = {k: delta(m_aborted(k)) for k in ("reset", "handshake_failed")}
    ctx.note(f"paced rapid reset (each RST_STREAM after the stream's 200): {i + 1} streams in "
             f"{took:.2f} s, {r.ending(t0)}; handshakes +{delta(m_handshakes('2'))}, aborted "
             f"{ended}; open streams never above {int(peak_streams)}")
    check(r.goaway is None or code_name(r.goaway[1]) == "ENHANCE_YOUR_CALM",
          f"paced: {r.ending(t0)}")
    if r.goaway is None:
        eq(sum(ended.values()), i + 1, "paced streams that ended aborted (reset, handshake_failed)")
    r.close()
    d.wait_metric("wsechod_http2_connections", 0)
    accounted(d)
    ctx.note(healthy(ctx, d, "rapid reset"))


@case("stream-flood")
def case_stream_flood(ctx):
    d = ctx.daemon(server={"handshake_timeout": "30s"}, http2={"max_concurrent_streams": 100})
    # 600 at once: 100 open, the rest refused one by one; the connection stays.
    r = ctx.raw(d)
    r.wait(lambda: r.settings, 5)
    t0 = time.monotonic()
    n = 600
    r.send(b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, r.headers_block(r.connect_headers()))
                    for i in range(n)))
    r.wait(lambda: len(r.status) + len(r.rst) >= n or r.goaway or r.eof_at, END_BOUND_S)
    took = time.monotonic() - t0
    with r.cond:
        ok = sorted(sid for sid, v in r.status.items() if v == 200)
        refused = collections.Counter(code_name(v) for v in r.rst.values())
    eq(ok, [2 * i + 1 for i in range(100)], "the streams that opened: the first 100")
    eq(dict(refused), {"REFUSED_STREAM": n - 100}, "RST_STREAM of the rest")
    check(r.goaway is None and r.eof_at is None, f"the connection stays: {r.ending(t0)}")
    d.wait_metric("wsechod_http2_streams", 100)
    ctx.note(f"{n} CONNECT streams at once (max_concurrent_streams 100): the first 100 got 200, "
             f"{dict(refused)} for the rest within {took * 1000:.0f} ms; the connection stays")
    r.close()
    t1 = time.monotonic()
    d.wait_metric("wsechod_http2_connections", 0, timeout=END_BOUND_S)
    d.wait_metric("wsechod_http2_streams", 0)
    ctx.note(f"the client closing its socket ends the 100 open streams within "
             f"{(time.monotonic() - t1) * 1000:.0f} ms; connections "
             f"{ {k: int(d.metric(m_state(k))) for k in ('connecting', 'open')} }")
    # 3000 at once: past 1024 refusals the connection itself goes (CVE-2023-44487 family).
    r = ctx.raw(d)
    r.wait(lambda: r.settings, 5)
    t0 = time.monotonic()
    n = 3000
    r.send(b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, r.headers_block(r.connect_headers()))
                    for i in range(n)))
    goaway, eof = r.wait_end(END_BOUND_S)
    check(goaway, f"no GOAWAY for {n} streams at once: {r.ending(t0)}")
    eq(code_name(goaway[1]), "ENHANCE_YOUR_CALM", "GOAWAY code")
    r.wait(lambda: r.eof_at, END_BOUND_S)
    check(r.eof_at, "the socket closed after the GOAWAY")
    with r.cond:
        ok = sum(1 for v in r.status.values() if v == 200)
        refused = collections.Counter(code_name(v) for v in r.rst.values())
    check(ok <= 100, f"{ok} streams opened beyond max_concurrent_streams 100")
    ctx.note(f"{n} CONNECT streams at once: {ok} got 200, RST_STREAM {dict(refused)}; "
             f"{r.ending(t0)}")
    d.wait_metric("wsechod_http2_connections", 0, timeout=END_BOUND_S)
    d.wait_metric("wsechod_http2_streams", 0)
    d.wait_metric(m_state("connecting"), 0)
    ctx.note(healthy(ctx, d, "the stream floods"))


@case("huge-headers")
def case_huge_headers(ctx):
    d = ctx.daemon()  # max_header_size 16 KiB
    for value_size in (20 * 1024, 1024 * 1024):
        r = ctx.raw(d)
        r.wait(lambda: r.settings, 5)
        t0 = time.monotonic()
        big = os.urandom(value_size // 2).hex()
        block = r.headers_block(r.connect_headers(extra=[("x-big", big)]), huffman=False)
        chunk = r.settings.get(5, 16384)  # SETTINGS_MAX_FRAME_SIZE
        pieces = [block[i:i + chunk] for i in range(0, len(block), chunk)]
        out = [frame(HEADERS, END_HEADERS if len(pieces) == 1 else 0, 1, pieces[0])]
        for i, p in enumerate(pieces[1:], 1):
            out.append(frame(CONTINUATION, END_HEADERS if i == len(pieces) - 1 else 0, 1, p))
        r.send(b"".join(out))
        r.wait(lambda: 1 in r.status or 1 in r.rst or r.goaway or r.eof_at, END_BOUND_S)
        took = time.monotonic() - t0
        what = (f"a header list of {value_size // 1024 + 1} KiB ({len(block) // 1024} KiB block in "
                f"{len(pieces)} frames; SETTINGS_MAX_HEADER_LIST_SIZE {r.settings.get(6)})")
        check(1 in r.status or 1 in r.rst or r.goaway or r.eof_at, f"{what}: no answer")
        check(r.status.get(1) != 200, f"{what}: opened a WebSocket")
        if value_size < 64 * 1024:
            # Just over: the stream is refused, the connection goes on.
            eq(r.status.get(1), 431, f"{what}: status")
            r.send(frame(HEADERS, END_HEADERS, 3, r.headers_block(r.connect_headers())))
            r.wait(lambda: 3 in r.status or r.goaway or r.eof_at, 5)
            eq(r.status.get(3), 200, "a normal CONNECT on the same connection afterwards")
            ctx.note(f"{what}: {r.status[1]} after {took * 1000:.1f} ms; the connection stays "
                     f"usable (the next CONNECT on it gets 200)")
        else:
            # Far over: the connection goes.
            r.wait(lambda: r.eof_at, END_BOUND_S)
            check(r.goaway and r.eof_at, f"{what}: {r.ending(t0)}")
            ctx.note(f"{what}: {r.ending(t0)}")
        r.close()
    # The daemon answers the header list just over max_header_size itself and counts it as
    # HTTP/1.1's 431s are counted; the one far over it ends the connection in hyper's h2.
    counted = int(d.metric(m_rejected('431')))
    eq(counted, 1, 'wsechod_handshakes_rejected_total{status="431"}')
    ctx.note(f'wsechod_handshakes_rejected_total{{status="431"}} after the 431: {counted}')
    ctx.note(healthy(ctx, d, "huge headers"))


@case("continuation")
def case_continuation(ctx):
    d = ctx.daemon()
    results = []
    # Small CONTINUATION frames (a count limit must stop them) and full-size ones (a size
    # limit), each forever: the daemon must end them.
    for label, size in (("16-byte", 16), ("16 KiB", 16384)):
        r = ctx.raw(d)
        r.wait(lambda: r.settings, 5)
        t0 = time.monotonic()
        first = r.headers_block(r.connect_headers())
        r.send(frame(HEADERS, 0, 1, first))  # no END_HEADERS
        if size < 130:
            # Literal header fields without indexing, new name: 0x00, 1, "a", len, value.
            piece = b"\x00\x01a" + bytes([size - 4]) + b"b" * (size - 4)
        else:
            piece = b"\x00" * size  # anything: the block is not decoded before it ends
        frames_sent = 0
        bound = time.monotonic() + 20
        chunk = frame(CONTINUATION, 0, 1, piece) * 64
        while r.goaway is None and r.eof_at is None and time.monotonic() < bound:
            if not r.send(chunk):
                break
            frames_sent += 64
        goaway, eof = r.wait_end(END_BOUND_S)
        check(goaway or eof, f"{label} CONTINUATION flood not ended within 20 s")
        results.append(f"{label} CONTINUATION frames without end: {frames_sent} written "
                       f"({r.sent_bytes // 1024} KiB, most into socket buffers) before the "
                       f"client saw: {r.ending(t0)}")
        r.close()
    d.wait_metric("wsechod_http2_connections", 0)
    for line in results:
        ctx.note(line)
    ctx.note(healthy(ctx, d, "CONTINUATION floods"))


@case("window-update")
def case_window_update(ctx):
    d = ctx.daemon()
    # On the connection: 65535 + 2^31 - 1 overflows.
    r = ctx.raw(d)
    r.wait(lambda: r.settings, 5)
    t0 = time.monotonic()
    r.send(frame(WINDOW_UPDATE, 0, 0, struct.pack("!I", 2**31 - 1)))
    goaway, eof = r.wait_end(END_BOUND_S)
    check(goaway, f"no GOAWAY for a connection window overflow ({r.ending(t0)})")
    eq(code_name(goaway[1]), "FLOW_CONTROL_ERROR", "GOAWAY code for the connection overflow")
    ctx.note(f"connection WINDOW_UPDATE overflow: {r.ending(t0)}")
    # On an open WebSocket stream: RST_STREAM for that stream, the connection stays.
    c = ctx.client(d)
    victim, bystander = c.ws(), c.ws()
    t0 = time.monotonic()
    c.sock.sendall(frame(WINDOW_UPDATE, 0, victim.sid, struct.pack("!I", 2**31 - 1)))
    c.wait(lambda: victim.reset is not None or c.goaways, END_BOUND_S, "the stream's reset")
    eq(c.goaways, [], "GOAWAY for a stream window overflow")
    eq(code_name(victim.reset), "FLOW_CONTROL_ERROR", "RST_STREAM code for the stream overflow")
    took = time.monotonic() - t0
    bystander.echo(1, b"the other stream lives")
    d.wait_metric("wsechod_http2_streams", 1)
    ctx.note(f"stream WINDOW_UPDATE overflow: RST_STREAM {code_name(victim.reset)} after "
             f"{took:.3f} s; the other stream on the connection still echoes")
    # A zero increment on a stream is a stream error too (RFC 9113 6.9).
    victim2 = c.ws()
    c.sock.sendall(frame(WINDOW_UPDATE, 0, victim2.sid, struct.pack("!I", 0)))
    c.wait(lambda: victim2.reset is not None or c.goaways or c.closed, END_BOUND_S,
           "an answer to a zero increment")
    fate = (f"RST_STREAM {code_name(victim2.reset)}" if victim2.reset is not None else
            "; ".join(e[1] for e in c.events))
    check(victim2.reset is not None or c.goaways, "a zero increment is answered")
    ctx.note(f"stream WINDOW_UPDATE of 0: {fate}")
    c.close()
    d.wait_metric("wsechod_http2_connections", 0)
    ctx.note(healthy(ctx, d, "WINDOW_UPDATE abuse"))


@case("silent-stream")
def case_silent_stream(ctx):
    d = ctx.daemon(server={"handshake_timeout": "30s"}, **KEEPALIVE)
    r = ctx.raw(d)  # answers SETTINGS and HTTP/2 PINGs, never sends DATA nor reads it
    t0 = time.monotonic()
    r.send(frame(HEADERS, END_HEADERS, 1, r.headers_block(r.connect_headers())))
    r.wait(lambda: 1 in r.status, 5)
    eq(r.status.get(1), 200, "the silent stream's status")
    d.wait_metric("wsechod_http2_streams", 1)
    r.wait(lambda: 1 in r.rst or r.goaway or r.eof_at, 8)
    took = time.monotonic() - t0
    check(1 in r.rst, f"the silent stream was not reset: {r.ending(t0)}")
    d.wait_metric(m_aborted("pong_timeout"), 1)
    d.wait_metric("wsechod_http2_streams", 0)
    check(1.5 <= took < 4, f"ended {took:.2f} s after opening (ping 1 s + pong timeout 1 s)")
    data = sum(len(f[4]) for f in r.frames if f[1] == DATA and f[3] == 1)
    ctx.note(f"stream opened (200), no DATA ever: RST_STREAM {code_name(r.rst[1])} after "
             f"{took:.2f} s (it had received {data} B of WebSocket pings), counted pong_timeout; "
             f"connection {'still open' if not (r.goaway or r.eof_at) else r.ending(t0)}")
    ctx.note(healthy(ctx, d, "a silent stream"))


@case("garbage")
def case_garbage(ctx):
    d = ctx.daemon()
    tries = [
        ("random bytes right after the preface", PREFACE + os.urandom(64), False),
        ("a frame of length 16 MiB - 1 after SETTINGS",
         frame(SETTINGS, 0, 0) + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + os.urandom(1024), True),
        ("a DATA frame on stream 0", frame(SETTINGS, 0, 0) + frame(DATA, 0, 0, b"x" * 10), True),
        ("1 MiB of random bytes after SETTINGS", frame(SETTINGS, 0, 0) + os.urandom(1 << 20), True),
    ]
    for label, data, after_preface in tries:
        r = ctx.raw(d, preface=False)
        t0 = time.monotonic()
        r.send((PREFACE if after_preface else b"") + data)
        goaway, eof = r.wait_end(END_BOUND_S)
        check(goaway or eof, f"{label}: still open after {END_BOUND_S} s")
        if goaway:
            r.wait(lambda: r.eof_at, END_BOUND_S)
        ctx.note(f"{label}: {r.ending(t0)}")
        r.close()
    d.wait_metric("wsechod_http2_connections", 0)
    ctx.note(healthy(ctx, d, "garbage"))


def http1(addr, request, read_until=b"\r\n\r\n", timeout=5):
    """Sends raw bytes, returns what came back up to the end of the head (or EOF)."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(request)
        got = b""
        while read_until not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return s, got


@case("http1")
def case_http1(ctx):
    d = ctx.daemon()
    host, port = d.addr
    with socket.create_connection(d.addr, timeout=5) as s:
        s.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            b = s.recv(1)
            check(b, f"EOF in the upgrade answer: {head!r}")
            head += b
        check(head.startswith(b"HTTP/1.1 101"), f"HTTP/1.1 upgrade: {head[:40]!r}")
        check(b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head, "Sec-WebSocket-Accept")
        msg = "HTTP/1.1 on the h2c port 그대로".encode()
        s.sendall(ws_frame(1, msg))
        buf = bytearray()
        deadline = time.monotonic() + 5
        while (f := parse_frame(buf)) is None and time.monotonic() < deadline:
            buf += s.recv(4096)
        check(f is not None and f[2] == 1 and f[3] == msg, f"HTTP/1.1 echo: {f}")
        s.sendall(ws_frame(8, close_payload(1000)))
    eq(d.metric(m_handshakes("1.1")), 1, "handshakes_total{http=1.1}")
    eq(d.metric("wsechod_http2_connections_total"), 0, "http2_connections_total")
    ctx.note("HTTP/1.1 upgrade on the same port: 101 and an exact echo")
    for req in [b"PRI * HTTP/1.1\r\nHost: x\r\n\r\n", b"PRI /ws HTTP/1.1\r\nHost: x\r\n\r\n",
                b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"]:
        _, got = http1(d.addr, req)
        first = got.split(b"\r\n", 1)[0]
        check(first.startswith(b"HTTP/1.1 "), f"{req!r} got {got[:60]!r}, not an HTTP/1.1 answer")
        ctx.note(f"{req.decode().splitlines()[0]!r}...: {first.decode()}")
    # The preface's first 18 bytes, then (after the server has had time to read them) bytes
    # that differ: the sniffer must wait for all 24 before it decides.
    with socket.create_connection(d.addr, timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(PREFACE[:18])
        time.sleep(0.2)  # pacing, not a wait for an event: the two parts arrive apart
        s.sendall(b"XX\r\n\r\n")
        got = b""
        while b"\r\n" not in got and (chunk := s.recv(4096)):
            got += chunk
        check(got.startswith(b"HTTP/1.1 "), f"near-preface in two parts got {got[:40]!r}")
        first = got.split(b"\r\n")[0].decode()
        ctx.note(f"'PRI * HTTP/2.0\\r\\n\\r\\n' then 'XX\\r\\n\\r\\n' 0.2 s later: {first}")
    eq(d.metric("wsechod_http2_connections_total"), 0, "http2_connections_total after PRI requests")
    # The preface itself, one byte at a time: still HTTP/2.
    with socket.create_connection(d.addr, timeout=5) as s:
        for b in PREFACE:
            s.sendall(bytes([b]))
        s.sendall(frame(SETTINGS, 0, 0))
        got = s.recv(9)
        eq(got[3] if len(got) == 9 else None, SETTINGS, "the answer to a byte-by-byte preface")
    d.wait_metric("wsechod_http2_connections_total", 1)
    ctx.note("the preface sent byte by byte: HTTP/2 SETTINGS back")


# ---------------------------------------------------------------------------------------------


class CaseTimeout(Exception):
    pass


def on_alarm(signum, frm):
    raise CaseTimeout(f"case still running after {CASE_LIMIT_S} s")


def main(argv):
    if "--list" in argv:
        for name, _ in CASES:
            print(name)
        return 0
    names = [a for a in argv if not a.startswith("-")]
    unknown = set(names) - {n for n, _ in CASES}
    if unknown:
        print(f"unknown cases: {sorted(unknown)}; --list names them", file=sys.stderr)
        return 2
    if not WSECHOD.exists():
        print(f"{WSECHOD} missing: cargo build --release --locked", file=sys.stderr)
        return 2
    signal.signal(signal.SIGALRM, on_alarm)
    passed, failed, failures = 0, 0, []
    started = time.monotonic()
    keep = os.environ.get("HTTP2_KEEP_TMP")
    for name, fn in CASES:
        if names and name not in names:
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f"wsechod-http2-{name}-"))
        ctx = Ctx(tmp)
        log(f"--- {name}")
        t0 = time.monotonic()
        ok = False
        try:
            signal.alarm(CASE_LIMIT_S)
            fn(ctx)
            ok = True
        except (Failed, CaseTimeout) as e:
            log(f"    FAIL: {e}")
        except Exception:  # noqa: BLE001 - a broken case is a failed case
            log("    FAIL: " + traceback.format_exc().rstrip().replace("\n", "\n    "))
        finally:
            signal.alarm(0)
            if not ok:
                for p in ctx.procs:
                    log(p.tail())
            ctx.cleanup()
            if not keep:
                shutil.rmtree(tmp, ignore_errors=True)
        took = time.monotonic() - t0
        if ok:
            passed += 1
            log(f"ok   {name} ({took:.1f} s)")
        else:
            failed += 1
            failures.append(name)
            log(f"FAIL {name} ({took:.1f} s)")
    log(f"\n{time.monotonic() - started:.0f} s" + (f"; failed: {' '.join(failures)}" if failures else ""))
    log(f"http2: {passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
