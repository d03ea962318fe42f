"""Any LeRobot ``Robot`` behind our adapter contract (optional extra: ``wall-runtime[lerobot]``).

LeRobot robots speak dictionaries (``get_observation()`` -> ``{"shoulder_pan.pos": 12.3, ...,
"front": image}``, ``send_action({...})``) in their own units (degrees, or -100..100 for
normalised motors). The bridge maps each of our joints to one LeRobot key and converts units
with ``value_ours = value_lerobot * scale + offset``; images are left to the camera layer.

.. code-block:: yaml

    parts:
      - name: arm
        type: lerobot
        joints: [shoulder_pan, ..., gripper]
        connection:
          robot_type: so101_follower          # a LeRobot RobotConfig choice name
          config: {port: /dev/ttyACM0, id: my_arm}
          keys: {shoulder_pan: shoulder_pan.pos, ..., gripper: gripper.pos}
          scale: {shoulder_pan: 0.0174533, ..., gripper: 0.0174533}   # degrees -> rad
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.adapters.config import Connection
from wall_runtime.robot import RobotAdapter, RobotLinkError, RobotNotConnectedError, RobotSpec
from wall_runtime.types import RobotState


def connect_lerobot(robot: Any, calibrate: bool, retries: int, what: str) -> None:
    """``robot.connect``, tried ``retries`` more times; a failed try is undone first (LeRobot
    leaves the port open when its handshake fails, and refuses to connect twice)."""
    for attempt in range(retries + 1):
        try:
            robot.connect(calibrate=calibrate)
            return
        except Exception as exc:  # LeRobot raises its own ConnectionError / RuntimeError types
            bus = getattr(robot, "bus", None)
            port = getattr(bus, "port_handler", None)
            if port is not None and getattr(port, "is_open", False):
                port.closePort()
            if attempt == retries:
                raise RobotLinkError(f"{what} did not connect: {exc}") from exc
            time.sleep(0.05)


class LeRobotBridge(RobotAdapter):
    def __init__(self, spec: RobotSpec, connection: Connection, root: Path, robot: Any = None) -> None:
        self.spec = spec
        names = spec.joint_names
        self.robot_type = connection.str("robot_type")
        self.robot_config = dict(connection.raw("config", {}) or {})
        self.keys = connection.per_joint("keys", names, str)
        self.scale = connection.per_joint("scale", names, float, default={n: math.pi / 180 for n in names})
        self.offset = connection.per_joint("offset", names, float, default={n: 0.0 for n in names})
        self.calibrate = connection.bool("calibrate", False)
        # a lost first packet on a freshly opened bus makes LeRobot's handshake fail: try again
        self.retries = connection.int("retries", 1, 0, 10)
        self._scale = np.array([self.scale[n] for n in names])
        self._offset = np.array([self.offset[n] for n in names])
        if np.any(self._scale == 0):
            raise ValueError("connection.scale: a zero scale cannot be inverted")
        self._robot = robot  # injected (tests, or a robot the caller built itself)
        self._connected = False

    def to_ours(self, observation: dict[str, Any]) -> np.ndarray:
        missing = [k for k in self.keys.values() if k not in observation]
        if missing:
            raise RobotLinkError(f"{self.spec.name}: LeRobot observation lacks {missing}")
        raw = np.array([float(observation[self.keys[n]]) for n in self.spec.joint_names])
        return raw * self._scale + self._offset

    def to_lerobot(self, target: np.ndarray) -> dict[str, float]:
        raw = (np.asarray(target) - self._offset) / self._scale
        return {self.keys[n]: float(v) for n, v in zip(self.spec.joint_names, raw, strict=True)}

    def _make_robot(self) -> Any:
        try:
            from lerobot.robots import RobotConfig, make_robot_from_config
        except ImportError as exc:
            raise ImportError(
                "the LeRobot bridge needs lerobot: pip install 'wall-runtime[lerobot]'"
            ) from exc
        import draccus

        config_cls = RobotConfig.get_choice_class(self.robot_type)
        # draccus (LeRobot's config library) types the plain YAML values (paths, nested configs)
        try:
            config = draccus.decode(config_cls, self.robot_config)
        except Exception as exc:
            raise ValueError(
                f"{self.spec.name}: connection.config for LeRobot {self.robot_type}: {exc}"
            ) from None
        return make_robot_from_config(config)

    def connect(self) -> None:
        if self._robot is None:
            self._robot = self._make_robot()
        if not self._robot.is_connected:
            connect_lerobot(
                self._robot, self.calibrate, self.retries, f"{self.spec.name}: LeRobot {self.robot_type}"
            )
        self._connected = True

    def disconnect(self) -> None:
        if self._connected and self._robot is not None and self._robot.is_connected:
            self._robot.disconnect()
        self._connected = False

    def _observe(self) -> dict[str, Any]:
        if not self._connected:
            raise RobotNotConnectedError(f"{self.spec.name}: not connected")
        try:
            return self._robot.get_observation()
        except Exception as exc:
            raise RobotLinkError(f"{self.spec.name}: LeRobot get_observation failed: {exc}") from exc

    def read_state(self) -> RobotState:
        return RobotState(stamp=time.monotonic(), position=self.to_ours(self._observe()))

    def command(self, target: np.ndarray) -> None:
        target = self.spec.clamp(self.spec.validate_target(target))
        if not self._connected:
            raise RobotNotConnectedError(f"{self.spec.name}: not connected")
        try:
            self._robot.send_action(self.to_lerobot(target))
        except Exception as exc:
            raise RobotLinkError(f"{self.spec.name}: LeRobot send_action failed: {exc}") from exc

    def hold(self) -> None:
        position = self.to_ours(self._observe())
        self._robot.send_action(self.to_lerobot(self.spec.clamp(position)))
