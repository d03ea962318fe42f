"""Policy client for the robot host: a ZeroMQ DEALER that never blocks the control loop.

``submit()`` encodes the observation and hands it to ZeroMQ without blocking (a non-blocking send
under a short lock, ``SharedSocket``), then returns a ``concurrent.futures.Future`` at once; a
background I/O thread receives, pings the server, runs the timeouts and resolves futures. A future ends in exactly one of: an ``ActionChunk``,
``SupersededError`` / ``DeadlineExceededError`` / ``ServerError`` (the server said so),
``RequestTimeout`` (no answer in time), ``ConnectionLost`` (heartbeats stopped) or ``NotConnected``
(no handshake in place when it was submitted).

Heartbeats: the client pings every ``heartbeat_interval``; when nothing has been heard for
``heartbeat_timeout`` it reports the loss (``on_connection_change("lost", reason)``), fails what is
in flight, throws the socket away (so no stale observation is delivered late) and keeps trying a
fresh handshake; a new welcome is reported as ``"connected"``. A server that restarted answers the
old connection ``not_registered``, which also triggers a fresh handshake.

Two endpoints: when the welcome offers a session port, the client opens a second connection there
(the same host, the same CURVE keys), attaches with its session token and sends everything else on
it, so floods of strangers at the public endpoint do not delay it (``docs/protocol.md``, Floods).
Only then is it ``connected``. If the attach fails or gets no answer within ``ATTACH_TIMEOUT_S``
it stays on the public connection for that server session; a lost link or a restarted server
starts again from a hello on the public endpoint.

Arrays of a submitted observation are sent without copying: do not write into them until its
future is done (camera frames normally are fresh arrays anyway).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from wall_runtime.model.image_processing import shrink_all_for_wire
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
from wall_runtime.transport.shared_socket import SharedSocket
from wall_runtime.types import Observation, PolicyMetadata

log = logging.getLogger(__name__)

ConnectionCallback = Callable[[str, str], None]
HELLO_RETRY_S = 0.5  # a queued hello is delivered once connected; retries cover a lost one
REFUSED_RETRY_S = 5.0  # after a refused hello (e.g. wrong cameras), retry only now and then
ATTACH_TIMEOUT_S = 1.0  # no answer from the session endpoint this long: stay on the public one
# what the socket monitor reports: a CURVE refusal is silent on the wire (the server just closes),
# but libzmq tells the client's own monitor why its handshake failed
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
HANDSHAKE_EVENTS = HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED


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
        resize_images: bool = False,
    ) -> None:
        """``server_key``: the server's public ``.key`` file; ``client_key``: this host's ``.key_secret``.

        ``robot.state_dim`` None leaves the state size to the policy: the first welcome's size is
        then kept in ``self.robot`` (and announced by every later hello, e.g. after a server restart).

        ``resize_images``: run the model's first, exact preprocessing step here (the Pillow bicubic
        resize to each view's resolution, announced by the server at the handshake) and send
        model-sized frames: fewer bytes on the wire, the same model input (docs/protocol.md).

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
        self.resize_images = resize_images
        self._hb_interval_override = heartbeat_interval
        self._hb_timeout_override = heartbeat_timeout
        self._on_change = on_connection_change
        self._curve = (
            (auth.load_secret(client_key), auth.load_public(server_key)) if server_key is not None else None
        )
        self._key_files = (server_key, client_key)  # named in the hint when a handshake fails
        self._monitor: zmq.Socket | None = None  # the current socket's handshake events
        self._handshake_failed: NotConnected | None = None  # why the last ZMTP handshake failed
        self._handshake_failures = 0  # how many have failed (connect() fails on one during its wait)
        self._no_detail = 0  # handshakes the server closed without a reason, in a row
        self.metadata: PolicyMetadata | None = None
        self.limits: dict[str, Any] = {}  # what the policy refuses beyond shapes (from the welcome)
        self.session: str | None = None
        self._token: str | None = None  # this robot's session token: proves continuity on reconnect
        self.session_endpoint: str | None = None  # the session endpoint this client sends on, if any
        self._attaching: float | None = None  # perf_counter deadline of the attach in progress
        self._stay_public: str | None = None  # the server session whose session endpoint failed us
        self._waiting_reason: str | None = None  # why the server has not admitted us yet (in use, full)
        self._connected = threading.Event()
        self._refused: ServerError | None = None
        self._seq = itertools.count(1)
        self._ctx = zmq.Context()
        self._io: SharedSocket | None = None  # created by start(); the DEALER and its lock
        self._inflight: dict[int, _InFlight] = {}
        self._done: list[tuple[Future, Any, BaseException | None]] = []  # resolved outside the lock
        self._events: list[tuple[str, str]] = []  # connection events, reported outside the lock
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.heartbeats_lost = 0  # how many times the link was declared lost
        self.dropped_replies = 0  # malformed server messages ignored
        self.reply_failures = 0  # of which not refused as a ProtocolError (a decode path missed a check)
        self._next_drop_log = 0.0
        self._previous_session: str | None = None

    # ------------------------------------------------------------------------- public API

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Start the I/O thread; it handshakes (and re-handshakes) on its own."""
        if self._thread is None:
            self._advertised_interval = 1.0
            now = time.perf_counter()
            self._last_heard = self._last_ping = now
            self._last_hello = 0.0
            self._io = SharedSocket(self._new_socket())
            self._thread = threading.Thread(target=self._run, name="policy-client-io", daemon=True)
            self._thread.start()

    def connect(self, timeout: float = 10.0) -> PolicyMetadata:
        """Start and wait for the handshake; return the policy's metadata. A handshake the server
        fails while waiting (a CURVE key refused, CURVE on one side only) raises at once, saying
        which key file to check."""
        failures = self._handshake_failures
        self.start()
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.05):
            if self._refused is not None:
                raise self._refused
            failed = self._handshake_failed
            if failed is not None and self._handshake_failures > failures:  # no point waiting
                raise failed
            if time.monotonic() > deadline:
                why = self._waiting_reason or self._no_handshake_hint()
                raise NotConnected(f"no handshake with {self.endpoint} within {timeout:.1f} s: {why}")
        assert self.metadata is not None
        return self.metadata

    def _no_handshake_hint(self) -> str:
        """What to check when the server stays silent (a CURVE refusal is silent by design)."""
        if self._curve is not None:
            return (
                "CURVE is on, and a server that refuses a key stays silent: check that --server-key is the "
                "server's public key (the .key beside the server's --server-key .key_secret) and that this "
                "host's public key (the .key beside --client-key) is in the server's --allow folder"
            )
        return (
            "check that the server runs at that endpoint; a server with CURVE keys ignores clients "
            "without them (pass --server-key and --client-key)"
        )

    def _handshake_hint(self, event: int, value: int) -> str:
        """Why the ZMTP handshake failed, from the socket monitor's event, naming the key files."""
        server_key, client_key = self._key_files
        mismatch = event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value in (
            zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH,
            zmq.PROTOCOL_ERROR_ZMTP_UNEXPECTED_COMMAND,
        )
        if self._curve is None:
            if mismatch or event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                return (
                    "the server requires CURVE: pass its public key (--server-key SERVER.key) and this "
                    "host's secret key (--client-key ROBOT.key_secret, its ROBOT.key in the server's --allow folder)"
                )
            return f"handshake failed ({_event_name(event)} {value}): is this a wall-runtime server?"
        public = Path(str(client_key)).with_suffix(".key")
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (
                f"the server refused this host's CURVE key (ZAP status {value}): its public key "
                f"{self._curve[0].public.decode()} ({public}, beside --client-key {client_key}) is not in "
                "the server's --allow folder; copy it there (the server rereads the folder within 1 s)"
            )
        if mismatch:
            return (
                f"the server runs without CURVE: drop --server-key {server_key} and --client-key "
                f"{client_key}, or start the server with --server-key and --allow"
            )
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            # libzmq cannot tell these apart: the server closes in both cases (a CURVE client to a
            # plain server is sometimes reported as a mechanism mismatch, sometimes not)
            return (
                f"the server dropped the CURVE handshake: --server-key {server_key} is not this server's "
                "public key (use the .key beside the server's --server-key .key_secret), or the server "
                f"runs without CURVE (then drop --server-key and --client-key {client_key})"
            )
        return f"CURVE handshake failed ({_event_name(event)} {value}): check --server-key {server_key}"

    def _check_handshake(self) -> None:
        """Drain the socket monitor (I/O thread, lock held): a failed handshake makes ``connect``
        fail at once with the reason, reported once; libzmq keeps reconnecting meanwhile, so a key
        added to the server's allow-list later still gets in."""
        mon = self._monitor
        while mon is not None:
            try:
                event = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, value = int(event["event"]), int(event["value"])
            if kind == zmq.EVENT_DISCONNECTED:
                if self.connected and self.session_endpoint is not None:
                    self._last_heard = time.perf_counter()  # the heartbeat timeout counts from here
                    self._start_over(f"the session endpoint {self.session_endpoint} closed the connection")
                    return  # that monitor is gone with its socket
                continue
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_failed = None
                self._no_detail = 0
            elif kind & HANDSHAKE_FAILED and not self.connected:
                if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                    # the peer closed mid-handshake: a wrong server key, or CURVE on one side only,
                    # which the next attempt (libzmq retries within 100 ms) often says outright
                    self._no_detail += 1
                    if self._no_detail < 2:
                        continue
                hint = self._handshake_hint(kind, value)
                if self._handshake_failed is None or not str(self._handshake_failed).endswith(hint):
                    log.error("no handshake with %s: %s", self.endpoint, hint)
                    self._events.append(("refused", hint))
                self._handshake_failed = NotConnected(f"no handshake with {self.endpoint}: {hint}")
                self._handshake_failures += 1

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
        meta = self.metadata
        if self.resize_images and meta is not None and meta.resolutions:
            # the views on a thread pool, on the caller's thread: the I/O thread never resizes
            images = shrink_all_for_wire(observation.images, meta.resolutions)
            observation = dataclasses.replace(observation, images=images)
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

    def stats(self, timeout: float = 2.0, offset: int = 0, limit: int = protocol.STATS_PAGE) -> Future:
        """The server's metrics snapshot, a session summary and one page of its sessions (a dict)."""
        future: Future = Future()
        seq = next(self._seq)
        header = protocol.simple_header(protocol.STATS, seq, offset=offset, limit=limit)
        self._post(protocol.STATS, seq, encode(header), future, timeout)
        return future

    def close(self) -> None:
        if self._thread is not None and self._io is not None:
            self._closing.set()
            self._io.kick()
            self._thread.join(5.0)
            self._retire(self._io.sock, self._monitor, linger=200)  # lets the goodbye reach the server
            self._monitor = None
            self._io.close()
        self._ctx.term()

    def __enter__(self) -> PolicyClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, kind: str, seq: int, frames: list[Any], future: Future, timeout: float) -> None:
        io = self._io
        if io is None or self._closing.is_set():
            _resolve(future, error=NotConnected("client is not started"))
            return
        with io.lock:
            if not self.connected:
                error: BaseException | None = NotConnected(f"no handshake with {self.endpoint} in place")
            else:
                try:
                    io.send(frames)
                    self._inflight[seq] = _InFlight(future, time.perf_counter() + timeout, kind)
                    error = None
                except zmq.ZMQError:
                    error = NotConnected(f"cannot send to {self.endpoint}: not connected or queue full")
        if error is not None:
            _resolve(future, error=error)

    # -------------------------------------------------------------------------- I/O thread

    def _new_socket(self, endpoint: str | None = None) -> zmq.Socket:
        """A DEALER to ``endpoint`` (default: the public endpoint)."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        # Not ZMQ_IMMEDIATE: with it libzmq discards replies that arrived but were not yet read when
        # the server closes the connection (e.g. its last `shutting_down` errors). Submissions are
        # refused anyway while no handshake is in place, and a socket is replaced on heartbeat loss.
        sock.sndhwm = sock.rcvhwm = 16
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        sock.reconnect_ivl = 100
        sock.reconnect_ivl_max = 1000
        if self._curve is not None:
            client, server_public = self._curve
            auth.apply_client_curve(sock, client, server_public)
        # the handshake's outcome, read on the I/O thread; on the session endpoint a dropped
        # connection also says the server went (a restart binds another port): back to a hello at
        # once instead of after the heartbeat timeout
        events = HANDSHAKE_EVENTS | (zmq.EVENT_DISCONNECTED if endpoint else 0)
        self._monitor = sock.get_monitor_socket(events)
        sock.connect(endpoint or self.endpoint)
        return sock

    def _switch_socket(self, endpoint: str | None = None) -> None:
        """Replace the socket (and its monitor) with a fresh one to ``endpoint`` (default: public)."""
        assert self._io is not None
        old_sock, old_monitor = self._io.sock, self._monitor
        self._io.replace(self._new_socket(endpoint))
        self._retire(old_sock, old_monitor)

    @staticmethod
    def _retire(sock: zmq.Socket, monitor: zmq.Socket | None, linger: int = 0) -> None:
        """Close a socket and its monitor. The monitor is switched off first: libzmq's I/O thread
        sends each event with a blocking send, so an event (a disconnect as the socket closes) sent
        to a monitor whose reader is gone would stall that thread, and every socket it serves, for good."""
        if monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            monitor.close(linger=0)
        sock.close(linger=linger)

    def _hb_interval(self) -> float:
        return self._hb_interval_override or self._advertised_interval

    def _hb_timeout(self) -> float:
        return self._hb_timeout_override or 3.0 * self._hb_interval()

    def _run(self) -> None:
        io = self._io
        assert io is not None
        timeout_ms = 0
        try:
            while not self._closing.is_set():
                io.wait(timeout_ms)
                with io.lock:
                    for frames in io.recv_ready(64):
                        self._on_message_safely(frames)
                    if not self.connected or self.session_endpoint is not None:
                        self._check_handshake()
                    now = time.perf_counter()
                    self._expire(now)
                    self._heartbeat(now)
                    # Next wake-up computed now: after resolving futures this thread goes straight
                    # back to waiting, without touching the lock the woken caller is about to take.
                    timeout_ms = self._timer_ms(now)
                    done, self._done = self._done, []
                    events, self._events = self._events, []
                self._report(done, events)
        finally:
            with io.lock:
                was_connected = self.connected
                self._connected.clear()
                for item in self._inflight.values():
                    self._done.append((item.future, None, NotConnected("client closed")))
                self._inflight.clear()
                if was_connected:
                    # lets the server forget this robot now rather than after its session timeout
                    with contextlib.suppress(zmq.ZMQError):
                        io.send(encode(protocol.simple_header(protocol.BYE)))
                done, self._done = self._done, []
                events, self._events = self._events, []
            self._report(done, events)

    def _report(
        self, done: list[tuple[Future, Any, BaseException | None]], events: list[tuple[str, str]]
    ) -> None:
        """Resolve futures and report events outside the lock (callbacks may call ``submit``)."""
        for state, detail in events:
            self._notify(state, detail)
        for future, result, error in done:
            _resolve(future, result, error)

    def _timer_ms(self, now: float) -> int:
        interval = self._hb_interval()
        nxt = (self._last_ping + interval) if self.connected else (self._last_hello + HELLO_RETRY_S)
        if self._attaching is not None:
            nxt = self._attaching
        nxt = min(nxt, self._last_heard + self._hb_timeout())
        cap = 100.0
        if self._inflight:
            # submit() does not wake this thread, so expiry is checked at least every 20 ms
            nxt = min(nxt, min(i.expires for i in self._inflight.values()))
            cap = 20.0
        return max(0, min(int(cap), int((nxt - now) * 1000.0) + 1))

    def _on_message_safely(self, frames: list[Any]) -> None:
        """Whatever the server sends, the I/O thread goes on (a malformed reply is dropped, logged)."""
        try:
            self._on_message(frames)
        except ProtocolError as exc:
            self._dropped_reply(str(exc))
        except Exception as exc:  # a bug on a reply's path: this reply is lost, the link is not
            self.reply_failures += 1
            log.debug("reply handling failed", exc_info=True)
            self._dropped_reply(f"{type(exc).__name__}: {exc}")

    def _dropped_reply(self, reason: str) -> None:
        self.dropped_replies += 1
        now = time.monotonic()
        if now >= self._next_drop_log:  # at most one line a second: a hostile peer cannot flood the log
            self._next_drop_log = now + 1.0
            log.warning(
                "dropped a malformed message from the server (%d so far): %s", self.dropped_replies, reason
            )

    def _on_message(self, frames: list[Any]) -> None:
        """Handle one server message (with the lock held); raises on a malformed one."""
        self._last_heard = time.perf_counter()
        msg = decode(frames, self.max_message_bytes)
        protocol.check_version(msg.header)
        h = msg.header
        kind = h["type"]
        seq = protocol.seq_of(h)
        if kind == protocol.WELCOME:
            self._on_welcome(h)
        elif kind == protocol.ATTACHED:
            if self._attaching is not None:
                self._attaching = None
                self._now_connected()
        elif kind == protocol.CHUNK:
            item = self._inflight.pop(seq, None) if seq is not None else None
            if item is None:
                log.debug("late chunk for seq %s dropped", seq)
                return
            try:
                chunk = protocol.decode_chunk(msg, self.metadata)
            except ProtocolError as exc:
                self._done.append((item.future, None, exc))
                return
            self._done.append((item.future, chunk, None))
        elif kind == protocol.ERROR:
            code = str(h.get("code"))
            message = str(h.get("message"))
            item = self._inflight.pop(seq, None) if seq is not None else None
            if item is not None:
                self._done.append((item.future, None, server_error(code, message)))
            if item is None and self._attaching is not None:
                self._attach_failed(f"{code}: {message}")
            elif code == ErrorCode.NOT_REGISTERED.value:
                self._start_over(f"server does not know this connection ({message})", report=self.connected)
            elif (
                item is None
                and not self.connected
                and code
                in (
                    ErrorCode.ROBOT_ID_IN_USE.value,
                    ErrorCode.OVERLOADED.value,
                )
            ):
                # not a refusal of this robot: another session holds its id (or the server is
                # full) for now; the hello is retried on the normal schedule
                if self._waiting_reason is None:
                    log.warning("server has not admitted this robot yet: %s: %s", code, message)
                self._waiting_reason = f"{code}: {message}"
            elif (
                item is None
                and not self.connected
                and code
                in (
                    ErrorCode.BAD_HELLO.value,
                    ErrorCode.UNSUPPORTED_VERSION.value,
                    ErrorCode.BAD_MESSAGE.value,
                    ErrorCode.UNAUTHORIZED.value,
                )
            ):
                if self._refused is None:  # report once; retries continue, slowly
                    log.error("server refused the handshake: %s: %s", code, message)
                    self._events.append(("refused", f"{code}: {message}"))
                self._refused = ServerError(code, message)
            elif item is None:
                log.warning("server error: %s: %s", code, message)
        elif kind in (protocol.PONG, protocol.ACK, protocol.STATS):
            if kind == protocol.PONG and h.get("session") not in (None, self.session):
                self._start_over("server restarted (new session)", report=self.connected)
            item = self._inflight.pop(seq, None) if seq is not None else None
            if item is not None:
                self._done.append((item.future, dict(h) if kind == protocol.STATS else None, None))
        else:
            log.warning("dropped a server message of unknown type %r", kind)
        return

    def _on_welcome(self, h: dict[str, Any]) -> None:
        if (
            (self.connected or self._attaching is not None)
            and h.get("session") == self.session
            and h.get("token") == self._token
        ):
            return  # the answer to a retried hello of the handshake already in place
        meta = protocol.metadata_from_dict(h.get("metadata") or {})
        token = h.get("token")
        limits = h.get("limits")
        interval = h.get("heartbeat_interval")
        if isinstance(interval, (int, float)) and 0 < interval <= 60:
            self._advertised_interval = float(interval)
        previous = self.session
        if self.robot.state_dim is None:
            # the hello left the state size to the policy: keep the one this session took, so a
            # reconnection (a restarted server) announces the size the robot's observations have
            taken = protocol.welcome_state_dim(h) or meta.state_dim
            self.robot = dataclasses.replace(self.robot, state_dim=taken)
        self.metadata = meta
        self.limits = dict(limits) if isinstance(limits, dict) else {}
        self._token = token if isinstance(token, str) and 0 < len(token) <= protocol.MAX_NAME_LEN else None
        self.session = str(h.get("session"))[:64]
        self._previous_session = previous
        self._refused = None
        self._waiting_reason = None
        port = protocol.welcome_session_port(h)
        if (
            port is not None
            and self._token is not None
            and self.endpoint.startswith("tcp://")
            and self._stay_public != self.session
        ):
            self._attach(f"{self.endpoint.rsplit(':', 1)[0]}:{port}")
            return
        self._now_connected()

    def _attach(self, endpoint: str) -> None:
        """Move to the session endpoint: a fresh connection there, the token as proof."""
        assert self._io is not None and self._token is not None
        self._switch_socket(endpoint)
        self.session_endpoint = endpoint
        self._attaching = time.perf_counter() + ATTACH_TIMEOUT_S
        header = protocol.simple_header(protocol.ATTACH, 0, token=self._token)
        with contextlib.suppress(zmq.Again):  # no answer in time says the same
            self._io.send(encode(header))

    def _attach_failed(self, reason: str) -> None:
        """Stay on the public endpoint for this server session; the hello's token keeps the session."""
        log.warning(
            "cannot use the session endpoint %s (%s): staying on %s",
            self.session_endpoint,
            reason,
            self.endpoint,
        )
        self._stay_public = self.session
        self._last_heard = time.perf_counter()  # the heartbeat timeout counts from the new hello
        self._back_to_public()
        self._send_hello()

    def _back_to_public(self) -> None:
        """A fresh connection to the public endpoint (for a hello) if the session endpoint was in use."""
        assert self._io is not None
        self._attaching = None
        if self.session_endpoint is not None:
            self.session_endpoint = None
            self._switch_socket()

    def _start_over(self, reason: str, report: bool = True) -> None:
        """The server lost this session: fail what is in flight, then a hello on a public connection."""
        self._lose(reason, report=report)
        self._back_to_public()
        self._send_hello()

    def _now_connected(self) -> None:
        meta = self.metadata
        assert meta is not None
        self._last_ping = time.perf_counter()
        self._connected.set()
        previous = self._previous_session
        detail = f"session {self.session}" + (f" (was {previous})" if previous else "")
        if self.session_endpoint is not None:
            detail += f", attached at {self.session_endpoint}"
        log.info("connected to %s: %s %s, %s", self.endpoint, meta.model, meta.backend, detail)
        self._events.append(("connected", detail))

    def _send_hello(self) -> None:
        assert self._io is not None
        self._last_hello = time.perf_counter()
        # zmq.Again: no connection yet; retried on the next timer tick
        hello = self.robot.to_header()
        if self._token is not None:
            hello["token"] = self._token  # the same robot reconnecting: take over its live session
        with contextlib.suppress(zmq.Again):
            self._io.send(encode(hello))

    def _lose(self, reason: str, report: bool = True) -> None:
        was = self.connected
        self._connected.clear()
        self._handshake_started = time.perf_counter()
        for item in self._inflight.values():
            self._done.append((item.future, None, ConnectionLost(reason)))
        self._inflight.clear()
        if was and report:
            self.heartbeats_lost += 1
            log.warning("lost the policy server at %s: %s", self.endpoint, reason)
            self._events.append(("lost", reason))

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
                error = RequestTimeout(f"no answer to {item.kind} seq {seq} in time")
                self._done.append((item.future, None, error))

    def _heartbeat(self, now: float) -> None:
        """Ping, detect silence, retry the handshake on a fresh socket when the link is lost."""
        assert self._io is not None
        if self._attaching is not None:
            # the attach has its own timeout; a heartbeat shorter than it must not restart the
            # handshake before the fallback to the public endpoint can happen
            if now >= self._attaching:
                self._attach_failed(f"no answer within {ATTACH_TIMEOUT_S:.1f} s")
            return
        if now - self._last_heard > self._hb_timeout():
            silent = now - self._last_heard
            self._lose(f"no message from the server for {silent:.1f} s")
            self._last_heard = now  # next check one timeout from now
            # a fresh socket: nothing queued on the dead link is delivered late
            self.session_endpoint = None
            self._switch_socket()
            self._send_hello()
            return
        if self.connected:
            if now - self._last_ping >= self._hb_interval():
                self._last_ping = now
                with contextlib.suppress(zmq.Again):  # a missing pong will tell
                    self._io.send(encode(protocol.simple_header(protocol.PING, 0)))
        elif now - self._last_hello >= (HELLO_RETRY_S if self._refused is None else REFUSED_RETRY_S):
            self._send_hello()


