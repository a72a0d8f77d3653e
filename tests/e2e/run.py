#!/usr/bin/python3
"""tests/e2e/run.py: end-to-end tests of wsechod under a real systemd.

Every case boots its own throw-away container (systemd-nspawn --boot,
volatile overlay, private network) from a cached Debian minbase rootfs.
Needs root and a Debian 12 host; installs its host packages on first use.

Usage: tests/e2e/run.py [CASE_REGEX]   run the cases (all, or those matching)
       tests/e2e/run.py --prepare      only host tools + rootfs cache (e.g. in
                                       the background while cargo builds)
  E2E_DEBDIR=DIR   directory with the .debs to test (bound at /srv/debs)
  E2E_KEEP=1       keep the work dir after success (per case: commands.log,
                   every command with its output; console.log; job logs)
  E2E_CACHE        rootfs cache (default ${XDG_CACHE_HOME:-~/.cache}/wsechod)

The last line of output is "e2e: N passed, N failed"; rc != 0 on failure.
A case is a function taking a booted Container (tests/e2e/e2e/container.py),
registered with @case; cases run in the order they appear here.
"""

import argparse
import glob
import json
import os
import re
import shutil
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from e2e import SETTINGS, RootfsJob, Session, assert_eq, case, fail, host_tools, log, run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
URL = "ws://127.0.0.1:8080/ws"
CONF = "/etc/wsechod/wsechod.toml"
WSCLIENT = os.path.join(ROOT, "target/release/examples/wsclient")
DEB1 = DEB2 = None  # file names in the deb dir, set by build()


def build(workdir):
    """The .deb under test (from E2E_DEBDIR, or built here), a second revision of
    it for the upgrade case, and the WebSocket client the cases run in the
    container network. Returns the deb dir the containers get at /srv/debs."""
    global DEB1, DEB2
    t = SETTINGS.build_timeout
    # The cases get a directory of their own: cargo-deb deletes other versions from
    # the directory it writes to, so the two revisions are built apart and copied.
    debs_in = os.environ.get("E2E_DEBDIR")
    debdir = os.path.join(workdir, "debs")
    os.makedirs(debdir, exist_ok=True)
    if not debs_in:
        debs_in = os.path.join(workdir, "build/v1")
        run(["packaging/build-deb.sh", "-o", debs_in + "/"], cwd=ROOT, timeout=t, passthrough=True)
    debs = glob.glob(os.path.join(debs_in, "wsechod_*-1_*.deb"))
    if len(debs) != 1:
        fail(f"need exactly one wsechod_*-1_*.deb in {debs_in}, found {len(debs)}")
    DEB1 = os.path.basename(debs[0])
    DEB2 = DEB1.replace("-1_", "-2_", 1)
    shutil.copyfile(debs[0], os.path.join(debdir, DEB1))
    v2 = os.path.join(workdir, "build/v2")
    run(["packaging/build-deb.sh", "--no-build", "--deb-revision", "2", "-o", v2 + "/"],
        cwd=ROOT, timeout=t, passthrough=True)
    shutil.copyfile(os.path.join(v2, DEB2), os.path.join(debdir, DEB2))
    run(["cargo", "build", "--locked", "--release", "--example", "wsclient"], cwd=ROOT,
        timeout=t, passthrough=True)
    os.chmod(debdir, 0o755)  # readable by apt's _apt user inside the container
    for f in (DEB1, DEB2):
        os.chmod(os.path.join(debdir, f), 0o644)
    return debdir


# --- helpers ---------------------------------------------------------------------


def install_v1(ct):
    """Installs the first revision and checks the unit came up through READY=1."""
    ct.install_deb(DEB1)
    assert_eq("is-enabled", ct.c("systemctl", "is-enabled", "wsechod", check=False), "enabled")
    assert_eq("is-active", ct.c("systemctl", "is-active", "wsechod", check=False), "active")


