"""`wall-runtime run --robot ... --server ...`: the simulated arm driven by a served policy over ZeroMQ."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from wall_runtime.backends.echo import EchoPolicy
from wall_runtime.cli import app
from wall_runtime.e2e.demo import DEFAULT_ROBOT
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
            ],
        )
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["counters"]["chunks_received"] >= 2
    assert summary["watchdog_trips"] == 0


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
