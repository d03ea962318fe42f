"""One camera view's episode video (PyAV), framed so LeRobot finds frame i at i / fps."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np


class VideoError(ValueError):
    """An image that does not fit the stream (named in the message)."""


class VideoStream:
    """One camera view's mp4: frame ``i`` at ``pts = i`` on a ``1/fps`` time base, so LeRobot finds
    frame ``i`` at ``timestamp = i / fps`` exactly."""

    def __init__(self, path: Path, fps: int, height: int, width: int, codec: str) -> None:
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = Fraction(1, fps)
        # a keyframe every 2 frames (LeRobot's default): a frame decodes without a long run-up
        self.stream.options = {"g": "2", "crf": "23"} | (
            {"preset": "ultrafast"} if codec == "libx264" else {}
        )
        self.shape = (height, width, 3)
        self.frames = 0
        self._last: tuple[int, Any] | None = None

    def add(self, image: np.ndarray) -> None:
        import av

        if self._last is not None and self._last[0] == id(image):
            frame = self._last[1]  # the camera had nothing new: the same picture again
        else:
            img = np.asarray(image)
            if img.shape != self.shape or img.dtype != np.uint8:
                raise VideoError(
                    f"{self.path.parent.parent.name}: image {img.shape} {img.dtype}, expected {self.shape} uint8"
                )
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            self._last = (id(image), frame)
        frame.pts = self.frames
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
