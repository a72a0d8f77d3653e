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

from e2e import (SETTINGS, RootfsJob, Session, assert_eq, case, fail, host_tools, log,  # noqa: E402
                 run, says)

ROOT = os.path.dirname(os.path.dirname(HERE))
URL = "ws://127.0.0.1:8080/ws"
CONF = "/etc/wsechod/wsechod.toml"
WSCLIENT = os.path.join(ROOT, "target/release/examples/wsclient")
# A test build (cargo feature test-wedge: SIGUSR2 blocks every runtime worker), in a
# target dir of its own so that the shipped .deb never contains it; bound into the
# watchdog case's container.
WEDGE_TARGET = os.path.join(ROOT, "target/wedge")
WEDGE_BIN = os.path.join(WEDGE_TARGET, "release/wsechod")
WEDGE_IN = "/srv/wedge/wsechod"
MONITORING = ["wsechod-dashboard.json", "wsechod-alerts.yml", "wsechod-alerts.test.yml"]
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
    run(["cargo", "build", "--locked", "--release", "--features", "test-wedge", "--bin", "wsechod"],
        cwd=ROOT, timeout=t, passthrough=True, env=dict(os.environ, CARGO_TARGET_DIR=WEDGE_TARGET))
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


def hold(ct, *args, url=URL, log_name="hold.log"):
    """wsclient holding connections in the container network, in the background."""
    h = ct.bg(log_name, WSCLIENT, "hold", url, *args)
    ct.wait_for("wsclient holds its connections", lambda: h.count("^held "), 10)
    return h


def echo(ct, url, failure, *extra):
    """A text and a binary echo over url (extra: wsclient echo options); fails the
    case with `failure` if not."""
    out = ct.n(WSCLIENT, "echo", url, *extra, check=False)
    if out.rc != 0:
        fail(f"{failure}: {out} {out.err}".strip())
    return out


def drains(ct, unit="wsechod"):
    """How many times the journal shows the daemon draining on SIGTERM."""
    return len(ct.journal_lines(unit, "SIGTERM: draining"))


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


def again(ct):
    """Journal lines saying a stored socket was taken back after a restart."""
    return ct.journal_lines("wsechod", r"listening on 0\.0\.0\.0:8080 again: the socket was "
                            "kept across the restart")


def start_loop(ct, log_name):
    """wsclient loop: connection attempts one after another, in the background, until
    stopped (see finish_loop); waits for the first 1000 upgrades."""
    lp = ct.bg(log_name, WSCLIENT, "loop", URL, "600", "--timeout", "30")
    ct.wait_for("the loop client got its first 1000 upgrades",
                lambda: lp.count("^progress upgraded="), 15)
    return lp


def finish_loop(ct, lp, what):
    """Waits for 1000 more upgrades (attempts after the event), stops the loop, and
    passes only if every attempt got 101. Returns the counts."""
    n = lp.count("^progress upgraded=")
    ct.wait_for(f"1000 more upgrades after {what}", lambda: lp.count("^progress upgraded=") > n, 30)
    lp.stop()
    last = [x for x in lp.text().splitlines() if x.startswith("loop: ")][-1:]
    m = last and re.fullmatch(r"loop: attempts=(\d+) upgraded=(\d+) refused=(\d+) reset=(\d+) "
                              r"timeout=(\d+) other=(\d+) longest_ms=(\d+)", last[0])
    if not m:
        fail(f"loop client: no summary line; its log:\n{lp.text()[-2000:]}")
    keys = ("attempts", "upgraded", "refused", "reset", "timeout", "other", "longest_ms")
    counts = dict(zip(keys, map(int, m.groups())))
    slow = [x for x in lp.text().splitlines() if x.startswith(("slow ", "fail "))]
    log(f"{what}: {last[0]}" + "".join(f"\n    {x}" for x in slow[:20]))
    if counts["upgraded"] != counts["attempts"] or counts["attempts"] == 0:
        fail(f"{what}: not every connection attempt got 101: {last[0]}\n" + "\n".join(slow[:20]))
    return counts


