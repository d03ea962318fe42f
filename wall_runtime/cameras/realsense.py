"""Intel RealSense cameras through pyrealsense2: live by serial number, or a recording played back.

Colour comes as RGB8; depth (optional) is aligned to colour with ``rs.align`` so pixel (u, v) of
``Frame.depth`` is the depth of pixel (u, v) of ``Frame.image``. Stamps come from the sensor: the
global-time domain (the device clock translated to the host's wall clock by librealsense) is
moved onto the monotonic clock; a hardware-clock stamp is mapped with ``SensorClock``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.cameras.base import Camera, CameraError, RawFrame
from wall_runtime.cameras.clock import SensorClock, plausible_host_stamp, wall_to_monotonic
from wall_runtime.cameras.transforms import ImageTransform

log = logging.getLogger(__name__)

_POLL_MS = 100  # short waits so stop() never waits long on a blocked read
_NO_FRAME_S = 2.0  # a live camera silent this long is a read error


def import_rs() -> Any:
    try:
        import pyrealsense2 as rs
    except ImportError as e:  # pragma: no cover - depends on the install
        raise CameraError("RealSense cameras need pyrealsense2: pip install 'wall-runtime[realsense]'") from e
    return rs


class RealSenseCamera(Camera):
    """One RealSense device (``serial``; the only one attached if ``None``) or a recording
    (``playback``: a librealsense ``.db3`` or ``.bag`` file).

    ``exposure`` (µs), ``gain`` and ``white_balance`` (K) switch the matching auto mode off; left
    ``None`` the camera keeps its auto modes. ``realtime=False`` plays a recording back as fast as
    it decodes. A recording is played at the size it holds; ``width``/``height``, if given, are checked.
    """

    def __init__(
        self,
        name: str,
        *,
        serial: str | None = None,
        playback: str | Path | None = None,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        depth: bool = False,
        exposure: float | None = None,
        gain: float | None = None,
        white_balance: float | None = None,
        realtime: bool = True,
        transform: ImageTransform | None = None,
        buffer_size: int = 8,
        frozen_after: int | None = 5,
        stall_timeout: float | None = None,
    ) -> None:
        self.serial = serial
        self.playback = Path(playback) if playback is not None else None
        self.width, self.height = width, height
        self.depth = depth
        self.exposure, self.gain, self.white_balance = exposure, gain, white_balance
        self.realtime = realtime
        self._pipeline: Any = None
        self._align: Any = None
        self._playback_dev: Any = None
        self._clock = SensorClock()
        self._depth_scale: float | None = None
        self._last_color_number: int | None = None
        self._pending_unmatched: int | None = None
        super().__init__(
            name,
            fps=fps,
            transform=transform,
            buffer_size=buffer_size,
            frozen_after=frozen_after,
            stall_timeout=stall_timeout,
        )

    # -- opening ------------------------------------------------------------------------------

    def _open(self) -> None:
        rs = import_rs()
        cfg = rs.config()
        if self.playback is not None:
            if not self.playback.is_file():
                raise CameraError(f"camera {self.name!r}: no such RealSense recording: {self.playback}")
            cfg.enable_device_from_file(str(self.playback), repeat_playback=False)
            # A recording plays the streams it holds at the size it was made with (checked below).
        else:
            if self.serial is not None:
                cfg.enable_device(str(self.serial))
            # Live defaults: 640x480 at 30 fps, a mode every RealSense colour sensor has.
            self.width, self.height, self.fps = self.width or 640, self.height or 480, self.fps or 30
            w, h, f = self.width, self.height, int(self.fps)
            cfg.enable_stream(rs.stream.color, w, h, rs.format.rgb8, f)
            if self.depth:
                cfg.enable_stream(rs.stream.depth, w, h, rs.format.z16, f)
        pipeline = rs.pipeline()
        if self.playback is not None:
            # checked on the resolved profile, before anything streams: stopping a playback
            # pipeline straight after starting it can abort inside librealsense
            try:
                recorded = cfg.resolve(rs.pipeline_wrapper(pipeline)).get_stream(rs.stream.color)
            except RuntimeError as e:
                raise CameraError(
                    f"camera {self.name!r}: recording {self.playback} has no colour stream: {e}"
                ) from e
            self._check_recorded_size(recorded.as_video_stream_profile())
        try:
            profile = pipeline.start(cfg)
        except RuntimeError as e:
            known = [d["serial"] for d in discover_realsense()] if self.playback is None else []
            raise CameraError(
                f"camera {self.name!r}: RealSense {self.serial or self.playback or '(any)'} did not start: {e}"
                + (f"; attached serials: {known}" if self.playback is None else "")
            ) from e
        self._pipeline = pipeline
        device = profile.get_device()
        try:
            color = profile.get_stream(rs.stream.color).as_video_stream_profile()
            if self.depth:
                profile.get_stream(rs.stream.depth)
        except RuntimeError as e:
            pipeline.stop()
            want = "colour and depth" if self.depth else "colour"
            raise CameraError(
                f"camera {self.name!r}: {self.serial or self.playback} has no {want} stream"
            ) from e
        if self.playback is not None:
            self._playback_dev = device.as_playback()
            self._playback_dev.set_real_time(self.realtime)
            self.fps = self.fps or color.fps()
        else:
            self._configure_sensors(rs, device)
        self._align = rs.align(rs.stream.color) if self.depth else None
        self._depth_scale = None
        if self.depth:
            try:
                self._depth_scale = float(device.first_depth_sensor().get_depth_scale())
            except RuntimeError:
                self._depth_scale = None  # taken from the first depth frame instead
        self._clock.reset()
        self._last_color_number = None
        self._pending_unmatched = None

    def _check_recorded_size(self, color: Any) -> None:
        got = (color.width(), color.height())
        want = (self.width or got[0], self.height or got[1])
        if got != want:
            raise CameraError(
                f"camera {self.name!r}: recording {self.playback} is {got[0]}x{got[1]}, config says {want[0]}x{want[1]}"
            )

    def _configure_sensors(self, rs: Any, device: Any) -> None:
        for sensor in device.query_sensors():
            if sensor.supports(rs.option.global_time_enabled):
                sensor.set_option(rs.option.global_time_enabled, 1)
        color_sensor = device.first_color_sensor()
        settings = (
            (self.exposure, rs.option.enable_auto_exposure, rs.option.exposure),
            (self.gain, rs.option.enable_auto_exposure, rs.option.gain),
            (self.white_balance, rs.option.enable_auto_white_balance, rs.option.white_balance),
        )
        for value, auto_option, option in settings:
            if value is None:
                continue
            if not color_sensor.supports(option):
                raise CameraError(f"camera {self.name!r}: the colour sensor has no {option} setting")
            color_sensor.set_option(auto_option, 0)
            r = color_sensor.get_option_range(option)
            if not r.min <= value <= r.max:
                raise CameraError(f"camera {self.name!r}: {option} {value} outside [{r.min}, {r.max}]")
            color_sensor.set_option(option, float(value))

    # -- reading ------------------------------------------------------------------------------

    def _read(self) -> RawFrame | None:
        rs = import_rs()
        waited = 0.0
        while not self._stop.is_set():
            ok, frames = self._pipeline.try_wait_for_frames(_POLL_MS)
            arrival = time.monotonic()
            if not ok:
                if self._playback_dev is not None and (
                    self._playback_dev.current_status() == rs.playback_status.stopped
                ):
                    return None
                waited += _POLL_MS / 1000.0
                if waited >= _NO_FRAME_S:
                    raise OSError(f"no frames for {waited:.1f} s")
                continue
            raw = self._to_raw(rs, frames, arrival)
            if raw is not None:
                return raw
        return None

    def _to_raw(self, rs: Any, frames: Any, arrival: float) -> RawFrame | None:
        color = frames.get_color_frame()
        if not color:
            return None
        number = color.get_frame_number()
        # The pipeline's syncer re-emits a colour frame each time the *depth* stream advances;
        # that is the same sensor frame again, not a frozen camera, so it is skipped here.
        if number == self._last_color_number:
            return None
        depth = None
        if self.depth:
            depth_frame = frames.get_depth_frame()
            half_period_ms = 500.0 / (self.fps or 30.0)
            if not depth_frame or abs(depth_frame.get_timestamp() - color.get_timestamp()) > half_period_ms:
                if self._pending_unmatched is not None and self._pending_unmatched != number:
                    self._count("unmatched_depth")
                self._pending_unmatched = number
                return None
            self._pending_unmatched = None
            aligned = self._align.process(frames)
            depth_frame = aligned.get_depth_frame()
            depth = np.array(depth_frame.get_data(), dtype=np.uint16, copy=True)
            if self._depth_scale is None:
                self._depth_scale = float(depth_frame.as_depth_frame().get_units())
        self._last_color_number = number
        image = np.array(color.get_data(), dtype=np.uint8, copy=True)
        sensor_s = color.get_timestamp() / 1000.0
        return RawFrame(
            image=image,
            stamp=self._host_stamp(rs, color.get_frame_timestamp_domain(), sensor_s, arrival),
            sensor_stamp=sensor_s,
            sensor_index=int(number),
            depth=depth,
            depth_scale=self._depth_scale if self.depth else None,
        )

    def _host_stamp(self, rs: Any, domain: Any, sensor_s: float, arrival: float) -> float:
        if domain in (rs.timestamp_domain.global_time, rs.timestamp_domain.system_time):
            mono = wall_to_monotonic(sensor_s)
            if plausible_host_stamp(mono, arrival):
                return mono
        return self._clock.to_host(sensor_s, arrival)

    def _count(self, key: str) -> None:
        with self._cond:
            self._stats.extra[key] = self._stats.extra.get(key, 0) + 1

    def _close(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError as e:  # already stopped at the end of a recording
                log.debug("camera %s: pipeline.stop: %s", self.name, e)
            self._pipeline = None
            self._playback_dev = None


def discover_realsense() -> list[dict[str, object]]:
    """Attached RealSense devices: name, serial, firmware, USB type, colour/depth sensors."""
    try:
        rs = import_rs()
    except CameraError:
        return []
    out: list[dict[str, object]] = []
    for dev in rs.context().query_devices():

        def info(key: Any, dev: Any = dev) -> str | None:
            return dev.get_info(key) if dev.supports(key) else None

        out.append(
            {
                "name": info(rs.camera_info.name),
                "serial": info(rs.camera_info.serial_number),
                "firmware": info(rs.camera_info.firmware_version),
                "usb": info(rs.camera_info.usb_type_descriptor),
                "sensors": [s.get_info(rs.camera_info.name) for s in dev.query_sensors()],
            }
        )
    return out
