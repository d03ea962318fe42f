"""Camera image → Qwen2.5-VL pixel patches, exactly as the WALL-OSS reference prepares them.

The reference (spec §6 "Images" and §10) does, per camera frame:

1. a Pillow bicubic resize so the longest side equals the configured resolution, the other side
   truncated with ``int`` (640×480 at 256 → 256×192);
2. Qwen's ``smart_resize`` (factor 28, 4·28² ≤ pixels ≤ 16384·28²) and a second Pillow bicubic resize
   (256×192 → 252×196);
3. the Qwen2-VL image processor: rescale by 1/255, CLIP mean/std, the frame repeated for the temporal
   patch of 2, and patchify into rows of ``C·T·P·P = 1176`` values in 2×2 merge-block order.

Pillow is used for both resizes because its bicubic filter (with antialiasing when shrinking) is what
the model was trained on; OpenCV's ``INTER_CUBIC`` is a different filter and changes the pixels (and the
reference notes it once changed the image-token count). Everything after the resizes is numpy: the
uint8 frame is cut into patches first (moving a quarter of the bytes a float frame would need), then
rescale + normalise happen as one float32 multiply-add per value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
IMAGE_FACTOR = PATCH_SIZE * MERGE_SIZE  # 28
MIN_PIXELS = 4 * IMAGE_FACTOR * IMAGE_FACTOR
MAX_PIXELS = 16384 * IMAGE_FACTOR * IMAGE_FACTOR
MAX_ASPECT_RATIO = 200
PATCH_DIM = 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE  # 1176


# (v / 255 − mean) / std as one multiply-add per value
_SCALE = (1.0 / (255.0 * np.asarray(CLIP_STD, dtype=np.float64))).astype(np.float32)
_OFFSET = (-np.asarray(CLIP_MEAN, dtype=np.float64) / np.asarray(CLIP_STD, dtype=np.float64)).astype(
    np.float32
)


def smart_resize(
    height: int,
    width: int,
    factor: int = IMAGE_FACTOR,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """Target ``(height, width)``: multiples of ``factor``, pixel count in range, aspect kept.

    Same rule as ``qwen_vl_utils.smart_resize`` (the one the reference calls): round each side to the
    factor (at least one factor), then scale down (floor) or up (ceil) if the area is out of range.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"aspect ratio must be at most {MAX_ASPECT_RATIO}, got {max(height, width) / min(height, width):.1f} "
            f"for {height}x{width}"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _check_image(image: np.ndarray, what: str = "image") -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what} must be a numpy array (HxWx3 uint8 RGB), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must be HxWx3 (RGB), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} is empty: shape {image.shape}")


