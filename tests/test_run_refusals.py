"""``wall-runtime run`` refuses what it cannot run before connecting anything, and releases the
robot, its cameras and the policy link on every failure after connecting."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from wall_runtime.cli import app
from wall_runtime.control import commands as control_commands
from wall_runtime.transport.errors import TransportError

ROOT = Path(__file__).resolve().parents[1]


def _sim_arm_copy(tmp_path: Path, **safety) -> Path:
    folder = tmp_path / "sim_arm"
    shutil.copytree(ROOT / "robots" / "sim_arm", folder)
    doc = yaml.safe_load((folder / "robot.yaml").read_text())
    doc["safety"].update(safety)
    (folder / "robot.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder / "robot.yaml"


@pytest.mark.parametrize(
    ("safety", "field"),
    [
        ({"position_margin": {"default": 2.0, "gripper": 0.0}}, "safety.position_margin.shoulder"),
        ({"gripper": {"min": 0.05, "max": 0.06}}, "safety.gripper"),
        (
            {
                "safe_pose": {
                    **{"waist": 0.0, "shoulder": 1.49, "elbow": 0.8},
                    **{"forearm_roll": 0.0, "wrist_pitch": 0.6, "wrist_roll": 0.0, "gripper": 0.02},
                }
            },
            "safety.safe_pose.shoulder",
        ),
    ],
)
def test_an_unsatisfiable_safety_block_exits_before_connecting(
    tmp_path: Path, safety: dict, field: str
) -> None:
    robot = _sim_arm_copy(tmp_path, **safety)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wall_runtime",
            "run",
            "--robot",
            str(robot),
            "--server",
            "tcp://127.0.0.1:9",
            "--duration",
            "1",
            "--no-keys",
            "--estop-file",
            str(tmp_path / "estop"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    out = (proc.stdout + proc.stderr).replace("\n", " ")
    assert proc.returncode == 2, out  # refused, not a traceback, not a crash at exit
    assert field in out and "Traceback" not in out
    assert "running" not in out and "policy:" not in out  # nothing was connected


def test_a_failure_after_connecting_releases_robot_and_cameras(tmp_path: Path, monkeypatch) -> None:
    """The policy link fails after the simulated arm is connected and its cameras run."""
    robot = _sim_arm_copy(tmp_path)
    setups = []
    real_load = control_commands.load_control_setup

    def load(*args, **kwargs):
        setups.append(real_load(*args, **kwargs))
        return setups[-1]

    def no_server(*args, **kwargs):
        assert setups[-1].adapter.is_connected  # the robot was up when the link failed
        raise TransportError("no handshake from tcp://127.0.0.1:9")

    monkeypatch.setattr(control_commands, "load_control_setup", load)
    monkeypatch.setattr(control_commands, "connect_policy", no_server)
    before = {t.name for t in threading.enumerate()}
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--robot",
            str(robot),
            "--server",
            "tcp://127.0.0.1:9",
            "--no-keys",
            "--estop-file",
            str(tmp_path / "estop"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "no handshake" in result.output
    side = setups[-1].side
    assert not side.adapter.is_connected
    assert all(not cam._running for cam in side.cameras.cameras.values())
    left = {t.name for t in threading.enumerate() if t.is_alive()} - before
    assert not any(name.startswith("camera-") for name in left), left
