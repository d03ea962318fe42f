"""The safety chain's solver: one pure function of (limits, state, target, dt).

:func:`solve` takes the chain's limits (:class:`ChainLimits`, built once from the joints and the
parsed ``safety:`` block), the state of the command stream (:class:`ChainState`: the last command,
its velocity and acceleration as finite differences), a joint target and the tick's period, and
returns the command, the next state and the interventions. It keeps nothing between calls;
counting, the event log and re-anchoring on the measured state are :class:`SafetyChain`'s job.

Per position joint, the filters are intervals of admissible next positions, intersected by
priority (step and velocity are never relaxed; then position, gripper range, acceleration,
jerk). Position bounds are *braking* constraints: the acceleration row admits only a next step
from which the joint can still stop inside its bounds at its deceleration limit, computed on the
discrete command stream (a step ``u`` followed by steps ``u - b, u - 2b, ...`` with
``b = deceleration * dt**2`` covers at most ``u**2 / 2b + u``), so the bound is kept without ever
braking harder than the limit. For a gripper the bounds are its limits narrowed by the
``safety.gripper`` range, so the range is braked for like a limit, not hit.

Acceleration is ros2_control's: ``max_acceleration`` while the speed grows (or changes sign),
``max_deceleration`` while it shrinks with the same sign.

**Workspace box.** The box lives in Cartesian space on the adapter's forward kinematics, so it is
not an interval per joint. The chain keeps it as a braking constraint too, on a plan it can always
carry out: braking *along the current joint-space direction of motion* (every joint's velocity
scaled down together, the common deceleration set by the joint that reaches its deceleration
limit first). That plan keeps the joint-space path on one straight segment, whose length has the
same closed form as above, so the whole stopping path of a candidate command is known; the
candidate is admitted when the end effector stays inside the box along that segment (forward
kinematics sampled along it, each sample held inside the box by half the distance to its
neighbour, which bounds the path between samples). Otherwise the command is moved from the
candidate towards the braking command (the previous step, scaled down at that deceleration) by
bisection on the straight line between them. Braking along a line is itself admissible on the
next tick (its stopping segment is a part of the previous one), so the box is approached slowly
enough to stop at it and is never hit; a Jacobian-based step scaling was the alternative, but
it predicts the stopping point only to first order, which is not enough at the speeds where it
matters. Forward-kinematics calls: two on a tick far from every face (the stopping path,
extrapolated from this step's own end-effector motion, reaches less than half way to the box),
up to 9 when near one, and up to ~70 on a tick that has to slow down for it (7 bisection steps;
33 at most measured on the shipped sims); an adapter's forward kinematics should be cheap. From a
pose already outside the box (a robot started there) only commands that do not go further out
pass, and that is counted as ``workspace_yielded``.

**Jerk.** Under a jerk limit the deceleration cannot start at once, so the braking plans above
cannot be carried out; jerk-limited joints brake on a jerk-limited plan instead
(:func:`jerk_overshoot`): the change of step falls at the jerk limit to the deceleration limit,
holds there, and rises back at the jerk limit so that the joint arrives at rest exactly, never
reversing. It is a feedback plan of (step, change of step) alone, so the plan from its next state
is the rest of this one, and its stopping distance is summed in closed form phase by phase. The
jerk row then admits only next commands (a grid over its jerk interval, plus the plan's own next
jerk and the jerk that lands on the bound) whose stop stays inside each bound: from a state that
can stop, some command within every limit always can again, so position, velocity, acceleration
and jerk hold together at the bounds and the gripper range. The acceleration row keeps the exact
discrete acceleration-only braking distance for those joints, which the jerk plan never beats, so
it never cuts into what the jerk row admits. Two more jerk-row terms: the acceleration must be
able to return to zero before the speed reaches its cap, and a joint slowing down harder than
``max_acceleration`` (under a larger ``max_deceleration``) must be able to ease off to it before
its speed crosses zero (beyond zero it speeds up again). Under a jerk limit the workspace box is
checked along every joint's own jerk-limited stopping path (the line plan would need the
acceleration to turn at once; a joint that cannot stop without reversing brakes again the other
way), at every tick of it (25 samples at most, each held inside by half the distance to its
neighbours and 0.1 mm more), and the braking command is the next row of that path. The path
turns, so there is no shortcut far from the box: up to 25 forward-kinematics calls per candidate,
evaluated from the path's end backwards a few at a time, so a candidate whose stop leaves the box
(usually near its end) is rejected before the rest are computed.

Cost: per ``SafetyChain.filter`` call at 100 Hz on the shipped sims (sim_arm, sim_pick,
sim_bimanual, pick_cube_task; their robot.yaml limits, and the same with ``max_jerk`` = 10 x
``max_acceleration`` added), p50 / p99 in ms, before -> after the changes below, one 2-core shared
machine (``benchmarks/results/safety_workspace.json``, ``python benchmarks/bench_control.py
--workspace-only --baseline benchmarks/results/safety_workspace_before.json``):

=================  ===========================  ===========================
case (sim_arm)     without jerk limits          with jerk limits
=================  ===========================  ===========================
far from the box   0.22 / 0.38 -> 0.22 / 0.35   2.03 / 3.93 -> 0.62 / 0.88
near a face        0.38 / 0.58 -> 0.36 / 0.54   2.31 / 4.58 -> 0.71 / 1.15
braking for it     0.71 / 1.49 -> 0.74 / 1.44   1.23 / 16.3 -> 0.89 / 1.62
=================  ===========================  ===========================

(the other sims alike, p99 at most 3 ms; pick_cube_task's jerk-limited ticks 1.2 / 2.8 ms, its FK
costs ~16 us a call). Of a jerk-limited tick's cost, ~0.35 ms is the rest of the solver and
~0.2 ms the 16-25 FK calls, most of it the adapters' per-call overhead (a batched forward
kinematics, one adapter call for a path's samples, was tried: under 10 % on these ticks, not
kept). The jerk-limited stopping paths are simulated joint by joint in plain floats
(:func:`_stop_path_fast`: only the joints that move, without numpy's per-call cost on a handful
of elements; it was ~0.8 ms a path), and a path's samples are checked in one numpy pass instead
of one by one. Both compute the same numbers with the same operations in the same order as
before, so the commands are bit-identical (``tests/test_safety_workspace_equivalence.py`` keeps
the original check and compares over random streams); where an input is not finite the numpy
path runs.

Where a state cannot stop within every limit (one the chain did not lead to: measured after a
gap, or started inside a braking distance), the rows yield in a fixed priority: step and velocity
never; jerk first, then acceleration, then position last, so position bounds win and the joint
brakes harder than its jerk limit rather than passing the bound; counted as ``jerk_yielded``.
Rows that only touch (a plan riding two constraints at once) are taken to fit, up to rounding.

Cost near a bound: one simulated stop per candidate, vectorised (a few numpy passes each, as the
phases are summed in closed form); far from every bound, a cheap over-estimate of the stop skips
it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from wall_runtime.control.safety_config import (
    BASE_KINDS,
    FILTERS,
    POSITION_KINDS,
    SafetyConfig,
    SafetyConfigError,
)
from wall_runtime.robot import JointSpec

# rows of the interval table, and the filter each row belongs to
_POS, _STEP, _VEL, _ACC, _JERK, _GRIP = range(6)
_ROW_FILTER = (1, 2, 3, 4, 5, 7)  # indices into FILTERS
_TOL = 1e-9
_WS_SAMPLE = 0.1  # joint-space spacing of the forward-kinematics samples along a stopping path
_WS_MAX_SAMPLES = 8
_WS_BISECT = 7

ForwardKinematics = Callable[[np.ndarray], "np.ndarray | None"]


@dataclass(frozen=True)
class ChainLimits:
    """Every per-joint number the solver needs, as arrays in the spec's joint order."""

    names: tuple[str, ...]
    is_pos: np.ndarray
    is_base: np.ndarray
    is_gripper: np.ndarray
    lower: np.ndarray  # position bounds (limits less position_margin; grippers: also the range)
    upper: np.ndarray
    max_step: np.ndarray
    max_vel: np.ndarray
    max_acc: np.ndarray  # speeding up
    max_dec: np.ndarray  # slowing down
    max_jerk: np.ndarray
    base_vel: np.ndarray
    base_acc: np.ndarray
    active: np.ndarray  # [6, n] which interval rows apply to which joint
    disabled: frozenset[str]
    workspace_min: np.ndarray | None
    workspace_max: np.ndarray | None
    # per-period constants, derived once per dt (a memo: it changes no result)
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, joints: Sequence[JointSpec], config: SafetyConfig) -> ChainLimits:
        unknown = [j.name for j in joints if j.kind not in POSITION_KINDS | BASE_KINDS]
        if unknown:
            raise ValueError(f"joints of unknown kind: {', '.join(unknown)}")
        kinds = np.array([j.kind for j in joints])
        is_pos = np.isin(kinds, list(POSITION_KINDS))
        bounds = np.array([config.bounds_for(j) for j in joints], dtype=np.float64).reshape(-1, 2)
        bad = is_pos & ~(bounds[:, 0] < bounds[:, 1])
        if bad.any():
            raise SafetyConfigError(
                "safety.position_margin leaves no room inside the limits of "
                f"{', '.join(np.array([j.name for j in joints])[bad])}"
            )
        lim = [j.limits for j in joints]
        max_vel = np.array([x.velocity for x in lim])
        max_acc = np.array([x.acceleration for x in lim])
        max_dec = np.array([x.deceleration for x in lim])
        base = config.base
        lin = kinds == "base_linear"
        base_vel = np.minimum(np.where(lin, base.max_linear_velocity, base.max_angular_velocity), max_vel)
        base_acc = np.minimum(
            np.where(lin, base.max_linear_acceleration, base.max_angular_acceleration), max_acc
        )
        disabled = frozenset(config.disabled)
        active = np.tile(is_pos, (6, 1))
        for name, row in {
            "position": _POS,
            "step": _STEP,
            "velocity": _VEL,
            "acceleration": _ACC,
            "jerk": _JERK,
            "gripper": _GRIP,
        }.items():
            if name in disabled:
                active[row] = False
        is_gripper = kinds == "gripper"
        active[_POS] &= ~is_gripper  # a gripper's bounds are the gripper row (limits and range)
        active[_GRIP] &= is_gripper
        ws = config.workspace_min is not None and "workspace" not in disabled
        return cls(
            names=tuple(j.name for j in joints),
            is_pos=is_pos,
            is_base=~is_pos,
            is_gripper=is_gripper,
            lower=bounds[:, 0],
            upper=bounds[:, 1],
            max_step=np.array([config.step_for(j.name) for j in joints]),
            max_vel=max_vel,
            max_acc=max_acc,
            max_dec=max_dec,
            max_jerk=np.array([x.jerk for x in lim]),
            base_vel=base_vel,
            base_acc=base_acc,
            active=active,
            disabled=disabled,
            workspace_min=np.asarray(config.workspace_min, dtype=np.float64) if ws else None,
            workspace_max=np.asarray(config.workspace_max, dtype=np.float64) if ws else None,
        )

    @property
    def brake(self) -> np.ndarray:
        """The deceleration the position bounds are braked for (``inf``: acceleration is off)."""
        if "acceleration" in self.disabled:
            return np.full(len(self.names), math.inf)
        return self.max_dec


