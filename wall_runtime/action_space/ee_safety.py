"""Safety on end-effector targets, before inverse kinematics.

A chunk's EE waypoints for one arm pass, in time order: finite and a proper rotation (an
unnormalisable 6D is not one), inside the arm's workspace box (its base frame), and no faster than
the maximum linear / angular EE speed from the previous waypoint (the observation's pose before the
first): a too-fast step is shortened along its own direction (counted). A waypoint that fails the
first two checks is dropped with every later one — later waypoints were planned from it — and so is
one whose inverse kinematics fails or leaves a residual beyond tolerance (checked by the edge after
IK). The joint safety chain after IK is unchanged: this is an extra layer, never a replacement.

Configured by robot.yaml ``safety.ee``::

    safety:
      ee:
        workspace: {min: [x, y, z], max: [x, y, z]}   # or {left: {min, max}, right: {...}}
        max_linear_speed: 0.5      # m/s
        max_angular_speed: 3.0     # rad/s
        position_tolerance: 0.005  # m, IK residual
        orientation_tolerance: 0.05  # rad, IK residual (not enforced on position-only arms)
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wall_runtime.action_space.rotations import is_rotation, rotation_angle


class EELimitsError(ValueError):
    """``safety.ee`` is malformed; the message names the field."""


@dataclass(frozen=True)
class EELimits:
    workspace: dict[str | None, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # arm -> box
    max_linear_speed: float = math.inf
    max_angular_speed: float = math.inf
    position_tolerance: float = 0.005
    orientation_tolerance: float = 0.05

    def box(self, arm: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self.workspace.get(arm, self.workspace.get(None))

    @classmethod
    def from_dict(cls, raw: Any, where: str = "safety.ee") -> EELimits:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise EELimitsError(f"{where}: expected a mapping, got {type(raw).__name__}")
        known = (
            "workspace",
            "max_linear_speed",
            "max_angular_speed",
            "position_tolerance",
            "orientation_tolerance",
        )
        for key in raw:
            if key not in known:
                raise EELimitsError(f"{where}.{key}: unknown field (known: {', '.join(known)})")

        def positive(key: str, default: float) -> float:
            v = raw.get(key, default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise EELimitsError(f"{where}.{key}: expected a positive number, got {v!r}")
            return float(v)

        def box(block: Any, at: str) -> tuple[np.ndarray, np.ndarray]:
            if not isinstance(block, dict) or set(block) != {"min", "max"}:
                raise EELimitsError(f"{at}: expected {{min: [x, y, z], max: [x, y, z]}}")
            lo, hi = (np.asarray(block[k], dtype=np.float64) for k in ("min", "max"))
            if lo.shape != (3,) or hi.shape != (3,) or not np.all(np.isfinite(lo) & np.isfinite(hi)):
                raise EELimitsError(f"{at}: min and max are three finite numbers each")
            if np.any(lo >= hi):
                raise EELimitsError(f"{at}: min must be below max on every axis")
            return lo, hi

        workspace: dict[str | None, tuple[np.ndarray, np.ndarray]] = {}
        ws = raw.get("workspace")
        if ws is not None:
            if isinstance(ws, dict) and set(ws) <= {"left", "right"} and ws:
                for arm, block in ws.items():
                    workspace[arm] = box(block, f"{where}.workspace.{arm}")
            else:
                workspace[None] = box(ws, f"{where}.workspace")
        return cls(
            workspace=workspace,
            max_linear_speed=positive("max_linear_speed", math.inf),
            max_angular_speed=positive("max_angular_speed", math.inf),
            position_tolerance=positive("position_tolerance", 0.005),
            orientation_tolerance=positive("orientation_tolerance", 0.05),
        )


def _axis_angle(r: np.ndarray) -> tuple[np.ndarray, float]:
    """Rotation matrix → (unit axis, angle in [0, π])."""
    angle = float(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)))
    if angle < 1e-9:
        return np.array([1.0, 0.0, 0.0]), 0.0
    if math.pi - angle < 1e-6:
        # near π the skew part vanishes: the axis is the column of R + I with the largest norm
        m = r + np.eye(3)
        axis = m[:, int(np.argmax(np.linalg.norm(m, axis=0)))]
        return axis / np.linalg.norm(axis), angle
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2.0 * math.sin(angle))
    return axis, angle


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def check_ee_waypoints(
    arm: str,
    positions: np.ndarray,
    rotations: np.ndarray,
    start: tuple[np.ndarray, np.ndarray],
    dt: float,
    limits: EELimits,
    counts: Counter,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One arm's waypoints ``[H, 3]``, ``[H, 3, 3]`` from the pose ``start`` → the checked
    waypoints and how many lead rows are valid (the rest are dropped; counted in ``counts``)."""
    p_out = np.array(positions, dtype=np.float64)
    r_out = np.array(rotations, dtype=np.float64)
    prev_p, prev_r = (np.asarray(x, dtype=np.float64) for x in start)
    finite = np.all(np.isfinite(p_out), axis=-1) & np.all(np.isfinite(r_out), axis=(-2, -1))
    proper = is_rotation(np.where(finite[:, None, None], r_out, np.eye(3)), tol=1e-4) & finite
    box = limits.box(arm)
    max_step = limits.max_linear_speed * dt
    max_turn = limits.max_angular_speed * dt
    for i in range(len(p_out)):
        if not proper[i]:
            counts["ee_invalid"] += len(p_out) - i
            return p_out, r_out, i
        if box is not None and not np.all((box[0] <= p_out[i]) & (p_out[i] <= box[1])):
            counts["ee_workspace"] += len(p_out) - i
            return p_out, r_out, i
        step = p_out[i] - prev_p
        dist = float(np.linalg.norm(step))
        if dist > max_step:
            p_out[i] = prev_p + step * (max_step / dist)
            counts["ee_linear_speed"] += 1
        turn = float(rotation_angle(prev_r, r_out[i]))
        if turn > max_turn:
            axis, angle = _axis_angle(prev_r.T @ r_out[i])
            r_out[i] = prev_r @ _rotation(axis, max_turn)
            counts["ee_angular_speed"] += 1
            del angle
        prev_p, prev_r = p_out[i], r_out[i]
    return p_out, r_out, len(p_out)
