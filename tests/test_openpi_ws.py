"""The openpi-style websocket endpoint, with the real ``openpi-client`` package as the client."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import msgpack
import numpy as np
import pytest
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from scipy.spatial.transform import Rotation
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from wall_runtime.backends import load_policy
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
from wall_runtime.transport.auth import SecurityError
from wall_runtime.transport.openpi_ws import OpenpiConfig, OpenpiServer, euler_to_6d

ROOT = Path(__file__).resolve().parents[1]
# openpi-client itself connects without a context manager, which websockets 15+ warns about
pytestmark = pytest.mark.filterwarnings(
    "ignore:connect\\(\\) must be used as a context manager:DeprecationWarning"
)
CAMERAS = "face_view,left_wrist_view,right_wrist_view"


def _echo(**options):
    options.setdefault("action_horizon", 8)
    options.setdefault("action_dim", 12)
    options.setdefault("state_dim", 12)
    return load_policy(None, "echo", {"cameras": CAMERAS, **options})


def _good(client: WebsocketClientPolicy, state_dim: int = 12) -> np.ndarray:
    reply = client.infer(
        {
            "images": {"face_view": np.full((48, 64, 3), 255, np.uint8)},
            "state": np.arange(state_dim, dtype=np.float32),
            "prompt": "pick up the cube",
        }
    )
    return reply["actions"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(240)
def test_openpi_client_gets_a_chunk_from_serve(tmp_path: Path) -> None:
    """`serve --openpi`: a tiny WALL-OSS checkpoint on torch; the chunk equals the policy's own."""
    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", "flow")
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    args = ["serve", "--checkpoint", str(ckpt), "--backend", "torch", "-o", "seed=0"]
    args += ["--bind", "tcp://127.0.0.1:*", "--openpi", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "wall_runtime", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as health:
                    assert health.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, "serve --openpi never answered /healthz"
                time.sleep(0.2)
        client = WebsocketClientPolicy("127.0.0.1", port)
        meta = client.get_server_metadata()
        assert meta["model"] == "wall-oss-flow" and meta["backend"] == "torch"
        rng = np.random.default_rng(0)
        obs = {
            "images": {view: rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for view in meta["cameras"]},
            "state": np.linspace(-0.5, 0.5, 7, dtype=np.float32),
            "prompt": "pick up the red cube",
        }
        actions = client.infer(obs)["actions"]
        assert actions.shape == (meta["action_horizon"], meta["action_dim"])
        assert actions.dtype == np.float32 and np.isfinite(actions).all()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    from wall_runtime.types import Observation

    local = load_policy(ckpt, "torch", seed=0)
    (expected,) = local.infer([Observation(0.0, obs["images"], obs["state"], obs["prompt"])])
    np.testing.assert_allclose(actions, expected.actions, atol=1e-5)


@pytest.mark.timeout(60)
def test_hostile_traffic_gets_errors_while_a_good_client_is_served() -> None:
    with OpenpiServer(_echo(), OpenpiConfig(port=0, max_message_bytes=1 << 20)) as server:
        good = WebsocketClientPolicy("127.0.0.1", server.port)
        first = _good(good)
        hostile = connect(f"ws://127.0.0.1:{server.port}", compression=None, max_size=None)
        msgpack_numpy.unpackb(hostile.recv())  # metadata first, as openpi's server sends it
        array = msgpack_numpy.pack_array
        attacks = {
            b"\xc1\xff not msgpack": "BAD_MESSAGE: not valid msgpack",
            msgpack.packb(msgpack.ExtType(42, b"x")): "extension type 42",
            msgpack.packb([1, 2, 3]): "a request must be a map",
            msgpack.packb(
                {"state": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}}
            ): "BAD_DTYPE",
            msgpack.packb(
                {"state": {b"__ndarray__": True, b"data": b"\0" * 3, b"dtype": "<f4", b"shape": [12]}}
            ): "does not match shape",
            msgpack_numpy.packb(
                {"images": {"face_view": np.zeros((48, 64), np.uint8)}, "state": np.zeros(12)}
            ): "must be HxWx3",
            msgpack_numpy.packb(
                {"images": {"face_view": np.zeros((8, 8, 3), np.float32)}, "state": np.zeros(12)}
            ): "must be uint8",
            msgpack_numpy.packb(
                {"images": {"top_cam": np.zeros((8, 8, 3), np.uint8)}, "state": np.zeros(12)}
            ): "not a view of this policy",
            msgpack_numpy.packb({"state": np.zeros(99, np.float32)}): "the policy's state has 12",
            msgpack_numpy.packb({"state": np.array([np.nan] * 12)}): "NaN or Inf",
            msgpack_numpy.packb({"state": np.zeros(12), "prompt": "x" * 5000}): "up to 4096 characters",
            msgpack_numpy.packb(
                {"state": np.zeros(12), "pickle": b"cos\nsystem\n"}
            ): "unknown request fields ['pickle']",
            msgpack_numpy.packb({"state": np.zeros(12), "dof_mask": np.full(12, 2.0)}): "must lie in [0, 1]",
            msgpack.packb({"state": [[[[[[1]]]]]]}): "'state' must be",
        }
        del array
        for frame, expected in attacks.items():
            hostile.send(frame)
            answer = hostile.recv()
            assert isinstance(answer, str) and expected in answer, (expected, answer)
            # the good client is served between every attack, and the hostile connection stays usable
            np.testing.assert_allclose(_good(good), first)
        hostile.send("a text frame")
        assert "text frames are not requests" in hostile.recv()
        # a frame over the limit closes that connection (1009), nothing else
        hostile.send(b"\0" * (2 << 20))
        with pytest.raises(ConnectionClosed) as closed:
            hostile.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        np.testing.assert_allclose(_good(good), first)
        assert server.counts["infer"] == len(attacks) + 2
        reset = connect(f"ws://127.0.0.1:{server.port}", compression=None)
        reset.recv()
        reset.send(msgpack_numpy.packb({"type": "reset"}))
        assert msgpack_numpy.unpackb(reset.recv()) == {"reset": True}
        reset.close()


