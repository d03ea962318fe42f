"""AgileX Piper arms over CAN through ``piper_sdk`` (C_PiperInterface_V2).

Units on the wire: joints in 0.001 degree, the gripper opening in 0.001 mm. The SDK parses
feedback frames on its own reader thread; the adapter refuses feedback older than
``feedback_timeout_s`` (a pulled CAN cable) with :class:`RobotLinkError`. ``interface`` picks the
python-can interface: ``socketcan`` on a robot host (``can0`` brought up at 1 Mbit/s), ``slcan``
for a serial CAN adapter, ``virtual`` for tests against the emulator.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from wall_runtime.adapters.config import Connection
from wall_runtime.robot import RobotAdapter, RobotLinkError, RobotNotConnectedError, RobotSpec
from wall_runtime.types import RobotState

CAN_COMMAND_MODE, MOVE_J = 0x01, 0x01
ALL_MOTORS, ENABLE = 7, 0x02


def rad_to_millidegrees(q: np.ndarray) -> list[int]:
    return [round(math.degrees(float(x)) * 1000.0) for x in q]


def millidegrees_to_rad(values: list[int]) -> np.ndarray:
    return np.radians(np.asarray(values, dtype=np.float64) / 1000.0)


class PiperArm(RobotAdapter):
    def __init__(self, spec: RobotSpec, connection: Connection, root: Path) -> None:
        self.spec = spec
        arm = [i for i, j in enumerate(spec.joints) if j.kind == "revolute"]
        grip = [i for i, j in enumerate(spec.joints) if j.kind == "gripper"]
        if len(arm) != 6 or len(grip) > 1:
            raise ValueError(f"{spec.name}: a Piper part drives six revolute joints and at most one gripper")
        if grip and spec.joints[grip[0]].unit != "m":
            raise ValueError(f"{spec.name}: the Piper gripper joint is an opening in m")
        self._arm, self._grip = np.array(arm), (grip[0] if grip else None)
        self.can_name = connection.str("channel", "can0")
        self.interface = connection.str("interface", "socketcan")
        self.speed_percent = connection.int("speed_percent", 50, 1, 101)
        self.gripper_effort = connection.int("gripper_effort_mNm", 1000, 0, 5001)
        self.feedback_timeout_s = connection.float("feedback_timeout_s", 0.1)
        self._piper = None
        self._connected = False
        self._last: np.ndarray | None = None
        self._clock_offset = 0.0

    def connect(self) -> None:
        try:
            from piper_sdk import C_PiperInterface_V2
        except ImportError as exc:
            raise ImportError(
                "the Piper adapter needs piper_sdk: pip install 'wall-runtime[hardware]'"
            ) from exc
        if self._piper is not None and self._connected:
            self._piper.DisconnectPort()
        self._piper = C_PiperInterface_V2(self.can_name, judge_flag=False, can_auto_init=False)
        try:
            self._piper.CreateCanBus(self.can_name, bustype=self.interface, judge_flag=False)
            self._piper.ConnectPort(can_init=True, piper_init=False)
        except (ConnectionError, ValueError) as exc:
            raise RobotLinkError(
                f"{self.spec.name}: cannot open CAN {self.interface}:{self.can_name}: {exc}"
            ) from None
        deadline = time.monotonic() + 1.0
        while not self._fresh():
            if time.monotonic() > deadline:
                self._piper.DisconnectPort()
                raise RobotLinkError(
                    f"{self.spec.name}: no joint feedback from the Piper on {self.can_name} within 1 s"
                )
            time.sleep(0.005)
        self._clock_offset = time.monotonic() - time.time()
        self._connected = True
        position = self.read_state().position
        self._piper.EnableArm(ALL_MOTORS, ENABLE)
        self._piper.MotionCtrl_2(CAN_COMMAND_MODE, MOVE_J, self.speed_percent, 0x00)
        self._send(position)  # goal = present: enabling never jumps the arm

    def _fresh(self) -> bool:
        stamp = self._piper.GetArmJointMsgs().time_stamp
        return stamp > 0 and time.time() - stamp <= self.feedback_timeout_s

    def disconnect(self) -> None:
        if not self._connected:
            return
        try:
            if self._last is not None:
                self._send(self._last)
        finally:
            self._connected = False
            self._piper.DisconnectPort()

    def read_state(self) -> RobotState:
        if not self._connected:
            raise RobotNotConnectedError(f"{self.spec.name}: not connected")
        msgs = self._piper.GetArmJointMsgs()
        age = time.time() - msgs.time_stamp
        if msgs.time_stamp <= 0 or age > self.feedback_timeout_s:
            raise RobotLinkError(
                f"{self.spec.name}: joint feedback on {self.can_name} is {age * 1e3:.0f} ms old (link lost?)"
            )
        js = msgs.joint_state
        position = np.zeros(self.spec.dof)
        position[self._arm] = millidegrees_to_rad(
            [js.joint_1, js.joint_2, js.joint_3, js.joint_4, js.joint_5, js.joint_6]
        )
        if self._grip is not None:
            position[self._grip] = self._piper.GetArmGripperMsgs().gripper_state.grippers_angle / 1e6
        self._last = position
        # python-can stamps frames on the wall clock; one fixed offset puts them on ours, so the
        # same frame always gets the same stamp and stamps never run backwards.
        return RobotState(stamp=msgs.time_stamp + self._clock_offset, position=position)

    def _send(self, target: np.ndarray) -> None:
        self._piper.JointCtrl(*rad_to_millidegrees(target[self._arm]))
        if self._grip is not None:
            self._piper.GripperCtrl(round(float(target[self._grip]) * 1e6), self.gripper_effort, 0x01, 0)

    def command(self, target: np.ndarray) -> None:
        target = self.spec.clamp(self.spec.validate_target(target))
        if not self._connected:
            raise RobotNotConnectedError(f"{self.spec.name}: not connected")
        if not self._fresh():
            raise RobotLinkError(
                f"{self.spec.name}: no fresh feedback on {self.can_name}; not commanding blind"
            )
        self._send(target)

    def inject_fault(self, fault: str) -> None:
        """Close the CAN port under the adapter (the conformance kit's dropped link)."""
        if fault != "link_drop":
            raise ValueError(f"unknown fault {fault!r} (known: link_drop)")
        self._piper.DisconnectPort()

    def hold(self) -> None:
        if not self._connected:
            raise RobotNotConnectedError(f"{self.spec.name}: not connected")
        try:
            position = self.read_state().position
        except RobotLinkError:
            position = self._last
        if position is None:
            raise RobotLinkError(f"{self.spec.name}: no position ever read, cannot hold")
        self._send(self.spec.clamp(position))
