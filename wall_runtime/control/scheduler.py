"""Timestamped chunk scheduling: which action runs now, when to splice, when to ask for more.

Action ``i`` of a chunk is meant for ``chunk.stamp + i * chunk.dt`` on the robot host's monotonic
clock (the stamp is the observation's, echoed by the server, so no clock sync is needed). Actions
already in the past are never executed; a new chunk takes over at its first action still in the
future, and the segment from the last output to that action is interpolated. The splice guard
limits each output step to ``max_step`` (the same per-tick limit the safety chain enforces), so
neither a splice nor a smoother's blend ever creates a jump; the ticks where it had to act are
counted in ``guard_clips`` (a jump clipped by the safety chain instead would be a scheduling bug).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from wall_runtime.control.latency import LatencyEstimator
from wall_runtime.control.plan import TimedPlan
from wall_runtime.control.smoothing import Smoother
from wall_runtime.types import ActionChunk, InpaintHint

log = logging.getLogger(__name__)


@dataclass
class SchedulerConfig:
    # request the next chunk when less than this many seconds of plan are left; None = automatic
    # (the p95 latency plus ``request_margin_s``, so the next chunk lands before this one runs out)
    request_threshold_s: float | None = None
    request_margin_s: float = 0.05
    max_in_flight: int = 1
    request_timeout_s: float = 2.0  # a request older than this is given up on
    latency_window: int = 20
    latency_warmup: int = 2
    max_step: np.ndarray | float | None = None  # splice guard, per action dim (robot units per tick)
    interpolation: str = "cubic"  # between actions at the control rate: "cubic" | "linear"
    # limits (per action dim, per second) a splice blend respects; None = switch at once
    blend_velocity: np.ndarray | float | None = None
    blend_acceleration: np.ndarray | float | None = None
    blend_jerk: np.ndarray | float | None = None
    blend_margin: float = 1.5  # the new plan's own motion shares the limits with the blend
    # a chunk's timing is not trusted: its dt must be at least this (default: a tenth of the
    # control period, where the loop has set one) and all of it must fit in max_chunk_s, so a
    # chunk can never pin the plan (dt = 1e9 s would be followed forever, nothing requested again)
    min_action_dt_s: float | None = None
    max_chunk_s: float = 10.0


@dataclass
class SpliceEvent:
    """A chunk taking over: for the run log and the seam metrics."""

    time: float
    seq: int
    first_index: int  # actions [0, first_index) were already in the past and were dropped
    latency_s: float
    offset: float  # max |new - old| at the first spliced action, before smoothing


@dataclass
class _Request:
    stamp: float
    sent: float


@dataclass
class ChunkScheduler:
    smoother: Smoother
    config: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        self.latency = LatencyEstimator(self.config.latency_window, self.config.latency_warmup)
        self.plan: TimedPlan | None = None
        self.rejected: Counter[str] = Counter()
        self.last_output: np.ndarray | None = None
        self.horizon: int | None = None
        self.dt: float | None = None
        self.action_dim: int | None = None
        self._in_flight: list[_Request] = []
        self._last_seq: int | None = None
        self._last_stamp = -math.inf
        self._last_output_time = -math.inf
        self.guard_clips = 0  # ticks where the splice guard limited the output step
        # running splice blends: (from, offset, velocity difference, duration)
        self._blends: list[tuple[float, np.ndarray, np.ndarray, float]] = []
        self._last_velocity: np.ndarray | float = 0.0
        self.control_period: float | None = None  # set by the control loop
        self.min_action_dim: int | None = None  # the loop's joints need this many action dims

    def set_control_period(self, period: float) -> None:
        """The loop's period: the default lower bound on a chunk's dt is a tenth of it."""
        self.control_period = period

    # -- chunks -------------------------------------------------------------------------------

    def _reject(self, reason: str, chunk: ActionChunk, detail: str) -> None:
        self.rejected[reason] += 1
        log.warning("chunk seq=%s rejected (%s): %s", chunk.seq, reason, detail)

    def check(self, chunk: ActionChunk, now: float) -> tuple[str, str] | None:
        """Why ``chunk`` would be rejected now, as (reason, detail); ``None`` if it is usable."""
        actions = np.asarray(chunk.actions)
        if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] < 1:
            return "malformed", f"actions must be [H >= 1, D >= 1], got shape {actions.shape}"
        if self.action_dim is not None and actions.shape[1] != self.action_dim:
            return "malformed", f"action dim {actions.shape[1]} != {self.action_dim}"
        if self.min_action_dim is not None and actions.shape[1] < self.min_action_dim:
            return "malformed", f"action dim {actions.shape[1]} < {self.min_action_dim}, what the joints need"
        dt = chunk.dt
        if isinstance(dt, bool) or not isinstance(dt, numbers.Real) or not (math.isfinite(dt) and dt > 0):
            return "bad_dt", f"dt must be a positive number of seconds, got {dt!r}"
        min_dt = self.config.min_action_dt_s
        if min_dt is None and self.control_period is not None:
            min_dt = self.control_period / 10
        if min_dt is not None and dt < min_dt:
            return "bad_dt", f"dt {dt!r} s is below {min_dt:.3g} s (a tenth of the control period)"
        if actions.shape[0] * dt > self.config.max_chunk_s:
            return "bad_dt", (
                f"{actions.shape[0]} actions at dt {dt!r} s last longer than max_chunk_s "
                f"({self.config.max_chunk_s:g} s)"
            )
        if not isinstance(chunk.stamp, numbers.Real) or not math.isfinite(chunk.stamp) or chunk.stamp > now:
            return "malformed", f"stamp {chunk.stamp!r} is not a past robot-clock time"
        if not np.all(np.isfinite(actions)):
            return "non_finite", "actions contain NaN or inf"
        if (self._last_seq is not None and chunk.seq <= self._last_seq) or chunk.stamp < self._last_stamp:
            return "out_of_order", f"older than the chunk in use (seq {self._last_seq})"
        if chunk.stamp + (actions.shape[0] - 1) * dt <= now:
            return "stale", f"all {actions.shape[0]} actions are in the past"
        return None

    def accept(self, chunk: ActionChunk, now: float) -> SpliceEvent | None:
        """Take a chunk in; returns the splice, or ``None`` when the chunk was rejected (counted)."""
        self._in_flight = [r for r in self._in_flight if r.stamp != chunk.stamp]
        problem = self.check(chunk, now)
        if problem is not None:
            self._reject(problem[0], chunk, problem[1])
            return None
        actions = np.asarray(chunk.actions)
        times = chunk.stamp + np.arange(actions.shape[0]) * chunk.dt
        future = np.flatnonzero(times > now)
        k = int(future[0])
        latency = now - chunk.stamp
        self.latency.add(latency)
        self._last_seq, self._last_stamp = chunk.seq, chunk.stamp
        self.horizon, self.dt, self.action_dim = actions.shape[0], chunk.dt, actions.shape[1]

        # the plan starts on the action bracketing now from below, so the output now is the chunk's
        # value for now (interpolated towards the first future action), never an older action's
        first = max(k - 1, 0)
        new = TimedPlan(times[first:], actions[first:].astype(np.float64))
        old = self.plan
        offset = 0.0
        if old is not None:
            offset = float(np.max(np.abs(old.sample(new.times[:1]) - new.actions[:1])))
        merged = self.smoother.merge(old, new, now)
        if self.last_output is not None:
            # blend from what was commanded last into the new plan: the offset between them, and
            # the difference in velocity, decay along quintics (zero velocity and acceleration at
            # the end), just slow enough for the configured limits. Blends still running keep
            # running and the residual gets its own, so a chunk landing mid-blend does not reset
            # the blend's velocity
            t_from = self._last_output_time if now - self._last_output_time < 2 * chunk.dt else now
            h = 1e-4
            if t_from == now:
                self._blends = []
                last_velocity = np.zeros_like(self.last_output)
            elif old is not None and old.value_at(t_from + h) is not None:
                # the old curve's own slope (a backward difference of the outputs lags by half a
                # tick of acceleration, which a blend would then have to absorb in a hurry)
                last_velocity = (self._total(old, t_from + h) - self._total(old, t_from - h)) / (2 * h)
            else:
                last_velocity = self._last_velocity
            before, at, after = (self._total(merged, t) for t in (t_from - h, t_from, t_from + h))
            offset0 = self.last_output - at
            velocity0 = last_velocity - (after - before) / (2 * h)
            if self.config.blend_velocity is not None:
                # neither curve can be followed faster than the velocity limit, so neither can
                # their difference: an unclipped mismatch from a jittery chunk (slopes of tens of
                # units/s between noisy waypoints) would make the glide wander far past the plan
                limit = np.asarray(self.config.blend_velocity, dtype=np.float64)
                velocity0 = np.clip(velocity0, -limit, limit)
            duration = self._blend_duration(np.abs(offset0), np.abs(velocity0))
            if duration > 0:
                self._blends.append((t_from, offset0, velocity0, duration))
        merged.interpolation = self.config.interpolation
        self.plan = merged
        return SpliceEvent(time=now, seq=chunk.seq, first_index=k, latency_s=latency, offset=offset)

    # -- targets ------------------------------------------------------------------------------

    def target(self, now: float) -> np.ndarray | None:
        """The action to command at ``now``; ``None`` when there is no plan or it is exhausted."""
        if self.plan is None:
            return None
        value = self.plan.value_at(now)
        if value is None:
            return None
        self.plan.drop_before(now)
        if self._blends:
            value = value + self._blend_offset(now)
            self._blends = [b for b in self._blends if now < b[0] + b[3]]
        if self.last_output is not None and self.config.max_step is not None:
            limit = np.asarray(self.config.max_step, dtype=np.float64)
            delta = value - self.last_output
            step = np.minimum(np.maximum(delta, -limit), limit)
            if (np.abs(step - delta) > 1e-12).any():
                self.guard_clips += 1
                value = self.last_output + step
        if self.last_output is not None and now > self._last_output_time:
            self._last_velocity = (value - self.last_output) / (now - self._last_output_time)
        self.last_output = value
        self._last_output_time = now
        return value.copy()

    def remaining(self, now: float) -> float:
        return 0.0 if self.plan is None else max(0.0, self.plan.end - now)

    # -- requests -----------------------------------------------------------------------------

    def request_threshold(self) -> float:
        if self.config.request_threshold_s is not None:
            return self.config.request_threshold_s
        latency = self.latency.estimate()
        if latency is None:
            return math.inf  # nothing measured yet: ask now, the in-flight cap stops a flood
        return latency + self.config.request_margin_s + (self.dt or 0.0)

    def should_request(self, now: float) -> bool:
        expired = [r for r in self._in_flight if now - r.sent > self.config.request_timeout_s]
        if expired:
            self.rejected["request_timeout"] += len(expired)
            log.warning(
                "%d chunk request(s) unanswered after %.2fs", len(expired), self.config.request_timeout_s
            )
            self._in_flight = [r for r in self._in_flight if r not in expired]
        if len(self._in_flight) >= self.config.max_in_flight:
            return False
        return self.remaining(now) < self.request_threshold()

    def note_request(self, stamp: float, now: float) -> None:
        self._in_flight.append(_Request(stamp=stamp, sent=now))

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def hint(self, stamp: float) -> InpaintHint | None:
        """RTC guidance for the observation stamped ``stamp`` (``None`` for other smoothers)."""
        if self.horizon is None or self.dt is None:
            return None
        delay = self.latency.estimate(default=0.0) or 0.0
        return self.smoother.hint(self.plan, stamp, delay, self.horizon, self.dt)

    def _blend_offset(self, t: float) -> np.ndarray | float:
        """What the running blends add to the plan at ``t``."""
        total: np.ndarray | float = 0.0
        for t_from, offset0, velocity0, duration in self._blends:
            u = min(max((t - t_from) / duration, 0.0), 1.0)
            u2 = u * u
            fade = 1.0 - u2 * u * (10.0 - 15.0 * u + 6.0 * u2)  # 1 -> 0, flat at both ends
            glide = u * (1.0 - u2 * (6.0 - 8.0 * u + 3.0 * u2))  # slope 1 -> 0, 0 at both ends
            total = total + offset0 * fade + velocity0 * duration * glide
        return total

    def _total(self, plan: TimedPlan, t: float) -> np.ndarray:
        value = plan.value_at(t)
        if value is None:
            value = plan.actions[-1]
        return value + self._blend_offset(t)

    def _blend_duration(self, offset: np.ndarray, velocity: np.ndarray) -> float:
        """Shortest blend that keeps its own velocity, acceleration and jerk inside the configured
        limits. Peaks of the quintics: the fade's 1.875, 5.774 and 60 times offset/T^n; the
        glide's 1, 3.95/T and 36/T^2 times the velocity."""
        cfg = self.config
        duration = 0.0
        terms = (
            (cfg.blend_velocity, 1.875 * offset, 1),
            (cfg.blend_acceleration, 10.0 / math.sqrt(3.0) * offset, 2),
            (cfg.blend_acceleration, 3.95 * velocity, 1),
            (cfg.blend_jerk, 60.0 * offset, 3),
            (cfg.blend_jerk, 36.0 * velocity, 2),
        )
        for limit, amount, order in terms:
            if limit is None:
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                need = (amount / np.asarray(limit, dtype=np.float64)) ** (1.0 / order)
            need = np.nan_to_num(need, nan=0.0, posinf=0.0)
            duration = max(duration, float(np.max(need, initial=0.0)) * cfg.blend_margin)
        return duration

    def set_limits(
        self,
        max_step: np.ndarray | None = None,
        velocity: np.ndarray | None = None,
        acceleration: np.ndarray | None = None,
        jerk: np.ndarray | None = None,
    ) -> None:
        """Per action dim: the guard's step per tick and the limits splice blends respect."""
        self.config.max_step = max_step
        self.config.blend_velocity = velocity
        self.config.blend_acceleration = acceleration
        self.config.blend_jerk = jerk

    def anchor(self, output: np.ndarray, at: float) -> None:
        """Declare what was commanded at ``at``: the next chunk is spliced from there."""
        self.last_output = np.asarray(output, dtype=np.float64).copy()
        self._last_output_time = at
        self._last_velocity = np.zeros_like(self.last_output)  # a robot being anchored is at rest

    def reset(self, position: np.ndarray | None = None, now: float = -math.inf) -> None:
        """Drop the plan (after a hold or an e-stop); the next chunk is spliced from ``position``."""
        self.plan = None
        self._blends = []
        self._last_output_time = now
        self.smoother.reset()
        self.last_output = None if position is None else np.asarray(position, dtype=np.float64).copy()
        self._in_flight = []
