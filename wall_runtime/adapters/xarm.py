"""UFACTORY xArm 5/6/7 and Lite 6 through ``xarm-python-sdk``: servo mode (mode 1).

``set_servo_angle_j`` setpoints are streamed at ``servo_hz`` from the adapter's own thread
(:mod:`wall_runtime.adapters.streaming`), ramping to each control-loop target. The optional
gripper joint (the xArm Gripper, 0-850 units for 0-85 mm) is an opening in metres. Controller
errors (``error_code`` != 0) raise :class:`RobotFaultError`. Needs a robot on the network: not
exercised in CI, see ``tests/test_adapters_sdk.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from wall_runtime.adapters.config import Connection
from wall_runtime.adapters.streaming import ServoStreamer
from wall_runtime.robot import (
    RobotAdapter,
    RobotFaultError,
    RobotLinkError,
    RobotNotConnectedError,
    RobotSpec,
)
from wall_runtime.types import RobotState

GRIPPER_UNITS_PER_M = 10_000.0  # 850 units = 85 mm
SERVO_MODE, READY = 1, 0


def gripper_units(opening_m: float) -> float:
    return float(np.clip(opening_m * GRIPPER_UNITS_PER_M, 0.0, 850.0))


class XArm(RobotAdapter):
    def __init__(self, spec: RobotSpec, connection: Connection, root: Path) -> None:
        self.spec = spec
        arm = [i for i, j in enumerate(spec.joints) if j.kind == "revolute"]
        grip = [i for i, j in enumerate(spec.joints) if j.kind == "gripper"]
        if len(arm) not in (5, 6, 7) or len(grip) > 1:
            raise ValueError(
                f"{spec.name}: an xArm part drives 5, 6 or 7 revolute joints and at most one gripper"
            )
        if grip and spec.joints[grip[0]].unit != "m":
            raise ValueError(f"{spec.name}: the xArm gripper joint is an opening in m")
        self._arm, self._grip = np.array(arm), (grip[0] if grip else None)
        self.host = connection.str("host")
        self.servo_hz = connection.float("servo_hz", 100.0)
        if self.servo_hz > 250:
            raise ValueError("connection.servo_hz: xArm servo mode takes at most 250 Hz")
        self._api = None
        self._streamer: ServoStreamer | None = None
        self._connected = False

    def servo_angles(self, q: np.ndarray) -> list[float]:
        """One setpoint as set_servo_angle_j takes it: radians, padded to seven joints."""
        angles = [float(x) for x in np.asarray(q)[self._arm]]
        return angles + [0.0] * (7 - len(angles))

    def connect(self) -> None:
        try:
            from xarm.wrapper import XArmAPI
        except ImportError as exc:
            raise ImportError(
                "the xArm adapter needs xarm-python-sdk: pip install 'wall-runtime[hardware]'"
            ) from exc
        self.disconnect()
        try:
            api = XArmAPI(self.host, is_radian=True)
        except Exception as exc:  # the SDK raises a bare Exception when the socket fails
            raise RobotLinkError(f"{self.spec.name}: cannot reach the xArm at {self.host}: {exc}") from None
        if not api.connected:
            raise RobotLinkError(f"{self.spec.name}: cannot reach the xArm at {self.host}")
        api.clean_error()
        api.motion_enable(enable=True)
        api.set_mode(SERVO_MODE)
        api.set_state(READY)
        if self._grip is not None:
            api.set_gripper_enable(True)
        self._api = api
        self._connected = True
        self._streamer = ServoStreamer(self._send, self.servo_hz, self.spec.period_s, self.spec.name)
        self._streamer.start(self.read_state().position)

    def _send(self, q: np.ndarray) -> None:
        code = self._api.set_servo_angle_j(self.servo_angles(q), is_radian=True)
        if code != 0:
            raise RobotFaultError(f"{self.spec.name}: set_servo_angle_j returned {code}")

    def disconnect(self) -> None:
        if self._streamer is not None:
            self._streamer.stop()
            self._streamer = None
        if self._api is not None:
            self._api.disconnect()
            self._api = None
        self._connected = False

    def _require(self) -> None:
        if not self._connected:
            raise RobotNotConnectedError(f"{self.spec.name}: not connected")
        if not self._api.connected:
            raise RobotLinkError(f"{self.spec.name}: connection to {self.host} lost")
        if self._api.error_code:
            raise RobotFaultError(
                f"{self.spec.name}: controller error {self._api.error_code} (see the xArm manual)"
            )
        if self._streamer is not None and self._streamer.error is not None:
            raise RobotLinkError(f"{self.spec.name}: servo stream failed: {self._streamer.error}")

    def read_state(self) -> RobotState:
        self._require()
        code, (pos, vel, eff) = self._api.get_joint_states(is_radian=True)
        if code != 0:
            raise RobotLinkError(f"{self.spec.name}: get_joint_states returned {code}")
        position = np.zeros(self.spec.dof)
        velocity = np.zeros(self.spec.dof)
        effort = np.zeros(self.spec.dof)
        n = len(self._arm)
        position[self._arm], velocity[self._arm], effort[self._arm] = pos[:n], vel[:n], eff[:n]
        if self._grip is not None:
            code, units = self._api.get_gripper_position()
            if code == 0 and units is not None:
                position[self._grip] = units / GRIPPER_UNITS_PER_M
        return RobotState(stamp=time.monotonic(), position=position, velocity=velocity, effort=effort)

    def command(self, target: np.ndarray) -> None:
        target = self.spec.clamp(self.spec.validate_target(target))
        self._require()
        self._streamer.set_target(target)
        if self._grip is not None:
            self._api.set_gripper_position(gripper_units(target[self._grip]), wait=False)

    def hold(self) -> None:
        self._require()
        self._streamer.hold_at(self.read_state().position)
