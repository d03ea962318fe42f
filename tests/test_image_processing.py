"""Image preprocessing matches the reference pipeline: Pillow longest-side resize, then Qwen2-VL's processor."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from wall_runtime.model import image_processing as ip

SIZES = [(640, 480), (320, 240), (1280, 720)]  # width × height
RESOLUTIONS = [256, 448]


def camera_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A frame with smooth shading, hard edges and sensor noise, so resampling filters matter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = np.stack(
        [255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 9.0) * np.cos(y / 13.0)], axis=-1
    )
    frame[(x // 40 + y // 40) % 2 == 0] *= 0.5  # checkerboard edges
    frame += rng.normal(0, 12, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def reference_first_resize(frame: np.ndarray, resolution: int) -> Image.Image:
    """The reference's first step, written out independently: longest side → resolution, int() the other."""
    height, width = frame.shape[:2]
    if width > height:
        size = (resolution, int(resolution * height / width))
    else:
        size = (int(resolution * width / height), resolution)
    return Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def hf_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    # Qwen2.5-VL's published preprocessor_config.json values, passed explicitly (no hub access)
    return Qwen2VLImageProcessorPil(
        min_pixels=3136,
        max_pixels=12845056,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=list(ip.CLIP_MEAN),
        image_std=list(ip.CLIP_STD),
    )


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_transformers_processor(hf_processor, size, resolution):
    frame = camera_frame(*size)
    expected = hf_processor(images=[reference_first_resize(frame, resolution)], return_tensors="np")

    pixels, grid = ip.preprocess_image(frame, resolution)

    assert pixels.dtype == np.float32
    assert list(grid) == expected["image_grid_thw"][0].tolist()
    assert pixels.shape == expected["pixel_values"].shape
    assert np.abs(pixels - expected["pixel_values"]).max() <= 1e-5


def test_batch_of_cameras_matches_processor(hf_processor):
    frames = [camera_frame(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    resolutions = [256, 256, 448]
    expected = hf_processor(
        images=[reference_first_resize(f, r) for f, r in zip(frames, resolutions, strict=True)],
        return_tensors="np",
    )

    pixels, grids = ip.preprocess_images(frames, resolutions)

    assert grids.dtype == np.int64
    np.testing.assert_array_equal(grids, expected["image_grid_thw"])
    assert np.abs(pixels - expected["pixel_values"]).max() <= 1e-5


def test_token_counts_of_the_spec_example():
    # spec §6: 640×480 → 256×192 → 252×196, 63 tokens; at 448: 448×336, 192 tokens
    frame = camera_frame(640, 480)
    assert ip.resize_longest_side(frame, 256).shape == (192, 256, 3)
    _, grid = ip.preprocess_image(frame, 256)
    assert grid == (1, 14, 18) and np.prod(grid) // 4 == 63
    _, grid = ip.preprocess_image(frame, 448)
    assert grid == (1, 24, 32) and np.prod(grid) // 4 == 192


def test_portrait_and_square_frames():
    assert ip.resize_longest_side(camera_frame(480, 640), 256).shape == (256, 192, 3)
    assert ip.resize_longest_side(camera_frame(300, 300), 256).shape == (256, 256, 3)


def test_smart_resize_agrees_with_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    rng = np.random.default_rng(1)
    for height, width in rng.integers(28, 5000, size=(300, 2)):
        if max(height, width) / min(height, width) > 200:
            continue
        ours = ip.smart_resize(int(height), int(width))
        assert ours == hf_smart_resize(int(height), int(width), 28, ip.MIN_PIXELS, ip.MAX_PIXELS)
        assert ours[0] % 28 == 0 and ours[1] % 28 == 0
        assert ip.MIN_PIXELS <= ours[0] * ours[1] <= ip.MAX_PIXELS


def test_smart_resize_keeps_a_thin_side_as_qwen_vl_utils_does():
    # qwen_vl_utils (what the reference calls) rounds each side to at least one factor first
    assert ip.smart_resize(10, 1000) == (28, 1008)
    with pytest.raises(ValueError, match="aspect ratio"):
        ip.smart_resize(10, 2500)


def test_opencv_cubic_is_a_different_filter():
    """Why Pillow: cv2.INTER_CUBIC (no antialiasing, a=-0.75) gives other pixels than Pillow's bicubic."""
    frame = camera_frame(640, 480)
    pillow = ip.resize_longest_side(frame, 256)
    opencv = cv2.resize(frame, (256, 192), interpolation=cv2.INTER_CUBIC)
    difference = np.abs(pillow.astype(np.int16) - opencv.astype(np.int16))
    assert difference.max() > 20  # far beyond rounding
    assert (difference > 2).mean() > 0.2


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((48, 64, 3), dtype=np.float32), "uint8"),
        (np.zeros((48, 64), dtype=np.uint8), "HxWx3"),
        (np.zeros((48, 64, 4), dtype=np.uint8), "HxWx3"),
        (np.zeros((0, 64, 3), dtype=np.uint8), "empty"),
        ([[0, 0, 0]], "numpy array"),
    ],
    ids=["float", "gray", "rgba", "empty", "list"],
)
def test_rejects_bad_frames(frame, message):
    with pytest.raises((TypeError, ValueError), match=message):
        ip.preprocess_image(frame, 256)


def test_rejects_bad_arguments():
    frame = camera_frame(64, 48)
    with pytest.raises(ValueError, match="resolution"):
        ip.preprocess_image(frame, 0)
    with pytest.raises(ValueError, match="2 images but 1 resolutions"):
        ip.preprocess_images([frame, frame], [256])
    with pytest.raises(ValueError, match="at least one"):
        ip.preprocess_images([], [])
    with pytest.raises(ValueError, match=r"image 1: .*uint8"):
        ip.preprocess_images([frame, frame.astype(np.float64)], [256, 256])


def test_parallel_and_sequential_give_identical_results():
    frames = [camera_frame(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    parallel = ip.preprocess_images(frames, [448, 256, 448], parallel=True)
    sequential = ip.preprocess_images(frames, [448, 256, 448], parallel=False)
    np.testing.assert_array_equal(parallel[0], sequential[0])
    np.testing.assert_array_equal(parallel[1], sequential[1])
    with pytest.raises(ValueError, match="image 3: aspect ratio"):
        ip.preprocess_images([*frames, np.zeros((2, 500, 3), np.uint8)], [256] * 4)
