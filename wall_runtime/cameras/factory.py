"""Building cameras and a camera group from the ``cameras:`` block of robot.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from wall_runtime.cameras.base import Camera, CameraError
from wall_runtime.cameras.config import CameraConfig, CamerasConfig
from wall_runtime.cameras.group import CameraGroup
from wall_runtime.cameras.simulated import RenderFn
from wall_runtime.cameras.transforms import Undistort

if TYPE_CHECKING:
    from wall_runtime.calibration.intrinsics import Intrinsics


def make_camera(
    cfg: CameraConfig,
    render: RenderFn | None = None,
    base_dir: Path | None = None,
    intrinsics: tuple[Path, Intrinsics] | None = None,
) -> Camera:
    """One camera from its config; a simulated camera needs the simulator's ``render`` callable.
    ``intrinsics`` (the result file and what it holds) is attached as ``camera.intrinsics`` and,
    when the config says ``undistort: true``, applied first in the camera's transform."""
    cam = _make_camera(cfg, render, base_dir, intrinsics)
    cam.intrinsics = intrinsics[1] if intrinsics is not None else None
    return cam


def _make_camera(
    cfg: CameraConfig,
    render: RenderFn | None,
    base_dir: Path | None,
    intrinsics: tuple[Path, Intrinsics] | None,
) -> Camera:
    if base_dir is not None:
        cfg = cfg.resolve_paths(base_dir)
    transform = cfg.transform
    if cfg.undistort:
        if intrinsics is None:
            raise CameraError(
                f"camera {cfg.name!r} asks for undistort: true but has no calibration "
                f"(calibration/<robot>/intrinsics_{cfg.name}.yaml; run `wall-runtime calibrate intrinsics`)"
            )
        path, intr = intrinsics
        transform = replace(
            transform, undistort=Undistort(intr.camera_matrix, intr.dist_coeffs, intr.image_size, path)
        )
    common = {
        "transform": transform,
        "buffer_size": cfg.buffer_size,
        "frozen_after": cfg.frozen_after,
        "stall_timeout": cfg.stall_timeout,
    }
    if cfg.type == "opencv":
        from wall_runtime.cameras.opencv import OpenCVCamera

        assert cfg.source is not None
        return OpenCVCamera(
            cfg.name,
            cfg.source,
            width=cfg.width,
            height=cfg.height,
            fps=cfg.fps,
            fourcc=cfg.fourcc,
            replay=cfg.replay,
            loop=cfg.loop,
            **common,
        )
    if cfg.type == "realsense":
        from wall_runtime.cameras.realsense import RealSenseCamera

        return RealSenseCamera(
            cfg.name,
            serial=cfg.serial,
            playback=cfg.playback,
            width=cfg.width,
            height=cfg.height,
            fps=cfg.fps,
            depth=cfg.depth,
            exposure=cfg.exposure,
            gain=cfg.gain,
            white_balance=cfg.white_balance,
            realtime=cfg.replay == "realtime",
            **common,
        )
    if cfg.type == "simulated":
        from wall_runtime.cameras.simulated import SimulatedCamera

        if render is None:
            raise CameraError(
                f"camera {cfg.name!r} is simulated: it needs the simulator's render callable "
                "(run it through the simulated robot, e.g. `wall-runtime demo`)"
            )
        return SimulatedCamera(cfg.name, render, fps=cfg.fps or 30.0, **common)
    raise CameraError(f"camera {cfg.name!r}: unknown type {cfg.type!r}")


def make_group(
    config: CamerasConfig,
    renderers: Mapping[str, RenderFn] | None = None,
    base_dir: Path | None = None,
    intrinsics: Mapping[str, tuple[Path, Intrinsics]] | None = None,
) -> CameraGroup:
    """All cameras of a robot with its sync policy; ``renderers`` maps simulated camera names to
    render(); ``intrinsics`` maps camera names to their calibration (file, result)."""
    renderers, intrinsics = renderers or {}, intrinsics or {}
    cams = {
        c.name: make_camera(c, renderers.get(c.name), base_dir, intrinsics.get(c.name))
        for c in config.cameras
    }
    return CameraGroup(cams, max_age=config.max_age, max_skew=config.max_skew, views=config.views)
