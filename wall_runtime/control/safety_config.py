"""The ``safety:`` block of ``robot.yaml``, parsed once into a :class:`SafetyConfig`.

Parsing is separate from the solver (:mod:`wall_runtime.control.safety_solver`): every value is
read here, as a finite number of the right type, and a block the chain could not satisfy
(a ``position_margin`` that leaves a joint no room, a ``gripper`` range outside the gripper's
limits, a ``safe_pose`` outside what the chain would command) is refused here, at load, with one
line naming the field, before anything is connected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wall_runtime.control.limits import finite_number
from wall_runtime.robot import JointSpec

FILTERS = ("finite", "position", "step", "velocity", "acceleration", "jerk", "workspace", "gripper", "base")
POSITION_KINDS = frozenset({"revolute", "prismatic", "gripper"})
BASE_KINDS = frozenset({"base_linear", "base_angular"})


class SafetyConfigError(ValueError):
    """The ``safety:`` block is malformed or cannot be satisfied; the message names the field."""


@dataclass(frozen=True)
class BaseLimits:
    max_linear_velocity: float = math.inf
    max_angular_velocity: float = math.inf
    max_linear_acceleration: float = math.inf
    max_angular_acceleration: float = math.inf


@dataclass(frozen=True)
class SafetyConfig:
    """The ``safety:`` block of ``robot.yaml`` (per-joint limits live in ``joint_limits``).

    .. code-block:: yaml

        safety:
          max_step: {default: 0.05, gripper: 0.2}   # or one number for every joint (per tick)
          position_margin: 0.02                      # inside the (soft) position limits; one number
                                                     # for arm joints, or {default: .., joint: ..}
          workspace: {min: [-0.5, -0.5, 0.0], max: [0.5, 0.5, 0.8]}
          gripper: {min: 0.0, max: 0.08}
          base: {max_linear_velocity: 0.5, max_angular_velocity: 1.0,
                 max_linear_acceleration: 1.0, max_angular_acceleration: 2.0}
          watchdog_timeout: 0.25
          disabled_filters: []                       # explicit, and warned about
    """

    max_step: Mapping[str, float] = field(default_factory=dict)
    position_margin: Mapping[str, float] = field(default_factory=dict)
    workspace_min: tuple[float, float, float] | None = None
    workspace_max: tuple[float, float, float] | None = None
    gripper_range: tuple[float, float] | None = None
    base: BaseLimits = field(default_factory=BaseLimits)
    watchdog_timeout: float = 0.25
    disabled: frozenset[str] = frozenset()

    @classmethod
    def from_dict(cls, block: Mapping[str, Any] | None, joints: Sequence[JointSpec] = ()) -> SafetyConfig:
        """Parse the block; with ``joints``, also check that the chain can satisfy it."""
        config = _parse(block, joints)
        if joints:
            check_satisfiable(config, joints)
        return config

    def step_for(self, joint: str) -> float:
        return float(self.max_step.get(joint, self.max_step.get("default", math.inf)))

    def margin_for(self, joint: str) -> float:
        return float(self.position_margin.get(joint, self.position_margin.get("default", 0.0)))

    def bounds_for(self, joint: JointSpec) -> tuple[float, float]:
        """The interval the chain holds a position joint's commands in: its (soft) position limits
        less ``position_margin``, and for a gripper also the ``gripper`` range."""
        margin = self.margin_for(joint.name)
        lo, hi = joint.limits.lower + margin, joint.limits.upper - margin
        if joint.kind == "gripper" and self.gripper_range is not None:
            lo, hi = max(lo, self.gripper_range[0]), min(hi, self.gripper_range[1])
        return lo, hi


_KNOWN = (
    "max_step",
    "position_margin",
    "workspace",
    "gripper",
    "base",
    "watchdog_timeout",
    "disabled_filters",
)


def _parse(block: Mapping[str, Any] | None, joints: Sequence[JointSpec]) -> SafetyConfig:
    block = {} if block is None else block
    if not isinstance(block, Mapping):
        raise SafetyConfigError(f"safety: expected a mapping, got {type(block).__name__}")
    if "max_relative_target" in block:  # LeRobot's name for the same per-tick step cap
        if "max_step" in block:
            raise SafetyConfigError("safety: give max_step or max_relative_target, not both")
        block = {("max_step" if k == "max_relative_target" else k): v for k, v in block.items()}
    for key in block:
        if key not in _KNOWN:
            raise SafetyConfigError(f"safety.{key}: unknown field (known: {', '.join(sorted(_KNOWN))})")
    values: dict[str, Any] = {}

    if block.get("max_step") is not None:
        values["max_step"] = _per_joint("safety.max_step", block["max_step"], joints, positive=True)

    if "position_margin" in block:
        values["position_margin"] = _per_joint("safety.position_margin", block["position_margin"], joints)

    if "workspace" in block:
        ws = block["workspace"]
        if not isinstance(ws, Mapping) or set(ws) != {"min", "max"}:
            raise SafetyConfigError("safety.workspace: expected {min: [x, y, z], max: [x, y, z]}")
        lo = _vector3("safety.workspace.min", ws["min"])
        hi = _vector3("safety.workspace.max", ws["max"])
        if not all(a < b for a, b in zip(lo, hi, strict=True)):
            raise SafetyConfigError("safety.workspace: every min must be below its max")
        values["workspace_min"], values["workspace_max"] = lo, hi

    if "gripper" in block:
        gr = block["gripper"]
        if not isinstance(gr, Mapping) or set(gr) != {"min", "max"}:
            raise SafetyConfigError("safety.gripper: expected {min: number, max: number}")
        lo_g, hi_g = _number("safety.gripper.min", gr["min"]), _number("safety.gripper.max", gr["max"])
        if not lo_g < hi_g:
            raise SafetyConfigError("safety.gripper: min must be below max")
        values["gripper_range"] = (lo_g, hi_g)

    if "base" in block:
        base = block["base"]
        if not isinstance(base, Mapping):
            raise SafetyConfigError("safety.base: expected a mapping")
        base_fields = set(BaseLimits.__dataclass_fields__)
        for key in base:
            if key not in base_fields:
                raise SafetyConfigError(
                    f"safety.base.{key}: unknown field (known: {', '.join(sorted(base_fields))})"
                )
        values["base"] = BaseLimits(**{k: _positive(f"safety.base.{k}", v) for k, v in base.items()})

    if "watchdog_timeout" in block:
        values["watchdog_timeout"] = _positive("safety.watchdog_timeout", block["watchdog_timeout"])

    disabled = block.get("disabled_filters", [])
    if not isinstance(disabled, list | tuple):
        raise SafetyConfigError("safety.disabled_filters: expected a list of filter names")
    for name in disabled:
        if name not in FILTERS:
            raise SafetyConfigError(
                f"safety.disabled_filters: unknown filter {name!r} (filters: {', '.join(FILTERS)})"
            )
        if name == "finite":
            raise SafetyConfigError("safety.disabled_filters: the finite check cannot be disabled")
    values["disabled"] = frozenset(disabled)
    return SafetyConfig(**values)


def check_satisfiable(config: SafetyConfig, joints: Sequence[JointSpec]) -> None:
    """Refuse a configuration the chain could not keep: every position joint needs room between
    its bounds (``SafetyConfig.bounds_for``)."""
    for j in joints:
        if j.kind not in POSITION_KINDS:
            continue
        lo, hi = config.bounds_for(j)
        if lo < hi or not (math.isfinite(lo) and math.isfinite(hi)):
            continue
        margin = config.margin_for(j.name)
        if j.kind == "gripper" and config.gripper_range is not None and margin == 0.0:
            raise SafetyConfigError(
                f"safety.gripper: [{config.gripper_range[0]}, {config.gripper_range[1]}] does not overlap "
                f"the limits of {j.name} [{j.limits.lower}, {j.limits.upper}]"
            )
        raise SafetyConfigError(
            f"safety.position_margin.{j.name}: {margin} leaves no room inside "
            f"[{j.limits.lower}, {j.limits.upper}]" + (" and safety.gripper" if j.kind == "gripper" else "")
        )


def check_safe_pose(config: SafetyConfig, joints: Sequence[JointSpec], pose: Sequence[float]) -> None:
    """The safe pose must be one the chain would command: inside every position joint's bounds."""
    for j, value in zip(joints, pose, strict=True):
        if j.kind not in POSITION_KINDS:
            continue
        lo, hi = config.bounds_for(j)
        if not lo - 1e-12 <= value <= hi + 1e-12:
            raise SafetyConfigError(
                f"safety.safe_pose.{j.name}: {value} is outside [{lo}, {hi}] "
                "(the limits less safety.position_margin"
                + (", within safety.gripper)" if j.kind == "gripper" else ")")
            )


