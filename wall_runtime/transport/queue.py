"""The server's scheduling state without sockets: sessions, newest-wins, deadlines, batching.

``RequestQueue`` holds every robot session and the one observation each may have waiting; the
ZeroMQ shell (``server.PolicyServer``) decodes messages, calls it, and sends whatever it says to
send. It reads no clock and touches no socket (callers pass ``now``, a ``perf_counter`` value), so
batching, superseding, deadlines and the robot-id rules are tested directly.

Rules:

- A session is a peer that said hello: a robot (its ``RobotDescription``) or a monitor (a metrics
  reader). At most ``max_sessions`` robots live at once; monitors have ``max_monitors`` slots of
  their own, the oldest giving way to a new one.
- A ``robot_id`` belongs to one live session. With CURVE it is bound to the first client key that
  claims it, for the server's lifetime: another key is refused, the same key may reconnect and
  replaces its old session. Without CURVE a second peer claiming a live robot's id is refused,
  unless it presents that session's token (the robot reconnecting on a fresh socket).
- Each robot has at most one waiting observation; a newer one supersedes it (answered, never
  computed). A waiting observation whose deadline passes is answered ``deadline_exceeded``.
- A batch is taken when none is in compute and either ``max_batch`` wait, every robot that observed
  within ``active_window`` has one waiting, or the oldest has waited ``max_wait``.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from wall_runtime.transport import protocol
from wall_runtime.transport.batching import ACTIVE_WINDOW_S, batch_due
from wall_runtime.transport.errors import ErrorCode, ProtocolError

MOVED_FROM_KEPT = 4096  # connections remembered as moved away from (a retried hello arrives within seconds)


@dataclass
class Pending:
    """One accepted observe request waiting for (or in) compute."""

    identity: bytes
    request: protocol.ObserveRequest
    frames: list[Any]  # the received zmq frames: the observation's arrays are views on them
    received: float  # perf_counter at receipt
    deadline: float  # perf_counter
    decode_ms: float = 0.0


@dataclass
class Session:
    identity: bytes
    robot: protocol.RobotDescription | None  # None: a monitor session (stats and pings only)
    last_seen: float
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    key: str | None = None  # the CURVE client key (z85) that opened it
    image_tokens: dict[str, int] | None = None  # per camera, from the policy's input check
    endpoint: str = "public"  # where its connection is: "public", or "session" once attached
    last_observe: float = float("-inf")
    pending: Pending | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"observe": 0, "chunk": 0, "error": 0})

    @property
    def name(self) -> str:
        return self.robot.robot_id if self.robot is not None else f"monitor {self.identity.hex()[:8]}"


@dataclass
class Dropped:
    """A waiting request answered with an error instead of computed."""

    pending: Pending
    code: ErrorCode
    message: str


class RequestQueue:
    def __init__(
        self,
        max_batch: int = 8,
        max_wait_s: float = 0.002,
        session_timeout: float = 10.0,
        max_sessions: int = 1024,
        active_window: float = ACTIVE_WINDOW_S,
        max_monitors: int = 8,
    ) -> None:
        if max_batch < 1 or max_wait_s < 0 or max_sessions < 1:
            raise ValueError("max_batch and max_sessions must be >= 1 and max_wait >= 0")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.session_timeout = session_timeout
        self.max_sessions = max_sessions
        self.max_monitors = max(1, max_monitors)
        self.active_window = active_window
        self.sessions: dict[bytes, Session] = {}
        self.by_robot: dict[str, bytes] = {}  # robot_id -> identity of its live session
        self.robot_keys: dict[str, str] = {}  # robot_id -> CURVE key it is bound to
        self.ready: OrderedDict[bytes, Pending] = OrderedDict()
        # connections sessions moved away from (to the session endpoint): a hello still queued from
        # one of them (a retry) must not move the session back to a connection that is gone
        self.moved_from: OrderedDict[bytes, None] = OrderedDict()
        self.computing = False  # a batch is in compute (one at a time)

    # ------------------------------------------------------------------------------ sessions

    def register(
        self,
        identity: bytes,
        robot: protocol.RobotDescription | None,
        now: float,
        *,
        token: str | None = None,
        key: str | None = None,
    ) -> tuple[Session, Session | None]:
        """Open (or re-open) ``identity``'s session; return it and the session it replaced, if any.

        Raises ``ProtocolError`` (``robot_id_in_use`` / ``overloaded``) and changes nothing then.
        """
        replaced: Session | None = None
        if identity in self.moved_from:
            raise ProtocolError(
                ErrorCode.BAD_HELLO,
                "this connection's session moved to the session endpoint; say hello on a new connection",
            )
        if robot is not None:
            rid = robot.robot_id
            holder = self.sessions.get(self.by_robot.get(rid, b""))
            bound = self.robot_keys.get(rid)
            if key is not None and bound is not None and bound != key:
                raise ProtocolError(
                    ErrorCode.ROBOT_ID_IN_USE, f"robot_id {rid!r} is bound to another client key"
                )
            if holder is not None and holder.identity != identity:
                same_key = key is not None and holder.key == key
                if not same_key and (token is None or token != holder.token):
                    raise ProtocolError(
                        ErrorCode.ROBOT_ID_IN_USE,
                        f"robot_id {rid!r} is in use by a live session; a reconnecting robot presents "
                        "its session token, otherwise wait until that session says bye or goes silent",
                    )
                replaced = holder
        previous = self.sessions.get(identity)
        if robot is None:
            # Monitors (metrics readers) have their own few slots, the oldest giving way to a new
            # one: a server full of robots (or of a flood's sessions) can still be inspected.
            monitors = [s for s in self.sessions.values() if s.robot is None and s.identity != identity]
            for old in monitors[: max(0, len(monitors) - self.max_monitors + 1)]:
                self.drop(old.identity)
        elif previous is None and replaced is None and self.robot_sessions >= self.max_sessions:
            raise ProtocolError(
                ErrorCode.OVERLOADED, f"the server holds its limit of {self.max_sessions} robot sessions"
            )
        if replaced is not None:
            self.drop(replaced.identity)
        if previous is not None:
            self.drop(identity)
        session = Session(identity=identity, robot=robot, last_seen=now, key=key)
        if replaced is not None and replaced.token == token:
            session.token = replaced.token  # continuity: the same robot on a fresh socket
        elif previous is not None and previous.robot == robot:
            session.token = previous.token  # a repeated hello (a retry): the token it may hold stays valid
        self.sessions[identity] = session
        if robot is not None:
            self.by_robot[robot.robot_id] = identity
            if key is not None:
                self.robot_keys.setdefault(robot.robot_id, key)
        return session, replaced

    @property
    def robot_sessions(self) -> int:
        return len(self.by_robot)

    def drop(self, identity: bytes) -> Session | None:
        """Forget a session and its waiting request (unanswered: its peer is gone or replaced)."""
        session = self.sessions.pop(identity, None)
        self.ready.pop(identity, None)
        robot = session.robot if session is not None else None
        if robot is not None and self.by_robot.get(robot.robot_id) == identity:
            del self.by_robot[robot.robot_id]
        return session

    @property
    def attached(self) -> int:
        """Sessions on the session endpoint."""
        return sum(1 for s in self.sessions.values() if s.endpoint == "session")

    def by_token(self, token: str) -> Session | None:
        """The live session holding ``token`` (an attach's proof), if any."""
        for session in self.sessions.values():
            if session.token == token:
                return session
        return None

    def move(self, session: Session, identity: bytes) -> Session | None:
        """Address ``session`` (and its waiting request) by ``identity`` from now on: the robot moved
        to a connection on the session endpoint. A session that connection held before is dropped
        and returned."""
        old = session.identity
        session.endpoint = "session"
        if old == identity:
            return None
        previous = self.drop(identity)
        del self.sessions[old]
        self.moved_from[old] = None
        while len(self.moved_from) > MOVED_FROM_KEPT:
            self.moved_from.popitem(last=False)
        session.identity = identity
        self.sessions[identity] = session
        if session.robot is not None and self.by_robot.get(session.robot.robot_id) == old:
            self.by_robot[session.robot.robot_id] = identity
        pending = self.ready.pop(old, None)
        if pending is not None:
            pending.identity = identity
            self.ready[identity] = pending
        if session.pending is not None:
            session.pending.identity = identity
        return previous

    def expire_sessions(self, now: float) -> list[Session]:
        """Drop sessions silent for ``session_timeout`` (with nothing waiting); return them."""
        gone = [
            s
            for s in self.sessions.values()
            if now - s.last_seen > self.session_timeout and s.pending is None
        ]
        for s in gone:
            self.drop(s.identity)
        return gone

    def page(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """A slice of the session listing (robots and monitors, in the order they said hello)."""
        out = []
        for i, s in enumerate(self.sessions.values()):
            if i >= offset + limit:
                break
            if i >= offset:
                robot = s.robot
                out.append(
                    {
                        "robot_id": robot.robot_id if robot else "",
                        "embodiment": robot.embodiment if robot else "",
                        "role": "robot" if robot else "monitor",
                        "endpoint": s.endpoint,
                        **s.counts,
                    }
                )
        return out

    def summary(self) -> dict[str, int]:
        robots = sum(1 for s in self.sessions.values() if s.robot is not None)
        return {
            "sessions": len(self.sessions),
            "robots": robots,
            "monitors": len(self.sessions) - robots,
            "waiting": len(self.ready),
            "attached": self.attached,
        }

    # ------------------------------------------------------------------------------ requests

    def submit(self, session: Session, pending: Pending) -> list[Dropped]:
        """Queue ``pending`` as ``session``'s waiting observation; the one it supersedes is returned."""
        dropped = []
        older = session.pending
        if older is not None:
            self.ready.pop(session.identity, None)
            dropped.append(
                Dropped(
                    older,
                    ErrorCode.SUPERSEDED,
                    f"seq {older.request.seq} replaced by seq {pending.request.seq} before compute",
                )
            )
        session.last_observe = pending.received
        session.pending = pending
        self.ready[session.identity] = pending
        return dropped

    def cancel(self, session: Session, reason: str = "cancelled by reset") -> Dropped | None:
        older = session.pending
        if older is None:
            return None
        self.ready.pop(session.identity, None)
        session.pending = None
        return Dropped(older, ErrorCode.SUPERSEDED, reason)

    def expire_deadlines(self, now: float) -> list[Dropped]:
        dropped = []
        for identity, pending in list(self.ready.items()):
            if pending.deadline <= now:
                del self.ready[identity]
                session = self.sessions.get(identity)
                if session is not None:
                    session.pending = None
                dropped.append(
                    Dropped(
                        pending,
                        ErrorCode.DEADLINE_EXCEEDED,
                        f"deadline of {pending.request.deadline_ms:.1f} ms passed after "
                        f"{(now - pending.received) * 1000:.1f} ms in the queue; not computed",
                    )
                )
        return dropped

    def take_batch(self, now: float) -> list[Pending] | None:
        """The next batch if one is due (and none is in compute); marks it in compute."""
        if self.computing or not self.ready:
            return None
        oldest = next(iter(self.ready.values()))
        # Robots that connected but are not observing (between episodes, just pinging) must not
        # hold a lone request back for max_wait: wait only for robots observing lately.
        active = sum(1 for s in self.sessions.values() if now - s.last_observe < self.active_window)
        if not batch_due(len(self.ready), active, now - oldest.received, self.max_batch, self.max_wait_s):
            return None
        batch = [self.ready.popitem(last=False)[1] for _ in range(min(self.max_batch, len(self.ready)))]
        for pending in batch:
            session = self.sessions.get(pending.identity)
            if session is not None and session.pending is pending:
                session.pending = None
        self.computing = True
        return batch

    def batch_done(self) -> None:
        self.computing = False

    def drain(self) -> list[Pending]:
        """Every waiting request, removed (for shutdown)."""
        pending = list(self.ready.values())
        for p in pending:
            session = self.sessions.get(p.identity)
            if session is not None:
                session.pending = None
        self.ready.clear()
        return pending

    def next_timeout(self, now: float, cap: float = 0.1) -> float:
        """Seconds until the next deadline or max-wait expiry (at most ``cap``)."""
        timeout = cap
        if self.ready:
            timeout = min(timeout, min(p.deadline for p in self.ready.values()) - now)
            if not self.computing:
                oldest = next(iter(self.ready.values()))
                timeout = min(timeout, oldest.received + self.max_wait_s - now)
        return max(0.0, timeout)
