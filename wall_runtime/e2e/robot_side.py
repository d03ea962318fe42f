"""The robot host's side of a run, built from ``robots/<name>/robot.yaml``.

It ties the parts together: the composed adapter, the cameras (simulated ones rendered by the
simulator), the model mapping (joint ↔ model dims, masks, norm key) and the observation provider
the control loop calls. The provider never blocks: it takes the newest synchronised camera
snapshot, or returns ``None`` (counted) when the cameras have nothing fresh enough.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.adapters.config import RobotConfig, load_robot
from wall_runtime.adapters.registry import build_adapter
from wall_runtime.cameras.config import CamerasConfig
from wall_runtime.cameras.group import CameraGroup, SnapshotError
from wall_runtime.control.safety import SafetyConfig
from wall_runtime.robot import RobotAdapter, RobotSpec
from wall_runtime.types import Observation, RobotState

log = logging.getLogger(__name__)


@dataclass
class RobotSide:
    config: RobotConfig
    adapter: RobotAdapter
    cameras: CameraGroup | None
    safety: SafetyConfig
    camera_refusals: Counter = field(default_factory=Counter)

    @property
    def joint_dims(self) -> tuple[int, ...]:
        return self.config.mapping.action_index

    @property
    def safe_pose(self) -> list[float] | None:
        pose = self.config.safe_pose
        return None if pose is None else list(pose)

    def start(self) -> None:
        """Connect the robot, then start the cameras (a simulated camera renders the connected sim)."""
        self.adapter.connect()
        if self.cameras is not None:
            self.cameras.start()

    def observer(self, instruction: str) -> Callable[[RobotState, float], Observation | None]:
        mapping = self.config.mapping
        dof_mask = mapping.dof_mask
        state_mask = mapping.state_mask

        def observe(state: RobotState, now: float) -> Observation | None:
            images: dict[str, np.ndarray] = {}
            stamp = state.stamp
            if self.cameras is not None:
                try:
                    snap = self.cameras.snapshot()
                except SnapshotError as exc:
                    self.camera_refusals[exc.reason] += 1
                    return None
                images = snap.images(self.cameras.views)
                # the observation is as old as its oldest part
                stamp = min(stamp, snap.stamp)
            return Observation(
                stamp=stamp,
                images=images,
                state=mapping.state_vector(state.position),
                instruction=instruction,
                state_mask=state_mask,
                dof_mask=dof_mask,
                norm_key=mapping.norm_key,
            )

        return observe

    def latest_images(self) -> dict[str, np.ndarray] | None:
        """The newest frame of each camera, keyed by model view, without the sync checks (for the
        recorder: a frame per tick, whatever the cameras have); ``None`` when one has none yet."""
        if self.cameras is None:
            return None
        out: dict[str, np.ndarray] = {}
        for name, cam in self.cameras.cameras.items():
            try:
                out[self.cameras.views.get(name, name)] = cam.latest().image
            except Exception:  # no frame yet, or stalled: the recorder repeats the last one
                return None
        return out

    def close(self) -> None:
        if self.cameras is not None:
            self.cameras.stop()
        self.adapter.disconnect()


def camera_group(config: RobotConfig, adapter: RobotAdapter) -> CameraGroup | None:
    """The robot's cameras from its ``cameras:`` block; simulated ones render through the adapter."""
    from wall_runtime.cameras.factory import make_group

    block: Any = config.cameras
    if not block:
        return None
    cams = CamerasConfig.from_dict(block)
    renderers = {}
    render = getattr(adapter, "render", None)
    for cam in cams.cameras:
        if cam.type == "simulated":
            if render is None:
                raise ValueError(
                    f"cameras.devices.{cam.name}: simulated camera on a robot that renders nothing"
                )
            # a simulated camera is named after the MJCF camera it renders
            renderers[cam.name] = lambda s=cam.name, w=cam.width, h=cam.height, r=render: r(s, w, h)
    return make_group(cams, renderers=renderers, base_dir=config.root)


def load_robot_side(path: str | Path) -> RobotSide:
    config = load_robot(path)
    adapter = build_adapter(config)
    safety = safety_config(config, adapter.spec)
    return RobotSide(config=config, adapter=adapter, cameras=camera_group(config, adapter), safety=safety)


def safety_config(config: RobotConfig, spec: RobotSpec) -> SafetyConfig:
    """The control loop's safety settings from the ``safety:`` block (``safe_pose`` is the loop's)."""
    return SafetyConfig.from_dict({k: v for k, v in config.safety.items() if k != "safe_pose"}, spec.joints)