@dataclass(frozen=True)
class ChainState:
    """The command stream so far: the last command and its finite-difference derivatives."""

    p: np.ndarray
    v: np.ndarray
    a: np.ndarray
    last_request: np.ndarray  # the last finite target (for the approach shaping)
    # the end effector stays in the workspace box while the last command brakes along its line
    braking_verified: bool = False

    @classmethod
    def at_rest(cls, p: np.ndarray, v: np.ndarray | None = None) -> ChainState:
        p = np.asarray(p, dtype=np.float64).copy()
        v = np.zeros_like(p) if v is None else np.asarray(v, dtype=np.float64).copy()
        return cls(p=p, v=v, a=np.zeros_like(p), last_request=p.copy())


@dataclass(frozen=True)
class Hit:
    """One filter changing (or yielding on) some joints this tick: masks over the joints."""

    filter: str  # a name from FILTERS, or "<filter>_yielded"
    joints: np.ndarray  # bool mask
    requested: np.ndarray
    commanded: np.ndarray


@dataclass(frozen=True)
class Step:
    command: np.ndarray
    state: ChainState
    hits: tuple[Hit, ...]


def braking_step(room: np.ndarray, bdt2: np.ndarray, lag: np.ndarray | float = 0.0) -> np.ndarray:
    """The largest step per tick from which steps shrinking by ``bdt2`` a tick stop within ``room``
    (``u**2 / 2b + u <= room``, an upper bound on the discrete sum); ``inf`` where ``bdt2`` is.
    ``lag`` ticks pass at full speed before the braking starts (``u * lag`` more room). Call it
    under ``np.errstate(invalid="ignore", divide="ignore")`` (``solve`` does)."""
    k = 1.0 + lag
    u = bdt2 * (np.sqrt(k * k + 2.0 * np.maximum(room, 0.0) / bdt2) - k)
    return np.where(np.isfinite(bdt2), u, np.inf)


