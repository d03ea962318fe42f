"""The ``cameras:`` block of ``robots/<name>/robot.yaml``.

```yaml
cameras:
  max_age: 0.1          # s; a snapshot with an older frame is refused
  max_skew: 0.02        # s; a snapshot whose frames are further apart is refused
  devices:
    front:                          # camera name
      type: opencv                  # opencv | realsense | simulated
      view: face_view               # the model view it feeds (default: the camera name)
      source: /dev/video0           # opencv: device index, /dev path or video file
      width: 640                    # requested capture size and rate
      height: 480
      fps: 30
      fourcc: MJPG                  # opencv devices
      rotation: 0                   # clockwise degrees: 0 | 90 | 180 | 270
      crop: [80, 0, 480, 480]       # x, y, width, height (after rotation)
      resize: [224, 224]            # width, height sent to the model
      undistort: true               # remap with calibration/<robot>/intrinsics_front.yaml first
    wrist:
      type: realsense
      serial: "123456789012"        # or playback: path/to/recording.db3
      depth: true                   # depth aligned to colour
      exposure: 8000                # µs (turns auto exposure off); gain, white_balance likewise
    sim_top:
      type: simulated               # frames come from the simulator's render callable
      fps: 30
```

``CamerasConfig.from_dict`` checks every key and value and names the offending field.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from wall_runtime.cameras.transforms import ImageTransform

KINDS = ("opencv", "realsense", "simulated")


class CameraConfigError(ValueError):
    """A bad ``cameras:`` block; the message names the field."""


@dataclass(frozen=True)
class CameraConfig:
    name: str
    type: str
    view: str
    source: int | str | None = None
    serial: str | None = None
    playback: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    fourcc: str | None = None
    depth: bool = False
    exposure: float | None = None
    gain: float | None = None
    white_balance: float | None = None
    replay: str = "realtime"
    loop: bool = False
    rotation: int = 0
    crop: tuple[int, int, int, int] | None = None
    resize: tuple[int, int] | None = None
    frozen_after: int | None = 5
    stall_timeout: float | None = None
    buffer_size: int = 8
    undistort: bool = (
        False  # apply the calibrated intrinsics (needs calibration/<robot>/intrinsics_<name>.yaml)
    )

    @property
    def transform(self) -> ImageTransform:
        return ImageTransform(rotation=self.rotation, crop=self.crop, resize=self.resize)

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any], where: str = "cameras.devices") -> CameraConfig:
        here = f"{where}.{name}"
        if not isinstance(data, Mapping):
            raise CameraConfigError(f"{here}: expected a mapping of settings, got {type(data).__name__}")
        allowed = {f.name for f in fields(cls)} - {"name"}
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise CameraConfigError(f"{here}: unknown key {key!r}{hint}; allowed: {sorted(allowed)}")
        f = _Fields(here, data)
        kind = f.choice("type", KINDS, required=True)
        frozen_default = None if kind == "simulated" else 5
        cfg = cls(
            name=name,
            type=kind,
            view=f.string("view") or name,
            source=f.source(),
            serial=f.string("serial"),
            playback=f.string("playback"),
            width=f.integer("width"),
            height=f.integer("height"),
            fps=f.number("fps"),
            fourcc=f.string("fourcc"),
            depth=f.boolean("depth", False),
            exposure=f.number("exposure"),
            gain=f.number("gain", allow_zero=True),
            white_balance=f.number("white_balance"),
            replay=f.choice("replay", ("realtime", "fast")) or "realtime",
            loop=f.boolean("loop", False),
            rotation=f.choice("rotation", (0, 90, 180, 270)) or 0,
            crop=f.int_tuple("crop", 4),
            resize=f.int_tuple("resize", 2),
            frozen_after=f.integer("frozen_after", default=frozen_default, minimum=2),
            stall_timeout=f.number("stall_timeout"),
            buffer_size=f.integer("buffer_size", default=8),
            undistort=f.boolean("undistort", False),
        )
        if cfg.fourcc is not None and len(cfg.fourcc) != 4:
            raise CameraConfigError(
                f"{here}.fourcc: must be 4 characters like MJPG or YUYV, got {cfg.fourcc!r}"
            )
        if kind == "opencv" and cfg.source is None:
            raise CameraConfigError(
                f"{here}.source: required for an opencv camera (index, /dev path or file)"
            )
        if kind != "opencv" and cfg.source is not None:
            raise CameraConfigError(f"{here}.source: only opencv cameras take a source")
        if kind != "realsense":
            for key in ("serial", "playback", "depth", "exposure", "gain", "white_balance"):
                if key in data:
                    raise CameraConfigError(f"{here}.{key}: only realsense cameras take {key!r}")
        if kind == "realsense" and cfg.serial and cfg.playback:
            raise CameraConfigError(f"{here}: give either serial or playback, not both")
        return cfg

    def resolve_paths(self, base: Path) -> CameraConfig:
        """Relative file paths (video files, recordings) taken relative to ``base`` (robot.yaml's folder)."""
        changes: dict[str, Any] = {}
        if isinstance(self.source, str) and not self.source.startswith("/"):
            changes["source"] = str(base / self.source)
        if self.playback and not Path(self.playback).is_absolute():
            changes["playback"] = str(base / self.playback)
        return _replace(self, **changes) if changes else self


@dataclass(frozen=True)
class CamerasConfig:
    cameras: tuple[CameraConfig, ...]
    max_age: float = 0.1
    max_skew: float = 0.02

    @property
    def views(self) -> dict[str, str]:
        return {c.name: c.view for c in self.cameras}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "cameras") -> CamerasConfig:
        if data is None:
            return cls(cameras=())
        if not isinstance(data, Mapping):
            raise CameraConfigError(f"{where}: expected a mapping with max_age, max_skew, devices")
        for key in data:
            if key not in ("max_age", "max_skew", "devices"):
                close = difflib.get_close_matches(str(key), ["max_age", "max_skew", "devices"], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise CameraConfigError(f"{where}: unknown key {key!r}{hint}")
        f = _Fields(where, data)
        devices = data.get("devices") or {}
        if not isinstance(devices, Mapping):
            raise CameraConfigError(f"{where}.devices: expected a mapping of camera name -> settings")
        cams = tuple(CameraConfig.from_dict(str(n), d, f"{where}.devices") for n, d in devices.items())
        views = [c.view for c in cams]
        dup = sorted({v for v in views if views.count(v) > 1})
        if dup:
            raise CameraConfigError(f"{where}.devices: model view(s) {dup} fed by more than one camera")
        return cls(
            cameras=cams,
            max_age=f.number("max_age", default=0.1),
            max_skew=f.number("max_skew", default=0.02, allow_zero=True),
        )


def _replace(cfg: CameraConfig, **changes: Any) -> CameraConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


class _Fields:
    """Typed reads of one mapping, each error naming ``where.key``."""

    def __init__(self, where: str, data: Mapping[str, Any]) -> None:
        self.where, self.data = where, data

    def _err(self, key: str, what: str) -> CameraConfigError:
        return CameraConfigError(f"{self.where}.{key}: expected {what}, got {self.data.get(key)!r}")

    def string(self, key: str) -> str | None:
        v = self.data.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise self._err(key, "a string")
        return str(v)

    def number(self, key: str, default: float | None = None, allow_zero: bool = False) -> float | None:
        v = self.data.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or (v == 0 and not allow_zero):
            raise self._err(key, "a non-negative number" if allow_zero else "a positive number")
        return float(v)

    def integer(self, key: str, default: int | None = None, minimum: int = 1) -> int | None:
        v = self.data.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self._err(key, f"an integer >= {minimum}")
        return v

    def boolean(self, key: str, default: bool) -> bool:
        v = self.data.get(key, default)
        if not isinstance(v, bool):
            raise self._err(key, "true or false")
        return v

    def choice(self, key: str, options: tuple[Any, ...], required: bool = False) -> Any:
        if key not in self.data:
            if required:
                raise CameraConfigError(f"{self.where}.{key}: required, one of {list(options)}")
            return None
        v = self.data[key]
        if v not in options or isinstance(v, bool):
            raise self._err(key, f"one of {list(options)}")
        return v

    def int_tuple(self, key: str, n: int) -> tuple[int, ...] | None:
        v = self.data.get(key)
        if v is None:
            return None
        if (
            not isinstance(v, list | tuple)
            or len(v) != n
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in v)
        ):
            raise self._err(key, f"a list of {n} non-negative integers")
        t = tuple(v)
        if (n == 2 and min(t) == 0) or (n == 4 and min(t[2:]) == 0):
            raise self._err(key, "non-zero width and height")
        return t

    def source(self) -> int | str | None:
        v = self.data.get("source")
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise self._err("source", "a device index, /dev path or video file path")
        if isinstance(v, str) and v.isdigit():
            return int(v)
        return v
