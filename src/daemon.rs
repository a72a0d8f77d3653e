//! The life cycle, in order: configuration → logging → runtime → bind every listener →
//! serve → READY=1 → (SIGHUP: reload)* → SIGTERM/SIGINT: drain → exit.
//!
//! Invariants:
//! - READY=1 is sent only after every listener is bound and its accept loop runs;
//! - signal handlers are installed before READY=1, so no signal can kill us by default;
//! - on shutdown the listeners are closed before any close frame is sent, so no new
//!   connection is accepted and then dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cli::Cli;
use crate::config::{self, Config, ConfigPath};
use crate::error::{Exit, Fatal};
use crate::logging::{self, LogHandle};
use crate::metrics::Metrics;
use crate::metrics_endpoint;
use crate::server::{self, Probe, Shared};
use crate::settings::Settings;
use crate::signals::{Signal, Signals};
use crate::state::{AbortReason, ConnState};
use crate::systemd;

/// Backlog of every listening socket: room for bursts of connection attempts.
const LISTEN_BACKLOG: i32 = 4096;

/// After the drain, how long aborted connections get to finish their tasks.
const ABORT_GRACE: Duration = Duration::from_secs(2);

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
    let result = runtime.block_on(run(path, settings, log));
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

/// The running daemon's own state.
struct Daemon {
    /// Where the configuration is re-read from on SIGHUP.
    path: ConfigPath,
    /// Shared with every listener and connection.
    shared: Arc<Shared>,
    /// Changes the log filter on reload.
    log: LogHandle,
    /// Cancelled to stop the accept loops.
    stop_accepting: CancellationToken,
    /// The accept loops, awaited on shutdown so the listeners are closed.
    accept_loops: Vec<JoinHandle<()>>,
    /// Lets the watchdog ask each accept loop whether it is alive.
    probes: Vec<mpsc::Sender<Probe>>,
    /// The tail of `STATUS=` that says how the last reload went.
    note: Arc<Mutex<String>>,
    /// Where we listen, for `STATUS=`.
    urls: String,
}

async fn run(path: ConfigPath, settings: Settings, log: LogHandle) -> Result<(), Fatal> {
    let metrics = Arc::new(Metrics::new());
    let config = settings.config.clone();
    let scheme = if settings.tls.is_some() { "wss" } else { "ws" };
    let shared = Shared::new(settings, metrics);
    let mut signals = Signals::new().map_err(|e| {
        Fatal::new(
            Exit::OsError,
            format!("cannot install signal handlers: {e}"),
        )
    })?;
    let (ws_listeners, metrics_listener) = bind(&config)?;

    let stop_accepting = CancellationToken::new();
    let mut accept_loops = Vec::new();
    let mut probes = Vec::new();
    let mut urls = Vec::new();
    for listener in ws_listeners {
        let url = format!("{scheme}://{}{}", local(&listener), config.server.path);
        info!("listening on {url}");
        urls.push(url);
        let (tx, rx) = mpsc::channel(1);
        probes.push(tx);
        accept_loops.push(tokio::spawn(server::run(
            listener,
            shared.clone(),
            stop_accepting.clone(),
            rx,
        )));
    }
    if let Some(listener) = metrics_listener {
        let url = format!("http://{}/metrics", local(&listener));
        info!("metrics on {url}");
        urls.push(format!("metrics {url}"));
        // Keeps serving during the drain, so scrapes and /readyz see it.
        tokio::spawn(metrics_endpoint::run(
            listener,
            shared.clone(),
            CancellationToken::new(),
        ));
    }

    let mut daemon = Daemon {
        path,
        shared,
        log,
        stop_accepting,
        accept_loops,
        probes,
        note: Arc::default(),
        urls: urls.join(", "),
    };
    daemon
        .shared
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    systemd::ready(&format!("serving {}", daemon.urls));
    info!("ready");
    if let Some(interval) = systemd::watchdog_interval() {
        info!(interval = ?interval, "systemd watchdog enabled");
        tokio::spawn(watchdog(
            interval,
            daemon.probes.clone(),
            daemon.stop_accepting.clone(),
        ));
    }
    let status = tokio::spawn(status_updates(
        daemon.shared.clone(),
        daemon.urls.clone(),
        daemon.note.clone(),
    ));

    let signal = loop {
        match signals.recv().await {
            Some(Signal::Reload) => daemon.reload(),
            Some(Signal::Terminate(name)) => break name,
            None => break "end of signal stream",
        }
    };
    status.abort();
    daemon.drain(signal, &mut signals).await;
    Ok(())
}

