"""Connection accounting for the server's ROUTER socket: a cap on connections, shedding at the fd
limit, and connect/disconnect logging that costs nothing under a flood.

A ROUTER socket accepts every TCP connection libzmq's listener sees; it has no connection limit and
no way to drop one peer. Its monitor reports each accepted connection with its file descriptor,
so the cap is enforced there: a connection over the cap is shut down (``shutdown(2)`` on a
the fd, after checking it is still a TCP connection to our port) and libzmq then
closes it as it would any peer that hung up. The same happens when ``accept`` fails for lack of
descriptors: libzmq's listener retries at once, spinning a core, until a descriptor frees up, so the
newest connections are shed. The effective cap stays below the process's descriptor limit so that,
normally, accepting never fails at all.

Per-connection lines go to DEBUG; INFO gets one summary per interval (how many connected,
disconnected, were refused or shed), so thousands of connects cost counters, not log lines.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import socket
import time
from collections import Counter

log = logging.getLogger("wall_runtime.transport.server")

FD_HEADROOM = 64  # descriptors kept free for everything but peer connections (files, pipes, ...)
SHED_AT_FD_LIMIT = 8  # connections shut down per failed accept


def fd_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_fd_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit (what a server should run with)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return fd_limit()


class LogSummary:
    """Counts events; logs the first ``info_budget`` per interval at INFO, the rest at DEBUG, and
    one INFO summary line per interval naming how many of each there were."""

    def __init__(self, what: str, interval: float = 10.0, info_budget: int = 5) -> None:
        self.what = what
        self.interval = interval
        self.info_budget = info_budget
        self.counts: Counter[str] = Counter()
        self._infos = 0
        self._window_end = time.monotonic() + interval

    def note(self, label: str, message: str, *args: object, level: int = logging.DEBUG) -> None:
        self.counts[label] += 1
        if level > logging.DEBUG and self._infos < self.info_budget:
            self._infos += 1
            log.log(level, message, *args)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug(message, *args)

    def flush(self, now: float | None = None, force: bool = False) -> None:
        now = time.monotonic() if now is None else now
        if not force and now < self._window_end:
            return
        if self.counts and sum(self.counts.values()) > self._infos:
            parts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
            log.info("%s in the last %.0f s: %s", self.what, self.interval, parts)
        self.counts.clear()
        self._infos = 0
        self._window_end = now + self.interval


class PeerTracker:
    """Live connections by fd (from monitor events), with the cap enforced on accept."""

    def __init__(self, max_connections: int, port: int | None) -> None:
        self.port = port
        self.cap = max(1, min(max_connections, fd_limit() - FD_HEADROOM))
        self.live: dict[int, float] = {}  # fd -> accept time (insertion order = accept order)
        self.summary = LogSummary("connections")
        self.shed = 0

    def accepted(self, fd: int) -> None:
        self.live.pop(fd, None)  # a reused fd number is a new connection: it goes to the back
        self.live[fd] = time.monotonic()
        self.summary.note("accepted", "connection accepted (fd %d, %d open)", fd, len(self.live))
        if len(self.live) > self.cap:
            self._shed(fd, f"over the connection cap of {self.cap}")

    def disconnected(self, fd: int) -> None:
        self.live.pop(fd, None)
        self.summary.note(
            "disconnected",
            "connection closed (fd %d, %d open): the peer hung up, or libzmq dropped it "
            "(a frame over MAXMSGSIZE, a ZMTP protocol violation)",
            fd,
            len(self.live),
        )

    def accept_failed(self, err: int) -> None:
        self.summary.note("accept_failed", "accept failed: %s", os.strerror(err) if err else "?")
        if err in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            # libzmq retries accept at once while it fails: free descriptors, newest peers first
            for fd in list(reversed(self.live))[:SHED_AT_FD_LIMIT]:
                self._shed(fd, "out of file descriptors")

    def _shed(self, fd: int, reason: str) -> None:
        self.live.pop(fd, None)
        try:
            # wraps libzmq's descriptor without duplicating it (at the fd limit a dup would fail)
            sock = socket.socket(fileno=fd)
        except OSError:
            return  # already closed by libzmq, or not a socket any more
        try:
            # The fd number may have been reused since the event: only a TCP connection accepted on
            # our port is ours to shut down.
            if sock.type == socket.SOCK_STREAM and (self.port is None or sock.getsockname()[1] == self.port):
                sock.shutdown(socket.SHUT_RDWR)
                self.shed += 1
                self.summary.note("shed", "connection shut down (fd %d): %s", fd, reason)
        except (OSError, IndexError, TypeError):
            pass
        finally:
            sock.detach()  # never close it: the descriptor stays libzmq's, which closes it on EOF
