"""`wall-runtime run --robot ... --server ...`: the simulated arm driven by a served policy over ZeroMQ."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from wall_runtime.backends.echo import EchoPolicy
from wall_runtime.cli import app
from wall_runtime.e2e.demo import DEFAULT_ROBOT
from wall_runtime.e2e.recording import Episode
from wall_runtime.e2e.replay import replay_dry
from wall_runtime.transport.server import PolicyServer, ServerConfig


def _server(action_dim: int) -> PolicyServer:
    policy = EchoPolicy.from_checkpoint(
        None,
        action_dim=action_dim,
        state_dim=20,
        cameras=("face_view", "left_wrist_view"),
        norm_keys=("sim_arm",),
    )
    return PolicyServer(policy, ServerConfig(bind="tcp://127.0.0.1:0"))


def test_run_drives_the_sim_arm_from_a_served_policy(tmp_path: Path) -> None:
    with _server(20) as server:
        endpoint = server.start()
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
    summary = json.loads(out.read_text())
    assert summary["counters"]["chunks_received"] >= 2
    assert summary["watchdog_trips"] == 0

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


def test_run_refuses_a_policy_of_another_shape(tmp_path: Path) -> None:
    with _server(12) as server:
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
    assert "12 dims" in result.output and "model.action_dim" in result.output


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
