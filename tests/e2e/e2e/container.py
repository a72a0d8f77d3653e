"""One throw-away systemd container per case, and the helpers cases call on it.

A Container boots `systemd-nspawn --boot --volatile=overlay --private-network`
from the cached rootfs (read-only in effect: the overlay is a tmpfs), with the
.debs under test bound read-only at /srv/debs. Commands run inside through
`nsenter -t LEADER -a` (c), host binaries in its network namespace through
`nsenter -t LEADER -n` (n, bg). Each command, its exit status and its output
go to CASE_DIR/commands.log; a failing one also shows its last lines.

Invariants:

* Every command is bounded (SETTINGS.cmd_timeout unless given) and leaves no
  process behind on the host (see base.run).
* teardown() always runs (the runner calls it in a finally, shielded from
  signals) and leaves nothing behind, in this order: background jobs, by
  their process groups; processes that entered the container and are still
  in it; `systemctl poweroff`; SIGTERM to nspawn; SIGKILL to the container's
  PID 1 (ends its whole PID namespace; killing nspawn alone would orphan it);
  SIGKILL to nspawn. Every step is bounded, and PIDs are checked against their
  start time, so a reused PID is never signalled.
* On failure, teardown prints diagnostics first: the journals of
  SETTINGS.journal_units plus self.diag_units, the failed units, then (after
  shutdown) the tail of every background job's log and of the console log up
  to the failure.
"""

import glob
import json
import os
import re
import subprocess
import time

from . import base
from .base import SETTINGS, Bg, CmdError, fail, log, poll, run, section, show, since, tail

INSIDE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
              "LANG=C.UTF-8", "TERM=dumb", "DEBIAN_FRONTEND=noninteractive",
              "SYSTEMD_PAGER=cat", "SYSTEMD_COLORS=0"]


def says(entry, message):
    """Whether a journal entry (journalctl -o json, a dict) is a line with this message.
    wsechod's MESSAGE is its plain-text line less the level, "spans: target: message
    key=value ...": the message stands after ": " (or first) and before a space (or last)."""
    text = entry.get("MESSAGE")
    return isinstance(text, str) and re.search(
        r"(^|: )" + re.escape(message) + r"( |$)", text) is not None