def test_a_token_is_required_when_set_and_when_exposed() -> None:
    with pytest.raises(SecurityError, match="without a token"):
        OpenpiServer(_echo(), OpenpiConfig(host="0.0.0.0", port=0))
    with OpenpiServer(_echo(), OpenpiConfig(port=0, token="s3cret")) as server:
        with pytest.raises(InvalidStatus) as refused:
            WebsocketClientPolicy("127.0.0.1", server.port)
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            WebsocketClientPolicy("127.0.0.1", server.port, api_key="wrong")
        assert _good(WebsocketClientPolicy("127.0.0.1", server.port, api_key="s3cret")).shape == (8, 12)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=2) as health:
            assert health.status == 200  # health checks need no token


def test_wallx_request_names_map_onto_the_model_layout() -> None:
    """wall-x serving's names (spec §11): follow1_pos → the left arm's EE slots, 6D from Euler,
    camera_front → face_view, base64 JPEG views decoded; missing slots are masked."""
    layout = {
        "follow_left_ee_cartesian_pos": 3,
        "follow_left_ee_rotation_6D": 6,
        "follow_left_gripper": 1,
        "height": 1,
        "action_padding": 1,
    }
    rpy = np.array([0.3, -0.4, 1.2])
    expected_6d = Rotation.from_euler("xyz", rpy).as_matrix()[:2].ravel()
    np.testing.assert_allclose(euler_to_6d(rpy), expected_6d, atol=1e-6)
    policy = _echo(image_digest=False)
    with OpenpiServer(policy, OpenpiConfig(port=0), state_layout=layout) as server:
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        assert client.get_server_metadata()["state_layout"] == layout
        ok, jpeg = cv2.imencode(".jpg", np.full((40, 60, 3), 128, np.uint8))
        assert ok
        reply = client.infer(
            {
                "state": {"follow1_pos": [0.1, 0.2, 0.3, *rpy, 0.05], "lift": [0.25]},
                "views": {
                    "camera_front": base64.b64encode(jpeg.tobytes()).decode(),
                    "camera_left": np.zeros((40, 60, 3), np.uint8),
                },
                "instruction": "stack the cups",
            }
        )
        ramp = 0.01 * np.arange(1, 9)[:, None]  # the echo policy's chunk: state + ramp
        state = reply["actions"] - ramp
        np.testing.assert_allclose(state[0, :3], [0.1, 0.2, 0.3], atol=1e-6)
        np.testing.assert_allclose(state[0, 3:9], expected_6d, atol=1e-6)
        np.testing.assert_allclose(state[0, 9:11], [0.05, 0.25], atol=1e-6)
        with pytest.raises(
            RuntimeError, match=r"state.follow3_pos: not a state of this policy \(known: follow1_pos"
        ):
            client.infer({"state": {"follow3_pos": [0] * 7}})
        with pytest.raises(RuntimeError, match=r"state.follow1_pos' must be \[7\]"):
            client.infer({"state": {"follow1_pos": [0] * 6}})


