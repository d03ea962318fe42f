"""Hand-eye calibration with ``cv2.calibrateHandEye``.

Eye-in-hand (camera on the gripper): find ``X = T_gripper_camera`` from pairs of robot poses
``T_base_gripper`` and board poses ``T_camera_board``; the board is fixed in the base frame.
Eye-to-hand (camera fixed, board on the gripper): the same solver fed ``T_gripper_base`` instead
gives ``X = T_base_camera``. The residual is how much the supposedly fixed transform (board in base,
or board in gripper) moves across the views: rotation RMS in degrees, translation RMS in mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from wall_runtime.calibration import results
from wall_runtime.calibration.intrinsics import CalibrationError

KIND = "hand_eye"
MODES = ("eye-in-hand", "eye-to-hand")
METHODS = {
    "tsai": cv2.CALIB_HAND_EYE_TSAI,
    "park": cv2.CALIB_HAND_EYE_PARK,
    "horaud": cv2.CALIB_HAND_EYE_HORAUD,
    "andreff": cv2.CALIB_HAND_EYE_ANDREFF,
    "daniilidis": cv2.CALIB_HAND_EYE_DANIILIDIS,
}


@dataclass(frozen=True)
class HandEye:
    mode: str
    transform: np.ndarray  # 4x4: T_gripper_camera (eye-in-hand) or T_base_camera (eye-to-hand)
    method: str
    residual_rot_deg: float
    residual_trans_mm: float
    views_used: int

    @property
    def frame(self) -> str:
        return "gripper" if self.mode == "eye-in-hand" else "base"

    def save(self, path: Path | str) -> Path:
        return results.save(
            path,
            KIND,
            {
                "mode": self.mode,
                "transform": f"T_{self.frame}_camera (camera pose in the {self.frame} frame, metres)",
                "matrix": self.transform,
                "method": self.method,
                "residual_rotation_deg": float(self.residual_rot_deg),
                "residual_translation_mm": float(self.residual_trans_mm),
                "views_used": self.views_used,
            },
        )

    @classmethod
    def load(cls, path: Path | str) -> HandEye:
        doc = results.load(path, KIND)
        if doc.get("mode") not in MODES:
            raise results.CalibrationFileError(f"{path}: mode must be one of {MODES}")
        m = results.matrix(doc, "matrix", (4, 4), path)
        if not np.allclose(m[3], [0, 0, 0, 1]) or not np.allclose(
            m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-6
        ):
            raise results.CalibrationFileError(f"{path}: matrix is not a rigid transform")
        return cls(
            mode=doc["mode"],
            transform=m,
            method=str(doc.get("method")),
            residual_rot_deg=float(doc.get("residual_rotation_deg", float("nan"))),
            residual_trans_mm=float(doc.get("residual_translation_mm", float("nan"))),
            views_used=int(doc.get("views_used", 0)),
        )


def calibrate_hand_eye(
    robot_poses: Sequence[np.ndarray],
    board_poses: Sequence[np.ndarray | None],
    mode: str = "eye-in-hand",
    method: str = "best",
) -> HandEye:
    """``robot_poses[i]``: 4x4 ``T_base_gripper``; ``board_poses[i]``: 4x4 ``T_camera_board`` or None
    (board not seen; that view is skipped). ``method="best"`` tries every OpenCV solver and keeps the
    one with the smallest residual."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if len(robot_poses) != len(board_poses):
        raise CalibrationError(f"{len(robot_poses)} robot poses but {len(board_poses)} images")
    pairs = [
        (np.asarray(r, float), np.asarray(b, float))
        for r, b in zip(robot_poses, board_poses, strict=True)
        if b is not None
    ]
    if len(pairs) < 3:
        raise CalibrationError(
            f"the board was seen in {len(pairs)} views; hand-eye needs at least 3 (use 10+)"
        )
    for i, (r, _) in enumerate(pairs):
        if r.shape != (4, 4) or not np.allclose(r[:3, :3] @ r[:3, :3].T, np.eye(3), atol=1e-4):
            raise CalibrationError(f"robot pose {i} is not a 4x4 rigid transform")
    robot = [r if mode == "eye-in-hand" else np.linalg.inv(r) for r, _ in pairs]
    boards = [b for _, b in pairs]
    names = list(METHODS) if method == "best" else [method]
    best: HandEye | None = None
    for name in names:
        if name not in METHODS:
            raise ValueError(f"method must be 'best' or one of {list(METHODS)}, got {name!r}")
        rot, trans = cv2.calibrateHandEye(
            [r[:3, :3] for r in robot], [r[:3, 3] for r in robot],
            [b[:3, :3] for b in boards], [b[:3, 3] for b in boards],
            method=METHODS[name],
        )  # fmt: skip
        x = np.eye(4)
        x[:3, :3], x[:3, 3] = rot, trans.ravel()
        if not np.all(np.isfinite(x)):
            continue
        rot_deg, trans_mm = _residual(robot, boards, x)
        cand = HandEye(mode, x, name, rot_deg, trans_mm, len(pairs))
        if best is None or (cand.residual_trans_mm, cand.residual_rot_deg) < (
            best.residual_trans_mm,
            best.residual_rot_deg,
        ):
            best = cand
    if best is None:
        raise CalibrationError("no hand-eye solver gave a finite answer (are the robot poses varied enough?)")
    return best


def _residual(robot: list[np.ndarray], boards: list[np.ndarray], x: np.ndarray) -> tuple[float, float]:
    """Spread of the transform that should be constant: robot_i · X · board_i for every view."""
    chain = [r @ x @ b for r, b in zip(robot, boards, strict=True)]
    trans = np.array([c[:3, 3] for c in chain])
    trans_rms = float(np.sqrt(np.mean(np.sum((trans - trans.mean(0)) ** 2, axis=1))))
    # rotation spread: angle of each chain rotation from their chordal mean
    mean_r = np.mean([c[:3, :3] for c in chain], axis=0)
    u, _, vt = np.linalg.svd(mean_r)
    mean_r = u @ vt
    angles = [rotation_angle_deg(mean_r.T @ c[:3, :3]) for c in chain]
    return float(np.sqrt(np.mean(np.square(angles)))), 1000.0 * trans_rms


def rotation_angle_deg(r: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))


def pose_from_xyz_quat(xyz: Sequence[float], quat_xyzw: Sequence[float]) -> np.ndarray:
    """4x4 from a position (m) and a unit quaternion (x, y, z, w), as robot SDKs report poses."""
    x, y, z, w = (float(v) for v in quat_xyzw)
    n = np.sqrt(x * x + y * y + z * z + w * w)
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"quaternion {list(quat_xyzw)} has no direction")
    x, y, z, w = x / n, y / n, z / n, w / n
    t = np.eye(4)
    t[:3, :3] = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    t[:3, 3] = [float(v) for v in xyz]
    return t
