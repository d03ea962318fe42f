"""The session endpoint over real loopback sockets: a welcomed robot attaches there with its token,
falls back to the public endpoint when it cannot, and finds its way back after a restart."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import zmq
from transport_helpers import client_for, echo_policy, observation, robot, serving, wait_until

from wall_runtime.transport import auth, protocol
from wall_runtime.transport.client import PolicyClient, fetch_stats
from wall_runtime.transport.codec import decode, encode

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_robot_attaches_and_is_served_there_only() -> None:
    policy = echo_policy()
    with serving(policy) as server, client_for(server.endpoint, robot("r1")) as client:
        assert server.session_endpoint is not None and server.session_endpoint != server.endpoint
        assert client.session_endpoint == server.session_endpoint
        assert client.submit(observation(1.0), deadline=2.0).result(timeout=5).stamp == 1.0
        (session,) = server.queue.sessions.values()
        assert session.identity.startswith(b"\x00session:")  # addressed on the session socket
        counters = {c["name"]: c["value"] for c in server.metrics.snapshot()["counters"] if not c["labels"]}
        assert counters.get("attached") == 1
        stats = fetch_stats(server.endpoint)  # a monitor, on the public endpoint
        assert stats["summary"]["attached"] == 1
        assert {(e["robot_id"], e["endpoint"]) for e in stats["sessions"]} == {
            ("r1", "session"),
            ("", "public"),
        }
    assert policy.calls == [[1.0]]


def test_without_a_session_port_robots_stay_on_the_public_endpoint() -> None:
    with serving(echo_policy(), session_port=None) as server, client_for(server.endpoint) as client:
        assert server.session_endpoint is None and client.session_endpoint is None
        assert client.submit(observation(1.0), deadline=2.0).result(timeout=5).stamp == 1.0


@pytest.mark.parametrize("heartbeat", [1.0, 0.25])
def test_an_unreachable_session_endpoint_leaves_the_robot_on_the_public_one(heartbeat: float) -> None:
    """A server whose welcome names a port nothing listens on (a firewall, a NAT): the attach gets
    no answer, the client says hello again with its token and stays on the public endpoint for that
    server session, served there; also with a heartbeat timeout shorter than the attach's."""
    policy = echo_policy()
    dead_port = _free_port()
    ctx = zmq.Context()
    server_sock = ctx.socket(zmq.ROUTER)
    server_sock.linger = 0
    port = server_sock.bind_to_random_port("tcp://127.0.0.1")
    client = PolicyClient(f"tcp://127.0.0.1:{port}", robot("r1"))
    hellos = []
    try:
        client.start()
        deadline = time.monotonic() + 5.0
        while not client.connected and time.monotonic() < deadline:
            if not server_sock.poll(50):
                continue
            identity, *body = server_sock.recv_multipart()
            header = decode(body, 1 << 26).header
            if header["type"] == protocol.HELLO:
                hellos.append(header)
                welcome = protocol.welcome_header(
                    "s1", policy.metadata, heartbeat, 1 << 25, token="tok-1", session_port=dead_port
                )
                server_sock.send_multipart([identity, *encode(welcome)])
        assert client.connected, "the client never settled on the public endpoint"
        assert client.session_endpoint is None
        assert [h.get("token") for h in hellos] == [None, "tok-1"]  # the second proves continuity
    finally:
        client.close()
        server_sock.close()
        ctx.term()


def test_restarted_server_on_the_same_ports_is_found_again() -> None:
    """A fixed session port: the client's session connection reaches the new server by itself, is
    told it is unknown there, and says hello on the public endpoint again, then re-attaches."""
    session_port = _free_port()
    with serving(echo_policy(), session_port=session_port) as server:
        endpoint = server.endpoint
        client = PolicyClient(endpoint, robot())
        try:
            client.connect(timeout=5)
            first = client.session
            assert client.session_endpoint == f"tcp://127.0.0.1:{session_port}"
            server.stop()
            second = echo_policy()
            with serving(second, bind=endpoint, session_port=session_port):
                assert wait_until(lambda: client.connected and client.session != first, 10.0)
                assert client.session_endpoint == f"tcp://127.0.0.1:{session_port}"
                assert client.submit(observation(2.0), deadline=2.0).result(timeout=5).stamp == 2.0
            assert second.calls == [[2.0]]
        finally:
            client.close()


def test_an_attach_needs_the_key_that_opened_the_session(tmp_path: Path) -> None:
    """With CURVE a stolen token is not enough: another allowed key attaching with it is refused,
    and the robot keeps its session."""
    keys: dict[str, Path] = {}
    for name in ("server", "robot", "other"):
        keys[name], keys[name + "_secret"] = auth.generate_keys(tmp_path / "keys", name)
    allow = tmp_path / "allowed"
    allow.mkdir()
    for name in ("robot", "other"):
        shutil.copy(keys[name], allow / f"{name}.key")
    with (
        serving(echo_policy(), server_key=keys["server_secret"], allow_dir=allow) as server,
        client_for(server.endpoint, client_key=keys["robot_secret"], server_key=keys["server"]) as real,
    ):
        assert real.session_endpoint == server.session_endpoint
        ctx = zmq.Context()
        thief = ctx.socket(zmq.DEALER)
        thief.linger = 0
        auth.apply_client_curve(
            thief, auth.load_secret(keys["other_secret"]), auth.load_public(keys["server"])
        )
        thief.connect(server.session_endpoint)
        try:
            thief.send_multipart(encode(protocol.simple_header(protocol.ATTACH, 1, token=real._token)))
            assert thief.poll(3000)
            reply = decode(thief.recv_multipart(), 1 << 20).header
            assert reply["code"] == "unauthorized", reply
        finally:
            thief.close()
            ctx.term()
        assert real.submit(observation(1.0), deadline=2.0).result(timeout=5).stamp == 1.0
        assert real.heartbeats_lost == 0