# --- cases -------------------------------------------------------------------------


@case
def install(ct):
    """apt install: enabled, active only after READY=1 (StatusText comes from the
    daemon), text and binary echo, the sandbox rated 2.0 or lower."""
    install_v1(ct)
    assert_eq("Type", ct.unit_prop("wsechod", "Type"), "notify")
    status = ct.unit_prop("wsechod", "StatusText")
    if not status.startswith("serving ws://0.0.0.0:8080/ws, metrics http://127.0.0.1:9180/metrics"
                             " (HTTP/1.1 and HTTP/2): "):
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
    # Logged natively to the journal: the counts are fields of the entry, and in its text
    # (what journalctl shows) as on stderr.
    done = ct.wait_for("the journal has the drain report", lambda: [
        e for e in entries(ct, "wsechod") if says(e, "drain complete, exiting")], 5)
    assert_eq("drain report", {k: done[-1].get(k) for k in ("CLOSED", "ABORTED")},
              {"CLOSED": "5", "ABORTED": "0"})
    if not re.fullmatch(r"wsechod::daemon: drain complete, exiting .*\bclosed=5 aborted=0\b.*",
                        done[-1]["MESSAGE"]):
        fail(f"the drain report's MESSAGE: {done[-1]['MESSAGE']!r}")
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


