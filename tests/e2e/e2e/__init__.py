"""wsechod's end-to-end test harness: a real systemd in systemd-nspawn.

Python standard library only (Debian's python3). Modules, each one floor
above the previous: base (settings, logging, errors, signals, processes),
rootfs (host packages, the cached Debian minbase rootfs), container (one
booted container and the helpers cases use), runner (cases, the run loop).
tests/e2e/run.py holds the cases.

What cleanup guarantees, whatever ends a case (pass, failure, timeout,
exception, Ctrl-C, SIGTERM, SIGHUP):

* every command and background job runs in a process group of its own and is
  bounded in time; its whole group is ended (SIGTERM, then SIGKILL) when it
  returns, times out or is interrupted, and background jobs when the case
  ends;
* every container is stopped in the order poweroff -> SIGTERM to nspawn ->
  SIGKILL to the container's PID 1, each step bounded, after the journals,
  failed units and console tail were printed for a failed case;
* only processes the harness started are signalled, by PID or process group,
  never by name;
* the first signal stops the run after the current case's teardown; further
  signals cannot cut that teardown short;
* if the runner itself is SIGKILLed, nspawn and the background jobs get
  SIGTERM from the kernel (PR_SET_PDEATHSIG), so containers still halt.
"""

from .base import (SETTINGS, Bg, CaseFailed, CmdError, Interrupted, Out, assert_eq, fail,
                   log, run, since)
from .container import Container, match, says
from .rootfs import RootfsJob, host_tools
from .runner import CASES, Session, case

__all__ = ["SETTINGS", "Bg", "CaseFailed", "CmdError", "Interrupted", "Out", "assert_eq",
           "fail", "log", "run", "since", "Container", "match", "says", "RootfsJob", "host_tools",
           "CASES", "Session", "case"]
