"""Test media written with the real libraries: MJPG video files (OpenCV) for the camera tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def distinct_frame(i: int, w: int = 64, h: int = 48) -> np.ndarray:
    """An RGB frame that differs from every other ``i`` (a moving bar on a colour ramp)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 200  # strong red channel: checks the BGR -> RGB conversion
    img[..., 1] = (i * 7) % 256
    x = (i * 3) % w
    img[:, x : x + 4, 2] = 255
    return img


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """Write RGB frames to an MJPG .avi."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "OpenCV has no MJPG writer"
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path
