"""A tiny random-weight WALL-OSS checkpoint shaped for one robot: the demo's embedded default.

Its action and state layout, views and normalisation ranges follow the robot's ``robot.yaml``
(model dims, joint limits, camera views), so the random policy's chunks land inside the robot's
working range and the whole pipeline — preprocessing, prompt, normalisers, sampler, transport,
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


def _ranges(config: RobotConfig, index: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    n_real = max(index) + 1
    q01 = np.full(n_real, -1.0, dtype=np.float32)
    q99 = np.full(n_real, 1.0, dtype=np.float32)
    for joint, dim in zip(config.joints, index, strict=True):
        lim = joint.limits
        lo, hi = lim.lower, lim.upper
        if not (math.isfinite(lo) and math.isfinite(hi)):
            v = lim.max_velocity if math.isfinite(lim.max_velocity) else 1.0
            lo, hi = -v, v
        # a random-weight policy's chunks spread over a few normalised units; statistics spanning
        # the middle fifth of each joint's range keep its motion around mid-range, not at the limits
        pad = 0.4 * (hi - lo)
        q01[dim], q99[dim] = lo + pad, hi - pad
    return q01, q99


def demo_layout(config: RobotConfig, horizon: int = DEMO_HORIZON) -> TinyLayout:
    mapping = config.mapping
    views = tuple(str(c.get("view", name)) for name, c in _camera_devices(config).items())
    a_real = max(mapping.action_index) + 1
    s_real = max(mapping.state_index) + 1
    dof = {f"{config.name}_action": a_real}
    pos = {f"{config.name}_state": s_real}
    if mapping.action_dim > a_real:
        dof["action_padding"] = mapping.action_dim - a_real
    if mapping.state_dim > s_real:
        pos["action_padding"] = mapping.state_dim - s_real
    return TinyLayout(
        dof_config=dof,
        agent_pos_config=pos,
        views=views,
        horizon=horizon,
        action_range=_ranges(config, mapping.action_index),
        state_range=_ranges(config, mapping.state_index),
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
    layout = demo_layout(config)
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
                "version": 5,
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