def _zmq_io_threads() -> dict[int, int]:
    """libzmq I/O threads of this process: thread id -> scheduling policy."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            if "ZMQbg/IO/" in (task / "comm").read_text():
                out[int(task.name)] = os.sched_getscheduler(int(task.name))
        except (OSError, ValueError):
            continue
    return out


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
def test_the_public_endpoints_io_threads_yield_to_the_sessions_one() -> None:
    def idle_threads() -> int:
        return sum(p == os.SCHED_IDLE for p in _zmq_io_threads().values())

    assert wait_until(lambda: idle_threads() == 0)  # earlier tests' servers have wound down
    with serving(echo_policy(), io_threads=2) as server:
        assert server.session_endpoint is not None
        # the public context's two I/O threads (each sets its policy and name itself, as it starts);
        # the session endpoint's one stays normal
        assert wait_until(lambda: idle_threads() == 2, 2.0), idle_threads()
        assert os.SCHED_OTHER in _zmq_io_threads().values()
    assert wait_until(lambda: idle_threads() == 0)
    with serving(echo_policy(), io_threads=2, handshake_io_priority="normal"):
        assert idle_threads() == 0
    with serving(echo_policy(), io_threads=2, session_port=None):  # robots share the public threads
        assert idle_threads() == 0


def test_a_restarted_server_is_noticed_by_the_session_connection_closing() -> None:
    """The default session port is a new one after a restart: the client hears its session
    connection close and says hello at once, not only after its heartbeat timeout."""
    events: list[tuple[str, str]] = []
    with serving(echo_policy(), heartbeat_interval=1.0) as server:
        endpoint = server.endpoint
        client = PolicyClient(endpoint, robot(), on_connection_change=lambda s, d: events.append((s, d)))
        try:
            client.connect(timeout=5)
            server.stop()
            with serving(echo_policy(), bind=endpoint, heartbeat_interval=1.0):
                assert wait_until(lambda: len(events) >= 3 and client.connected, 10.0), events
                assert client.submit(observation(2.0), deadline=2.0).result(timeout=5).stamp == 2.0
        finally:
            client.close()
    lost = [d for s, d in events if s == "lost"]
    assert lost and "closed the connection" in lost[0], events


def test_a_public_peer_cannot_pose_as_a_session_socket_peer() -> None:
    """A routing id chosen to equal an attached robot's internal identity, on the public endpoint:
    its messages are dropped, and the robot keeps its session."""
    with serving(echo_policy()) as server, client_for(server.endpoint, robot("victim")) as victim:
        (session,) = server.queue.sessions.values()
        ctx = zmq.Context()
        evil = ctx.socket(zmq.DEALER)
        evil.linger = 0
        evil.setsockopt(zmq.ROUTING_ID, session.identity)
        evil.connect(server.endpoint)
        try:
            evil.send_multipart(encode(protocol.simple_header(protocol.BYE, 0)))
            assert wait_until(
                lambda: any(
                    c["labels"].get("reason") == "reserved_identity"
                    for c in server.metrics.snapshot()["counters"]
                    if c["name"] == "dropped_requests"
                )
            )
            assert session.identity in server.queue.sessions
            assert victim.submit(observation(1.0), deadline=2.0).result(timeout=5).stamp == 1.0
            assert victim.heartbeats_lost == 0
        finally:
            evil.close()
            ctx.term()


def test_welcomes_to_retried_hellos_open_one_session_connection() -> None:
    """Several welcomes read at once (hellos retried while the server was slow): one attach."""
    policy = echo_policy()
    ctx = zmq.Context()
    public, sessions = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    for s in (public, sessions):
        s.linger = 0
    port = public.bind_to_random_port("tcp://127.0.0.1")
    session_port = sessions.bind_to_random_port("tcp://127.0.0.1")
    client = PolicyClient(f"tcp://127.0.0.1:{port}", robot("r1"))
    attaches = 0
    try:
        client.start()
        assert public.poll(5000)
        identity, *_ = public.recv_multipart()
        welcome = protocol.welcome_header(
            "s1", policy.metadata, 1.0, 1 << 25, token="tok-1", session_port=session_port
        )
        for _ in range(3):  # as if three hellos had been answered
            public.send_multipart([identity, *encode(welcome)])
        deadline = time.monotonic() + 1.5  # well inside the 3 s heartbeat timeout (no pongs here)
        while time.monotonic() < deadline:
            if not sessions.poll(100):
                continue
            peer, *body = sessions.recv_multipart()
            header = decode(body, 1 << 20).header
            if header["type"] == protocol.ATTACH:
                attaches += 1
                reply = protocol.simple_header(protocol.ATTACHED, header.get("seq"), session="s1")
                sessions.send_multipart([peer, *encode(reply)])
        assert client.connected and attaches == 1
    finally:
        client.close()
        for s in (public, sessions):
            s.close()
        ctx.term()
