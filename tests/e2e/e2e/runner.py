"""Cases, the run loop and the session around it.

    @case
    def install(ct):                  # ct: a booted Container
        ct.install_deb(...)

    with Session() as s:              # work dir, signal handlers, cleanup
        ...                           # setup (host tools, rootfs, builds)
        return s.run_cases(rootfs, debdir, regex)

Invariants:

* Cases run in the order they were registered, each in a fresh container that
  is torn down (diagnostics first on failure) before the next one boots,
  whatever happened: failure, exception, timeout or signal.
* A case fails on CaseFailed (fail(), assert_eq(), a CmdError) and on any other
  exception; its message and where it happened (case > helper > ...) are
  logged. One failing case does not stop the others.
* A signal (SIGINT, SIGTERM, SIGHUP) stops the current case, which is torn
  down like a failure; no further case runs; the exit code is 128 + signal.
* After run_cases(), "LABEL: N passed, N failed" ("e2e" unless Session(label=)
  says otherwise) is the very last line of output (stdout), printed by
  Session's exit after all cleanup.
* Session's exit stops the background rootfs job (if any) and removes the work
  dir after a fully successful run, unless E2E_KEEP=1 or E2E_WORKDIR was given.
"""

import os
import re
import sys
import sysconfig
import tempfile
import time
import traceback

from . import base
from .base import SETTINGS, CaseFailed, Interrupted, log, rm_tree, since
from .container import Container

CASES = []  # (name, function, Container keyword arguments), in registration order


def case(fn=None, *, name=None, **container_kw):
    """Register a case: `@case` or `@case(name="x", binds=["/host:/c"])`. The
    function gets a booted Container; container_kw go to Container()."""
    def register(f):
        CASES.append((name or f.__name__, f, container_kw))
        return f
    return register(fn) if fn else register


def _where(tb):
    """"case(run.py:40) > helper(container.py:120)": the frames below the runner,
    without the standard library's and the signal handler's."""
    stdlib = sysconfig.get_paths()["stdlib"]
    frames = [f for f in traceback.extract_tb(tb)[1:]
              if not f.filename.startswith(stdlib) and f.name not in ("_on_signal", "fail")]
    return " > ".join(f"{f.name}({os.path.basename(f.filename)}:{f.lineno})" for f in frames)


class Session:
    """The run: work dir, signals, results, cleanup (see the module invariants)."""

    def __init__(self, label="e2e"):
        self.label = label  # of the summary line
        self.t0 = time.monotonic()
        self.own_workdir = not os.environ.get("E2E_WORKDIR")
        self.workdir = os.environ.get("E2E_WORKDIR") or tempfile.mkdtemp(prefix="wsechod-e2e.")
        os.makedirs(self.workdir, exist_ok=True)
        self.passed, self.failed = [], []
        self.rootfs_job = None
        self.summary = None  # "LABEL: N passed, N failed", printed last of all
        self.current = None  # the case's Container until it is torn down
        self.ok = False

    def __enter__(self):
        base.install_signal_handlers()
        return self

    def __exit__(self, etype, exc, tb):
        with base.shielded():
            if self.current:  # a signal hit between a case's end and its teardown
                self.current.teardown(True)
            if self.rootfs_job:
                self.rootfs_job.stop()
            if self.ok and not self.failed and not SETTINGS.keep and self.own_workdir:
                rm_tree(self.workdir)
            else:
                log(f"logs kept in {self.workdir}")
            if self.summary:
                sys.stderr.flush()
                print(self.summary, flush=True)
        if isinstance(exc, Interrupted):
            log(f"interrupted by {exc}")
            sys.exit(128 + exc.signum)
        if isinstance(exc, CaseFailed):  # a setup step failed: no summary line
            log(f"setup failed: {exc}")
            sys.exit(1)
        return False

    def stage(self, name, t0, note=""):
        log(f"stage: {name} {since(t0)} s{f' ({note})' if note else ''}")

    def run_cases(self, rootfs, debdir, regex=""):
        """Run the registered cases matching regex (re.search); the summary line
        follows at Session's exit. Returns the exit code: 0, 1 (a case failed) or 128 + signal."""
        for name, fn, kw in CASES:
            if regex and not re.search(regex, name):
                log(f"skip: {name}")
                continue
            self._run_case(name, fn, kw, rootfs, debdir)
            if base.received():
                log("interrupted; not running further cases")
                break
        log(f"total {since(self.t0)} s")
        if self.failed:
            log(f"failed cases: {' '.join(self.failed)}")
        self.summary = f"{self.label}: {len(self.passed)} passed, {len(self.failed)} failed"
        self.ok = True
        if base.received():
            return 128 + base.received()
        return 1 if self.failed else 0

    def _run_case(self, name, fn, kw, rootfs, debdir):
        t0 = time.monotonic()
        log(f"=== case {name}")
        ct = None
        failed = True
        try:
            ct = self.current = Container(name, rootfs, debdir, self.workdir, **kw)
            ct.boot()
            fn(ct)
            failed = False
        except Interrupted as e:
            log(f"FAIL [{name}]: interrupted by {e}, at {_where(e.__traceback__)}")
        except CaseFailed as e:
            log(f"FAIL [{name}]: {e}")
            log(f"  at {_where(e.__traceback__)}")
        except Exception:  # a bug in a case or the harness: the whole traceback
            log(f"FAIL [{name}]: unexpected error:\n{traceback.format_exc()}")
        finally:
            if ct is not None:
                ct.teardown(failed)
                self.current = None
        if failed:
            self.failed.append(name)
            log(f"FAIL {name} ({since(t0)} s)")
        else:
            self.passed.append(name)
            log(f"PASS {name} ({since(t0)} s)")