fn local(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// The listeners: passed by systemd (socket activation) or bound from the configuration.
fn bind(config: &Config) -> Result<(Vec<TcpListener>, Option<TcpListener>), Fatal> {
    let unavailable = |what: String| Fatal::new(Exit::Unavailable, what);
    let activated = systemd::activated()
        .map_err(|e| unavailable(format!("unusable sockets from systemd: {e}")))?;
    let to_tokio = |l: std::net::TcpListener| {
        TcpListener::from_std(l).map_err(|e| unavailable(format!("passed socket: {e}")))
    };
    let (ws, passed_metrics) = match activated {
        Some(a) => {
            info!(
                sockets = a.websocket.len() + usize::from(a.metrics.is_some()),
                "using sockets passed by systemd; [server] listen is ignored"
            );
            let ws = a
                .websocket
                .into_iter()
                .map(to_tokio)
                .collect::<Result<_, _>>()?;
            (ws, a.metrics.map(to_tokio).transpose()?)
        }
        None => {
            let ws = config
                .server
                .listen
                .iter()
                .map(|addr| listen(*addr))
                .collect::<Result<_, _>>()?;
            (ws, None)
        }
    };
    let metrics = match passed_metrics {
        Some(l) => Some(l),
        None if config.metrics.enabled => Some(listen(config.metrics.listen)?),
        None => None,
    };
    Ok((ws, metrics))
}

/// Binds one listening socket. IPv6 sockets are IPv6-only, so `0.0.0.0:8080` and
/// `[::]:8080` can be listed together, as with nginx.
fn listen(addr: SocketAddr) -> Result<TcpListener, Fatal> {
    use socket2::{Domain, Socket, Type};
    let fail =
        |e: std::io::Error| Fatal::new(Exit::Unavailable, format!("cannot listen on {addr}: {e}"));
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail)?;
    }
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(LISTEN_BACKLOG).map_err(fail)?;
    TcpListener::from_std(socket.into()).map_err(fail)
}

impl Daemon {
    /// SIGHUP: re-read file and environment; apply what can change live, keep the old
    /// configuration on any error.
    fn reload(&mut self) {
        systemd::reloading();
        info!("reloading configuration from {}", self.path.path.display());
        let old = self.shared.settings.load_full();
        let result = config::load(&self.path).and_then(|loaded| {
            let mut new = loaded.config.clone();
            let restart = old.config.restart_needed(&new);
            if !restart.is_empty() {
                new.server.listen = old.config.server.listen.clone();
                new.server.worker_threads = old.config.server.worker_threads;
                new.metrics = old.config.metrics.clone();
                if old.config.tls.enabled() != new.tls.enabled() {
                    new.tls = old.config.tls.clone();
                }
            }
            Ok((loaded.config, Settings::new(&new)?))
        });
        let note = match result {
            Ok((new, settings)) => {
                let restart = old.config.restart_needed(&new);
                for (key, before, after) in changes(&old.config, &new) {
                    info!("{key}: {before} -> {after}");
                }
                if !restart.is_empty() {
                    warn!(
                        "changed but needs a restart to take effect: {}",
                        restart.join(", ")
                    );
                }
                if let Err(e) = self.log.set_level(&new.log.level) {
                    warn!(error = %e, "cannot apply log.level");
                }
                self.shared.settings.store(Arc::new(settings));
                self.shared.metrics.reload(true);
                info!("configuration reloaded");
                if restart.is_empty() {
                    "last reload OK".to_string()
                } else {
                    format!("last reload OK; restart needed for {}", restart.join(", "))
                }
            }
            Err(e) => {
                error!("reload failed, keeping the running configuration: {e}");
                self.shared.metrics.reload(false);
                format!("last reload FAILED ({e}); running on the previous configuration")
            }
        };
        let status = status_line(&self.shared, &self.urls, 0, &note);
        *self.note.lock().unwrap_or_else(|e| e.into_inner()) = note;
        systemd::ready(&status);
    }

