"""A timed action plan: waypoints on the robot host's monotonic clock, interpolated at the control rate.

Between waypoints the plan is a cubic Hermite curve with Catmull-Rom tangents (``cubic``, the
default) or a straight line (``linear``). Linear interpolation makes the velocity jump at every
action, so at a control rate well above the action rate the acceleration spikes at each waypoint
(a 500 Hz loop on 50 Hz actions sees ten times the true acceleration there); the cubic keeps the
velocity continuous and reproduces straight lines exactly, so no action is shifted in time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TimedPlan:
    """Waypoints ``actions[i]`` meant for ``times[i]`` (strictly increasing), in the model's action layout."""

    times: np.ndarray  # float64 [N]
    actions: np.ndarray  # float64 [N, D]
    interpolation: str = "cubic"  # "cubic" | "linear"

    def __post_init__(self) -> None:
        self.times = np.asarray(self.times, dtype=np.float64)
        self.actions = np.asarray(self.actions, dtype=np.float64)
        if self.actions.ndim != 2 or self.times.shape != (self.actions.shape[0],):
            raise ValueError(f"plan shapes disagree: times {self.times.shape}, actions {self.actions.shape}")
        if self.times.size == 0:
            raise ValueError("a plan needs at least one waypoint")
        if self.times.size > 1 and not np.all(np.diff(self.times) > 0):
            raise ValueError("plan times must increase strictly")
        if self.interpolation not in ("cubic", "linear"):
            raise ValueError(f"interpolation must be 'cubic' or 'linear', got {self.interpolation!r}")

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
        """The interpolated action at ``t``; ``None`` once the plan is exhausted. Before the first
        waypoint the first segment is extended backwards (the plan's own continuation, which is
        what a splice blends from), or the first action held when there is only one."""
        if t > self.times[-1]:
            return None
        if t <= self.times[0]:
            if len(self.times) < 2 or t == self.times[0]:
                return self.actions[0].copy()
            slope = (self.actions[1] - self.actions[0]) / (self.times[1] - self.times[0])
            return self.actions[0] + (t - self.times[0]) * slope
        if t == self.times[-1]:
            return self.actions[-1].copy()
        T, P = self.times, self.actions
        j = int(np.searchsorted(T, t, side="right"))  # T[j-1] <= t < T[j]
        t0, t1 = T[j - 1], T[j]
        h = t1 - t0
        s = (t - t0) / h
        if self.interpolation == "linear":
            return (1.0 - s) * P[j - 1] + s * P[j]
        chord = (P[j] - P[j - 1]) / h
        m0 = (P[j] - P[j - 2]) / (t1 - T[j - 2]) if j >= 2 else chord
        m1 = (P[j + 1] - P[j - 1]) / (T[j + 1] - t0) if j + 1 < len(T) else chord
        s2 = s * s
        s3 = s2 * s
        return (
            (2 * s3 - 3 * s2 + 1) * P[j - 1]
            + (s3 - 2 * s2 + s) * h * m0
            + (-2 * s3 + 3 * s2) * P[j]
            + (s3 - s2) * h * m1
        )

    def sample(self, times: np.ndarray, hold_last: bool = True) -> np.ndarray:
        """Values at ``times`` ([M, D]); before the start the first segment is extended, past the end
        the last row repeats (or NaN without ``hold_last``)."""
        times = np.asarray(times, dtype=np.float64)
        out = np.empty((times.size, self.dim))
        for d in range(self.dim):
            out[:, d] = np.interp(times, self.times, self.actions[:, d])
        before = times < self.times[0]
        if before.any() and len(self.times) >= 2:  # the first segment extended, as in value_at
            slope = (self.actions[1] - self.actions[0]) / (self.times[1] - self.times[0])
            out[before] = self.actions[0] + (times[before] - self.times[0])[:, None] * slope
        if not hold_last:
            out[times > self.times[-1]] = np.nan
        return out

    def covers(self, times: np.ndarray) -> np.ndarray:
        return (np.asarray(times) >= self.times[0]) & (np.asarray(times) <= self.times[-1])

    def drop_before(self, t: float) -> None:
        """Forget waypoints wholly in the past, keeping the one that brackets ``t`` from below and
        its predecessor (the cubic's tangent there needs it)."""
        j = int(np.searchsorted(self.times, t, side="right")) - 2
        if j > 0:
            self.times = self.times[j:]
            self.actions = self.actions[j:]
