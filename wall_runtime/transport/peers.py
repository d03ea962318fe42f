"""Connection accounting for the server's ROUTER socket: a cap on connections, shedding at the fd
limit, and connect/disconnect logging that costs nothing under a flood.

A ROUTER socket accepts every TCP connection libzmq's listener sees; it has no connection limit and
no way to drop one peer. Its monitor reports each accepted connection with its file descriptor,
so the cap is enforced there: a connection over the cap is shut down (``shutdown(2)`` on a
the fd, after checking it is still a TCP connection to our port) and libzmq then
closes it as it would any peer that hung up. The same happens when ``accept`` fails for lack of
descriptors: libzmq's listener retries at once, spinning a core, until a descriptor frees up, so the
newest connections without a session are shed, a few at a time (the next few once those descriptors
are closed). The effective cap stays below the process's descriptor limit so that, normally,
accepting never fails at all. The peer address of each accepted TCP connection is looked up once
(``getpeername``) for the per-address limit: a connection over it is refused, answered if it speaks
within a grace period (the server asks ``refusal``), then shut down.

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
from typing import Any

log = logging.getLogger("wall_runtime.transport.server")

FD_HEADROOM = 64  # descriptors kept free for everything but peer connections (files, pipes, ...)
SHED_AT_FD_LIMIT = 8  # connections being shut down at once at the descriptor limit
FD_CHECK_S = 0.001  # at the fd limit, how often the shed descriptors are looked at (not per report)
CLOSING_GIVE_UP_S = 2.0  # a shed descriptor still open after this is no longer waited for
MAX_REFUSED_OPEN = 256  # refused connections kept open (to answer them) at once; the rest shut at once


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
    """Live connections by fd (from monitor events): the connection cap and the per-address limit
    enforced on accept, descriptors freed at the fd limit.

    Connections that carry a session (``protect``, from the server's hello handling) are never shed
    at the descriptor limit: a flood there sheds the flood, not the robots already being served. A
    connection from an address over ``max_per_address`` is refused: it stays open for
    ``refuse_grace`` seconds so a message it sends (a robot's hello) can be answered with the reason,
    then it is shut down; at most ``MAX_REFUSED_OPEN`` such connections are kept open at once.
    """

    def __init__(
        self,
        max_connections: int,
        port: int | None,
        max_per_address: int | None = None,
        refuse_grace: float = 0.5,
        refusal_log_window: float = 10.0,
    ) -> None:
        self.port = port
        self.cap = max(1, min(max_connections, fd_limit() - FD_HEADROOM))
        self.max_per_address = max_per_address if max_per_address and port is not None else None
        self.refuse_grace = refuse_grace
        self.refusal_log_window = refusal_log_window
        self.live: dict[int, float] = {}  # fd -> accept time (insertion order = accept order)
        self.protected: set[int] = set()  # fds carrying a session: never shed at the fd limit
        # fds shut down whose descriptor libzmq has not closed yet -> (peer address then, when)
        self.closing: dict[int, tuple[Any, float]] = {}
        self._next_fd_check = 0.0
        self.address: dict[int, str] = {}  # fd -> peer address (with a per-address limit)
        self.per_address: Counter[str] = Counter()
        self.refused: dict[int, tuple[str, float]] = {}  # fd -> (address, shut down after)
        self._refusal_logged: dict[str, float] = {}  # address -> when its refusal was last logged
        self.summary = LogSummary("connections")
        self.shed = 0
        self.refused_total = 0

    def accepted(self, fd: int) -> None:
        if fd in self.live:  # a reused fd number is a new connection: it goes to the back
            self._forget(fd)
        self.live[fd] = time.monotonic()
        self.closing.pop(fd, None)
        self.summary.note("accepted", "connection accepted (fd %d, %d open)", fd, len(self.live))
        if len(self.live) > self.cap:
            self._shed(fd, f"over the connection cap of {self.cap}")
        elif self.max_per_address is not None:
            self._count_address(fd)

    def disconnected(self, fd: int) -> None:
        self._forget(fd)
        self.closing.pop(fd, None)
        self.summary.note(
            "disconnected",
            "connection closed (fd %d, %d open): the peer hung up, or libzmq dropped it "
            "(a frame over MAXMSGSIZE, a ZMTP protocol violation)",
            fd,
            len(self.live),
        )

    def protect(self, fd: int | None) -> None:
        """``fd`` carries a session (a robot said hello on it): shed it last."""
        if fd is not None:  # its accept event may come later; its close event forgets it
            self.protected.add(fd)

    def accept_failed(self, err: int) -> None:
        self.summary.note("accept_failed", "accept failed: %s", os.strerror(err) if err else "?")
        if err not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            return
        # libzmq retries accept at once while it fails, and reports each failure: a hundred
        # thousand a second, far ahead of their close events. Descriptors shut down a moment ago
        # are freed once libzmq sees their EOF, so shed more only when those descriptors are really
        # closed (looked at on the descriptor itself, not inferred from events that lag), or every
        # report would shed another batch until no connection is left, robots included.
        now = time.monotonic()
        if now < self._next_fd_check:
            return
        self._next_fd_check = now + FD_CHECK_S
        for fd, (peer, t) in list(self.closing.items()):
            if now - t > CLOSING_GIVE_UP_S or not _still_ours(fd, peer, self.port):
                del self.closing[fd]
        room = SHED_AT_FD_LIMIT - len(self.closing)
        if room <= 0:
            return
        newest_first = list(reversed(self.live))
        # Never a connection with a session: the events naming the connections accepted since
        # (the ones to shed) lag behind the failure reports, so "only sessions left" is usually
        # a stale view, and a robot cut off here loses its link.
        victims = [fd for fd in newest_first if fd not in self.protected][:room]
        for fd in victims:
            self._shed(fd, "out of file descriptors")

    # ------------------------------------------------------------------ per-address limit

    def refusal(self, fd: int | None) -> str | None:
        """Why a message arriving on ``fd`` is refused (its address is over the limit), else None."""
        if fd is None or fd not in self.refused:
            return None
        address = self.refused[fd][0]
        return (
            f"too many connections from {address}: this server takes at most {self.max_per_address} "
            "per address (close idle connections, or raise --max-connections-per-address)"
        )

    def expire_refused(self, now: float | None = None) -> None:
        """Shut down refused connections whose grace period is over."""
        now = time.monotonic() if now is None else now
        for fd, (address, until) in list(self.refused.items()):
            if now >= until:
                self._shed(
                    fd, f"refused: over the limit of {self.max_per_address} connections from {address}"
                )

    def _count_address(self, fd: int) -> None:
        address = self._peer_address(fd)
        if address is None:
            return
        self.address[fd] = address
        self.per_address[address] += 1
        if self.per_address[address] <= self.max_per_address:
            return
        self.refused_total += 1
        now = time.monotonic()
        if now - self._refusal_logged.get(address, float("-inf")) >= self.refusal_log_window:
            self._refusal_logged[address] = now
            if len(self._refusal_logged) > 4096:  # a flood of addresses: forget the old windows
                self._refusal_logged = {a: t for a, t in self._refusal_logged.items() if now - t < 60}
            log.warning(
                "refusing connections from %s: over the limit of %d connections per address "
                "(logged once per %.0f s; the rest are counted in the connection summary)",
                address,
                self.max_per_address,
                self.refusal_log_window,
            )
        self.summary.note("refused_per_address", "connection from %s refused (fd %d)", address, fd)
        if len(self.refused) >= MAX_REFUSED_OPEN:
            self._shed(fd, f"refused: over the limit of {self.max_per_address} connections from {address}")
        else:
            self.refused[fd] = (address, now + self.refuse_grace)

    def _peer_address(self, fd: int) -> str | None:
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            return None
        try:
            if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.getsockname()[1] != self.port:
                return None  # not our listener's connection (the fd number was reused meanwhile)
            return str(sock.getpeername()[0])
        except (OSError, IndexError, TypeError):
            return None
        finally:
            sock.detach()

    # ------------------------------------------------------------------ shedding

    def _forget(self, fd: int) -> None:
        self.live.pop(fd, None)
        self.protected.discard(fd)
        self.refused.pop(fd, None)
        address = self.address.pop(fd, None)
        if address is not None:
            left = self.per_address[address] - 1
            if left > 0:
                self.per_address[address] = left
            else:
                del self.per_address[address]

    def _shed(self, fd: int, reason: str) -> None:
        self._forget(fd)
        try:
            # wraps libzmq's descriptor without duplicating it (at the fd limit a dup would fail)
            sock = socket.socket(fileno=fd)
        except OSError:
            return  # already closed by libzmq, or not a socket any more
        try:
            # The fd number may have been reused since the event: only a TCP connection accepted on
            # our port is ours to shut down.
            if sock.type == socket.SOCK_STREAM and (self.port is None or sock.getsockname()[1] == self.port):
                try:
                    peer = sock.getpeername()
                except OSError:
                    peer = None
                sock.shutdown(socket.SHUT_RDWR)
                self.shed += 1
                self.closing[fd] = (peer, time.monotonic())
                self.summary.note("shed", "connection shut down (fd %d): %s", fd, reason)
        except (OSError, IndexError, TypeError):
            pass
        finally:
            sock.detach()  # never close it: the descriptor stays libzmq's, which closes it on EOF


def _still_ours(fd: int, peer: Any, port: int | None) -> bool:
    """Whether ``fd`` is still the shut-down connection to ``peer`` (libzmq has not closed it): the
    descriptor number is reused at once after a close, so its peer tells the two apart."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return False  # closed
    try:
        if sock.type != socket.SOCK_STREAM or (port is not None and sock.getsockname()[1] != port):
            return False
        try:
            return sock.getpeername() == peer
        except OSError as exc:
            return exc.errno == errno.ENOTCONN  # shut down and disconnected, not yet closed
    except (OSError, IndexError, TypeError):
        return False
    finally:
        sock.detach()