@case
def journal_fields(ct):
    """Under systemd the daemon logs natively to the journal: `journalctl -u wsechod
    CONN_ID=<id>` returns exactly one connection's lines (each with its PEER, the last
    one "connection ended" with STATE, CODE, READ and ECHOED, and MESSAGE the text line
    with them), none of another's. Where stderr is not the journal, the same daemon logs
    plain text."""
    install_v1(ct)
    ct.c("sed", "-i", 's/^#level = .*/level = "info,wsechod::connection=debug"/', CONF)
    ct.c("grep", "-q", '^level = "info,wsechod::connection=debug"$', CONF)
    ct.c("systemctl", "restart", "wsechod")
    peers = {}
    for code in (4001, 4002):
        out = echo(ct, URL, f"echo closing with {code} failed", "--close", str(code)).splitlines()
        m = re.fullmatch(r"closed (\d+) from (127\.0\.0\.1:\d+)", out[-1]) if out else None
        if not m or m.group(1) != str(code):
            fail(f"wsclient echo --close {code}: {out}")
        peers[code] = m.group(2)
    log(f"peers: {peers}")

    def ended(peer):
        return [e for e in entries(ct, "wsechod", f"PEER={peer}") if says(e, "connection ended")]
    for code, peer in peers.items():
        ct.wait_for(f"the journal has the end of the connection from {peer}",
                    lambda peer=peer: ended(peer), 10)
    ids = {}
    for code, peer in peers.items():
        found = {e.get("CONN_ID") for e in entries(ct, "wsechod") if e.get("PEER") == peer}
        if len(found) != 1 or None in found:
            fail(f"connection from {peer}: CONN_IDs {found}, want exactly one")
        ids[code] = found.pop()
    if ids[4001] == ids[4002]:
        fail(f"both connections have CONN_ID {ids[4001]}")
    every = entries(ct, "wsechod")
    for code, peer in peers.items():
        cid = ids[code]
        got = entries(ct, "wsechod", f"CONN_ID={cid}")
        lines = "\n".join(f"    {e.get('MESSAGE')} | " + " ".join(
            f"{k}={e[k]}" for k in ("CONN_ID", "PEER", "STATE", "CODE", "READ", "ECHOED", "REASON")
            if k in e) for e in got)
        log(f"journalctl -u wsechod CONN_ID={cid} -o json ({len(got)} entries):\n{lines}")
        if not got:
            fail(f"journalctl -u wsechod CONN_ID={cid}: nothing")
        others = [e for e in got if e.get("PEER") != peer or e.get("CONN_ID") != cid]
        if others:
            fail(f"CONN_ID={cid} returned lines of another connection: {others}")
        # Exactly that connection's lines: every entry of the unit with its PEER is here.
        want = sorted(e["__CURSOR"] for e in every if e.get("PEER") == peer)
        assert_eq(f"CONN_ID={cid}: entries, against the unit's entries with PEER={peer}",
                  sorted(e["__CURSOR"] for e in got), want)
        # The close frame's code: the same field, the same form, in both lines.
        received = [e for e in got if says(e, "close received")]
        assert_eq(f"CONN_ID={cid}: 'close received' CODE and REASON",
                  [(e.get("CODE"), e.get("REASON")) for e in received], [(str(code), "wsclient")])
        end = [e for e in got if says(e, "connection ended")]
        if len(end) != 1:
            fail(f"CONN_ID={cid}: {len(end)} 'connection ended' lines")
        # MESSAGE reads as the line on stderr would: the span's fields, then the event's.
        want = (rf"conn\{{conn_id={cid} peer={re.escape(peer)}\}}: wsechod::connection: "
                rf'connection ended state="closed" code={code} read=2 echoed=2 discarded=0')
        if not re.fullmatch(want, end[0]["MESSAGE"]):
            fail(f"CONN_ID={cid}: 'connection ended' MESSAGE {end[0]['MESSAGE']!r}, want /{want}/")
        fields = {k: end[0].get(k) for k in ("STATE", "CODE", "READ", "ECHOED", "SYSLOG_IDENTIFIER")}
        assert_eq(f"CONN_ID={cid}: the 'connection ended' fields", fields,
                  {"STATE": "closed", "CODE": str(code), "READ": "2", "ECHOED": "2",
                   "SYSLOG_IDENTIFIER": "wsechod"})
    # Not the journal (stderr is a pipe here): plain text lines, "LEVEL target: message".
    # Port 8080 is the service's, so this second daemon exits 69 by itself.
    out = ct.c("sh", "-c", "/usr/bin/wsechod 2>&1; echo rc=$?", timeout=30)
    log(f"wsechod with stderr on a pipe:\n{out}")
    if not re.search(r"^ERROR wsechod::daemon: cannot listen on 0\.0\.0\.0:8080: ", out, re.M):
        fail(f"not the plain text format: {out}")
    assert_eq("exit status (a listener could not be bound)", out.splitlines()[-1], "rc=69")


