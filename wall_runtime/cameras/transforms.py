"""Per-camera image transform: undistort, rotate, crop, resize (in that order, on the capture thread).

Undistortion works on the sensor's image, so it comes first: the calibrated intrinsics describe the
raw frame, before any rotation or crop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

_ROTATIONS = {
    0: None,
    90: cv2.ROTATE_90_CLOCKWISE,
    180: cv2.ROTATE_180,
    270: cv2.ROTATE_90_COUNTERCLOCKWISE,
}


class Undistort:
    """Removes lens distortion with the maps ``cv2.initUndistortRectifyMap`` precomputes once from
    the calibrated camera matrix and distortion coefficients; each frame is then one ``cv2.remap``.
    The output keeps the same camera matrix and size (pixels outside the lens's view turn black).
    ``source`` names the calibration file, so a frame of the wrong size is an error naming it."""

    def __init__(
        self,
        camera_matrix: np.ndarray,
        dist_coeffs: np.ndarray,
        image_size: tuple[int, int],
        source: Path | str = "intrinsics",
    ) -> None:
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.source = str(source)
        k = np.asarray(camera_matrix, np.float64)
        self._map1, self._map2 = cv2.initUndistortRectifyMap(
            k, np.asarray(dist_coeffs, np.float64), None, k, self.image_size, cv2.CV_16SC2
        )

    def apply(self, img: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        if (img.shape[1], img.shape[0]) != self.image_size:
            w, h = self.image_size
            raise ValueError(
                f"{self.source}: intrinsics are for {w}x{h} frames, the camera delivers "
                f"{img.shape[1]}x{img.shape[0]}"
            )
        return cv2.remap(img, self._map1, self._map2, interpolation, borderMode=cv2.BORDER_CONSTANT)


@dataclass(frozen=True)
class ImageTransform:
    """``rotation`` clockwise degrees (0/90/180/270); ``crop`` (x, y, width, height) in the rotated
    image; ``resize`` (width, height) of the result; ``undistort`` (from the camera's calibrated
    intrinsics) runs before all of them. Depth follows the same geometry with
    nearest-neighbour resizing, so an aligned depth map stays aligned."""

    rotation: int = 0
    crop: tuple[int, int, int, int] | None = None
    resize: tuple[int, int] | None = None
    undistort: Undistort | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.rotation not in _ROTATIONS:
            raise ValueError(f"rotation must be one of 0, 90, 180, 270, got {self.rotation!r}")
        if self.crop is not None and (
            len(self.crop) != 4 or min(self.crop[2:]) <= 0 or min(self.crop[:2]) < 0
        ):
            raise ValueError(f"crop must be [x, y, width, height] with width, height > 0, got {self.crop!r}")
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) <= 0):
            raise ValueError(f"resize must be [width, height] > 0, got {self.resize!r}")

    @property
    def identity(self) -> bool:
        return self.rotation == 0 and self.crop is None and self.resize is None and self.undistort is None

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the transformed image for a source of the given size."""
        if self.rotation in (90, 270):
            width, height = height, width
        if self.crop is not None:
            width, height = self.crop[2], self.crop[3]
        if self.resize is not None:
            width, height = self.resize
        return width, height

    def apply(
        self, image: np.ndarray, depth: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if self.identity:
            return image, depth
        if self.undistort is not None:
            image = self.undistort.apply(image)
            if depth is not None:
                depth = self.undistort.apply(depth, cv2.INTER_NEAREST)
        image = self._geometry(image, cv2.INTER_AREA)
        if depth is not None:
            depth = self._geometry(depth, cv2.INTER_NEAREST)
        return image, depth

    def _geometry(self, img: np.ndarray, interpolation: int) -> np.ndarray:
        code = _ROTATIONS[self.rotation]
        if code is not None:
            img = cv2.rotate(img, code)
        if self.crop is not None:
            x, y, w, h = self.crop
            if x + w > img.shape[1] or y + h > img.shape[0]:
                raise ValueError(
                    f"crop {list(self.crop)} does not fit a {img.shape[1]}x{img.shape[0]} image (after rotation)"
                )
            img = img[y : y + h, x : x + w]
        if self.resize is not None and (img.shape[1], img.shape[0]) != tuple(self.resize):
            src_w, dst_w = img.shape[1], self.resize[0]
            # INTER_AREA is the right filter for shrinking but is slow and blurry for enlarging.
            interp = (
                interpolation if dst_w <= src_w or interpolation == cv2.INTER_NEAREST else cv2.INTER_LINEAR
            )
            img = cv2.resize(img, tuple(self.resize), interpolation=interp)
        return np.ascontiguousarray(img)
