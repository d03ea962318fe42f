"""RequestQueue without sockets: newest-wins, deadlines, batching, robot-id rules, caps, paging."""

from __future__ import annotations

import numpy as np
import pytest
from transport_helpers import observation, robot

from wall_runtime.transport import protocol
from wall_runtime.transport.errors import ErrorCode, ProtocolError
from wall_runtime.transport.queue import Pending, RequestQueue


def _pending(identity: bytes, seq: int, now: float, deadline_s: float = 1.0) -> Pending:
    request = protocol.ObserveRequest(seq=seq, deadline_ms=deadline_s * 1000.0, observation=observation(now))
    return Pending(identity=identity, request=request, frames=[], received=now, deadline=now + deadline_s)


def test_newest_observation_wins_and_the_older_is_answered_superseded() -> None:
    q = RequestQueue(max_batch=4, max_wait_s=0.01)
    s, _ = q.register(b"a", robot("a"), 0.0)
    assert q.submit(s, _pending(b"a", 1, 0.0)) == []
    dropped = q.submit(s, _pending(b"a", 2, 0.001))
    assert [(d.pending.request.seq, d.code) for d in dropped] == [(1, ErrorCode.SUPERSEDED)]
    assert [p.request.seq for p in q.take_batch(0.001)] == [2]  # the only active robot: no wait


def test_batch_waits_for_active_robots_up_to_max_wait_then_goes() -> None:
    q = RequestQueue(max_batch=8, max_wait_s=0.01)
    a, _ = q.register(b"a", robot("a"), 0.0)
    b, _ = q.register(b"b", robot("b"), 0.0)
    q.submit(b, _pending(b"b", 1, 0.0))
    q.take_batch(0.0)
    q.batch_done()  # b has observed lately: it is active
    q.submit(a, _pending(b"a", 1, 0.1))
    assert q.take_batch(0.101) is None  # waits for b
    assert np.isclose(q.next_timeout(0.101), 0.009)
    batch = q.take_batch(0.111)  # max wait passed
    assert [p.identity for p in batch] == [b"a"] and q.computing
    q.submit(b, _pending(b"b", 2, 0.112))
    assert q.take_batch(0.2) is None  # one batch in compute at a time
    q.batch_done()
    assert [p.identity for p in q.take_batch(0.2)] == [b"b"]


def test_deadline_passing_in_the_queue_drops_the_request() -> None:
    q = RequestQueue(max_batch=2, max_wait_s=1.0)
    a, _ = q.register(b"a", robot("a"), 0.0)
    b, _ = q.register(b"b", robot("b"), 0.0)
    a.last_observe = b.last_observe = 0.0
    q.submit(a, _pending(b"a", 7, 0.0, deadline_s=0.05))
    assert q.expire_deadlines(0.04) == []
    (dropped,) = q.expire_deadlines(0.06)
    assert dropped.code == ErrorCode.DEADLINE_EXCEEDED and dropped.pending.request.seq == 7
    assert a.pending is None and not q.ready


def test_duplicate_robot_id_is_refused_unless_it_presents_the_session_token() -> None:
    q = RequestQueue()
    first, _ = q.register(b"x", robot("arm-1"), 0.0)
    with pytest.raises(ProtocolError) as err:
        q.register(b"y", robot("arm-1"), 0.1)
    assert err.value.code == ErrorCode.ROBOT_ID_IN_USE
    with pytest.raises(ProtocolError):
        q.register(b"y", robot("arm-1"), 0.1, token="not-it")
    assert q.sessions[b"x"] is first  # the live session is untouched
    again, replaced = q.register(b"z", robot("arm-1"), 0.2, token=first.token)
    assert replaced is first and again.token == first.token and set(q.sessions) == {b"z"}
    # a repeated hello on the same connection keeps the token the robot may present later
    same, _ = q.register(b"z", robot("arm-1"), 0.3)
    assert same.token == first.token
    # once the session is gone (bye, or silent past the timeout) the id is free
    q.drop(b"z")
    q.register(b"w", robot("arm-1"), 0.4)


def test_a_session_moved_to_another_connection_is_not_pulled_back_by_a_late_hello() -> None:
    """A robot attached elsewhere; a retry of its hello, still queued from the connection it left,
    arrives with its token: refused, so the session stays where the robot is."""
    q = RequestQueue()
    session, _ = q.register(b"public-1", robot("arm-1"), 0.0)
    q.submit(session, _pending(b"public-1", 1, 0.0))
    assert q.move(session, b"session-1") is None
    assert set(q.sessions) == {b"session-1"} and session.endpoint == "session"
    assert q.by_robot["arm-1"] == b"session-1" and session.pending.identity == b"session-1"
    assert list(q.ready) == [b"session-1"]
    with pytest.raises(ProtocolError) as err:
        q.register(b"public-1", robot("arm-1"), 0.1, token=session.token)
    assert err.value.code == ErrorCode.BAD_HELLO and "moved to the session endpoint" in err.value.message
    assert q.sessions[b"session-1"] is session
    # from a new connection the token still proves continuity (the robot fell back, or lost its link)
    again, replaced = q.register(b"public-2", robot("arm-1"), 0.2, token=session.token)
    assert replaced is session and q.sessions == {b"public-2": again} and again.token == session.token


def test_robot_id_is_bound_to_its_curve_key() -> None:
    q = RequestQueue(session_timeout=1.0)
    q.register(b"x", robot("arm-1"), 0.0, key="KEY-A")
    with pytest.raises(ProtocolError, match="another client key"):
        q.register(b"y", robot("arm-1"), 0.1, key="KEY-B", token=q.sessions[b"x"].token)
    _, replaced = q.register(b"y", robot("arm-1"), 0.1, key="KEY-A")  # the same key reconnecting
    assert replaced is not None
    assert [s.identity for s in q.expire_sessions(5.0)] == [b"y"]
    with pytest.raises(ProtocolError, match="another client key"):  # bound for the server's lifetime
        q.register(b"v", robot("arm-1"), 6.0, key="KEY-B")


def test_session_cap_and_paged_listing() -> None:
    q = RequestQueue(max_sessions=2, max_monitors=2)
    q.register(b"a", robot("a"), 0.0)
    q.register(b"m", None, 0.0)  # a monitor
    q.register(b"b", robot("b"), 0.0)
    with pytest.raises(ProtocolError) as err:
        q.register(b"c", robot("c"), 0.0)
    assert err.value.code == ErrorCode.OVERLOADED
    # a full server can still be inspected: monitors have their own slots, the oldest gives way
    q.register(b"m2", None, 0.0)
    q.register(b"m3", None, 0.0)
    assert b"m" not in q.sessions and {b"m2", b"m3"} <= set(q.sessions)
    q.drop(b"m2")
    q.register(b"m", None, 0.0)
    q.register(b"a", robot("a"), 0.1)  # a known session re-saying hello is not a new one
    assert q.summary() == {"sessions": 4, "robots": 2, "monitors": 2, "waiting": 0, "attached": 0}
    assert [s["robot_id"] for s in q.page(0, 5)] == ["b", "", "", "a"]
    assert [s["role"] for s in q.page(1, 2)] == ["monitor", "monitor"]
