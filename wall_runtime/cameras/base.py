"""The camera contract: one capture thread per camera feeding a small ring of stamped frames.

A subclass only says how to open the device, read one raw frame (blocking) and close it. This base
class owns the thread, the ring, the image transform, and the health checks every camera gets:
dropped frames (sensor counter gaps or stamp gaps), frozen frames (the same picture again and
again, lerobot#1083) and stalls (no frame at all). A frozen or stalled camera is *reported*:
``latest()`` raises instead of handing out an old picture as if it were new.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from wall_runtime.cameras.transforms import ImageTransform

if TYPE_CHECKING:
    from wall_runtime.calibration.intrinsics import Intrinsics

log = logging.getLogger(__name__)


class CameraError(RuntimeError):
    """A camera cannot give a usable frame; the message names the camera and the reason."""

    reason = "error"


class CameraStoppedError(CameraError):
    """The camera is not running: never started, stopped, end of a recording, or its thread failed."""

    reason = "stopped"


class StaleFrameError(CameraError):
    """The newest frame is older than allowed (the camera stalled, or ``max_age`` is exceeded)."""

    reason = "stale"


class FrozenCameraError(CameraError):
    """The camera keeps delivering the very same picture (or the same sensor stamp)."""

    reason = "frozen"


@dataclass(frozen=True)
class Frame:
    """One captured frame, after the camera's transform.

    ``stamp`` is the robot host's monotonic capture time in seconds. Where the sensor has its own
    clock, ``stamp`` is that clock mapped onto the host clock (see ``clock.SensorClock``) and the
    raw value is kept in ``sensor_stamp`` (seconds on the sensor's clock).
    """

    image: np.ndarray  # HxWx3 uint8 RGB
    stamp: float
    index: int  # this camera's frame sequence number (0, 1, 2, ... for distinct frames)
    received: float  # host monotonic time the capture thread got the frame
    sensor_stamp: float | None = None
    sensor_index: int | None = None
    depth: np.ndarray | None = None  # HxW uint16, aligned to ``image``
    depth_scale: float | None = None  # metres per depth unit


@dataclass
class RawFrame:
    """What a driver hands the capture thread, before transform and bookkeeping."""

    image: np.ndarray  # HxWx3 uint8 RGB
    stamp: float  # host monotonic capture time (already mapped from the sensor clock)
    sensor_stamp: float | None = None
    sensor_index: int | None = None
    depth: np.ndarray | None = None
    depth_scale: float | None = None


@dataclass
class CameraStats:
    """Counters of one camera since ``start()``."""

    frames: int = 0  # distinct frames put in the ring
    dropped: int = 0  # frames the sensor produced that never reached us (counter or stamp gaps)
    repeated: int = 0  # frames identical to their predecessor (not put in the ring)
    frozen_events: int = 0  # times the camera was declared frozen
    frozen: bool = False  # frozen right now
    errors: int = 0  # read errors the thread recovered from
    fps: float = 0.0  # measured rate of distinct frames over the ring
    last_error: str | None = None
    extra: dict[str, int] = field(default_factory=dict)


class Camera(abc.ABC):
    """A camera with its own capture thread.

    ``frozen_after``: this many identical frames in a row (the first plus ``frozen_after - 1``
    repeats) declare the camera frozen; ``None`` disables the check (a simulator rendering a still
    scene legitimately repeats itself). ``stall_timeout``: seconds without any frame after which
    ``latest()`` reports a stall; by default five nominal frame periods, at least 0.5 s.
    """

    def __init__(
        self,
        name: str,
        *,
        fps: float | None = None,
        transform: ImageTransform | None = None,
        buffer_size: int = 8,
        frozen_after: int | None = 5,
        stall_timeout: float | None = None,
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"camera {name!r}: buffer_size must be >= 1, got {buffer_size}")
        if frozen_after is not None and frozen_after < 2:
            raise ValueError(f"camera {name!r}: frozen_after must be >= 2 or None, got {frozen_after}")
        self.name = name
        self.fps = fps
        self.transform = transform or ImageTransform()
        # calibrated intrinsics of the raw sensor image (calibration/<robot>/intrinsics_<name>.yaml),
        # attached by the factory when a result file exists
        self.intrinsics: Intrinsics | None = None
        self.frozen_after = frozen_after
        self.stall_timeout = stall_timeout if stall_timeout is not None else max(0.5, 5.0 / (fps or 30.0))
        self._ring: deque[Frame] = deque(maxlen=buffer_size)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._running = False
        self._ended: str | None = None  # why the thread ended, if it did
        self._stats = CameraStats()
        self._last_fingerprint: int | None = None
        self._last_sensor_stamp: float | None = None
        self._last_sensor_index: int | None = None
        self._repeat_run = 0
        self._started_at = 0.0

    # -- what a driver implements -------------------------------------------------------------

    @abc.abstractmethod
    def _open(self) -> None:
        """Open the device; raise CameraError with a clear message if it cannot be opened."""

    @abc.abstractmethod
    def _read(self) -> RawFrame | None:
        """Block until the next frame; ``None`` means the stream ended (end of a recording)."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the device; called from the thread that called ``stop()``."""

    # -- the contract ---------------------------------------------------------------------------

    def start(self, timeout: float | None = 5.0) -> None:
        """Open the camera and start its capture thread; wait up to ``timeout`` s for a first frame."""
        if self._running:
            return
        self._open()
        self._stop.clear()
        self._ended = None
        self._ring.clear()
        self._stats = CameraStats()
        self._last_fingerprint = self._last_sensor_stamp = self._last_sensor_index = None
        self._repeat_run = 0
        self._started_at = time.monotonic()
        self._running = True
        self._thread = threading.Thread(target=self._capture_loop, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        if timeout is not None:
            self._wait_first(timeout)

    def _wait_first(self, timeout: float) -> None:
        """A camera that gives no frame at all within ``timeout`` is stopped and reported."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._ring and self._ended is None and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            got_frame, why = bool(self._ring), self._ended
        if not got_frame:
            self.stop()
            raise CameraStoppedError(
                f"camera {self.name!r}: no first frame within {timeout:.1f} s" + (f" ({why})" if why else "")
            )

    def stop(self) -> None:
        """Stop the capture thread and release the device; safe to call more than once."""
        if not self._running:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.warning("camera %s: capture thread did not end within 5 s", self.name)
        self._close()
        self._running = False
        with self._cond:
            self._ended = self._ended or "stopped"
            self._cond.notify_all()

    def latest(self, max_age: float | None = None, now: float | None = None) -> Frame:
        """The newest frame; raises if the camera is frozen, stalled, stopped or the frame is too old."""
        with self._cond:
            return self._check(self._ring[-1] if self._ring else None, max_age, now)

    def wait_for(self, after_index: int, timeout: float) -> Frame:
        """Block until a frame with ``index > after_index`` arrives (a fresh frame); raise on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self._ring and self._ring[-1].index > after_index):
                if self._ended is not None:
                    raise CameraStoppedError(f"camera {self.name!r}: {self._ended}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StaleFrameError(f"camera {self.name!r}: no new frame within {timeout:.2f} s")
                self._cond.wait(left)
            return self._check(self._ring[-1], None, None)

    def frames(self) -> list[Frame]:
        """The ring's frames, oldest first (for aligning several cameras by stamp)."""
        with self._cond:
            self._check(self._ring[-1] if self._ring else None, None, None)
            return list(self._ring)

    def stats(self) -> CameraStats:
        with self._cond:
            s = self._stats
            out = CameraStats(**{k: getattr(s, k) for k in s.__dataclass_fields__})
            out.extra = dict(s.extra)
            if len(self._ring) >= 2:
                span = self._ring[-1].stamp - self._ring[0].stamp
                out.fps = (len(self._ring) - 1) / span if span > 0 else 0.0
            return out

    @property
    def running(self) -> bool:
        return self._running and self._ended is None

    def __enter__(self) -> Camera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------------

    def _check(self, frame: Frame | None, max_age: float | None, now: float | None) -> Frame:
        """Refuse what must not reach a policy. Called with ``_cond`` held."""
        if self._ended is not None:
            raise CameraStoppedError(f"camera {self.name!r}: {self._ended}")
        if not self._running:
            raise CameraStoppedError(f"camera {self.name!r}: not started")
        if self._stats.frozen:
            raise FrozenCameraError(
                f"camera {self.name!r}: frozen, the same picture {self._repeat_run + 1} times in a row"
            )
        now = time.monotonic() if now is None else now
        if frame is None:
            raise StaleFrameError(f"camera {self.name!r}: no frame yet")
        if now - frame.received > self.stall_timeout:
            raise StaleFrameError(
                f"camera {self.name!r}: stalled, no new frame for {now - frame.received:.2f} s "
                f"(limit {self.stall_timeout:.2f} s)"
            )
        if max_age is not None and now - frame.stamp > max_age:
            raise StaleFrameError(
                f"camera {self.name!r}: newest frame is {1000 * (now - frame.stamp):.0f} ms old "
                f"(max_age {1000 * max_age:.0f} ms)"
            )
        return frame

    def _capture_loop(self) -> None:
        consecutive_errors = 0
        while not self._stop.is_set():
            try:
                raw = self._read()
            except CameraError as e:
                self._end(str(e))
                return
            except Exception as e:  # a driver error: count, retry a few times, then give up loudly
                consecutive_errors += 1
                with self._cond:
                    self._stats.errors += 1
                    self._stats.last_error = f"{type(e).__name__}: {e}"
                log.warning("camera %s: read failed (%s)", self.name, e)
                if consecutive_errors >= 10:
                    self._end(f"read failed 10 times in a row, last: {type(e).__name__}: {e}")
                    return
                time.sleep(0.01)
                continue
            consecutive_errors = 0
            if raw is None:
                self._end("end of stream")
                return
            if self._stop.is_set():
                return
            self._accept(raw, time.monotonic())

    def _end(self, why: str) -> None:
        with self._cond:
            self._ended = why
            self._cond.notify_all()
        log.info("camera %s: capture ended: %s", self.name, why)

    def _accept(self, raw: RawFrame, received: float) -> None:
        if self._is_repeat(raw):
            with self._cond:
                self._stats.repeated += 1
                self._repeat_run += 1
                if (
                    self.frozen_after is not None
                    and self._repeat_run + 1 >= self.frozen_after
                    and not self._stats.frozen
                ):
                    self._stats.frozen = True
                    self._stats.frozen_events += 1
                    log.warning("camera %s: frozen (%d identical frames)", self.name, self._repeat_run + 1)
                self._cond.notify_all()
            return
        self._count_drops(raw)
        image, depth = self.transform.apply(raw.image, raw.depth)
        with self._cond:
            index = self._ring[-1].index + 1 if self._ring else 0
            self._ring.append(
                Frame(
                    image=image,
                    stamp=raw.stamp,
                    index=index,
                    received=received,
                    sensor_stamp=raw.sensor_stamp,
                    sensor_index=raw.sensor_index,
                    depth=depth,
                    depth_scale=raw.depth_scale,
                )
            )
            self._stats.frames += 1
            self._stats.frozen = False
            self._repeat_run = 0
            self._cond.notify_all()

    def _is_repeat(self, raw: RawFrame) -> bool:
        """Same picture as the previous frame, or the sensor re-sent the same stamp."""
        if raw.sensor_stamp is not None and raw.sensor_stamp == self._last_sensor_stamp:
            return True
        self._last_sensor_stamp = raw.sensor_stamp
        if self.frozen_after is None:
            return False
        # crc32 over the raw bytes costs ~0.2 ms per VGA frame; real sensors never repeat a picture
        # bit for bit (noise), so equality means the driver handed us the same buffer again.
        fingerprint = zlib.crc32(np.ascontiguousarray(raw.image).data)
        repeat = fingerprint == self._last_fingerprint
        self._last_fingerprint = fingerprint
        return repeat

    def _count_drops(self, raw: RawFrame) -> None:
        gap = 0
        if raw.sensor_index is not None:
            if self._last_sensor_index is not None and raw.sensor_index > self._last_sensor_index + 1:
                gap = raw.sensor_index - self._last_sensor_index - 1
            self._last_sensor_index = raw.sensor_index
        elif self.fps and self._ring:
            period = 1.0 / self.fps
            dt = raw.stamp - self._ring[-1].stamp
            if dt > 1.5 * period:
                gap = round(dt / period) - 1
        if gap:
            with self._cond:
                self._stats.dropped += gap