def stair_inverse(room: np.ndarray, b: np.ndarray, c: np.ndarray | float = 0.0) -> np.ndarray:
    """The largest step ``u`` whose steps shrinking by ``b`` a tick, ``u + (u - b) + (u - 2b) + ...``
    (the positive terms), cover at most ``room``: the exact inverse of that sum, which is
    ``(m + 1) u - b m (m + 1) / 2`` for ``m = ceil(u / b) - 1``. With ``c``, each term after the
    first costs ``c`` more (the sum is ``... + c m``). ``b`` infinite: ``room`` (one step and
    stopped). Call it under ``np.errstate(invalid="ignore", divide="ignore")``."""
    room = np.maximum(room, 0.0)
    finite = np.isfinite(b)
    bb = np.where(finite, b, 1.0)
    h = 0.5 * bb + c
    m = np.floor((np.sqrt(h * h + 2.0 * bb * room) - h) / bb)

    def cost(k: np.ndarray) -> np.ndarray:  # the sum where the m-th term starts
        return bb * k * (k + 1.0) / 2.0 + c * k

    # the square root may round m one off: the largest m whose terms start within room
    m = np.where(cost(m) > room, m - 1.0, m)
    m = np.where(cost(m + 1.0) <= room, m + 1.0, m)
    m = np.maximum(m, 0.0)
    u = np.minimum((room + bb * m * (m + 1.0) / 2.0 - c * m) / (m + 1.0), (m + 1.0) * bb)
    return np.where(finite, u, room)


_STOP_ITERATIONS = 256  # plan segments simulated per stop at most (each phase is skipped in closed form)


def jerk_overshoot(u: np.ndarray, al: np.ndarray, jd: np.ndarray, dd: np.ndarray) -> np.ndarray:
    """How far beyond the current command a joint still travels, in the direction of positive
    steps, when it stops under the jerk-limited braking plan (per-tick units: ``u`` the step,
    ``al`` the change of step, ``jd`` = jerk * dt**3, ``dd`` = deceleration * dt**2).

    The plan, one tick at a time: the change of step falls by ``jd`` (the jerk limit) down to
    ``-dd`` (the deceleration limit), but never below the most negative change from which a
    ramp back to zero at ``jd`` a tick still ends exactly at rest without reversing (the steps
    that ramp kills, ``stair_inverse(u, jd)``). It is a feedback plan of the state alone, so the
    plan from its next state is the rest of this one: a state whose stop stays inside a bound
    always has a next command, within every limit, whose stop does too. It ends where the joint
    no longer moves (or accelerates) towards the bound. Its three phases (ramp down, hold at
    ``-dd``, final ramp) are summed in closed form, with single ticks between them. Returns
    ``inf`` where the stop did not end within ``_STOP_ITERATIONS`` segments (treated as unsafe)."""
    u, al = np.broadcast_arrays(np.asarray(u, dtype=np.float64), np.asarray(al, dtype=np.float64))
    u, al = u.copy(), al.copy()
    jd = np.broadcast_to(jd, u.shape)
    dd = np.broadcast_to(dd, u.shape)
    hold_ok = np.isfinite(dd)
    ddf = np.where(hold_ok, dd, 1.0)
    # the steps the final ramp from -dd kills, this tick's included: while a step is at least
    # this, the plan can keep decelerating at the limit
    t_hold = np.where(hold_ok, _stair_sum(ddf, jd), np.inf)
    x = np.zeros(u.shape)
    best = np.zeros(u.shape)
    active = ~((u <= 0.0) & (al <= 0.0))
    for _ in range(_STOP_ITERATIONS):
        if not active.any():
            break
        # the ramp down, K ticks at once: the change of step stays above -dd, and the step
        # stays above what the final ramp needs (that margin only shrinks, so checking the last
        # tick checks them all; the step is unimodal, so the path's furthest point is an end)
        k = np.where(hold_ok, np.floor((al + ddf) / jd) - 1.0, 0.0)
        k = np.where(active, np.clip(k, 0.0, 1e6), 0.0)
        u_k = u + k * al - jd * k * (k + 1.0) / 2.0
        al_k = al - k * jd
        r_k = np.maximum(-al_k, 0.0)
        ramp = (k >= 1.0) & (u_k > 0.0) & (u_k + r_k >= _stair_sum(r_k, jd))
        if ramp.any():
            x = np.where(ramp, x + k * u + al * k * (k + 1.0) / 2.0 - jd * k * (k + 1.0) * (k + 2.0) / 6.0, x)
            u, al = np.where(ramp, u_k, u), np.where(ramp, al_k, al)
            best = np.maximum(best, x)
        # the hold at the deceleration limit, n ticks at once
        holding = active & hold_ok & (al <= -ddf) & (u >= t_hold)
        if holding.any():
            n = np.where(holding, np.floor((u - t_hold) / ddf) + 1.0, 0.0)
            x = x + n * u - ddf * n * (n + 1.0) / 2.0
            u = u - n * ddf
            best = np.maximum(best, x)
        # one tick of the plan
        a_lo = np.maximum(al - jd, -dd)
        a_end = np.where(u >= 0.0, -stair_inverse(u, jd), -np.inf)
        a_n = np.minimum(np.maximum(a_lo, a_end), al + jd)
        final = active & (u > 0.0) & (a_end >= a_lo) & (a_end <= al + jd) & (a_end < 0.0)
        u = np.where(active, u + a_n, u)
        al = np.where(active, a_n, al)
        x = np.where(active, x + u, x)
        best = np.maximum(best, x)
        if final.any():
            # from here the final ramp: the change of step rises by jd a tick to zero, each step
            # exactly what the rest of the ramp kills; their sum in closed form
            r = -al
            m = np.maximum(np.ceil(r / jd) - 1.0, 0.0)
            rest = r * m * (m - 1.0) / 2.0 - jd * (m - 1.0) * m * (m + 1.0) / 3.0
            x = np.where(final, x + np.maximum(rest, 0.0), x)
            best = np.maximum(best, x)
            active &= ~final
        active &= ~((u <= 0.0) & (al <= 0.0))
    return np.where(active, np.inf, best)


