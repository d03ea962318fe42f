"""The robot adapter contract.

Arms, grippers and mobile bases are adapters; a robot is a composition of them described by
``robots/<name>/robot.yaml``. Every adapter, simulated or hardware, obeys the same contract and is
checked by the conformance kit (``wall-runtime check-robot``) before it touches hardware.

Units: revolute joints in rad, prismatic joints and grippers in m (or ``normalized`` in [0, 1]
where the hardware only knows open/closed), base joints are *velocity* joints (``m/s`` for
``base_linear``, ``rad/s`` for ``base_angular``): their "position" in :class:`RobotState` and in a
command is the velocity.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field

import numpy as np

from wall_runtime.control.limits import JointLimits
from wall_runtime.types import RobotState

JOINT_KINDS = ("revolute", "prismatic", "gripper", "base_linear", "base_angular")
JOINT_UNITS = ("rad", "m", "m/s", "rad/s", "normalized")
# Which units make sense for which kind: a mismatch is a config error, not a silent conversion.
UNITS_FOR_KIND = {
    "revolute": ("rad",),
    "prismatic": ("m",),
    "gripper": ("m", "rad", "normalized"),
    "base_linear": ("m/s",),
    "base_angular": ("rad/s",),
}
VELOCITY_KINDS = ("base_linear", "base_angular")


class RobotError(RuntimeError):
    """Something went wrong talking to a robot; the message says which part and what."""


class RobotNotConnectedError(RobotError):
    """``read_state`` / ``command`` before ``connect`` or after ``disconnect``."""


class RobotLinkError(RobotError):
    """The link to the robot (or one of its servos) dropped: no answer within the timeout."""


class RobotFaultError(RobotError):
    """The hardware reported a fault (servo error bits, controller protective stop, ...)."""


@dataclass(frozen=True)
class JointSpec:
    name: str
    kind: str  # "revolute" | "prismatic" | "gripper" | "base_linear" | "base_angular"
    unit: str  # "rad" | "m" | "m/s" | "rad/s" | "normalized"
    limits: JointLimits = field(default_factory=JointLimits)

    @property
    def is_velocity(self) -> bool:
        """Base joints are commanded and reported as velocities."""
        return self.kind in VELOCITY_KINDS


@dataclass(frozen=True)
class RobotSpec:
    name: str
    joints: tuple[JointSpec, ...]
    control_hz: float
    capabilities: frozenset[str] = frozenset()  # e.g. {"forward_kinematics", "hardware_estop"}
    # After this long without a command the robot must be holding (arms) or at rest (bases).
    watchdog_timeout_s: float = 0.5

    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def dof(self) -> int:
        return len(self.joints)

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_hz

    @property
    def lower(self) -> np.ndarray:
        """Per-joint command floor (position, or velocity for base joints)."""
        return np.array([_lower(j) for j in self.joints], dtype=np.float64)

    @property
    def upper(self) -> np.ndarray:
        return np.array([_upper(j) for j in self.joints], dtype=np.float64)

    def clamp(self, target: np.ndarray) -> np.ndarray:
        """Clamp a target into the declared limits (the last line of defence in every adapter)."""
        return np.clip(np.asarray(target, dtype=np.float64), self.lower, self.upper)

    def validate_target(self, target: np.ndarray) -> np.ndarray:
        """A command target as a float64 vector, or a ``ValueError`` saying what is wrong with it."""
        arr = np.asarray(target, dtype=np.float64)
        if arr.shape != (self.dof,):
            raise ValueError(f"{self.name}: command has shape {arr.shape}, expected ({self.dof},)")
        bad = ~np.isfinite(arr)
        if bad.any():
            names = [self.joints[i].name for i in np.flatnonzero(bad)]
            raise ValueError(f"{self.name}: command is not finite for joint(s) {', '.join(names)}")
        return arr


def _lower(joint: JointSpec) -> float:
    if joint.is_velocity:
        v = joint.limits.max_velocity if joint.limits.has_velocity_limits else math.inf
        return max(-v, joint.limits.lower)
    return joint.limits.lower


def _upper(joint: JointSpec) -> float:
    if joint.is_velocity:
        v = joint.limits.max_velocity if joint.limits.has_velocity_limits else math.inf
        return min(v, joint.limits.upper)
    return joint.limits.upper


class RobotAdapter(abc.ABC):
    """One arm, gripper, base, or a composition of them.

    ``command`` takes a target in the spec's joint order and units; it must not block longer than
    one control period, refuses a non-finite or wrongly shaped target with ``ValueError`` (nothing
    is sent), and clamps into the declared limits. ``hold`` makes the robot stay where it is
    (arms) or come to rest within its limits (bases); it must be safe to call at any time,
    repeatedly, and from the watchdog. A dropped link raises :class:`RobotLinkError`; calling
    ``connect`` again re-establishes it.
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

    @property
    def is_connected(self) -> bool:
        return bool(getattr(self, "_connected", False))

    def forward_kinematics(self, position: np.ndarray) -> np.ndarray | None:
        """End-effector positions (``[n_ee, 3]``, metres, robot base frame) where the adapter knows them."""
        return None

    def __enter__(self) -> RobotAdapter:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
