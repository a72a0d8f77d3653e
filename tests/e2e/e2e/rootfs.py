"""Host packages and the cached Debian minbase root file system.

Invariants:

* The cache lives in SETTINGS.cache (${XDG_CACHE_HOME:-~/.cache}/wsechod) as
  rootfs-KEY (a directory) and rootfs-KEY.tar.zst, KEY = the first 16 hex
  digits of sha256("suite=..\\ninclude=..\\nmirror=..\\ntag=..\\n"). The same
  key as the former bash harness, so an existing cache is reused.
* A rootfs directory exists only when complete: it is built (debootstrap) or
  restored (from the tarball) in a temp directory beside it and renamed into
  place. A lock file serialises builders, and whoever holds it removes the
  leftovers of an interrupted one (unmounting what debootstrap mounted).
* The cached rootfs is never written to: containers boot it with
  --volatile=overlay.
* Installing host packages never starts a service: unless the host's
  policy-rc.d already denies (exit 101), a deny-all one is put in place for the
  install and the previous state is restored afterwards, on any exit.
* RootfsJob runs the build in a niced background process (its own process
  group, SIGTERM if the runner dies); stop() ends the whole group, debootstrap
  included.
"""

import contextlib
import fcntl
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import time

from .base import (SETTINGS, Bg, CmdError, fail, log, pipeline, poll, rm_tree, run,
                   since, tail)
from . import base

HOST_PACKAGES = ["debootstrap", "systemd-container", "prometheus", "lintian", "zstd", "curl"]
POLICY = "/usr/sbin/policy-rc.d"
TAR_OPTS = ["--numeric-owner", "--xattrs", "--xattrs-include=*"]

# --- host packages -------------------------------------------------------------


def _installed(pkg):
    r = run(["dpkg-query", "-W", "-f=${db:Status-Status}", pkg], timeout=30, check=False)
    return r.rc == 0 and r == "installed"


@contextlib.contextmanager
def _no_service_starts():
    """A deny-all policy-rc.d for the duration, unless the host's already denies."""
    if os.access(POLICY, os.X_OK) and run([POLICY, "prometheus", "start"], timeout=10,
                                          check=False).rc == 101:
        yield
        return
    backup = None
    if os.path.lexists(POLICY):
        backup = f"{POLICY}.wsechod-e2e.{os.getpid()}"
        os.rename(POLICY, backup)
    try:
        with open(POLICY, "w") as f:
            f.write("#!/bin/sh\n# Temporary (wsechod tests/e2e): start no services "
                    "during apt-get install.\nexit 101\n")
        os.chmod(POLICY, 0o755)
        yield
    finally:
        with base.shielded():
            with contextlib.suppress(FileNotFoundError):
                os.remove(POLICY)
            if backup:
                os.rename(backup, POLICY)


