"""Writing RealSense recordings from our own pictures with pyrealsense2's software device.

librealsense 2.59 records to ``.db3`` (rosbag2/SQLite) files; ``rs.config.enable_device_from_file``
plays them back through the same pipeline, syncer and ``rs.align`` a live camera goes through. This
is how tests and demos exercise the real RealSense code path without a camera attached.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wall_runtime.cameras.realsense import import_rs


@dataclass(frozen=True)
class RecordedFrame:
    color: np.ndarray  # HxWx3 uint8 RGB
    stamp_ms: float  # sensor timestamp (hardware clock), milliseconds
    depth: np.ndarray | None = None  # hxw uint16 in ``depth_units``
    number: int | None = None  # sensor frame counter; the position in the sequence if None


def write_recording(
    path: str | Path,
    frames: Iterable[RecordedFrame],
    *,
    fps: int = 30,
    depth_size: tuple[int, int] | None = None,
    depth_units: float = 0.001,
    focal_px: float | None = None,
    serial: str = "000000000000",
    paced: bool = True,
) -> Path:
    """Record colour (and depth, if the frames carry it) to ``path`` (must end in ``.db3``).

    Both streams share one optical centre (identity extrinsics) and a pinhole model with focal
    ``focal_px`` at the colour resolution, scaled for depth. ``paced`` pushes each frame at the
    moment its stamp says, so real-time playback reproduces the timing (the recorder stores
    arrival times); unpaced recordings play back as one burst.
    """
    rs = import_rs()
    path = Path(path).resolve()
    if path.suffix != ".db3":
        raise ValueError(f"librealsense {rs.__version__} records .db3 files, got {path.name}")
    frames = list(frames)
    if not frames:
        raise ValueError("a recording needs at least one frame")
    h, w = frames[0].color.shape[:2]
    with_depth = frames[0].depth is not None
    dw, dh = depth_size or ((frames[0].depth.shape[1], frames[0].depth.shape[0]) if with_depth else (w, h))
    focal = focal_px or 0.8 * w

    def stream(kind: object, uid: int, sw: int, sh: int, fmt: object, bpp: int) -> object:
        intr = rs.intrinsics()
        intr.width, intr.height = sw, sh
        intr.ppx, intr.ppy = sw / 2.0, sh / 2.0
        intr.fx = intr.fy = focal * sw / w
        intr.model, intr.coeffs = rs.distortion.none, [0.0] * 5
        s = rs.video_stream()
        s.type, s.index, s.uid, s.width, s.height, s.fps, s.bpp, s.fmt = kind, 0, uid, sw, sh, fps, bpp, fmt
        s.intrinsics = intr
        return s

    device = rs.software_device()
    sensor = device.add_sensor("RGB-D")
    color_profile = sensor.add_video_stream(stream(rs.stream.color, 0, w, h, rs.format.rgb8, 3))
    profiles = [color_profile]
    depth_profile = None
    if with_depth:
        depth_profile = sensor.add_video_stream(stream(rs.stream.depth, 1, dw, dh, rs.format.z16, 2), True)
        sensor.add_read_only_option(rs.option.depth_units, depth_units)
        identity = rs.extrinsics()
        identity.rotation, identity.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
        depth_profile.register_extrinsics_to(color_profile, identity)
        profiles.append(depth_profile)
    device.register_info(rs.camera_info.serial_number, serial)
    device.register_info(rs.camera_info.name, "wall-runtime software device")

    recorder = rs.recorder(str(path), device)
    sensor.open(profiles)
    sensor.start(lambda _frame: None)
    t0_host, t0_stamp = time.monotonic(), frames[0].stamp_ms
    for i, fr in enumerate(frames):
        if paced:
            wait = t0_host + (fr.stamp_ms - t0_stamp) / 1000.0 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        number = fr.number if fr.number is not None else i
        _push(
            rs, sensor, color_profile, np.ascontiguousarray(fr.color, dtype=np.uint8), 3, fr.stamp_ms, number
        )
        if depth_profile is not None:
            if fr.depth is None:
                raise ValueError(f"frame {i} has no depth but the recording has a depth stream")
            d = np.ascontiguousarray(fr.depth, dtype=np.uint16)
            _push(rs, sensor, depth_profile, d, 2, fr.stamp_ms, number, depth_units)
    time.sleep(0.05)  # let the recorder drain its queue before the file is closed
    sensor.stop()
    sensor.close()
    del recorder  # closing the recorder writes the file
    return path


def _push(
    rs: object,
    sensor: object,
    profile: object,
    pixels: np.ndarray,
    bpp: int,
    stamp_ms: float,
    number: int,
    depth_units: float | None = None,
) -> None:
    f = rs.software_video_frame()
    f.pixels = pixels
    f.bpp = bpp
    f.stride = pixels.shape[1] * bpp
    f.timestamp = stamp_ms
    f.domain = rs.timestamp_domain.hardware_clock
    f.frame_number = number
    f.profile = profile.as_video_stream_profile()
    if depth_units is not None:
        f.depth_units = depth_units
    sensor.on_video_frame(f)
