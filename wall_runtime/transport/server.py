"""Policy server: ZeroMQ ROUTER sockets (a public endpoint, a session endpoint) serving many robots, one inference worker.

Threads (leader/follower): two threads take turns. The leader waits on the socket, decodes and
validates every message, keeps per-robot sessions, runs the timers (max wait, deadlines, session
expiry) and forms batches. When a batch is due the leader hands leadership to the other thread and
runs ``policy.infer`` itself, outside the lock, then sends the replies itself. So a request reaches
the policy and its chunk leaves without any thread hand-off on its path, while the other thread
keeps answering pings, superseding and expiring requests during inference. Socket and session
state are touched only under one lock (``SharedSocket``).

Scheduling lives in ``queue.RequestQueue`` (sessions, newest-wins, deadlines, batching; no
sockets); this module is the ZeroMQ shell around it.

Isolation: no message ends the server. Every decode path raises ``ProtocolError``; any other
exception while handling one message is logged and answered ``bad_message`` to that peer alone.
Each observation is checked against what the policy accepts (``policy.input_check``: camera sizes
at hello, prompt length per request) before it can join a batch. A batch whose ``infer`` raises is
retried member by member, so only the robot whose input fails gets the ``policy_error``; a chunk
that is not finite is an error reply, never a chunk. Only a bug in the server's own loop is fatal:
the server then stops and ``serve_forever`` raises, so ``wall-runtime serve`` exits non-zero.

Two endpoints (``session_port``): strangers connect, hello and are welcomed on the public
endpoint; a welcomed robot then attaches to a second, session endpoint with its session token and
sends everything else there. The two ROUTERs live in separate libzmq contexts: the public one's I/O
threads run at the lowest scheduling priority (``handshake_io_priority``), the session one's single
I/O thread at the normal one, so a flood of thousands of connects and hellos queues neither ahead of
a known robot's frames in libzmq nor ahead of its threads on a CPU. A robot that cannot reach the
session endpoint stays on the public one, served as before.

Resources: sessions (``max_sessions``), connections (``max_connections``) and connections per peer
address (``max_connections_per_address``) are capped (``peers``); under a flood, connection events
are read on a timer in batches and hellos get a bounded share of the time;
``stats`` needs a hello and lists sessions a page at a time; connect/disconnect lines go to DEBUG
with a periodic INFO summary; with CURVE the allow-list is re-read when its folder changes (and
on ``reload_allow_list``, which ``serve`` wires to SIGHUP).
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from wall_runtime.backends.base import Policy
from wall_runtime.transport import auth, protocol
from wall_runtime.transport.batching import infer_isolating
from wall_runtime.transport.codec import MAX_HEADER_BYTES, Message, decode, encode, pack_header
from wall_runtime.transport.errors import ErrorCode, ProtocolError
from wall_runtime.transport.metrics import BATCH_BUCKETS, MetricsHTTPServer, ServerMetrics
from wall_runtime.transport.peers import LogSummary, PeerTracker
from wall_runtime.transport.queue import Dropped, Pending, RequestQueue, Session
from wall_runtime.transport.shared_socket import SharedSocket
from wall_runtime.types import ActionChunk

log = logging.getLogger(__name__)

PROMOTE_AFTER_MS = 2.0  # inference this slow gets the other thread doing I/O meanwhile
ALLOW_LIST_CHECK_S = 1.0  # how often the allow-list folder is checked for changes
MONITOR_EVENTS_PER_TURN = 256  # connection events handled between two looks at robots' messages
MONITOR_BUSY_EVENTS = 16  # this many events in one turn: a flood; read them on a timer, not on arrival
MONITOR_BATCH_S = 0.005  # the timer: each wake-up costs context switches, so a flood's events batch
STRANGER_BACKLOG = 8192  # messages from peers without a session (hellos) waiting to be handled
CHORES_MAX_DEFER_S = 0.01  # a run of batches defers hellos and connection events this long at most
STRANGER_BUDGET_S = 0.002  # time spent on them per turn of the loop, between sessions' messages
STRANGER_SHARE = 0.25  # at most this share of the time: their replies and handshakes load libzmq's
# I/O threads, which carry the robots' chunks too, so a burst of hellos is answered over a few
# hundred milliseconds instead of all at once
MONITOR_EVENT = struct.Struct("=HI")  # a monitor event's first frame: event id, value (an fd, errno)
# Internal identities of the session socket's peers. libzmq's own routing ids are 5 bytes; a public
# peer that chooses its own (ZMQ_ROUTING_ID) one of this form is refused, so none can pass for a
# session-socket peer.
SESSION_PREFIX = b"\x00session:"
SESSION_STRANGER_BACKLOG = 1024  # messages from unattached session-socket peers (attaches) waiting
IO_PRIORITIES = ("idle", "batch", "normal")

__all__ = ["Pending", "PolicyServer", "ServerConfig", "Session"]


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
    max_sessions: int = 1024  # robots + monitors that said hello
    max_connections: int = 4096  # open TCP connections (also kept under the fd limit)
    io_threads: int = 2  # libzmq I/O threads: a connection flood's handshakes share them with robots
    max_connections_per_address: int = 256  # open TCP connections from one peer address (0: no limit)
    # Welcomed robots move to a second endpoint on the same host, this port (0: any free one; None:
    # no session endpoint, every robot stays on the public one). TCP binds only.
    session_port: int | None = 0
    # Scheduling of the public endpoint's libzmq I/O threads, which carry the handshakes and hellos
    # of strangers only once robots have their own endpoint: "idle" (Linux SCHED_IDLE: they run
    # when no other thread wants the CPU), "batch" (SCHED_BATCH) or "normal".
    handshake_io_priority: str = "idle"


class PolicyServer:
    def __init__(self, policy: Policy, config: ServerConfig | None = None) -> None:
        self.policy = policy
        self.config = config or ServerConfig()
        self.metrics = ServerMetrics()
        self.session_id = secrets.token_hex(8)  # changes on every start: clients see restarts
        self.endpoint: str | None = None
        self.session_endpoint: str | None = None  # where welcomed robots attach (None: they stay)
        self.metrics_port: int | None = None
        self.failure: BaseException | None = None  # what stopped a server thread, if anything did
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        cfg = self.config
        if cfg.max_batch < 1 or cfg.max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        parse_io_priority(cfg.handshake_io_priority)  # ValueError naming the choices
        if cfg.session_port is not None and not 0 <= cfg.session_port < 65536:
            raise ValueError(f"session_port must be in [0, 65535] (0: any free port), got {cfg.session_port}")
        if cfg.max_sessions < 1 or cfg.max_connections < 1 or cfg.max_connections_per_address < 0:
            raise ValueError(
                "max_sessions and max_connections must be >= 1, max_connections_per_address >= 0"
            )
        self.queue = RequestQueue(
            max_batch=cfg.max_batch,
            max_wait_s=cfg.max_wait_ms / 1000.0,
            session_timeout=cfg.session_timeout,
            max_sessions=cfg.max_sessions,
        )
        self._leader = threading.Condition()
        self._has_leader = False
        self._next_housekeeping = 0.0
        self._chores_done = 0.0  # perf_counter when the backlog and connection events were last served
        self._next_allow_check = 0.0
        self._reload_requested = threading.Event()
        self._infer_ms_ema = float("inf")  # until measured, assume inference is slow
        self._io: SharedSocket  # set in _run: the ROUTER, shared by both threads under its lock
        self._session_sock: zmq.Socket | None = None  # the session endpoint's ROUTER (same lock)
        self._peers: PeerTracker | None = None
        self._monitor: zmq.Socket | None = None  # the ROUTER's connection events (the leader reads them)
        self._monitor_muted = False  # under a flood: read on a timer, without waking on each event
        self._monitor_next = 0.0  # perf_counter of the next timed read
        self._robots_log = LogSummary("robot sessions")
        self._refusals_log = LogSummary("refused messages", info_budget=10)
        self._welcome: dict[str, Any] | None = None
        self._strangers = StrangerBacklog(STRANGER_BACKLOG, self._handle)  # hellos on the public endpoint
        self._session_strangers = StrangerBacklog(  # attaches (or a flood) on the session endpoint
            SESSION_STRANGER_BACKLOG, lambda frames: self._handle(frames, SESSION_PREFIX + frames[0].bytes)
        )
        self._limits = policy.input_check.to_dict() if policy.input_check is not None else {}
        if (cfg.server_key is None) != (cfg.allow_dir is None):
            raise auth.SecurityError("CURVE needs both a server secret key and an allow-list of client keys")
        auth.check_endpoint(cfg.bind, secure=cfg.server_key is not None, insecure=cfg.insecure)
        self.allow_list = auth.AllowList(cfg.allow_dir) if cfg.allow_dir is not None else None

    # ------------------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> str:
        """Serve on a background thread; return the bound endpoint (``tcp://host:*`` resolved).
        Starting a started server returns its endpoint (one I/O thread owns the socket)."""
        if self._thread is not None:
            return self.wait_bound(timeout) or ""
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
        """Serve on the calling thread until ``stop()`` (the CLI wires SIGINT/SIGTERM to it).
        Raises if the server could not start or stopped because a server thread failed."""
        self._run()
        if self._start_error is not None:
            raise self._start_error
        if self.failure is not None:
            raise RuntimeError(f"server failed: {type(self.failure).__name__}: {self.failure}")

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def reload_allow_list(self) -> None:
        """Re-read the CURVE allow-list on the server thread (safe from a signal handler)."""
        self._reload_requested.set()
        if hasattr(self, "_io"):
            self._io.kick()

    def __enter__(self) -> PolicyServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------------------------- run

    def _router(self, ctx: zmq.Context, authenticators: list[Any]) -> zmq.Socket:
        """A ROUTER with the server's options (CURVE with its own ZAP handler per context)."""
        cfg = self.config
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 500
        sock.router_mandatory = True  # unroutable replies raise instead of vanishing silently
        sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
        sock.sndhwm = sock.rcvhwm = 64
        if cfg.server_key is not None:
            assert self.allow_list is not None
            authenticators.append(auth.start_authenticator(ctx, self.allow_list))
            auth.apply_server_curve(sock, auth.load_secret(cfg.server_key))
        return sock

    def _bind_session_endpoint(self, authenticators: list[Any]) -> zmq.Context | None:
        """The session endpoint beside a TCP public one: its own context and I/O thread."""
        cfg = self.config
        assert self.endpoint is not None
        if cfg.session_port is None or not self.endpoint.startswith("tcp://"):
            return None
        ctx = zmq.Context(io_threads=1)
        sock = self._router(ctx, authenticators)
        self._session_sock = sock
        host = self.endpoint.rsplit(":", 1)[0]
        sock.bind(f"{host}:{cfg.session_port or '*'}")
        self.session_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return ctx

    def _run(self) -> None:
        cfg = self.config
        ctx = zmq.Context(io_threads=max(1, self.config.io_threads))
        session_ctx = None
        authenticators: list[Any] = []
        http = None
        sock = None
        try:
            if cfg.session_port is not None and cfg.bind.startswith("tcp://"):
                # before the first socket starts the context's threads
                _set_io_priority(ctx, cfg.handshake_io_priority)
            sock = self._router(ctx, authenticators)
            sock.bind(cfg.bind)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            session_ctx = self._bind_session_endpoint(authenticators)
            if cfg.metrics_http is not None:
                http = MetricsHTTPServer(self.metrics, *cfg.metrics_http)
                self.metrics_port = http.port
        except BaseException as exc:
            self._start_error = exc
            self._bound.set()
            for s in (sock, self._session_sock):
                if s is not None:
                    s.close(0)
            for authenticator in authenticators:
                authenticator.stop()
            for c in (ctx, session_ctx):
                if c is not None:
                    c.term()
            return
        port = None
        if self.endpoint.startswith("tcp://"):
            tail = self.endpoint.rsplit(":", 1)[-1]
            port = int(tail) if tail.isdigit() else None
        self._peers = PeerTracker(cfg.max_connections, port, cfg.max_connections_per_address or None)
        # libzmq accepts and drops peers on its own (CURVE refusals, frames over MAXMSGSIZE,
        # protocol violations); its monitor events are the only place to count, cap and log them.
        # Each event costs the server thread a few microseconds under a connect flood, so only
        # those that are acted on: peers that hang up mid-handshake show up as disconnects.
        events = zmq.EVENT_ACCEPTED | zmq.EVENT_ACCEPT_FAILED | zmq.EVENT_DISCONNECTED
        if cfg.server_key is not None:
            events |= zmq.EVENT_HANDSHAKE_FAILED_AUTH
        # The monitor is an inproc PAIR that libzmq's I/O threads write with a blocking send: at
        # its high-water mark they would stall (every robot's traffic with them) until this thread
        # reads, and stopping the monitor would hang. An unlimited receive side prevents both.
        monitor_addr = f"inproc://wall-runtime-monitor-{secrets.token_hex(8)}"
        sock.monitor(monitor_addr, events)
        monitor = ctx.socket(zmq.PAIR)
        monitor.rcvhwm = 0
        monitor.linger = 0
        monitor.connect(monitor_addr)
        self._monitor = monitor
        self._io = SharedSocket(sock)
        self._io.watch(monitor)
        if self._session_sock is not None:
            self._io.add(self._session_sock)
        follower = threading.Thread(target=self._member, args=(monitor,), name="policy-server-2", daemon=True)
        follower.start()
        log.info(
            "serving %s (%s, backend %s) on %s%s%s; batch<=%d, wait<=%.1f ms, sessions<=%d, connections<=%d",
            self.policy.metadata.model,
            self.policy.metadata.variant,
            self.policy.metadata.backend,
            self.endpoint,
            f" (robots' sessions on {self.session_endpoint})" if self.session_endpoint else "",
            " with CURVE" if cfg.server_key else "",
            cfg.max_batch,
            cfg.max_wait_ms,
            cfg.max_sessions,
            self._peers.cap,
        )
        self._bound.set()
        try:
            self._member(monitor)
        finally:
            follower.join(10.0)  # it finishes (and sends) the batch it may be computing
            sock.disable_monitor()
            self._monitor = None
            monitor.close(0)
            self._shutdown()
            if http is not None:
                http.close()
            sock.close()
            if self._session_sock is not None:
                self._session_sock.close()
            self._io.close()
            for authenticator in authenticators:
                authenticator.stop()
            ctx.term()
            if session_ctx is not None:
                session_ctx.term()
            log.info("server stopped")

    def _peer_events_turn(self, monitor: zmq.Socket, now: float) -> None:
        """Connection events, read as they come while few; under a flood on a timer, in batches:
        waking the server thread for every connect and disconnect costs the robots more than it
        costs to enforce the caps a few milliseconds later."""
        if self._monitor_muted and now < self._monitor_next:
            return
        count, drained = self._log_peer_events(monitor)
        if count >= MONITOR_BUSY_EVENTS or not drained:
            if not self._monitor_muted:
                self._io.mute(monitor)
                self._monitor_muted = True
            self._monitor_next = now + MONITOR_BATCH_S
        elif self._monitor_muted:
            self._io.unmute(monitor)  # read until zmq.Again just now: the next event wakes the thread
            self._monitor_muted = False

    def _log_peer_events(self, monitor: zmq.Socket) -> tuple[int, bool]:
        """Connection events since the last turn: the cap, the per-address limit, counters.

        A connect flood brings two events per peer, so this is the server thread's per-peer cost:
        events are read raw (``recv_multipart`` and one ``struct`` unpack, about a quarter of
        pyzmq's ``recv_monitor_message``) and counted per batch, not per event."""
        peers = self._peers
        assert peers is not None
        counts: dict[str, int] = {}
        drained = False
        read = 0
        for _ in range(MONITOR_EVENTS_PER_TURN):  # a flood of events must not starve robots' messages
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                drained = True
                break
            read += 1
            try:
                kind, value = MONITOR_EVENT.unpack(frames[0])
            except (struct.error, IndexError):  # a malformed event must not stop the server
                log.debug("unreadable monitor event: %r", frames[:1])
                continue
            if kind == zmq.EVENT_ACCEPTED:
                peers.accepted(value)
                continue
            if kind == zmq.EVENT_DISCONNECTED:
                peers.disconnected(value)
                label = "disconnected"
            elif kind == zmq.EVENT_ACCEPT_FAILED:
                peers.accept_failed(value)
                label = "accept_failed"
            else:
                label, text = {
                    zmq.EVENT_HANDSHAKE_FAILED_AUTH: ("auth_refused", "refused by CURVE authentication"),
                    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: (
                        "handshake_protocol",
                        "broke the ZMTP/CURVE handshake",
                    ),
                    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: ("handshake_failed", "failed the handshake"),
                }.get(kind, ("other", f"event {kind}"))
                # Peers hanging up mid-handshake are a flood's normal noise: DEBUG and the periodic
                # summary. The ZAP handler logs refused CURVE peers by address and key.
                peers.summary.note(label, "a connection %s", text)
            counts[label] = counts.get(label, 0) + 1
        for label, n in counts.items():
            self.metrics.inc("peer_events", n, event=label)
        return read, drained

    def _member(self, monitor: zmq.Socket) -> None:
        """One of the two server threads: lead (do I/O) until a batch is due, then compute it."""
        try:
            self._take_turns(monitor)
        except BaseException as exc:
            # A bug here must not leave a half-working server behind: stop, so a supervisor restarts
            # it (``serve_forever`` raises, ``serve`` exits non-zero).
            log.exception("server thread failed; shutting down")
            if self.failure is None:
                self.failure = exc
            self._stop.set()
            self._io.kick()

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
        queue = self.queue
        while not self._stop.is_set():
            with io.lock:
                now = time.perf_counter()
                timeout = queue.next_timeout(now)
                if self._monitor_muted:
                    timeout = min(timeout, self._monitor_next - now)
                for backlog in (self._strangers, self._session_strangers):
                    if backlog.items:
                        timeout = min(timeout, backlog.next - now)
                timeout_ms = max(0, int(np.ceil(timeout * 1000.0)))
            io.wait(timeout_ms)
            with io.lock:
                # Receiving is cheap, handling a hello is not. Sessions' messages (pings, observes)
                # are handled at once and a due batch goes to compute before anything else; other
                # peers' messages wait in a bounded backlog worked off within a time budget and a
                # share of the time, after the connection events, so a flood delays no robot's pong
                # or chunk.
                if self._session_sock is not None:  # known robots first
                    for frames in io.recv_ready(1024, self._session_sock):
                        identity = SESSION_PREFIX + frames[0].bytes
                        if identity in queue.sessions:
                            self._handle(frames, identity)
                        else:
                            self._defer_session_stranger(frames)
                for frames in io.recv_ready(1024):  # bounded so timers are not starved
                    identity = frames[0].bytes
                    if identity.startswith(SESSION_PREFIX):  # a public peer posing as a session-socket one
                        self.metrics.inc("dropped_requests", reason="reserved_identity")
                    elif identity in queue.sessions:
                        self._handle(frames)
                    else:
                        self._defer(frames)
                batch = self._due_batch()
                now = time.perf_counter()
                if batch is None or now - self._chores_done > CHORES_MAX_DEFER_S:
                    # connection events first: a hello is judged with its connection's accept seen
                    self._peer_events_turn(monitor, now)
                    self._session_strangers.work_off()
                    self._strangers.work_off()
                    if now >= self._next_housekeeping:
                        self._housekeeping(now)
                    self._chores_done = time.perf_counter()
                    batch = batch or self._due_batch()
            if batch:
                return batch
        return None

    def _due_batch(self) -> list[Pending] | None:
        now = time.perf_counter()
        for dropped in self.queue.expire_deadlines(now):
            self._reply_dropped(dropped)
        batch = None if self._stop.is_set() else self.queue.take_batch(now)
        for pending in batch or ():
            self.metrics.observe("queue_wait_ms", (now - pending.received) * 1000.0)
        if batch and self._io.any_readable():
            self._io.kick()  # the backlog and events left for this turn are the next turn's
        return batch

    def _housekeeping(self, now: float) -> None:
        for session in self.queue.expire_sessions(now):
            self._session_closed(session, f"silent for {now - session.last_seen:.1f} s (no heartbeat)")
        self.metrics.set_gauge("sessions", len(self.queue.sessions))
        self.metrics.set_gauge("sessions_attached", self.queue.attached)
        if self._peers is not None:
            self.metrics.set_gauge("connections", len(self._peers.live))
            self.metrics.set_gauge("connections_shed", self._peers.shed)  # since start
            self.metrics.set_gauge(
                "connections_refused_per_address", self._peers.refused_total
            )  # since start
            self._peers.expire_refused()
            self._peers.summary.flush()
        self._robots_log.flush()
        self._refusals_log.flush()
        self._next_housekeeping = now + 0.25
        if self.allow_list is not None and (self._reload_requested.is_set() or now >= self._next_allow_check):
            forced = self._reload_requested.is_set()
            self._reload_requested.clear()
            self._next_allow_check = now + ALLOW_LIST_CHECK_S
            self.allow_list.reload(force=forced)
            for session in list(self.queue.sessions.values()):
                if session.key is not None and not self.allow_list.allowed(session.key):
                    self.queue.drop(session.identity)
                    self._session_closed(
                        session, "its CURVE key was removed from the allow-list", ErrorCode.UNAUTHORIZED
                    )

    def _shutdown(self) -> None:
        with self._io.lock:
            for pending in self.queue.drain():
                self._reply_error(
                    pending.identity, ErrorCode.SHUTTING_DOWN, "server is shutting down", pending.request.seq
                )

    # --------------------------------------------------------------------------- messages

    def _send(self, identity: bytes, frames: list[Any], kind: str) -> None:
        try:
            if identity.startswith(SESSION_PREFIX) and self._session_sock is not None:
                self._io.send([identity[len(SESSION_PREFIX) :], *frames], self._session_sock)
            else:
                self._io.send([identity, *frames])
            self.metrics.inc("replies", type=kind)
        except zmq.Again:
            self.metrics.inc("dropped_replies", reason="peer_queue_full")
            self._refusals_log.note("reply_dropped", "dropped %s reply: the peer's queue is full", kind)
        except zmq.ZMQError as exc:
            self.metrics.inc("dropped_replies", reason="unroutable")
            self._refusals_log.note("reply_dropped", "dropped %s reply: peer is gone (%s)", kind, exc)

    def _reply_error(self, identity: bytes, code: ErrorCode, message: str, seq: int | None) -> None:
        self.metrics.inc("errors", code=code.value)
        session = self.queue.sessions.get(identity)
        if session is not None:
            session.counts["error"] += 1
        quiet = code in (ErrorCode.SUPERSEDED, ErrorCode.NOT_REGISTERED, ErrorCode.DEADLINE_EXCEEDED)
        self._refusals_log.note(
            code.value,
            "error reply to %s seq=%s: %s: %s",
            self._who(identity),
            seq,
            code.value,
            message,
            level=logging.DEBUG if quiet else logging.INFO,
        )
        self._send(identity, encode(protocol.error_header(code, message, seq)), protocol.ERROR)

    def _reply_dropped(self, dropped: Dropped) -> None:
        if dropped.code == ErrorCode.SUPERSEDED:
            self.metrics.inc("superseded")
        p = dropped.pending
        self._reply_error(p.identity, dropped.code, dropped.message, p.request.seq)

    def _who(self, identity: bytes) -> str:
        session = self.queue.sessions.get(identity)
        return session.name if session else f"peer {identity.hex()}"

    def _handle(self, frames: list[zmq.Frame], identity: bytes | None = None) -> None:
        """One message from one peer (``identity``: its internal one, by default its routing id);
        whatever it holds, the server goes on serving."""
        t0 = time.perf_counter()
        identity = frames[0].bytes if identity is None else identity
        body = frames[1:]
        header: dict[str, Any] = {}
        try:
            refusal = self._refusal(identity, body)
            msg = decode(body, self.config.max_message_bytes)
            header = msg.header
            if refusal is not None:
                raise ProtocolError(ErrorCode.OVERLOADED, refusal)
            self._dispatch(identity, msg, body, t0)
        except ProtocolError as exc:
            if exc.code == ErrorCode.TOO_LARGE or not header:
                self.metrics.inc("requests", type="invalid")
            code = exc.code if isinstance(exc.code, ErrorCode) else ErrorCode.BAD_MESSAGE
            self._reply_error(identity, code, exc.message, protocol.seq_of(header))
        except Exception as exc:  # a bug on one message's path: answer that peer, keep serving
            log.exception("failed to handle a message from %s", self._who(identity))
            self.metrics.inc("handler_failures")
            self._reply_error(
                identity,
                ErrorCode.BAD_MESSAGE,
                f"the server could not handle this message ({type(exc).__name__})",
                protocol.seq_of(header),
            )

    def _defer(self, frames: list[zmq.Frame]) -> None:
        if not self._strangers.add(frames):
            self.metrics.inc("dropped_requests", reason="backlog_full")
            self._refusals_log.note(
                "backlog_full", "dropped a message from a peer without a session: backlog full"
            )

    def _defer_session_stranger(self, frames: list[zmq.Frame]) -> None:
        if not self._session_strangers.add(frames):
            self.metrics.inc("dropped_requests", reason="session_backlog_full")

    def _dispatch(self, identity: bytes, msg: Message, body: list[Any], t0: float) -> None:
        header = msg.header
        protocol.check_version(header)
        kind = header["type"]
        if kind not in protocol.CLIENT_TYPES:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}")
        self.metrics.inc("requests", type=kind)
        user = self._user_id(body)
        if self.allow_list is not None and not self.allow_list.allowed(user):
            session = self.queue.drop(identity)
            if session is not None:
                self._session_closed(
                    session, "its CURVE key was removed from the allow-list", ErrorCode.UNAUTHORIZED
                )
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "this client key is no longer in the allow-list")
        on_session_endpoint = identity.startswith(SESSION_PREFIX)
        if kind == protocol.HELLO:
            if on_session_endpoint:
                raise ProtocolError(
                    ErrorCode.BAD_MESSAGE, f"say hello on the public endpoint {self.endpoint}, not here"
                )
            self._on_hello(identity, msg, user, body)
            return
        if kind == protocol.ATTACH:
            if not on_session_endpoint:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, "attach on the session endpoint a welcome names")
            self._on_attach(identity, msg, user)
            return
        session = self.queue.sessions.get(identity)
        if session is None:
            if kind == protocol.BYE:
                return  # nothing to forget
            raise ProtocolError(
                ErrorCode.NOT_REGISTERED, "no hello from this connection (did the server restart?)"
            )
        session.last_seen = time.perf_counter()
        if kind == protocol.OBSERVE:
            self._on_observe(session, msg, body, t0)
        elif kind == protocol.STATS:
            self._on_stats(identity, msg)
        elif kind == protocol.PING:
            pong = protocol.simple_header(protocol.PONG, protocol.seq_of(header), session=self.session_id)
            self._send(identity, encode(pong), protocol.PONG)
        elif kind == protocol.RESET:
            self._on_reset(session, msg)
        elif kind == protocol.BYE:
            self.queue.drop(identity)
            self._session_closed(session, "said bye")

    def _user_id(self, body: list[Any]) -> str | None:
        """The CURVE client key (z85) ZeroMQ's ZAP handler authenticated this message's peer with."""
        if self.allow_list is None:
            return None
        try:
            return body[0].get("User-Id")
        except (zmq.ZMQError, AttributeError, KeyError, IndexError):
            return None

    def _refusal(self, identity: bytes, body: list[Any]) -> str | None:
        """Why this peer's connection is refused (over the per-address limit), if it is."""
        peers = self._peers
        if (
            peers is None
            or peers.max_per_address is None
            or identity in self.queue.sessions
            or identity.startswith(SESSION_PREFIX)  # the caps and counts are the public endpoint's
        ):
            return None
        fd = _source_fd(body)
        if fd is not None and fd not in peers.live and self._monitor is not None:
            self._log_peer_events(self._monitor)  # its accept event may still wait behind others
        return peers.refusal(fd) if peers.refused else None

    @staticmethod
    def _peer_address(body: list[Any]) -> str:
        try:
            return str(body[0].get("Peer-Address"))
        except (zmq.ZMQError, AttributeError, KeyError, IndexError):
            return "?"

    def _on_hello(self, identity: bytes, msg: Message, user: str | None, body: list[Any]) -> None:
        role, token = protocol.hello_extras(msg.header)
        queue = self.queue
        if role == "robot" and identity not in queue.sessions and queue.robot_sessions >= queue.max_sessions:
            # full: refuse before the costlier checks (a flood of hellos meets a full server),
            # unless it is a live robot reconnecting, which replaces its own session
            rid = msg.header.get("robot_id")
            if not isinstance(rid, str) or rid not in queue.by_robot:
                raise ProtocolError(
                    ErrorCode.OVERLOADED, f"the server holds its limit of {queue.max_sessions} robot sessions"
                )
        meta = self.policy.metadata
        robot = None
        image_tokens = None
        if role == "robot":
            # a hello without state_dim takes the policy's (the welcome says so)
            robot = protocol.RobotDescription.from_header(msg.header, meta)
            robot.check_fits(meta)
            if robot.expected_bytes(meta) > self.config.max_message_bytes:
                raise ProtocolError(
                    ErrorCode.BAD_HELLO,
                    f"this robot's observations exceed the server's {self.config.max_message_bytes}-byte limit",
                )
            check = self.policy.input_check
            if check is not None:
                try:
                    image_tokens = check.camera_tokens(robot.cameras)
                except ValueError as exc:
                    raise ProtocolError(ErrorCode.BAD_HELLO, str(exc)) from None
        try:
            session, replaced = self.queue.register(
                identity, robot, time.perf_counter(), token=token, key=user
            )
        except ProtocolError as exc:
            if exc.code == ErrorCode.ROBOT_ID_IN_USE:
                self._refusals_log.note(
                    "robot_id_in_use",
                    "refused a hello from %s (%s): %s",
                    self._peer_address(body),
                    user or "no CURVE key",
                    exc.message,
                    level=logging.WARNING,
                )
            raise
        session.image_tokens = image_tokens
        if self._peers is not None:
            self._peers.protect(_source_fd(body))  # never shed at the fd limit
        if replaced is not None:
            self._session_closed(replaced, "replaced by a reconnection of the same robot")
        if robot is not None:
            self._robots_log.note(
                "connected",
                "robot %s (%s) connected from %s: cameras %s, state %d, dt %.4f s",
                robot.robot_id,
                robot.embodiment,
                self._peer_address(body),
                {k: list(v) for k, v in robot.cameras.items()},
                robot.state_dim,
                robot.action_period,
                level=logging.INFO,
            )
        else:
            self._robots_log.note("monitor", "monitor %s connected", session.name)
        if self._welcome is None:  # the same for every session but its token: built once
            self._welcome = protocol.welcome_header(
                self.session_id,
                meta,
                self.config.heartbeat_interval,
                self.config.max_message_bytes,
                limits=self._limits,
                # the port only: the client dials it on the host it reached this server at
                session_port=int(self.session_endpoint.rsplit(":", 1)[1]) if self.session_endpoint else None,
            )
        welcome = protocol.session_welcome(self._welcome, session.token, robot)
        self._send(identity, encode(welcome), protocol.WELCOME)

    def _on_attach(self, identity: bytes, msg: Message, user: str | None) -> None:
        """A welcomed robot (or monitor) moves its session to this session-endpoint connection."""
        token = protocol.attach_token(msg.header)
        session = self.queue.by_token(token)
        if session is None:
            raise ProtocolError(
                ErrorCode.NOT_REGISTERED, "no live session holds this token: say hello on the public endpoint"
            )
        if self.allow_list is not None and session.key != user:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "this session was opened with another client key")
        previous = self.queue.move(session, identity)
        if previous is not None:
            self._session_closed(previous, f"its connection was taken by {session.name}")
        session.last_seen = time.perf_counter()
        self.metrics.inc("attached")
        reply = protocol.simple_header(
            protocol.ATTACHED, protocol.seq_of(msg.header), session=self.session_id
        )
        self._send(identity, encode(reply), protocol.ATTACHED)

    def _session_closed(
        self, session: Session, reason: str, code: ErrorCode = ErrorCode.NOT_REGISTERED
    ) -> None:
        """Log a session the queue dropped; its waiting request (if any) is answered ``code``."""
        if session.pending is not None:
            pending, session.pending = session.pending, None
            self._reply_error(pending.identity, code, f"session closed: {reason}", pending.request.seq)
        self._robots_log.note("disconnected", "%s disconnected: %s", session.name, reason, level=logging.INFO)

    def _on_stats(self, identity: bytes, msg: Message) -> None:
        offset, limit = protocol.stats_page(msg.header)
        base = protocol.simple_header(
            protocol.STATS,
            protocol.seq_of(msg.header),
            session=self.session_id,
            metadata=self.policy.metadata.to_dict(),
            metrics=self.metrics.snapshot(),
            summary=self.queue.summary(),
            sessions_total=len(self.queue.sessions),
            offset=offset,
        )
        page = self.queue.page(offset, limit)
        while True:  # long robot ids may not fit a full page under the header cap: halve it
            header = {**base, "sessions": page}
            if len(pack_header(header)) <= MAX_HEADER_BYTES - 1024 or not page:
                break
            page = page[: len(page) // 2]
        self._send(identity, encode(header), protocol.STATS)

    def _on_observe(self, session: Session, msg: Message, frames: list[Any], t0: float) -> None:
        if session.robot is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "a monitor session cannot observe")
        request = protocol.decode_observe(msg, session.robot, self.policy.metadata)
        session.counts["observe"] += 1
        check = self.policy.input_check
        if check is not None:
            try:
                check.check(request.observation, session.image_tokens)
            except ValueError as exc:
                raise ProtocolError(ErrorCode.BAD_VALUE, str(exc)) from None
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
        for dropped in self.queue.submit(session, pending):
            self._reply_dropped(dropped)

    def _on_reset(self, session: Session, msg: Message) -> None:
        seq = protocol.seq_of(msg.header)
        dropped = self.queue.cancel(session)
        if dropped is not None:
            self._reply_dropped(dropped)
        self._send(session.identity, encode(protocol.simple_header(protocol.ACK, seq)), protocol.ACK)

    # ---------------------------------------------------------------------------- compute

    def _compute_and_reply(self, batch: list[Pending]) -> None:
        try:
            replies = self._compute(batch)  # outside the lock: the leader keeps serving meanwhile
        except Exception as exc:  # a bug in building replies must not stop the server
            log.exception("failed to build replies for a batch of %d", len(batch))
            message = f"server failed on this batch ({type(exc).__name__})"
            replies = [
                (p.identity, self._error_frames(ErrorCode.POLICY_ERROR, message, p), protocol.ERROR)
                for p in batch
            ]
        with self._io.lock:
            try:
                for identity, frames, kind in replies:
                    session = self.queue.sessions.get(identity)
                    if session is not None:
                        session.counts["chunk" if kind == protocol.CHUNK else "error"] += 1
                    self._send(identity, frames, kind)
            finally:
                self.queue.batch_done()
                if self.queue.ready:
                    self._io.kick()  # the leader may take the next batch now

    def _compute(self, batch: list[Pending]) -> list[tuple[bytes, list[Any], str]]:
        """Replies for ``batch``; a failing batch is retried member by member
        (``batching.infer_isolating``), so one robot's input the policy cannot take fails that
        robot alone."""
        replies = []
        for call in infer_isolating(self.policy.infer, [p.request.observation for p in batch]):
            if call.error is not None:
                self.metrics.inc("policy_failures")
                if len(call.members) > 1:
                    continue  # retried member by member: those calls follow
                pending = batch[call.members[0]]
                exc = call.error
                log.error(
                    "policy failed for %s: %s: %s", self._who(pending.identity), type(exc).__name__, exc
                )
                message = f"policy raised {type(exc).__name__}: {exc}"
                replies.append(
                    (
                        pending.identity,
                        self._error_frames(ErrorCode.POLICY_ERROR, message, pending),
                        protocol.ERROR,
                    )
                )
                continue
            assert call.results is not None
            ema = self._infer_ms_ema
            self._infer_ms_ema = call.infer_ms if ema == float("inf") else 0.8 * ema + 0.2 * call.infer_ms
            self.metrics.observe("infer_ms", call.infer_ms)
            self.metrics.observe("batch_size", len(call.members), buckets=BATCH_BUCKETS)
            for i, result in zip(call.members, call.results, strict=True):
                pending = batch[i]
                try:
                    replies.append(self._chunk_reply(pending, result, call.started, call.infer_ms))
                except Exception as exc:
                    log.error("unusable policy result for %s: %s", self._who(pending.identity), exc)
                    message = f"policy returned unusable actions: {exc}"
                    replies.append(
                        (
                            pending.identity,
                            self._error_frames(ErrorCode.POLICY_ERROR, message, pending),
                            protocol.ERROR,
                        )
                    )
        return replies

    def _chunk_reply(
        self, pending: Pending, result: Any, t0: float, infer_ms: float
    ) -> tuple[bytes, list[Any], str]:
        meta = self.policy.metadata
        actions = np.asarray(result.actions)
        if actions.shape != (meta.action_horizon, meta.action_dim):
            raise ValueError(
                f"actions of shape {list(actions.shape)}, not [{meta.action_horizon}, {meta.action_dim}]"
            )
        if actions.dtype.kind not in "fiu":
            raise ValueError(f"actions of dtype {actions.dtype}, not numbers")
        actions = actions.astype(np.float32, copy=False)  # checked after the cast: 1e300 becomes inf
        if not np.isfinite(actions).all():
            self.metrics.inc("non_finite_chunks")
            raise ValueError("actions are not all finite (NaN or Inf); no chunk is sent")
        session = self.queue.sessions.get(pending.identity)
        dt = session.robot.action_period if session is not None and session.robot is not None else 0.0
        if meta.action_period is not None:
            # the checkpoint's rows are this far apart (trained at its own rate), whatever the
            # robot's control period: the robot's scheduler interpolates between them
            dt = meta.action_period
        t_send = time.perf_counter()
        timing = {f"policy_{k}": float(v) for k, v in result.timing_ms.items()}
        timing.update(
            server_decode=pending.decode_ms,
            server_queue=(t0 - pending.received) * 1000.0,
            server_infer=infer_ms,
            server_total=(t_send - pending.received) * 1000.0,
        )
        chunk = ActionChunk(
            actions=actions,
            stamp=pending.request.observation.stamp,
            dt=dt,
            seq=pending.request.seq,
            timing_ms=timing,
        )
        self.metrics.observe("server_total_ms", timing["server_total"])
        return pending.identity, protocol.encode_chunk(chunk), protocol.CHUNK

    def _error_frames(self, code: ErrorCode, message: str, pending: Pending) -> list[Any]:
        self.metrics.inc("errors", code=code.value)
        return encode(protocol.error_header(code, message, pending.request.seq))


