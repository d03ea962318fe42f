"""The safety chain between the scheduler and ``adapter.command()``: on by default, fixed order.

1. ``finite``       NaN or inf anywhere → hold (arms keep the last safe command, bases brake to 0)
2. ``position``     joint position limits, the soft limits and ``position_margin`` inside them
3. ``step``         maximum change per tick relative to the last command (the first command after
                    a reset is relative to the measured position)
4. ``velocity``     ``max_velocity``
5. ``acceleration`` ``max_acceleration`` (``max_deceleration`` while slowing down), plus the braking
                    distance to the position bounds so the joint can always stop inside them
6. ``jerk``         ``max_jerk``, plus braking for the bounds under it (a jerk-limited stopping
                    plan), so position, velocity, acceleration and jerk hold together at a bound
7. ``workspace``    Cartesian box on the adapter's forward kinematics, where it has them, braked
                    for like the position bounds
8. ``gripper``      gripper range (joint limits and ``safety.gripper``), braked for likewise
9. ``base``         mobile-base linear / angular velocity and acceleration

The parsing lives in :mod:`~wall_runtime.control.safety_config`, the solver — a pure function of
(state, target, dt) — in :mod:`~wall_runtime.control.safety_solver`, which explains how the limits
hold together. This module is the stateful shell the control loop holds: it keeps the state of the
command stream between ticks, re-anchors it at rest after a reset (on the measured position) or,
after a gap in the stream, on the last command (where the robot's setpoint stayed) moving as the
robot is *measured* to move (:meth:`SafetyChain.observe`), and counts every intervention per
filter and joint in a bounded event log.

When the limits cannot all hold (only from a state that was already outside them: a robot that
starts outside its soft limits, one measured after a gap moving faster than its limit or already
inside its braking distance to a bound) the lowest-priority one yields, in a fixed order: step and
velocity never, then the position bounds (and gripper range) last, acceleration before them and
jerk first. So a jerk-limited joint that can no longer stop at a bound within its jerk limit
brakes harder than the jerk limit, never past the bound or beyond its deceleration. A yield is
counted as ``<filter>_yielded`` (and logged); from outside a bound the command still moves the
robot back inside at the step limit instead of jumping.
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
# setpoint was held meanwhile, so the chain starts again from the last command, moving as measured
GAP_PERIODS = 1.5
_OBSERVED = 3  # measured states kept (for the velocity and acceleration after a gap)


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
        # (time, position, velocity or None) of the latest measured states, oldest first
        self._observed: deque[tuple[float, np.ndarray, np.ndarray | None]] = deque(maxlen=_OBSERVED)
        self.gap_motion: tuple[np.ndarray, np.ndarray] | None = None  # (v, a) taken at the last gap
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

    def observe(self, state: RobotState, now: float) -> None:
        """The measured state at ``now`` (the loop calls this on every tick, commanded or not):
        after a gap the chain takes its velocity and acceleration from the latest of these."""
        n = len(self.joints)
        q = np.asarray(state.position, dtype=np.float64)
        if q.shape != (n,) or not math.isfinite(now):
            return
        v = None if state.velocity is None else np.asarray(state.velocity, dtype=np.float64)
        if v is not None and v.shape != (n,):
            v = None
        if self._observed and not now > self._observed[-1][0]:
            self._observed.clear()  # time went backwards (a new clock): start the history again
        self._observed.append((float(now), q.copy(), None if v is None else v.copy()))

    def measured_motion(self) -> tuple[np.ndarray, np.ndarray]:
        """The velocity and acceleration of the position joints as last measured: the adapter's
        velocity where it reports a finite one, else the finite difference of the last two
        measured positions; the acceleration from the last two velocities (reported, else
        differenced), limited to the joint's acceleration limits (a measured acceleration beyond
        them is noise or a state the chain cannot plan from). Zero where nothing tells."""
        n = len(self.joints)
        obs = list(self._observed)

        def velocity(k: int) -> np.ndarray:
            """The velocity at observation k (negative index), NaN where unknown."""
            t, q, v = obs[k]
            out = np.full(n, np.nan)
            if len(obs) >= -k + 1:
                t0, q0, _ = obs[k - 1]
                out = (q - q0) / (t - t0)
            if v is not None:
                out = np.where(np.isfinite(v), v, out)
            return out

        v_now = velocity(-1) if obs else np.full(n, np.nan)
        a_now = np.full(n, np.nan)
        if len(obs) >= 2:
            a_now = (v_now - velocity(-2)) / (obs[-1][0] - obs[-2][0])
        with np.errstate(invalid="ignore"):
            a_cap = np.maximum(self.limits.max_acc, self.limits.max_dec)
            a_now = np.clip(a_now, -a_cap, a_cap)
        v_now = np.where(self.is_pos & np.isfinite(v_now), v_now, 0.0)
        a_now = np.where(self.is_pos & np.isfinite(a_now), a_now, 0.0)
        return v_now, a_now

    def filter(
        self, target: np.ndarray, state: RobotState | None = None, dt: float | None = None
    ) -> np.ndarray:
        """One tick: the command to send for ``target`` (joint order and units of the spec).

        ``dt`` is the time since the previous command, where the caller knows it. More than
        ``GAP_PERIODS`` periods means a gap (idle ticks, an overrun): the robot's setpoint stayed on
        the last command meanwhile, so the chain starts again from there with the velocity and
        acceleration the robot is *measured* to have (:meth:`measured_motion`, from the states
        given to :meth:`observe`; at rest where none were), instead of the command stream's from
        before the gap. Recordings keep the measured positions and velocities, so a replay
        reproduces these commands too. Every command is limited over the nominal period, as the
        robot receives one per period."""
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
            # moving as the robot is measured to move
            self.gaps += 1
            v, a = self.measured_motion()
            self.gap_motion = (v, a)
            p = self._state.p
            self._state = ChainState(p=p.copy(), v=v, a=a, last_request=p.copy())
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
