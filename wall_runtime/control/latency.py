"""Round-trip latency estimate for chunk requests.

The estimate drives two decisions: when to ask for the next chunk and how many actions of the
previous chunk will already have run when the new one lands (the RTC delay). LeRobot PR #4223 is
the cautionary tale: a warm-up latency pinned a running maximum and the first chunks skipped most
of their actions. So the first samples are ignored and the estimate is a p95 over a sliding window,
which forgets an outlier once it has left the window.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


class LatencyEstimator:
    """p95 of the last ``window`` round trips, ignoring the first ``warmup`` samples."""

    def __init__(self, window: int = 20, warmup: int = 2, quantile: float = 0.95) -> None:
        if window < 1:
            raise ValueError("latency window must hold at least one sample")
        if warmup < 0:
            raise ValueError("latency warmup must be zero or more samples")
        if not 0.0 < quantile <= 1.0:
            raise ValueError("latency quantile must be in (0, 1]")
        self.window = window
        self.warmup = warmup
        self.quantile = quantile
        self._seen = 0
        self._samples: deque[float] = deque(maxlen=window)
        self._warmup_samples: list[float] = []

    def add(self, seconds: float) -> None:
        """Record one round trip (chunk arrival time minus the observation stamp it answers)."""
        if not math.isfinite(seconds) or seconds < 0:
            return  # a clock glitch or a reordered reply says nothing about the link
        self._seen += 1
        if self._seen <= self.warmup:
            self._warmup_samples.append(seconds)
            return
        self._samples.append(seconds)

    @property
    def samples(self) -> int:
        return len(self._samples)

    def estimate(self, default: float | None = None) -> float | None:
        """The p95 latency in seconds; during warm-up the smallest warm-up sample (optimistic on
        purpose: over-estimating the delay is what makes a splice skip actions), else ``default``."""
        if self._samples:
            return float(np.quantile(np.fromiter(self._samples, float), self.quantile))
        if self._warmup_samples:
            return min(self._warmup_samples)
        return default