def _per_joint(name: str, raw: Any, joints: Sequence[JointSpec], positive: bool = False) -> dict[str, float]:
    """One number (every arm joint: revolute and prismatic; grippers have their own range, so a
    margin in radians never lands on a gripper in metres) or ``{default: .., <joint>: ..}``."""
    names = [j.name for j in joints]
    check = _positive if positive else _non_negative
    if isinstance(raw, Mapping):
        out = {}
        for key, value in raw.items():
            if key != "default" and names and key not in names:
                raise SafetyConfigError(f"{name}.{key}: no such joint (joints: {', '.join(names)})")
            out[str(key)] = check(f"{name}.{key}", value)
        return out
    value = check(name, raw)
    if positive:
        return {"default": value}
    return (
        {j.name: value for j in joints if j.kind in ("revolute", "prismatic")}
        if joints
        else {"default": value}
    )


def _number(name: str, raw: Any) -> float:
    return finite_number(name, raw, SafetyConfigError)


def _non_negative(name: str, raw: Any) -> float:
    value = _number(name, raw)
    if value < 0:
        raise SafetyConfigError(f"{name}: must be zero or more, got {raw!r}")
    return value


def _positive(name: str, raw: Any) -> float:
    value = _number(name, raw)
    if value <= 0:
        raise SafetyConfigError(f"{name}: must be positive, got {raw!r}")
    return value


def _vector3(name: str, raw: Any) -> tuple[float, float, float]:
    if not isinstance(raw, list | tuple) or len(raw) != 3:
        raise SafetyConfigError(f"{name}: expected three numbers [x, y, z], got {raw!r}")
    x, y, z = (_number(f"{name}[{i}]", v) for i, v in enumerate(raw))
    return (x, y, z)
