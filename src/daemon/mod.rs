//! The life cycle, in order: configuration → logging → runtime → bind every listener →
//! serve → READY=1 → (SIGHUP: reload)* → SIGTERM/SIGINT: drain → exit.
//!
//! Invariants:
//! - READY=1 is sent only after every listener is bound and its accept loop runs;
//! - signal handlers are installed before READY=1, so no signal can kill us by default;
//! - on shutdown the listeners are closed before any close frame is sent, so no new
//!   connection is accepted and then dropped;
//! - every task the daemon cannot do without (accept loops, the metrics listener, the
//!   watchdog, `STATUS=` updates) is supervised: if one ends or panics while the daemon
//!   serves, the daemon logs it and exits with 70, and systemd restarts it.

mod drain;
mod reload;
mod status;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use self::status::Status;
use crate::cli::Cli;
use crate::config::{self, Config, ConfigPath};
use crate::error::{Exit, Fatal};
use crate::listeners::{self, local};
use crate::logging::{self, LogHandle};
use crate::metrics::Metrics;
use crate::metrics_endpoint;
use crate::server::{self, Shared};
use crate::settings::Settings;
use crate::signals::{Signal, Signals};
use crate::systemd;

/// Time systemd is asked for beyond the delay, the drain and the abort grace.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// Runs the program for parsed arguments and returns how it ended.
pub fn main(cli: Cli) -> Exit {
    let path = ConfigPath::new(cli.config);
    let loaded = match config::load(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("wsechod: configuration error: {e}");
            return Exit::Config;
        }
    };
    // Reads the TLS files too, so --check-config catches a missing certificate.
    let settings = match Settings::new(&loaded.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wsechod: configuration error: {e}");
            return Exit::Config;
        }
    };
    if cli.check_config {
        println!(
            "wsechod: configuration OK ({})",
            config::describe(&path.path, loaded.file_found)
        );
        return Exit::Success;
    }
    if cli.print_config {
        print!("{}", loaded.config.to_toml());
        return Exit::Success;
    }

    let log = logging::init(&loaded.config.log.level);
    if !loaded.file_found {
        info!(
            "{} not found, running on built-in defaults",
            path.path.display()
        );
    }
    raise_fd_limit();
    let runtime = match build_runtime(loaded.config.server.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return Exit::OsError;
        }
    };
    let result = runtime.block_on(run(path, loaded.config, settings, log));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => Exit::Success,
        Err(fatal) => {
            error!("{fatal}");
            fatal.exit
        }
    }
}

/// One descriptor per connection: raise the soft limit on open files to the hard limit, as
/// nginx's `worker_rlimit_nofile` would. Under systemd, `LimitNOFILE=` sets both already
/// (and the sandbox forbids `setrlimit`), so a failure here is only logged.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!("raised the open-file limit from {soft} to {hard}"),
            Err(e) => warn!("open-file limit stays at {soft}: {e}"),
        },
        Ok(_) => {}
        Err(e) => warn!("cannot read the open-file limit: {e}"),
    }
}

