"""Per-joint limits in the ros2_control ``joint_limits`` schema.

Field names follow ros2_control's ``joint_limits.yaml`` (``JointLimits`` and ``SoftJointLimits``,
as read by ``joint_limits_rosparam``) so a block written for a ros2_control robot can be pasted
into ``robot.yaml`` as it is:

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
        has_deceleration_limits: true
        max_deceleration: 12.0    # slowing down (same sign, smaller speed); default max_acceleration
        has_jerk_limits: true
        max_jerk: 200.0
        has_effort_limits: false
        angle_wraparound: false
        has_soft_limits: true     # SoftJointLimits (URDF <safety_controller>)
        soft_lower_limit: -3.0
        soft_upper_limit: 3.0
        k_position: 10.0
        k_velocity: 1.0

What the safety chain uses: the position limits, narrowed to the soft limits where
``has_soft_limits`` (commands are held inside ``[soft_lower_limit, soft_upper_limit]``, a stricter
rule than ros2_control's soft-limit velocity law, so ``k_position`` / ``k_velocity`` are accepted
and kept but not used); velocity; acceleration when speeding up and deceleration when slowing
down; jerk. ``max_effort`` and ``angle_wraparound`` are accepted and kept for the adapters.

Every value is checked where it is read: flags must be YAML booleans, limits finite numbers
(``true``, ``"2"`` and ``.inf`` are errors naming the field: a limit that is not there is left
out, or switched off with its ``has_*`` flag). A value given without its flag implies the flag
(the common mistake in ros2_control files), unless the flag is explicitly ``false``; a flag set
without its value is an error.
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
    has_deceleration_limits: bool = False
    max_deceleration: float = math.inf
    has_jerk_limits: bool = False
    max_jerk: float = math.inf
    has_effort_limits: bool = False
    max_effort: float = math.inf
    angle_wraparound: bool = False
    # SoftJointLimits (from URDF <safety_controller>): a margin inside the hard position limits.
    has_soft_limits: bool = False
    soft_lower_limit: float | None = None
    soft_upper_limit: float | None = None
    k_position: float | None = None
    k_velocity: float | None = None

    @property
    def lower(self) -> float:
        """The position floor commands are held to: the soft limit where one is set."""
        lo = self.min_position if self.has_position_limits else -math.inf
        if self.has_soft_limits and self.soft_lower_limit is not None:
            return max(lo, self.soft_lower_limit)
        return lo

    @property
    def upper(self) -> float:
        hi = self.max_position if self.has_position_limits else math.inf
        if self.has_soft_limits and self.soft_upper_limit is not None:
            return min(hi, self.soft_upper_limit)
        return hi

    @property
    def velocity(self) -> float:
        """The speed limit in force (``inf`` when there is none)."""
        return self.max_velocity if self.has_velocity_limits else math.inf

    @property
    def acceleration(self) -> float:
        """The acceleration limit when speeding up (``inf`` when there is none)."""
        return self.max_acceleration if self.has_acceleration_limits else math.inf

    @property
    def deceleration(self) -> float:
        """The acceleration limit when slowing down: ``max_deceleration`` where its flag is set,
        else the acceleration limit (as ros2_control's limiters do)."""
        return self.max_deceleration if self.has_deceleration_limits else self.acceleration

    @property
    def jerk(self) -> float:
        return self.max_jerk if self.has_jerk_limits else math.inf


_FIELDS = {f.name: f for f in fields(JointLimits)}
_FLAGS = frozenset(k for k in _FIELDS if k.startswith("has_")) | {"angle_wraparound"}
# each has_* flag and the values it switches on
_FLAG_VALUES = {
    "has_position_limits": ("min_position", "max_position"),
    "has_velocity_limits": ("max_velocity",),
    "has_acceleration_limits": ("max_acceleration",),
    "has_deceleration_limits": ("max_deceleration",),
    "has_jerk_limits": ("max_jerk",),
    "has_effort_limits": ("max_effort",),
    "has_soft_limits": ("soft_lower_limit", "soft_upper_limit"),
}
_POSITIVE = ("max_velocity", "max_acceleration", "max_deceleration", "max_jerk", "max_effort")


def finite_number(where: str, raw: Any, error: type[ValueError] = ValueError) -> float:
    """``raw`` as a float when it is a real, finite YAML number (an int or a float, not a bool or a
    string); otherwise ``error`` naming ``where``."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise error(f"{where}: expected a number, got {raw!r}")
    value = float(raw)
    if not math.isfinite(value):
        raise error(f"{where}: expected a finite number, got {raw!r} (leave a limit out to have none)")
    return value


def parse_joint_limits(joint: str, block: dict[str, Any]) -> JointLimits:
    """Parse one joint's block; unknown keys and inconsistent values are errors naming the field."""
    if not isinstance(block, dict):
        raise LimitsError(f"joint_limits.{joint}: expected a mapping, got {type(block).__name__}")
    values: dict[str, Any] = {}
    for key, raw in block.items():
        where = f"joint_limits.{joint}.{key}"
        if key not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise LimitsError(f"{where}: unknown field (known: {known})")
        if key in _FLAGS:
            if not isinstance(raw, bool):
                raise LimitsError(f"{where}: expected true or false, got {raw!r}")
            values[key] = raw
            continue
        values[key] = finite_number(where, raw, LimitsError)
    for flag, keys in _FLAG_VALUES.items():
        given = [k for k in keys if k in values]
        if flag not in values:
            values[flag] = bool(given)
        elif values[flag] and flag != "has_soft_limits" and not given:
            raise LimitsError(f"joint_limits.{joint}.{flag}: true, but no {' / '.join(keys)} is given")
        elif values[flag] and flag == "has_soft_limits" and len(given) < 2:
            raise LimitsError(
                f"joint_limits.{joint}.has_soft_limits: needs soft_lower_limit and soft_upper_limit"
            )
    if values["has_position_limits"] and not ("min_position" in values and "max_position" in values):
        raise LimitsError(f"joint_limits.{joint}.min_position: position limits need both min and max")
    limits = JointLimits(**values)
    if limits.has_position_limits and not limits.min_position < limits.max_position:
        raise LimitsError(f"joint_limits.{joint}: min_position must be below max_position")
    flag_of = {k: flag for flag, keys in _FLAG_VALUES.items() for k in keys}
    for key in _POSITIVE:
        # a value switched off by its flag is not a limit (ros2_control files often carry 0.0)
        if key in values and values[flag_of[key]] and values[key] <= 0:
            raise LimitsError(f"joint_limits.{joint}.{key}: must be positive, got {block[key]!r}")
    for key in ("k_position", "k_velocity"):
        if key in values and values[key] < 0:
            raise LimitsError(f"joint_limits.{joint}.{key}: must be zero or more, got {block[key]!r}")
    if limits.has_soft_limits:
        lo, hi = limits.soft_lower_limit, limits.soft_upper_limit
        assert lo is not None and hi is not None
        if not lo < hi:
            raise LimitsError(f"joint_limits.{joint}.soft_lower_limit: must be below soft_upper_limit")
        if limits.has_position_limits and not (lo < limits.max_position and hi > limits.min_position):
            raise LimitsError(
                f"joint_limits.{joint}.soft_lower_limit: [{lo}, {hi}] leaves no room inside "
                f"[{limits.min_position}, {limits.max_position}]"
            )
    return limits