def host_tools(workdir, extra=()):
    """Install the missing host packages, HOST_PACKAGES and `extra` (idempotent;
    apt-get update only if needed)."""
    missing = [p for p in [*HOST_PACKAGES, *extra] if not _installed(p)]
    if not missing:
        log("host tools: all present")
        return
    t0 = time.monotonic()
    log(f"host tools: installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    out = []
    try:
        with _no_service_starts():
            out.append(run(["apt-get", "-q", *lock, "update"], timeout=600, merge=True, env=env))
            out.append(run(["apt-get", "-q", "-y", *lock, "install", "--no-install-recommends",
                            *missing], timeout=900, merge=True, env=env))
    except CmdError as e:
        path = os.path.join(workdir, "host-tools.log")
        with open(path, "w") as f:
            f.write("\n".join(out) + "\n" + (e.out or ""))
        log(f"host tools: apt-get failed; last lines of {path}:")
        sys.stderr.write(tail(e.out or "", 30) + "\n")
        raise
    for line in "\n".join(out).splitlines():
        if line.startswith(("E:", "W:", "invoke-rc.d")) or " upgraded" in line:
            sys.stderr.write(f"  [apt] {line}\n")
    log(f"host tools: installed in {since(t0)} s")


# --- the cache key -------------------------------------------------------------


def mirror():
    """Mirror URL of the host's apt sources for SETTINGS.suite (or E2E_MIRROR)."""
    suite = SETTINGS.suite
    m = SETTINGS.mirror
    path = "/etc/apt/sources.list.d/debian.sources"
    if not m and os.access(path, os.R_OK):
        with open(path) as f:  # deb822: the first stanza whose Suites: lists the suite
            for stanza in f.read().split("\n\n"):
                fields = {}
                for line in stanza.splitlines():
                    k, _, v = line.partition(":")
                    if k in ("URIs", "Suites"):
                        fields[k] = v.split()
                if fields.get("URIs") and suite in fields.get("Suites", []):
                    m = fields["URIs"][0]
                    break
    if not m and os.access("/etc/apt/sources.list", os.R_OK):
        with open("/etc/apt/sources.list") as f:
            for line in f:
                w = line.split()
                if not w or w[0] != "deb":
                    continue
                urls = [i for i in range(1, len(w) - 1) if "://" in w[i]]
                if urls and w[urls[0] + 1] == suite:
                    m = w[urls[0]]
                    break
    if not m:
        fail(f"rootfs: cannot find a mirror for {suite} in the apt sources (set E2E_MIRROR)")
    return m.rstrip("/")


def key(mirror_url):
    s = SETTINGS
    text = f"suite={s.suite}\ninclude={s.include}\nmirror={mirror_url}\ntag={s.rootfs_tag}\n"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def path():
    """The rootfs directory for the current settings (it may not exist yet)."""
    return os.path.join(SETTINGS.cache, f"rootfs-{key(mirror())}")


# --- build, pack, restore ------------------------------------------------------


def _customize(r):
    """Tweaks applied to a fresh debootstrap tree (bump E2E_ROOTFS_TAG on change)."""
    s = SETTINGS
    with open(f"{r}/etc/hostname", "w") as f:
        f.write("e2e\n")
    # Drop the downloaded .debs and the package index (241 MB -> 153 MB): the
    # container has no network, so apt can only install what is in /srv/debs,
    # and a dependency missing from the rootfs fails clearly as "not installable".
    for p in glob.glob(f"{r}/var/cache/apt/archives/*.deb") + glob.glob(f"{r}/var/cache/apt/*.bin"):
        os.remove(p)
    lists = f"{r}/var/lib/apt/lists"
    for name in os.listdir(lists):
        if name != "lock" and os.path.isfile(os.path.join(lists, name)):
            os.remove(os.path.join(lists, name))
    # No background apt runs in a test container (no network anyway).
    for u in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        link = f"{r}/etc/systemd/system/{u}"
        with contextlib.suppress(FileNotFoundError):
            os.remove(link)
        os.symlink("/dev/null", link)
    built = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(f"{r}/etc/wsechod-e2e-rootfs", "w") as f:
        f.write(f"suite={s.suite}\ninclude={s.include}\ntag={s.rootfs_tag}\nbuilt={built}\n")


def _pack(d, tar):
    """Pack d into tar atomically (temp file + rename); one zstd thread."""
    t0 = time.monotonic()
    tmp = f"{tar}.tmp.{os.getpid()}"
    try:
        pipeline([["tar", "-C", d, *TAR_OPTS, "-cf", "-", "."],
                  ["zstd", "-q", "-T1", "-6", "-o", tmp]], timeout=600)
        os.rename(tmp, tar)
    except CmdError as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        fail(f"rootfs: packing {tar} failed: {e}")
    log(f"rootfs: packed {os.path.getsize(tar) / 2**20:.0f}M tarball in {since(t0)} s")


def _locked(mirror_url, d, k):
    """Body of ensure(); runs with the cache lock held."""
    tar = f"{d}.tar.zst"
    build_log = os.path.join(SETTINGS.cache, f"rootfs-{k}.build.log")
    # Leftovers of an interrupted build or restore (safe: we hold the lock).
    for stale in glob.glob(os.path.join(SETTINGS.cache, f".rootfs-{k}.tmp.*")) + glob.glob(f"{tar}.tmp.*"):
        log(f"rootfs: removing stale {stale}")
        rm_tree(stale) if os.path.isdir(stale) else os.remove(stale)
    if os.path.isdir(d):
        log(f"rootfs: cached {d}")
        if not os.path.isfile(tar):
            _pack(d, tar)
        return
    tmp = None
    try:
        if os.path.isfile(tar):
            t0 = time.monotonic()
            tmp = tempfile.mkdtemp(prefix=f".rootfs-{k}.tmp.", dir=SETTINGS.cache)
            try:
                pipeline([["zstd", "-q", "-dc", "--", tar],
                          ["tar", "-C", tmp, *TAR_OPTS, "-xpf", "-"]], timeout=600)
                os.chmod(tmp, 0o755)
                os.rename(tmp, d)
                tmp = None
                log(f"rootfs: restored from {tar} in {since(t0)} s")
                return
            except CmdError as e:
                log(f"rootfs: {tar} is unusable, rebuilding ({e})")
                rm_tree(tmp)
                os.remove(tar)
        t0 = time.monotonic()
        log(f"rootfs: debootstrap {SETTINGS.suite} ({SETTINGS.include}), log in {build_log}")
        tmp = tempfile.mkdtemp(prefix=f".rootfs-{k}.tmp.", dir=SETTINGS.cache)
        os.chmod(tmp, 0o755)  # mkdtemp gives 0700; "/" must be 0755 for non-root services
        with open(build_log, "w") as f:
            try:
                run(["debootstrap", "--variant=minbase", f"--include={SETTINGS.include}",
                     SETTINGS.suite, tmp, mirror_url], timeout=SETTINGS.rootfs_timeout,
                    grace=10, stdout=f, merge=True)
            except CmdError:
                with open(build_log) as r:
                    fail(f"rootfs: debootstrap failed; last lines of {build_log}:\n{tail(r.read(), 20)}")
        _customize(tmp)
        if not any(os.access(f"{tmp}{p}/systemd/systemd", os.X_OK) for p in ("/lib", "/usr/lib")):
            fail("rootfs: debootstrap produced no systemd")
        os.rename(tmp, d)
        tmp = None
        log(f"rootfs: built in {since(t0)} s")
        _pack(d, tar)
    finally:
        if tmp:
            with base.shielded():
                rm_tree(tmp)


def ensure():
    """Build (or reuse, or restore from the .tar.zst) the cached rootfs; returns its path.

    Safe to run concurrently: a lock serialises builders."""
    m = mirror()
    k = key(m)
    d = os.path.join(SETTINGS.cache, f"rootfs-{k}")
    os.makedirs(SETTINGS.cache, exist_ok=True)
    with open(os.path.join(SETTINGS.cache, f"rootfs-{k}.lock"), "a") as lock:
        def locked():
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
        if not poll(SETTINGS.rootfs_timeout, locked, 0.2):
            fail(f"rootfs: timed out waiting for {lock.name}")
        _locked(m, d, k)  # the lock goes with the file's closing
    return d


def prune():
    """Delete cached rootfs dirs and tarballs of other keys (old tags, mirrors).
    Not called automatically: `cd tests/e2e && python3 -m e2e prune`."""
    keep = os.path.basename(path())
    for f in glob.glob(os.path.join(SETTINGS.cache, "rootfs-*")):
        name = os.path.basename(f)
        if name == keep or name.startswith(keep + "."):
            continue
        log(f"rootfs: pruning {f}")
        rm_tree(f) if os.path.isdir(f) else os.remove(f)


# --- the background job --------------------------------------------------------


class RootfsJob:
    """ensure() in a background process (nice 10), e.g. while cargo builds."""

    def __init__(self, workdir):
        os.makedirs(SETTINGS.cache, exist_ok=True)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=here, PYTHONDONTWRITEBYTECODE="1")
        self.jobs = []
        self.job = Bg([sys.executable, "-m", "e2e", "rootfs"], os.path.join(workdir, "rootfs-bg.log"),
                      self.jobs, wrap=["nice", "-n", "10"], env=env)
        log(f"rootfs: background job started (pid {self.job.pid})")

    def _show_log(self):
        for line in self.job.text().splitlines():
            sys.stderr.write(f"  [bg] {line}\n")

    def wait(self):
        """Wait (bounded) for the job, then return the rootfs path."""
        if self.jobs:
            t0 = time.monotonic()
            try:
                rc = self.job.p.wait(SETTINGS.rootfs_timeout + 30)
            except subprocess.TimeoutExpired:
                log("rootfs: background job timed out; killing it")
                self.stop()
                fail("rootfs: background job timed out")
            self.job.stop()  # reaped; ends anything it left in its group
            self.jobs.clear()
            self._show_log()
            if rc != 0:
                fail(f"rootfs: background job failed (rc={rc})")
            log(f"rootfs: background job done (waited {since(t0)} s)")
        return ensure()  # fast when cached

    def stop(self):
        """End the job's whole process group (debootstrap included); safe twice."""
        if not self.jobs:
            return
        with base.shielded():
            self.job.stop(grace=10)
            self.jobs.clear()
            log("rootfs: background job stopped; its last lines:")
            sys.stderr.write("".join(f"  [bg] {x}\n" for x in self.job.text().splitlines()[-10:]))