class StrangerBacklog:
    """Messages from peers without a session (hellos; on the session endpoint, attaches), bounded,
    worked off within a time budget per turn and a share of the time: the rest waits for a later
    turn (the leader's wait ends then), so a flood delays no robot's pong or chunk."""

    def __init__(self, limit: int, handle: Callable[[list[Any]], None]) -> None:
        self.items: deque[list[Any]] = deque()
        self.limit = limit
        self.handle = handle
        self.next = 0.0  # perf_counter when the backlog may be worked on again

    def add(self, frames: list[Any]) -> bool:
        """Queue one message; False (not queued) when the backlog is full."""
        if len(self.items) >= self.limit:
            return False
        self.items.append(frames)
        return True

    def work_off(self) -> None:
        start = time.perf_counter()
        if not self.items or start < self.next:
            return
        end = start + STRANGER_BUDGET_S
        while self.items and time.perf_counter() < end:
            self.handle(self.items.popleft())
        self.next = start + (time.perf_counter() - start) / STRANGER_SHARE


def _source_fd(body: list[Any]) -> int | None:
    """The descriptor of the connection a message came in on (libzmq's ``ZMQ_SRCFD``)."""
    try:
        return int(body[0].get(zmq.SRCFD))
    except (zmq.ZMQError, AttributeError, IndexError, TypeError, ValueError):
        return None


