//! Idle mode: open C connections (upgraded, for ws://), hold them without traffic, and report
//! the server's RSS per connection: (RSS with all open − RSS before) / C. At the end every
//! connection echoes one small message, to show that it was still alive.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::IdleArgs;
use crate::conn::Conn;
use crate::proc::{Sample, Window, rss_kib, secs};
use crate::report::{Errors, Report, round};
use crate::target::{
    BINARY, Kind, TEXT, Target, bad, client_frame, inflate, json, payload, read_frame,
};

/// One message a connection sends, and how its echo is checked.
struct Message {
    /// The client frame.
    sent: Vec<u8>,
    /// The payload it carries (uncompressed).
    body: Vec<u8>,
    opcode: u8,
    /// The echo comes back compressed and is checked by inflating it.
    deflate: bool,
    /// For a raw TCP echo: the very same bytes.
    tcp: bool,
}

impl Message {
    fn new(target: &Target, opcode: u8, body: Vec<u8>) -> Self {
        Message {
            sent: client_frame(opcode, &body, target.deflate),
            body,
            opcode,
            deflate: target.deflate,
            tcp: target.kind == Kind::Tcp,
        }
    }

    /// Sends it and checks the echo.
    async fn echo(&self, s: &mut Conn) -> std::io::Result<()> {
        s.write_all(&self.sent).await?;
        if self.tcp {
            let mut got = vec![0u8; self.sent.len()];
            s.read_exact(&mut got).await?;
            return if got == self.sent {
                Ok(())
            } else {
                Err(bad("wrong echo"))
            };
        }
        let mut pending = Vec::new();
        let (b0, _, payload) = read_frame(s, &mut pending).await?;
        let body = if self.deflate {
            if b0 != 0xc0 | self.opcode {
                return Err(bad("an uncompressed echo"));
            }
            inflate(&payload)?
        } else {
            payload
        };
        if b0 & 0x0f != self.opcode || body != self.body || !pending.is_empty() {
            return Err(bad("wrong echo"));
        }
        Ok(())
    }
}

enum Outcome {
    /// Could not be opened.
    NotOpened,
    /// Echoed after the hold.
    Alive,
    Failed(String),
}

