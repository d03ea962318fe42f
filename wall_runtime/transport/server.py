"""Policy server: one ZeroMQ ROUTER socket serving many robots, one inference worker.

Threads (leader/follower): two threads take turns. The leader waits on the socket, decodes and
validates every message, keeps per-robot sessions, runs the timers (max wait, deadlines, session
expiry) and forms batches. When a batch is due the leader hands leadership to the other thread and
runs ``policy.infer`` itself, outside the lock, then sends the replies itself. So a request reaches
the policy and its chunk leaves without any thread hand-off on its path, while the other thread
keeps answering pings, superseding and expiring requests during inference. Socket and session
state are touched only under one lock (``SharedSocket``).

Scheduling: each robot has at most one waiting observation; a newer one replaces it and the older
is answered ``superseded`` without being computed. A batch is taken when no batch is in compute
and either ``max_batch`` requests wait, every robot that observed within the last second has one
waiting, or the oldest has waited ``max_wait_ms``. A waiting request whose deadline passes is answered ``deadline_exceeded``
at that moment, never computed. A policy exception becomes a ``policy_error`` reply for the
batch's requests; the server keeps serving.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from wall_runtime.backends.base import Policy
from wall_runtime.transport import auth, protocol
from wall_runtime.transport.codec import Message, decode, encode
from wall_runtime.transport.errors import ErrorCode, ProtocolError
from wall_runtime.transport.metrics import BATCH_BUCKETS, MetricsHTTPServer, ServerMetrics
from wall_runtime.transport.shared_socket import SharedSocket
from wall_runtime.types import ActionChunk

log = logging.getLogger(__name__)

ACTIVE_WINDOW_S = 1.0  # a robot that observed this recently may be about to join a batch
PROMOTE_AFTER_MS = 2.0  # inference this slow gets the other thread doing I/O meanwhile


@dataclass
class ServerConfig:
    bind: str = "tcp://127.0.0.1:5555"
    max_batch: int = 8
    max_wait_ms: float = 2.0
    heartbeat_interval: float = 1.0  # what clients are told to ping at
    session_timeout: float = 10.0  # a robot silent this long is forgotten
    max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES
    server_key: str | Path | None = None  # .key_secret file: turns CURVE on
    allow_dir: str | Path | None = None  # folder of allowed client .key files
    insecure: bool = False  # permit a non-loopback bind without CURVE
    metrics_http: tuple[str, int] | None = None  # (host, port) for a Prometheus scrape


@dataclass
class Pending:
    """One accepted observe request waiting for (or in) compute."""

    identity: bytes
    request: protocol.ObserveRequest
    frames: list[Any]  # the received zmq frames: the observation's arrays are views on them
    received: float  # perf_counter at receipt
    deadline: float  # perf_counter
    decode_ms: float


@dataclass
class Session:
    identity: bytes
    robot: protocol.RobotDescription
    last_seen: float
    last_observe: float = float("-inf")  # perf_counter of its latest observe
    pending: Pending | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"observe": 0, "chunk": 0, "error": 0})


class PolicyServer:
    def __init__(self, policy: Policy, config: ServerConfig | None = None) -> None:
        self.policy = policy
        self.config = config or ServerConfig()
        self.metrics = ServerMetrics()
        self.session_id = secrets.token_hex(8)  # changes on every start: clients see restarts
        self.endpoint: str | None = None
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._sessions: dict[bytes, Session] = {}
        self._ready: OrderedDict[bytes, Pending] = OrderedDict()
        self._computing = False  # a batch is in policy.infer (one at a time)
        self._leader = threading.Condition()
        self._has_leader = False
        self._next_housekeeping = 0.0
        self._infer_ms_ema = float("inf")  # until measured, assume inference is slow
        self._io: SharedSocket  # set in _run: the ROUTER, shared by both threads under its lock
        cfg = self.config
        if cfg.max_batch < 1 or cfg.max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        if (cfg.server_key is None) != (cfg.allow_dir is None):
            raise auth.SecurityError("CURVE needs both a server secret key and an allow-list of client keys")
        auth.check_endpoint(cfg.bind, secure=cfg.server_key is not None, insecure=cfg.insecure)

    # ------------------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> str:
        """Serve on a background thread; return the bound endpoint (``tcp://host:*`` resolved)."""
        self._thread = threading.Thread(target=self._run, name="policy-server-io", daemon=True)
        self._thread.start()
        if not self._bound.wait(timeout):
            raise TimeoutError("server did not bind in time")
        if self._start_error is not None:
            raise self._start_error
        assert self.endpoint is not None
        return self.endpoint

    def wait_bound(self, timeout: float) -> str | None:
        """The bound endpoint once the socket is bound (None on timeout or a failed start)."""
        self._bound.wait(timeout)
        return self.endpoint

    def serve_forever(self) -> None:
        """Serve on the calling thread until ``stop()`` (the CLI wires SIGINT/SIGTERM to it)."""
        self._run()
        if self._start_error is not None:
            raise self._start_error

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> PolicyServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------------------------- run

    def _run(self) -> None:
        cfg = self.config
        ctx = zmq.Context()
        authenticator = None
        http = None
        sock = None
        try:
            sock = ctx.socket(zmq.ROUTER)
            sock.linger = 500
            sock.router_mandatory = True  # unroutable replies raise instead of vanishing silently
            sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
            sock.sndhwm = sock.rcvhwm = 64
            if cfg.server_key is not None:
                authenticator = auth.start_authenticator(ctx, cfg.allow_dir)  # type: ignore[arg-type]
                auth.apply_server_curve(sock, auth.load_secret(cfg.server_key))
            sock.bind(cfg.bind)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            if cfg.metrics_http is not None:
                http = MetricsHTTPServer(self.metrics, *cfg.metrics_http)
                self.metrics_port = http.port
        except BaseException as exc:
            self._start_error = exc
            self._bound.set()
            if sock is not None:
                sock.close(0)
            if authenticator is not None:
                authenticator.stop()
            ctx.term()
            return
        # libzmq drops some peers on its own (CURVE refusals, frames over MAXMSGSIZE, protocol
        # violations); its monitor events are the only place their reasons can be logged.
        monitor = sock.get_monitor_socket(
            zmq.EVENT_DISCONNECTED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        self._io = SharedSocket(sock)
        self._io.watch(monitor)
        follower = threading.Thread(target=self._member, args=(monitor,), name="policy-server-2", daemon=True)
        follower.start()
        log.info(
            "serving %s (%s, backend %s) on %s%s; batch<=%d, wait<=%.1f ms",
            self.policy.metadata.model,
            self.policy.metadata.variant,
            self.policy.metadata.backend,
            self.endpoint,
            " with CURVE" if cfg.server_key else "",
            cfg.max_batch,
            cfg.max_wait_ms,
        )
        self._bound.set()
        try:
            self._member(monitor)
        finally:
            follower.join(10.0)  # it finishes (and sends) the batch it may be computing
            sock.disable_monitor()
            monitor.close(0)
            self._shutdown()
            if http is not None:
                http.close()
            sock.close()
            self._io.close()
            if authenticator is not None:
                authenticator.stop()
            ctx.term()
            log.info("server stopped")

    def _log_peer_events(self, monitor: zmq.Socket) -> None:
        while monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            event = recv_monitor_message(monitor)
            kind = event["event"]
            reasons = {
                zmq.EVENT_HANDSHAKE_FAILED_AUTH: ("auth_refused", "refused by CURVE authentication"),
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: ("handshake_protocol", "broke the ZMTP/CURVE handshake"),
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: ("handshake_failed", "failed the handshake"),
                zmq.EVENT_DISCONNECTED: (
                    "disconnected",
                    "disconnected (closed, or dropped by libzmq for a frame over MAXMSGSIZE)",
                ),
            }
            label, text = reasons.get(kind, ("other", f"event {kind}"))
            self.metrics.inc("peer_events", event=label)
            level = logging.INFO if label == "disconnected" else logging.WARNING
            log.log(level, "connection on %s %s", event.get("endpoint", b"").decode(errors="replace"), text)

    def _member(self, monitor: zmq.Socket) -> None:
        """One of the two server threads: lead (do I/O) until a batch is due, then compute it."""
        try:
            self._take_turns(monitor)
        except BaseException:
            # A bug here must not leave a half-working server behind: stop, so a supervisor restarts it.
            log.exception("server thread failed; shutting down")
            self._stop.set()
            self._io.kick()
            raise

    def _take_turns(self, monitor: zmq.Socket) -> None:
        while not self._stop.is_set():
            with self._leader:
                while self._has_leader and not self._stop.is_set():
                    self._leader.wait(0.1)
                if self._stop.is_set():
                    return
                self._has_leader = True
            batch = None
            try:
                batch = self._lead(monitor)
            finally:
                with self._leader:
                    self._has_leader = False
                    # Waking the other thread costs a GIL hand-off right when inference starts, which
                    # on a loaded host can stall both for a scheduler slice. Only worth it when
                    # inference is slow enough that I/O (pings, superseding, deadlines) must go on
                    # meanwhile; otherwise it takes over by itself within its wait timeout.
                    if batch is None or self._infer_ms_ema >= PROMOTE_AFTER_MS:
                        self._leader.notify()
            if batch:
                self._compute_and_reply(batch)

    def _lead(self, monitor: zmq.Socket) -> list[Pending] | None:
        io = self._io
        while not self._stop.is_set():
            with io.lock:
                timeout_ms = self._poll_timeout_ms()
            io.wait(timeout_ms)
            with io.lock:
                self._log_peer_events(monitor)
                for frames in io.recv_ready(256):  # bounded so timers are not starved
                    self._handle(frames)
                now = time.perf_counter()
                self._expire_deadlines(now)
                if now >= self._next_housekeeping:
                    self._expire_sessions(now)
                    self.metrics.set_gauge("sessions", len(self._sessions))
                    self._next_housekeeping = now + 0.25
                batch = self._take_batch(now)
            if batch:
                return batch
        return None

    def _poll_timeout_ms(self) -> int:
        timeout = 100.0
        if self._ready:
            now = time.perf_counter()
            nearest = min(p.deadline for p in self._ready.values())
            timeout = min(timeout, (nearest - now) * 1000.0)
            if not self._computing:
                oldest = next(iter(self._ready.values()))
                timeout = min(timeout, (oldest.received + self.config.max_wait_ms / 1000.0 - now) * 1000.0)
        return max(0, int(np.ceil(timeout)))

    def _shutdown(self) -> None:
        with self._io.lock:
            for pending in list(self._ready.values()):
                self._reply_error(
                    pending.identity, ErrorCode.SHUTTING_DOWN, "server is shutting down", pending.request.seq
                )
                session = self._sessions.get(pending.identity)
                if session is not None:
                    session.pending = None
            self._ready.clear()

    # --------------------------------------------------------------------------- messages

    def _send(self, identity: bytes, frames: list[Any], kind: str) -> None:
        try:
            self._io.send([identity, *frames])
            self.metrics.inc("replies", type=kind)
        except zmq.Again:
            self.metrics.inc("dropped_replies", reason="peer_queue_full")
            log.warning("dropped %s reply: the peer's queue is full (it stopped reading)", kind)
        except zmq.ZMQError as exc:
            self.metrics.inc("dropped_replies", reason="unroutable")
            log.info("dropped %s reply: peer is gone (%s)", kind, exc)

    def _reply_error(self, identity: bytes, code: ErrorCode, message: str, seq: int | None) -> None:
        self.metrics.inc("errors", code=code.value)
        session = self._sessions.get(identity)
        if session is not None:
            session.counts["error"] += 1
        level = logging.DEBUG if code in (ErrorCode.SUPERSEDED, ErrorCode.NOT_REGISTERED) else logging.INFO
        log.log(level, "error reply to %s seq=%s: %s: %s", self._who(identity), seq, code.value, message)
        self._send(identity, encode(protocol.error_header(code, message, seq)), protocol.ERROR)

    def _who(self, identity: bytes) -> str:
        session = self._sessions.get(identity)
        return session.robot.robot_id if session else f"peer {identity.hex()}"

    def _handle(self, frames: list[zmq.Frame]) -> None:
        t0 = time.perf_counter()
        identity = frames[0].bytes
        body = frames[1:]
        header: dict[str, Any] = {}
        try:
            msg = decode(body, self.config.max_message_bytes)
            header = msg.header
            protocol.check_version(header)
            kind = header["type"]
            if kind not in protocol.CLIENT_TYPES:
                raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}")
            self.metrics.inc("requests", type=kind)
            if kind == protocol.HELLO:
                self._on_hello(identity, msg)
            elif kind == protocol.STATS:
                self._on_stats(identity, msg)
            else:
                session = self._sessions.get(identity)
                if session is None:
                    raise ProtocolError(
                        ErrorCode.NOT_REGISTERED, "no hello from this connection (did the server restart?)"
                    )
                session.last_seen = time.perf_counter()
                if kind == protocol.OBSERVE:
                    self._on_observe(session, msg, body, t0)
                elif kind == protocol.PING:
                    seq = protocol.seq_of(header)
                    pong = protocol.simple_header(protocol.PONG, seq, session=self.session_id)
                    self._send(identity, encode(pong), protocol.PONG)
                elif kind == protocol.RESET:
                    self._on_reset(session, msg)
                elif kind == protocol.BYE:
                    self._drop_session(identity, "said bye")
        except ProtocolError as exc:
            if exc.code == ErrorCode.TOO_LARGE or not header:
                self.metrics.inc("requests", type="invalid")
            self._reply_error(identity, ErrorCode(exc.code), exc.message, protocol.seq_of(header))

    def _on_hello(self, identity: bytes, msg: Message) -> None:
        robot = protocol.RobotDescription.from_header(msg.header)
        meta = self.policy.metadata
        robot.check_fits(meta)
        if robot.expected_bytes(meta) > self.config.max_message_bytes:
            raise ProtocolError(
                ErrorCode.BAD_HELLO,
                f"this robot's observations exceed the server's {self.config.max_message_bytes}-byte limit",
            )
        for other_id, other in list(self._sessions.items()):
            if other.robot.robot_id == robot.robot_id and other_id != identity:
                self._drop_session(other_id, "replaced by a new connection with the same robot_id")
        previous = self._sessions.get(identity)
        if previous is not None and previous.pending is not None:
            self._ready.pop(identity, None)
        self._sessions[identity] = Session(identity=identity, robot=robot, last_seen=time.perf_counter())
        log.info(
            "robot %s (%s) connected: cameras %s, state %d, dt %.4f s",
            robot.robot_id,
            robot.embodiment,
            {k: list(v) for k, v in robot.cameras.items()},
            robot.state_dim,
            robot.action_period,
        )
        welcome = protocol.welcome_header(
            self.session_id, meta, self.config.heartbeat_interval, self.config.max_message_bytes
        )
        self._send(identity, encode(welcome), protocol.WELCOME)

    def _on_stats(self, identity: bytes, msg: Message) -> None:
        sessions = [
            {"robot_id": s.robot.robot_id, "embodiment": s.robot.embodiment, **s.counts}
            for s in self._sessions.values()
        ]
        reply = protocol.simple_header(
            protocol.STATS,
            protocol.seq_of(msg.header),
            session=self.session_id,
            metadata=self.policy.metadata.to_dict(),
            metrics=self.metrics.snapshot(),
            sessions=sessions,
        )
        self._send(identity, encode(reply), protocol.STATS)

    def _on_observe(self, session: Session, msg: Message, frames: list[Any], t0: float) -> None:
        request = protocol.decode_observe(msg, session.robot, self.policy.metadata)
        session.counts["observe"] += 1
        session.last_observe = t0
        now = time.perf_counter()
        if request.deadline_ms <= 0:
            raise ProtocolError(
                ErrorCode.DEADLINE_EXCEEDED, f"deadline already passed ({request.deadline_ms} ms)"
            )
        pending = Pending(
            identity=session.identity,
            request=request,
            frames=frames,
            received=t0,
            deadline=t0 + request.deadline_ms / 1000.0,
            decode_ms=(now - t0) * 1000.0,
        )
        self.metrics.observe("decode_ms", pending.decode_ms)
        older = session.pending
        if older is not None:
            self._ready.pop(session.identity, None)
            self.metrics.inc("superseded")
            self._reply_error(
                session.identity,
                ErrorCode.SUPERSEDED,
                f"seq {older.request.seq} replaced by seq {request.seq} before compute",
                older.request.seq,
            )
        session.pending = pending
        self._ready[session.identity] = pending

    def _on_reset(self, session: Session, msg: Message) -> None:
        seq = protocol.seq_of(msg.header)
        if session.pending is not None:
            older = session.pending
            self._ready.pop(session.identity, None)
            session.pending = None
            self._reply_error(session.identity, ErrorCode.SUPERSEDED, "cancelled by reset", older.request.seq)
        self._send(session.identity, encode(protocol.simple_header(protocol.ACK, seq)), protocol.ACK)

    def _drop_session(self, identity: bytes, reason: str) -> None:
        session = self._sessions.pop(identity, None)
        self._ready.pop(identity, None)
        if session is not None:
            log.info("robot %s disconnected: %s", session.robot.robot_id, reason)

    def _expire_sessions(self, now: float) -> None:
        for identity, session in list(self._sessions.items()):
            if now - session.last_seen > self.config.session_timeout and session.pending is None:
                self._drop_session(identity, f"silent for {now - session.last_seen:.1f} s (no heartbeat)")

    # --------------------------------------------------------------------------- batching

    def _expire_deadlines(self, now: float) -> None:
        for identity, pending in list(self._ready.items()):
            if pending.deadline <= now:
                del self._ready[identity]
                session = self._sessions.get(identity)
                if session is not None:
                    session.pending = None
                self._reply_error(
                    identity,
                    ErrorCode.DEADLINE_EXCEEDED,
                    f"deadline of {pending.request.deadline_ms:.1f} ms passed after "
                    f"{(now - pending.received) * 1000:.1f} ms in the queue; not computed",
                    pending.request.seq,
                )

    def _take_batch(self, now: float) -> list[Pending] | None:
        if self._computing or not self._ready or self._stop.is_set():
            return None
        oldest = next(iter(self._ready.values()))
        full = len(self._ready) >= self.config.max_batch
        # Robots that connected but are not observing (between episodes, just pinging) must not
        # hold a lone request back for max_wait: wait only for robots observing lately.
        active = sum(1 for s in self._sessions.values() if now - s.last_observe < ACTIVE_WINDOW_S)
        everyone = len(self._ready) >= active
        waited = now - oldest.received >= self.config.max_wait_ms / 1000.0
        if not (full or everyone or waited):
            return None
        batch = [
            self._ready.popitem(last=False)[1] for _ in range(min(self.config.max_batch, len(self._ready)))
        ]
        for pending in batch:
            session = self._sessions.get(pending.identity)
            if session is not None:
                session.pending = None
            self.metrics.observe("queue_wait_ms", (now - pending.received) * 1000.0)
        self._computing = True
        return batch

    # ---------------------------------------------------------------------------- compute

    def _compute_and_reply(self, batch: list[Pending]) -> None:
        replies = self._compute(batch)  # outside the lock: the leader keeps serving meanwhile
        with self._io.lock:
            for identity, frames, kind in replies:
                session = self._sessions.get(identity)
                if session is not None:
                    session.counts["chunk" if kind == protocol.CHUNK else "error"] += 1
                self._send(identity, frames, kind)
            self._computing = False
            if self._ready:
                self._io.kick()  # the leader may take the next batch now

    def _compute(self, batch: list[Pending]) -> list[tuple[bytes, list[Any], str]]:
        observations = [p.request.observation for p in batch]
        t0 = time.perf_counter()
        try:
            results = self.policy.infer(observations)
            if len(results) != len(batch):
                raise RuntimeError(f"policy returned {len(results)} results for {len(batch)} observations")
        except Exception as exc:
            log.exception("policy failed on a batch of %d", len(batch))
            self.metrics.inc("policy_failures")
            message = f"policy raised {type(exc).__name__}: {exc}"
            return [
                (p.identity, self._error_frames(ErrorCode.POLICY_ERROR, message, p), protocol.ERROR)
                for p in batch
            ]
        infer_ms = (time.perf_counter() - t0) * 1000.0
        ema = self._infer_ms_ema
        self._infer_ms_ema = infer_ms if ema == float("inf") else 0.8 * ema + 0.2 * infer_ms
        self.metrics.observe("infer_ms", infer_ms)
        self.metrics.observe("batch_size", len(batch), buckets=BATCH_BUCKETS)
        meta = self.policy.metadata
        replies = []
        for pending, result in zip(batch, results, strict=True):
            actions = np.asarray(result.actions)
            if actions.shape != (meta.action_horizon, meta.action_dim) or not np.isfinite(actions).all():
                message = (
                    f"policy returned unusable actions: shape {list(actions.shape)}, "
                    f"finite={bool(np.isfinite(actions).all())}"
                )
                log.error("%s (robot %s)", message, self._who(pending.identity))
                replies.append(
                    (
                        pending.identity,
                        self._error_frames(ErrorCode.POLICY_ERROR, message, pending),
                        protocol.ERROR,
                    )
                )
                continue
            session = self._sessions.get(pending.identity)
            dt = session.robot.action_period if session is not None else 0.0
            t_send = time.perf_counter()
            timing = {f"policy_{k}": float(v) for k, v in result.timing_ms.items()}
            timing.update(
                server_decode=pending.decode_ms,
                server_queue=(t0 - pending.received) * 1000.0,
                server_infer=infer_ms,
                server_total=(t_send - pending.received) * 1000.0,
            )
            chunk = ActionChunk(
                actions=actions.astype(np.float32, copy=False),
                stamp=pending.request.observation.stamp,
                dt=dt,
                seq=pending.request.seq,
                timing_ms=timing,
            )
            replies.append((pending.identity, protocol.encode_chunk(chunk), protocol.CHUNK))
            self.metrics.observe("server_total_ms", timing["server_total"])
        return replies

    def _error_frames(self, code: ErrorCode, message: str, pending: Pending) -> list[Any]:
        self.metrics.inc("errors", code=code.value)
        return encode(protocol.error_header(code, message, pending.request.seq))