def test_serve_refuses_an_exposed_openpi_endpoint_without_a_token(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from wall_runtime.cli import app

    result = CliRunner().invoke(app, ["serve", "--backend", "echo", "--openpi", "0.0.0.0:0"])
    assert result.exit_code == 2
    assert "without a token: give one (--openpi-token-file)" in " ".join(result.output.split())


def test_both_endpoints_keep_the_policys_input_check(tmp_path: Path) -> None:
    """With ``--openpi`` the ZeroMQ server sees the shared wrapper: it must still check observations
    against what the model refuses (prompt length, aspect ratio), not lose the check to the wrapper."""
    from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
    from wall_runtime.transport.openpi_ws import SharedPolicy

    policy = load_policy(write_tiny_checkpoint(tmp_path / "ckpt", "flow"), "torch")
    try:
        assert policy.input_check is not None
        assert SharedPolicy(policy).input_check is policy.input_check
    finally:
        policy.close()


def _rounds(port: int, states: list[np.ndarray], prompts: list[str], rounds: int = 1) -> list[list]:
    """Each client on its own thread and connection sends ``rounds`` requests, the clients in step
    (a barrier before each round); per client, what each request got (a reply or the exception)."""
    clients = [WebsocketClientPolicy("127.0.0.1", port) for _ in states]
    barrier = threading.Barrier(len(clients))
    got: list[list] = [[] for _ in clients]

    def run(i: int) -> None:
        for r in range(rounds):
            barrier.wait(timeout=30)
            try:
                got[i].append(clients[i].infer({"state": states[i] + r, "prompt": prompts[i]}))
            except Exception as exc:  # an error reply: openpi-client raises it
                got[i].append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return got


def test_concurrent_connections_share_one_policy_call_and_each_gets_its_own_chunk() -> None:
    """Four openpi clients at once: their requests run as shared ``infer`` calls (the policy
    records each call's observations), and each reply is the chunk of that client's own state."""
    policy = _echo(delay_ms=30, image_digest=False)
    ramp = 0.01 * np.arange(1, 9, dtype=np.float32)[:, None]  # the echo chunk is state + ramp
    states = [np.full(12, 10.0 * (i + 1), np.float32) for i in range(4)]
    with OpenpiServer(policy, OpenpiConfig(port=0, max_batch=4, max_wait_ms=300)) as server:
        got = _rounds(server.port, states, [""] * 4, rounds=4)
    for i, replies in enumerate(got):
        assert len(replies) == 4
        for r, reply in enumerate(replies):
            np.testing.assert_allclose(reply["actions"], states[i] + r + ramp, atol=1e-5)
    sizes = [len(call) for call in policy.calls]
    assert sum(sizes) == 16 and max(sizes) == 4, sizes  # batched, never past max_batch
    assert len(sizes) < 16, sizes
    batched = [reply["server_timing"]["batch_size"] for replies in got for reply in replies]
    assert max(batched) == 4


def test_a_batch_with_one_bad_member_serves_the_others_alone() -> None:
    """The policy raises on one client's observation inside a batch of three: the batch is retried
    member by member, so that client alone gets the error and the others their chunks."""
    policy = _echo(fail_on="explode", image_digest=False)
    ramp = 0.01 * np.arange(1, 9, dtype=np.float32)[:, None]
    states = [np.full(12, float(i + 1), np.float32) for i in range(3)]
    with OpenpiServer(policy, OpenpiConfig(port=0, max_batch=3, max_wait_ms=500)) as server:
        clients = [WebsocketClientPolicy("127.0.0.1", server.port) for _ in states]
        barrier = threading.Barrier(3)
        got: list[Any] = [None] * 3

        def run(i: int) -> None:
            clients[i].infer({"state": states[i]})  # all three active: a batch waits for all of them
            barrier.wait(timeout=30)
            if i == 0:
                policy.calls.clear()
            barrier.wait(timeout=30)
            try:
                got[i] = clients[i].infer({"state": states[i], "prompt": "explode" if i == 1 else "go"})
            except RuntimeError as exc:
                got[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert isinstance(got[1], RuntimeError) and "POLICY_ERROR" in str(got[1])
        assert "explode" in str(got[1])
        for i in (0, 2):
            np.testing.assert_allclose(got[i]["actions"], states[i] + ramp, atol=1e-5)
            assert got[i]["server_timing"]["batch_size"] == 1  # served by its retry alone
        assert server.counts["error_POLICY"] == 1
        np.testing.assert_allclose(_good(clients[1]), np.arange(12) + ramp, atol=1e-5)  # still served
    assert [len(call) for call in policy.calls[:4]] == [3, 1, 1, 1]


def test_a_lone_client_never_waits_for_a_batch() -> None:
    """With a long ``max_wait_ms`` one client's requests still run at once, also after a second
    client came and went (a closed connection holds nobody back)."""
    with OpenpiServer(_echo(), OpenpiConfig(port=0, max_wait_ms=2000)) as server:
        other = WebsocketClientPolicy("127.0.0.1", server.port)
        _good(other)
        other._ws.close()
        time.sleep(0.2)  # the server sees the close
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        for _ in range(5):
            t0 = time.perf_counter()
            reply = client.infer({"state": np.zeros(12, np.float32)})
            assert time.perf_counter() - t0 < 1.0
            assert reply["server_timing"]["queue_ms"] < 500 and reply["server_timing"]["batch_size"] == 1


def test_policy_calls_take_turns_on_the_shared_lock() -> None:
    """The lock the ZeroMQ server's calls take (``SharedPolicy``) holds the openpi endpoint's too."""
    lock = threading.Lock()
    with OpenpiServer(_echo(), OpenpiConfig(port=0), lock=lock) as server:
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        done = threading.Event()
        with lock:
            worker = threading.Thread(target=lambda: (_good(client), done.set()))
            worker.start()
            assert not done.wait(0.3)  # the call waits for the lock
        assert done.wait(10)
        worker.join(10)
