"""The safety chain between the scheduler and ``adapter.command()``: on by default, fixed order.

1. ``finite``       NaN or inf anywhere → hold (arms keep the last safe command, bases brake to 0)
2. ``position``     joint position limits, the soft limits and ``position_margin`` inside them
3. ``step``         maximum change per tick relative to the last command (the first command after
                    a reset is relative to the measured position)
4. ``velocity``     ``max_velocity``
5. ``acceleration`` ``max_acceleration`` (``max_deceleration`` while slowing down), plus the braking
                    distance to the position bounds so the joint can always stop inside them
6. ``jerk``         ``max_jerk``
7. ``workspace``    Cartesian box on the adapter's forward kinematics, where it has them, braked
                    for like the position bounds
8. ``gripper``      gripper range (joint limits and ``safety.gripper``), braked for likewise
9. ``base``         mobile-base linear / angular velocity and acceleration

The parsing lives in :mod:`~wall_runtime.control.safety_config`, the solver — a pure function of
(state, target, dt) — in :mod:`~wall_runtime.control.safety_solver`, which explains how the limits
hold together. This module is the stateful shell the control loop holds: it keeps the state of the
command stream between ticks, re-anchors it at rest after a reset (on the measured position) or a
gap in the stream (on the last command, where the robot's setpoint stayed), and
counts every intervention per filter and joint in a bounded event log.

When the limits cannot all hold (only from a state that was already outside them, e.g. a robot
that starts outside its soft limits or is measured moving faster than its limit, or with jerk
limits near a bound) the lowest-priority one yields (jerk, then acceleration, then position) and
that is counted as ``<filter>_yielded``: the command still moves the robot back inside at the
step limit instead of jumping. Step and velocity are never relaxed.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from wall_runtime.control.safety_config import (
    BASE_KINDS,
    FILTERS,
    POSITION_KINDS,
    BaseLimits,
    SafetyConfig,
    SafetyConfigError,
)
from wall_runtime.control.safety_solver import ChainLimits, ChainState, solve
from wall_runtime.robot import JointSpec
from wall_runtime.types import RobotState

__all__ = [
    "BASE_KINDS",
    "FILTERS",
    "POSITION_KINDS",
    "BaseLimits",
    "Intervention",
    "SafetyChain",
    "SafetyConfig",
    "SafetyConfigError",
    "joint_step_limits",
]

log = logging.getLogger(__name__)
SUMMARY_PERIOD_S = 5.0  # interventions are logged as one summary line at most this often
# a command later than this many periods after the previous one follows a gap: the robot's
# setpoint was held meanwhile, so the chain starts again at rest from the last command
GAP_PERIODS = 1.5


@dataclass(frozen=True)
class Intervention:
    tick: int
    filter: str  # a name from FILTERS, or "<filter>_yielded"
    joint: str
    requested: float
    commanded: float


class SafetyChain:
    """Filters joint targets into commands that respect every configured limit."""

    def __init__(
        self,
        joints: Sequence[JointSpec],
        config: SafetyConfig,
        dt: float,
        forward_kinematics: Callable[[np.ndarray], np.ndarray | None] | None = None,
        event_log_size: int = 10_000,
    ) -> None:
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError("safety chain period dt must be a positive number of seconds")
        self.joints = tuple(joints)
        self.names = [j.name for j in self.joints]
        self.config = config
        self.dt = dt
        self.fk = forward_kinematics
        self.limits = ChainLimits.build(self.joints, config)
        lim = self.limits
        # the per-joint numbers, for the loop's splice guard and safe-pose move
        self.is_pos, self.is_base, self.is_gripper = lim.is_pos, lim.is_base, lim.is_gripper
        self.lower, self.upper = lim.lower, lim.upper
        self.max_step, self.max_vel = lim.max_step, lim.max_vel
        self.max_acc, self.max_jerk = lim.max_acc, lim.max_jerk
        self.base_vel, self.base_acc = lim.base_vel, lim.base_acc
        self.disabled = lim.disabled
        self.counts: Counter[str] = Counter()
        self.joint_counts: Counter[tuple[str, str]] = Counter()
        self.events: deque[Intervention] = deque(maxlen=event_log_size)
        self.tick = 0
        self.gaps = 0  # commands that followed a gap and started again from the measured state
        self.last_tick_interventions: list[Intervention] = []
        # interventions not yet logged, by (filter, joint): one summary line per SUMMARY_PERIOD_S
        self._unlogged: Counter[tuple[str, str]] = Counter()
        self._last_summary: float | None = None
        self._state: ChainState | None = None
        for name in sorted(self.disabled):
            log.warning("SAFETY FILTER DISABLED: %r is off for this run (safety.disabled_filters)", name)
        for j in self.joints:
            if (
                j.kind in POSITION_KINDS
                and not j.limits.has_position_limits
                and not math.isfinite(config.step_for(j.name))
                and not j.limits.has_velocity_limits
            ):
                log.warning(
                    "joint %s has no position, step or velocity limit: only the finite check guards it",
                    j.name,
                )

    @property
    def workspace_active(self) -> bool:
        return self.limits.workspace_min is not None and self.fk is not None

    @property
    def last_command(self) -> np.ndarray | None:
        return None if self._state is None else self._state.p.copy()

    @property
    def state(self) -> ChainState | None:
        """The command stream's state (last command, velocity, acceleration); ``None`` before the
        first command and after a reset without a measurement."""
        return self._state

    def reset(self, state: RobotState | None) -> None:
        """Anchor the chain on the measured position, at rest (at start, after a hold or an
        e-stop reset)."""
        if state is None:
            self._state = None
            return
        n = len(self.joints)
        p = np.asarray(state.position, dtype=np.float64).copy()
        if p.shape != (n,):
            raise ValueError(f"measured state has {p.shape} joints, the spec {n}")
        bad = ~np.isfinite(p)
        if bad[self.is_pos].any():
            raise ValueError(
                "measured joint positions are not finite ("
                + ", ".join(np.array(self.names)[bad & self.is_pos])
                + "): refusing to command from an unknown pose"
            )
        p[bad] = 0.0  # base velocity readings only
        self._state = ChainState.at_rest(p)

    def filter(
        self, target: np.ndarray, state: RobotState | None = None, dt: float | None = None
    ) -> np.ndarray:
        """One tick: the command to send for ``target`` (joint order and units of the spec).

        ``dt`` is the time since the previous command, where the caller knows it. More than
        ``GAP_PERIODS`` periods means a gap (idle ticks, an overrun): the robot's setpoint stayed on
        the last command meanwhile, at rest, so the chain starts again from there with zero
        velocity and acceleration instead of extrapolating the velocity from before the gap.
        (Measured velocities are not used: recordings do not hold them, and a replay must
        reproduce every command.) Every command is limited over the nominal period, as the robot
        receives one per period."""
        self.tick += 1
        self.last_tick_interventions = []
        target = np.asarray(target, dtype=np.float64)
        n = len(self.joints)
        if target.shape != (n,):
            raise ValueError(f"target has shape {target.shape}, the robot has {n} joints")
        gap = dt is not None and not dt <= GAP_PERIODS * self.dt  # NaN counts as a gap
        if self._state is None:
            if state is None:
                raise RuntimeError("the safety chain needs a measured state for its first command")
            self.reset(state)
        elif gap:
            # the robot's setpoint stayed on the last command through the gap: start from there,
            # at rest, as the robot's setpoint was
            self.gaps += 1
            self._state = ChainState.at_rest(self._state.p)
        assert self._state is not None
        step = solve(self.limits, self._state, target, self.dt, self.fk if self.workspace_active else None)
        self._state = step.state
        for hit in step.hits:
            self._record(hit.filter, hit.joints, hit.requested, hit.commanded)
        return step.command

    def _record(self, filt: str, mask: np.ndarray, requested: np.ndarray, commanded: np.ndarray) -> None:
        for i in np.flatnonzero(mask):
            name = self.names[i]
            self.counts[filt] += 1
            self.joint_counts[(filt, name)] += 1
            event = Intervention(self.tick, filt, name, float(requested[i]), float(commanded[i]))
            self.events.append(event)
            self.last_tick_interventions.append(event)
            self._unlogged[(filt, name)] += 1
        self._summarise()

    def _summarise(self, force: bool = False) -> None:
        """One log line for the interventions since the last one (the first at once, then at most one
        per ``SUMMARY_PERIOD_S``), instead of a warning per joint and filter."""
        now = time.monotonic()
        if not self._unlogged or not (
            force or self._last_summary is None or now - self._last_summary >= SUMMARY_PERIOD_S
        ):
            return
        by_filter: dict[str, list[str]] = {}
        for (filt, name), n in sorted(self._unlogged.items()):
            by_filter.setdefault(filt, []).append(f"{name} ×{n}")
        since = "" if self._last_summary is None else f" in {now - self._last_summary:.1f} s"
        log.warning(
            "safety: %d intervention(s)%s: %s",
            sum(self._unlogged.values()),
            since,
            "; ".join(f"{f} on {', '.join(names)}" for f, names in by_filter.items()),
        )
        self._unlogged.clear()
        self._last_summary = now


def joint_step_limits(joints: Sequence[JointSpec], config: SafetyConfig, dt: float) -> np.ndarray:
    """The tightest per-tick change each joint may see (step and velocity), for the splice guard."""
    out = []
    for j in joints:
        if j.kind in BASE_KINDS:
            base = config.base
            acc = base.max_linear_acceleration if j.kind == "base_linear" else base.max_angular_acceleration
            out.append(acc * dt)
        else:
            out.append(min(config.step_for(j.name), j.limits.velocity * dt))
    return np.array(out)
