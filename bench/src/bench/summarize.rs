//! `wsechod-bench summarize FILE`: the Markdown tables of run.sh, from RESULT lines labelled
//! `scenario=...` and `server=...` (and optionally `desc=...`).

use std::path::PathBuf;

use clap::Args;
use serde_json::{Map, Value};

#[derive(Args)]
pub struct SummarizeArgs {
    /// A file holding RESULT lines (other lines are ignored).
    pub file: PathBuf,
    /// The server the others are compared with.
    #[arg(long, default_value = "tcp-echo")]
    pub baseline: String,
    /// Fail (exit 2) if the median idle RSS per connection of --check-server is above this.
    #[arg(long)]
    pub max_idle_kib: Option<f64>,
    /// The server whose idle memory --max-idle-kib checks.
    #[arg(long, default_value = "wsechod")]
    pub check_server: String,
}

struct Row {
    scenario: String,
    desc: String,
    server: String,
    fields: Map<String, Value>,
}

fn text(fields: &Map<String, Value>, key: &str) -> Option<String> {
    match fields.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        v => Some(v.to_string()),
    }
}

fn num(fields: &Map<String, Value>, key: &str) -> Option<f64> {
    fields.get(key)?.as_f64()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The figure compared per mode: server CPU per unit of work, or memory per connection.
fn metric(mode: &str) -> (&'static str, &'static str) {
    match mode {
        "echo" => ("server_cpu_us_per_msg", "server CPU µs / message"),
        "handshake" => ("server_cpu_us_per_handshake", "server CPU µs / handshake"),
        "idle" => ("rss_per_conn_kib", "server RSS KiB / idle connection"),
        _ => ("", "?"),
    }
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn rate(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 1e6 => format!("{:.2}M", v / 1e6),
        Some(v) if v >= 1e3 => format!("{:.1}k", v / 1e3),
        Some(v) => format!("{v:.0}"),
    }
}

pub fn run(args: &SummarizeArgs) -> i32 {
    let content = match std::fs::read_to_string(&args.file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("summarize: {}: {e}", args.file.display());
            return 1;
        }
    };
    let mut rows = Vec::new();
    for line in content.lines() {
        let Some(json) = line.strip_prefix("RESULT ") else {
            continue;
        };
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(json) else {
            eprintln!("summarize: cannot parse {line}");
            continue;
        };
        let mode = text(&fields, "mode").unwrap_or_default();
        rows.push(Row {
            scenario: text(&fields, "scenario").unwrap_or(mode),
            desc: text(&fields, "desc").unwrap_or_default(),
            server: text(&fields, "server")
                .or_else(|| text(&fields, "url"))
                .unwrap_or_default(),
            fields,
        });
    }
    if rows.is_empty() {
        eprintln!("summarize: no RESULT lines in {}", args.file.display());
        return 1;
    }
    let mut scenarios: Vec<String> = Vec::new();
    let mut servers: Vec<String> = Vec::new();
    for r in &rows {
        if !scenarios.contains(&r.scenario) {
            scenarios.push(r.scenario.clone());
        }
        if !servers.contains(&r.server) {
            servers.push(r.server.clone());
        }
    }
    // Baseline first, the others in order of appearance.
    if let Some(i) = servers.iter().position(|s| *s == args.baseline) {
        let b = servers.remove(i);
        servers.insert(0, b);
    }
    let has_baseline = servers.first() == Some(&args.baseline);
    let pick = |scenario: &str, server: &str| -> Vec<&Row> {
        rows.iter()
            .filter(|r| r.scenario == scenario && r.server == server)
            .collect()
    };
    let med =
        |rs: &[&Row], key: &str| median(rs.iter().filter_map(|r| num(&r.fields, key)).collect());

    // Table 1: the server-side cost, and its ratio to the baseline.
    let mut head = String::from("| scenario | median of | ");
    let mut rule = String::from("|---|---|");
    for (i, s) in servers.iter().enumerate() {
        head.push_str(&format!("{s} | "));
        rule.push_str("---:|");
        if has_baseline && i > 0 {
            head.push_str(&format!("{s} ÷ {} | ", args.baseline));
            rule.push_str("---:|");
        }
    }
    println!("{}", head.trim_end());
    println!("{rule}");
    let mut notes = Vec::new();
    for sc in &scenarios {
        let first = rows
            .iter()
            .find(|r| &r.scenario == sc)
            .expect("scenario has rows");
        let mode = text(&first.fields, "mode").unwrap_or_default();
        let (key, label) = metric(&mode);
        let name = if first.desc.is_empty() {
            sc.clone()
        } else {
            format!("{sc}: {}", first.desc)
        };
        let mut line = format!("| {name} | {label} | ");
        let base = has_baseline
            .then(|| med(&pick(sc, &args.baseline), key))
            .flatten();
        for (i, s) in servers.iter().enumerate() {
            let rs = pick(sc, s);
            let v = med(&rs, key);
            line.push_str(&format!("{} | ", fmt(v)));
            if has_baseline && i > 0 {
                let ratio = match (v, base) {
                    (Some(v), Some(b)) if b > 0.0 => format!("{v_b:.2}×", v_b = v / b),
                    _ => "–".into(),
                };
                line.push_str(&format!("{ratio} | "));
            }
            let errors: f64 = rs.iter().filter_map(|r| num(&r.fields, "errors")).sum();
            if errors > 0.0 {
                notes.push(format!("{sc} / {s}: {errors} errors in {} runs", rs.len()));
            }
            let busy = rs
                .iter()
                .filter(|r| num(&r.fields, "other_cpu_pct").is_some_and(|o| o > 10.0))
                .count();
            if busy > 0 {
                notes.push(format!(
                    "{sc} / {s}: other processes used over 10% CPU in {busy} of {} runs (figures disturbed)",
                    rs.len()
                ));
            }
            let bound = rs
                .iter()
                .filter(|r| r.fields.get("client_bound") == Some(&Value::Bool(true)))
                .count();
            if bound > 0 {
                notes.push(format!(
                    "{sc} / {s}: the load generator was busier than the server in {bound} of {} runs",
                    rs.len()
                ));
            }
        }
        println!("{}", line.trim_end());
    }

    // Table 2: what the client saw, for context.
    println!();
    let mut head = String::from("| scenario | ");
    let mut rule = String::from("|---|");
    for s in &servers {
        head.push_str(&format!("{s} | "));
        rule.push_str("---:|");
    }
    println!("{}", head.trim_end());
    println!("{rule}");
    for sc in &scenarios {
        let mut line = format!("| {sc} | ");
        for s in &servers {
            let rs = pick(sc, s);
            let mode = rs
                .first()
                .and_then(|r| text(&r.fields, "mode"))
                .unwrap_or_default();
            let cpu = med(&rs, "server_cpu_pct")
                .map_or(String::new(), |c| format!(", server CPU {c:.0}%"));
            let cell = match mode.as_str() {
                "echo" => format!(
                    "{} msg/s, {} MB/s, p50/p99/p99.9 {}/{}/{} µs{cpu}",
                    rate(med(&rs, "msgs_per_s")),
                    fmt(med(&rs, "mb_per_s")),
                    fmt(med(&rs, "lat_p50_us")),
                    fmt(med(&rs, "lat_p99_us")),
                    fmt(med(&rs, "lat_p999_us")),
                ),
                "handshake" => format!(
                    "{} handshakes/s, p50/p99 {}/{} µs{cpu}",
                    rate(med(&rs, "handshakes_per_s")),
                    fmt(med(&rs, "lat_p50_us")),
                    fmt(med(&rs, "lat_p99_us")),
                ),
                "idle" => format!(
                    "{} open in {} s, RSS {} → {} MiB",
                    rate(med(&rs, "opened")),
                    fmt(med(&rs, "open_s")),
                    fmt(med(&rs, "rss_before_kib").map(|k| k / 1024.0)),
                    fmt(med(&rs, "rss_open_kib").map(|k| k / 1024.0)),
                ),
                _ => "–".into(),
            };
            line.push_str(&format!("{cell} | "));
        }
        println!("{}", line.trim_end());
    }
    let runs = scenarios
        .iter()
        .flat_map(|sc| servers.iter().map(|s| pick(sc, s).len()))
        .max()
        .unwrap_or(0);
    println!();
    if has_baseline && servers.len() > 1 {
        println!(
            "Medians of up to {runs} runs per cell; ratios are to {}.",
            args.baseline
        );
    } else {
        println!("Medians of up to {runs} runs per cell.");
    }
    for n in &notes {
        println!("- {n}");
    }

    if let Some(max) = args.max_idle_kib {
        let idle: Vec<&Row> = rows
            .iter()
            .filter(|r| {
                // Plain idle connections: not HTTP/2 streams, no compression, no first echo.
                r.server == args.check_server
                    && text(&r.fields, "mode").as_deref() == Some("idle")
                    && text(&r.fields, "http").as_deref() != Some("2")
                    && r.fields.get("deflate") != Some(&Value::Bool(true))
                    && text(&r.fields, "echo_first").is_none()
            })
            .collect();
        match med(&idle, "rss_per_conn_kib") {
            None => {
                println!(
                    "idle memory check: no idle result for {}",
                    args.check_server
                );
                return 2;
            }
            Some(v) if v > max => {
                println!(
                    "idle memory check FAILED: {} uses {v:.2} KiB per idle connection, more than {max} KiB",
                    args.check_server
                );
                return 2;
            }
            Some(v) => println!(
                "idle memory check passed: {} uses {v:.2} KiB per idle connection (at most {max} KiB)",
                args.check_server
            ),
        }
    }
    0
}
