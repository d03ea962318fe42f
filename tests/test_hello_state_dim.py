"""A hello may leave the state size to the policy: one handshake instead of a probe and a second one.

Over real ZeroMQ on loopback with the echo policy (state_dim 20): the session takes the policy's
size, the welcome says so, observations of another size are refused; an explicit size works (and is
refused when too large) as before; the client keeps the size it was given across a server restart;
``open_policy_link`` on a robot.yaml without ``model.state_dim`` says hello once, and falls back to
the old probe against a server that predates the open size.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import pytest
import zmq
from layouts import FLOW_LAYOUT
from transport_helpers import client_for, echo_policy, observation, robot, serving

from wall_runtime.action_space.source import EdgeSource
from wall_runtime.backends.echo import EchoPolicy
from wall_runtime.transport import protocol
from wall_runtime.transport.client import PolicyClient
from wall_runtime.transport.codec import decode, encode
from wall_runtime.transport.errors import ErrorCode, ProtocolError, ServerError

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

OPEN = dataclasses.replace(robot(), state_dim=None)  # leaves the state size to the policy


def _raw_hello(endpoint: str, header: dict[str, Any]) -> dict[str, Any]:
    """The server's answer to one hello from a bare DEALER (what any client would see)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send_multipart(encode(header))
        assert sock.poll(5000), "no answer to the hello"
        return dict(decode(sock.recv_multipart(), protocol.DEFAULT_MAX_MESSAGE_BYTES).header)
    finally:
        sock.close()
        ctx.term()


def _requests(server: Any, kind: str) -> int:
    return int(server.metrics.counters.get(("requests", (("type", kind),)), 0))


def test_the_hello_header_omits_an_open_state_size_and_the_server_resolves_it() -> None:
    meta = echo_policy().metadata
    header = OPEN.to_header()
    assert "state_dim" not in header and robot().to_header()["state_dim"] == 14  # explicit: as before
    assert protocol.RobotDescription.from_header(header) == OPEN
    assert protocol.RobotDescription.from_header(header, meta).state_dim == 20
    assert protocol.RobotDescription.from_header({**header, "state_dim": None}, meta).state_dim == 20
    assert protocol.RobotDescription.from_header(robot().to_header(), meta).state_dim == 14
    for bad in (0, 1025, True, 2.0, "20"):
        with pytest.raises(ProtocolError):
            protocol.RobotDescription.from_header({**header, "state_dim": bad}, meta)


def test_a_session_without_state_dim_takes_the_policys_and_refuses_other_sizes() -> None:
    with serving(echo_policy(state_dim=20)) as server:
        welcome = _raw_hello(server.endpoint, {**OPEN.to_header(), "robot_id": "raw"})
        assert welcome["type"] == "welcome" and welcome["state_dim"] == 20  # the size it took
        monitor = _raw_hello(server.endpoint, protocol.monitor_hello())
        assert monitor["type"] == "welcome" and "state_dim" not in monitor
        with client_for(server.endpoint, OPEN) as client:
            assert client.robot.state_dim == 20 and client.metadata is not None
            [session] = [s for s in server.queue.sessions.values() if s.robot and s.robot.robot_id == "arm-1"]
            assert session.robot.state_dim == 20
            chunk = client.submit(observation(1.0, state_dim=20), deadline=2.0).result(timeout=5)
            assert chunk.actions.shape == (32, 20)
            with pytest.raises(ServerError) as refused:
                client.submit(observation(2.0, state_dim=14), deadline=2.0).result(timeout=5)
            assert refused.value.code == ErrorCode.BAD_SHAPE
            assert "array 'state' must have shape [20] (from the handshake), got [14]" in str(refused.value)
            # the server goes on serving the robot
            assert client.submit(observation(3.0, state_dim=20), deadline=2.0).result(timeout=5).stamp == 3.0


def test_an_explicit_state_dim_works_and_is_refused_as_before() -> None:
    with serving(echo_policy(state_dim=20)) as server:
        assert _raw_hello(server.endpoint, robot("raw").to_header())["state_dim"] == 14
        with client_for(server.endpoint, robot(state_dim=14)) as client:
            assert client.robot.state_dim == 14
            assert client.submit(observation(1.0, state_dim=14), deadline=2.0).result(timeout=5).stamp == 1.0
        too_big = PolicyClient(server.endpoint, robot("big", state_dim=64))
        try:
            with pytest.raises(ServerError, match="state_dim 64 exceeds the policy's state dim 20") as err:
                too_big.connect(timeout=5.0)
            assert err.value.code == ErrorCode.BAD_HELLO
        finally:
            too_big.close()


