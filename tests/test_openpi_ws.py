"""The openpi-style websocket endpoint, with the real ``openpi-client`` package as the client."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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
