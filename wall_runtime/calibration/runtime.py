"""The calibration a robot side runs with: ``calibration/<robot>/`` checked against robot.yaml.

The root is ``$WALL_RUNTIME_CALIBRATION``, else ``calibration`` in the working directory (the
Feetech/Dynamixel adapters read ``joints.yaml`` from the same place). Camera files are named after
the robot.yaml camera: ``intrinsics_<camera>.yaml``, ``hand_eye_<camera>.yaml``. A file for a
camera robot.yaml does not have, or intrinsics of another resolution than the camera is configured
for, is an error naming the file: running on a stale calibration would be silently wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wall_runtime.calibration.handeye import HandEye
from wall_runtime.calibration.intrinsics import Intrinsics
from wall_runtime.calibration.results import CalibrationFileError
from wall_runtime.cameras.config import CamerasConfig


def calibration_root() -> Path:
    return Path(os.environ.get("WALL_RUNTIME_CALIBRATION", "calibration"))


@dataclass
class LoadedCalibration:
    """What was found for one robot. ``intrinsics`` and ``hand_eye`` are keyed by camera name,
    ``camera_extrinsics`` by model view (4x4 camera pose in the hand-eye result's frame: the gripper
    for eye-in-hand, the base for eye-to-hand; ``camera_frames`` says which)."""

    folder: Path
    intrinsics: dict[str, tuple[Path, Intrinsics]] = field(default_factory=dict)
    hand_eye: dict[str, tuple[Path, HandEye]] = field(default_factory=dict)
    camera_extrinsics: dict[str, np.ndarray] = field(default_factory=dict)
    camera_frames: dict[str, str] = field(default_factory=dict)
    joints: Path | None = None
    lines: list[str] = field(default_factory=list)  # one per file loaded, for check-robot / logs


def load_calibration(robot: str, cameras: CamerasConfig, root: Path | str | None = None) -> LoadedCalibration:
    """Load and check every result file for ``robot``; a missing folder gives an empty result."""
    folder = Path(root if root is not None else calibration_root()) / robot
    out = LoadedCalibration(folder=folder)
    if not folder.is_dir():
        return out
    by_name = {c.name: c for c in cameras.cameras}
    for path in sorted(folder.glob("intrinsics_*.yaml")):
        name = _camera_of(path, "intrinsics_", by_name)
        intr = Intrinsics.load(path)
        cfg = by_name[name]
        if cfg.width is not None and cfg.height is not None and (cfg.width, cfg.height) != intr.image_size:
            w, h = intr.image_size
            raise CalibrationFileError(
                f"{path}: intrinsics are for {w}x{h} but camera {name!r} is configured "
                f"{cfg.width}x{cfg.height} in robot.yaml; recalibrate at that size"
            )
        out.intrinsics[name] = (path, intr)
        applied = "undistorting" if cfg.undistort else "attached (undistort: false)"
        out.lines.append(
            f"{path}: intrinsics of {name!r} {intr.image_size[0]}x{intr.image_size[1]}, "
            f"fx {intr.fx:.1f}, rms {intr.rms_px:.3f} px, {applied}"
        )
    for path in sorted(folder.glob("hand_eye_*.yaml")):
        name = _camera_of(path, "hand_eye_", by_name)
        he = HandEye.load(path)
        view = by_name[name].view
        out.hand_eye[name] = (path, he)
        out.camera_extrinsics[view] = he.transform
        out.camera_frames[view] = he.frame
        out.lines.append(
            f"{path}: camera {name!r} pose in the {he.frame} frame ({he.mode}), residual "
            f"{he.residual_trans_mm:.2f} mm / {he.residual_rot_deg:.3f} deg"
        )
    if (folder / "joints.yaml").is_file():
        from wall_runtime.calibration.joints import JointCalibration

        JointCalibration.load(folder / "joints.yaml")  # malformed: an error naming it, here too
        out.joints = folder / "joints.yaml"
        out.lines.append(f"{out.joints}: joint offsets (read by the servo-bus adapters)")
    return out


def _camera_of(path: Path, prefix: str, by_name: dict) -> str:
    name = path.stem.removeprefix(prefix)
    if name not in by_name:
        known = ", ".join(sorted(by_name)) or "none"
        raise CalibrationFileError(f"{path}: robot.yaml has no camera {name!r} (cameras: {known})")
    return name
