//! Reading a server's CPU time and RSS from /proc, our own CPU time, and the fd limit.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Clock ticks per second of /proc/PID/stat (what `getconf CLK_TCK` prints).
pub fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as f64
        } else {
            eprintln!("wsechod-bench: sysconf(_SC_CLK_TCK) failed, assuming 100 ticks/s");
            100.0
        }
    })
}

/// utime + stime of a process (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("{path}: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let tick = |i: usize| -> Result<f64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|v| v as f64)
            .ok_or_else(|| format!("{path}: no field {}", i + 3))
    };
    Ok((tick(11)? + tick(12)?) / clk_tck())
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{path}: no VmRSS"))
}

/// Our own CPU time (user + system, all threads), in seconds.
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Raises RLIMIT_NOFILE's soft limit to `want` (and the hard one too when allowed).
pub fn raise_nofile(want: usize) {
    let want = want as libc::rlim_t;
    // SAFETY: plain getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= want {
            return;
        }
        if lim.rlim_max < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return;
            }
        }
        lim.rlim_cur = lim.rlim_max.min(want);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        if lim.rlim_cur < want {
            eprintln!(
                "wsechod-bench: only {} file descriptors allowed, {want} wanted (ulimit -n)",
                lim.rlim_cur
            );
        }
    }
}

/// CPU time the whole machine spent busy (not idle or waiting for I/O), in seconds summed
/// over all CPUs, from the first line of /proc/stat.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|f| f.parse::<u64>().ok())
        .map(|t| t as f64)
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let busy = v.iter().take(8).sum::<f64>() - v.get(3)? - v.get(4)?;
    Some(busy / clk_tck())
}

/// One reading of the server, of ourselves and of the machine at a point in time.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    pub server_cpu: Option<f64>,
    pub self_cpu: f64,
    pub machine_busy: Option<f64>,
}

impl Sample {
    pub fn take(pid: Option<u32>) -> Sample {
        Sample {
            at: Instant::now(),
            server_cpu: pid.and_then(|p| cpu_seconds(p).ok()),
            self_cpu: self_cpu_seconds(),
            machine_busy: machine_busy_seconds(),
        }
    }
}

/// Takes a sample at each of `points` from an OS thread of its own, so that the readings
/// are on time however busy the runtime is.
pub fn sample_at(pid: Option<u32>, points: Vec<Instant>) -> std::thread::JoinHandle<Vec<Sample>> {
    std::thread::spawn(move || {
        points
            .into_iter()
            .map(|p| {
                let now = Instant::now();
                if p > now {
                    std::thread::sleep(p - now);
                }
                Sample::take(pid)
            })
            .collect()
    })
}

/// What happened between two samples.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub secs: f64,
    pub server_cpu: Option<f64>,
    pub self_cpu: f64,
    /// Busy CPU time of the machine that was neither the server's nor ours: other work that
    /// competed with the measurement.
    pub other_cpu: Option<f64>,
}

impl Window {
    pub fn between(a: &Sample, b: &Sample) -> Window {
        Window {
            secs: b.at.saturating_duration_since(a.at).as_secs_f64(),
            server_cpu: match (a.server_cpu, b.server_cpu) {
                (Some(x), Some(y)) => Some(y - x),
                _ => None,
            },
            self_cpu: b.self_cpu - a.self_cpu,
            other_cpu: match (a.machine_busy, b.machine_busy) {
                (Some(x), Some(y)) => Some(
                    ((y - x)
                        - (b.self_cpu - a.self_cpu)
                        - match (a.server_cpu, b.server_cpu) {
                            (Some(p), Some(q)) => q - p,
                            _ => 0.0,
                        })
                    .max(0.0),
                ),
                _ => None,
            },
        }
    }
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}