def match(value, want):
    """Does value (a number as text, or None when absent) match want?

    want: a number (==); OP NUMBER with OP one of == != > >= < <= (e.g. '>=2');
    'absent' (None); 'present' (not None)."""
    if want == "absent":
        return value is None
    if want == "present":
        return value is not None
    if value is None:
        return False
    want = str(want)
    m = re.fullmatch(r"(==|!=|>=|<=|>|<)?(.*)", want)
    op, num = m.group(1) or "==", m.group(2)
    if not re.fullmatch(r"[-+]?([0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?|Inf|NaN)", value):
        return False
    if "NaN" in (value, num):  # NaN equals nothing as a float; compare the text
        return (op == "==" and value == num) or (op == "!=" and value != num)
    a, b = float(value), float(num)
    return {"==": a == b, "!=": a != b, ">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[op]


class Container:
    """A booted container. Cases get one from the runner; see the module docstring."""

    def __init__(self, name, rootfs, debdir, workdir, binds=()):
        self.name = name
        self.rootfs = rootfs
        self.debdir = os.path.realpath(debdir)
        self.binds = list(binds)       # extra "HOST:CONTAINER" read-only binds
        self.dir = os.path.join(workdir, re.sub(r"[^a-zA-Z0-9_.-]", "_", name))
        self.machine = f"e2e-{re.sub(r'[^a-zA-Z0-9-]', '-', name)[:40]}-{os.getpid()}"
        self.console_log = os.path.join(self.dir, "console.log")
        self.diag_units = []           # cases may add units whose journal helps on failure
        self.jobs = []                 # every Bg started; all stopped at teardown
        self.prom = None
        self.nspawn = None
        self.leader = None
        self._leader_start = None
        self.boot_state = None
        self.torn_down = False
        os.makedirs(self.dir, exist_ok=True)
        self.cmdlog = open(os.path.join(self.dir, "commands.log"), "a")

    # --- boot and teardown -----------------------------------------------------

    def boot(self):
        """Start nspawn and wait (bounded) until the system is running or degraded."""
        if not os.path.isdir(self.debdir) or ":" in self.debdir:
            fail(f"boot: bad deb dir {self.debdir!r}")
        t0 = time.monotonic()
        # --register=no --keep-unit: there is no host systemd or D-Bus. Own session:
        # nspawn halts the container on SIGINT, so a Ctrl-C goes through us instead.
        cmd = ["systemd-nspawn", "-D", self.rootfs, "--boot", f"--machine={self.machine}",
               "--register=no", "--keep-unit", "--private-network", "--volatile=overlay",
               "--link-journal=no", f"--bind-ro={self.debdir}:/srv/debs", "--console=read-only",
               *(f"--bind-ro={b}" for b in self.binds)]
        self.cmdlog.write(f"$ {show(cmd)}\n")
        with open(self.console_log, "wb") as console, base.deferred():
            self.nspawn = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=base._die_with_parent())
        deadline = t0 + SETTINGS.boot_timeout

        def find_leader():  # the container's PID 1: nspawn's child whose comm is "systemd"
            for kids in _read_all(f"/proc/{self.nspawn.pid}/task/*/children"):
                for c in kids.split():
                    if _read(f"/proc/{c}/comm").strip() == "systemd":
                        self.leader, self._leader_start = int(c), base.starttime(c)
                        return True
            return self.nspawn.poll() is not None
        poll(SETTINGS.boot_timeout, find_leader, 0.02)
        if not self.leader:
            fail(f"boot: no container PID 1 (nspawn alive: {self.nspawn.poll() is None}):\n"
                 + tail(_read(self.console_log), 30))

        # Poll: `is-system-running --wait` fails until /run/systemd/private exists.
        def up():
            try:
                self.boot_state = self.c("systemctl", "is-system-running", timeout=5, check=False)
            except CmdError as e:  # timed out
                self.boot_state = str(e)
            return self.boot_state in ("running", "degraded") or self.nspawn.poll() is not None
        poll(max(0.0, deadline - time.monotonic()), up)
        if self.boot_state not in ("running", "degraded"):
            fail(f"boot: system not up after {SETTINGS.boot_timeout:g}s (state "
                 f"{self.boot_state!r}):\n" + tail(_read(self.console_log), 30))
        log(f"boot: {self.machine} {self.boot_state} in {since(t0)} s (leader {self.leader})")
        if self.boot_state == "degraded":
            section("systemctl --failed", self.c("systemctl", "--failed", "--no-legend", check=False))

    def leader_alive(self):
        """True while the recorded PID 1 is still the same process."""
        return bool(self.leader) and base.alive(self.leader) and \
            base.starttime(self.leader) == self._leader_start

    def teardown(self, failed):
        """Diagnostics (if failed), then stop everything; see the module invariants.
        Only the first call does anything; nothing in it can skip the shutdown."""
        if self.torn_down:
            return
        self.torn_down = True
        with base.shielded():
            lines = _read(self.console_log).count("\n")  # console up to the failure
            try:
                if failed and self.leader_alive():
                    for u in SETTINGS.journal_units + self.diag_units:
                        section(f"journalctl -u {u} --no-pager ({self.name})",
                                _quiet(self.journal, u, timeout=10, check=False, merge=True))
                    section(f"systemctl --failed ({self.name})",
                            _quiet(self.c, "systemctl", "--failed", "--no-legend", timeout=10,
                                   check=False))
            finally:
                self.shutdown()
                self.cmdlog.close()
            if failed:
                for j in self.jobs:
                    section(f"{os.path.basename(j.log_path)} (tail; {j.cmd})", tail(j.text(), 20))
                console = "\n".join(  # nspawn writes "\r\r\n" and colours
                    re.sub(r"\x1b\[[0-9;]*m", "", x).rstrip("\r")
                    for x in _read(self.console_log).split("\n")[:lines])
                section(f"console log up to the failure (last {SETTINGS.console_lines} lines; all: "
                        f"{self.console_log})", tail(console, SETTINGS.console_lines))
                section(f"end of diagnostics ({self.name})", "")

    def shutdown(self):
        """Stop jobs and the container (bounded, safe twice)."""
        for j in self.jobs:
            j.stop()
        p = self.nspawn
        if p is not None:
            t0 = time.monotonic()
            how = "poweroff"
            if p.poll() is None and self.leader_alive():
                self._kill_entered()
                # "Connection reset by peer" is normal here: PID 1 hangs up first.
                _quiet(self.c, "systemctl", "poweroff", "--no-block", timeout=5, check=False)
            # A clean poweroff takes 0.1-0.3 s. Else SIGTERM to nspawn: a second
            # request (units still stop in order) that also moves a stalled
            # systemd-shutdown on.
            if not _wait_exit(p, 2):
                how = "poweroff+SIGTERM"
                p.terminate()
                if not _wait_exit(p, 10):
                    how = "SIGKILL of the container's PID 1"
                    if self.leader_alive():
                        _signal(self.leader, 9)
                    if not _wait_exit(p, 5):
                        p.kill()
                        _wait_exit(p, 5)
            log(f"shutdown: {self.machine} stopped by {how} in {since(t0)} s")
            self.nspawn = None
        if self.leader_alive():  # nspawn gone, its PID 1 orphaned (pitfall 6)
            log(f"shutdown: container PID 1 ({self.leader}) survived nspawn; killing it")
            _signal(self.leader, 9)
            if not base.wait_gone(self.leader, 5):
                log(f"shutdown: PID {self.leader} still alive!")
        self.leader = None

    def _kill_entered(self):
        """SIGKILL processes in the container's PID namespace that do not descend
        from its PID 1: commands that entered it and were left behind. Left alone
        they stall the poweroff (systemd-shutdown SIGSTOPs them, their host-side
        nsenter mirrors the stop and nobody reaps them: up to 90 s)."""
        ns = _ns_id(self.leader)
        victims = []
        for p in (int(x) for x in os.listdir("/proc") if x.isdigit()):
            if p == self.leader or _ns_id(p) != ns:
                continue
            q = p
            while True:  # climb while the parent is in the container too
                ppid = _ppid(q)
                if ppid == self.leader:
                    q = None  # native: descends from the container's PID 1
                    break
                if not ppid or _ns_id(ppid) != ns:
                    break
                q = ppid
            if q is not None:
                victims.append((p, ppid))
        for p, parent in victims:
            _signal(p, 9)
            if parent and _read(f"/proc/{parent}/comm").strip() == "nsenter":
                _signal(parent, 18)  # SIGCONT: it may be stopped, mirroring its child
        if victims:
            log(f"shutdown: killed {len(victims)} process(es) left inside the container")

    # --- commands ----------------------------------------------------------------

    def _need(self):
        if not self.leader:
            fail("no container is running")

    def c(self, *cmd, timeout=None, **kw):
        """Run cmd inside the container (all its namespaces, clean environment).

        Returns an Out (stdout as str, .rc, .err); see base.run for check,
        merge, input. Raises CmdError on failure unless check=False."""
        self._need()
        return run(["nsenter", "-t", self.leader, "-a", "env", "-i", "--default-signal",
                    *INSIDE_ENV, *cmd], timeout=timeout or SETTINGS.cmd_timeout,
                   shown=show(cmd), cmdlog=self.cmdlog, **kw)

    def n(self, *cmd, timeout=None, **kw):
        """Run a HOST binary (curl, prometheus, a test client) in the container's
        network namespace; files and environment stay the host's."""
        self._need()
        return run(["nsenter", "-t", self.leader, "-n", *cmd],
                   timeout=timeout or SETTINGS.cmd_timeout, shown=show(cmd),
                   cmdlog=self.cmdlog, **kw)

    def bg(self, log_name, *cmd):
        """Like n(), in the background with output to LOG_NAME in the case dir;
        stopped at teardown (earlier: .stop()). Returns the Bg."""
        self._need()
        path = log_name if os.path.isabs(log_name) else os.path.join(self.dir, log_name)
        self.cmdlog.write(f"$ {show(cmd)} >{path} &\n")
        return Bg(cmd, path, self.jobs, wrap=["nsenter", "-t", self.leader, "-n"])

    # --- waits ---------------------------------------------------------------------

    def _wait(self, desc, get, ok, timeout, interval=None, show_value=False):
        """Call get() until ok(value); bounded. A CmdError counts as "not yet".
        On timeout the case fails, showing the last value or error."""
        t0 = time.monotonic()
        last = None

        def check():
            nonlocal last
            try:
                last = get()
                return ok(last)
            except CmdError as e:
                last = e
                return False
        if poll(timeout, check, interval):
            log(f"ok: {desc}{f' = {last}' if show_value else ''} ({since(t0)} s)")
            return last
        fail(f"timeout after {timeout:g}s: {desc}; last: {last!r}"
             if not isinstance(last, CmdError) else
             f"timeout after {timeout:g}s: {desc}; last: {last}")

    def wait_for(self, desc, predicate, timeout):
        """Call predicate() every SETTINGS.poll s until it returns a true value,
        which is returned. Bounded: on timeout the case fails."""
        return self._wait(desc, predicate, bool, timeout)

    def unit_prop(self, unit, prop):
        """A unit property (ActiveState, SubState, StatusText, Result, MainPID, ...)."""
        return self.c("systemctl", "show", "-p", prop, "--value", unit, check=False)

    def unit_state(self, unit):
        """"ActiveState/SubState", e.g. "active/running"."""
        return f"{self.unit_prop(unit, 'ActiveState')}/{self.unit_prop(unit, 'SubState')}"

    def wait_unit(self, unit, state, timeout):
        """Until ActiveState == state ("failed"), or "Active/Sub" == state ("active/running")."""
        get = (lambda: self.unit_state(unit)) if "/" in state else \
            (lambda: self.unit_prop(unit, "ActiveState"))
        self._wait(f"{unit} is {state}", get, lambda v: v == state, timeout)

    def wait_tcp(self, port, timeout):
        """Until 127.0.0.1:PORT accepts connections in the container's network."""
        self.wait_for(f"127.0.0.1:{port} accepts connections", lambda: self.n(
            "bash", "-c", 'exec 3<>"/dev/tcp/127.0.0.1/$1"', "_", port, timeout=3) == "", timeout)

    # --- journal -------------------------------------------------------------------

    def journal(self, unit, *args, output="short-monotonic", **kw):
        """journalctl -u UNIT (extra args passed on), as text."""
        return self.c("journalctl", "-u", unit, "--no-pager", "-o", output, *args, **kw)

    def journal_lines(self, unit, regex):
        """Lines of the unit's journal (messages only) that match regex."""
        r = re.compile(regex)
        return [x for x in self.journal(unit, output="cat").splitlines() if r.search(x)]

    def journal_wait(self, unit, regex, timeout):
        """Until a message of the unit matches regex; returns the matching lines."""
        return self.wait_for(f"journal of {unit} matches /{regex}/",
                             lambda: self.journal_lines(unit, regex), timeout)

    # --- files and packages ----------------------------------------------------------

    def put(self, path, text, mode="0644"):
        """Write text to path inside the container (parents created)."""
        self.c("sh", "-c", 'mkdir -p "$(dirname "$1")" && cat >"$1" && chmod "$2" "$1"',
               "_", path, mode, input=text)

    def install_deb(self, *debs):
        """apt-get install /srv/debs/DEB... inside the container (default: the only
        wsechod_*.deb there). Offline: dependencies must be in the rootfs. Keeps
        locally modified conffiles on upgrade."""
        if not debs:
            debs = [f for f in os.listdir(self.debdir) if re.fullmatch(r"wsechod_.*\.deb", f)]
            if len(debs) != 1:
                fail(f"install_deb: need exactly one wsechod_*.deb in {self.debdir} (found {debs})")
        args = []
        for f in map(os.path.basename, debs):
            if not os.path.isfile(os.path.join(self.debdir, f)):
                fail(f"install_deb: no {f} in {self.debdir}")
            args.append(f"/srv/debs/{f}")
        return self.c("apt-get", "install", "-y", "-q", "--no-install-recommends",
                      "-o", "Dpkg::Options::=--force-confdef",
                      "-o", "Dpkg::Options::=--force-confold", *args,
                      timeout=SETTINGS.install_timeout)

    # --- metrics and Prometheus -----------------------------------------------------

    def metric(self, series, port=None):
        """Value (text) of one series in http://127.0.0.1:PORT/metrics, fetched
        directly (no Prometheus, no 5 s wait), or None if absent. series is the
        name plus labels as exposed: 'x_total{result="ok"}'."""
        body = self.n("curl", "-fsS", "--max-time", "5",
                      f"http://127.0.0.1:{port or SETTINGS.metrics_port}/metrics", timeout=10)
        for line in body.splitlines():
            w = line.split()
            if len(w) >= 2 and w[0] == series:
                return w[1]
        return None

    def metric_wait(self, series, want, timeout, port=None):
        """Poll /metrics until the value of series matches want (see match())."""
        return self._wait(f"metric {series}", lambda: self.metric(series, port),
                          lambda v: match(v, want), timeout, show_value=True)

    def prometheus_start(self, metrics_port):
        """Prometheus (host binary) on 127.0.0.1:SETTINGS.prom_port in the container
        network, scraping job "wsechod" (127.0.0.1:METRICS_PORT) and itself every
        1 s; waits (bounded) for /-/ready. The first scrape still takes 5-6 s."""
        d = os.path.join(self.dir, "prometheus")
        os.makedirs(os.path.join(d, "tsdb"), exist_ok=True)
        conf = os.path.join(d, "prometheus.yml")
        port = SETTINGS.prom_port
        with open(conf, "w") as f:
            f.write("global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
                    "scrape_configs:\n"
                    "  - job_name: wsechod\n"
                    f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
                    "  - job_name: prometheus\n"
                    f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")
        run(["promtool", "check", "config", conf], timeout=30)
        self.prom = self.bg(os.path.join(d, "prometheus.log"), "prometheus",
                            f"--config.file={conf}", f"--storage.tsdb.path={d}/tsdb",
                            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn")
        self.wait_for("prometheus ready", lambda: self.n(
            "curl", "-fsS", "--max-time", "2", f"http://127.0.0.1:{port}/-/ready", timeout=5), 15)

    def _prom_api(self, path, **params):
        args = [a for k, v in params.items() for a in ("--data-urlencode", f"{k}={v}")]
        out = self.n("curl", "-fsS", "--max-time", "5", *args,
                     f"http://127.0.0.1:{SETTINGS.prom_port}/api/v1/{path}", timeout=10)
        try:
            d = json.loads(out)
        except ValueError as e:
            raise CmdError(f"prometheus {path}", 2, out, str(e))
        if d.get("status") != "success":
            raise CmdError(f"prometheus {path}", 2, "", f"{d.get('errorType')}: {d.get('error')}")
        return d["data"]

    def prom_query(self, expr):
        """Instant query: one value (text) per series, sorted by labels; [] if empty."""
        data = self._prom_api("query", query=expr)
        r, t = data["result"], data["resultType"]
        if t in ("scalar", "string"):
            return [r[1]]
        r = sorted(r, key=lambda s: json.dumps(s["metric"], sort_keys=True))
        return [s["value"][1] if t == "vector" else s["values"][-1][1] for s in r]

    def prom_targets(self):
        """One line per target: job health lastError."""
        return "\n".join(f"{t['labels'].get('job')} {t['health']} {t.get('lastError') or '-'}"
                         for t in self._prom_api("targets")["activeTargets"])

    def prom_wait(self, expr, want, timeout):
        """Poll Prometheus until the first value of expr matches want (see match())."""
        def first():
            v = self.prom_query(expr)
            return v[0] if v else None
        try:
            return self._wait(f"prometheus {expr}", first, lambda v: match(v, want),
                              timeout, 0.25, show_value=True)
        except base.CaseFailed:
            try:
                log("prometheus targets:\n" + self.prom_targets())
            except CmdError as e:
                log(f"prometheus targets: {e}")
            raise


def _quiet(fn, *args, **kw):
    """fn(*args, **kw), a failure turned into its message (for diagnostics and teardown)."""
    try:
        return fn(*args, **kw)
    except CmdError as e:
        return str(e)


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _read_all(pattern):
    return [_read(p) for p in glob.glob(pattern)]


def _ns_id(pid):
    try:
        st = os.stat(f"/proc/{pid}/ns/pid")
        return st.st_dev, st.st_ino
    except OSError:
        return None


def _ppid(pid):
    try:
        return int(_read(f"/proc/{pid}/stat").rpartition(")")[2].split()[1])
    except (IndexError, ValueError):
        return None


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_exit(p, timeout):
    try:
        p.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False
