"""A tiny random-weight WALL-OSS checkpoint shaped for one robot: the demo's embedded default.

Its action and state layout uses the robot's slots (robot.yaml ``model:``) in the generation's
convention (FLOW: absolute EE position + Euler; 0.5: relative position + 6D), its views the robot's
cameras, and its normalisation ranges sit around the robot's home pose, so the random policy's
chunks land inside the robot's working range and the whole pipeline — preprocessing, prompt, normalisers, sampler, transport,
scheduling, safety — runs exactly as it does with a published checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from wall_runtime.adapters.config import RobotConfig
from wall_runtime.model.tiny_checkpoint import TinyLayout, write_tiny_checkpoint

DEMO_HORIZON = 32  # WALL-OSS's chunk length


def _joint_range(config: RobotConfig, name: str) -> tuple[float, float]:
    """The middle fifth of a joint's range: a random-weight policy's chunks spread over a few
    normalised units, so statistics over the middle keep its motion away from the limits."""
    lim = {j.name: j for j in config.joints}[name].limits
    lo, hi = lim.lower, lim.upper
    if not (math.isfinite(lo) and math.isfinite(hi)):
        v = lim.max_velocity if math.isfinite(lim.max_velocity) else 1.0
        lo, hi = -v, v
    pad = 0.4 * (hi - lo)
    return lo + pad, hi - pad


def _home(config: RobotConfig) -> np.ndarray:
    """Where the arms' EE ranges centre: the safe pose, else each joint's mid-range."""
    if config.safe_pose is not None:
        return np.asarray(config.safe_pose, dtype=np.float64)
    return np.array([0.0 if j.is_velocity else (j.limits.lower + j.limits.upper) / 2 for j in config.joints])


EE_SPAN_M = 0.03  # ± around home: the random policy's EE targets stay within reach
EE_SPAN_RAD = 0.1


def demo_layout(config: RobotConfig, variant: str = "flow", horizon: int = DEMO_HORIZON) -> TinyLayout:
    """The robot's slots in the generation's convention (FLOW: absolute position + Euler + gripper;
    0.5: relative position + relative 6D + gripper, state absolute position + 6D + gripper), with
    normalisation ranges around the robot's home pose."""
    from wall_runtime.action_space import rotations as rot
    from wall_runtime.kinematics import load_robot_kinematics

    m = config.mapping
    kin = load_robot_kinematics(config) if m.arms else {}
    names = config.joint_names
    home = _home(config)
    dof: dict[str, int] = {}
    pos: dict[str, int] = {}
    a_rng: list[tuple[float, float]] = []
    s_rng: list[tuple[float, float]] = []

    def add(layout: dict[str, int], ranges: list, key: str, centre: np.ndarray, span: float) -> None:
        layout[key] = len(centre)
        ranges.extend((float(c - span), float(c + span)) for c in centre)

    for arm in m.arms:
        if arm.arm not in kin:
            raise ValueError(f"{config.path}: model.arms.{arm.slot}: no kinematics for arm {arm.arm!r}")
        k = kin[arm.arm]
        pose = k.fk(home[[names.index(n) for n in k.joint_names]])
        p, r = np.asarray(pose.position), np.asarray(pose.rotation)
        pre = f"follow_{arm.slot}_"
        if variant == "flow":
            for layout, ranges in ((dof, a_rng), (pos, s_rng)):
                add(layout, ranges, pre + "ee_cartesian_pos", p, EE_SPAN_M)
                add(layout, ranges, pre + "ee_rotation", rot.matrix_to_euler(r), EE_SPAN_RAD)
        else:
            add(dof, a_rng, pre + "ee_cartesian_pos_relative", np.zeros(3), EE_SPAN_M)
            add(dof, a_rng, pre + "ee_rotation_6D_relative", rot.matrix_to_6d(np.eye(3)), 0.1)
            add(pos, s_rng, pre + "ee_cartesian_pos", p, EE_SPAN_M)
            add(pos, s_rng, pre + "ee_rotation_6D", rot.matrix_to_6d(r), 0.1)
        if arm.gripper is not None:
            mid = float(np.mean(arm.gripper.model))
            span = 0.2 * abs(arm.gripper.model[1] - arm.gripper.model[0])
            for layout, ranges in ((dof, a_rng), (pos, s_rng)):
                add(layout, ranges, pre + "gripper", np.array([mid]), span)
    extra: list[tuple[str, list[str]]] = []
    if m.head:
        extra.append(("head_actions", list(m.head)))
    if m.height:
        extra.append(("height", [m.height]))
    if m.base:
        extra.append(("velocity_decomposed", [m.base.get(a, "") for a in ("vx", "vy", "vyaw")]))
    for key, joints in extra:
        for layout, ranges in ((dof, a_rng), (pos, s_rng)):
            layout[key] = len(joints)
            ranges.extend(_joint_range(config, j) if j else (-1.0, 1.0) for j in joints)
    for key, joints in m.joint_slots.items():
        for layout, ranges in ((dof, a_rng), (pos, s_rng)):
            layout[key] = len(joints)
            ranges.extend(_joint_range(config, j) for j in joints)

    def stats(ranges: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
        arr = np.asarray(ranges, dtype=np.float32)
        return arr[:, 0].copy(), arr[:, 1].copy()

    views = tuple(str(c.get("view", name)) for name, c in _camera_devices(config).items())
    return TinyLayout(
        dof_config=dof,
        agent_pos_config=pos,
        views=views,
        horizon=horizon,
        action_range=stats(a_rng),
        state_range=stats(s_rng),
    )


def _camera_devices(config: RobotConfig) -> dict[str, dict]:
    block = config.cameras or {}
    devices = block.get("devices", {}) if isinstance(block, dict) else {}
    return {str(k): (v or {}) for k, v in devices.items()}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wall-runtime"


def demo_checkpoint(config: RobotConfig, variant: str = "flow", root: Path | None = None) -> Path:
    """The robot's demo checkpoint, written once and reused while its layout is unchanged."""
    layout = demo_layout(config, variant)
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "variant": variant,
                "dof": layout.dof_config,
                "pos": layout.agent_pos_config,
                "views": layout.views,
                "horizon": layout.horizon,
                "a": [r.tolist() for r in layout.action_range],
                "s": [r.tolist() for r in layout.state_range],
                "version": 6,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]
    out = (root or cache_root()) / f"demo-{config.name}-{variant}-{fingerprint}"
    if not (out / "config.json").exists():
        write_tiny_checkpoint(
            out, variant, layout=layout, norm_key=config.mapping.norm_key, normalizers="pth"
        )
    return out
