//! `wsechod-bench`: the load generator of the wsechod benchmark.
//!
//! It speaks just enough WebSocket itself (upgrade request, masked client frames, a byte
//! compare of the echoed server frames) to stay cheap on the client side, and drives the
//! same bytes into a raw TCP echo for the baseline. See `bench/README.md`.

mod conn;
mod echo;
mod h2;
mod handshake;
mod idle;
mod proc;
mod report;
mod summarize;
mod target;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wsechod-bench",
    version,
    about = "Load generator for WebSocket / TCP echo servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// C connections with K messages of M bytes in flight each, for a fixed time.
    Echo(EchoArgs),
    /// C workers opening a connection, doing the upgrade and the close handshake, in a loop.
    Handshake(HandshakeArgs),
    /// Open C connections, hold them, and report the server's memory per connection.
    Idle(IdleArgs),
    /// Reads RESULT lines from a file and prints a Markdown table of medians.
    Summarize(summarize::SummarizeArgs),
}

/// Options shared by every load mode.
#[derive(Args, Clone)]
pub struct Common {
    /// ws://HOST:PORT/PATH (WebSocket echo) or tcp://HOST:PORT (raw TCP echo, same bytes).
    pub url: String,
    /// Connections (echo, idle) or concurrent workers (handshake).
    #[arg(short = 'c', long, default_value_t = 100)]
    pub conns: usize,
    /// PID of the server, to report its CPU time per message and its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Spread client sockets over source addresses 127.0.0.1..127.0.0.N (IPv4 targets only);
    /// 0 picks 1 for echo and 16 for handshake and idle.
    #[arg(long, default_value_t = 0)]
    pub source_ips: u8,
    /// Runtime threads of the load generator; 1 is a current-thread runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Connection attempts in flight at once while connecting.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Bound on each connect / upgrade / echo step, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// KEY=VALUE added to the RESULT line as a string (repeatable), e.g. server=wsechod.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Offer permessage-deflate as browsers do (and require it), and send compressed
    /// messages (RSV1). A tcp:// target gets the same compressed frames.
    #[arg(long)]
    pub deflate: bool,
    /// Carry the WebSockets as HTTP/2 streams (RFC 8441 extended CONNECT, h2c with prior
    /// knowledge), --streams-per-conn of them on each TCP connection (echo and idle).
    #[arg(long)]
    pub http2: bool,
    /// With --http2: WebSocket streams per TCP connection.
    #[arg(long, default_value_t = 100, requires = "http2")]
    pub streams_per_conn: usize,
}

impl Common {
    /// The target of `url`, over HTTP/2 with `--http2`.
    pub fn target(&self, source_ips: u8) -> Result<target::Target, String> {
        let t = target::Target::parse(&self.url, source_ips, self.deflate)?;
        if self.http2 {
            t.over_http2(self.conns, self.streams_per_conn)
        } else {
            Ok(t)
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout)
    }
}

#[derive(Args)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: Common,
    /// Messages in flight per connection (1 = ping-pong).
    #[arg(short = 'k', long, default_value_t = 1)]
    pub inflight: usize,
    /// Message payload size in bytes.
    #[arg(short = 's', long, default_value_t = 32)]
    pub size: usize,
    /// Send text messages (ASCII payload) instead of binary ones.
    #[arg(long)]
    pub text: bool,
    /// With --text: JSON-like text (an array of small records) instead of a letter cycle.
    #[arg(long, requires = "text")]
    pub json: bool,
    /// Measured window in seconds.
    #[arg(short = 'd', long, default_value_t = 5.0)]
    pub duration: f64,
    /// Warm-up before the measured window, in seconds.
    #[arg(short = 'w', long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Only count echoed bytes instead of comparing them with what was sent.
    #[arg(long)]
    pub no_verify: bool,
}

#[derive(Args)]
pub struct HandshakeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Measured window in seconds.
    #[arg(short = 'd', long, default_value_t = 5.0)]
    pub duration: f64,
    /// Warm-up before the measured window, in seconds.
    #[arg(short = 'w', long, default_value_t = 1.0)]
    pub warmup: f64,
}

#[derive(Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// How long to hold the connections once all are open, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Pause between the last connection opening and the RSS reading, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Give up opening connections after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub open_timeout: f64,
    /// Have every connection echo one message of this many bytes (1 KiB of JSON-like text,
    /// compressed with --deflate) right after opening, before the memory is measured.
    #[arg(long)]
    pub echo_first: Option<usize>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.enable_all().build().expect("tokio runtime")
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Summarize(args) => std::process::exit(summarize::run(&args)),
        Command::Echo(args) => {
            proc::raise_nofile(args.common.conns + 64);
            runtime(args.common.threads).block_on(echo::run(&args))
        }
        Command::Handshake(args) => {
            proc::raise_nofile(args.common.conns * 2 + 64);
            runtime(args.common.threads).block_on(handshake::run(&args))
        }
        Command::Idle(args) => {
            proc::raise_nofile(args.common.conns + 64);
            runtime(args.common.threads).block_on(idle::run(&args))
        }
    };
    match result {
        Ok(report) => report.print(),
        Err(e) => {
            eprintln!("wsechod-bench: {e}");
            std::process::exit(1);
        }
    }
}
