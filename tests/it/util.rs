//! Test harness: runs the real `wsechod` binary with a temporary config, its own notify
//! socket and port 0, waits for READY=1 (never sleeps), and prints the daemon's stderr when
//! a test fails.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::{TcpStream, UnixDatagram};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// Upper bound on every wait in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub type Ws = WebSocketStream<TcpStream>;

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_wsechod")
}

/// How to start a daemon.
pub struct Builder {
    config: String,
    env: Vec<(String, String)>,
    notify: bool,
    command: Option<Command>,
}

impl Builder {
    pub fn config(mut self, toml: &str) -> Self {
        self.config = toml.to_string();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs this command instead of the binary (it must exec the binary).
    pub fn command(mut self, cmd: Command) -> Self {
        self.command = Some(cmd);
        self
    }

    /// Starts the daemon and waits for READY=1.
    pub async fn start(self) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("wsechod.toml");
        std::fs::write(&config_path, &self.config).unwrap();
        let notify_path = dir.path().join("notify.sock");
        // Read at once and always, so that the daemon's queue never fills (it drops what
        // does not fit) and no message is lost between the test's waits.
        let notify = if self.notify {
            let sock = UnixDatagram::bind(&notify_path).unwrap();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = sock.recv(&mut buf).await {
                    if tx
                        .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            });
            Some(rx)
        } else {
            None
        };
        let mut cmd = self.command.unwrap_or_else(|| Command::new(binary()));
        cmd.arg("-c")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .env("WSECHOD_SERVER__LISTEN", "127.0.0.1:0")
            .env("WSECHOD_METRICS__LISTEN", "127.0.0.1:0")
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start wsechod");
        let stderr = Arc::new(Mutex::new(String::new()));
        collect(child.stderr.take().unwrap(), stderr.clone());
        let mut d = Daemon {
            child,
            stderr,
            notify,
            messages: Vec::new(),
            ws: None,
            metrics: None,
            config_path,
            _dir: dir,
        };
        if d.notify.is_some() {
            d.wait_for_notify("READY=1").await;
            let status = d
                .messages
                .iter()
                .rev()
                .find_map(|m| m.lines().find_map(|l| l.strip_prefix("STATUS=")))
                .expect("STATUS with READY=1")
                .to_string();
            d.ws = find_addr(&status, "ws://").or_else(|| find_addr(&status, "wss://"));
            d.metrics = find_addr(&status, "http://");
        }
        d
    }
}

fn find_addr(status: &str, scheme: &str) -> Option<SocketAddr> {
    let rest = &status[status.find(scheme)? + scheme.len()..];
    let end = rest.find('/')?;
    rest[..end].parse().ok()
}

fn collect(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

pub fn daemon() -> Builder {
    Builder {
        config: String::new(),
        env: Vec::new(),
        notify: true,
        command: None,
    }
}

/// A running daemon. Killed on drop; its stderr is printed if the test failed.
pub struct Daemon {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
    notify: Option<tokio::sync::mpsc::UnboundedReceiver<String>>,
    /// Every notify datagram received so far, in order.
    pub messages: Vec<String>,
    ws: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws.expect("a WebSocket address in STATUS")
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr())
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.expect("a metrics address in STATUS")
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded) until stderr contains `needle`: the pipe is read by a thread, so
    /// what the daemon printed may arrive a moment after the event that follows it.
    pub async fn wait_stderr(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let log = self.stderr();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "stderr never showed {needle:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Receives notify datagrams until one has a line equal to `line`; returns it.
    pub async fn wait_for_notify(&mut self, line: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let rx = self.notify.as_mut().expect("notify socket");
            let msg = match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(m)) => m,
                _ => panic!(
                    "no {line} within {TIMEOUT:?}; got {:?}\nstderr:\n{}",
                    self.messages,
                    self.stderr()
                ),
            };
            self.messages.push(msg.clone());
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
    }

    /// Datagrams that arrive within `window`.
    pub async fn notifications_for(&mut self, window: Duration) -> Vec<String> {
        let rx = self.notify.as_mut().expect("notify socket");
        let deadline = tokio::time::Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            out.push(m);
        }
        self.messages.extend(out.iter().cloned());
        out
    }

    /// Takes every datagram received so far into `messages`.
    pub fn collect_notifications(&mut self) {
        if let Some(rx) = self.notify.as_mut() {
            while let Ok(m) = rx.try_recv() {
                self.messages.push(m);
            }
        }
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "wsechod did not exit within {limit:?}\nstderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub async fn connect(&self) -> Ws {
        connect(&self.url()).await
    }

    /// GET of a path on the metrics listener: (status, headers+body text).
    pub async fn metrics_get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_addr(), path, &[]).await
    }

    /// The text of `/metrics`.
    pub async fn scrape(&self) -> String {
        let (status, text) = self.metrics_get("/metrics").await;
        assert_eq!(status, 200);
        text
    }

    /// The value of one series in `/metrics`, e.g. `wsechod_connections{state="open"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.scrape().await;
        metric_value(&text, series)
    }

    /// Polls `/metrics` until `series` equals `want` (bounded).
    pub async fn wait_metric(&self, series: &str, want: f64) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let got = self.metric(series).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} is {got}, want {want}\nstderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Rewrites the config file.
    pub fn write_config(&self, toml: &str) {
        std::fs::write(&self.config_path, toml).unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- wsechod stderr ----\n{}", self.stderr());
        }
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Runs the binary to completion with arguments and environment.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(binary());
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn write_temp(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(contents.as_bytes())
        .unwrap();
    p
}

pub async fn connect(url: &str) -> Ws {
    connect_from(None, url).await
}

/// Connects from a chosen local address (such as 127.0.0.2), or the default one.
pub async fn connect_from(source: Option<std::net::IpAddr>, url: &str) -> Ws {
    let addr: SocketAddr = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let tcp = match source {
        None => TcpStream::connect(addr).await.unwrap(),
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
            socket.connect(addr).await.unwrap()
        }
    };
    let (ws, resp) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(url, tcp))
        .await
        .expect("handshake timed out")
        .expect("handshake failed");
    assert_eq!(resp.status(), 101);
    ws
}

/// The next message, bounded by [`TIMEOUT`].
pub async fn recv(ws: &mut Ws) -> Message {
    tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .expect("no message in time")
        .expect("stream ended")
        .expect("read error")
}

/// Sends and expects the same message back (skipping the server's keepalive pings, which
/// tungstenite answers by itself).
pub async fn echo(ws: &mut Ws, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    let got = loop {
        match recv(ws).await {
            Message::Ping(_) => continue,
            m => break m,
        }
    };
    assert_eq!(got, msg);
}

/// A raw HTTP/1.1 exchange: (status, full response text).
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    http_raw(addr, req.as_bytes()).await
}

/// Headers of a valid upgrade request.
pub const UPGRADE: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// Like [`http_get`] but `None` instead of a panic when nothing listens yet.
pub async fn try_http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}
