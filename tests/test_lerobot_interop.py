"""LeRobot for real: its SO-101 follower class drives our Feetech bus emulator over a pseudo-terminal
through the LeRobot bridge, and the native Feetech adapter reads the calibration file LeRobot's
own code wrote, seeing the arm exactly where LeRobot sees it."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from wall_runtime.adapters.config import RobotConfigError, parse_robot
from wall_runtime.adapters.emulators import feetech as ft_emu
from wall_runtime.adapters.lerobot_bridge import connect_lerobot
from wall_runtime.adapters.registry import build_adapter
from wall_runtime.interop import torchvision_cpu
from wall_runtime.robot import RobotLinkError

ROBOTS = Path(__file__).resolve().parents[1] / "robots"
NAMES = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
# actual (unhomed) servo positions, and the homing offsets lerobot-calibrate would have set
ACTUAL = [2300, 1700, 2900, 2048, 3100, 1500]
HOMING = [250, -350, 850, 0, 1000, -300]
RANGES = [(600, 3400), (700, 3300), (800, 3200), (900, 3100), (100, 4000), (1200, 2800)]


def _follower(port: str, cal_dir: Path):
    torchvision_cpu.install()
    from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig

    return SO101Follower(
        SO101FollowerConfig(port=port, id="emu_arm", calibration_dir=cal_dir, use_degrees=True)
    )


@pytest.fixture
def calibrated_bus(tmp_path: Path):
    """A six-servo bus, calibrated by LeRobot's own code: it writes the homing offsets and ranges
    into the servos and saves its JSON, as lerobot-calibrate does."""
    from lerobot.motors import MotorCalibration

    servos = [{"id": i + 1, "position": float(p)} for i, p in enumerate(ACTUAL)]
    with ft_emu.start_process(servos) as bus:
        robot = _follower(bus.port, tmp_path)
        robot.calibration = {
            name: MotorCalibration(
                id=i + 1, drive_mode=0, homing_offset=HOMING[i], range_min=lo, range_max=hi
            )
            for i, (name, (lo, hi)) in enumerate(zip(NAMES, RANGES, strict=True))
        }
        for attempt in range(3):  # a lost first packet on a fresh bus fails LeRobot's handshake
            try:
                robot.bus.connect()
                break
            except RuntimeError:
                robot.bus.port_handler.closePort()
                if attempt == 2:
                    raise
        robot.bus.write_calibration(robot.calibration)
        # at rest: each goal where the (now homed) servo is, so torque on does not move the arm
        present = robot.bus.sync_read("Present_Position", normalize=False)
        robot.bus.sync_write("Goal_Position", present, normalize=False)
        robot.bus.disconnect(disable_torque=False)
        robot._save_calibration()
        yield bus, tmp_path / "emu_arm.json"


def _robot_yaml(part: dict) -> dict:
    raw = yaml.safe_load((ROBOTS / "so100" / "robot.yaml").read_text())
    raw["parts"] = [{"name": "arm", "joints": NAMES, **part}]
    raw.pop("cameras", None)
    return raw


def _lerobot_degrees() -> np.ndarray:
    """What LeRobot reports for ACTUAL/HOMING/RANGES (its formula, DEGREES mode)."""
    present = np.array(ACTUAL) - np.array(HOMING)
    mid = np.array([(lo + hi) / 2 for lo, hi in RANGES])
    return (present - mid) * 360 / 4095


def test_the_bridge_drives_lerobots_so101_follower_over_the_emulated_bus(calibrated_bus) -> None:
    bus, cal_file = calibrated_bus
    scale = {n: math.pi / 180 for n in NAMES} | {"gripper": 0.017}  # gripper: LeRobot's 0..100
    raw = _robot_yaml(
        {
            "type": "lerobot",
            "connection": {
                "robot_type": "so101_follower",
                "config": {
                    "port": bus.port,
                    "id": "emu_arm",
                    "calibration_dir": str(cal_file.parent),
                    "use_degrees": True,
                },
                "keys": {n: f"{n}.pos" for n in NAMES},
                "scale": scale,
            },
        }
    )
    robot = build_adapter(parse_robot(raw, ROBOTS / "so100" / "robot.yaml"))
    robot.connect()
    ((_, bridge),) = robot.parts
    follower = bridge._robot
    try:
        assert type(follower).__module__.startswith("lerobot.robots.so_follower")
        assert follower.is_calibrated  # LeRobot found its calibration in the servos
        state = robot.read_state()
        expected = np.radians(_lerobot_degrees())
        lo, hi = RANGES[5]
        expected[5] = (ACTUAL[5] - HOMING[5] - lo) / (hi - lo) * 100 * 0.017
        np.testing.assert_allclose(state.position, expected, atol=1e-9)

        target = state.position + np.array([0.1, -0.1, 0.05, 0.0, -0.2, 0.1])
        robot.command(target)
        # the servo's own goal (actual frame) is where LeRobot's unnormalisation put it
        goal_present = round(np.degrees(target[0]) * 4095 / 360 + sum(RANGES[0]) / 2)
        deadline = time.monotonic() + 2.0  # the write has no answer: wait for the bus to take it
        while bus.get(1, "goal") != goal_present + HOMING[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bus.get(1, "goal") == goal_present + HOMING[0]
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if np.allclose(robot.read_state().position, target, atol=0.01):
                break
            time.sleep(0.05)
        np.testing.assert_allclose(robot.read_state().position, target, atol=0.01)
    finally:
        robot.disconnect()
    assert not follower.is_connected


def test_the_native_feetech_adapter_reads_a_lerobot_calibration_file(calibrated_bus) -> None:
    bus, cal_file = calibrated_bus
    # LeRobot's own reading of the arm
    follower = _follower(bus.port, cal_file.parent)
    connect_lerobot(follower, calibrate=False, retries=2, what="follower")
    seen = follower.get_observation()
    follower.disconnect()
    lerobot_deg = np.array([seen[f"{n}.pos"] for n in NAMES[:5]])
    np.testing.assert_allclose(lerobot_deg, _lerobot_degrees()[:5], atol=1e-9)

    conn = {"port": bus.port, "ids": {n: i + 1 for i, n in enumerate(NAMES)}, "timeout_margin_ms": 100,
            "lerobot_calibration": str(cal_file)}  # fmt: skip
    robot = build_adapter(
        parse_robot(_robot_yaml({"type": "feetech", "connection": conn}), ROBOTS / "so100" / "robot.yaml")
    )
    robot.connect()
    try:
        ours = robot.read_state().position
        # the same zero and direction; LeRobot counts 4095 steps a turn where a turn is 4096 ticks
        np.testing.assert_allclose(ours[:5], np.radians(lerobot_deg) * 4095 / 4096, atol=1e-12)
        robot.command(np.zeros(6))  # our zero is the middle of LeRobot's range
        expected = [round((lo + hi) / 2) + HOMING[i] for i, (lo, hi) in enumerate(RANGES)]
        deadline = time.monotonic() + 2.0  # the write has no answer: wait for the bus to take it
        while [bus.get(i + 1, "goal") for i in range(6)] != expected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [bus.get(i + 1, "goal") for i in range(6)] == expected
    finally:
        robot.disconnect()


def test_a_servo_homed_differently_from_the_file_is_refused(calibrated_bus) -> None:
    bus, cal_file = calibrated_bus
    text = cal_file.read_text().replace(f'"homing_offset": {HOMING[2]}', '"homing_offset": 123')
    other = cal_file.with_name("other.json")
    other.write_text(text)
    conn = {"port": bus.port, "ids": {n: i + 1 for i, n in enumerate(NAMES)}, "timeout_margin_ms": 100,
            "lerobot_calibration": str(other)}  # fmt: skip
    robot = build_adapter(
        parse_robot(_robot_yaml({"type": "feetech", "connection": conn}), ROBOTS / "so100" / "robot.yaml")
    )
    with pytest.raises(RobotLinkError, match=r"elbow_flex \(id 3\) holds 850, the file says 123"):
        robot.connect()


def test_lerobot_calibration_config_errors_name_the_field(tmp_path: Path) -> None:
    ids = {n: i + 1 for i, n in enumerate(NAMES)}
    both = {
        "port": "/dev/null",
        "ids": ids,
        "lerobot_calibration": "x.json",
        "offsets": dict.fromkeys(NAMES, 2048),
    }
    with pytest.raises(
        RobotConfigError, match=r"parts\[0\].*offsets: give either offsets or lerobot_calibration"
    ):
        build_adapter(
            parse_robot(_robot_yaml({"type": "feetech", "connection": both}), ROBOTS / "so100" / "robot.yaml")
        )
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": 0, "range_min": 10, "range_max": 5}}'
    )
    conn = {"port": "/dev/null", "ids": ids, "lerobot_calibration": str(bad)}
    with pytest.raises(RobotConfigError, match="range_max 5 is not above range_min 10"):
        build_adapter(
            parse_robot(_robot_yaml({"type": "feetech", "connection": conn}), ROBOTS / "so100" / "robot.yaml")
        )
