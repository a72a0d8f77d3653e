//! Handshake mode: C workers, each in a loop: connect, upgrade, close handshake (client sends
//! Close 1000, waits for the server's Close and for the server to close TCP). For tcp:// a
//! round is connect, one small echo (the same 8 bytes as the Close frame), close.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::HandshakeArgs;
use crate::proc::{Window, sample_at, secs};
use crate::report::{Errors, Report, latency_fields, nanos};
use crate::target::{CLOSE, Kind, MASK, Target, bad, frame};

struct Plan {
    target: Target,
    close_sent: Vec<u8>,
    close_expected: Vec<u8>,
    timeout: Duration,
    workers: usize,
    measure_from: Instant,
    end: Instant,
}

#[derive(Default)]
struct WorkerResult {
    handshakes: u64,
    latencies: Vec<u32>,
    errors: Errors,
}

pub async fn run(args: &HandshakeArgs) -> Result<Report, String> {
    let common = &args.common;
    let source_ips = if common.source_ips == 0 {
        16
    } else {
        common.source_ips
    };
    if common.http2 {
        return Err(
            "handshake mode measures HTTP/1.1 upgrades; --http2 is for echo and idle".into(),
        );
    }
    let target = Target::parse(&common.url, source_ips, common.deflate)?;
    if common.conns == 0 {
        return Err("--conns must be at least 1".into());
    }
    let code = 1000u16.to_be_bytes();
    let close_sent = frame(CLOSE, &code, Some(MASK));
    let close_expected = target.reply_for(CLOSE, &code);
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + secs(args.warmup);
    let end = measure_from + secs(args.duration);
    let plan = Arc::new(Plan {
        target,
        close_sent,
        close_expected,
        timeout: common.timeout(),
        workers: common.conns,
        measure_from,
        end,
    });
    let sampler = sample_at(common.server_pid, vec![measure_from, end]);
    let workers: Vec<_> = (0..common.conns)
        .map(|i| tokio::spawn(worker(i, start, plan.clone())))
        .collect();
    let mut handshakes = 0u64;
    let mut latencies = Vec::new();
    let mut errors = Errors::default();
    for w in workers {
        match w.await {
            Ok(r) => {
                handshakes += r.handshakes;
                latencies.extend_from_slice(&r.latencies);
                errors.merge(r.errors);
            }
            Err(e) => errors.add(format!("worker: {e}")),
        }
    }
    let samples = sampler.join().map_err(|_| "sampling thread panicked")?;
    let window = Window::between(&samples[0], &samples[1]);

    let mut report = Report::new("handshake", common, &plan.target);
    report.set("warmup_s", args.warmup);
    report.set("duration_s", args.duration);
    report.set("handshakes", handshakes);
    let rate = handshakes as f64 / args.duration.max(1e-9);
    report.set("handshakes_per_s", crate::report::round(rate, 1));
    let lat = latency_fields(&mut report, latencies);
    errors.report(&mut report);
    let cpu = report.cpu(common, &window, Some((handshakes, "handshake")));
    report.human = format!(
        "handshake {} c={}: {rate:.0} handshakes/s, {lat}, {} errors; {cpu}",
        plan.target.url, common.conns, errors.count
    );
    Ok(report)
}

async fn worker(id: usize, start: Instant, plan: Arc<Plan>) -> WorkerResult {
    let mut result = WorkerResult::default();
    tokio::time::sleep_until(start.into()).await;
    let mut round = 0usize;
    loop {
        let began = Instant::now();
        if began >= plan.end {
            return result;
        }
        // Consecutive rounds of one worker use different source addresses.
        let source = id + round * plan.workers;
        round += 1;
        let outcome = tokio::time::timeout(plan.timeout, once(&plan, source)).await;
        let done = Instant::now();
        let counted = done >= plan.measure_from && done < plan.end;
        match outcome {
            Ok(Ok(())) if counted => {
                result.handshakes += 1;
                result.latencies.push(nanos(done - began));
            }
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if counted {
                    result.errors.add(e);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {
                if counted {
                    result.errors.add("handshake round timed out");
                }
            }
        }
    }
}

async fn once(plan: &Plan, source: usize) -> std::io::Result<()> {
    let target = &plan.target;
    let mut s = target.connect(source).await?;
    let mut got = target.upgrade(&mut s).await?;
    s.write_all(&plan.close_sent).await?;
    let mut buf = [0u8; 64];
    while got.len() < plan.close_expected.len() {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(bad("closed before the echo / Close frame"));
        }
        got.extend_from_slice(&buf[..n]);
    }
    if got != plan.close_expected {
        return Err(bad(format!("unexpected reply {got:02x?}")));
    }
    if target.kind == Kind::Ws {
        // The server closes the TCP connection first (RFC 6455 section 7.1.1).
        if s.read(&mut buf).await? != 0 {
            return Err(bad("data after the Close frame"));
        }
    }
    Ok(())
}
