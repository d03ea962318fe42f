"""Universal Robots arms (CB3 / e-Series) through ``ur_rtde``: servoJ at the controller rate.

The RTDE control interface uploads its script and takes ``servoJ`` setpoints; the adapter streams
them at ``servo_hz`` (500 on e-Series, 125 on CB3) from its own thread, ramping to each new
control-loop target over one control period (:mod:`wall_runtime.adapters.streaming`). State comes
from the RTDE receive interface; a protective stop raises :class:`RobotFaultError`, an emergency
stop is reported in ``RobotState.estop``. Needs a robot (or URSim) on the network: not exercised
in CI, see ``tests/test_adapters_sdk.py``.
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


class URArm(RobotAdapter):
    def __init__(self, spec: RobotSpec, connection: Connection, root: Path) -> None:
        self.spec = spec
        if spec.dof != 6 or any(j.kind != "revolute" or j.unit != "rad" for j in spec.joints):
            raise ValueError(f"{spec.name}: a UR part drives exactly six revolute joints in rad")
        self.host = connection.str("host")
        self.servo_hz = connection.float("servo_hz", 500.0)
        if self.servo_hz not in (125.0, 500.0):
            raise ValueError("connection.servo_hz: 125 (CB3) or 500 (e-Series)")
        self.lookahead_s = connection.float("lookahead_s", 0.1)
        if not 0.03 <= self.lookahead_s <= 0.2:
            raise ValueError("connection.lookahead_s: must be in [0.03, 0.2] (ur_rtde's range)")
        self.gain = connection.float("gain", 300.0)
        if not 100 <= self.gain <= 2000:
            raise ValueError("connection.gain: must be in [100, 2000] (ur_rtde's range)")
        self._control = None
        self._receive = None
        self._streamer: ServoStreamer | None = None
        self._connected = False

    def servoj_args(self, q: np.ndarray) -> tuple[list[float], float, float, float, float, float]:
        """The servoJ call for one setpoint: speed and acceleration are unused by servoJ."""
        return [float(x) for x in q], 0.0, 0.0, 1.0 / self.servo_hz, self.lookahead_s, self.gain

    def connect(self) -> None:
        try:
            import rtde_control
            import rtde_receive
        except ImportError as exc:
            raise ImportError("the UR adapter needs ur_rtde: pip install 'wall-runtime[hardware]'") from exc
        self.disconnect()
        try:
            self._receive = rtde_receive.RTDEReceiveInterface(self.host)
            self._control = rtde_control.RTDEControlInterface(self.host, self.servo_hz)
        except RuntimeError as exc:
            raise RobotLinkError(
                f"{self.spec.name}: cannot reach the UR controller at {self.host}: {exc}"
            ) from None
        self._connected = True
        control = self._control
        self._streamer = ServoStreamer(
            lambda q: control.servoJ(*self.servoj_args(q)), self.servo_hz, self.spec.period_s, self.spec.name
        )
        self._streamer.start(self.read_state().position)

    def disconnect(self) -> None:
        if self._streamer is not None:
            self._streamer.stop()
            self._streamer = None
        if self._control is not None:
            try:
                self._control.servoStop(2.0)
                self._control.stopScript()
            finally:
                self._control.disconnect()
                self._control = None
        if self._receive is not None:
            self._receive.disconnect()
            self._receive = None
        self._connected = False

    def _require(self) -> None:
        if not self._connected:
            raise RobotNotConnectedError(f"{self.spec.name}: not connected")
        if not self._receive.isConnected():
            raise RobotLinkError(f"{self.spec.name}: RTDE connection to {self.host} lost")
        if self._streamer is not None and self._streamer.error is not None:
            raise RobotLinkError(f"{self.spec.name}: servoJ stream failed: {self._streamer.error}")

    def read_state(self) -> RobotState:
        self._require()
        if self._receive.isProtectiveStopped():
            raise RobotFaultError(f"{self.spec.name}: protective stop (clear it on the pendant)")
        return RobotState(
            stamp=time.monotonic(),
            position=np.asarray(self._receive.getActualQ(), dtype=np.float64),
            velocity=np.asarray(self._receive.getActualQd(), dtype=np.float64),
            estop=bool(self._receive.isEmergencyStopped()),
        )

    def command(self, target: np.ndarray) -> None:
        target = self.spec.clamp(self.spec.validate_target(target))
        self._require()
        self._streamer.set_target(target)

    def hold(self) -> None:
        self._require()
        self._streamer.hold_at(np.asarray(self._receive.getActualQ(), dtype=np.float64))
