"""Foundations of the e2e harness: settings, logging, errors, signals, processes.

Invariants (what the rest of the harness builds on):

* Every command runs in a process group of its own (`start_new_session=True`)
  and is bounded by a timeout. When `run()` returns or raises, for any reason
  (success, failure, timeout, Ctrl-C), that group is empty: whatever is left
  gets SIGTERM, then SIGKILL after a grace period, and the command is reaped.
* `Bg` jobs are the same, for commands that outlive one call; `Bg.stop()` ends
  their whole group. They also get SIGTERM from the kernel if the runner dies
  (PR_SET_PDEATHSIG), so even a SIGKILLed runner leaves no orphaned job.
* The first SIGINT, SIGTERM or SIGHUP becomes an `Interrupted` exception (a
  BaseException: `except Exception` in a case does not swallow it); later
  ones are ignored, so cleanup is never cut short by a second Ctrl-C. While a
  child is being started or a group ended, the exception waits until that is
  done; inside `shielded()` (teardown) it is only recorded. `received()` tells
  the runner that a signal arrived. A signal ignored when the runner started
  stays ignored (run-all's background --prepare survives a Ctrl-C to it).
* Every wait is bounded: `wait_gone`, `Bg.wait`, `poll` all take a timeout.
"""

import contextlib
import ctypes
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

DEVNULL = subprocess.DEVNULL


def _env(name, default):
    return os.environ.get(name) or default


@dataclass
class Settings:
    """Knobs, each overridable from the environment (E2E_*)."""

    cache: str = field(default_factory=lambda: _env(
        "E2E_CACHE",
        os.path.join(_env("XDG_CACHE_HOME", os.path.join(_env("HOME", "/root"), ".cache")), "wsechod")))
    suite: str = field(default_factory=lambda: _env("E2E_SUITE", "bookworm"))
    include: str = field(default_factory=lambda: _env("E2E_INCLUDE", "systemd,systemd-sysv,dbus"))
    rootfs_tag: str = field(default_factory=lambda: _env("E2E_ROOTFS_TAG", "v2"))  # bump to rebuild
    mirror: str = field(default_factory=lambda: _env("E2E_MIRROR", ""))
    rootfs_timeout: float = field(default_factory=lambda: float(_env("E2E_ROOTFS_TIMEOUT", 900)))
    boot_timeout: float = field(default_factory=lambda: float(_env("E2E_BOOT_TIMEOUT", 60)))
    cmd_timeout: float = field(default_factory=lambda: float(_env("E2E_CMD_TIMEOUT", 60)))
    install_timeout: float = field(default_factory=lambda: float(_env("E2E_INSTALL_TIMEOUT", 120)))
    bg_timeout: float = field(default_factory=lambda: float(_env("E2E_BG_TIMEOUT", 1800)))
    build_timeout: float = field(default_factory=lambda: float(_env("E2E_BUILD_TIMEOUT", 3600)))
    prom_port: int = field(default_factory=lambda: int(_env("E2E_PROM_PORT", 9090)))
    metrics_port: int = field(default_factory=lambda: int(_env("E2E_METRICS_PORT", 9180)))
    journal_units: list = field(default_factory=lambda: _env("E2E_JOURNAL_UNITS", "wsechod").split())
    console_lines: int = field(default_factory=lambda: int(_env("E2E_CONSOLE_LINES", 60)))
    poll: float = field(default_factory=lambda: float(_env("E2E_POLL", 0.1)))
    keep: bool = field(default_factory=lambda: bool(os.environ.get("E2E_KEEP")))


SETTINGS = Settings()

# --- time and logging --------------------------------------------------------

# Wall-clock start of the run; the background rootfs job inherits it.
T0 = float(os.environ.get("E2E_T0") or time.time())
os.environ["E2E_T0"] = repr(T0)


def since(t0):
    """Seconds since a time.monotonic() stamp, as "3.2"."""
    return f"{time.monotonic() - t0:.1f}"


def log(msg):
    """Timestamped (seconds since the run started) message on stderr."""
    sys.stderr.write(f"[e2e {time.time() - T0:6.1f}s] {msg}\n")
    sys.stderr.flush()


def section(title, text):
    """A diagnostics block on stderr."""
    sys.stderr.write(f"----- {title}\n")
    if text:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
    sys.stderr.flush()


def tail(text, n):
    return "\n".join(text.splitlines()[-n:])


# --- errors --------------------------------------------------------------------


class CaseFailed(Exception):
    """A check of a case failed; the message says which."""


