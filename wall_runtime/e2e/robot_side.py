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

from wall_runtime.action_space.edge import FitError, ModelEdge, build_edge
from wall_runtime.action_space.source import EdgeSource
from wall_runtime.adapters.config import RobotConfig, load_robot
from wall_runtime.adapters.registry import build_adapter
from wall_runtime.cameras.config import CamerasConfig
from wall_runtime.cameras.group import CameraGroup, SnapshotError
from wall_runtime.control.safety import SafetyConfig
from wall_runtime.robot import RobotAdapter, RobotSpec
from wall_runtime.types import Observation, PolicyMetadata, RobotState

log = logging.getLogger(__name__)


@dataclass
class RobotSide:
    config: RobotConfig
    adapter: RobotAdapter
    cameras: CameraGroup | None
    safety: SafetyConfig
    kinematics: dict[str, Any] = field(default_factory=dict)  # arm name -> ArmKinematics
    camera_refusals: Counter = field(default_factory=Counter)
    calibration: Any = None  # LoadedCalibration: what calibration/<robot>/ held

    @property
    def camera_extrinsics(self) -> dict[str, np.ndarray]:
        """Model view -> 4x4 camera pose from ``calibrate hand-eye`` (in the gripper frame for an
        eye-in-hand camera, the base frame for eye-to-hand; ``calibration.camera_frames[view]``)."""
        return {} if self.calibration is None else self.calibration.camera_extrinsics

    @property
    def fixed_camera_poses(self) -> dict[str, np.ndarray]:
        """The eye-to-hand cameras' poses in the base frame (what a 3D view can draw as is)."""
        frames = {} if self.calibration is None else self.calibration.camera_frames
        return {v: t for v, t in self.camera_extrinsics.items() if frames.get(v) == "base"}

    def edge(self, meta: PolicyMetadata) -> ModelEdge:
        """The model edge for the policy's layouts, or a :class:`FitError` naming the slot that does
        not fit (refused at the handshake)."""
        if not meta.dof_config or not meta.agent_pos_config:
            raise FitError(
                f"the policy ({meta.model}, {meta.backend}) does not report its dof_config / "
                "agent_pos_config, so its slots cannot be mapped onto this robot's parts"
            )
        return build_edge(
            self.config.joints,
            self.config.mapping,
            meta.dof_config,
            meta.agent_pos_config,
            self.kinematics,
            self.config.ee_limits,
            horizon=meta.action_horizon,
        )

    @property
    def safe_pose(self) -> list[float] | None:
        pose = self.config.safe_pose
        return None if pose is None else list(pose)

    def start(self) -> None:
        """Connect the robot, then start the cameras (a simulated camera renders the connected sim)."""
        self.adapter.connect()
        if self.cameras is not None:
            self.cameras.start()

    def observer(
        self, instruction: str, edge: EdgeSource
    ) -> Callable[[RobotState, float], Observation | None]:
        """Observations with the newest synchronised images and the checkpoint's state vector (the
        edge builds it from the measured joints and keeps the context its chunk is composed onto)."""
        norm_key = self.config.mapping.norm_key

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
            obs = Observation(
                stamp=stamp,
                images=images,
                state=np.zeros(0, np.float32),
                instruction=instruction,
                norm_key=norm_key,
            )
            return edge.observe(obs, state)

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


def camera_group(config: RobotConfig, adapter: RobotAdapter, calibration: Any = None) -> CameraGroup | None:
    """The robot's cameras from its ``cameras:`` block; simulated ones render through the adapter;
    ``calibration`` (a LoadedCalibration) gives them their intrinsics."""
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
    intrinsics = calibration.intrinsics if calibration is not None else None
    return make_group(cams, renderers=renderers, base_dir=config.root, intrinsics=intrinsics)


def load_robot_side(path: str | Path) -> RobotSide:
    """robot.yaml parsed once: the adapter, cameras, safety settings and the arms' kinematics, with
    the robot's calibration (``$WALL_RUNTIME_CALIBRATION`` or ./calibration, ``<robot>/``) loaded
    and checked before anything connects."""
    from wall_runtime.calibration.runtime import load_calibration
    from wall_runtime.kinematics import load_robot_kinematics

    config = load_robot(path)
    calibration = load_calibration(config.name, CamerasConfig.from_dict(config.cameras or None))
    for line in calibration.lines:
        log.info("calibration: %s", line)
    adapter = build_adapter(config)
    safety = safety_config(config, adapter.spec)
    return RobotSide(
        config=config,
        adapter=adapter,
        cameras=camera_group(config, adapter, calibration),
        safety=safety,
        kinematics=load_robot_kinematics(config),
        calibration=calibration,
    )


def safety_config(config: RobotConfig, spec: RobotSpec) -> SafetyConfig:
    """The control loop's safety settings from the ``safety:`` block (``safe_pose`` is the loop's)."""
    block = {k: v for k, v in config.safety.items() if k not in ("safe_pose", "ee")}
    return SafetyConfig.from_dict(block, spec.joints)
