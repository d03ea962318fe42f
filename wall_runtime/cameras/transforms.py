"""Per-camera image transform: rotate, then crop, then resize (in that order, on the capture thread)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_ROTATIONS = {
    0: None,
    90: cv2.ROTATE_90_CLOCKWISE,
    180: cv2.ROTATE_180,
    270: cv2.ROTATE_90_COUNTERCLOCKWISE,
}


@dataclass(frozen=True)
class ImageTransform:
    """``rotation`` clockwise degrees (0/90/180/270); ``crop`` (x, y, width, height) in the rotated
    image; ``resize`` (width, height) of the result. Depth follows the same geometry with
    nearest-neighbour resizing, so an aligned depth map stays aligned."""

    rotation: int = 0
    crop: tuple[int, int, int, int] | None = None
    resize: tuple[int, int] | None = None

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
        return self.rotation == 0 and self.crop is None and self.resize is None

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
