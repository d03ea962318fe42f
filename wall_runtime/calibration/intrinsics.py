"""Camera intrinsics from board images (``cv2.calibrateCamera``), saved with their reprojection error."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from wall_runtime.calibration import results
from wall_runtime.calibration.boards import BoardSpec, Detection, detect

KIND = "camera_intrinsics"


class CalibrationError(RuntimeError):
    """Not enough usable data to calibrate; the message says what is missing."""


@dataclass(frozen=True)
class Intrinsics:
    camera_matrix: np.ndarray  # 3x3
    dist_coeffs: np.ndarray  # [5] k1 k2 p1 p2 k3
    image_size: tuple[int, int]  # width, height
    rms_px: float  # overall reprojection RMS
    per_view_px: tuple[float, ...]  # reprojection RMS of each used view
    views_used: int
    board: dict[str, object] | None = None

    @property
    def fx(self) -> float:
        return float(self.camera_matrix[0, 0])

    @property
    def fy(self) -> float:
        return float(self.camera_matrix[1, 1])

    def save(self, path: Path | str) -> Path:
        return results.save(
            path,
            KIND,
            {
                "image_size": list(self.image_size),
                "camera_matrix": self.camera_matrix,
                "dist_coeffs": self.dist_coeffs,
                "reprojection_rms_px": float(self.rms_px),
                "per_view_rms_px": [float(v) for v in self.per_view_px],
                "views_used": self.views_used,
                "board": self.board,
            },
        )

    @classmethod
    def load(cls, path: Path | str) -> Intrinsics:
        doc = results.load(path, KIND)
        size = doc.get("image_size")
        if not (
            isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
        ):
            raise results.CalibrationFileError(f"{path}: image_size must be [width, height]")
        return cls(
            camera_matrix=results.matrix(doc, "camera_matrix", (3, 3), path),
            dist_coeffs=results.matrix(doc, "dist_coeffs", (5,), path),
            image_size=(size[0], size[1]),
            rms_px=float(doc.get("reprojection_rms_px", float("nan"))),
            per_view_px=tuple(doc.get("per_view_rms_px", ())),
            views_used=int(doc.get("views_used", 0)),
            board=doc.get("board"),
        )


def detect_all(board: BoardSpec, images: Iterable[np.ndarray]) -> list[Detection | None]:
    return [detect(board, img) for img in images]


def calibrate_intrinsics(
    board: BoardSpec,
    images: Iterable[np.ndarray],
    *,
    min_views: int = 5,
    fix_principal_point: bool = False,
) -> Intrinsics:
    """Calibrate from images (all the same size) in which the board is seen from varied angles."""
    images = list(images)
    if not images:
        raise CalibrationError("no images")
    h, w = images[0].shape[:2]
    if any(img.shape[:2] != (h, w) for img in images):
        raise CalibrationError("all calibration images must have the same size")
    dets = [d for d in detect_all(board, images) if d is not None and len(d.ids) >= 6]
    if len(dets) < min_views:
        raise CalibrationError(
            f"the board was found in {len(dets)} of {len(images)} images; need at least {min_views} "
            "(fill the frame, tilt the board, keep it sharp)"
        )
    flags = cv2.CALIB_FIX_PRINCIPAL_POINT if fix_principal_point else 0
    rms, k, dist, rvecs, tvecs = cv2.calibrateCamera(
        [d.object_points for d in dets], [d.image_points for d in dets], (w, h), None, None, flags=flags
    )
    per_view = []
    for d, rv, tv in zip(dets, rvecs, tvecs, strict=True):
        proj, _ = cv2.projectPoints(d.object_points, rv, tv, k, dist)
        per_view.append(float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - d.image_points) ** 2, axis=1)))))
    return Intrinsics(
        camera_matrix=k,
        dist_coeffs=np.asarray(dist, np.float64).ravel()[:5],
        image_size=(w, h),
        rms_px=float(rms),
        per_view_px=tuple(per_view),
        views_used=len(dets),
        board=board.to_dict(),
    )


def board_pose(board: BoardSpec, image: np.ndarray, intr: Intrinsics) -> np.ndarray | None:
    """4x4 board->camera pose from one image (PnP on the detected corners), or None if not seen."""
    d = detect(board, image)
    if d is None:
        return None
    ok, rvec, tvec = cv2.solvePnP(d.object_points, d.image_points, intr.camera_matrix, intr.dist_coeffs)
    if not ok:
        return None
    rvec, tvec = cv2.solvePnPRefineLM(
        d.object_points, d.image_points, intr.camera_matrix, intr.dist_coeffs, rvec, tvec
    )
    t = np.eye(4)
    t[:3, :3] = cv2.Rodrigues(rvec)[0]
    t[:3, 3] = tvec.ravel()
    return t
