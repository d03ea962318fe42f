"""The robot adapter contract.

Arms, grippers and mobile bases are adapters; a robot is a composition of them described by
``robots/<name>/robot.yaml``. Every adapter, simulated or hardware, obeys the same contract and is
checked by the conformance kit (``wall-runtime check-robot``) before it touches hardware.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from wall_runtime.control.limits import JointLimits
from wall_runtime.types import RobotState


@dataclass(frozen=True)
class JointSpec:
    name: str
    kind: str  # "revolute" | "prismatic" | "gripper" | "base_linear" | "base_angular"
    unit: str  # "rad" | "m" | "m/s" | "rad/s" | "normalized"
    limits: JointLimits = field(default_factory=JointLimits)


@dataclass(frozen=True)
class RobotSpec:
    name: str
    joints: tuple[JointSpec, ...]
    control_hz: float
    capabilities: frozenset[str] = frozenset()  # e.g. {"forward_kinematics", "hardware_estop"}

    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def dof(self) -> int:
        return len(self.joints)


class RobotAdapter(abc.ABC):
    """One arm, gripper, base, or a composition of them.

    ``command`` takes a target in the spec's joint order and units; it must not block longer than
    one control period. ``hold`` makes the robot stay where it is (arms) or come to rest within its
    limits (bases); it must be safe to call at any time, repeatedly, and from the watchdog.
    """

    spec: RobotSpec

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def read_state(self) -> RobotState: ...

    @abc.abstractmethod
    def command(self, target: np.ndarray) -> None: ...

    @abc.abstractmethod
    def hold(self) -> None: ...

    @abc.abstractmethod
    def disconnect(self) -> None: ...

    def forward_kinematics(self, position: np.ndarray) -> np.ndarray | None:
        """End-effector positions (``[n_ee, 3]``, metres, robot base frame) where the adapter knows them."""
        return None

    def __enter__(self) -> RobotAdapter:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
