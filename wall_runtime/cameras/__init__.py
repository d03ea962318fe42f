"""Cameras: a Camera interface (OpenCV, RealSense, simulated), capture threads, sync, transforms."""

from wall_runtime.cameras.base import (
    Camera,
    CameraError,
    CameraStats,
    CameraStoppedError,
    Frame,
    FrozenCameraError,
    RawFrame,
    StaleFrameError,
)
from wall_runtime.cameras.config import CameraConfig, CameraConfigError, CamerasConfig
from wall_runtime.cameras.factory import make_camera, make_group
from wall_runtime.cameras.group import CameraGroup, GroupSnapshot, SnapshotError
from wall_runtime.cameras.transforms import ImageTransform

__all__ = [
    "Camera",
    "CameraConfig",
    "CameraConfigError",
    "CameraError",
    "CameraGroup",
    "CameraStats",
    "CameraStoppedError",
    "CamerasConfig",
    "Frame",
    "FrozenCameraError",
    "GroupSnapshot",
    "ImageTransform",
    "RawFrame",
    "SnapshotError",
    "StaleFrameError",
    "make_camera",
    "make_group",
]
