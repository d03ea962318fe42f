"""Server and client over real ZeroMQ sockets on loopback, with the echo policy."""

from __future__ import annotations

import threading
import time
import urllib.request

import numpy as np
import pytest
import zmq
from transport_helpers import CAMERAS, LOOPBACK, client_for, echo_policy, observation, robot, serving

from wall_runtime.backends.echo import EchoPolicy
from wall_runtime.transport import protocol
from wall_runtime.transport.client import PolicyClient
from wall_runtime.transport.codec import decode, encode
from wall_runtime.transport.errors import (
    ConnectionLost,
    DeadlineExceededError,
    NotConnected,
    ServerError,
    SupersededError,
)
from wall_runtime.transport.metrics import render_prometheus
from wall_runtime.types import InpaintHint, PolicyResult

# a crash in a server or client thread must fail the test, not just warn
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def test_round_trip_three_rgb_images_and_state_to_chunk() -> None:
    policy = echo_policy()
    with serving(policy) as server, client_for(server.endpoint, robot(period=0.04)) as client:
        assert client.metadata is not None and client.metadata.model == "echo"
        assert client.metadata.cameras == CAMERAS
        obs = observation(stamp=123.456, seed=1)
        chunk = client.submit(obs, deadline=2.0).result(timeout=5)
    assert chunk.actions.shape == (32, 20) and chunk.actions.dtype == np.float32
    # Bit-exact: every image byte and state value arrived intact (the echo chunk depends on all).
    np.testing.assert_array_equal(chunk.actions, policy.expected_actions(obs))
    assert chunk.stamp == 123.456  # echoed, never interpreted
    assert chunk.dt == 0.04  # the robot's action period from its hello
    assert chunk.seq == 1
    assert {"server_queue", "server_infer", "server_total", "policy_infer"} <= set(chunk.timing_ms)


def test_masks_norm_key_and_inpaint_hint_travel() -> None:
    policy = echo_policy(norm_keys=("test_arm",))
    obs = observation(stamp=1.0, seed=2)
    rng = np.random.default_rng(3)
    obs.state_mask = (np.arange(20) < 14).astype(np.float32)
    obs.dof_mask = (np.arange(20) % 3 != 0).astype(np.float32)
    obs.norm_key = "test_arm"
    obs.inpaint = InpaintHint(
        actions=rng.standard_normal((32, 20)).astype(np.float32),
        weights=np.linspace(1, 0, 32, dtype=np.float32),
        max_guidance=7.0,
    )
    with serving(policy) as server, client_for(server.endpoint) as client:
        chunk = client.submit(obs, deadline=2.0).result(timeout=5)
        wrong_key = observation(stamp=2.0)
        wrong_key.norm_key = "other_robot"
        with pytest.raises(ServerError, match="norm_key"):
            client.submit(wrong_key, deadline=2.0).result(timeout=5)
    np.testing.assert_array_equal(chunk.actions, policy.expected_actions(obs))
    assert (chunk.actions[:, np.arange(20) % 3 == 0] == 0).all()


def test_two_robots_batched_into_one_infer_call() -> None:
    policy = echo_policy()
    with (
        serving(policy, max_batch=2, max_wait_ms=300) as server,
        client_for(server.endpoint, robot("left")) as left,
        client_for(server.endpoint, robot("right")) as right,
    ):
        # both robots start observing (only robots observing lately are waited for)
        left.submit(observation(0.1), deadline=5.0).result(timeout=5)
        right.submit(observation(0.2), deadline=5.0).result(timeout=5)
        policy.calls.clear()
        obs_l, obs_r = observation(10.0, seed=10), observation(20.0, seed=20)
        f_l = left.submit(obs_l, deadline=5.0)
        f_r = right.submit(obs_r, deadline=5.0)
        chunk_l, chunk_r = f_l.result(timeout=5), f_r.result(timeout=5)
        stats = left.stats().result(timeout=5)
    assert len(policy.calls) == 1 and sorted(policy.calls[0]) == [10.0, 20.0]  # one call, both robots
    np.testing.assert_array_equal(chunk_l.actions, policy.expected_actions(obs_l))
    np.testing.assert_array_equal(chunk_r.actions, policy.expected_actions(obs_r))
    assert chunk_l.stamp == 10.0 and chunk_r.stamp == 20.0
    batch = next(h for h in stats["metrics"]["histograms"] if h["name"] == "batch_size")
    assert batch["count"] == 3 and batch["sum"] == 4  # two warm-up batches of one, then both robots


