#!/usr/bin/python3
"""Kernel memory an idle WebSocket costs the daemon: per HTTP/1.1 connection, per HTTP/2 stream.

    bench/kernel-mem.py [--conns N] [--streams-per-conn S] [--runs R]

(as root, after `bench/run.sh` has built target/release/wsechod and bench/target/release/
wsechod-bench, or with `--no-build` there.) For each mode, a fresh daemon (the shipped
configuration, listening on 127.0.0.1:0, as bench/run.sh starts it) and wsechod-bench `idle`
holding N WebSockets: over HTTP/1.1, one TCP connection each; over HTTP/2, S streams on each
of N / S TCP connections. /proc/slabinfo is read just before the clients connect and while
they are held; each slab cache's change in objects in use, times its object size, is what
those connections cost the kernel. Socket buffers of idle connections are empty (the
TCP line of /proc/net/sockstat, in pages, is shown as a check).

The method: client and server are on the same kernel over loopback, and both ends are alike
(one TCP socket, its inode and dentry, one open file, one epoll item: wsechod-bench is a
tokio program too), so the daemon's share of each cache is half the change, except for the
client's bind buckets (its ephemeral ports), which are left out. HTTP/2 opens a hundred times
fewer sockets, too few to stand out from what the rest of the machine does to the caches, so
only the caches that grew by half an object or more per HTTP/1.1 connection (a socket's own)
are counted for it. The change in TCP sockets is
printed: it should be twice the connections, or something else on the machine was opening
or closing connections meanwhile (rerun). SLUB counts the free objects of its per-CPU caches as
in use, so small changes (HTTP/2's 200 sockets, the epoll items) are approximate: a TCP
connection costs the kernel the same whatever it carries, so the HTTP/2 figure is also given
as the HTTP/1.1 run's per connection, divided among the streams. The figures do not include
the daemon's user-space memory (bench/run.sh scenarios e and h).
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAEMON = ROOT / "target/release/wsechod"
BENCH = ROOT / "bench/target/release/wsechod-bench"
# Caches only the connecting side grows (its ports' bind buckets), sockets in TIME_WAIT,
# which belong to connections closed before (earlier runs, other programs), and the page
# cache's, which file I/O elsewhere grows and shrinks.
LEFT_OUT = ("tcp_bind_bucket", "tcp_bind2_bucket", "tw_sock_TCP", "tw_sock_TCPv6",
            "buffer_head", "radix_tree_node", "xfs_buf", "ext4_inode_cache")
# Changes smaller than this share of the sockets opened are noise from elsewhere.
NOISE = 0.05


def slabinfo():
    """{cache: (objects in use, object size)}."""
    caches = {}
    with open("/proc/slabinfo") as f:
        for line in f:
            if line.startswith(("slabinfo", "#")):
                continue
            name, active, _num, size = line.split()[:4]
            caches[name] = (int(active), int(size))
    return caches


def tcp_pages():
    with open("/proc/net/sockstat") as f:
        m = re.search(r"^TCP:.* mem (\d+)", f.read(), re.M)
    return int(m.group(1)) if m else 0


def settle():
    """Waits (up to 20 s) until the count of TCP sockets stops changing: sockets of a run
    before are freed some time after they close."""
    last = slabinfo()["TCP"][0]
    for _ in range(20):
        time.sleep(1)
        now = slabinfo()["TCP"][0]
        if abs(now - last) < 8:
            return
        last = now


def start_daemon(log):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSECHOD_") and k != "RUST_LOG"}
    env.update(WSECHOD_SERVER__LISTEN="127.0.0.1:0", WSECHOD_METRICS__LISTEN="127.0.0.1:0")
    proc = subprocess.Popen([DAEMON, "-c", ROOT / "etc/wsechod.toml"], env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = re.search(r"listening on (ws://127\.0\.0\.1:\d+/ws)", Path(log.name).read_text())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"kernel-mem: the daemon did not start; its log: {log.name}")


def measure(mode, conns, per_conn, hold, only=None):
    """Objects per WebSocket by slab cache (the daemon's half) with their size, and the
    change in TCP sockets and in their buffers' pages."""
    settle()
    log = open(f"/tmp/kernel-mem-{os.getpid()}-{mode}.log", "w+")
    daemon, url = start_daemon(log)
    client = None
    try:
        time.sleep(1)
        before, pages_before = slabinfo(), tcp_pages()
        args = [BENCH, "idle", url, "-c", str(conns), "--hold", str(hold), "--settle", "0",
                "--server-pid", str(daemon.pid)]
        if mode == "h2":
            args += ["--http2", "--streams-per-conn", str(per_conn)]
        client = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in client.stdout:
            if "holding" in line:
                break
        else:
            sys.exit(f"kernel-mem: the client did not get to hold its connections ({mode})")
        time.sleep(1)
        after, pages_after = slabinfo(), tcp_pages()
        client.wait(timeout=hold + 30)
    finally:
        if client and client.poll() is None:
            client.kill()
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        log.close()
        os.unlink(log.name)
    sockets = 2 * (conns if mode == "h1" else conns // per_conn)
    per = {}
    for name, (n, size) in after.items():
        delta = n - before.get(name, (0, size))[0]
        if name in LEFT_OUT or abs(delta) < NOISE * sockets or (only and name not in only):
            continue
        per[name] = (delta / 2 / conns, size)
    tcp = after["TCP"][0] - before["TCP"][0]
    return per, tcp, pages_after - pages_before


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=10000, help="WebSockets per mode (10000)")
    ap.add_argument("--streams-per-conn", type=int, default=100, help="over HTTP/2 (100)")
    ap.add_argument("--runs", type=int, default=1, help="runs per mode (1)")
    ap.add_argument("--hold", type=int, default=4, help="seconds the client holds (4)")
    a = ap.parse_args()
    for path in (DAEMON, BENCH):
        if not path.exists():
            sys.exit(f"kernel-mem: {path} is missing: build it first (bench/run.sh builds both)")
    for run in range(1, a.runs + 1):
        per_socket = None
        for mode in ("h1", "h2"):
            # 100 times fewer sockets over HTTP/2: the caches a socket grows (those that grew
            # by half an object or more per HTTP/1.1 connection) are all that is counted.
            per, tcp, pages = measure(mode, a.conns, a.streams_per_conn, a.hold, per_socket)
            if mode == "h1":
                per_socket = {name for name, (objs, _) in per.items() if objs >= 0.5}
                h1_total = sum(objs * size for objs, size in per.values())
            what = ("HTTP/1.1 connection" if mode == "h1"
                    else f"HTTP/2 stream ({a.streams_per_conn} per TCP connection)")
            per_tcp = 1 if mode == "h1" else a.streams_per_conn
            sockets = 2 * a.conns // per_tcp
            print(f"run {run}, {a.conns} idle WebSockets, the daemon's kernel memory per {what}:")
            print(f"  TCP sockets +{tcp} (expected {sockets:.0f}); TCP buffer pages {pages:+d}")
            total = 0.0
            for name, (objs, size) in sorted(per.items(), key=lambda kv: -abs(kv[1][0] * kv[1][1])):
                print(f"  {name:<20} {objs:7.3f} x {size:5d} B = {objs * size:8.1f} B")
                total += objs * size
            print(f"  {'total':<20} {total:8.1f} B = {total / 1024:.2f} KiB"
                  f" ({total * per_tcp:.0f} B per TCP connection)")
            if mode == "h2":
                print(f"  a TCP connection as in the HTTP/1.1 run, shared by {per_tcp} streams: "
                      f"{h1_total / per_tcp:.1f} B per stream")


if __name__ == "__main__":
    main()
