//! The output: one line for people, one `RESULT {json}` line for scripts.

use serde_json::{Map, Value, json};

use crate::Common;
use crate::proc::{Window, clk_tck, rss_kib};
use crate::target::{Kind, Target};

pub struct Report {
    pub human: String,
    pub fields: Map<String, Value>,
    pub warnings: Vec<String>,
}

impl Report {
    /// The fields every mode reports.
    pub fn new(mode: &str, common: &Common, target: &Target) -> Report {
        let mut fields = Map::new();
        for (k, v) in &common.labels {
            fields.insert(k.clone(), json!(v));
        }
        fields.insert("mode".into(), json!(mode));
        fields.insert("url".into(), json!(target.url));
        fields.insert(
            "transport".into(),
            json!(match target.kind {
                Kind::Ws => "ws",
                Kind::Tcp => "tcp",
            }),
        );
        fields.insert("conns".into(), json!(common.conns));
        fields.insert("http".into(), json!(if common.http2 { "2" } else { "1.1" }));
        if let Some(tcp) = target.http2_tcp_conns() {
            fields.insert("tcp_conns".into(), json!(tcp));
            fields.insert("streams_per_conn".into(), json!(common.streams_per_conn));
        }
        fields.insert("source_ips".into(), json!(target.source_count()));
        fields.insert("client_threads".into(), json!(common.threads.max(1)));
        fields.insert("server_pid".into(), json!(common.server_pid));
        Report {
            human: String::new(),
            fields,
            warnings: Vec::new(),
        }
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.into(), value.into());
    }

    /// Server CPU over the window, per unit of work when `per` = (count, "msg" / "handshake"),
    /// our own CPU share, other processes' share, and the server's RSS now. Returns a short
    /// text for the human line.
    pub fn cpu(&mut self, common: &Common, window: &Window, per: Option<(u64, &str)>) -> String {
        let secs = window.secs.max(1e-9);
        let client_pct = 100.0 * window.self_cpu / secs;
        self.set("window_s", round(window.secs, 3));
        self.set("client_cpu_pct", round(client_pct, 1));
        let client = format!("client CPU {client_pct:.0}%");
        let Some(pid) = common.server_pid else {
            return client;
        };
        let mut parts = Vec::new();
        self.set("clk_tck", clk_tck());
        match window.server_cpu {
            Some(cpu) => {
                let pct = 100.0 * cpu / secs;
                self.set("server_cpu_s", round(cpu, 3));
                self.set("server_cpu_pct", round(pct, 1));
                match per {
                    Some((count, unit)) => {
                        let per_unit = (count > 0).then(|| 1e6 * cpu / count as f64);
                        self.set(
                            &format!("server_cpu_us_per_{unit}"),
                            per_unit.map(|v| round(v, 3)),
                        );
                        parts.push(format!(
                            "server CPU {pct:.0}% = {} µs/{unit}",
                            per_unit.map_or("-".into(), |v| format!("{v:.2}"))
                        ));
                        // A load generator using all its CPU while the server has some to
                        // spare measures itself as much as the server.
                        let bound = client_pct > 90.0 * common.threads.max(1) as f64 && pct < 90.0;
                        self.set("client_bound", bound);
                        if bound {
                            self.warnings.push(format!(
                                "the load generator may be the bottleneck: it used {client_pct:.0}% CPU, the server {pct:.0}%"
                            ));
                        }
                    }
                    None => parts.push(format!("server CPU {pct:.0}%")),
                }
            }
            None => self.warnings.push(format!("cannot read /proc/{pid}/stat")),
        }
        parts.push(client);
        // Only meaningful when the server's own time is known and taken out.
        if let Some(other) = window.other_cpu.filter(|_| window.server_cpu.is_some()) {
            let pct = 100.0 * other / secs;
            self.set("other_cpu_pct", round(pct, 1));
            parts.push(format!("other CPU {pct:.0}%"));
            if pct > 10.0 {
                self.warnings.push(format!(
                    "other processes used {pct:.0}% CPU during the measurement: the figures are disturbed"
                ));
            }
        }
        match rss_kib(pid) {
            Ok(rss) => {
                self.set("server_rss_kib", rss);
                parts.push(format!("server RSS {:.1} MiB", rss as f64 / 1024.0));
            }
            Err(e) => self.warnings.push(e),
        }
        parts.join(", ")
    }

    pub fn print(&self) {
        println!("{}", self.human);
        for w in &self.warnings {
            eprintln!("wsechod-bench: warning: {w}");
        }
        println!("RESULT {}", Value::Object(self.fields.clone()));
    }
}

pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// p50, p99, p99.9 and max of latencies in nanoseconds, in microseconds.
pub fn latency_fields(report: &mut Report, mut ns: Vec<u32>) -> String {
    if ns.is_empty() {
        for k in ["lat_p50_us", "lat_p99_us", "lat_p999_us", "lat_max_us"] {
            report.set(k, Value::Null);
        }
        return "no latencies".into();
    }
    ns.sort_unstable();
    let at = |q: f64| {
        let i = ((q * ns.len() as f64).ceil() as usize).clamp(1, ns.len()) - 1;
        ns[i] as f64 / 1000.0
    };
    let (p50, p99, p999, max) = (at(0.5), at(0.99), at(0.999), at(1.0));
    report.set("lat_p50_us", round(p50, 1));
    report.set("lat_p99_us", round(p99, 1));
    report.set("lat_p999_us", round(p999, 1));
    report.set("lat_max_us", round(max, 1));
    format!("latency p50 {p50:.0} µs, p99 {p99:.0} µs, p99.9 {p999:.0} µs")
}

/// Nanoseconds as u32, saturating at about 4.3 s.
pub fn nanos(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
}

/// Keeps the first few distinct error messages, and a count of all.
#[derive(Default)]
pub struct Errors {
    pub count: u64,
    pub samples: Vec<String>,
}

impl Errors {
    pub fn add(&mut self, e: impl std::fmt::Display) {
        self.count += 1;
        let text = e.to_string();
        if self.samples.len() < 5 && !self.samples.contains(&text) {
            self.samples.push(text);
        }
    }

    pub fn merge(&mut self, other: Errors) {
        self.count += other.count;
        for s in other.samples {
            if self.samples.len() < 5 && !self.samples.contains(&s) {
                self.samples.push(s);
            }
        }
    }

    pub fn report(&self, report: &mut Report) {
        report.set("errors", self.count);
        if !self.samples.is_empty() {
            report.set("error_samples", json!(self.samples));
            report.warnings.push(format!(
                "{} errors, e.g. {}",
                self.count,
                self.samples.join("; ")
            ));
        }
    }
}