def test_the_client_keeps_the_size_it_took_across_a_server_restart() -> None:
    """The robot's observations keep the first policy's size: a restarted server with a larger
    state is told that size (explicit) and takes those observations, not its own size."""
    with serving(echo_policy(state_dim=20)) as server:
        endpoint = server.endpoint
        client = PolicyClient(endpoint, OPEN)
        try:
            client.connect(timeout=5)
            session_1 = client.session
            assert client.robot.state_dim == 20
            server.stop()
            deadline = time.monotonic() + 5
            while client.connected and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not client.connected
            with serving(echo_policy(state_dim=24), bind=endpoint) as second:
                assert client.wait_connected(timeout=10), "no re-handshake with the restarted server"
                assert client.session != session_1 and client.metadata.state_dim == 24
                [session] = list(second.queue.sessions.values())
                assert session.robot.state_dim == 20  # announced, not the new policy's 24
                chunk = client.submit(observation(2.0, state_dim=20), deadline=2.0).result(timeout=5)
                assert chunk.stamp == 2.0
        finally:
            client.close()


# ------------------------------------------------------------------------- open_policy_link


@pytest.fixture
def sim_arm():
    """The embedded sim arm's robot side (its robot.yaml has no model.state_dim), started."""
    from wall_runtime.e2e.demo import DEFAULT_ROBOT
    from wall_runtime.e2e.robot_side import load_robot_side

    side = load_robot_side(DEFAULT_ROBOT)
    assert side.config.mapping.state_dim is None
    side.start()
    try:
        yield side
    finally:
        side.close()


def _flow_policy() -> EchoPolicy:
    return EchoPolicy.from_checkpoint(
        None,
        dof_config=FLOW_LAYOUT,
        agent_pos_config=FLOW_LAYOUT,
        step=0.0005,  # the EE drifts slowly: inside the arm's reach
        cameras=("face_view", "left_wrist_view"),
        norm_keys=("sim_arm",),
    )


def _old_server_hello(monkeypatch) -> None:
    """The server's hello parsing as before this change: ``state_dim`` required."""
    current = protocol.RobotDescription.from_header.__func__

    def strict(cls, header, policy=None):
        protocol.require(header, "state_dim", int)
        return current(cls, header, policy)

    monkeypatch.setattr(protocol.RobotDescription, "from_header", classmethod(strict))


@pytest.mark.parametrize("old_server", [False, True], ids=["one-hello", "old-server-probe"])
def test_open_policy_link_without_state_dim(sim_arm, monkeypatch, old_server: bool) -> None:
    from wall_runtime.e2e.session import open_policy_link

    if old_server:
        _old_server_hello(monkeypatch)
    with serving(_flow_policy()) as server:
        peers: list[bytes] = []
        on_hello = server._on_hello

        def counting(identity, *args):  # the real handling; notes which connection said hello
            peers.append(identity)
            on_hello(identity, *args)

        monkeypatch.setattr(server, "_on_hello", counting)
        link = open_policy_link(sim_arm, server.endpoint, robot_id="sim-1")
        source = EdgeSource(link.edge, link.source)  # closing it closes the link
        try:
            meta = link.metadata
            assert link.client.robot.state_dim == meta.state_dim == 20
            [session] = [s for s in server.queue.sessions.values() if s.robot is not None]
            assert session.robot.state_dim == 20
            if old_server:  # refused, then probe (bye) and the real handshake: as before
                assert len(set(peers)) == 3 and _requests(server, "bye") == 1
            else:  # one connection, one session, nothing said goodbye
                assert len(set(peers)) == 1 and _requests(server, "bye") == 0
                assert _requests(server, "hello") == len(peers)
            # the link works: the robot's observation, through the model edge, gets a chunk
            observe = sim_arm.observer("pick up the cube", source)
            deadline = time.monotonic() + 10
            obs = None
            while obs is None and time.monotonic() < deadline:  # until the cameras are in sync
                obs = observe(sim_arm.adapter.read_state(), time.monotonic())
            assert obs is not None and obs.state.shape == (20,)
            source.request(obs)
            chunk = None
            while chunk is None and time.monotonic() < deadline:
                chunk = source.poll()
                time.sleep(0.005)
            assert chunk is not None, f"no chunk: {dict(link.source.errors)}"
            assert np.isfinite(chunk.actions).all()
        finally:
            source.close()
