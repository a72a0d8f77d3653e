//! Echo mode: C connections, each keeping K messages of M bytes in flight (a new one is sent
//! for every echo that comes back), for a warm-up and then a measured window.
//!
//! The reply to every message is known byte for byte in advance (the unmasked server frame,
//! or for a raw TCP echo the masked frame itself), so the client checks the incoming stream
//! with a plain compare against that pattern instead of parsing frames.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::EchoArgs;
use crate::conn::Conn;
use crate::proc::{Window, sample_at, secs};
use crate::report::{Errors, Report, latency_fields, nanos, round};
use crate::target::{BINARY, Kind, TEXT, bad, client_frame, inflate, json, payload, read_frame};

struct Plan {
    /// K copies of the client frame, back to back.
    batch: Vec<u8>,
    frame_len: usize,
    /// The bytes expected back for one message.
    reply: Vec<u8>,
    inflight: usize,
    verify: bool,
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

#[derive(Default)]
struct ConnResult {
    /// Echoes completed inside the measured window.
    msgs: u64,
    /// Their round-trip times in nanoseconds.
    latencies: Vec<u32>,
    errors: Errors,
}

pub async fn run(args: &EchoArgs) -> Result<Report, String> {
    let common = &args.common;
    let source_ips = if common.source_ips == 0 {
        1
    } else {
        common.source_ips
    };
    let target = Arc::new(common.target(source_ips)?);
    if args.inflight == 0 || common.conns == 0 {
        return Err("--conns and --inflight must be at least 1".into());
    }
    let opcode = if args.text { TEXT } else { BINARY };
    let body = if args.json {
        json(args.size)
    } else {
        payload(args.size, args.text)
    };
    let client_frame = client_frame(opcode, &body, target.deflate);

    // Connect and upgrade every connection before the clock starts.
    let connect_started = Instant::now();
    let gate = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let timeout = common.timeout();
    let mut connecting = Vec::with_capacity(common.conns);
    for i in 0..common.conns {
        let (target, gate) = (target.clone(), gate.clone());
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            tokio::time::timeout(timeout, target.open(i))
                .await
                .map_err(|_| "connect/upgrade timed out".to_string())?
                .map_err(|e| e.to_string())
        }));
    }
    let mut streams = Vec::with_capacity(common.conns);
    let mut errors = Errors::default();
    for c in connecting {
        match c.await {
            Ok(Ok(s)) => streams.push(s),
            Ok(Err(e)) => errors.add(format!("connect: {e}")),
            Err(e) => errors.add(format!("connect: {e}")),
        }
    }
    if streams.is_empty() {
        return Err(format!(
            "no connection to {} could be opened: {}",
            target.url,
            errors.samples.join("; ")
        ));
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    // The reply to every message is the same bytes. Compressed by the server, learn them
    // from one echo (checked by inflating it); else they are known in advance.
    let reply = if target.deflate && target.kind == Kind::Ws {
        let (stream, pending) = &mut streams[0];
        learn_reply(stream, pending, &client_frame, opcode, &body, timeout).await?
    } else if target.deflate {
        client_frame.clone()
    } else {
        target.reply_for(opcode, &body)
    };

    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + secs(args.warmup);
    let end = measure_from + secs(args.duration);
    let plan = Arc::new(Plan {
        batch: client_frame.repeat(args.inflight),
        frame_len: client_frame.len(),
        reply,
        inflight: args.inflight,
        verify: !args.no_verify,
        start,
        measure_from,
        end,
    });
    let sampler = sample_at(common.server_pid, vec![measure_from, end]);
    let workers: Vec<_> = streams
        .into_iter()
        .map(|(s, rest)| tokio::spawn(connection(s, rest, plan.clone())))
        .collect();
    let mut msgs = 0u64;
    let mut latencies = Vec::new();
    for w in workers {
        match w.await {
            Ok(r) => {
                msgs += r.msgs;
                latencies.extend_from_slice(&r.latencies);
                errors.merge(r.errors);
            }
            Err(e) => errors.add(format!("worker: {e}")),
        }
    }
    let samples = sampler.join().map_err(|_| "sampling thread panicked")?;
    let window = Window::between(&samples[0], &samples[1]);

    let mut report = Report::new("echo", common, &target);
    report.set("inflight", args.inflight);
    report.set("size", args.size);
    report.set("message_type", if args.text { "text" } else { "binary" });
    report.set("warmup_s", args.warmup);
    report.set("duration_s", args.duration);
    report.set("connect_s", round(connect_secs, 3));
    report.set("frame_bytes_sent", client_frame.len());
    report.set("deflate", target.deflate);
    report.set("frame_bytes_received", plan.reply.len());
    report.set("msgs", msgs);
    let rate = msgs as f64 / args.duration.max(1e-9);
    let mbps = rate * args.size as f64 / 1e6;
    report.set("msgs_per_s", round(rate, 1));
    report.set("mb_per_s", round(mbps, 3));
    let lat = latency_fields(&mut report, latencies);
    errors.report(&mut report);
    let cpu = report.cpu(common, &window, Some((msgs, "msg")));
    report.human = format!(
        "echo {} c={} k={} {} B {}: {rate:.0} msg/s, {mbps:.1} MB/s, {lat}, {} errors; {cpu}",
        target.url,
        common.conns,
        args.inflight,
        args.size,
        if args.text { "text" } else { "binary" },
        errors.count,
    );
    Ok(report)
}