@case(binds=[f"{WEDGE_BIN}:{WEDGE_IN}"])
def watchdog(ct):
    """A wedged runtime (test-wedge build, SIGUSR2) stops the WATCHDOG=1 pings:
    systemd's WatchdogSec kills the daemon (Result=watchdog) and restarts it; the new
    process serves again."""
    install_v1(ct)
    # Two workers whatever the CPU count: a multi-thread runtime, every worker wedged.
    ct.c("sed", "-i", "s/^#worker_threads = .*/worker_threads = 2/", CONF)
    ct.put("/etc/systemd/system/wsechod.service.d/wedge.conf",
           f"[Service]\nExecStart=\nExecStart={WEDGE_IN} --config {CONF}\nWatchdogSec=3s\n")
    ct.c("systemctl", "daemon-reload")
    ct.c("systemctl", "restart", "wsechod")
    if WEDGE_IN not in ct.unit_prop("wsechod", "ExecStart"):
        fail(f"the drop-in is not in force: {ct.unit_prop('wsechod', 'ExecStart')}")
    assert_eq("WatchdogUSec", ct.unit_prop("wsechod", "WatchdogUSec"), "3s")
    ct.wait_unit("wsechod", "active/running", 10)
    echo(ct, URL, "the test-wedge build does not echo")
    assert_eq("NRestarts before", ct.unit_prop("wsechod", "NRestarts"), "0")
    pid = main_pid(ct)
    if not pid:
        fail("no MainPID")
    timeouts = len(ct.journal_lines("wsechod", "Watchdog timeout"))
    ct.c("systemctl", "kill", "--kill-who=main", "--signal=SIGUSR2", "wsechod")
    ct.journal_wait("wsechod", "SIGUSR2 in a test-wedge build: wedging the runtime", 5)
    ct.wait_for("systemd reports the watchdog timeout",
                lambda: len(ct.journal_lines("wsechod", r"Watchdog timeout \(limit 3s\)")) > timeouts,
                15)
    ct.journal_wait("wsechod", "Failed with result 'watchdog'", 10)
    # Result= holds until the restart resets it (RestartSec=1s): seen if polled in time.
    result = ct.unit_prop("wsechod", "Result")
    log(f"Result right after the timeout: {result}")
    new = new_main_pid(ct, pid, 15)
    ct.wait_unit("wsechod", "active/running", 10)
    assert_eq("NRestarts", ct.unit_prop("wsechod", "NRestarts"), "1")
    echo(ct, URL, "no echo after the watchdog restart")
    # Timings from the journal's monotonic clock.
    es = entries(ct, "wsechod")

    def at(regex, pid=None, last=False):
        hits = [int(e["__MONOTONIC_TIMESTAMP"]) / 1e6 for e in es
                if re.search(regex, str(e.get("MESSAGE", "")))
                and (pid is None or e.get("_PID") == pid)]
        if not hits:
            fail(f"no journal entry /{regex}/" + (f" from PID {pid}" if pid else ""))
        return hits[-1] if last else hits[0]
    t_usr2 = at("SIGUSR2 in a test-wedge build", pid)
    t_timeout = at(r"Watchdog timeout \(limit 3s\)", last=True)
    t_ready = at(r"(^|: )ready$", new)
    log(f"watchdog: SIGUSR2 (logged by PID {pid}) -> 'Watchdog timeout' {t_timeout - t_usr2:.2f} s "
        f"-> new PID {new} ready {t_ready - t_usr2:.2f} s after SIGUSR2 (Result seen: {result})")
    if not t_usr2 < t_timeout < t_ready:
        fail("journal order: SIGUSR2, watchdog timeout, ready")
    # WatchdogSec=3s, pings every 1.5 s: the timeout comes at most 3 s after the wedge.
    if t_timeout - t_usr2 > 3.5:
        fail(f"the watchdog timeout came {t_timeout - t_usr2:.2f} s after the wedge (limit 3s)")


@case
def restart_refuses_none(ct):
    """A client connecting in a tight loop across `systemctl restart wsechod`: every
    attempt gets 101 (the listening socket stays in the unit's file descriptor store and
    attempts wait in its backlog). Across stop + start the store is emptied: the port is
    closed while stopped and the new process binds anew."""
    install_v1(ct)
    assert_eq("FileDescriptorStoreMax", ct.unit_prop("wsechod", "FileDescriptorStoreMax"), "16")
    pid = main_pid(ct)
    kept, drained = len(again(ct)), drains(ct)
    lp = start_loop(ct, "loop-restart.log")
    ct.c("systemctl", "restart", "wsechod")
    new_main_pid(ct, pid, 10)
    assert_eq("drains", drains(ct), drained + 1)
    assert_eq("the socket taken back from the store", len(again(ct)), kept + 1)
    finish_loop(ct, lp, "systemctl restart")
    # stop + start: systemd 252 flushes the store when the unit stops.
    ct.c("systemctl", "stop", "wsechod")
    out = ct.n("bash", "-c", 'exec 3<>"/dev/tcp/127.0.0.1/8080"', check=False, merge=True)
    if out.rc == 0 or "refused" not in out:
        fail(f"port 8080 while stopped: want connection refused, got rc={out.rc} {out}")
    log(f"stopped: port 8080 refuses ({out.strip()})")
    bound = len(ct.journal_lines("wsechod", r": listening on ws://0\.0\.0\.0:8080/ws$"))
    ct.c("systemctl", "start", "wsechod")
    assert_eq("starts after stop", len(ct.journal_lines(
        "wsechod", r": listening on ws://0\.0\.0\.0:8080/ws$")), bound + 1)
    assert_eq("sockets taken back after stop + start", len(again(ct)), kept + 1)
    echo(ct, URL, "no echo after stop + start")