def test_lone_request_waits_max_wait_only_for_robots_that_are_observing() -> None:
    policy = echo_policy()
    with (
        serving(policy, max_batch=4, max_wait_ms=400) as server,
        client_for(server.endpoint, robot("busy")) as busy,
        client_for(server.endpoint, robot("other")) as other,
    ):
        # "other" is connected but not observing: no reason to hold "busy" back
        first = busy.submit(observation(1.0), deadline=5.0).result(timeout=5)
        assert first.timing_ms["server_queue"] < 200
        other.submit(observation(2.0), deadline=5.0).result(timeout=5)
        # now "other" is observing too: a lone request waits for a batch partner up to max_wait
        lone = busy.submit(observation(3.0), deadline=5.0).result(timeout=5)
        assert lone.timing_ms["server_queue"] >= 380
    assert [sorted(c) for c in policy.calls] == [[1.0], [2.0], [3.0]]


def test_superseded_observation_is_answered_and_never_computed() -> None:
    policy = echo_policy(delay_ms=300)
    with serving(policy, max_batch=1) as server, client_for(server.endpoint) as client:
        f1 = client.submit(observation(1.0), deadline=5.0)
        time.sleep(0.05)  # obs 1 is in compute now
        f2 = client.submit(observation(2.0), deadline=5.0)
        f3 = client.submit(observation(3.0), deadline=5.0)
        with pytest.raises(SupersededError):
            f2.result(timeout=5)
        assert f1.result(timeout=5).stamp == 1.0
        assert f3.result(timeout=5).stamp == 3.0
    assert policy.calls == [[1.0], [3.0]]


def test_request_past_its_deadline_is_rejected_not_computed() -> None:
    policy = echo_policy(delay_ms=400)
    with serving(policy, max_batch=1) as server, client_for(server.endpoint) as client:
        f1 = client.submit(observation(1.0), deadline=5.0)
        time.sleep(0.05)
        late = client.submit(observation(2.0), deadline=0.05)
        with pytest.raises(DeadlineExceededError, match="not computed"):
            late.result(timeout=5)
        assert not f1.done()  # answered when the deadline passed, not when the worker freed up
        f1.result(timeout=5)
        with pytest.raises(DeadlineExceededError):  # a budget already spent is refused at once
            client.submit(observation(3.0), deadline=0.0).result(timeout=5)
    assert policy.calls == [[1.0]]


def test_policy_exception_becomes_error_reply_and_server_keeps_serving() -> None:
    policy = echo_policy(fail_on="explode")
    with serving(policy) as server, client_for(server.endpoint) as client:
        bad = observation(1.0)
        bad.instruction = "explode"
        with pytest.raises(ServerError, match=r"policy_error.*RuntimeError") as info:
            client.submit(bad, deadline=2.0).result(timeout=5)
        assert info.value.code.value == "policy_error"
        good = observation(2.0)
        np.testing.assert_array_equal(
            client.submit(good, deadline=2.0).result(timeout=5).actions, policy.expected_actions(good)
        )


class _NaNPolicy(EchoPolicy):
    def infer(self, observations, noise=None):
        results = super().infer(observations, noise)
        return [PolicyResult(np.full_like(r.actions, np.nan), r.actions_normalized) for r in results]


def test_non_finite_policy_actions_never_reach_the_robot() -> None:
    policy = _NaNPolicy(echo_policy().metadata)
    with (
        serving(policy) as server,
        client_for(server.endpoint) as client,
        pytest.raises(ServerError, match="unusable actions"),
    ):
        client.submit(observation(1.0), deadline=2.0).result(timeout=5)


def test_client_reconnects_after_server_restart() -> None:
    events: list[tuple[str, str]] = []
    first = echo_policy()
    with serving(first) as server:
        endpoint = server.endpoint
        client = PolicyClient(endpoint, robot(), on_connection_change=lambda s, d: events.append((s, d)))
        try:
            client.connect(timeout=5)
            session_1 = client.session
            assert client.submit(observation(1.0), deadline=2.0).result(timeout=5).stamp == 1.0
            server.stop()  # the server goes away mid-session
            deadline = time.monotonic() + 5
            while client.connected and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not client.connected
            assert ("lost" in [e[0] for e in events]) and client.heartbeats_lost == 1
            # while the link is down, submissions fail at once instead of queueing stale observations
            assert isinstance(client.submit(observation(1.7)).exception(timeout=1), NotConnected)
            second = echo_policy()
            with serving(second, bind=endpoint):
                assert client.wait_connected(timeout=10), "no re-handshake with the restarted server"
                assert client.session != session_1
                assert client.submit(observation(2.0), deadline=2.0).result(timeout=5).stamp == 2.0
            assert second.calls == [[2.0]]
        finally:
            client.close()
    assert [e[0] for e in events][:3] == ["connected", "lost", "connected"]


