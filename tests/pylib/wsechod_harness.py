"""What the Python suites (tests/http2, tests/monitoring, tests/fleet) share about a wsechod
under test: waiting for a condition or a notify datagram on the daemon's NOTIFY_SOCKET, and
reading its /metrics.

Standard library only: it is imported by /usr/bin/python3 and by the suites' venvs alike.
"""

import socket
import time


def wait_until(what, timeout, probe, interval, error=TimeoutError):
    """Polls probe() every `interval` s until it returns something truthy, and returns that;
    raises `error` naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise error(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_notify(sock, messages, field, timeout, after=0, exited=lambda: None,
                error=RuntimeError):
    """Waits for a notify datagram (the `after`-th or later in `messages`) with a line equal
    to `field`, receiving on `sock` and appending what arrives to `messages`.

    `exited()` returns the message to fail with when the daemon has died (then no datagram
    will come), else None. Raises `error` when it died or nothing came within `timeout` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        for m in messages[after:]:
            if field in m.splitlines():
                return m
        gone = exited()
        if gone:
            raise error(gone)
        left = deadline - time.monotonic()
        if left <= 0:
            raise error(f"wsechod sent no {field} within {timeout} s; got {messages[after:]}")
        sock.settimeout(min(left, 0.5))
        try:
            messages.append(sock.recv(65536).decode(errors="replace"))
        except socket.timeout:
            pass


def parse_metrics(text):
    """{'name{labels}': value} from a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, val = line.rpartition(" ")
            out[key] = float(val)
    return out