@case
def upgrade_refuses_none(ct):
    """A client connecting in a tight loop across `apt-get install` of the next
    revision: every attempt gets 101."""
    install_v1(ct)
    pid = main_pid(ct)
    kept, drained = len(again(ct)), drains(ct)
    lp = start_loop(ct, "loop-upgrade.log")
    ct.install_deb(DEB2)
    want = DEB2.removeprefix("wsechod_").split("_")[0]
    assert_eq("installed version", ct.c("dpkg-query", "-W", "-f=${Version}", "wsechod"), want)
    new_main_pid(ct, pid, 10)
    assert_eq("drains", drains(ct), drained + 1)
    assert_eq("the socket taken back from the store", len(again(ct)), kept + 1)
    finish_loop(ct, lp, "the upgrade")


@case
def instances(ct):
    """The template wsechod@.service runs instances from /etc/wsechod/NAME.toml, each on
    its own ports with its own StatusText; restarting one leaves the other's
    connections alone; upgrading the package restarts them; removing it stops
    (drains) them."""
    install_v1(ct)
    ports = {"a": (8081, 9181), "b": (8082, 9182)}
    shipped = ct.c("cat", CONF) + "\n"
    for name, (port, mport) in ports.items():
        text = shipped.replace('\n#listen = ["0.0.0.0:8080"]\n', f'\nlisten = ["0.0.0.0:{port}"]\n', 1)
        text = text.replace('\n#listen = "127.0.0.1:9180"\n', f'\nlisten = "127.0.0.1:{mport}"\n', 1)
        if text.count(f":{port}\"]") != 1 or text.count(f":{mport}\"") != 1:
            fail(f"{CONF}: the listen keys are not where this case expects them")
        ct.put(f"/etc/wsechod/{name}.toml", text)
        ct.c("wsechod", "--check-config", "--config", f"/etc/wsechod/{name}.toml")
    ct.c("systemctl", "enable", "--now", "wsechod@a", "wsechod@b")
    for name, (port, mport) in ports.items():
        unit = f"wsechod@{name}"
        ct.diag_units.append(unit)
        ct.wait_unit(unit, "active/running", 10)
        assert_eq(f"{unit} is-enabled", ct.c("systemctl", "is-enabled", unit, check=False),
                  "enabled")
        status = ct.unit_prop(unit, "StatusText")
        want = f"serving ws://0.0.0.0:{port}/ws, metrics http://127.0.0.1:{mport}/metrics"
        if not status.startswith(want):
            fail(f"{unit} StatusText is {status!r}, want {want!r}...")
        log(f"{unit} StatusText: {status}")
        echo(ct, f"ws://127.0.0.1:{port}/ws", f"{unit} does not echo on {port}")
        ct.metric_wait("wsechod_connections_accepted_total", 1, 5, port=mport)
    echo(ct, URL, "wsechod.service does not echo on 8080 beside the instances")
    b_pid, a_pid = main_pid(ct, "wsechod@b"), main_pid(ct, "wsechod@a")
    h = hold(ct, "2", "--every", "100", url="ws://127.0.0.1:8082/ws", log_name="hold-b.log")
    ct.metric_wait('wsechod_connections{state="open"}', 2, 10, port=9182)
    ct.c("systemctl", "restart", "wsechod@a")
    new_main_pid(ct, a_pid, 10, unit="wsechod@a")
    echo(ct, "ws://127.0.0.1:8081/ws", "wsechod@a does not echo after its restart")
    before = h.count("^echo ")
    ct.wait_for("b's sessions go on echoing after a's restart",
                lambda: h.count("^echo ") >= before + 10, 10)
    assert_eq("wsechod@b MainPID after a's restart", main_pid(ct, "wsechod@b"), b_pid)
    assert_eq("b's open connections", ct.metric('wsechod_connections{state="open"}', 9182), "2")
    assert_eq("close frames b's client got", h.count("^close "), 0)
    if not h.alive():
        fail(f"b's client ended: {h.text()}")
    # An upgrade restarts the running instances too (they would run the old binary).
    pids = {name: main_pid(ct, f"wsechod@{name}") for name in ports}
    ct.install_deb(DEB2)
    if h.wait(15, "b's client saw its connections closed by the upgrade") != 0:
        fail(f"b's client failed: {h.text()}")
    assert_eq("close 1000 frames b's client got", h.count("^close 1000 server shutting down$"), 2)
    for name, (port, _) in ports.items():
        unit = f"wsechod@{name}"
        new_main_pid(ct, pids[name], 10, unit=unit)
        ct.wait_unit(unit, "active/running", 10)
        echo(ct, f"ws://127.0.0.1:{port}/ws", f"{unit} does not echo after the upgrade")
    h = hold(ct, "1", url="ws://127.0.0.1:8082/ws", log_name="hold-b2.log")
    ct.c("apt-get", "remove", "-y", "-q", "wsechod")
    if h.wait(15, "b's client saw its connection closed by the removal") != 0:
        fail(f"b's client failed: {h.text()}")
    assert_eq("close 1000 frames", h.count("^close 1000 server shutting down$"), 1)
    for name in ports:
        unit = f"wsechod@{name}"
        assert_eq(f"{unit} after remove", ct.unit_prop(unit, "ActiveState"), "inactive")
        # a: its restart, the upgrade, the removal; b: the upgrade, the removal.
        assert_eq(f"{unit} drains", drains(ct, unit), 3 if name == "a" else 2)


