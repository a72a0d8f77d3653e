#!/usr/bin/python3
"""tests/fleet/run.py: the fleet test. HAProxy (Debian's package, running the shipped
packaging/examples/haproxy.cfg) in front of three wsechod instances under a real systemd;
200 clients echo numbered messages without a pause and reconnect whenever a connection
closes; the instances are restarted one after another.

It passes only if:
  * no connection attempt was refused or failed, at the clients (examples/fleet.rs) and
    inside HAProxy (no connect error, retry or redispatch, no 5xx of its own; its log has
    one session per connection, each a 101 that ended normally, "----");
  * every message the daemon read before it sent that connection's close frame was
    answered, in order, and every unanswered message was read by the daemon after its
    close frame (it crossed the close frame on the wire: RFC 6455 forbids answering it).
    Proved per connection: each client connection learns from the greeting which
    process and connection served it, and its counts must equal the daemon's for that
    connection (journal line "connection ended": READ, ECHOED, DISCARDED, CODE):
        sent = READ,  echoed = ECHOED,  sent - echoed = DISCARDED;
    and, for the processes still running at the end, the daemon's counters
    (wsechod_messages_received_total, _sent_total, _discarded_total) equal the sum of
    their journal lines, so the journal lines are complete;
  * every instance drained with the configured close code, no connection aborted, and
    every close a client received came from the drain of the instance serving it;
  * HAProxy marked each instance DOWN (its /readyz check failing with 503, seen on the
    stats socket) after the instance's SIGTERM and before its listener closed (the
    journal's "draining, sending close" line, logged once the accept loops stopped),
    and UP again before the next restart; no other server changed state.

Why equal counts prove the crossing: the client counts a message as sent only once
tungstenite took it, which tungstenite refuses after reading the server's close frame. So
every unanswered message left the client before that frame reached it, and DISCARDED says
the daemon read it after sending the frame: the two passed each other on the wire.
On timing: a stats change is stamped after the answer that showed it (it happened at or
before the stamp), a journal line when journald received it (a fraction of a millisecond
after the log call, which follows the accept loops' end); the margins are over a second.

It prints the counts and a last line "fleet: N passed, N failed".

Usage: tests/fleet/run.py           needs root, Debian 12; builds what it needs
  E2E_DEBDIR=DIR      the .deb to test (else packaging/build-deb.sh builds it)
  FLEET_CLIENTS=200   clients;  FLEET_EVERY_MS=10  a message per client every so often
  E2E_KEEP=1          keep the work dir (case dir: commands.log, haproxy.log, fleet.log,
                      haproxy.cfg, stats.log, journal-*.json)
Times are CLOCK_MONOTONIC, shared by the host, the container's journal and the clients.
"""

import csv
import glob
import io
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
import tomllib

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
sys.path.insert(0, os.path.join(ROOT, "tests", "pylib"))

from e2e import (SETTINGS, RootfsJob, Session, assert_eq, case, fail, host_tools, log,  # noqa: E402
                 run, says)
import wsechod_harness as harness  # noqa: E402

HAPROXY_CFG = os.path.join(ROOT, "packaging/examples/haproxy.cfg")
INSTANCE_TOML = os.path.join(ROOT, "packaging/examples/wsechod-instance.toml")
FLEET = os.path.join(ROOT, "target/release/examples/fleet")
CLIENTS = int(os.environ.get("FLEET_CLIENTS") or 200)
EVERY_MS = int(os.environ.get("FLEET_EVERY_MS") or 10)
BACKEND = "wsechod"
STATS_POLL = 0.05  # s between two `show stat`s
JOURNAL_LAG = 0.05  # s journald may take to stamp an entry after the daemon sent it


# --- the shipped files, made runnable -------------------------------------------------


