"""A camera fed by a simulator: ``render() -> HxWx3 uint8 RGB`` called at the camera's rate."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from wall_runtime.cameras.base import Camera, CameraError, RawFrame
from wall_runtime.cameras.transforms import ImageTransform

RenderFn = Callable[[], np.ndarray]


class SimulatedCamera(Camera):
    """Calls ``render`` from its capture thread every ``1/fps`` s and stamps the frame with the time
    the render *started* (the simulator state it shows). ``render`` must be safe to call from that
    thread (a MuJoCo renderer should be created there or guarded by the simulator's lock).

    Frozen-frame detection is off by default: a still simulated scene legitimately renders the
    same picture twice. A render that raises or returns the wrong shape stops the camera loudly.
    """

    def __init__(
        self,
        name: str,
        render: RenderFn,
        *,
        fps: float = 30.0,
        transform: ImageTransform | None = None,
        buffer_size: int = 8,
        frozen_after: int | None = None,
        stall_timeout: float | None = None,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"camera {name!r}: fps must be > 0, got {fps}")
        self.render = render
        self._next = 0.0
        self._index = -1
        super().__init__(
            name,
            fps=fps,
            transform=transform,
            buffer_size=buffer_size,
            frozen_after=frozen_after,
            stall_timeout=stall_timeout,
        )

    def _open(self) -> None:
        self._next = time.monotonic()
        self._index = -1

    def _read(self) -> RawFrame | None:
        assert self.fps is not None
        period = 1.0 / self.fps
        while (wait := self._next - time.monotonic()) > 0 and not self._stop.is_set():
            time.sleep(min(wait, 0.05))
        now = time.monotonic()
        # A late render skips the missed ticks (counted as drops) rather than bursting to catch up.
        missed = max(0, int((now - self._next) / period))
        self._next += (missed + 1) * period
        self._index += missed + 1
        stamp = time.monotonic()
        try:
            image = self.render()
        except Exception as e:
            raise CameraError(f"camera {self.name!r}: render failed: {type(e).__name__}: {e}") from e
        # A copy: renderers may hand back the same buffer each call, which would rewrite old frames.
        image = np.array(image, copy=True)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise CameraError(
                f"camera {self.name!r}: render must return HxWx3 uint8 RGB, got {image.dtype} {image.shape}"
            )
        return RawFrame(image=image, stamp=stamp, sensor_index=self._index)

    def _close(self) -> None:
        pass