def _event_name(event: int) -> str:
    try:
        return zmq.Event(event).name
    except ValueError:
        return str(event)


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
    offset: int = 0,
    limit: int = protocol.STATS_PAGE,
) -> dict[str, Any]:
    """The server's stats (metrics, session summary, one page of sessions) over a throw-away
    monitor session: hello as a monitor, ask, say bye. The CLI's metrics reader."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 100  # lets the bye go out
    deadline = time.monotonic() + timeout

    def reply(kind: str) -> dict[str, Any]:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                raise RequestTimeout(f"no {kind} reply from {endpoint} within {timeout:.1f} s")
            msg = decode(sock.recv_multipart(), protocol.DEFAULT_MAX_MESSAGE_BYTES)
            if msg.type == protocol.ERROR:
                raise server_error(str(msg.header.get("code")), str(msg.header.get("message")))
            if msg.type == kind:
                return msg.header

    try:
        if server_key is not None:
            if client_key is None:
                raise auth.SecurityError("a CURVE server needs --client-key as well")
            auth.apply_client_curve(sock, auth.load_secret(client_key), auth.load_public(server_key))
        sock.connect(endpoint)
        sock.send_multipart(encode(protocol.monitor_hello()))
        reply(protocol.WELCOME)
        sock.send_multipart(encode(protocol.simple_header(protocol.STATS, 1, offset=offset, limit=limit)))
        stats = reply(protocol.STATS)
        sock.send_multipart(encode(protocol.simple_header(protocol.BYE)))
        return stats
    finally:
        sock.close()
        ctx.term()
