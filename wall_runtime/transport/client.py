"""Policy client for the robot host: a ZeroMQ DEALER that never blocks the control loop.

``submit()`` encodes the observation in the caller's thread, queues it and returns a
``concurrent.futures.Future`` at once; a background I/O thread owns the socket, sends, receives,
pings the server and resolves futures. A future ends in exactly one of: an ``ActionChunk``,
``SupersededError`` / ``DeadlineExceededError`` / ``ServerError`` (the server said so),
``RequestTimeout`` (no answer in time), ``ConnectionLost`` (heartbeats stopped) or ``NotConnected``
(no handshake in place when it was submitted).

Heartbeats: the client pings every ``heartbeat_interval``; when nothing has been heard for
``heartbeat_timeout`` it reports the loss (``on_connection_change("lost", reason)``), fails what is
in flight, throws the socket away (so no stale observation is delivered late) and keeps trying a
fresh handshake; a new welcome is reported as ``"connected"``. A server that restarted answers the
old connection ``not_registered``, which also triggers a fresh handshake.

Arrays of a submitted observation are sent without copying: do not write into them until its
future is done (camera frames normally are fresh arrays anyway).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from wall_runtime.backends.base import PolicyMetadata
from wall_runtime.transport import auth, protocol
from wall_runtime.transport.codec import decode, encode
from wall_runtime.transport.errors import (
    ConnectionLost,
    ErrorCode,
    NotConnected,
    ProtocolError,
    RequestTimeout,
    ServerError,
    TransportError,
    server_error,
)
from wall_runtime.types import Observation

log = logging.getLogger(__name__)

ConnectionCallback = Callable[[str, str], None]


@dataclass
class _InFlight:
    future: Future
    expires: float  # perf_counter
    kind: str


def _resolve(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:  # the caller cancelled it
        pass


class PolicyClient:
    def __init__(
        self,
        endpoint: str,
        robot: protocol.RobotDescription,
        *,
        server_key: str | Path | None = None,
        client_key: str | Path | None = None,
        default_deadline: float = 0.5,
        timeout_grace: float = 0.25,
        heartbeat_interval: float | None = None,
        heartbeat_timeout: float | None = None,
        on_connection_change: ConnectionCallback | None = None,
        max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        """``server_key``: the server's public ``.key`` file; ``client_key``: this host's ``.key_secret``.

        ``default_deadline`` (s) is sent with each observation unless ``submit`` gives one; a future
        times out ``timeout_grace`` s after its deadline. Heartbeat settings default to the
        server's advertised interval and three times that.
        """
        if (server_key is None) != (client_key is None):
            raise auth.SecurityError("CURVE needs both the server's public key and this client's secret key")
        self.endpoint = endpoint
        self.robot = robot
        self.default_deadline = default_deadline
        self.timeout_grace = timeout_grace
        self.max_message_bytes = max_message_bytes
        self._hb_interval_override = heartbeat_interval
        self._hb_timeout_override = heartbeat_timeout
        self._on_change = on_connection_change
        self._curve = (
            (auth.load_secret(client_key), auth.load_public(server_key)) if server_key is not None else None
        )
        self.metadata: PolicyMetadata | None = None
        self.session: str | None = None
        self._connected = threading.Event()
        self._refused: ServerError | None = None
        self._seq = itertools.count(1)
        self._commands: queue.SimpleQueue[tuple[str, int, list[Any], Future, float]] = queue.SimpleQueue()
        self._ctx = zmq.Context()
        self._wake_endpoint = f"inproc://wall-client-wake-{secrets.token_hex(6)}"
        self._wake_in = self._ctx.socket(zmq.PULL)
        self._wake_in.bind(self._wake_endpoint)
        self._wake_out = self._ctx.socket(zmq.PUSH)
        self._wake_out.connect(self._wake_endpoint)
        self._wake_lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.heartbeats_lost = 0  # how many times the link was declared lost

    # ------------------------------------------------------------------------- public API

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Start the I/O thread; it handshakes (and re-handshakes) on its own."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="policy-client-io", daemon=True)
            self._thread.start()

    def connect(self, timeout: float = 10.0) -> PolicyMetadata:
        """Start and wait for the handshake; return the policy's metadata."""
        self.start()
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.05):
            if self._refused is not None:
                raise self._refused
            if time.monotonic() > deadline:
                raise NotConnected(f"no handshake with {self.endpoint} within {timeout:.1f} s")
        assert self.metadata is not None
        return self.metadata

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def submit(
        self,
        observation: Observation,
        deadline: float | None = None,
        callback: Callable[[Future], None] | None = None,
    ) -> Future:
        """Queue ``observation`` and return at once; the future resolves to an ``ActionChunk``.

        ``deadline`` (s): the server computes the request only if it can start before then.
        ``callback(future)`` runs on the I/O thread when the future is done: keep it short.
        """
        deadline = self.default_deadline if deadline is None else deadline
        future: Future = Future()
        if callback is not None:
            future.add_done_callback(callback)
        seq = next(self._seq)
        try:
            frames = protocol.encode_observe(observation, seq, deadline * 1000.0)
        except ProtocolError as exc:
            _resolve(future, error=exc)
            return future
        self._post(protocol.OBSERVE, seq, frames, future, deadline + self.timeout_grace)
        return future

    def reset(self, timeout: float = 1.0) -> Future:
        """Cancel this robot's waiting request on the server (e.g. at an episode boundary)."""
        future: Future = Future()
        seq = next(self._seq)
        self._post(protocol.RESET, seq, encode(protocol.simple_header(protocol.RESET, seq)), future, timeout)
        return future

    def stats(self, timeout: float = 2.0) -> Future:
        """The server's metrics snapshot and sessions (a dict)."""
        future: Future = Future()
        seq = next(self._seq)
        self._post(protocol.STATS, seq, encode(protocol.simple_header(protocol.STATS, seq)), future, timeout)
        return future

    def close(self) -> None:
        if self._thread is not None:
            self._closing.set()
            self._wake()
            self._thread.join(5.0)
        self._wake_in.close(0)
        self._wake_out.close(0)
        self._ctx.term()

    def __enter__(self) -> PolicyClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, kind: str, seq: int, frames: list[Any], future: Future, timeout: float) -> None:
        if self._thread is None or self._closing.is_set():
            _resolve(future, error=NotConnected("client is not started"))
            return
        self._commands.put((kind, seq, frames, future, timeout))
        self._wake()

    def _wake(self) -> None:
        with self._wake_lock:  # submit() may be called from several threads
            self._wake_out.send(b"", zmq.NOBLOCK)

    # -------------------------------------------------------------------------- I/O thread

    def _new_socket(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.immediate = True  # never queue onto a connection that is not up
        sock.sndhwm = sock.rcvhwm = 16
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        sock.reconnect_ivl = 100
        sock.reconnect_ivl_max = 1000
        if self._curve is not None:
            client, server_public = self._curve
            auth.apply_client_curve(sock, client, server_public)
        sock.connect(self.endpoint)
        return sock

    def _hb_interval(self) -> float:
        return self._hb_interval_override or self._advertised_interval

    def _hb_timeout(self) -> float:
        return self._hb_timeout_override or 3.0 * self._hb_interval()

    def _run(self) -> None:
        self._advertised_interval = 1.0
        self._inflight: dict[int, _InFlight] = {}
        sock = self._new_socket()
        poller = zmq.Poller()
        poller.register(self._wake_in, zmq.POLLIN)
        poller.register(sock, zmq.POLLIN)
        now = time.perf_counter()
        self._last_heard = now
        self._last_ping = now
        self._last_hello = 0.0
        self._handshake_started = now
        try:
            while not self._closing.is_set():
                now = time.perf_counter()
                timeout_ms = self._timer_ms(now)
                events = dict(poller.poll(timeout_ms))
                if self._wake_in in events:
                    while self._wake_in.poll(0):
                        self._wake_in.recv()
                    self._drain_commands(sock)
                if sock in events:
                    for _ in range(64):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        if self._on_message(sock, frames):
                            break
                now = time.perf_counter()
                self._expire(now)
                replaced = self._heartbeat(sock, now)
                if replaced is not None:
                    poller.unregister(sock)
                    sock.close(0)
                    sock = replaced
                    poller.register(sock, zmq.POLLIN)
        finally:
            was_connected = self.connected
            self._connected.clear()
            for item in self._inflight.values():
                _resolve(item.future, error=NotConnected("client closed"))
            self._inflight.clear()
            self._drain_commands(None)
            if was_connected:
                # lets the server forget this robot now rather than after its session timeout
                with contextlib.suppress(zmq.ZMQError):
                    sock.send_multipart(encode(protocol.simple_header(protocol.BYE)), zmq.NOBLOCK)
            sock.close(0)

    def _timer_ms(self, now: float) -> int:
        interval = self._hb_interval()
        nxt = (self._last_ping if self.connected else self._last_hello) + (
            interval if self.connected else 0.1
        )
        if self._inflight:
            nxt = min(nxt, min(i.expires for i in self._inflight.values()))
        nxt = min(nxt, self._last_heard + self._hb_timeout())
        return max(0, min(100, int((nxt - now) * 1000.0) + 1))

    def _drain_commands(self, sock: zmq.Socket | None) -> None:
        while True:
            try:
                kind, seq, frames, future, timeout = self._commands.get_nowait()
            except queue.Empty:
                return
            if future.cancelled():
                continue
            if sock is None:
                _resolve(future, error=NotConnected("client closed"))
                continue
            if not self.connected and kind != protocol.STATS:
                _resolve(future, error=NotConnected(f"no handshake with {self.endpoint} in place"))
                continue
            try:
                sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                _resolve(
                    future, error=NotConnected(f"cannot send to {self.endpoint}: not connected or queue full")
                )
                continue
            self._inflight[seq] = _InFlight(future, time.perf_counter() + timeout, kind)

    def _on_message(self, sock: zmq.Socket, frames: list[Any]) -> bool:
        """Handle one server message; True when the socket must not be read further this round."""
        self._last_heard = time.perf_counter()
        try:
            msg = decode(frames, self.max_message_bytes)
            protocol.check_version(msg.header)
        except ProtocolError as exc:
            log.warning("dropped an undecodable message from the server: %s", exc)
            return False
        h = msg.header
        kind = h["type"]
        seq = protocol.seq_of(h)
        if kind == protocol.WELCOME:
            self._on_welcome(h)
        elif kind == protocol.CHUNK:
            item = self._inflight.pop(seq, None) if seq is not None else None
            if item is None:
                log.debug("late chunk for seq %s dropped", seq)
                return False
            try:
                chunk = protocol.decode_chunk(msg, self.metadata)
            except ProtocolError as exc:
                _resolve(item.future, error=exc)
                return False
            _resolve(item.future, chunk)
        elif kind == protocol.ERROR:
            code = str(h.get("code"))
            message = str(h.get("message"))
            item = self._inflight.pop(seq, None) if seq is not None else None
            if item is not None:
                _resolve(item.future, error=server_error(code, message))
            if code == ErrorCode.NOT_REGISTERED.value:
                self._lose(f"server does not know this connection ({message})", report=self.connected)
                self._send_hello(sock)
            elif (
                item is None
                and not self.connected
                and code
                in (
                    ErrorCode.BAD_HELLO.value,
                    ErrorCode.UNSUPPORTED_VERSION.value,
                    ErrorCode.BAD_MESSAGE.value,
                )
            ):
                self._refused = ServerError(code, message)
                log.error("server refused the handshake: %s: %s", code, message)
                self._notify("refused", f"{code}: {message}")
            elif item is None:
                log.warning("server error: %s: %s", code, message)
        elif kind in (protocol.PONG, protocol.ACK, protocol.STATS):
            if kind == protocol.PONG and h.get("session") not in (None, self.session):
                self._lose("server restarted (new session)", report=self.connected)
                self._send_hello(sock)
            item = self._inflight.pop(seq, None) if seq is not None else None
            if item is not None:
                _resolve(item.future, dict(h) if kind == protocol.STATS else None)
        else:
            log.warning("dropped a server message of unknown type %r", kind)
        return False

    def _on_welcome(self, h: dict[str, Any]) -> None:
        meta = protocol.metadata_from_dict(h.get("metadata") or {})
        interval = h.get("heartbeat_interval")
        if isinstance(interval, (int, float)) and 0 < interval <= 60:
            self._advertised_interval = float(interval)
        previous = self.session
        self.metadata = meta
        self.session = str(h.get("session"))
        self._refused = None
        self._last_ping = time.perf_counter()
        self._connected.set()
        detail = f"session {self.session}" + (f" (was {previous})" if previous else "")
        log.info("connected to %s: %s %s, %s", self.endpoint, meta.model, meta.backend, detail)
        self._notify("connected", detail)

    def _send_hello(self, sock: zmq.Socket) -> None:
        self._last_hello = time.perf_counter()
        # zmq.Again: no connection yet; retried on the next timer tick
        with contextlib.suppress(zmq.Again):
            sock.send_multipart(encode(self.robot.to_header()), zmq.NOBLOCK)

    def _lose(self, reason: str, report: bool = True) -> None:
        was = self.connected
        self._connected.clear()
        self._handshake_started = time.perf_counter()
        for item in self._inflight.values():
            _resolve(item.future, error=ConnectionLost(reason))
        self._inflight.clear()
        if was and report:
            self.heartbeats_lost += 1
            log.warning("lost the policy server at %s: %s", self.endpoint, reason)
            self._notify("lost", reason)

    def _notify(self, state: str, detail: str) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(state, detail)
        except Exception:
            log.exception("on_connection_change callback raised")

    def _expire(self, now: float) -> None:
        for seq, item in list(self._inflight.items()):
            if item.expires <= now:
                del self._inflight[seq]
                _resolve(item.future, error=RequestTimeout(f"no answer to {item.kind} seq {seq} in time"))

    def _heartbeat(self, sock: zmq.Socket, now: float) -> zmq.Socket | None:
        """Ping, detect silence, retry the handshake; return a replacement socket when one is due."""
        if now - self._last_heard > self._hb_timeout():
            silent = now - self._last_heard
            self._lose(f"no message from the server for {silent:.1f} s")
            self._last_heard = now  # next check one timeout from now
            fresh = self._new_socket()
            self._send_hello(fresh)
            return fresh
        if self.connected:
            if now - self._last_ping >= self._hb_interval():
                self._last_ping = now
                with contextlib.suppress(zmq.Again):  # a missing pong will tell
                    sock.send_multipart(encode(protocol.simple_header(protocol.PING, 0)), zmq.NOBLOCK)
        elif now - self._last_hello >= 0.1:
            self._send_hello(sock)
        return None


__all__ = [
    "ConnectionLost",
    "NotConnected",
    "PolicyClient",
    "RequestTimeout",
    "ServerError",
    "TransportError",
    "fetch_stats",
]


def fetch_stats(
    endpoint: str,
    server_key: str | Path | None = None,
    client_key: str | Path | None = None,
    timeout: float = 3.0,
) -> dict[str, Any]:
    """One ``stats`` request on a throw-away socket (no handshake needed): the CLI's metrics reader."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        if server_key is not None:
            if client_key is None:
                raise auth.SecurityError("a CURVE server needs --client-key as well")
            auth.apply_client_curve(sock, auth.load_secret(client_key), auth.load_public(server_key))
        sock.connect(endpoint)
        sock.send_multipart(encode(protocol.simple_header(protocol.STATS, 1)))
        if not sock.poll(int(timeout * 1000)):
            raise RequestTimeout(f"no stats reply from {endpoint} within {timeout:.1f} s")
        msg = decode(sock.recv_multipart(), protocol.DEFAULT_MAX_MESSAGE_BYTES)
        if msg.type == protocol.ERROR:
            raise server_error(str(msg.header.get("code")), str(msg.header.get("message")))
        return msg.header
    finally:
        sock.close(0)
        ctx.term()
