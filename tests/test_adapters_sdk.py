"""SDK adapters that only a real robot exercises fully: UR (ur_rtde), xArm (xarm-python-sdk) and the
LeRobot bridge. Here: config validation, command conversion, the servo streamer's timing, and the
real SDKs failing cleanly when no robot answers. Tests marked ``hardware`` need the robot:
``WALL_RUNTIME_HARDWARE=1 WALL_RUNTIME_UR_HOST=... WALL_RUNTIME_XARM_HOST=... pytest -m hardware``.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from wall_runtime.adapters.checks import CheckOptions, run_checks
from wall_runtime.adapters.config import RobotConfigError, load_robot, parse_robot
from wall_runtime.adapters.lerobot_bridge import LeRobotBridge
from wall_runtime.adapters.registry import build_adapter, build_part
from wall_runtime.adapters.streaming import ServoStreamer, ramp
from wall_runtime.adapters.xarm import gripper_units
from wall_runtime.robot import RobotLinkError

ROBOTS = Path(__file__).resolve().parents[1] / "robots"


def _with(name: str, **connection) -> object:
    raw = yaml.safe_load((ROBOTS / name / "robot.yaml").read_text())
    raw["parts"][0]["connection"].update(connection)
    return parse_robot(raw, ROBOTS / name / "robot.yaml")


@pytest.mark.parametrize(
    ("name", "field", "value", "message"),
    [
        ("ur5e", "servo_hz", 250, "125 \\(CB3\\) or 500"),
        ("ur5e", "lookahead_s", 0.5, "lookahead_s: must be in \\[0.03, 0.2\\]"),
        ("ur5e", "gain", 5000, "gain: must be in \\[100, 2000\\]"),
        ("ur5e", "hots", "10.0.0.2", "connection.hots: unknown field"),
        ("xarm6", "servo_hz", 500, "at most 250 Hz"),
    ],
)
def test_sdk_connection_blocks_are_validated(name: str, field: str, value, message: str) -> None:
    with pytest.raises((ValueError, RobotConfigError), match=message):
        build_adapter(_with(name, **{field: value}))


def test_ur_host_is_required() -> None:
    raw = yaml.safe_load((ROBOTS / "ur5e" / "robot.yaml").read_text())
    del raw["parts"][0]["connection"]["host"]
    with pytest.raises(RobotConfigError, match=r"parts\[0\].connection.host: missing"):
        build_adapter(parse_robot(raw, ROBOTS / "ur5e" / "robot.yaml"))


def test_ur_servoj_call_and_xarm_setpoint_conversion() -> None:
    cfg = load_robot(ROBOTS / "ur5e")
    ur = build_part(cfg, cfg.parts[0])
    q, speed, accel, t, lookahead, gain = ur.servoj_args(np.arange(6) * 0.1)
    assert q == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.5]) and all(isinstance(x, float) for x in q)
    assert (speed, accel, t, lookahead, gain) == (0.0, 0.0, 1 / 500, 0.1, 300)
    cfg = load_robot(ROBOTS / "xarm6")
    xa = build_part(cfg, cfg.parts[0])
    angles = xa.servo_angles(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.04]))
    assert angles == pytest.approx(
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.0]
    )  # gripper not an arm joint; padded to 7
    assert gripper_units(0.085) == 850 and gripper_units(0.04) == 400 and gripper_units(0.2) == 850


def test_servo_streamer_ramps_to_each_target_over_one_control_period() -> None:
    assert ramp(np.zeros(2), np.ones(2), 0.5, 1.0) == pytest.approx([0.5, 0.5])
    assert ramp(np.zeros(2), np.ones(2), 2.0, 1.0) == pytest.approx([1, 1])
    sent: list[tuple[float, np.ndarray]] = []
    lock = threading.Lock()

    def record(q: np.ndarray) -> None:
        with lock:
            sent.append((time.monotonic(), q.copy()))

    streamer = ServoStreamer(record, rate_hz=200, control_period_s=0.1, name="test")
    streamer.start(np.zeros(6))
    try:
        time.sleep(0.05)
        t_cmd = time.monotonic()
        streamer.set_target(np.full(6, 0.3))
        time.sleep(0.3)
        streamer.hold_at(np.full(6, 0.2))
        time.sleep(0.1)
    finally:
        streamer.stop()
    with lock:
        times = np.array([t for t, _ in sent])
        values = np.array([q[0] for _, q in sent])
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert rate > 100  # streamed at the controller rate, not the control rate (loaded CI: >= half)
    # A ramp, not a step: monotone, inside [start, target], with intermediate setpoints (the ramp
    # is time-based, so a starved thread skips ahead rather than lagging behind)
    moving = values[(times > t_cmd) & (times < t_cmd + 0.3)]
    assert np.all(np.diff(moving) >= 0) and moving.min() >= 0 and moving.max() <= 0.3 + 1e-12
    assert np.any((moving > 0.01) & (moving < 0.29))
    assert values[(times > t_cmd + 0.15) & (times < t_cmd + 0.3)] == pytest.approx(0.3)
    assert values[-1] == pytest.approx(0.2)  # hold_at stops where it is told


def test_ur_and_xarm_fail_cleanly_when_no_controller_answers() -> None:
    # The real SDKs, against a closed port on this machine: a clear RobotLinkError, nothing hangs.
    for name in ("ur5e", "xarm6"):
        robot = build_adapter(_with(name, host="127.0.0.1"))
        t0 = time.monotonic()
        with pytest.raises(RobotLinkError, match="cannot reach"):
            robot.connect()
        assert time.monotonic() - t0 < 10


class _LeRobotLike:
    """The shape of a LeRobot ``Robot`` (the dependency, not the thing under test)."""

    def __init__(self) -> None:
        self.is_connected = False
        self.positions = {"shoulder_pan.pos": 10.0, "shoulder_lift.pos": -20.0, "elbow_flex.pos": 30.0,
                          "wrist_flex.pos": 0.0, "wrist_roll.pos": 45.0, "gripper.pos": 5.0}  # fmt: skip
        self.sent: list[dict] = []

    def connect(self, calibrate: bool = True) -> None:
        self.is_connected = True

    def disconnect(self) -> None:
        self.is_connected = False

    def get_observation(self) -> dict:
        return dict(self.positions, front=np.zeros((4, 4, 3), np.uint8))

    def send_action(self, action: dict) -> dict:
        self.sent.append(action)
        return action


def test_lerobot_bridge_converts_degrees_and_keys() -> None:
    raw = yaml.safe_load((ROBOTS / "so100" / "robot.yaml").read_text())
    names = [j["name"] for j in raw["joints"]]
    raw["parts"][0] = {
        "name": "arm",
        "type": "lerobot",
        "joints": names,
        "connection": {
            "robot_type": "so101_follower",
            "config": {"port": "/dev/ttyACM0"},
            "keys": {n: f"{n}.pos" for n in names},
        },
    }
    cfg = parse_robot(raw, ROBOTS / "so100" / "robot.yaml")
    from wall_runtime.adapters.config import Connection

    fake = _LeRobotLike()
    part = cfg.parts[0]
    bridge = LeRobotBridge(cfg.part_spec(part), Connection(part.connection, part.where), cfg.root, robot=fake)
    bridge.connect()
    state = bridge.read_state()
    assert state.position == pytest.approx(np.radians([10, -20, 30, 0, 45, 5]))
    bridge.command(np.radians([1, 2, 3, 4, 5, 6]))
    assert fake.sent[-1] == pytest.approx(
        {f"{n}.pos": v for n, v in zip(names, [1, 2, 3, 4, 5, 6], strict=True)}
    )
    bridge.command(
        np.array([10.0, 0, 0, 0, 0, 0])
    )  # clamped to shoulder_pan's 1.9 rad before LeRobot sees it
    assert fake.sent[-1]["shoulder_pan.pos"] == pytest.approx(math.degrees(1.9))
    bridge.disconnect()
    assert not fake.is_connected


def test_lerobot_bridge_without_lerobot_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # as on a machine without the extra: importing lerobot.robots fails
    monkeypatch.setitem(sys.modules, "lerobot.robots", None)
    raw = yaml.safe_load((ROBOTS / "so100" / "robot.yaml").read_text())
    names = [j["name"] for j in raw["joints"]]
    raw["parts"][0] = {"name": "arm", "type": "lerobot", "joints": names,
                       "connection": {"robot_type": "so101_follower", "keys": {n: f"{n}.pos" for n in names}}}  # fmt: skip
    robot = build_adapter(parse_robot(raw, ROBOTS / "so100" / "robot.yaml"))
    with pytest.raises(ImportError, match=r"wall-runtime\[lerobot\]"):
        robot.connect()


@pytest.mark.hardware
@pytest.mark.parametrize(
    ("name", "env"), [("ur5e", "WALL_RUNTIME_UR_HOST"), ("xarm6", "WALL_RUNTIME_XARM_HOST")]
)
def test_real_arm_passes_check_robot_at_reduced_speed(name: str, env: str) -> None:
    host = os.environ.get(env)
    if not host:
        pytest.skip(f"set {env} to the controller's address")
    results = run_checks(
        build_adapter(_with(name, host=host)), CheckOptions(speed_scale=0.25, hardware=True, settle_s=3.0)
    )
    assert not [(r.name, r.detail) for r in results if not r.passed]