    /// SIGTERM/SIGINT: stop accepting, close every connection with 1000, wait for the
    /// clients up to the drain timeout (or a second signal), abort the rest.
    async fn drain(self, signal: &str, signals: &mut Signals) {
        let started = Instant::now();
        let shared = &self.shared;
        shared
            .ready
            .store(false, std::sync::atomic::Ordering::Release);
        // Close the listeners first, so that once STOPPING=1 is out, a new connection
        // attempt is refused rather than accepted and dropped.
        self.stop_accepting.cancel();
        for task in self.accept_loops {
            let _ = task.await;
        }
        let total = shared.active();
        systemd::stopping(&format!("draining: {total} of {total} connections left"));
        info!(
            connections = total,
            "{signal}: draining, sending close 1000 to every connection"
        );
        let timeout = shared.settings.load().config.shutdown.drain_timeout.0;
        shared.drain.cancel();
        shared.tasks.close();

        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let complete = loop {
            tokio::select! {
                () = shared.tasks.wait() => break true,
                () = &mut deadline => {
                    warn!(left = shared.active(), "drain timeout reached, aborting the remaining connections");
                    break false;
                }
                s = signals.recv() => match s {
                    Some(Signal::Terminate(name)) => {
                        warn!(left = shared.active(), "{name} during drain: aborting the remaining connections");
                        break false;
                    }
                    Some(Signal::Reload) => info!("ignoring SIGHUP during drain"),
                    None => break false,
                },
                _ = tick.tick() => {
                    let left = shared.active();
                    systemd::status(&format!("draining: {left} of {total} connections left"));
                }
            }
        };
        if !complete {
            shared.abort.cancel();
            if tokio::time::timeout(ABORT_GRACE, shared.tasks.wait())
                .await
                .is_err()
            {
                warn!(
                    left = shared.active(),
                    "connections still running after abort"
                );
            }
        }
        let m = &shared.metrics;
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            closed = m.ended(ConnState::Closed),
            aborted = m.ended(ConnState::Aborted),
            aborted_at_deadline = m.aborted_for(AbortReason::DrainDeadline),
            "drain complete, exiting"
        );
        systemd::status("stopped");
    }
}

/// Keys whose value differs, as `(key, old, new)` in TOML notation.
fn changes(old: &Config, new: &Config) -> Vec<(String, String, String)> {
    let flat = |c: &Config| -> Vec<(String, String)> {
        let table: toml::Table = toml::from_str(&c.to_toml()).unwrap_or_default();
        table
            .iter()
            .flat_map(|(section, keys)| {
                keys.as_table()
                    .into_iter()
                    .flatten()
                    .map(move |(k, v)| (format!("{section}.{k}"), v.to_string()))
            })
            .collect()
    };
    let before = flat(old);
    flat(new)
        .into_iter()
        .filter_map(|(key, after)| {
            let prior = before.iter().find(|(k, _)| *k == key)?.1.clone();
            (prior != after).then_some((key, prior, after))
        })
        .collect()
}

fn status_line(shared: &Shared, urls: &str, rate: u64, note: &str) -> String {
    let open = shared.metrics.live(ConnState::Open);
    let mut s = format!("serving {urls}: {open} open connections, {rate} messages/s");
    if !note.is_empty() {
        s.push_str("; ");
        s.push_str(note);
    }
    s
}

/// Keeps `STATUS=` current, at most once a second and only when it changed.
async fn status_updates(shared: Arc<Shared>, urls: String, note: Arc<Mutex<String>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_count = shared.metrics.messages_received_total();
    let mut last_status = String::new();
    loop {
        tick.tick().await;
        let count = shared.metrics.messages_received_total();
        let rate = count - last_count;
        last_count = count;
        let note = note.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let status = status_line(&shared, &urls, rate, &note);
        if status != last_status {
            systemd::status(&status);
            last_status = status;
        }
    }
}

/// Pings the systemd watchdog at half its interval, but only while the runtime runs new
/// tasks and every accept loop answers; a wedged daemon thus gets killed by systemd.
async fn watchdog(
    interval: Duration,
    probes: Vec<mpsc::Sender<Probe>>,
    stopping: CancellationToken,
) {
    let period = interval / 2;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let probes: &[_] = if stopping.is_cancelled() {
            &[]
        } else {
            &probes
        };
        if healthy(probes, period).await {
            systemd::watchdog();
        } else {
            warn!("health check failed, withholding the watchdog ping");
        }
    }
}

async fn healthy(probes: &[mpsc::Sender<Probe>], within: Duration) -> bool {
    if tokio::time::timeout(within, tokio::spawn(async {}))
        .await
        .is_err()
    {
        return false;
    }
    for probe in probes {
        let (tx, rx) = oneshot::channel();
        if probe.try_send(tx).is_err() {
            return false;
        }
        if !matches!(tokio::time::timeout(within, rx).await, Ok(Ok(()))) {
            return false;
        }
    }
    true
}
