"""Per-joint limits in the ros2_control ``joint_limits`` schema.

Field names follow ros2_control's ``JointLimits`` and ``SoftJointLimits`` so a
``joint_limits.yaml`` written for a ros2_control robot can be pasted into ``robot.yaml``:

.. code-block:: yaml

    joint_limits:
      shoulder_pan:
        has_position_limits: true
        min_position: -3.1
        max_position: 3.1
        has_velocity_limits: true
        max_velocity: 2.0
        has_acceleration_limits: true
        max_acceleration: 8.0
        has_jerk_limits: true
        max_jerk: 200.0
        has_effort_limits: false
        soft_lower_limit: -3.0   # soft limits (SoftJointLimits), optional
        soft_upper_limit: 3.0
        k_position: 10.0
        k_velocity: 1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any


class LimitsError(ValueError):
    """A joint-limits block is malformed; the message names the joint and the field."""


@dataclass(frozen=True)
class JointLimits:
    has_position_limits: bool = False
    min_position: float = -math.inf
    max_position: float = math.inf
    has_velocity_limits: bool = False
    max_velocity: float = math.inf
    has_acceleration_limits: bool = False
    max_acceleration: float = math.inf
    max_deceleration: float = math.inf
    has_jerk_limits: bool = False
    max_jerk: float = math.inf
    has_effort_limits: bool = False
    max_effort: float = math.inf
    angle_wraparound: bool = False
    # SoftJointLimits (from URDF <safety_controller>): a margin inside the hard position limits.
    soft_lower_limit: float | None = None
    soft_upper_limit: float | None = None
    k_position: float | None = None
    k_velocity: float | None = None

    @property
    def lower(self) -> float:
        """The position floor commands are held to: the soft limit where one is set."""
        lo = self.min_position if self.has_position_limits else -math.inf
        return max(lo, self.soft_lower_limit) if self.soft_lower_limit is not None else lo

    @property
    def upper(self) -> float:
        hi = self.max_position if self.has_position_limits else math.inf
        return min(hi, self.soft_upper_limit) if self.soft_upper_limit is not None else hi


_FIELDS = {f.name: f for f in fields(JointLimits)}


def parse_joint_limits(joint: str, block: dict[str, Any]) -> JointLimits:
    """Parse one joint's block; unknown keys and inconsistent values are errors naming the field."""
    if not isinstance(block, dict):
        raise LimitsError(f"joint_limits.{joint}: expected a mapping, got {type(block).__name__}")
    values: dict[str, Any] = {}
    for key, raw in block.items():
        if key not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise LimitsError(f"joint_limits.{joint}.{key}: unknown field (known: {known})")
        if key.startswith("has_") or key == "angle_wraparound":
            if not isinstance(raw, bool):
                raise LimitsError(f"joint_limits.{joint}.{key}: expected true or false, got {raw!r}")
            values[key] = raw
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise LimitsError(f"joint_limits.{joint}.{key}: expected a number, got {raw!r}") from None
        if math.isnan(value):
            raise LimitsError(f"joint_limits.{joint}.{key}: NaN is not a limit")
        values[key] = value
    # ros2_control only enforces a limit whose has_* flag is set; giving the value alone is the
    # common mistake, so a value implies its flag unless the flag is explicitly false.
    for flag, keys in {
        "has_position_limits": ("min_position", "max_position"),
        "has_velocity_limits": ("max_velocity",),
        "has_acceleration_limits": ("max_acceleration", "max_deceleration"),
        "has_jerk_limits": ("max_jerk",),
        "has_effort_limits": ("max_effort",),
    }.items():
        if flag not in values and any(k in values for k in keys):
            values[flag] = True
    limits = JointLimits(**values)
    if limits.has_position_limits and not limits.min_position < limits.max_position:
        raise LimitsError(f"joint_limits.{joint}: min_position must be below max_position")
    for key in ("max_velocity", "max_acceleration", "max_deceleration", "max_jerk", "max_effort"):
        if getattr(limits, key) <= 0:
            raise LimitsError(f"joint_limits.{joint}.{key}: must be positive")
    if (
        limits.soft_lower_limit is not None
        and limits.soft_upper_limit is not None
        and not limits.soft_lower_limit < limits.soft_upper_limit
    ):
        raise LimitsError(f"joint_limits.{joint}: soft_lower_limit must be below soft_upper_limit")
    return limits
