"""One ZeroMQ socket used by several threads, one at a time, under a lock.

ZeroMQ sockets are not thread-safe, but may move between threads with a full memory barrier in
between; a lock gives exactly that. One thread (the I/O thread) waits for input on the socket's
``ZMQ_FD`` with ``select.poll`` *outside* the lock, so other threads can send meanwhile without a
hand-off: the robot's control loop sends its observation itself, and the server's inference worker
sends its chunks itself. Each avoided hand-off is a thread wake-up less on the critical path, which
is what keeps the round trip near the raw-socket floor on a loaded machine.

``ZMQ_FD`` is edge-triggered and any operation on the socket may consume its edge. So readers drain
until ``ZMQ_EVENTS`` has no ``POLLIN``, and every send checks ``ZMQ_EVENTS`` afterwards and kicks the
waiting thread through a pipe when input became readable meanwhile.

A second socket may join (``add``): the server's session socket beside its public one. The waiting
thread wakes on either; ``recv_ready``, ``send`` and ``readable`` take the socket to use, the first
one by default.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from typing import Any

import zmq


class SharedSocket:
    def __init__(self, sock: zmq.Socket) -> None:
        self.lock = threading.RLock()
        self._poller = select.poll()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller.register(self._wake_r, select.POLLIN)
        self._extra: list[int] = []
        self._others: list[zmq.Socket] = []  # further sockets read and written under the lock
        self.sock = sock
        self._fd = sock.getsockopt(zmq.FD)
        self._poller.register(self._fd, select.POLLIN)

    def replace(self, sock: zmq.Socket) -> zmq.Socket:
        """Swap in a fresh socket (call with the lock held); return the old one for closing."""
        old = self.sock
        self._poller.unregister(self._fd)
        self.sock = sock
        self._fd = sock.getsockopt(zmq.FD)
        self._poller.register(self._fd, select.POLLIN)
        self.kick()
        return old

    def add(self, sock: zmq.Socket) -> None:
        """Another socket used under the same lock; the waiting thread also wakes on its input."""
        self._others.append(sock)
        self._poller.register(sock.getsockopt(zmq.FD), select.POLLIN)

    def watch(self, sock: zmq.Socket) -> None:
        """Also wake on input to another socket (owned by the waiting thread, e.g. a monitor)."""
        fd = sock.getsockopt(zmq.FD)
        self._extra.append(fd)
        self._poller.register(fd, select.POLLIN)

    def mute(self, sock: zmq.Socket) -> None:
        """Stop waking on a watched socket (its owner reads it on a timer meanwhile)."""
        fd = sock.getsockopt(zmq.FD)
        if fd in self._extra:
            self._extra.remove(fd)
            self._poller.unregister(fd)

    def unmute(self, sock: zmq.Socket) -> None:
        """Wake on a watched socket again; call after reading it until ``zmq.Again`` (its FD only
        signals input that arrives after the last read)."""
        fd = sock.getsockopt(zmq.FD)
        if fd not in self._extra:
            self._extra.append(fd)
            self._poller.register(fd, select.POLLIN)

    def kick(self) -> None:
        """Wake the waiting thread (from any thread)."""
        with contextlib.suppress(BlockingIOError):  # a full pipe already wakes it
            os.write(self._wake_w, b"\0")

    def wait(self, timeout_ms: int) -> None:
        """Block outside the lock until the socket may be readable, a kick, or the timeout."""
        self._poller.poll(timeout_ms)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def readable(self, sock: zmq.Socket | None = None) -> bool:
        """Whether ``sock`` (default: the first socket) has input waiting; call with the lock held."""
        return bool((sock or self.sock).getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def any_readable(self) -> bool:
        """Whether any of the sockets has input waiting; call with the lock held."""
        return self.readable() or any(self.readable(s) for s in self._others)

    def recv_ready(self, limit: int, sock: zmq.Socket | None = None) -> list[list[Any]]:
        """Up to ``limit`` waiting messages (call with the lock held); kicks itself if more wait."""
        sock = sock or self.sock
        messages = []
        while len(messages) < limit:
            try:
                messages.append(sock.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                return messages
        if self.readable(sock):
            self.kick()  # bounded batch: come back for the rest after timers and replies
        return messages

    def send(self, frames: list[Any], sock: zmq.Socket | None = None) -> None:
        """Non-blocking send (call with the lock held); raises ``zmq.Again`` / ``zmq.ZMQError``."""
        sock = sock or self.sock
        try:
            sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        finally:
            if self.readable(sock):  # the send may have eaten the FD's edge for waiting input
                self.kick()

    def close(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)
