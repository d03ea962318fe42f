"""A timed action plan: waypoints on the robot host's monotonic clock, linearly interpolated."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TimedPlan:
    """Waypoints ``actions[i]`` meant for ``times[i]`` (strictly increasing), in the model's action layout."""

    times: np.ndarray  # float64 [N]
    actions: np.ndarray  # float64 [N, D]

    def __post_init__(self) -> None:
        self.times = np.asarray(self.times, dtype=np.float64)
        self.actions = np.asarray(self.actions, dtype=np.float64)
        if self.actions.ndim != 2 or self.times.shape != (self.actions.shape[0],):
            raise ValueError(f"plan shapes disagree: times {self.times.shape}, actions {self.actions.shape}")
        if self.times.size == 0:
            raise ValueError("a plan needs at least one waypoint")
        if self.times.size > 1 and not np.all(np.diff(self.times) > 0):
            raise ValueError("plan times must increase strictly")

    @property
    def start(self) -> float:
        return float(self.times[0])

    @property
    def end(self) -> float:
        return float(self.times[-1])

    @property
    def dim(self) -> int:
        return int(self.actions.shape[1])

    def value_at(self, t: float) -> np.ndarray | None:
        """The interpolated action at ``t``; ``None`` once the plan is exhausted."""
        if t > self.times[-1]:
            return None
        if t <= self.times[0]:
            return self.actions[0].copy()
        if t == self.times[-1]:
            return self.actions[-1].copy()
        j = int(np.searchsorted(self.times, t, side="right"))  # times[j-1] <= t < times[j]
        t0, t1 = self.times[j - 1], self.times[j]
        w = (t - t0) / (t1 - t0)
        return (1.0 - w) * self.actions[j - 1] + w * self.actions[j]

    def sample(self, times: np.ndarray, hold_last: bool = True) -> np.ndarray:
        """Values at ``times`` ([M, D]); past the end the last row repeats (or NaN without ``hold_last``)."""
        times = np.asarray(times, dtype=np.float64)
        out = np.empty((times.size, self.dim))
        for d in range(self.dim):
            out[:, d] = np.interp(times, self.times, self.actions[:, d])
        if not hold_last:
            out[times > self.times[-1]] = np.nan
        return out

    def covers(self, times: np.ndarray) -> np.ndarray:
        return (np.asarray(times) >= self.times[0]) & (np.asarray(times) <= self.times[-1])

    def drop_before(self, t: float) -> None:
        """Forget waypoints wholly in the past, keeping the one that brackets ``t`` from below."""
        j = int(np.searchsorted(self.times, t, side="right")) - 1
        if j > 0:
            self.times = self.times[j:]
            self.actions = self.actions[j:]