def parse_io_priority(text: str) -> str:
    """A ``handshake_io_priority`` checked: idle, batch or normal."""
    if text not in IO_PRIORITIES:
        raise ValueError(f"handshake_io_priority takes {', '.join(IO_PRIORITIES)}, got {text!r}")
    return text


def _set_io_priority(ctx: zmq.Context, priority: str) -> None:
    """Schedule ``ctx``'s libzmq threads (call before its first socket) through libzmq. Not a
    niceness: libzmq maps a SCHED_OTHER priority to nice -20, and a niceness of 19 measured 5-7x
    the idle p99 under a flood (SCHED_IDLE threads yield at once to any woken normal thread). Where
    the OS has no such policy they run at the normal priority, said once in the log."""
    if parse_io_priority(priority) == "normal":
        return
    policy = getattr(os, "SCHED_IDLE" if priority == "idle" else "SCHED_BATCH", None)
    try:
        if policy is None:
            raise OSError(f"no SCHED_{priority.upper()} on this platform")
        ctx.set(zmq.THREAD_SCHED_POLICY, policy)
        ctx.set(zmq.THREAD_PRIORITY, 0)
    except (OSError, zmq.ZMQError, AttributeError) as exc:
        log.warning("handshake I/O threads keep the normal priority: %s", exc)