def haproxy_config(sock):
    """The shipped haproxy.cfg with the two lines it marks "test:" changed (log target,
    stats socket), and what the test needs to know of it."""
    text = open(HAPROXY_CFG).read()
    for pattern, repl in [(r"^    log /dev/log local0$", "    log stdout format raw local0"),
                          (r"^    stats socket /run/haproxy/admin\.sock .*$",
                           f"    stats socket {sock} mode 600 level admin")]:
        text, n = re.subn(pattern, repl, text, flags=re.M)
        if n != 1:
            fail(f"{HAPROXY_CFG}: the line /{pattern}/ the test replaces is not there once ({n})")
    servers = {}
    for m in re.finditer(r"^\s+server (\S+) 127\.0\.0\.1:(\d+) check port (\d+)$", text, re.M):
        servers[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    bind = re.search(r"^\s+bind :(\d+)$", text, re.M)
    if len(servers) != 3 or not bind:
        fail(f"{HAPROXY_CFG}: want 3 local servers with check ports and a `bind :PORT`")
    return text, servers, int(bind.group(1))


def instance_config(n, ws_port, metrics_port):
    """The shipped wsechod-instance.toml for instance n, plus two test-only settings: a
    greeting naming the process and connection (to match each client connection with the
    daemon's), and debug logs of wsechod::connection (one "connection ended" line each)."""
    text = open(INSTANCE_TOML).read()
    for old, new in (("8081", ws_port), ("9181", metrics_port)):
        if text.count(f'"127.0.0.1:{old}"') != 1:
            fail(f"{INSTANCE_TOML}: 127.0.0.1:{old} is not there once")
        text = text.replace(f'"127.0.0.1:{old}"', f'"127.0.0.1:{new}"')
    conf = tomllib.loads(text)
    text += ("\n# test only (tests/fleet/run.py):\n[websocket]\n"
             f'greeting = "fleet wsechod@{n} pid {{pid}} conn {{conn_id}}"\n'
             '[log]\nlevel = "info,wsechod::connection=debug"\n')
    return text, conf


def seconds(d):
    """A wsechod duration ("3s", "250ms", "2m") in seconds."""
    m = re.fullmatch(r"(\d+)(ms|s|m)", d)
    if not m:
        fail(f"cannot read the duration {d!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


# --- HAProxy's view -----------------------------------------------------------------


def show_stat(sock_path):
    """`show stat` on the stats socket: {svname: row} of the backend, and the frontend."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(sock_path)
        s.sendall(b"show stat\n")
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    text = b"".join(chunks).decode().lstrip("# ")
    rows = {}
    for r in csv.DictReader(io.StringIO(text)):
        if r["pxname"] == BACKEND or r["svname"] == "FRONTEND":
            rows[r["svname"] if r["pxname"] == BACKEND else "FRONTEND"] = r
    return rows


class StatsPoller:
    """Polls `show stat` every STATS_POLL s in a thread; keeps each server's status
    changes, stamped with time.monotonic() taken after the answer arrived (so a change
    happened at or before its stamp), and the last rows."""

    def __init__(self, sock_path, log_path):
        self.sock_path = sock_path
        self.log = open(log_path, "w")
        self.changes = []  # (t, server, old, new, check_status, check_code, last_chk)
        self.status = {}
        self.rows = {}
        self.errors = 0
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _loop(self):
        while not self.stop_event.is_set():
            try:
                rows = show_stat(self.sock_path)
                t = time.monotonic()
            except OSError as e:
                self.errors += 1
                self.log.write(f"{time.monotonic():.3f} error {e}\n")
                self.stop_event.wait(STATS_POLL)
                continue
            with self.lock:
                self.rows = rows
                for name, r in rows.items():
                    if name == "FRONTEND":
                        continue
                    old = self.status.get(name)
                    if r["status"] != old:
                        self.status[name] = r["status"]
                        c = (t, name, old, r["status"], r["check_status"], r["check_code"],
                             r.get("last_chk", ""))
                        self.changes.append(c)
                        self.log.write(f"{t:.3f} {name} {old} -> {r['status']} "
                                       f"({r['check_status']} {r['check_code']} {c[6]})\n")
                        self.log.flush()
            self.stop_event.wait(STATS_POLL)

    def get(self, name):
        with self.lock:
            return self.status.get(name)

    def snapshot(self):
        with self.lock:
            return dict(self.rows), list(self.changes)

    def stop(self):
        self.stop_event.set()
        self.thread.join(5)
        self.log.close()


# --- the daemon's view ----------------------------------------------------------------


def journal(ct, unit):
    """The unit's journal as a list of dicts (journalctl -o json); saved in the case dir."""
    out = ct.c("journalctl", "-u", unit, "-o", "json", "--no-pager", timeout=30)
    with open(os.path.join(ct.dir, f"journal-{unit}.json"), "w") as f:
        f.write(out + "\n")
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")]


def mono(entry):
    """An entry's CLOCK_MONOTONIC time in seconds."""
    return int(entry["__MONOTONIC_TIMESTAMP"]) / 1e6


def metrics(ct, port):
    """Every sample of an instance's /metrics: {series: float}."""
    body = ct.n("curl", "-fsS", "--max-time", "5", f"http://127.0.0.1:{port}/metrics", timeout=10)
    return harness.parse_metrics(body)


class Client:
    """The fleet client's log: status lines while it runs, the totals at the end."""

    def __init__(self, job):
        self.job = job

    def status(self):
        lines = [x for x in self.job.text().splitlines() if x.startswith("status ")]
        if not lines:
            return {}
        return {k: float(v) for k, v in (w.split("=") for w in lines[-1].split()[1:])}

    def totals(self):
        for line in reversed(self.job.text().splitlines()):
            if line.startswith("totals "):
                return json.loads(line[len("totals "):])
        fail("the fleet client printed no totals; its log:\n" + "\n".join(
            self.job.text().splitlines()[-20:]))


# --- the case -------------------------------------------------------------------------


@case
def rolling_restart(ct):
    """Three instances behind HAProxy, 200 clients, each instance restarted in turn."""
    sock = os.path.join(ct.dir, "hap.sock")
    cfg_text, servers, front_port = haproxy_config(sock)
    cfg = os.path.join(ct.dir, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(cfg_text)
    names = sorted(servers)  # wsechod1..3: instance n is server wsechodN
    inst = {}
    for n, name in enumerate(names, 1):
        ws_port, m_port = servers[name]
        text, conf = instance_config(n, ws_port, m_port)
        inst[n] = {"name": name, "unit": f"wsechod@{n}", "ws": ws_port, "metrics": m_port,
                   "conf": conf}
        ct.put(f"/etc/wsechod/{n}.toml", text)
    sd = inst[1]["conf"]["shutdown"]
    delay, drain_timeout = seconds(sd["delay"]), seconds(sd["drain_timeout"])
    close_code = sd["close_code"]

    # The package starts wsechod.service on 8080/9180; the fleet is the three instances.
    ct.install_deb()
    ct.c("systemctl", "disable", "--now", "wsechod.service")
    ct.diag_units += [i["unit"] for i in inst.values()]
    ct.c("systemctl", "start", *(i["unit"] for i in inst.values()))
    for i in inst.values():
        ct.c("wsechod", "--check-config", "--config", f"/etc/wsechod/{i['unit'][8:]}.toml")
        ct.wait_unit(i["unit"], "active/running", 10)

    ct.n("haproxy", "-c", "-f", cfg, merge=True)
    hap = ct.bg("haproxy.log", "haproxy", "-db", "-f", cfg)
    ct.wait_for("the HAProxy stats socket is there",
                lambda: os.path.exists(sock) or not hap.alive(), 10)
    if not hap.alive():
        fail("HAProxy ended:\n" + hap.text()[-2000:])
    poller = StatsPoller(sock, os.path.join(ct.dir, "stats.log")).start()
    try:
        ct.wait_for("HAProxy marks every server UP",
                    lambda: all(poller.get(i["name"]) == "UP" for i in inst.values()), 15)
        t_all_up = time.monotonic()
        _run_fleet(ct, inst, poller, hap, front_port, t_all_up, delay, drain_timeout,
                   close_code)
    finally:
        poller.stop()


def _run_fleet(ct, inst, poller, hap, front_port, t_all_up, delay, drain_timeout, close_code):
    url = f"ws://127.0.0.1:{front_port}/ws"
    job = ct.bg("fleet.log", FLEET, url, "--clients", CLIENTS, "--every", EVERY_MS,
                "--greeting", "--status-ms", 200)
    cl = Client(job)
    ct.wait_for(f"{CLIENTS} clients connected",
                lambda: cl.status().get("open") == CLIENTS, 30)

    def flowing(what):
        """Waits until every client sent about 20 more messages: traffic goes on."""
        base = cl.status().get("sent", 0)
        ct.wait_for(f"messages flow ({what})",
                    lambda: cl.status().get("sent", 0) >= base + 20 * CLIENTS, 30)
    flowing("before the restarts")

    restarts = {}
    for n, i in inst.items():
        t_cmd = time.monotonic()
        # Returns once the new process sent READY=1 (Type=notify).
        ct.c("systemctl", "restart", i["unit"], timeout=delay + drain_timeout + 30)
        t_back = time.monotonic()
        ct.wait_for(f"HAProxy marks {i['name']} UP again",
                    lambda: poller.get(i["name"]) == "UP", 15)
        t_up = time.monotonic()
        ct.wait_for(f"{CLIENTS} clients connected again",
                    lambda: cl.status().get("open") == CLIENTS, 15)
        restarts[n] = {"cmd": t_cmd, "ready": t_back, "up_seen": t_up}
        log(f"{i['unit']}: restarted; back in {t_back - t_cmd:.2f} s, UP in HAProxy after "
            f"{t_up - t_cmd:.2f} s")
        flowing(f"after restarting {i['unit']}")

    if not hap.alive():
        fail("HAProxy ended:\n" + hap.text()[-2000:])
    # The stop: every client takes its last echoes and closes with 1000.
    job.stop(grace=20)
    if job.p.returncode != 0:
        fail(f"the fleet client exited with {job.p.returncode}:\n" + job.text()[-2000:])
    totals = cl.totals()
    # HAProxy's last word on every server, once the clients are gone.
    ct.wait_for("HAProxy has no session left",
                lambda: all(int(r["scur"] or 0) == 0 for r in show_stat(poller.sock_path).values()), 10)
    changes = poller.snapshot()[1]
    rows = show_stat(poller.sock_path)
    _check(ct, inst, totals, rows, changes, restarts, t_all_up, close_code, hap.text())

    # apt-get remove stops every instance of the template too (the prerm), each draining.
    ct.c("apt-get", "remove", "-y", "-q", "wsechod", timeout=delay + 60)
    for i in inst.values():
        assert_eq(f"{i['unit']} after apt-get remove", ct.unit_prop(i["unit"], "ActiveState"),
                  "inactive")
        assert_eq(f"{i['unit']} drains in the journal",
                  len(ct.journal_lines(i["unit"], "drain complete, exiting")), 2)


def _check(ct, inst, totals, rows, changes, restarts, t_all_up, close_code, hap_log):
    problems = []

    def want(ok, what):
        if not ok:
            problems.append(what)
        return ok

    # --- attempts: the clients' and HAProxy's ---
    want(totals["refused"] == 0 and totals["failed"] == 0,
         f"{totals['refused']} refused and {totals['failed']} failed connection attempts: "
         f"{totals['failures'][:5]}")
    want(totals["connection_errors"] == 0, "connections that broke: " + "; ".join(
        f"client {c['client']} #{c['n']}: {c['error']}" for c in totals["conns"]
        if c["end"] == "error")[:2000])
    for name in [i["name"] for i in inst.values()] + ["FRONTEND"]:
        r = rows[name]
        for k in ("econ", "wretr", "wredis", "ereq", "hrsp_5xx"):
            want(int(r.get(k) or 0) == 0, f"HAProxy {name} {k} = {r.get(k)}")

    # HAProxy's log (option httplog): one line per session, at its end. Each must be a 101
    # that ended normally (termination state "----": no abort, timeout or error).
    sessions = re.findall(r"^\S+ \[[^\]]+\] \S+ \S+/(\S+) \S+ (\d{3}) \d+ \S+ \S+ (\S{4}) .*"
                          r'"GET /ws HTTP/1\.1"$', hap_log, re.M)
    odd = [x for x in sessions if x[1:] != ("101", "----")]
    want(len(sessions) == totals["connected"] and not odd,
         f"HAProxy logged {len(sessions)} sessions for {totals['connected']} connections; "
         f"not 101 or not ended normally: {odd[:10]}")

    # --- the daemon's journal, per process and connection ---
    ended = {}   # (n, pid, conn_id) -> journal entry of "connection ended"
    per_pid = {}
    drains = {}  # n -> list of (sigterm, listener_closed, complete entry)
    for n, i in inst.items():
        entries = journal(ct, i["unit"])
        sigterm = closed = None
        drains[n] = []
        for e in entries:
            msg = e.get("MESSAGE", "")
            if not isinstance(msg, str):
                continue
            if says(e, "connection ended"):
                key = (n, int(e["_PID"]), int(e["CONN_ID"]))
                want(key not in ended, f"two end lines for {key}")
                ended[key] = e
                per_pid.setdefault((n, int(e["_PID"])), []).append(e)
            elif "not ready; serving for" in msg:
                sigterm = e
            elif "draining, sending close" in msg:
                closed = e
                want(re.search(rf"sending close {close_code} to every connection( |$)", msg),
                     f"{i['unit']} drained with: {msg!r}")
            elif says(e, "drain complete, exiting"):
                drains[n].append((sigterm, closed, e))
                sigterm = closed = None
        want(len(drains[n]) == 1, f"{i['unit']}: {len(drains[n])} drains in the journal, want 1")

    # --- per connection: the client's counts against the daemon's ---
    sent = echoed = unanswered = discarded = matched = 0
    crossed_conns = 0
    server_codes, our_codes = {}, {}
    greet = re.compile(r"fleet wsechod@(\d+) pid (\d+) conn (\d+)")
    seen = set()
    for c in totals["conns"]:
        sent += c["sent"]
        echoed += c["echoed"]
        unanswered += c["sent"] - c["echoed"]
        codes = server_codes if c["end"] == "server_close" else our_codes
        codes[c["code"]] = codes.get(c["code"], 0) + 1
        m = greet.fullmatch(c["greeting"] or "")
        if not want(m, f"client {c['client']} #{c['n']}: greeting {c['greeting']!r}"):
            continue
        key = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        seen.add(key)
        e = ended.get(key)
        if not want(e, f"no 'connection ended' line for {key} (client {c['client']} #{c['n']})"):
            continue
        matched += 1
        d = int(e.get("DISCARDED", 0))
        discarded += d
        crossed_conns += d > 0
        got = (int(e["READ"]), int(e["ECHOED"]), d, e.get("STATE"), int(e.get("CODE", 0)))
        code = close_code if c["end"] == "server_close" else 1000
        wanted = (c["sent"], c["echoed"], c["sent"] - c["echoed"], "closed", code)
        want(got == wanted, f"{key}: daemon read/echoed/discarded/state/code {got}, "
             f"client says {wanted} (client {c['client']} #{c['n']}, {c['end']})")
        if c["end"] == "server_close":
            # The close came from the drain of the process that served it.
            sig, lc, done = drains[key[0]][0] if drains[key[0]] else (None, None, None)
            if want(lc is not None and int(lc["_PID"]) == key[1],
                    f"{key}: closed by the server, but not by a drain of that process"):
                # journald stamps an entry when it reads it, a little after the daemon sent
                # it: a close frame can reach a client before "listeners closed" is stamped
                # (seen: by 1 ms), though the daemon logged it before the drain began.
                want(mono(lc) - JOURNAL_LAG <= c["close_ms"] / 1e3 <= mono(done),
                     f"{key}: its close arrived at {c['close_ms'] / 1e3:.3f}, outside the drain "
                     f"{mono(lc):.3f}..{mono(done):.3f}")
    unknown = set(ended) - seen
    want(not unknown, f"{len(unknown)} daemon connections no client knows: {sorted(unknown)[:5]}")
    want(set(server_codes) <= {close_code}, f"server closes by code: {server_codes}")
    want(set(our_codes) <= {1000}, f"final closes by code: {our_codes}")

    # --- the journal lines are complete: the running processes' counters agree ---
    for n, i in inst.items():
        pid = int(ct.unit_prop(i["unit"], "MainPID"))
        lines = per_pid.get((n, pid), [])
        m = metrics(ct, i["metrics"])
        got = (m.get('wsechod_messages_received_total{type="text"}', 0),
               m.get('wsechod_messages_sent_total{type="text"}', 0),
               m.get("wsechod_messages_discarded_total", 0),
               m.get('wsechod_connections_ended_total{state="closed"}', 0),
               m.get('wsechod_connections_ended_total{state="aborted"}', 0))
        # The greeting is a text message sent too.
        wanted = (sum(int(e["READ"]) for e in lines),
                  sum(int(e["ECHOED"]) for e in lines) + len(lines),
                  sum(int(e.get("DISCARDED", 0)) for e in lines),
                  sum(e.get("STATE") == "closed" for e in lines), 0)
        want(got == wanted, f"{i['unit']} pid {pid}: metrics received/sent/discarded/closed/"
             f"aborted {got}, its journal lines say {wanted}")
        want(m.get('wsechod_connections_aborted_total{reason="drain_deadline"}', 0) == 0,
             f"{i['unit']}: drain_deadline aborts")

    # --- HAProxy: no server changed state but the one restarted, and only then ---
    windows = {inst[n]["name"]: (r["cmd"], r["up_seen"]) for n, r in restarts.items()}
    flaps = [c for c in changes if c[0] > t_all_up and
             not windows[c[1]][0] <= c[0] <= windows[c[1]][1]]
    want(not flaps, f"servers changed state outside their restarts: {flaps}")

    # --- the drains, and HAProxy's view of them ---
    timeline = []
    for n, i in inst.items():
        if not drains[n]:
            continue
        sig, lc, done = drains[n][0]
        # Without a delay there is no "not ready" line: the restart command is then the
        # earliest the SIGTERM can have come.
        want(sig, f"{i['unit']}: no \"not ready; serving for\" line: no [shutdown] delay?")
        if not want(lc, f"{i['unit']}: no \"draining, sending close\" line"):
            continue
        want(int(done.get("ABORTED", -1)) == 0 and int(done.get("ABORTED_AT_DEADLINE", -1)) == 0
             and done.get("OPEN") == done.get("CLOSED"),
             f"{i['unit']}: drain open={done.get('OPEN')} closed={done.get('CLOSED')} "
             f"aborted={done.get('ABORTED')} at_deadline={done.get('ABORTED_AT_DEADLINE')}")
        r = restarts[n]
        t_sig, t_closed, t_done = mono(sig) if sig else r["cmd"], mono(lc), mono(done)
        mine = [c for c in changes if c[1] == i["name"] and r["cmd"] <= c[0] <= r["up_seen"]]
        down = [c for c in mine if c[3] == "DOWN"]
        first_fail = [c for c in mine if c[2] == "UP" and c[3] != "UP"]
        up = [c for c in mine if c[3] == "UP"]
        if not want(len(down) == 1 and len(up) == 1,
                    f"{i['name']}: HAProxy did not mark it DOWN once and UP once during its "
                    f"restart: {[(round(c[0] - t_sig, 3), c[2], c[3]) for c in mine]} (s after "
                    f"SIGTERM; listener closed +{t_closed - t_sig:.3f} s)"):
            continue
        t_down, t_up = down[0][0], up[0][0]
        want(t_sig < t_down < t_closed,
             f"{i['name']}: DOWN at {t_down:.3f}, not between SIGTERM {t_sig:.3f} and the "
             f"listener's close {t_closed:.3f}")
        want(down[0][4] == "L7STS" and down[0][5] == "503",
             f"{i['name']}: DOWN for {down[0][4]} {down[0][5]}, not /readyz's 503")
        want(t_up > t_done and t_up <= restarts[n]["up_seen"],
             f"{i['name']}: UP at {t_up:.3f}, drain done {t_done:.3f}")
        # UP, failing checks, DOWN, passing checks, UP: no recovery before the DOWN, no
        # second DOWN. (A transitional state shorter than the poll may go unseen.)
        seq = [c[3] for c in mine]
        want(seq[-1] == "UP" and "UP" not in seq[:-1] and
             set(seq) <= {"UP 1/2", "DOWN", "DOWN 1/2", "UP"},
             f"{i['name']}: state changes {[(round(c[0], 3), c[2], c[3]) for c in mine]}")
        closes = sorted(c["close_ms"] / 1e3 - t_sig for c in totals["conns"]
                        if c["end"] == "server_close" and (c["greeting"] or "").startswith(
                            f"fleet wsechod@{n} "))
        timeline.append({
            "unit": i["unit"], "fail": first_fail[0][0] - t_sig if first_fail else None,
            "down": t_down - t_sig, "closed": t_closed - t_sig, "done": t_done - t_sig,
            "up": t_up - t_sig, "closes": closes, "open": done.get("OPEN"),
            "drain_closed": done.get("CLOSED"), "aborted": done.get("ABORTED")})

    want(unanswered == discarded,
         f"unanswered {unanswered} != read after the close frame {discarded}")
    span = (totals["ended_ms"] - totals["started_ms"]) / 1e3
    downs = "; ".join(f"{t['unit']} DOWN +{t['down']:.2f} s, listener closed +{t['closed']:.2f} s "
                      f"after SIGTERM" for t in timeline)
    log(f"fleet summary: {totals['clients']} clients, {span:.1f} s; attempts {totals['attempts']}, "
        f"refused {totals['refused']}, failed {totals['failed']}; messages sent {sent}, echoed "
        f"{echoed}, unanswered {unanswered} (crossed the close frame: read after it {discarded}); "
        f"closes by the servers {server_codes}, by the clients at the end {our_codes}; {downs}")
    hap = {f: sum(int(r.get(f) or 0) for r in rows.values())
           for f in ("econ", "wretr", "wredis", "hrsp_5xx")}
    lines = [
        f"attempts {totals['attempts']}: connected {totals['connected']}, refused "
        f"{totals['refused']}, failed {totals['failed']}; HAProxy: connect errors {hap['econ']}, "
        f"retries {hap['wretr']}, redispatches {hap['wredis']}, 5xx {hap['hrsp_5xx']}; its log: "
        f"{len(sessions)} sessions, {len(sessions) - len(odd)} of them 101 and ended normally",
        f"messages: sent {sent}, echoed {echoed}, unanswered {unanswered}: all of them read by "
        f"the daemon after its close frame (discarded {discarded}, on {crossed_conns} "
        f"connections); {matched} of {len(totals['conns'])} connections matched with the "
        f"daemon's, every count equal",
        f"closes: by the servers {server_codes}, by the clients at the end {our_codes}"]
    for t in timeline:
        c = t["closes"] or [t["closed"]]
        lines.append(
            f"{t['unit']}: SIGTERM t=0; first failed check +{t['fail']:.3f} s; HAProxy DOWN "
            f"(L7STS 503) +{t['down']:.3f} s; listener closed +{t['closed']:.3f} s (DOWN "
            f"{t['closed'] - t['down']:.3f} s before it); {len(t['closes'])} closes "
            f"{close_code} reached the clients +{c[0]:.3f}..+{c[-1]:.3f} s; drain done "
            f"+{t['done']:.3f} s (open={t['open']} closed={t['drain_closed']} "
            f"aborted={t['aborted']}); UP again +{t['up']:.3f} s")
    log("fleet counts:\n" + "\n".join("  " + x for x in lines))
    if problems:
        fail(f"{len(problems)} problem(s):\n  " + "\n  ".join(problems[:30]))


# --- main --------------------------------------------------------------------------


def build(workdir):
    """The .deb (E2E_DEBDIR, or built here) in a dir of its own, and the fleet client."""
    t = SETTINGS.build_timeout
    debs_in = os.environ.get("E2E_DEBDIR")
    if not debs_in:
        debs_in = os.path.join(workdir, "build")
        run(["packaging/build-deb.sh", "-o", debs_in + "/"], cwd=ROOT, timeout=t, passthrough=True)
    debs = glob.glob(os.path.join(debs_in, "wsechod_*.deb"))
    if len(debs) != 1:
        fail(f"need exactly one wsechod_*.deb in {debs_in}, found {len(debs)}")
    debdir = os.path.join(workdir, "debs")
    os.makedirs(debdir, exist_ok=True)
    shutil.copyfile(debs[0], os.path.join(debdir, os.path.basename(debs[0])))
    os.chmod(debdir, 0o755)
    os.chmod(os.path.join(debdir, os.path.basename(debs[0])), 0o644)
    run(["cargo", "build", "--locked", "--release", "--example", "fleet"], cwd=ROOT,
        timeout=t, passthrough=True)
    return debdir


def main():
    if len(sys.argv) > 1:
        sys.stderr.write(__doc__)
        return 2
    with Session(label="fleet") as s:
        t = time.monotonic()
        host_tools(s.workdir, extra=["haproxy"])
        s.stage("host tools", t)
        t = time.monotonic()
        s.rootfs_job = RootfsJob(s.workdir)
        debdir = build(s.workdir)
        rootfs = s.rootfs_job.wait()
        s.stage("rootfs", t, rootfs)
        return s.run_cases(rootfs, debdir)


if __name__ == "__main__":
    sys.exit(main())