def hold(ct, *args):
    """wsclient holding connections in the container network, in the background."""
    h = ct.bg("hold.log", WSCLIENT, "hold", URL, *args)
    ct.wait_for("wsclient holds its connections", lambda: h.count("^held "), 10)
    return h


def echo(ct, url, failure):
    """A text and a binary echo over url; fails the case with `failure` if not."""
    out = ct.n(WSCLIENT, "echo", url, check=False)
    if out.rc != 0:
        fail(f"{failure}: {out} {out.err}".strip())
    return out


def drains(ct):
    """How many times the journal shows the daemon draining on SIGTERM."""
    return len(ct.journal_lines("wsechod", "SIGTERM: draining"))


def entries(ct, unit, *match):
    """The unit's journal entries (journalctl -o json, each a dict), with optional
    FIELD=VALUE matches passed on to journalctl."""
    out = ct.c("journalctl", "-u", unit, "--no-pager", "-o", "json", *match)
    return [json.loads(x) for x in out.splitlines() if x.strip()]


def main_pid(ct, unit="wsechod"):
    """MainPID if a process runs, else None ("" while the unit is between processes,
    "0" when none runs)."""
    pid = ct.unit_prop(unit, "MainPID")
    return pid if pid not in ("", "0") else None


def new_main_pid(ct, old, timeout, unit="wsechod"):
    """Until the unit has a main process other than `old`; returns its PID."""
    return ct.wait_for(f"{unit} has a new main PID (was {old})",
                       lambda: (p := main_pid(ct, unit)) not in (None, old) and p, timeout)


# --- cases -------------------------------------------------------------------------


@case
def install(ct):
    """apt install: enabled, active only after READY=1 (StatusText comes from the
    daemon), text and binary echo, the sandbox rated 2.0 or lower."""
    install_v1(ct)
    assert_eq("Type", ct.unit_prop("wsechod", "Type"), "notify")
    status = ct.unit_prop("wsechod", "StatusText")
    if not status.startswith("serving ws://0.0.0.0:8080/ws, metrics http://127.0.0.1:9180/metrics"):
        fail(f"StatusText is {status!r}")
    log(f"StatusText: {status}")
    assert_eq("echo", echo(ct, URL, "echo failed"), "echo ok: text and binary")
    ct.c("test", "-f", CONF)
    ct.c("test", "-f", "/usr/share/man/man8/wsechod.8.gz")
    ct.c("test", "-f", "/usr/share/man/man5/wsechod.toml.5.gz")
    out = ct.c("systemd-analyze", "security", "wsechod.service", check=False, merge=True)
    m = re.search(r"Overall exposure level for wsechod\.service: ([0-9.]*)", out)
    log(f"systemd-analyze security: {m and m.group(1)}")
    if not m or not m.group(1):
        fail(f"no score in: {out}")
    try:
        score = float(m.group(1))
    except ValueError:
        fail(f"no score in: {out}")
    if not score <= 2.0:
        fail(f"exposure {score} is above 2.0")


@case
def prometheus(ct):
    """A real Prometheus in the container network sees the connections we hold."""
    ct.prometheus_start(9180)
    install_v1(ct)
    hold(ct, "3")
    ct.prom_wait('wsechod_connections{state="open"}', 3, 20)
    ct.prom_wait('up{job="wsechod"}', 1, 5)
    body = ct.n("curl", "-fsS", "http://127.0.0.1:9180/metrics")
    out = run(["promtool", "check", "metrics"], input=body + "\n", timeout=30, check=False,
              merge=True)
    if out.rc != 0:
        fail(f"promtool check metrics complained:\n{out}")