class CmdError(CaseFailed):
    """A command failed (rc != 0) or timed out (rc None)."""

    def __init__(self, shown, rc, out, err, timeout=None):
        self.cmd, self.rc, self.out, self.err = shown, rc, out, err
        what = f"timed out after {timeout:g}s" if rc is None else f"rc={rc}"
        text = tail("\n".join(s for s in (out, err) if s), 20)
        super().__init__(f"command failed ({what}): {shown}" + (f"\n{text}" if text else ""))


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived; `signum` says which."""

    def __init__(self, signum):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def fail(msg):
    """Fail the current case."""
    raise CaseFailed(msg)


def assert_eq(desc, got, want):
    """Fail the case unless got == want; log the success."""
    if got != want:
        fail(f"{desc}: got {got!r}, want {want!r}")
    log(f"ok: {desc} = {want!r}")


# --- signals -------------------------------------------------------------------


class _Sig:
    depth = 0          # > 0: inside deferred()/shielded(); a signal is only recorded
    shield = 0         # > 0: inside shielded(); a recorded signal is never raised
    pending = None     # signal recorded inside deferred(), raised on leaving it
    first = None       # first signal received in this run


def _on_signal(signum, _frame):
    if _Sig.first:  # only the first signal interrupts; cleanup is under way
        return
    _Sig.first = signum
    if _Sig.depth:
        _Sig.pending = _Sig.pending or signum
        return
    raise Interrupted(signum)


def install_signal_handlers():
    """INT/TERM/HUP raise Interrupted, except those ignored when we started (as
    for a background job of a non-interactive shell): they stay ignored."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) != signal.SIG_IGN:
            signal.signal(s, _on_signal)


def received():
    """The first INT/TERM/HUP received so far, or None."""
    return _Sig.first


@contextlib.contextmanager
def deferred():
    """Hold signals back for a short critical section (start a child, end a group)."""
    _Sig.depth += 1
    try:
        yield
    finally:
        _Sig.depth -= 1
        if _Sig.depth == 0 and _Sig.pending and not _Sig.shield:
            sig, _Sig.pending = _Sig.pending, None
            raise Interrupted(sig)


@contextlib.contextmanager
def shielded():
    """Cleanup: signals are recorded (see received()) but never interrupt it."""
    _Sig.depth += 1
    _Sig.shield += 1
    try:
        yield
    finally:
        _Sig.shield -= 1
        _Sig.depth -= 1
        if _Sig.depth == 0:
            _Sig.pending = None


# --- processes -----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """preexec_fn: SIGTERM this child when the runner dies (even by SIGKILL)."""
    parent = os.getpid()

    def pre():
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the runner died before prctl
            os.kill(os.getpid(), signal.SIGTERM)
    return pre


# False inside the background rootfs job: its children stay in the job's group,
# so ending that one group ends debootstrap and everything it started.
OWN_GROUPS = True


def alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def starttime(pid):
    """Start time of pid (clock ticks since boot): tells a reused PID apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def poll(timeout, check, interval=None):
    """Call check() every `interval` s until it returns true; bounded. Returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval or SETTINGS.poll)


def wait_gone(pid, timeout):
    return poll(timeout, lambda: not alive(pid), 0.05)


def _members(pgid):
    """Live (non-zombie) processes of process group pgid."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    st = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if len(st) > 2 and st[2] == str(pgid) and st[0] != "Z":
                found.append(int(name))
    return found


def end_group(p, grace=5.0):
    """End p and its whole process group (SIGTERM, grace, SIGKILL), then reap p.

    A group is signalled only while a live member is in it: that member pins
    the group's ID, so a reused PID is never hit. Returns at once when the
    group is empty, the usual case. Safe to call twice."""
    with deferred():
        if OWN_GROUPS:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                p.poll()
                if not _members(p.pid):
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
                poll(grace, lambda: p.poll() is not None and not _members(p.pid), 0.05)
            else:
                if _members(p.pid):
                    log(f"warning: process group {p.pid} survived SIGKILL")
        elif p.poll() is None:
            p.terminate()
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            log(f"warning: pid {p.pid} not reaped")


class Out(str):
    """A command's stdout (trailing newlines stripped, like $(...)), with .rc and .err."""

    rc = 0
    err = ""


def show(cmd):
    return shlex.join(str(a) for a in cmd)


