"""Pictures of a calibration board as a pinhole camera with known intrinsics and pose would see it.

Used by the tests (known answers to recover) and by ``wall-runtime calibrate --self-test``. The
board is mapped by the exact plane homography ``K [r1 r2 t]`` and rendered with supersampling so
corners are anti-aliased like a real lens would blur them.
"""

from __future__ import annotations

import cv2
import numpy as np

from wall_runtime.calibration.boards import BoardSpec


def render_board(
    board: BoardSpec,
    camera_matrix: np.ndarray,
    rvec: np.ndarray,
    tvec: np.ndarray,
    image_size: tuple[int, int],
    *,
    supersample: int = 2,
    background: int = 128,
    noise_std: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """An RGB uint8 image (``image_size`` = (width, height)) of ``board`` at pose (rvec, tvec) = board->camera."""
    texture, px_per_m, margin = board.image()
    s = float(supersample)
    scale = np.diag([s, s, 1.0])
    k = scale @ np.asarray(camera_matrix, np.float64)
    rot, _ = cv2.Rodrigues(np.asarray(rvec, np.float64).reshape(3))
    plane_to_image = k @ np.column_stack([rot[:, 0], rot[:, 1], np.asarray(tvec, np.float64).reshape(3)])
    # texture pixel (u, v) -> board metres ((u - margin + 0.5) / px_per_m, ...), pixel centres.
    texture_to_plane = np.array(
        [
            [1 / px_per_m, 0, (0.5 - margin) / px_per_m],
            [0, 1 / px_per_m, (0.5 - margin) / px_per_m],
            [0, 0, 1],
        ]
    )
    h_full = plane_to_image @ texture_to_plane
    # OpenCV's pixel centres sit at integer coordinates; shift half a pixel in and out of supersampling.
    shift_in = np.array([[1, 0, 0.5 * (s - 1)], [0, 1, 0.5 * (s - 1)], [0, 0, 1]])
    w, h = image_size
    big = cv2.warpPerspective(
        texture,
        shift_in @ h_full,
        (int(w * s), int(h * s)),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=background,
    )
    img = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    if noise_std > 0:
        img += (rng or np.random.default_rng(0)).normal(0, noise_std, img.shape)
    return cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)


def look_at(eye: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """4x4 camera->world pose of a camera at ``eye`` looking at ``target`` (z forward, y down)."""
    z = np.asarray(target, float) - np.asarray(eye, float)
    z /= np.linalg.norm(z)
    up = np.array([0.0, -1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    rot = np.column_stack([x, y, z])
    c, s = np.cos(roll), np.sin(roll)
    rot = rot @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = rot, eye
    return t
