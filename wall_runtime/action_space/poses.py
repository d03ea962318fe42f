"""Per-arm poses ``[x, y, z, roll, pitch, yaw, gripper]`` (the authors' serving rows, spec §11) to and
from a checkpoint's vectors, without a robot: what ``predict`` speaks for EE checkpoints.

Going in, an arm's pose fills its state slots (position; Euler, or the 6D of the Euler's matrix;
gripper). Coming out, each action row becomes an absolute pose in the base frame — FLOW's as it is,
0.5's composed onto the observation's pose (``R = GS(rel6d) · R_state``, ``p = p_state + dp``) —
with Euler wrapped to ``[-π, π)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from wall_runtime.action_space import rotations as rot
from wall_runtime.action_space.layout import Layout


class PoseError(ValueError):
    """A pose does not fit the checkpoint's layout."""


def _check(pose: np.ndarray, arm: str) -> np.ndarray:
    pose = np.asarray(pose, dtype=np.float64).reshape(-1)
    if pose.shape != (7,) or not np.all(np.isfinite(pose)):
        raise PoseError(f"pose.{arm} must be 7 finite floats [x, y, z, roll, pitch, yaw, gripper]")
    return pose


def state_from_poses(layout: Layout, poses: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The state vector and its mask from per-arm poses (slots of other arms stay 0, masked)."""
    state = np.zeros(layout.dim, dtype=np.float64)
    mask = np.zeros(layout.dim, dtype=np.float32)
    for arm, raw in poses.items():
        pose = _check(raw, arm)
        if arm not in layout.arms():
            raise PoseError(f"pose.{arm}: the checkpoint's {layout.name} has no follow_{arm}_* slots")
        r = rot.euler_to_matrix(pose[3:6])
        for s in layout.slots:
            if s.arm != arm:
                continue
            value = {
                "ee_position": pose[:3],
                "ee_euler": rot.wrap_angle(pose[3:6]),
                "ee_rotation_6d": rot.matrix_to_6d(r),
                "gripper": pose[6:7],
            }.get(s.kind)
            if value is None:
                raise PoseError(f"{layout.name}.{s.key}: a {s.kind} slot cannot be filled from a pose")
            state[s.start : s.start + len(value)] = value
            mask[s.start : s.start + len(value)] = 1.0
    return state.astype(np.float32), mask


def dof_mask_for(layout: Layout, arms: list[str]) -> np.ndarray:
    """1 on every action slot of the given arms."""
    mask = np.zeros(layout.dim, dtype=np.float32)
    for s in layout.slots:
        if s.arm in arms and s.kind != "joints":
            mask[s.start : s.start + (1 if s.kind == "gripper" else s.width)] = 1.0
    return mask


def poses_from_actions(
    layout: Layout, actions: np.ndarray, observed: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Action rows ``[H, D]`` (robot units) → per-arm absolute poses ``[H, 7]`` in the base frame."""
    actions = np.asarray(actions, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for arm, raw in observed.items():
        pose0 = _check(raw, arm)
        pos_kind, rot_kind = layout.arm_convention(arm)
        if pos_kind is None:
            continue
        p = actions[:, layout.find(pos_kind, arm).index]
        r_raw = actions[:, layout.find(rot_kind, arm).index]
        if pos_kind == "ee_position_relative":
            p, r = rot.compose_relative(pose0[:3], rot.euler_to_matrix(pose0[3:6]), p, r_raw)
        else:
            r = rot.euler_to_matrix(r_raw) if rot_kind == "ee_euler" else rot.sixd_to_matrix(r_raw)
        grip = layout.find("gripper", arm)
        g = actions[:, grip.start] if grip is not None else np.full(len(actions), pose0[6])
        out[arm] = np.column_stack([p, rot.matrix_to_euler(r), g])
    return out
