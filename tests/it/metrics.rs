//! `/metrics`, `/healthz`, `/readyz`: the six states add up, promtool is happy, and a real
//! Prometheus scrapes us.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::util::{Daemon, TIMEOUT, daemon, echo, metric_value};

async fn live(d: &Daemon) -> [f64; 4] {
    let text = d.scrape().await;
    ["connecting", "open", "close_sent", "close_received"]
        .map(|s| metric_value(&text, &format!("wsechod_connections{{state=\"{s}\"}}")))
}

#[tokio::test]
async fn endpoints_and_content_type() {
    let d = daemon().start().await;
    let (status, text) = d.metrics_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{text}"
    );
    assert_eq!(d.metrics_get("/healthz").await.0, 200);
    assert_eq!(d.metrics_get("/readyz").await.0, 200);
    assert_eq!(d.metrics_get("/other").await.0, 404);
    let text = d.scrape().await;
    for name in [
        "wsechod_build_info{version=\"",
        "process_resident_memory_bytes ",
        "wsechod_config_reloads_total{result=\"success\"} 0",
        "wsechod_config_last_reload_successful 1",
        "wsechod_message_size_bytes_bucket",
        "wsechod_connection_duration_seconds_bucket",
        "wsechod_pings_received_total 0",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
}

#[tokio::test]
async fn states_and_counters_add_up() {
    let d = daemon().start().await;
    const N: usize = 12;
    let mut conns = Vec::new();
    for _ in 0..N {
        conns.push(d.connect().await);
    }
    assert_eq!(live(&d).await, [0.0, N as f64, 0.0, 0.0]);

    // Traffic with known sizes: each connection sends one text (5 B) and one binary (3 B).
    for ws in &mut conns {
        echo(ws, Message::text("hello")).await;
        echo(ws, Message::binary(vec![1u8, 2, 3])).await;
    }
    // Close four cleanly, drop four without a close frame, keep four.
    let mut kept = conns.split_off(8);
    let dropped = conns.split_off(4);
    for mut ws in conns {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    drop(dropped);
    d.wait_metric("wsechod_connections{state=\"open\"}", 4.0)
        .await;
    d.wait_metric("wsechod_connections_ended_total{state=\"closed\"}", 4.0)
        .await;
    d.wait_metric("wsechod_connections_ended_total{state=\"aborted\"}", 4.0)
        .await;

    let text = d.scrape().await;
    let v = |s: &str| metric_value(&text, s);
    let accepted = v("wsechod_connections_accepted_total");
    let closed = v("wsechod_connections_ended_total{state=\"closed\"}");
    let aborted = v("wsechod_connections_ended_total{state=\"aborted\"}");
    assert_eq!(
        accepted,
        closed + aborted + live(&d).await.iter().sum::<f64>()
    );
    assert_eq!(
        v("wsechod_connections_aborted_total{reason=\"reset\"}"),
        4.0
    );
    assert_eq!(
        v("wsechod_messages_received_total{type=\"text\"}"),
        N as f64
    );
    assert_eq!(
        v("wsechod_messages_received_total{type=\"binary\"}"),
        N as f64
    );
    assert_eq!(v("wsechod_messages_sent_total{type=\"text\"}"), N as f64);
    assert_eq!(
        v("wsechod_received_bytes_total{type=\"text\"}"),
        5.0 * N as f64
    );
    assert_eq!(
        v("wsechod_received_bytes_total{type=\"binary\"}"),
        3.0 * N as f64
    );
    assert_eq!(
        v("wsechod_sent_bytes_total{type=\"binary\"}"),
        3.0 * N as f64
    );
    assert_eq!(v("wsechod_close_frames_received_total{code=\"none\"}"), 4.0);
    assert_eq!(v("wsechod_message_size_bytes_count"), 2.0 * N as f64);

    for mut ws in kept.drain(..) {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    d.wait_metric("wsechod_connections{state=\"open\"}", 0.0)
        .await;
    assert_eq!(live(&d).await, [0.0; 4]);
}

/// Installed by the test command (Debian's `prometheus` package).
fn require(tool: &str) -> String {
    let path = format!("/usr/bin/{tool}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: run the README test command, which installs it"
    );
    path
}

#[tokio::test]
async fn promtool_finds_nothing_to_complain_about() {
    let d = daemon().start().await;
    let mut ws = d.connect().await;
    echo(&mut ws, Message::text("x")).await;
    let text = d.scrape().await;
    let body = text.split("\r\n\r\n").nth(1).unwrap().to_string();
    let mut child = Command::new(require("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Prometheus {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: wsechod\n    static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(require("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The value of an instant query, if it has exactly one sample.
    async fn query(&self, expr: &str) -> Option<f64> {
        let addr = self.addr.parse().unwrap();
        let path = format!("/api/v1/query?query={}", urlencode(expr));
        let text = tokio::time::timeout(
            Duration::from_secs(2),
            crate::util::try_http_get(addr, &path),
        )
        .await
        .ok()??;
        let body = text.split("\r\n\r\n").nth(1)?;
        // {"status":"success","data":{"resultType":"vector","result":[{"metric":{..},"value":[t,"3"]}]}}
        let mut samples = body.split("\"value\":[").skip(1);
        let sample = samples.next()?;
        if samples.next().is_some() {
            return None;
        }
        let v = sample.split_once(",\"")?.1.split('"').next()?;
        v.parse().ok()
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_real_prometheus_sees_the_open_connections() {
    let d = daemon().start().await;
    let prom = Prometheus::start(d.metrics_addr());
    const N: usize = 7;
    let mut conns = Vec::new();
    for _ in 0..N {
        conns.push(d.connect().await);
    }
    for ws in &mut conns {
        ws.send(Message::text("hi")).await.unwrap();
    }
    // Prometheus 2.42 applies new targets on a 5 s tick; allow for that plus scrapes.
    let deadline = Instant::now() + TIMEOUT + Duration::from_secs(10);
    let expr = "wsechod_connections{state=\"open\"}";
    loop {
        if prom.query(expr).await == Some(N as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw {N} open connections"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(prom.query("up{job=\"wsechod\"}").await, Some(1.0));
}

#[tokio::test]
async fn metrics_can_be_switched_off() {
    let d = daemon()
        .env("WSECHOD_METRICS__ENABLED", "false")
        .start()
        .await;
    let ready = d
        .messages
        .iter()
        .find(|m| m.contains("READY=1"))
        .expect("READY=1");
    assert!(
        ready.contains("ws://") && !ready.contains("http://"),
        "no metrics listener: {ready}"
    );
    let mut ws = d.connect().await;
    echo(&mut ws, Message::text("still echoing")).await;
}
