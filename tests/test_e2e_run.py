"""`wall-runtime run --robot ... --server ...`: the simulated arm driven by a served policy over ZeroMQ."""

from __future__ import annotations

import json
from pathlib import Path

from layouts import FLOW_LAYOUT
from typer.testing import CliRunner

from wall_runtime.backends.echo import EchoPolicy
from wall_runtime.cli import app
from wall_runtime.e2e.demo import DEFAULT_ROBOT
from wall_runtime.e2e.recording import Episode
from wall_runtime.e2e.replay import replay_dry
from wall_runtime.transport.server import PolicyServer, ServerConfig

# a FLOW checkpoint's layout (spec §11): the echo answers each observation's EE state plus a
# small ramp, so the sim arm moves through the model edge (FK state, IK per waypoint)
FLOW = FLOW_LAYOUT


def _server(layout: dict[str, int]) -> PolicyServer:
    return PolicyServer(_policy(layout), ServerConfig(bind="tcp://127.0.0.1:0"))


def _policy(layout: dict[str, int]) -> EchoPolicy:
    return EchoPolicy.from_checkpoint(
        None,
        dof_config=layout,
        agent_pos_config=layout,
        step=0.0005,  # the EE drifts ~2 cm/s per axis: inside the reach for the run
        cameras=("face_view", "left_wrist_view"),
        norm_keys=("sim_arm",),
    )


def test_run_drives_the_sim_arm_from_a_served_policy(tmp_path: Path, monkeypatch) -> None:
    from wall_runtime.adapters.sim.mujoco_robot import MujocoRobot

    connects: list[int] = []
    inner_connect = MujocoRobot.connect

    def counting_connect(self) -> None:
        connects.append(1)
        inner_connect(self)

    monkeypatch.setattr(MujocoRobot, "connect", counting_connect)
    with _server(FLOW) as server:
        endpoint = server.start()
        peers: list[bytes] = []  # the connections that said hello (the real handling runs)
        on_hello = server._on_hello
        monkeypatch.setattr(
            server, "_on_hello", lambda identity, *a: (peers.append(identity), on_hello(identity, *a))
        )
        out = tmp_path / "run.json"
        result = CliRunner().invoke(
            app,
            [
                "run",
                "--robot",
                str(DEFAULT_ROBOT),
                "--server",
                endpoint,
                "--duration",
                "3",
                "--no-keys",
                "--no-safe-pose",
                "--estop-file",
                str(tmp_path / "estop"),
                "--log-json",
                str(out),
                "--record",
                str(tmp_path / "dataset"),
            ],
        )
    assert result.exit_code == 0, result.output
    assert len(connects) == 1  # `run` asks is_connected: the robot is connected once, not twice
    # sim_arm's robot.yaml has no model.state_dim: one handshake leaves it to the policy (no probe)
    assert len(set(peers)) == 1
    assert server.metrics.counters.get(("requests", (("type", "bye"),)), 0) <= 1  # only the run's own
    summary = json.loads(out.read_text())
    assert summary["counters"]["chunks_received"] >= 2
    assert summary["watchdog_trips"] == 0
    # every chunk went through the model edge: IK for each waypoint, nothing dropped near the start
    assert summary["model_edge"]["interventions"].get("chunks_dropped", 0) == 0
    assert summary["model_edge"]["orientation_residual_max_rad"] < 0.05

    # the run is an episode LeRobot's own reader opens, and it replays to the same commands
    from wall_runtime.interop import torchvision_cpu

    torchvision_cpu.install()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/run", root=tmp_path / "dataset")
    ticks = summary["counters"]["ticks"]
    assert (ds.fps, ds.num_episodes, ds.num_frames) == (30, 1, ticks)
    assert ds.meta.camera_keys == ["observation.images.face_view", "observation.images.left_wrist_view"]
    assert tuple(ds.features["observation.state"]["shape"]) == (7,)
    frame = ds[ticks - 1]
    assert tuple(frame["observation.images.left_wrist_view"].shape) == (3, 224, 224)
    assert frame["index"].item() == ticks - 1
    replay = replay_dry(Episode.load(tmp_path / "dataset"))
    assert replay.ticks == ticks and replay.chunks == summary["counters"]["chunks_received"]
    assert replay.max_abs_diff == 0.0 and replay.nan_mismatches == 0


def test_run_refuses_a_policy_whose_slots_the_robot_does_not_fit(tmp_path: Path) -> None:
    no_gripper = {k: v for k, v in FLOW.items() if k != "follow_left_gripper"}
    with _server(no_gripper) as server:
        endpoint = server.start()
        result = CliRunner().invoke(
            app,
            [
                "run",
                "--robot",
                str(DEFAULT_ROBOT),
                "--server",
                endpoint,
                "--duration",
                "1",
                "--no-keys",
                "--estop-file",
                str(tmp_path / "estop"),
            ],
        )
    assert result.exit_code == 2
    # the robot maps a gripper the checkpoint has no slot for: refused at the handshake, by name
    assert "model.arms.left.gripper" in result.output
    assert "follow_left_gripper" in result.output


def test_run_with_a_broken_robot_yaml_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "robot.yaml"
    bad.write_text(DEFAULT_ROBOT.read_text().replace("control_hz: 30", "control_hz: fast"))
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--robot",
            str(bad),
            "--server",
            "tcp://127.0.0.1:1",
            "--no-keys",
            "--estop-file",
            str(tmp_path / "estop"),
        ],
    )
    assert result.exit_code == 2
    assert "control_hz" in result.output


def test_run_refused_by_curve_stops_at_once_naming_the_key(tmp_path: Path) -> None:
    import shutil
    import time

    from wall_runtime.transport.auth import generate_keys

    keys = tmp_path / "keys"
    server_public, server_secret = generate_keys(keys, "server")
    robot_public, _ = generate_keys(keys, "robot")
    _, intruder_secret = generate_keys(keys, "intruder")
    allow = tmp_path / "allowed"
    allow.mkdir()
    shutil.copy(robot_public, allow / "robot.key")
    policy = _policy(FLOW)
    config = ServerConfig(bind="tcp://127.0.0.1:0", server_key=server_secret, allow_dir=allow)
    with PolicyServer(policy, config) as server:
        endpoint = server.start()
        started = time.monotonic()
        result = CliRunner().invoke(
            app,
            [
                "run",
                "--robot",
                str(DEFAULT_ROBOT),
                "--server",
                endpoint,
                "--server-key",
                str(server_public),
                "--client-key",
                str(intruder_secret),
                "--duration",
                "1",
                "--no-keys",
                "--estop-file",
                str(tmp_path / "estop"),
            ],
        )
        elapsed = time.monotonic() - started
    assert result.exit_code == 2, result.output
    # the connect timeout is 30 s: the socket monitor saw ZAP refuse the key at the first handshake
    assert elapsed < 15, elapsed
    output = " ".join(result.output.split())
    assert "ZAP status 400" in output and "--allow" in output