pub async fn run(args: &IdleArgs) -> Result<Report, String> {
    let common = &args.common;
    let source_ips = if common.source_ips == 0 {
        16
    } else {
        common.source_ips
    };
    let target = Arc::new(common.target(source_ips)?);
    let pid = common.server_pid;
    let rss = |what: &str| -> Result<Option<u64>, String> {
        pid.map(rss_kib)
            .transpose()
            .map_err(|e| format!("server RSS {what}: {e}"))
    };
    let rss_before = rss("before opening")?;
    let probe = Arc::new(Message::new(&target, BINARY, payload(32, false)));
    let first = args
        .echo_first
        .map(|size| Arc::new(Message::new(&target, TEXT, json(size))));

    let before_open = Sample::take(pid);
    let gate = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let (release_tx, release_rx) = watch::channel(false);
    let timeout = common.timeout();
    let mut tasks = Vec::with_capacity(common.conns);
    for i in 0..common.conns {
        let (target, gate, opened) = (target.clone(), gate.clone(), opened_tx.clone());
        let mut release = release_rx.clone();
        let (probe, first) = (probe.clone(), first.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let open = tokio::time::timeout(timeout, async {
                let (mut s, rest) = target.open(i).await?;
                if let Some(m) = &first {
                    m.echo(&mut s).await?;
                }
                Ok::<_, std::io::Error>((s, rest))
            })
            .await;
            drop(permit);
            let mut s = match open {
                Ok(Ok((s, rest))) if rest.is_empty() => {
                    let _ = opened.send(Ok(()));
                    s
                }
                Ok(Ok(_)) => {
                    let _ = opened.send(Err("unexpected data after the upgrade".into()));
                    return Outcome::NotOpened;
                }
                Ok(Err(e)) => {
                    let _ = opened.send(Err(e.to_string()));
                    return Outcome::NotOpened;
                }
                Err(_) => {
                    let _ = opened.send(Err("connect/upgrade timed out".into()));
                    return Outcome::NotOpened;
                }
            };
            drop(opened);
            let mut buf = [0u8; 256];
            tokio::select! {
                r = s.read(&mut buf) => {
                    return Outcome::Failed(match r {
                        Ok(0) => "closed by the server while idle".into(),
                        Ok(_) => "data from the server while idle".into(),
                        Err(e) => format!("while idle: {e}"),
                    });
                }
                _ = release.wait_for(|r| *r) => {}
            }
            let check = tokio::time::timeout(timeout, probe.echo(&mut s)).await;
            match check {
                Ok(Ok(())) => Outcome::Alive,
                Ok(Err(e)) => Outcome::Failed(e.to_string()),
                Err(_) => Outcome::Failed("no echo after the hold".into()),
            }
        }));
    }
    drop(opened_tx);

    let mut errors = Errors::default();
    let mut opened = 0usize;
    let mut answered = 0usize;
    let give_up = tokio::time::sleep(secs(args.open_timeout));
    tokio::pin!(give_up);
    while answered < common.conns {
        tokio::select! {
            r = opened_rx.recv() => match r {
                Some(Ok(())) => { opened += 1; answered += 1; }
                Some(Err(e)) => { errors.add(format!("open: {e}")); answered += 1; }
                None => break,
            },
            () = &mut give_up => {
                errors.add(format!("{} connections not open after {} s", common.conns - answered, args.open_timeout));
                break;
            }
        }
    }
    let all_open = Sample::take(pid);
    let open_secs = (all_open.at - before_open.at).as_secs_f64();
    println!(
        "idle {}: {opened}/{} connections open in {open_secs:.2} s, holding",
        target.url, common.conns
    );
    tokio::time::sleep(secs(args.settle)).await;
    let rss_open = rss("with all open")?;
    let hold_start = Sample::take(pid);
    tokio::time::sleep(secs(args.hold)).await;
    let hold_end = Sample::take(pid);
    let rss_end = rss("after the hold")?;

    let _ = release_tx.send(true);
    let mut alive = 0usize;
    for t in tasks {
        match t.await {
            Ok(Outcome::Alive) => alive += 1,
            Ok(Outcome::NotOpened) => {}
            Ok(Outcome::Failed(e)) => errors.add(e),
            Err(e) => errors.add(format!("task: {e}")),
        }
    }

    let mut report = Report::new("idle", common, &target);
    report.set("opened", opened);
    report.set("deflate", target.deflate);
    report.set("echo_first", args.echo_first);
    report.set("open_s", round(open_secs, 3));
    report.set("hold_s", args.hold);
    report.set("alive_after_hold", alive);
    let open_window = Window::between(&before_open, &all_open);
    if let Some(cpu) = open_window.server_cpu.filter(|_| opened > 0) {
        report.set(
            "server_cpu_us_per_open",
            round(1e6 * cpu / opened as f64, 3),
        );
    }
    report.set("rss_before_kib", rss_before);
    report.set("rss_open_kib", rss_open);
    report.set("rss_end_kib", rss_end);
    let per_conn = match (rss_before, rss_open) {
        (Some(b), Some(o)) if opened > 0 => Some((o as f64 - b as f64) / opened as f64),
        _ => None,
    };
    report.set("rss_per_conn_kib", per_conn.map(|v| round(v, 3)));
    errors.report(&mut report);
    let window = Window::between(&hold_start, &hold_end);
    let cpu = report.cpu(common, &window, None);
    report.human = format!(
        "idle {} c={}: {opened} open in {open_secs:.2} s, {alive} alive after {} s, RSS per connection {}, {} errors; {cpu}",
        target.url,
        common.conns,
        args.hold,
        per_conn.map_or("-".into(), |v| format!("{v:.2} KiB")),
        errors.count,
    );
    Ok(report)
}