@case
def reload(ct):
    """systemctl reload keeps a session (it goes on echoing) and counts the reload."""
    install_v1(ct)
    h = hold(ct, "1", "--every", "100")
    ct.wait_for("echoes flowing", lambda: h.count("^echo 0 3$"), 10)
    ct.c("sed", "-i", 's/^#drain_timeout = .*/drain_timeout = "5s"/', CONF)
    ct.c("systemctl", "reload", "wsechod")
    # systemd 252 returns before the daemon reloaded: wait for the counter.
    ct.metric_wait('wsechod_config_reloads_total{result="success"}', 1, 10)
    ct.wait_unit("wsechod", "active/running", 10)
    ct.journal_wait("wsechod", 'shutdown.drain_timeout: "10s" -> "5s"', 5)
    before = h.count("^echo ")
    ct.wait_for("the session still echoes after the reload",
                lambda: h.count("^echo ") >= before + 5, 10)
    if not h.alive():
        fail(f"the client ended: {h.text()}")
    after = ct.unit_prop("wsechod", "StatusText")
    if "last reload OK" not in after:
        fail(f"StatusText after reload: {after}")


@case
def stop_drains(ct):
    """systemctl stop with clients: each gets close 1000, the journal shows the
    drain, the unit ends with Result=success."""
    install_v1(ct)
    h = hold(ct, "5")
    ct.metric_wait('wsechod_connections{state="open"}', 5, 10)
    ct.c("systemctl", "stop", "wsechod")
    if h.wait(10, "wsclient saw every close") != 0:
        fail(f"wsclient failed: {h.text()}")
    assert_eq("close 1000 frames", h.count("^close 1000 server shutting down$"), 5)
    ct.journal_wait("wsechod", "SIGTERM: draining", 5)
    # Logged natively to the journal: the counts are fields of the entry, not its text.
    done = ct.wait_for("the journal has the drain report", lambda: entries(
        ct, "wsechod", "MESSAGE=drain complete, exiting"), 5)
    assert_eq("drain report", {k: done[-1].get(k) for k in ("CLOSED", "ABORTED")},
              {"CLOSED": "5", "ABORTED": "0"})
    assert_eq("Result", ct.unit_prop("wsechod", "Result"), "success")
    assert_eq("ExecMainStatus", ct.unit_prop("wsechod", "ExecMainStatus"), "0")


@case
def kill9_restarts(ct):
    """kill -9: systemd starts it again."""
    install_v1(ct)
    pid = main_pid(ct)
    if not pid:
        fail("no MainPID before the kill")
    ct.c("sh", "-c", f"kill -9 {pid}")
    # Between the two processes MainPID reads "0" (or "" while systemctl show
    # races the restart): neither counts as restarted.
    new_main_pid(ct, pid, 15)
    ct.wait_unit("wsechod", "active/running", 10)
    assert_eq("NRestarts", ct.unit_prop("wsechod", "NRestarts"), "1")
    echo(ct, URL, "no echo after the restart")


@case
def bad_config(ct):
    """An invalid config: restart fails, the journal names file and key, and the
    unit stays failed instead of restarting in a loop (exit 78 is exempt)."""
    install_v1(ct)
    ct.c("sed", "-i", r"s/^\[server\]$/[server]\nmax_conections = 5/", CONF)
    if ct.c("systemctl", "restart", "wsechod", check=False).rc == 0:
        fail("restart succeeded with an invalid configuration")
    ct.journal_wait("wsechod", "/etc/wsechod/wsechod.toml: key `server.max_conections`", 5)
    ct.wait_unit("wsechod", "failed", 10)
    assert_eq("ExecMainStatus", ct.unit_prop("wsechod", "ExecMainStatus"), "78")
    # A pending Restart=on-failure would show as SubState auto-restart; failed/failed
    # means systemd scheduled none.
    assert_eq("SubState", ct.unit_prop("wsechod", "SubState"), "failed")
    assert_eq("NRestarts", ct.unit_prop("wsechod", "NRestarts"), "0")