def _check_resolution(resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution <= 0:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")


def _pil_resize(image: Image.Image, height: int, width: int) -> Image.Image:
    if (image.height, image.width) == (height, width):
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


def longest_side_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """``(height, width)`` after the reference's first resize (longest side = resolution)."""
    if width > height:
        return int(resolution * height / width), resolution
    return resolution, int(resolution * width / height)


def _first_size(image: np.ndarray, resolution: int) -> tuple[int, int]:
    _check_image(image)
    _check_resolution(resolution)
    height, width = longest_side_size(image.shape[0], image.shape[1], int(resolution))
    if height == 0 or width == 0:
        raise ValueError(
            f"image {image.shape[0]}x{image.shape[1]} is too elongated for resolution {resolution}"
        )
    return height, width


def resize_longest_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """Pillow bicubic resize so the longest side equals ``resolution`` (short side truncated)."""
    height, width = _first_size(image, resolution)
    return np.asarray(_pil_resize(Image.fromarray(np.ascontiguousarray(image)), height, width))


def wire_frame_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """``(height, width)`` a robot host sends a frame at when it runs the first resize itself: the
    first-resize size when that shrinks the frame, else the frame's own size (enlarging would only add
    bytes; the policy host enlarges it identically)."""
    if max(height, width) <= resolution:
        return height, width
    return longest_side_size(height, width, resolution)


def shrink_for_wire(image: np.ndarray, resolution: int) -> np.ndarray:
    """The reference's first resize, done on the robot host when it shrinks the frame.

    The policy host's first resize of the result is then the identity (the longest side already equals
    ``resolution``; ``longest_side_size`` gives back the same short side), so the model sees exactly
    the pixels it would have computed from the camera frame.
    """
    if max(image.shape[0], image.shape[1]) <= resolution:
        return image
    return resize_longest_side(image, resolution)


def patchify(image: np.ndarray) -> np.ndarray:
    """Resized uint8 HxWx3 (sides multiples of 28) → normalised float32 ``[N, 1176]`` in merge-block order.

    Row layout is ``(C, T, P, P)``; rows run over merge blocks (row-major), then the 2×2 patches in a block.
    """
    height, width = image.shape[:2]
    if height % IMAGE_FACTOR or width % IMAGE_FACTOR:
        raise ValueError(f"patchify needs sides divisible by {IMAGE_FACTOR}, got {height}x{width}")
    grid_h, grid_w = height // PATCH_SIZE, width // PATCH_SIZE
    m, p = MERGE_SIZE, PATCH_SIZE
    blocks = image.reshape(grid_h // m, m, p, grid_w // m, m, p, 3)
    # (bh, bw, mh, mw, C, ph, pw): still uint8, so the transpose moves a quarter of the bytes
    blocks = blocks.transpose(0, 3, 1, 4, 6, 2, 5).reshape(grid_h * grid_w, 3, p * p)
    values = blocks * _SCALE[None, :, None]
    values += _OFFSET[None, :, None]
    out = np.empty((grid_h * grid_w, 3, TEMPORAL_PATCH_SIZE, p * p), dtype=np.float32)
    out[:] = values[:, :, None, :]  # the still frame repeated for the temporal patch
    return out.reshape(grid_h * grid_w, PATCH_DIM)


def preprocess_resized(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The part the Qwen2-VL processor does: smart_resize, second resize, normalise, patchify."""
    _check_image(image)
    height, width = smart_resize(image.shape[0], image.shape[1])
    if image.shape[:2] != (height, width):
        image = np.asarray(_pil_resize(Image.fromarray(np.ascontiguousarray(image)), height, width))
    return patchify(image), (1, height // PATCH_SIZE, width // PATCH_SIZE)


def preprocess_image(image: np.ndarray, resolution: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One HxWx3 uint8 RGB frame → (pixel patches float32 ``[N, 1176]``, grid ``(1, H/14, W/14)``)."""
    first_height, first_width = _first_size(image, resolution)
    height, width = smart_resize(first_height, first_width)
    frame = Image.fromarray(np.ascontiguousarray(image))  # stays a Pillow image between the two resizes
    frame = _pil_resize(_pil_resize(frame, first_height, first_width), height, width)
    return patchify(np.asarray(frame)), (1, height // PATCH_SIZE, width // PATCH_SIZE)


_POOL: ThreadPoolExecutor | None = None


def _preprocess_numbered(
    index: int, image: np.ndarray, resolution: int
) -> tuple[np.ndarray, tuple[int, int, int]]:
    try:
        return preprocess_image(image, resolution)
    except (TypeError, ValueError) as error:
        raise type(error)(f"image {index}: {error}") from error


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="preprocess")
    return _POOL


def shrink_all_for_wire(
    images: Mapping[str, np.ndarray], resolutions: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """:func:`shrink_for_wire` for every view with a resolution (others unchanged), the views on the
    thread pool (Pillow releases the GIL while it resizes)."""
    names = [n for n in images if n in resolutions]
    resized = dict(
        zip(names, _pool().map(lambda n: shrink_for_wire(images[n], resolutions[n]), names), strict=True)
    )
    return {n: resized.get(n, image) for n, image in images.items()}


def preprocess_images(
    images: Sequence[np.ndarray], resolutions: Sequence[int], *, parallel: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Several frames (one resolution each) → concatenated patches ``[ΣN, 1176]`` and grids int64 ``[n, 3]``.

    With ``parallel`` the frames are processed on a small thread pool (Pillow's resize and numpy release
    the GIL), which is where most of a multi-camera call's time goes; the result is the same either way.
    """
    if len(images) == 0:
        raise ValueError("preprocess_images needs at least one image")
    if len(images) != len(resolutions):
        raise ValueError(f"got {len(images)} images but {len(resolutions)} resolutions")
    indices = range(len(images))
    if parallel and len(images) > 1 and (os.cpu_count() or 1) > 1:
        results = list(_pool().map(_preprocess_numbered, indices, images, resolutions))
    else:
        results = [_preprocess_numbered(*args) for args in zip(indices, images, resolutions, strict=True)]
    pixels = np.concatenate([patches for patches, _ in results], axis=0)
    return pixels, np.asarray([grid for _, grid in results], dtype=np.int64)
