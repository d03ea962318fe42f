"""OpenCV cameras: a V4L2 device (index or /dev path) or a video file replayed as if live."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from wall_runtime.cameras.base import Camera, CameraError, RawFrame
from wall_runtime.cameras.clock import plausible_host_stamp
from wall_runtime.cameras.transforms import ImageTransform

log = logging.getLogger(__name__)

REPLAY_MODES = ("realtime", "fast")


def is_video_file(source: int | str) -> bool:
    return isinstance(source, str) and not source.startswith("/dev/") and Path(source).is_file()


class OpenCVCamera(Camera):
    """``source``: device index, ``/dev/videoN`` path, or a video file.

    Devices are opened through V4L2 on Linux with FOURCC, then resolution, then fps (the order
    V4L2 drivers honour); a device that does not give the requested resolution is an error, since
    the model's input shapes are fixed. Frames are stamped with the V4L2 buffer time where the
    driver reports one on the monotonic clock, otherwise with the arrival time.

    Files are replayed at their own frame rate (``replay="realtime"``, each frame stamped when its
    media time comes) or as fast as they decode (``replay="fast"``); ``loop`` restarts them.
    """

    def __init__(
        self,
        name: str,
        source: int | str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        fourcc: str | None = None,
        replay: str = "realtime",
        loop: bool = False,
        transform: ImageTransform | None = None,
        buffer_size: int = 8,
        frozen_after: int | None = 5,
        stall_timeout: float | None = None,
    ) -> None:
        if replay not in REPLAY_MODES:
            raise ValueError(f"camera {name!r}: replay must be one of {REPLAY_MODES}, got {replay!r}")
        if fourcc is not None and len(fourcc) != 4:
            raise ValueError(f"camera {name!r}: fourcc must be 4 characters, got {fourcc!r}")
        self.source = source
        self.width, self.height, self.fourcc = width, height, fourcc
        self.replay, self.loop = replay, loop
        self.is_file = is_video_file(source)
        self._cap: cv2.VideoCapture | None = None
        self._t0_host = 0.0
        self._t0_media: float | None = None
        self._loop_offset = 0.0
        self._last_media = 0.0
        self._file_index = -1
        super().__init__(
            name,
            fps=fps,
            transform=transform,
            buffer_size=buffer_size,
            frozen_after=frozen_after,
            stall_timeout=stall_timeout,
        )

    def _open(self) -> None:
        if isinstance(self.source, str) and not self.is_file and not self.source.startswith("/dev/"):
            raise CameraError(f"camera {self.name!r}: no such video file or device: {self.source!r}")
        if self.is_file:
            cap = cv2.VideoCapture(str(self.source))
        else:
            backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
            cap = cv2.VideoCapture(self.source, backend)
        if not cap.isOpened():
            raise CameraError(f"camera {self.name!r}: OpenCV cannot open {self.source!r}")
        if self.is_file:
            file_fps = cap.get(cv2.CAP_PROP_FPS)
            self.fps = self.fps or (file_fps if file_fps > 0 else 30.0)
        else:
            self._configure_device(cap)
        self._cap = cap
        self._t0_media = None
        self._loop_offset = 0.0
        self._file_index = -1

    def _configure_device(self, cap: cv2.VideoCapture) -> None:
        if self.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc))
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a queue of old ones
        got = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if (self.width and got[0] != self.width) or (self.height and got[1] != self.height):
            cap.release()
            raise CameraError(
                f"camera {self.name!r}: asked for {self.width}x{self.height}, device gives {got[0]}x{got[1]}"
            )
        actual_fps = cap.get(cv2.CAP_PROP_FPS)
        if self.fps and actual_fps > 0 and abs(actual_fps - self.fps) > 0.5:
            log.warning("camera %s: asked for %.1f fps, device reports %.1f", self.name, self.fps, actual_fps)
        self.fps = self.fps or (actual_fps if actual_fps > 0 else None)

    def _read(self) -> RawFrame | None:
        assert self._cap is not None
        ok, bgr = self._cap.read()
        arrival = time.monotonic()
        if not ok:
            if not self.is_file:
                raise OSError(f"read from {self.source!r} failed")
            if not self.loop:
                return None
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._loop_offset += self._last_media + 1.0 / (self.fps or 30.0)
            ok, bgr = self._cap.read()
            if not ok:
                return None
        image = (
            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        )
        pos_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        if self.is_file:
            return self._file_frame(image, pos_ms)
        stamp = pos_ms / 1000.0 if plausible_host_stamp(pos_ms / 1000.0, arrival) else arrival
        return RawFrame(image=image, stamp=stamp)

    def _file_frame(self, image: np.ndarray, pos_ms: float) -> RawFrame:
        assert self._cap is not None
        self._last_media = pos_ms / 1000.0
        media = self._loop_offset + self._last_media
        self._file_index += 1
        if self._t0_media is None:
            self._t0_host, self._t0_media = time.monotonic(), media
        if self.replay == "realtime":
            due = self._t0_host + (media - self._t0_media)
            while (wait := due - time.monotonic()) > 0 and not self._stop.is_set():
                time.sleep(min(wait, 0.05))
            stamp = due
        else:
            stamp = time.monotonic()
        # Our own counter: the file's restarts at each loop, which would read as a jump backwards.
        return RawFrame(image=image, stamp=stamp, sensor_stamp=media, sensor_index=self._file_index)

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def discover_opencv(max_index: int = 16) -> list[dict[str, object]]:
    """V4L2 video devices that OpenCV can open, with their default resolution and fps."""
    found: list[dict[str, object]] = []
    if sys.platform.startswith("linux"):
        candidates: list[int | str] = sorted(
            (str(p) for p in Path("/dev").glob("video*")),
            key=lambda s: int("0" + "".join(filter(str.isdigit, s))),
        )
    else:
        candidates = list(range(max_index))
    for dev in candidates:
        if isinstance(dev, str) and not os.access(dev, os.R_OK):
            found.append({"source": dev, "status": "no read permission (add the user to the 'video' group)"})
            continue
        cap = cv2.VideoCapture(dev, cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY)
        try:
            if not cap.isOpened():
                continue
            ok, _ = cap.read()
            found.append(
                {
                    "source": dev,
                    "status": "ok" if ok else "opens but gives no frame (metadata node?)",
                    "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                    "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                    "fps": round(float(cap.get(cv2.CAP_PROP_FPS)), 2),
                    "backend": cap.getBackendName(),
                }
            )
        finally:
            cap.release()
    return found