def test_hung_server_is_reported_and_requests_in_flight_fail() -> None:
    """A peer that handshakes and then never answers: heartbeat loss fails what is in flight."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind(LOOPBACK)
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    events: list[str] = []
    client = PolicyClient(endpoint, robot(), on_connection_change=lambda s, d: events.append(s))
    try:
        client.start()
        assert router.poll(5000)
        identity, *frames = router.recv_multipart()
        assert decode(frames, 1 << 20).type == "hello"
        welcome = protocol.welcome_header("hung", echo_policy().metadata, 0.1, 1 << 20)
        router.send_multipart([identity, *encode(welcome)])
        assert client.wait_connected(5)
        in_flight = client.submit(observation(1.0), deadline=30.0)
        # The peer reads nothing: the control loop must still never block. Sends past ZeroMQ's
        # queue limit fail at once with NotConnected instead of waiting.
        started = time.monotonic()
        flood = [client.submit(observation(2.0 + i), deadline=30.0) for i in range(100)]
        assert time.monotonic() - started < 2.0
        assert all(not f.done() or isinstance(f.exception(0), NotConnected) for f in flood)
        assert isinstance(in_flight.exception(timeout=5), ConnectionLost)
        assert events[:2] == ["connected", "lost"] and not client.connected
    finally:
        client.close()
        router.close()
        ctx.term()


def test_graceful_shutdown_finishes_compute_and_answers_waiting_requests() -> None:
    policy = echo_policy(delay_ms=300)
    with serving(policy, max_batch=1) as server, client_for(server.endpoint) as client:
        f1 = client.submit(observation(1.0), deadline=5.0)
        time.sleep(0.05)
        f2 = client.submit(observation(2.0), deadline=5.0)
        time.sleep(0.05)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        assert f1.result(timeout=5).stamp == 1.0  # the batch in compute still goes out
        with pytest.raises(ServerError, match="shutting_down"):
            f2.result(timeout=5)
        stopper.join()
    assert policy.calls == [[1.0]]


def test_metrics_cli_snapshot_prometheus_text_and_http() -> None:
    policy = echo_policy()
    with (
        serving(policy, metrics_http=("127.0.0.1", 0)) as server,
        client_for(server.endpoint) as client,
    ):
        for i in range(3):
            client.submit(observation(float(i)), deadline=2.0).result(timeout=5)
        bad = observation(9.0)
        bad.state[0] = np.nan
        client.submit(bad, deadline=2.0).exception(timeout=5)
        stats = client.stats().result(timeout=5)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as resp:
            scraped = resp.read().decode()
    assert stats["sessions"][0]["robot_id"] == "arm-1" and stats["sessions"][0]["chunk"] == 3
    text = render_prometheus(stats["metrics"])
    assert 'wall_runtime_server_requests_total{type="observe"} 4.0' in text
    assert 'wall_runtime_server_errors_total{code="bad_value"} 1.0' in text
    assert "# TYPE wall_runtime_server_queue_wait_seconds histogram" in text
    assert 'wall_runtime_server_infer_seconds_bucket{le="+Inf"} 3.0' in text
    assert 'wall_runtime_server_requests_total{type="observe"}' in scraped


def test_reset_cancels_the_waiting_observation() -> None:
    policy = echo_policy(delay_ms=300)
    with serving(policy, max_batch=1) as server, client_for(server.endpoint) as client:
        f1 = client.submit(observation(1.0), deadline=5.0)
        time.sleep(0.05)
        f2 = client.submit(observation(2.0), deadline=5.0)
        assert client.reset().result(timeout=5) is None  # ack
        with pytest.raises(SupersededError, match="reset"):
            f2.result(timeout=5)
        assert f1.result(timeout=5).stamp == 1.0
    assert policy.calls == [[1.0]]


def test_session_state_follows_hello_and_bye() -> None:
    with serving(echo_policy()) as server, client_for(server.endpoint, robot("a")) as a:
        with client_for(server.endpoint, robot("b")):
            ids = sorted(s["robot_id"] for s in a.stats().result(timeout=5)["sessions"])
            assert ids == ["a", "b"]
        time.sleep(0.2)  # b said bye on close
        assert [s["robot_id"] for s in a.stats().result(timeout=5)["sessions"]] == ["a"]


def test_hello_that_does_not_fit_the_policy_is_refused() -> None:
    with serving(echo_policy()) as server:
        bad = robot()
        bad = type(bad)(bad.robot_id, bad.embodiment, {"thermal_view": (64, 64, 3)}, 14, 0.02)
        client = PolicyClient(server.endpoint, bad)
        try:
            with pytest.raises(ServerError, match="thermal_view"):
                client.connect(timeout=5)
        finally:
            client.close()