def run(cmd, *, timeout, input=None, check=True, merge=False, passthrough=False, stdout=None,
        shown=None, cmdlog=None, grace=5.0, **kw):
    """Run cmd in its own process group, bounded by timeout (s); see the module invariants.

    Returns an Out. check: raise CmdError on rc != 0. merge: stderr into stdout.
    passthrough: output goes to our stderr, not captured. stdout: a file for it.
    A timeout always raises.
    """
    cmd = [str(a) for a in cmd]
    shown = shown or show(cmd)
    sink = sys.stderr if passthrough else subprocess.PIPE
    t0 = time.monotonic()
    p = None
    try:
        with deferred():  # a signal now is raised after p is set, inside the try
            p = subprocess.Popen(
                cmd, stdin=DEVNULL if input is None else subprocess.PIPE,
                stdout=sink if stdout is None else stdout,
                stderr=subprocess.STDOUT if merge else sink, text=True, errors="replace",
                start_new_session=OWN_GROUPS, **kw)
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            end_group(p, grace)
            try:
                out, err = p.communicate(timeout=grace)
            except subprocess.TimeoutExpired:  # an escaped process holds the pipe
                out = err = ""
            _cmdlog(cmdlog, shown, None, t0, out, err)
            raise CmdError(shown, None, out or "", err or "", timeout) from None
    finally:
        if p is not None:
            end_group(p, grace)
    out, err = out or "", err or ""
    _cmdlog(cmdlog, shown, p.returncode, t0, out, err)
    if check and p.returncode != 0:
        raise CmdError(shown, p.returncode, out, err)
    o = Out(out.rstrip("\n"))
    o.rc, o.err = p.returncode, err
    return o


def _cmdlog(f, shown, rc, t0, out, err):
    if f is None:
        return
    f.write(f"$ {shown}\n# rc={'timeout' if rc is None else rc} in {since(t0)} s\n")
    for text in (out, err):
        if text:
            f.write(text if text.endswith("\n") else text + "\n")
    f.flush()


def pipeline(cmds, *, timeout, grace=5.0):
    """cmd1 | cmd2 | ... in one process group, bounded; raises CmdError unless every rc is 0."""
    procs = []
    try:
        with deferred():
            for i, cmd in enumerate(cmds):
                procs.append(subprocess.Popen(
                    [str(a) for a in cmd], stdin=procs[-1].stdout if procs else DEVNULL,
                    stdout=subprocess.PIPE if i < len(cmds) - 1 else DEVNULL,
                    stderr=subprocess.PIPE, text=True, errors="replace",
                    start_new_session=OWN_GROUPS and not procs,
                    process_group=procs[0].pid if OWN_GROUPS and procs else None))
                if i:
                    procs[-2].stdout.close()  # only the next stage holds the pipe
        deadline = time.monotonic() + timeout
        errs = []
        for p in procs:
            try:
                errs.append(p.communicate(timeout=max(0.0, deadline - time.monotonic()))[1])
            except subprocess.TimeoutExpired:
                raise CmdError(" | ".join(show(c) for c in cmds), None, "", "", timeout) from None
        for cmd, p, err in zip(cmds, procs, errs):
            if p.returncode != 0:
                raise CmdError(show(cmd), p.returncode, "", err or "")
    finally:
        for p in procs:  # the first call ends the whole group when it has its own
            end_group(p, grace)


class Bg:
    """A background command (own process group, output to a log file), ended by stop().

    Its lifetime is capped by SETTINGS.bg_timeout (coreutils timeout inside)."""

    def __init__(self, cmd, log_path, registry, *, wrap=(), **kw):
        """Start [*wrap, timeout, *cmd]; registry (a list) gets self before any
        signal can be raised, so whoever tears down can always stop it."""
        self.log_path = log_path
        self.cmd = show(cmd)
        with open(log_path, "wb") as f, deferred():
            self.p = subprocess.Popen(
                [*map(str, wrap), "timeout", "-k", "5", f"{SETTINGS.bg_timeout:g}", *map(str, cmd)],
                stdin=DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent(), **kw)
            self.pid = self.p.pid
            registry.append(self)

    def alive(self):
        return self.p.poll() is None

    def wait(self, timeout, desc=None):
        """Wait (bounded) for it to exit; returns its rc. Fails the case on timeout."""
        t0 = time.monotonic()
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            fail(f"timeout after {timeout:g}s: {desc or self.cmd + ' exits'}; its log:\n"
                 + tail(self.text(), 20))
        if desc:
            log(f"ok: {desc} ({since(t0)} s)")
        return rc

    def text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def count(self, regex):
        """Number of log lines matching regex (like grep -c)."""
        r = re.compile(regex)
        return sum(1 for line in self.text().splitlines() if r.search(line))

    def stop(self, grace=5.0):
        end_group(self.p, grace)


def rm_tree(d):
    """Remove a directory tree, unmounting anything below it first (an
    interrupted debootstrap leaves /proc, /sys, ... mounted in its target)."""
    d = os.path.abspath(d)
    if d == "/" or not os.path.isdir(d):
        return
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if target.startswith(d + "/"):
                mounts.append(target)
    for m in sorted(mounts, reverse=True):
        run(["umount", "-l", m], timeout=30, check=False)
    run(["rm", "-rf", "--one-file-system", "--", d], timeout=300)