def _stair_sum(r: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``r + (r - b) + (r - 2b) + ...`` over the positive terms (``stair_inverse``'s sum)."""
    m = np.maximum(np.ceil(r / b) - 1.0, 0.0)
    return (m + 1.0) * r - b * m * (m + 1.0) / 2.0


@dataclass(frozen=True)
class _PerPeriod:
    """What the rows need that depends on the period but not on the state."""

    vel_dt: np.ndarray
    adt: np.ndarray
    ddt: np.ndarray
    bdt2: np.ndarray
    vcap: np.ndarray
    jerk_any: bool
    jerk_braking: np.ndarray  # the speed cap is approached under the jerk limit
    jerk_bounds: np.ndarray  # the position bounds are braked for under the jerk limit
    jerk_turn: np.ndarray  # deceleration above the acceleration limit must fall before a reversal
    adt2: np.ndarray
    jdt2: np.ndarray
    jdt3: np.ndarray


def _per_period(lim: ChainLimits, dt: float) -> _PerPeriod:
    cached = lim.cache.get(dt)
    if cached is not None:
        return cached
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        brake = lim.brake
        jerk_on = np.isfinite(lim.max_jerk) & ("jerk" not in lim.disabled)
        vcap = np.minimum(lim.max_vel, lim.max_step / dt)
        jerk_braking = jerk_on & np.isfinite(vcap)
        out = _PerPeriod(
            vel_dt=lim.max_vel * dt,
            adt=lim.max_acc * dt,
            ddt=lim.max_dec * dt,
            bdt2=brake * dt * dt,
            vcap=vcap,
            jerk_any=bool(np.isfinite(lim.max_jerk).any()),
            jerk_braking=jerk_braking,
            jerk_bounds=jerk_on & lim.is_pos,
            jerk_turn=jerk_on & lim.is_pos & (brake > lim.max_acc) & ("acceleration" not in lim.disabled),
            adt2=lim.max_acc * dt * dt,
            jdt2=np.where(jerk_braking, lim.max_jerk, 1.0) * dt * dt,
            jdt3=lim.max_jerk * dt**3,
        )
    if len(lim.cache) < 8:
        lim.cache[dt] = out
    return out


_GRID = 41  # candidate jerks over the jerk interval for the jerk-limited braking bound


def jerk_braking_step(
    u: np.ndarray, al: np.ndarray, room: np.ndarray, jd: np.ndarray, dd: np.ndarray
) -> np.ndarray:
    """The largest next step towards a bound ``room`` away (per-tick units, positive towards it)
    from which the jerk-limited braking plan (:func:`jerk_overshoot`) still stops inside it, for a
    joint whose last step was ``u`` and change of step ``al``; the next change of step lies within
    ``al ± jd``. Where even the hardest braking jerk does not stop inside (a state already within
    the braking distance), the step of the hardest braking jerk. ``inf`` where far from the bound.

    The search is over the jerk: the largest of a grid over ``[-jd, jd]`` (with the plan's own
    next jerk, always admitted from a state that can stop, and the jerk that lands on the bound)
    whose stop stays inside; a step below the true largest is only more cautious. All arrays
    are per joint and direction (the caller stacks both directions into one call)."""
    out = np.full(u.shape, np.inf)
    top = u + al + jd
    atop = np.maximum(al + jd, 0.0)
    # far from the bound: a generous bound on the stop from the top candidate (its peak step
    # times the ticks of the ramp down, then the stop from that peak), so the plan is only
    # simulated near a bound
    peak = np.maximum(top, 0.0) + atop * atop / (2.0 * jd) + atop
    reach = peak * (atop / jd + 2.0) + np.minimum(
        peak * peak / (2.0 * dd) + peak * (dd / jd + 2.0) + _stair_sum(dd, jd) * (dd / jd + 1.0),
        peak * (2.0 * np.sqrt(peak / jd) + 4.0),
    )
    near = ~(reach < room) & np.isfinite(room)
    if not near.any():
        return out
    u_n, al_n, room_n, jd_n, dd_n = u[near], al[near], room[near], jd[near], dd[near]
    tol = 1e-12 * (1.0 + np.abs(room_n))
    # the plan's own next change of step, the jerk that lands exactly on the bound (the last
    # ticks of a stop at it), and a grid over the jerk interval
    a_end = np.where(u_n >= 0.0, -stair_inverse(u_n, jd_n), -np.inf)
    j_plan = np.minimum(np.maximum(np.maximum(al_n - jd_n, -dd_n), a_end), al_n + jd_n) - al_n
    j_land = np.clip(room_n - u_n - al_n, -jd_n, jd_n)
    frac = np.linspace(-1.0, 1.0, _GRID)[:, None]
    grid = np.vstack([frac * jd_n, j_plan[None, :], j_land[None, :]])
    step = u_n + al_n + grid
    ok = step + jerk_overshoot(step, al_n + grid, jd_n, dd_n) <= room_n + tol
    best = np.max(np.where(ok, grid, -np.inf), axis=0)
    best = np.where(np.isfinite(best), best, -jd_n)
    out[near] = u_n + al_n + best
    return out


def _travel_after(b: float) -> float:
    """Steps still taken after a unit step when each next step is ``b`` smaller: the exact sum."""
    if not b < 1.0:
        return 0.0
    m = math.floor(1.0 / b)
    return m - b * m * (m + 1) / 2.0


def solve(
    lim: ChainLimits,
    state: ChainState,
    target: np.ndarray,
    dt: float,
    fk: ForwardKinematics | None = None,
) -> Step:
    """One tick: the command for ``target`` from ``state`` over the period ``dt``."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _solve(lim, state, np.asarray(target, dtype=np.float64), dt, fk)


def _solve(
    lim: ChainLimits, state: ChainState, target: np.ndarray, dt: float, fk: ForwardKinematics | None
) -> Step:
    p, v, a = state.p, state.v, state.a
    found: list[Hit] = []

    def record(filt: str, mask: np.ndarray, requested: np.ndarray, commanded: np.ndarray) -> None:
        if filt.split("_yielded")[0] in lim.disabled or not mask.any():
            return
        found.append(Hit(filt, mask.copy(), requested.copy(), commanded.copy()))

    x = target.copy()
    # 1. finite: one bad number means the whole target is untrustworthy
    bad = ~np.isfinite(x)
    if bad.any():
        hold = np.where(lim.is_pos, p, 0.0)
        record("finite", bad | (hold != target), target, hold)
        x = hold

    # 2-6 and 8, position joints: intervals of the next position, one row per filter
    n = len(lim.names)
    lo, hi = np.empty((6, n)), np.empty((6, n))
    lo[_POS], hi[_POS] = lim.lower, lim.upper
    lo[_GRIP], hi[_GRIP] = lim.lower, lim.upper
    lo[_STEP], hi[_STEP] = p - lim.max_step, p + lim.max_step
    d = _per_period(lim, dt)
    lo[_VEL], hi[_VEL] = p - d.vel_dt, p + d.vel_dt
    # acceleration while speeding up, deceleration while slowing down (a change of sign speeds up)
    v_lo = np.where(v > 0, np.maximum(v - d.ddt, np.minimum(0.0, v - d.adt)), v - d.adt)
    v_hi = np.where(v < 0, np.minimum(v + d.ddt, np.maximum(0.0, v + d.adt)), v + d.adt)
    # ... and the braking distance to the bounds: the joint must always be able to stop inside
    # them at its deceleration, so the admissible speed shrinks near a bound. Where jerk is
    # limited, the exact discrete distance (the jerk row's plan never stops shorter than it, so
    # whatever that row admits this one does too)
    u_hi = np.where(d.jerk_bounds, stair_inverse(lim.upper - p, d.bdt2), braking_step(lim.upper - p, d.bdt2))
    u_lo = np.where(d.jerk_bounds, stair_inverse(p - lim.lower, d.bdt2), braking_step(p - lim.lower, d.bdt2))
    lo[_ACC] = np.maximum(p + v_lo * dt, p - u_lo)
    hi[_ACC] = np.minimum(p + v_hi * dt, p + u_hi)
    # jerk, with the same idea one derivative up: the acceleration must be able to return to zero
    # (at the jerk limit) before the speed reaches its cap
    vdt, adt2 = v * dt, a * dt * dt
    if d.jerk_any:
        w_hi = np.where(d.jerk_braking, braking_step(d.vcap - v, d.jdt2), np.inf)
        w_lo = np.where(d.jerk_braking, braking_step(v + d.vcap, d.jdt2), np.inf)
        lo[_JERK] = np.maximum(p + vdt + adt2 - d.jdt3, p + vdt - w_lo * dt)
        hi[_JERK] = np.minimum(p + vdt + adt2 + d.jdt3, p + vdt + w_hi * dt)
        # ... and, slowing down harder than the acceleration limit (max_deceleration above
        # max_acceleration), the deceleration must be able to fall to that limit before the speed
        # reaches zero: past zero the joint speeds up again, where only max_acceleration holds
        if d.jerk_turn.any():
            # the change of step falls by jdt3 a tick; the speed must last through every tick
            # whose change is still above adt2: s' >= sum of those changes (each adt2 + the
            # stair above it), so the change is at most adt2 + stair_inverse(s - adt2, jdt3, adt2)
            turn = d.adt2 + stair_inverse(np.abs(vdt) - d.adt2, d.jdt3, d.adt2)
            hi[_JERK] = np.where(d.jerk_turn & (vdt < 0.0), np.minimum(hi[_JERK], p + vdt + turn), hi[_JERK])
            lo[_JERK] = np.where(d.jerk_turn & (vdt > 0.0), np.maximum(lo[_JERK], p + vdt - turn), lo[_JERK])
        # the position bounds under the jerk limit: a next command from which the jerk-limited
        # braking plan still stops inside them (it yields, after position and acceleration,
        # where no command within the jerk limit can)
        jb = d.jerk_bounds
        if jb.any():
            # both directions in one call: up towards the upper bound, mirrored down to the lower
            u_b, a_b = vdt[jb], adt2[jb]
            steps = jerk_braking_step(
                np.concatenate([u_b, -u_b]),
                np.concatenate([a_b, -a_b]),
                np.concatenate([(lim.upper - p)[jb], (p - lim.lower)[jb]]),
                np.tile(d.jdt3[jb], 2),
                np.tile(d.bdt2[jb], 2),
            )
            k = int(jb.sum())
            hi[_JERK][jb] = np.minimum(hi[_JERK][jb], p[jb] + steps[:k])
            lo[_JERK][jb] = np.maximum(lo[_JERK][jb], p[jb] - steps[k:])
    else:
        lo[_JERK], hi[_JERK] = -np.inf, np.inf
    act = lim.active.copy()
    tol_p = 1e-12 * (1.0 + np.abs(p))
    # which rows can hold together: step and velocity always; then by priority
    lo_all = np.maximum(lo[_STEP], lo[_VEL])
    hi_all = np.minimum(hi[_STEP], hi[_VEL])
    for row in (_POS, _GRIP, _ACC, _JERK):
        if not act[row].any():
            continue
        lo2 = np.where(act[row], np.maximum(lo_all, lo[row]), lo_all)
        hi2 = np.where(act[row], np.minimum(hi_all, hi[row]), hi_all)
        # rows that only touch (a plan riding two constraints at once) fit, up to rounding, on
        # the higher-priority rows' side
        touch = (lo2 > hi2) & (lo2 <= hi2 + tol_p)
        if touch.any():
            point = np.clip(lo2, lo_all, hi_all)
            lo2, hi2 = np.where(touch, point, lo2), np.where(touch, point, hi2)
        fits = lo2 <= hi2
        if not fits.all():
            yielded = act[row] & ~fits
            record(f"{FILTERS[_ROW_FILTER[row]]}_yielded", yielded, target, p)
            if row in (_POS, _GRIP):
                # started outside: never further out, back inside as fast as step and velocity allow
                lo[row] = np.where(yielded, np.minimum(p, lo[row]), lo[row])
                hi[row] = np.where(yielded, np.maximum(p, hi[row]), hi[row])
                lo2 = np.where(act[row], np.maximum(lo_all, lo[row]), lo_all)
                hi2 = np.where(act[row], np.minimum(hi_all, hi[row]), hi_all)
                fits = lo2 <= hi2
            else:
                act[row] &= fits
        lo_all = np.where(fits, lo2, lo_all)
        hi_all = np.where(fits, hi2, hi_all)
    requested = x
    lo_lim, hi_lim = lo_all, hi_all  # the limits alone, before the approach shaping
    tol = _TOL * (1.0 + np.abs(x))
    outside = lim.is_pos & ((x < lo_all - tol) | (x > hi_all + tol))
    if outside.any():
        # the target is out of reach this tick. Clipping alone would head for it flat out and
        # overshoot (then ring) under acceleration limits, so the approach is also bounded by
        # the speed from which the command can still settle onto the target's own motion.
        # Not a limit: it only shapes a command that is being limited anyway, always inside
        # the limits' intersection.
        lo_a, hi_a = _approach_bounds(lim, state, x, dt)
        lo2 = np.minimum(np.maximum(lo_a, lo_all), hi_all)
        hi2 = np.maximum(np.minimum(hi_a, hi_all), lo_all)
        lo_all, hi_all = np.where(outside, lo2, lo_all), np.where(outside, hi2, hi_all)
    # clipping in the fixed order is clipping to the intersection of the rows kept
    x = np.where(lim.is_pos, np.minimum(np.maximum(x, lo_all), hi_all), x)
    # the interventions: limit rows that excluded the target, on joints whose command differs
    hits = act & ((requested < lo - tol) | (requested > hi + tol))
    if hits.any():
        hits &= np.abs(x - requested) > tol
        for row in np.flatnonzero(hits.any(axis=1)):
            record(FILTERS[_ROW_FILTER[row]], hits[row], requested, x)
    last_request = np.where(np.isfinite(requested), requested, p)

    # 7. workspace box on the forward kinematics, as a braking constraint
    verified = False
    if lim.workspace_min is not None and fk is not None:
        x, verified = _workspace(lim, d, state, x, lo_lim, hi_lim, dt, fk, record)

    # 9. base velocity joints: speed and acceleration
    if "base" not in lim.disabled and lim.is_base.any():
        # speed first, then acceleration: a base already over its speed limit brakes at the
        # acceleration limit instead of stopping dead
        speed = np.clip(x, -lim.base_vel, lim.base_vel)
        lo_b, hi_b = p - lim.base_acc * dt, p + lim.base_acc * dt
        record("base", lim.is_base & (np.abs(speed - x) > _TOL * (1.0 + np.abs(x))), x, speed)
        x = np.where(lim.is_base, speed, x)
        clipped = np.where(lim.is_base, np.clip(x, lo_b, hi_b), x)
        moved = lim.is_base & (np.abs(clipped - x) > _TOL * (1.0 + np.abs(x)))
        record("base", moved, x, clipped)
        x = clipped

    v_new = np.where(lim.is_pos, (x - p) / dt, 0.0)
    a_new = np.where(lim.is_pos, (v_new - v) / dt, 0.0)
    return Step(x, ChainState(x.copy(), v_new, a_new, last_request, verified), tuple(found))


def _approach_bounds(
    lim: ChainLimits, state: ChainState, x: np.ndarray, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    """Next-position bounds from which the command can still brake onto a target moving at its
    current velocity (estimated from the last two targets) without passing it."""
    p = state.p
    # braking used to settle onto a target: half the acceleration where jerk is limited too,
    # as the acceleration itself needs time to turn round
    b = np.where(np.isfinite(lim.max_jerk), 0.5, 1.0) * np.minimum(lim.max_acc, lim.max_dec)
    vcap = np.minimum(lim.max_vel, lim.max_step / dt)
    v_t = np.nan_to_num(np.clip((x - state.last_request) / dt, -vcap, vcap))
    e = x - p
    gap = np.abs(e) - np.sign(e) * v_t * dt  # what is left after the target moves on a tick
    # under a jerk limit the acceleration needs time to turn round before braking starts;
    # meanwhile the closing speed keeps eating the gap: gap >= w^2 / 2b + w * (t_turn + dt)
    b_safe = np.where(np.isfinite(b), b, 1.0)
    push = np.maximum(np.sign(e) * state.a, 0.0)
    t_turn = np.where(np.isfinite(lim.max_jerk), (push + b_safe) / lim.max_jerk, 0.0) + dt
    w = b_safe * (np.sqrt(t_turn * t_turn + 2.0 * np.maximum(gap, 0.0) / b_safe) - t_turn)
    reach = np.where(gap >= 0.0, (np.sign(e) * v_t + w) * dt, np.abs(e))  # along the gap
    bounded = np.isfinite(b) & (e != 0.0)
    hi_a = np.where(bounded & (e > 0), p + reach, np.inf)
    lo_a = np.where(bounded & (e < 0), p - reach, -np.inf)
    return lo_a, hi_a


def _line_brake(lim: ChainLimits, step: np.ndarray, dt: float) -> float:
    """How much a step along ``step`` can shrink per tick, as a fraction of it, when every joint
    slows down together and none beyond its deceleration limit (``inf``: it can stop at once)."""
    moving = lim.is_pos & (np.abs(step) > 0)
    if not moving.any():
        return math.inf
    bdt2 = lim.brake[moving] * dt * dt
    return float(np.min(bdt2 / np.abs(step[moving])))


_PATH_TICKS = 20_000  # ticks of a per-joint stopping path at most (then it counts as not viable)
_WS_PATH_SAMPLES = 25  # forward-kinematics samples along a per-joint stopping path at most
# a new command's stopping path keeps this far inside the box (m): a braking command inherits its
# path from the last one, and the plan's discrete choices (how many ticks at the deceleration
# limit) can flip on rounding there, moving its end by a fraction of a tick's travel
_WS_PATH_MARGIN = 1e-4


def stop_path(
    q: np.ndarray, u: np.ndarray, al: np.ndarray, jd: np.ndarray, dd: np.ndarray
) -> np.ndarray | None:
    """The positions, tick by tick, of every joint stopping on its own braking plan (the one
    :func:`jerk_overshoot` sums; without a jerk limit, steps shrinking by the deceleration) from
    ``q`` after a step ``u`` with change of step ``al``: ``[ticks + 1, n]``, the first row ``q``.
    A feedback plan per joint, so the path from its next row is the rest of this one. ``None``
    where it did not stop within ``_PATH_TICKS`` ticks."""
    sign = np.where(u != 0.0, np.sign(u), np.sign(al))
    us, als = u * sign, al * sign
    x = np.zeros(q.shape)
    rows = [q.copy()]
    active = ~((us <= 0.0) & (als <= 0.0))
    for _ in range(_PATH_TICKS):
        if not active.any():
            return np.array(rows)
        a_n = np.maximum(als - jd, -dd)
        a_end = np.where(us >= 0.0, -stair_inverse(us, jd), -np.inf)
        a_n = np.minimum(np.maximum(a_n, a_end), als + jd)
        us = np.where(active, us + a_n, us)
        als = np.where(active, a_n, als)
        x = np.where(active, x + sign * us, x)
        rows.append(q + x)
        # a joint that could not stop without reversing (already decelerating too hard for its
        # speed) goes on the other way: it brakes again in that direction, as it would
        rev = active & (us < 0.0)
        sign, us, als = np.where(rev, -sign, sign), np.where(rev, -us, us), np.where(rev, -als, als)
        active &= ~((us <= 0.0) & (als <= 0.0))
    return None


def _stop_path_fast(
    q: np.ndarray, u: np.ndarray, al: np.ndarray, jd: np.ndarray, dd: np.ndarray
) -> np.ndarray | None:
    """:func:`stop_path`, joint by joint in plain floats: the same operations in the same order on
    each joint (IEEE doubles either way, so the same numbers), without numpy's per-call cost on a
    handful of elements, and only for the joints that move (most of a path's ticks move one or
    two). Falls back to :func:`stop_path` where an input is not finite or a limit not positive
    (neither happens from a parsed configuration), or the plain floats would raise."""
    if not (
        np.isfinite(q).all()
        and np.isfinite(u).all()
        and np.isfinite(al).all()
        and (jd > 0.0).all()
        and (dd > 0.0).all()
    ):
        return stop_path(q, u, al, jd, dd)
    try:
        cols = _stop_columns(u, al, jd, dd)
    except (ArithmeticError, ValueError):
        return stop_path(q, u, al, jd, dd)
    if cols is None:
        return None
    n = len(q)
    longest = max((len(xs) for xs in cols if xs), default=0)
    X = np.zeros((longest + 1, n))
    for i, xs in enumerate(cols):
        if xs:
            X[1 : len(xs) + 1, i] = xs
            X[len(xs) + 1 :, i] = xs[-1]
    out = q + X
    out[0] = q  # stop_path's first row is q itself (q + 0.0 turns a -0.0 into 0.0)
    return out


def _stop_columns(
    u: np.ndarray, al: np.ndarray, jd: np.ndarray, dd: np.ndarray
) -> list[list[float] | None] | None:
    """Each joint's offsets from its start, tick by tick, on :func:`stop_path`'s plan (``None``
    for a joint at rest; ``None`` for all where one did not stop within ``_PATH_TICKS`` ticks)."""
    n = len(u)
    cols: list[list[float] | None] = [None] * n
    for i, (u_i, al_i, jd_i, dd_i) in enumerate(
        zip(u.tolist(), al.tolist(), jd.tolist(), dd.tolist(), strict=True)
    ):
        sign = (
            (1.0 if u_i > 0.0 else -1.0)
            if u_i != 0.0
            else (1.0 if al_i > 0.0 else -1.0 if al_i < 0.0 else 0.0)
        )
        us, als = u_i * sign, al_i * sign
        if us <= 0.0 and als <= 0.0:
            continue  # at rest: its row never changes
        # stair_inverse(us, jd)'s constants (c = 0): a jerk limit, or none (then it returns us)
        finite = math.isfinite(jd_i)
        bb = jd_i if finite else 1.0
        h = 0.5 * bb + 0.0
        hh = h * h
        two_bb = 2.0 * bb
        x = 0.0
        xs = []
        while True:
            if len(xs) >= _PATH_TICKS:
                return None
            a_n = als - jd_i
            if not a_n >= -dd_i:
                a_n = -dd_i
            if us >= 0.0:
                room = us if us >= 0.0 else 0.0
                m = float(math.floor((math.sqrt(hh + two_bb * room) - h) / bb))
                if bb * m * (m + 1.0) / 2.0 + 0.0 * m > room:
                    m = m - 1.0
                m1 = m + 1.0
                if bb * m1 * (m1 + 1.0) / 2.0 + 0.0 * m1 <= room:
                    m = m1
                if m < 0.0:
                    m = 0.0
                s = (room + bb * m * (m + 1.0) / 2.0 - 0.0 * m) / (m + 1.0)
                t = (m + 1.0) * bb
                a_end = -(s if s <= t else t) if finite else -room
            else:
                a_end = -math.inf
            if a_end > a_n:
                a_n = a_end
            cap = als + jd_i
            if cap < a_n:
                a_n = cap
            us = us + a_n
            als = a_n
            x = x + sign * us
            xs.append(x)
            if us < 0.0:
                sign, us, als = -sign, -us, -als
            if us <= 0.0 and als <= 0.0:
                break
        if len(xs) >= _PATH_TICKS:
            return None
        cols[i] = xs
    return cols


_WS_CHUNK = 6  # samples of a stopping path checked at a time, from its end (where it leaves first)


def _workspace(
    lim: ChainLimits,
    d: _PerPeriod,
    state: ChainState,
    x: np.ndarray,
    lo_all: np.ndarray,
    hi_all: np.ndarray,
    dt: float,
    fk: ForwardKinematics,
    record: Callable[[str, np.ndarray, np.ndarray, np.ndarray], None],
) -> tuple[np.ndarray, bool]:
    """The command, and whether its stopping path was verified inside the box."""
    box_lo, box_hi = lim.workspace_min, lim.workspace_max
    assert box_lo is not None and box_hi is not None
    p = state.p
    cache: dict[bytes, np.ndarray | None] = {}

    def ee(q: np.ndarray) -> np.ndarray | None:
        key = q.tobytes()
        if key not in cache:
            pts = fk(q)
            cache[key] = None if pts is None else np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        return cache[key]

    def excess(pts: np.ndarray | None, slack: float = 0.0) -> float:
        if pts is None:
            return 0.0
        out = np.maximum(box_lo + slack - pts, 0.0) + np.maximum(pts - box_hi + slack, 0.0)
        return float(np.max(out, initial=0.0))

    def margin(pts: np.ndarray) -> float:
        return float(np.min(np.minimum(pts - box_lo, box_hi - pts), initial=np.inf))

    def samples_out(pts: list[np.ndarray | None], first: int, stop: int, extra: float) -> bool:
        """Whether any of the samples ``pts[first:stop]`` leaves the box, each held inside by half
        the distance to its neighbours in ``pts`` (``extra`` more). One numpy pass over them all,
        with the same numbers as checking each on its own (a sample's slack is the larger of its
        two neighbour distances, each the largest over the end effectors; the norm is numpy's
        own formula); two or fewer are cheaper one by one."""
        lo_n, hi_n = max(first - 1, 0), min(stop + 1, len(pts))
        block = pts[lo_n:hi_n]
        first, stop = first - lo_n, stop - lo_n
        if stop - first <= 2 or any(b is None for b in block):
            return _samples_out_one_by_one(block, first, stop, extra)
        P = np.array(block)
        if not math.isfinite(float(P.sum())):
            return _samples_out_one_by_one(block, first, stop, extra)
        step = P[1:] - P[:-1]
        half = 0.5 * np.sqrt(np.add.reduce(step * step, axis=2)).max(axis=1)  # between k and k + 1
        slack = np.empty(len(block))
        slack[0], slack[-1] = half[0], half[-1]
        slack[1:-1] = np.maximum(half[:-1], half[1:])
        if extra:
            slack = slack + extra
        s = slack[first:stop, None, None]
        here = P[first:stop]
        out = np.maximum(box_lo + s - here, 0.0) + np.maximum(here - box_hi + s, 0.0)
        return bool((out > 0.0).any())

    def _samples_out_one_by_one(block: list, first: int, stop: int, extra: float) -> bool:
        """The check sample by sample (the original loop): for two samples or fewer, and where a
        sample has no forward kinematics (it passes; the original loop stopped on an assertion)
        or is not finite."""
        for i in range(first, stop):
            here = block[i]
            if here is None:
                continue
            near = [block[j] for j in (i - 1, i + 1) if 0 <= j < len(block) and block[j] is not None]
            slack = max((0.5 * float(np.max(np.linalg.norm(here - o, axis=1))) for o in near), default=0.0)
            if excess(here, slack + extra) > 0.0:
                return True
        return False

    # under a jerk limit the line plan cannot be carried out (the acceleration cannot turn at
    # once): every joint brakes on its own jerk-limited plan instead, and the box is checked
    # along that (curved) path, sampled the same way
    jerky = bool(d.jerk_bounds.any())
    if jerky:
        jd = np.where(d.jerk_bounds, d.jdt3, np.inf)
        dd = np.where(lim.is_pos, d.bdt2, np.inf)
        u_prev = np.where(lim.is_pos, state.v * dt, 0.0)

    def path_viable(q: np.ndarray) -> bool:
        step = np.where(lim.is_pos, q - p, 0.0)
        path = _stop_path_fast(q, step, step - u_prev, jd, dd)
        here, start = ee(q), ee(p)
        if here is None or start is None:
            return True
        if path is None:
            return False
        # the path turns, so this step's own motion does not bound where it goes (no shortcut far
        # from the box), and samples far apart miss where it bulges out between them: every tick
        # of it is checked (the commands it would send), or _WS_PATH_SAMPLES spread over a long one
        if len(path) > _WS_PATH_SAMPLES:
            rows = sorted(
                {round(i * (len(path) - 1) / (_WS_PATH_SAMPLES - 1)) for i in range(_WS_PATH_SAMPLES)}
            )
        else:
            rows = list(range(len(path)))
        # from the end backwards, a few samples at a time: a path that leaves the box usually does
        # so near its end, and the forward kinematics of the samples before it is then not needed
        pts: list[np.ndarray | None] = [None] * len(rows)
        done = [False] * len(rows)
        stop = len(rows)
        while stop > 0:
            first = max(stop - _WS_CHUNK, 0)
            for i in range(max(first - 1, 0), min(stop + 1, len(rows))):
                if not done[i]:
                    pts[i], done[i] = ee(path[rows[i]]), True
            if samples_out(pts, first, stop, _WS_PATH_MARGIN):
                return False
            stop = first
        return True

    def line_viable(q: np.ndarray) -> bool:
        """The end effector stays in the box while the command brakes along its direction."""
        step = np.where(lim.is_pos, q - p, 0.0)
        travel = _travel_after(_line_brake(lim, step, dt))
        here, start = ee(q), ee(p)
        if here is None or start is None:
            return True
        # far from every face: the stopping path, extrapolated from this step's own end-effector
        # motion, reaches less than half way (forward kinematics is costly on some adapters)
        reach = float(np.max(np.linalg.norm(here - start, axis=1))) * (travel + 1.0)
        if margin(here) > 2.0 * reach + 1e-6:
            return True
        length = float(np.max(np.abs(step))) * travel
        k = min(_WS_MAX_SAMPLES, 1 + math.ceil(length / _WS_SAMPLE)) if length > 0 else 0
        pts = [ee(q)]
        for i in range(1, k + 1):
            pts.append(ee(q + step * (travel * i / k)))
        return not samples_out(pts, 0, len(pts), 0.0)

    def viable(q: np.ndarray) -> bool:
        return path_viable(q) if jerky else line_viable(q)

    e_here = excess(ee(p))
    if e_here > 0.0:
        # already outside (e.g. started there): only moves that do not go further out
        if excess(ee(x)) <= e_here:
            return x, False
        out = np.where(lim.is_pos, np.clip(p, lo_all, hi_all), x)
        record("workspace_yielded", lim.is_pos & (np.abs(out - x) > 0), x, out)
        return out, False
    if viable(x):
        return x, True
    # the braking command: the previous step, shrunk at the common deceleration (under a jerk
    # limit: the next row of every joint's own stopping plan). Its stopping path is the rest of
    # the previous command's, so where that was verified, so is this one
    prev_step = np.where(lim.is_pos, state.v * dt, 0.0)
    if jerky:
        path = _stop_path_fast(p, prev_step, np.where(lim.is_pos, state.a * dt * dt, 0.0), jd, dd)
        on_line = path[1] if path is not None and len(path) > 1 else p.copy()
    else:
        shrink = max(0.0, 1.0 - _line_brake(lim, prev_step, dt))
        on_line = p + shrink * prev_step
    brake = np.where(lim.is_pos, np.clip(on_line, lo_all, hi_all), x)
    inherited = state.braking_verified and bool(
        np.all(np.abs(brake - on_line)[lim.is_pos] <= _TOL * (1.0 + np.abs(on_line[lim.is_pos])))
    )
    if not (inherited or viable(brake)):
        record("workspace_yielded", lim.is_pos & (np.abs(brake - x) > 0), x, brake)
        return brake, False
    s_in, s_out = 0.0, 1.0
    for _ in range(_WS_BISECT):
        mid = 0.5 * (s_in + s_out)
        if viable(brake + mid * (x - brake)):
            s_in = mid
        else:
            s_out = mid
    out = brake + s_in * (x - brake)
    record("workspace", lim.is_pos & (np.abs(out - x) > _TOL * (1.0 + np.abs(x))), x, out)
    return out, True