@case
def upgrade(ct):
    """Upgrading keeps a locally edited conffile and restarts (drains) the daemon."""
    install_v1(ct)
    ct.c("sed", "-i", 's|^#path = "/ws"|path = "/echo"|', CONF)
    ct.c("systemctl", "restart", "wsechod")
    echo(ct, "ws://127.0.0.1:8080/echo", "edited path not served")
    pid = ct.unit_prop("wsechod", "MainPID")
    before = drains(ct)
    ct.install_deb(DEB2)
    want = DEB2.removeprefix("wsechod_").split("_")[0]
    assert_eq("installed version", ct.c("dpkg-query", "-W", "-f=${Version}", "wsechod"), want)
    if ct.c("grep", "-q", '^path = "/echo"', CONF, check=False).rc != 0:
        fail("the local edit was lost")
    ct.wait_unit("wsechod", "active/running", 10)
    if ct.unit_prop("wsechod", "MainPID") == pid:
        fail("not restarted on upgrade")
    # The old process drained on the way out.
    assert_eq("drains in the journal", drains(ct), before + 1)
    echo(ct, "ws://127.0.0.1:8080/echo", "no echo after the upgrade")


@case
def remove_purge(ct):
    """Remove leaves the conffile and masks the unit; purge leaves nothing."""
    install_v1(ct)
    ct.c("apt-get", "remove", "-y", "-q", "wsechod")
    if ct.c("test", "!", "-e", "/usr/bin/wsechod", check=False).rc != 0:
        fail("binary still there after remove")
    if ct.c("test", "-f", CONF, check=False).rc != 0:
        fail("conffile gone after remove")
    assert_eq("is-enabled after remove",
              ct.c("systemctl", "is-enabled", "wsechod", check=False, merge=True), "masked")
    ct.c("apt-get", "purge", "-y", "-q", "wsechod")
    # (The test root file system's own marker, /etc/wsechod-e2e-rootfs, is not ours.)
    left = ct.c("sh", "-c", 'find /etc /usr /var/lib/systemd -name "*wsechod*" '
                '! -name wsechod-e2e-rootfs 2>/dev/null', check=False)
    assert_eq("files left after purge", left, "")
    if ct.c("test", "!", "-e", "/etc/wsechod", check=False).rc != 0:
        fail("/etc/wsechod left after purge")


@case
def socket_activation(ct):
    """The shipped socket unit: off by default; enabled, systemd passes the port."""
    install_v1(ct)
    assert_eq("socket enabled by default",
              ct.c("systemctl", "is-enabled", "wsechod.socket", check=False), "disabled")
    ct.c("systemctl", "stop", "wsechod.service")
    ct.c("systemctl", "enable", "--now", "wsechod.socket")
    ct.c("systemctl", "start", "wsechod.service")
    ct.journal_wait("wsechod", "using sockets passed by systemd", 10)
    echo(ct, URL, "no echo over the passed socket")


# --- main --------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(
        prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [CASE_REGEX] | --prepare")
    p.add_argument("regex", nargs="?", metavar="CASE_REGEX", help=argparse.SUPPRESS)
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.prepare and args.regex:
        p.error("--prepare takes no CASE_REGEX")
    regex = args.regex or os.environ.get("E2E_ONLY", "")
    try:
        re.compile(regex)
    except re.error as e:
        p.error(f"bad CASE_REGEX {regex!r}: {e}")
    with Session() as s:
        t = time.monotonic()
        host_tools(s.workdir)
        s.stage("host tools", t)
        t = time.monotonic()
        s.rootfs_job = RootfsJob(s.workdir)
        if args.prepare:
            rootfs = s.rootfs_job.wait()
            log(f"prepared: rootfs {rootfs} ({time.monotonic() - t:.1f} s)")
            s.ok = True
            return 0
        debdir = build(s.workdir)
        rootfs = s.rootfs_job.wait()
        s.stage("rootfs", t, rootfs)
        return s.run_cases(rootfs, debdir, regex)


if __name__ == "__main__":
    sys.exit(main())
