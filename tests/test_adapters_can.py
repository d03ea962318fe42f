"""CAN adapters on python-can's virtual bus: the AgileX base (own protocol code) and the Piper arm
(piper_sdk), each against an emulated device answering as the firmware does."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from wall_runtime.adapters.agilex_base import decode_motion, encode_motion
from wall_runtime.adapters.checks import run_checks
from wall_runtime.adapters.config import load_robot, parse_robot
from wall_runtime.adapters.emulators import emulated
from wall_runtime.adapters.registry import build_adapter
from wall_runtime.robot import RobotLinkError

ROBOTS = Path(__file__).resolve().parents[1] / "robots"


def _wait(pred, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_agilex_motion_frame_scaling() -> None:
    data = encode_motion(0.5, -0.25)
    assert data[:4] == bytes([0x01, 0xF4, 0xFF, 0x06])  # 500 mm/s, -250 mrad/s, big-endian
    assert decode_motion(data) == (0.5, -0.25)
    assert decode_motion(encode_motion(100.0, 0.0))[0] == pytest.approx(32.767)  # saturates, no wrap


@pytest.mark.parametrize("name", ["agilex_scout", "piper"])
def test_passes_check_robot_on_the_virtual_bus(name: str) -> None:
    with emulated(load_robot(ROBOTS / name)) as (cfg, _):
        results = run_checks(build_adapter(cfg))
    assert not [(r.name, r.detail) for r in results if not r.passed]


def test_agilex_base_drives_reports_estop_and_detects_a_silent_bus() -> None:
    with emulated(load_robot(ROBOTS / "agilex_scout")) as (cfg, devices):
        device = devices["base"]
        robot = build_adapter(cfg)
        robot.connect()
        try:
            assert _wait(lambda: device.can_mode)  # connect selected CAN command mode
            assert _wait(
                lambda: (
                    (robot.command(np.array([0.3, 0.0])) or True)
                    and abs(robot.read_state().position[0] - 0.3) < 0.01
                )
            )
            device.estop = True
            assert _wait(lambda: robot.read_state().estop)
            assert _wait(lambda: abs(robot.read_state().position[0]) < 0.01)  # the firmware stops it
            device.estop = False
            device.silent = True
            with pytest.raises(RobotLinkError, match="no motion feedback"):
                _wait(lambda: robot.read_state() is None, timeout=1.0)
            with pytest.raises(RobotLinkError, match="not commanding blind"):
                robot.command(np.array([0.3, 0.0]))
            robot.hold()  # best effort, never raises on a dead link
            device.silent = False
            robot.connect()
            assert robot.read_state().position.shape == (2,)
        finally:
            robot.disconnect()


def test_piper_commands_cross_the_sdk_in_its_wire_units() -> None:
    with emulated(load_robot(ROBOTS / "piper")) as (cfg, devices):
        device = devices["arm"]
        robot = build_adapter(cfg)
        robot.connect()
        try:
            assert _wait(lambda: device.enabled and device.can_mode and device.speed_percent == 50)
            target = np.array([0.5, 1.0, -0.7, 0.2, -0.3, 0.4, 0.03])
            robot.command(target)
            assert _wait(lambda: np.allclose(device.targets, target[:6], atol=1e-5))
            assert device.gripper_target == pytest.approx(0.03, abs=1e-6)
            assert _wait(lambda: np.allclose(robot.read_state().position, target, atol=1e-4))
            # out of range: clamped before it reaches the wire (joint3 max 0.0, joint2 min 0.0)
            robot.command(np.array([0.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.5]))
            assert _wait(lambda: device.targets[1] == 0.0 and device.targets[2] == 0.0)
            assert device.gripper_target == pytest.approx(0.07)
            # a pulled cable: feedback stops, the adapter notices within its timeout
            device.silent = True
            t0 = time.monotonic()
            with pytest.raises(RobotLinkError, match="old"):
                _wait(lambda: robot.read_state() is None, timeout=1.0)
            assert time.monotonic() - t0 < 0.5
        finally:
            device.silent = False
            robot.disconnect()


def test_piper_part_validation() -> None:
    raw = yaml.safe_load((ROBOTS / "piper" / "robot.yaml").read_text())
    raw["parts"][0]["connection"]["speed_percent"] = 150
    with pytest.raises(ValueError, match=r"connection.speed_percent: must be in \[1, 101\)"):
        build_adapter(parse_robot(raw, ROBOTS / "piper" / "robot.yaml"))
    raw = yaml.safe_load((ROBOTS / "piper" / "robot.yaml").read_text())
    raw["joints"][6]["unit"] = "rad"
    with pytest.raises(ValueError, match="gripper joint is an opening in m"):
        build_adapter(parse_robot(raw, ROBOTS / "piper" / "robot.yaml"))
    assert math.isclose(load_robot(ROBOTS / "piper").joint_limits["joint1"].upper, 2.68)
