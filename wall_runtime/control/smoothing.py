"""How a new chunk takes over from the plan being executed.

One interface, four strategies:

- ``none``: switch to the new chunk at its first future action (what openpi and GR00T do).
- ``crossfade``: blend from the old plan to the new chunk linearly over ``k`` actions.
- ``ensemble``: ACT temporal ensembling; every live chunk's prediction for a time step is averaged
  with weights ``exp(-m * rank)``, the oldest chunk (rank 0) weighted most, as in ACT.
- ``rtc``: real-time chunking (Black, Galliker, Levine 2025). The smoother does not blend at all:
  it builds an :class:`~wall_runtime.types.InpaintHint` from the plan that will run while the next
  chunk is computed, the hint travels with the observation, and the model's flow sampler guides
  the new chunk to continue it. The new chunk is then switched in, and already agrees with the old.
"""

from __future__ import annotations

import math

import numpy as np

from wall_runtime.control.plan import TimedPlan
from wall_runtime.types import InpaintHint

SMOOTHERS = ("none", "crossfade", "ensemble", "rtc")


class Smoother:
    """Plain switching; the base of the others."""

    name = "none"

    def merge(self, old: TimedPlan | None, new: TimedPlan, now: float) -> TimedPlan:
        """The plan to execute from ``now``; ``new`` holds only the new chunk's future actions."""
        return new

    def hint(
        self, plan: TimedPlan | None, stamp: float, delay_s: float, horizon: int, dt: float
    ) -> InpaintHint | None:
        """Guidance to send with the observation stamped ``stamp``; only RTC has any."""
        return None

    def reset(self) -> None:
        """Forget every chunk (after a hold or an e-stop the old plan must not come back)."""


class CrossfadeSmoother(Smoother):
    name = "crossfade"

    def __init__(self, steps: int = 8) -> None:
        if steps < 1:
            raise ValueError("crossfade needs at least one step")
        self.steps = steps

    def merge(self, old: TimedPlan | None, new: TimedPlan, now: float) -> TimedPlan:
        if old is None:
            return new
        # the fade ends no later than the old plan does: past its end it has nothing to say
        covered = int(np.count_nonzero(new.times <= old.end))
        steps = min(self.steps, covered)
        w = np.minimum(1.0, np.arange(1, len(new.times) + 1) / (steps + 1))[:, None]
        old_values = old.sample(new.times, hold_last=True)
        return TimedPlan(new.times, (1.0 - w) * old_values + w * new.actions)


class TemporalEnsembleSmoother(Smoother):
    name = "ensemble"

    def __init__(self, m: float = 0.01, max_chunks: int = 16) -> None:
        if m < 0:
            raise ValueError("ensembling weight exponent m must be zero or more")
        self.m = m
        self.max_chunks = max_chunks
        self._chunks: list[TimedPlan] = []

    def merge(self, old: TimedPlan | None, new: TimedPlan, now: float) -> TimedPlan:
        self._chunks = [c for c in self._chunks if c.end >= now][-(self.max_chunks - 1) :]
        self._chunks.append(new)
        num = np.zeros_like(new.actions)
        den = np.zeros((len(new.times), 1))
        for rank, chunk in enumerate(self._chunks):
            w = math.exp(-self.m * rank) * chunk.covers(new.times)[:, None]
            num += w * chunk.sample(new.times, hold_last=True)
            den += w
        return TimedPlan(new.times, num / den)  # den > 0: the new chunk covers its own times

    def reset(self) -> None:
        self._chunks = []


def rtc_soft_mask(horizon: int, delay_steps: int, overlap_steps: int) -> np.ndarray:
    """The RTC guidance weights: 1 for actions that run during the delay, an exponential decay over
    the rest of the overlap with the previous chunk, 0 where the previous chunk has nothing to say."""
    i = np.arange(horizon, dtype=np.float64)
    d = max(0, min(delay_steps, horizon))
    r = max(0, min(overlap_steps, horizon))
    w = np.zeros(horizon)
    w[: min(d, r)] = 1.0
    if r > d:
        c = (r - i[d:r]) / (r - d + 1)
        w[d:r] = c * np.expm1(c) / math.expm1(1.0)
    return w.astype(np.float32)


class RTCSmoother(Smoother):
    name = "rtc"

    def __init__(self, max_guidance: float = 5.0) -> None:
        self.max_guidance = max_guidance

    def hint(
        self, plan: TimedPlan | None, stamp: float, delay_s: float, horizon: int, dt: float
    ) -> InpaintHint | None:
        if plan is None or horizon < 1 or not dt > 0:
            return None
        times = stamp + np.arange(horizon) * dt
        actions = plan.sample(times, hold_last=True)
        delay_steps = math.ceil(max(0.0, delay_s) / dt - 1e-9)
        overlap = int(np.count_nonzero(times <= plan.end + 1e-9))
        return InpaintHint(
            actions=actions.astype(np.float32),
            weights=rtc_soft_mask(horizon, delay_steps, overlap),
            max_guidance=self.max_guidance,
        )


def make_smoother(name: str, **options: float) -> Smoother:
    """``none`` | ``crossfade`` (steps) | ``ensemble`` (m) | ``rtc`` (max_guidance)."""
    if name == "none":
        return Smoother()
    if name == "crossfade":
        return CrossfadeSmoother(steps=int(options.get("steps", 8)))
    if name == "ensemble":
        return TemporalEnsembleSmoother(m=float(options.get("m", 0.01)))
    if name == "rtc":
        return RTCSmoother(max_guidance=float(options.get("max_guidance", 5.0)))
    raise ValueError(f"unknown smoother {name!r} (known: {', '.join(SMOOTHERS)})")