/// A current-thread runtime when one thread is all we may use (cheaper per message), else
/// a multi-thread one.
fn build_runtime(configured: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = match configured {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => usize::from(n),
    };
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// A test build's SIGUSR2: block every worker thread for good, as a runtime stuck in a
/// busy loop would. The watchdog's health check can then no longer run.
#[cfg(feature = "test-wedge")]
fn wedge(configured: u16) {
    error!("SIGUSR2 in a test-wedge build: wedging the runtime");
    let workers = match configured {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => usize::from(n),
    };
    let forever = || std::thread::sleep(Duration::from_secs(u64::MAX / 4));
    // This runs in `block_on`, on the main thread. A current-thread runtime has no other
    // thread; a multi-thread runtime's workers are all other threads, and each needs a
    // task of its own to block on (with one left free, the watchdog would go on pinging).
    let others = if workers == 1 { 0 } else { workers };
    for _ in 0..others {
        tokio::spawn(async move { forever() });
    }
    forever();
}

/// The tasks the daemon cannot run without.
#[derive(Default)]
struct Supervisor {
    /// The tasks; each returns when it ends.
    set: JoinSet<()>,
    /// Their names, for the log.
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Supervisor {
    fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> AbortHandle {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
        handle
    }

    /// Waits for the next task to end; its name, and how it ended.
    async fn next_end(&mut self) -> Option<(&'static str, End)> {
        let (id, end) = match self.set.join_next_with_id().await? {
            Ok((id, ())) => (id, End::Returned),
            Err(e) if e.is_cancelled() => (e.id(), End::Aborted),
            Err(e) => (e.id(), End::Panicked(e.to_string())),
        };
        Some((self.names.remove(&id).unwrap_or("a task"), end))
    }
}

/// How a supervised task ended.
#[derive(Debug)]
enum End {
    /// It returned.
    Returned,
    /// We aborted it.
    Aborted,
    /// It panicked, with this message.
    Panicked(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Returned => f.write_str("ended"),
            End::Aborted => f.write_str("was aborted"),
            End::Panicked(p) => write!(f, "failed: {p}"),
        }
    }
}

/// The running daemon's own state.
struct Daemon {
    /// Where the configuration is re-read from on SIGHUP.
    path: ConfigPath,
    /// The configuration in force (restart-only keys as at start).
    config: Config,
    /// Shared with every listener and connection.
    shared: Arc<Shared>,
    /// Changes the log filter on reload.
    log: LogHandle,
    /// Cancelled to stop the accept loops.
    stop_accepting: CancellationToken,
    /// How many accept loops run.
    accept_loops: usize,
    /// The tasks that must not end while we serve.
    tasks: Supervisor,
    /// The `STATUS=` line's fixed parts.
    status: Status,
}

async fn run(
    path: ConfigPath,
    config: Config,
    settings: Settings,
    log: LogHandle,
) -> Result<(), Fatal> {
    let metrics = Arc::new(Metrics::new());
    let scheme = if settings.tls.is_some() { "wss" } else { "ws" };
    let shared = Shared::new(settings, metrics);
    let mut signals = Signals::new().map_err(|e| {
        Fatal::new(
            Exit::OsError,
            format!("cannot install signal handlers: {e}"),
        )
    })?;
    let bound = listeners::bind(&config)?;
    // Kept by systemd across a restart (FileDescriptorStoreMax= in the unit).
    bound.store();

    let stop_accepting = CancellationToken::new();
    let mut tasks = Supervisor::default();
    let mut probes = Vec::new();
    let mut urls = Vec::new();
    let accept_loops = bound.websocket.len();
    for listener in bound.websocket {
        let url = format!("{scheme}://{}{}", local(&listener), config.server.path);
        info!("listening on {url}");
        urls.push(url);
        let (tx, rx) = mpsc::channel(1);
        probes.push(tx);
        tasks.spawn(
            "an accept loop",
            server::run(listener, shared.clone(), stop_accepting.clone(), rx),
        );
    }
    if let Some(listener) = bound.metrics {
        let url = format!("http://{}/metrics", local(&listener));
        info!("metrics on {url}");
        urls.push(format!("metrics {url}"));
        // Keeps serving during the drain, so scrapes and /readyz see it.
        tasks.spawn(
            "the metrics listener",
            metrics_endpoint::run(listener, shared.metrics.clone(), CancellationToken::new()),
        );
    }

    let mut daemon = Daemon {
        path,
        config,
        shared,
        log,
        stop_accepting,
        accept_loops,
        tasks,
        status: Status {
            urls: urls.join(", "),
            ..Status::default()
        },
    };
    daemon.publish_limits();
    daemon.shared.metrics.set_ready(true);
    systemd::ready(&daemon.status.ready_line(&daemon.shared));
    info!("ready");
    if let Some(interval) = systemd::watchdog_interval() {
        info!(interval = ?interval, "systemd watchdog enabled");
        let stopping = daemon.stop_accepting.clone();
        daemon.tasks.spawn(
            "the watchdog",
            systemd::watchdog::run(interval, probes, stopping),
        );
    }
    let status = daemon.tasks.spawn(
        "the status updates",
        daemon.status.clone().run(daemon.shared.clone()),
    );

    let signal = loop {
        tokio::select! {
            s = signals.recv() => match s {
                Some(Signal::Reload) => daemon.reload(),
                #[cfg(feature = "test-wedge")]
                Some(Signal::Wedge) => wedge(daemon.config.server.worker_threads),
                Some(Signal::Terminate(name)) => break name,
                None => break "end of signal stream",
            },
            Some((name, end)) = daemon.tasks.next_end() => {
                return Err(Fatal::new(
                    Exit::Software,
                    format!("{name} {end}; exiting so that systemd restarts the daemon"),
                ));
            }
        }
    };
    status.abort();
    daemon.shutdown(signal, &mut signals).await
}

impl Daemon {
    /// Publishes the limits the alert rules compare against.
    fn publish_limits(&self) {
        self.shared.metrics.set_limits(
            usize::try_from(self.config.server.max_connections).unwrap_or(usize::MAX),
            self.config.shutdown.drain_timeout.0,
        );
    }

    /// Reports not ready (and keeps serving for `[shutdown] delay`), stops accepting,
    /// drains, and reports. A critical task that died on the way makes the exit non-zero.
    async fn shutdown(mut self, signal: &str, signals: &mut Signals) -> Result<(), Fatal> {
        let started = Instant::now();
        self.shared.metrics.set_ready(false);
        let s = &self.config.shutdown;
        // However short TimeoutStopSec= is, systemd now waits for the delay and the drain.
        systemd::extend_timeout(s.delay.0 + s.drain_timeout.0 + drain::ABORT_GRACE + STOP_MARGIN);
        drain::not_ready_for(s.delay.0, signal, signals).await;
        // Close the listeners first, so that once STOPPING=1 is out, a new connection
        // attempt is refused rather than accepted and dropped.
        self.stop_accepting.cancel();
        let mut died = None;
        let mut left = self.accept_loops;
        while left > 0 {
            match self.tasks.next_end().await {
                Some(("an accept loop", End::Returned)) => left -= 1,
                Some((_, End::Aborted)) => {}
                Some((name, end)) => {
                    error!("{name} {end} during shutdown");
                    died.get_or_insert(name);
                    if name == "an accept loop" {
                        left -= 1;
                    }
                }
                None => break,
            }
        }
        let s = &self.config.shutdown;
        info!(
            connections = self.shared.active(),
            "{signal}: draining, sending close {} to every connection", s.close_code
        );
        let report = drain::drain(&self.shared, s.drain_timeout.0, s.close_rate, signals).await;
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            open = report.open,
            closed = report.closed,
            aborted = report.aborted,
            aborted_at_deadline = report.at_deadline,
            "drain complete, exiting"
        );
        systemd::status("stopped");
        match died {
            None => Ok(()),
            Some(name) => Err(Fatal::new(Exit::Software, format!("{name} failed"))),
        }
    }
}