@case
def monitoring_files(ct):
    """The package installs the Grafana dashboard, the alert rules and their tests in
    /usr/share/wsechod/monitoring/, as in packaging/monitoring/; the host's promtool
    accepts the installed rules and their tests pass."""
    install_v1(ct)
    d = "/usr/share/wsechod/monitoring"
    assert_eq(f"files in {d}", ct.c("ls", d).split(), sorted(MONITORING))
    local = os.path.join(ct.dir, "monitoring")
    os.makedirs(local, exist_ok=True)
    for f in MONITORING:
        ct.c("test", "-f", f"{d}/{f}")
        assert_eq(f"{f} mode", ct.c("stat", "-c", "%a %U", f"{d}/{f}"), "644 root")
        text = ct.c("cat", f"{d}/{f}") + "\n"
        with open(os.path.join(ROOT, "packaging/monitoring", f)) as src:
            if text != src.read():
                fail(f"{d}/{f} differs from packaging/monitoring/{f}")
        with open(os.path.join(local, f), "w") as out:
            out.write(text)
    dash = json.load(open(os.path.join(local, "wsechod-dashboard.json")))
    log(f"dashboard: {dash.get('title')!r}, {len(dash.get('panels', []))} panels")
    out = run(["promtool", "check", "rules", os.path.join(local, "wsechod-alerts.yml")],
              timeout=30, check=False, merge=True)
    log(f"promtool check rules: {out.strip()}")
    if out.rc != 0 or "SUCCESS" not in out:
        fail(f"promtool check rules failed:\n{out}")
    out = run(["promtool", "test", "rules", "wsechod-alerts.test.yml"], cwd=local, timeout=60,
              check=False, merge=True)
    if out.rc != 0:
        fail(f"promtool test rules failed:\n{out}")
    log(f"promtool test rules: {out.strip().splitlines()[-1]}")


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