/// Sends one message and returns the server's frame for it, after checking that it carries
/// RSV1 and inflates to what was sent.
async fn learn_reply(
    stream: &mut Conn,
    pending: &mut Vec<u8>,
    client_frame: &[u8],
    opcode: u8,
    body: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    tokio::time::timeout(timeout, async {
        stream.write_all(client_frame).await?;
        let (b0, wire, payload) = read_frame(stream, pending).await?;
        if b0 != 0xc0 | opcode {
            return Err(bad(format!("echo frame starts {b0:#04x}, not compressed")));
        }
        if inflate(&payload)? != body {
            return Err(bad("the compressed echo does not inflate to what was sent"));
        }
        Ok(wire)
    })
    .await
    .map_err(|_| "no echo to learn the reply from".to_string())?
    .map_err(|e| format!("learning the reply: {e}"))
}

/// Drives one connection until the end of the window.
async fn connection(mut stream: Conn, leftover: Vec<u8>, plan: Arc<Plan>) -> ConnResult {
    let mut result = ConnResult::default();
    tokio::time::sleep_until(plan.start.into()).await;
    if let Err(e) = drive(&mut stream, leftover, &plan, &mut result).await {
        result.errors.add(e);
    }
    result
}

async fn drive(
    stream: &mut Conn,
    leftover: Vec<u8>,
    plan: &Plan,
    result: &mut ConnResult,
) -> Result<(), String> {
    let (mut rd, mut wr) = stream.split();
    let total = plan.batch.len();
    // Bytes of queued frames still to write; they are always a suffix of `batch`, since every
    // frame is the same.
    let mut unsent = total;
    // When each outstanding message was queued, oldest first.
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(plan.inflight);
    sent.extend(std::iter::repeat_n(Instant::now(), plan.inflight));
    // Position inside the reply being received.
    let mut at = 0usize;
    let mut buf = vec![0u8; (plan.reply.len() * plan.inflight).clamp(16 * 1024, 256 * 1024)];
    let deadline = tokio::time::sleep_until(plan.end.into());
    tokio::pin!(deadline);

    let mut take = |data: &[u8], now: Instant, unsent: &mut usize| -> Result<(), String> {
        let mut data = data;
        while !data.is_empty() {
            let n = (plan.reply.len() - at).min(data.len());
            if plan.verify && data[..n] != plan.reply[at..at + n] {
                return Err("echo does not match what was sent".into());
            }
            at += n;
            data = &data[n..];
            if at == plan.reply.len() {
                at = 0;
                let queued = sent.pop_front().ok_or("more echoes than messages sent")?;
                if now >= plan.measure_from && now < plan.end {
                    result.msgs += 1;
                    result.latencies.push(nanos(now - queued));
                }
                if now < plan.end {
                    sent.push_back(now);
                    *unsent += plan.frame_len;
                }
            }
        }
        Ok(())
    };
    take(&leftover, Instant::now(), &mut unsent)?;

    loop {
        tokio::select! {
            biased;
            r = rd.read(&mut buf) => {
                let n = r.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("server closed the connection".into());
                }
                let now = Instant::now();
                take(&buf[..n], now, &mut unsent)?;
                if now >= plan.end {
                    return Ok(());
                }
            }
            r = wr.write(&plan.batch[total - unsent..]), if unsent > 0 => {
                unsent -= r.map_err(|e| format!("write: {e}"))?;
            }
            () = &mut deadline => return Ok(()),
        }
    }
}
