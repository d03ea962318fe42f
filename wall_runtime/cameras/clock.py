"""Mapping a sensor's own clock onto the robot host's monotonic clock.

A frame's true capture time is its sensor stamp; the host only sees when it *arrived*, which is
later by a variable transfer delay. ``arrival - sensor`` is therefore the clock offset plus a
non-negative delay, and its minimum over a recent window is the best estimate of the offset
(the frame that travelled fastest). The window lets the estimate follow slow clock drift.
"""

from __future__ import annotations

import time
from collections import deque


class SensorClock:
    """``to_host(sensor_s, arrival_s)``: the host monotonic time the frame was captured."""

    def __init__(self, window: int = 300) -> None:
        self._offsets: deque[float] = deque(maxlen=window)

    def to_host(self, sensor_s: float, arrival_s: float) -> float:
        self._offsets.append(arrival_s - sensor_s)
        return sensor_s + min(self._offsets)

    def reset(self) -> None:
        self._offsets.clear()


def wall_to_monotonic(wall_s: float) -> float:
    """A ``time.time()`` stamp (e.g. a RealSense global/system-time stamp) on the monotonic clock."""
    return wall_s - (time.time() - time.monotonic())


def plausible_host_stamp(candidate: float, arrival: float, max_delay: float = 1.0) -> bool:
    """A driver stamp already on the monotonic clock (V4L2 buffers usually are) sits just before arrival."""
    return arrival - max_delay <= candidate <= arrival + 1e-3
