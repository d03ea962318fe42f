"""Calibration: camera intrinsics, hand-eye, joint offsets; result files under calibration/<robot>/."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wall_runtime.calibration.handeye import HandEye
from wall_runtime.calibration.intrinsics import Intrinsics
from wall_runtime.calibration.joints import JointCalibration
from wall_runtime.calibration.results import DEFAULT_ROOT, CalibrationFileError


@dataclass
class RobotCalibration:
    """Everything calibrated for one robot; cameras are keyed by their robot.yaml name."""

    intrinsics: dict[str, Intrinsics] = field(default_factory=dict)
    hand_eye: dict[str, HandEye] = field(default_factory=dict)
    joints: JointCalibration | None = None


def load_robot_calibration(robot: str, root: Path | str = DEFAULT_ROOT) -> RobotCalibration:
    """Load ``calibration/<robot>/``: ``intrinsics_<camera>.yaml``, ``hand_eye_<camera>.yaml``,
    ``joints.yaml``. A missing folder gives an empty result; a malformed file is an error naming it."""
    folder = Path(root) / robot
    out = RobotCalibration()
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("intrinsics_*.yaml")):
        out.intrinsics[path.stem.removeprefix("intrinsics_")] = Intrinsics.load(path)
    for path in sorted(folder.glob("hand_eye_*.yaml")):
        out.hand_eye[path.stem.removeprefix("hand_eye_")] = HandEye.load(path)
    if (folder / "joints.yaml").is_file():
        out.joints = JointCalibration.load(folder / "joints.yaml")
    return out


__all__ = [
    "CalibrationFileError",
    "HandEye",
    "Intrinsics",
    "JointCalibration",
    "RobotCalibration",
    "load_robot_calibration",
]
