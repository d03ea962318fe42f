"""The safety chain between the scheduler and ``adapter.command()``: on by default, fixed order.

1. ``finite``       NaN or inf anywhere → hold (arms keep the last safe command, bases brake to 0)
2. ``position``     joint position limits, the soft limits and ``position_margin`` inside them
3. ``step``         maximum change per tick relative to the last command (the first command after
                    a reset is relative to the measured position)
4. ``velocity``     ``max_velocity``
5. ``acceleration`` ``max_acceleration``, plus the braking distance to the position limits so the
                    joint can always stop inside them
6. ``jerk``         ``max_jerk``
7. ``workspace``    Cartesian box on the adapter's forward kinematics, where it has them
8. ``gripper``      gripper range (joint limits and ``safety.gripper``)
9. ``base``         mobile-base linear / angular velocity and acceleration

Per joint, filters 2-6 and 8 are intervals of admissible next positions; clipping to them in this
order is clipping to their intersection. Step and velocity are never relaxed. When the intersection
is empty (only possible from a state that was already outside the limits, e.g. a robot that starts
outside its soft limits, or with jerk limits near a position limit), the lowest-priority interval
yields (jerk, then acceleration, then position) and that is counted as ``<filter>_yielded``: the
command still moves the robot back inside at the step limit instead of jumping.

Every intervention is counted per filter and joint and kept in a bounded event log.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wall_runtime.robot import JointSpec
from wall_runtime.types import RobotState

log = logging.getLogger(__name__)
SUMMARY_PERIOD_S = 5.0  # interventions are logged as one summary line at most this often

FILTERS = ("finite", "position", "step", "velocity", "acceleration", "jerk", "workspace", "gripper", "base")
# rows of the interval table, and the filter each row belongs to
_POS, _STEP, _VEL, _ACC, _JERK, _GRIP = range(6)
_ROW_FILTER = (1, 2, 3, 4, 5, 7)  # indices into FILTERS
POSITION_KINDS = frozenset({"revolute", "prismatic", "gripper"})
BASE_KINDS = frozenset({"base_linear", "base_angular"})
_TOL = 1e-9


class SafetyConfigError(ValueError):
    """The ``safety:`` block is malformed; the message names the field."""


@dataclass(frozen=True)
class BaseLimits:
    max_linear_velocity: float = math.inf
    max_angular_velocity: float = math.inf
    max_linear_acceleration: float = math.inf
    max_angular_acceleration: float = math.inf


@dataclass(frozen=True)
class SafetyConfig:
    """The ``safety:`` block of ``robot.yaml`` (per-joint limits live in ``joint_limits``).

    .. code-block:: yaml

        safety:
          max_step: {default: 0.05, gripper: 0.2}   # or one number for every joint (per tick)
          position_margin: 0.02                      # inside the (soft) position limits; one number
                                                     # for arm joints, or {default: .., joint: ..}
          workspace: {min: [-0.5, -0.5, 0.0], max: [0.5, 0.5, 0.8]}
          gripper: {min: 0.0, max: 0.08}
          base: {max_linear_velocity: 0.5, max_angular_velocity: 1.0,
                 max_linear_acceleration: 1.0, max_angular_acceleration: 2.0}
          watchdog_timeout: 0.25
          disabled_filters: []                       # explicit, and warned about
    """

    max_step: Mapping[str, float] = field(default_factory=dict)
    position_margin: Mapping[str, float] = field(default_factory=dict)
    workspace_min: tuple[float, float, float] | None = None
    workspace_max: tuple[float, float, float] | None = None
    gripper_range: tuple[float, float] | None = None
    base: BaseLimits = field(default_factory=BaseLimits)
    watchdog_timeout: float = 0.25
    disabled: frozenset[str] = frozenset()

    @classmethod
    def from_dict(cls, block: Mapping[str, Any] | None, joints: Sequence[JointSpec] = ()) -> SafetyConfig:
        block = {} if block is None else block
        if not isinstance(block, Mapping):
            raise SafetyConfigError(f"safety: expected a mapping, got {type(block).__name__}")
        if "max_relative_target" in block:  # LeRobot's name for the same per-tick step cap
            if "max_step" in block:
                raise SafetyConfigError("safety: give max_step or max_relative_target, not both")
            block = {("max_step" if k == "max_relative_target" else k): v for k, v in block.items()}
        known = {
            "max_step",
            "position_margin",
            "workspace",
            "gripper",
            "base",
            "watchdog_timeout",
            "disabled_filters",
        }
        for key in block:
            if key not in known:
                raise SafetyConfigError(f"safety.{key}: unknown field (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}

        if block.get("max_step") is not None:
            values["max_step"] = _per_joint("safety.max_step", block["max_step"], joints, positive=True)

        if "position_margin" in block:
            values["position_margin"] = _per_joint("safety.position_margin", block["position_margin"], joints)

        if "workspace" in block:
            ws = block["workspace"]
            if not isinstance(ws, Mapping) or set(ws) != {"min", "max"}:
                raise SafetyConfigError("safety.workspace: expected {min: [x, y, z], max: [x, y, z]}")
            lo = _vector3("safety.workspace.min", ws["min"])
            hi = _vector3("safety.workspace.max", ws["max"])
            if not all(a < b for a, b in zip(lo, hi, strict=True)):
                raise SafetyConfigError("safety.workspace: every min must be below its max")
            values["workspace_min"], values["workspace_max"] = lo, hi

        if "gripper" in block:
            gr = block["gripper"]
            if not isinstance(gr, Mapping) or set(gr) != {"min", "max"}:
                raise SafetyConfigError("safety.gripper: expected {min: number, max: number}")
            lo_g, hi_g = _number("safety.gripper.min", gr["min"]), _number("safety.gripper.max", gr["max"])
            if not lo_g < hi_g:
                raise SafetyConfigError("safety.gripper: min must be below max")
            values["gripper_range"] = (lo_g, hi_g)

        if "base" in block:
            base = block["base"]
            if not isinstance(base, Mapping):
                raise SafetyConfigError("safety.base: expected a mapping")
            base_fields = set(BaseLimits.__dataclass_fields__)
            for key in base:
                if key not in base_fields:
                    raise SafetyConfigError(
                        f"safety.base.{key}: unknown field (known: {', '.join(sorted(base_fields))})"
                    )
            values["base"] = BaseLimits(**{k: _positive(f"safety.base.{k}", v) for k, v in base.items()})

        if "watchdog_timeout" in block:
            values["watchdog_timeout"] = _positive("safety.watchdog_timeout", block["watchdog_timeout"])

        disabled = block.get("disabled_filters", [])
        if not isinstance(disabled, list | tuple):
            raise SafetyConfigError("safety.disabled_filters: expected a list of filter names")
        for name in disabled:
            if name not in FILTERS:
                raise SafetyConfigError(
                    f"safety.disabled_filters: unknown filter {name!r} (filters: {', '.join(FILTERS)})"
                )
            if name == "finite":
                raise SafetyConfigError("safety.disabled_filters: the finite check cannot be disabled")
        values["disabled"] = frozenset(disabled)
        return cls(**values)

    def step_for(self, joint: str) -> float:
        return float(self.max_step.get(joint, self.max_step.get("default", math.inf)))

    def margin_for(self, joint: str) -> float:
        return float(self.position_margin.get(joint, self.position_margin.get("default", 0.0)))


def _per_joint(name: str, raw: Any, joints: Sequence[JointSpec], positive: bool = False) -> dict[str, float]:
    """One number (every arm joint: revolute and prismatic; grippers have their own range, so a
    margin in radians never lands on a gripper in metres) or ``{default: .., <joint>: ..}``."""
    names = [j.name for j in joints]
    check = _positive if positive else _non_negative
    if isinstance(raw, Mapping):
        out = {}
        for key, value in raw.items():
            if key != "default" and names and key not in names:
                raise SafetyConfigError(f"{name}.{key}: no such joint (joints: {', '.join(names)})")
            out[str(key)] = check(f"{name}.{key}", value)
        return out
    value = check(name, raw)
    if positive:
        return {"default": value}
    return (
        {j.name: value for j in joints if j.kind in ("revolute", "prismatic")}
        if joints
        else {"default": value}
    )


def _number(name: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise SafetyConfigError(f"{name}: expected a number, got {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise SafetyConfigError(f"{name}: expected a number, got {raw!r}") from None
    if math.isnan(value):
        raise SafetyConfigError(f"{name}: NaN is not a limit")
    return value


def _non_negative(name: str, raw: Any) -> float:
    value = _number(name, raw)
    if value < 0:
        raise SafetyConfigError(f"{name}: must be zero or more, got {raw!r}")
    return value


def _positive(name: str, raw: Any) -> float:
    value = _number(name, raw)
    if value <= 0:
        raise SafetyConfigError(f"{name}: must be positive, got {raw!r}")
    return value


def _vector3(name: str, raw: Any) -> tuple[float, float, float]:
    if not isinstance(raw, list | tuple) or len(raw) != 3:
        raise SafetyConfigError(f"{name}: expected three numbers [x, y, z], got {raw!r}")
    x, y, z = (_number(f"{name}[{i}]", v) for i, v in enumerate(raw))
    return (x, y, z)


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
        if not dt > 0:
            raise ValueError("safety chain period dt must be positive")
        self.joints = tuple(joints)
        self.names = [j.name for j in self.joints]
        self.config = config
        self.dt = dt
        self.fk = forward_kinematics
        self.counts: Counter[str] = Counter()
        self.joint_counts: Counter[tuple[str, str]] = Counter()
        self.events: deque[Intervention] = deque(maxlen=event_log_size)
        self.tick = 0
        self.last_tick_interventions: list[Intervention] = []
        # interventions not yet logged, by (filter, joint): one summary line per SUMMARY_PERIOD_S
        self._unlogged: Counter[tuple[str, str]] = Counter()
        self._last_summary: float | None = None
        n = len(self.joints)

        kinds = np.array([j.kind for j in self.joints])
        unknown = [j.name for j in self.joints if j.kind not in POSITION_KINDS | BASE_KINDS]
        if unknown:
            raise ValueError(f"joints of unknown kind: {', '.join(unknown)}")
        self.is_pos = np.isin(kinds, list(POSITION_KINDS))
        self.is_base = ~self.is_pos
        self.is_gripper = kinds == "gripper"
        lim = [j.limits for j in self.joints]
        margin = np.array([config.margin_for(j.name) for j in self.joints])
        self.lower = np.array([lo.lower for lo in lim]) + margin
        self.upper = np.array([lo.upper for lo in lim]) - margin
        bad = self.is_pos & (self.lower > self.upper)
        if bad.any():
            raise SafetyConfigError(
                "safety.position_margin leaves no room inside the limits of "
                f"{', '.join(np.array(self.names)[bad])}"
            )
        self.grip_lower = np.full(n, -math.inf)
        self.grip_upper = np.full(n, math.inf)
        if config.gripper_range is not None:
            self.grip_lower[self.is_gripper], self.grip_upper[self.is_gripper] = config.gripper_range
        self.max_step = np.array([config.step_for(j.name) for j in self.joints])
        self.max_vel = np.array([lo.max_velocity if lo.has_velocity_limits else math.inf for lo in lim])
        self.max_acc = np.array(
            [lo.max_acceleration if lo.has_acceleration_limits else math.inf for lo in lim]
        )
        self.brake = np.minimum(self.max_acc, [lo.max_deceleration for lo in lim])
        self.max_jerk = np.array([lo.max_jerk if lo.has_jerk_limits else math.inf for lo in lim])
        base = config.base
        lin = kinds == "base_linear"
        self.base_vel = np.where(lin, base.max_linear_velocity, base.max_angular_velocity)
        self.base_vel = np.minimum(self.base_vel, self.max_vel)
        self.base_acc = np.where(lin, base.max_linear_acceleration, base.max_angular_acceleration)
        self.base_acc = np.minimum(self.base_acc, self.max_acc)
        self.disabled = frozenset(config.disabled)
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
        self._precompute()
        # braking used to settle onto a target: half the acceleration where jerk is limited too,
        # as the acceleration itself needs time to turn round
        self._approach_brake = np.where(np.isfinite(self.max_jerk), 0.5, 1.0) * self.max_acc
        self._last_request = np.zeros(len(self.joints))
        self._p: np.ndarray | None = None  # last command
        self._v = np.zeros(n)
        self._a = np.zeros(n)

    def _precompute(self) -> None:
        """Everything per tick that does not depend on the state."""
        n, dt, inf = len(self.joints), self.dt, math.inf
        self._lo = np.empty((6, n))
        self._hi = np.empty((6, n))
        self._pos_lo = np.where(self.is_gripper, -inf, self.lower)
        self._pos_hi = np.where(self.is_gripper, inf, self.upper)
        self._grip_lo = np.where(self.is_gripper, np.maximum(self.lower, self.grip_lower), -inf)
        self._grip_hi = np.where(self.is_gripper, np.minimum(self.upper, self.grip_upper), inf)
        self._vel_dt = self.max_vel * dt
        self._acc_dt2 = self.max_acc * dt * dt
        self._jerk_dt3 = self.max_jerk * dt**3
        acc_on = "acceleration" not in self.disabled
        jerk_on = "jerk" not in self.disabled
        self._braking = np.isfinite(self.brake) & acc_on
        self._brake_dt2 = np.where(self._braking, self.brake, 1.0) * dt * dt
        self._vcap = np.minimum(self.max_vel, self.max_step / dt)
        self._jerk_braking = np.isfinite(self.max_jerk) & np.isfinite(self._vcap) & jerk_on
        self._jerk_dt2 = np.where(self._jerk_braking, self.max_jerk, 1.0) * dt * dt
        rows = {"position": _POS, "step": _STEP, "velocity": _VEL, "acceleration": _ACC, "jerk": _JERK}
        self._active = np.tile(self.is_pos, (6, 1))
        for name, row in rows.items():
            if name in self.disabled:
                self._active[row] = False
        if "gripper" in self.disabled:
            self._active[_GRIP] = False

    @property
    def workspace_active(self) -> bool:
        return (
            self.config.workspace_min is not None and self.fk is not None and "workspace" not in self.disabled
        )

    @property
    def last_command(self) -> np.ndarray | None:
        return None if self._p is None else self._p.copy()

    def reset(self, state: RobotState | None) -> None:
        """Anchor the chain on the measured state (at start, after a hold, after an e-stop reset)."""
        n = len(self.joints)
        self._v = np.zeros(n)
        self._a = np.zeros(n)
        if state is None:
            self._p = None
            return
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
        self._p = p
        self._last_request = p.copy()

    def _record(self, filt: str, mask: np.ndarray, requested: np.ndarray, commanded: np.ndarray) -> None:
        if filt.split("_yielded")[0] in self.disabled:
            return
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return
        self.counts[filt] += int(idx.size)
        for i in idx:
            name = self.names[i]
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

    def filter(
        self, target: np.ndarray, state: RobotState | None = None, dt: float | None = None
    ) -> np.ndarray:
        """One tick: the command to send for ``target`` (joint order and units of the spec).

        ``dt`` is the time since the last command when it is not the nominal period (a control loop
        that overran and skipped deadlines): speed, acceleration and jerk are then held over the
        real interval; the step limit stays per command."""
        if dt is not None and dt > 0 and abs(dt - self.dt) > 1e-9 * self.dt:
            nominal = self.dt
            self.dt = dt
            self._precompute()
            try:
                return self.filter(target, state)
            finally:
                self.dt = nominal
                self._precompute()
        self.tick += 1
        self.last_tick_interventions = []
        target = np.asarray(target, dtype=np.float64)
        n = len(self.joints)
        if target.shape != (n,):
            raise ValueError(f"target has shape {target.shape}, the robot has {n} joints")
        if self._p is None:
            if state is None:
                raise RuntimeError("the safety chain needs a measured state for its first command")
            self.reset(state)
        assert self._p is not None
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._filter(target, self._p, self._v, self._a, self.dt)

    def _filter(
        self, target: np.ndarray, p: np.ndarray, v: np.ndarray, a: np.ndarray, dt: float
    ) -> np.ndarray:
        x = target.copy()

        # 1. finite: one bad number means the whole target is untrustworthy
        bad = ~np.isfinite(x)
        if bad.any():
            hold = np.where(self.is_pos, p, 0.0)
            self._record("finite", bad | (hold != target), target, hold)
            x = hold

        # 2-6 and 8, position joints: intervals of the next position, one row per filter
        lo, hi = self._lo, self._hi
        lo[_POS], hi[_POS] = self._pos_lo, self._pos_hi
        lo[_STEP], hi[_STEP] = p - self.max_step, p + self.max_step
        lo[_VEL], hi[_VEL] = p - self._vel_dt, p + self._vel_dt
        # acceleration, with the braking distance to the position limits: the joint must always be
        # able to stop inside them at its deceleration, so the admissible speed shrinks near a limit
        bdt2 = self._brake_dt2
        room_hi = np.maximum(self.upper - p, 0.0)
        room_lo = np.maximum(p - self.lower, 0.0)
        u_hi = np.where(self._braking, bdt2 * (np.sqrt(1.0 + 2.0 * room_hi / bdt2) - 1.0), np.inf)
        u_lo = np.where(self._braking, bdt2 * (np.sqrt(1.0 + 2.0 * room_lo / bdt2) - 1.0), np.inf)
        vdt = v * dt
        lo[_ACC] = np.maximum(p + vdt - self._acc_dt2, p - u_lo)
        hi[_ACC] = np.minimum(p + vdt + self._acc_dt2, p + u_hi)
        # jerk, with the same idea one derivative up: the acceleration must be able to return to zero
        # (at the jerk limit) before the speed reaches its cap
        jdt2 = self._jerk_dt2
        head_hi = np.maximum(self._vcap - v, 0.0)
        head_lo = np.maximum(v + self._vcap, 0.0)
        w_hi = np.where(self._jerk_braking, jdt2 * (np.sqrt(1.0 + 2.0 * head_hi / jdt2) - 1.0), np.inf)
        w_lo = np.where(self._jerk_braking, jdt2 * (np.sqrt(1.0 + 2.0 * head_lo / jdt2) - 1.0), np.inf)
        adt2 = a * dt * dt
        lo[_JERK] = np.maximum(p + vdt + adt2 - self._jerk_dt3, p + vdt - w_lo * dt)
        hi[_JERK] = np.minimum(p + vdt + adt2 + self._jerk_dt3, p + vdt + w_hi * dt)
        lo[_GRIP], hi[_GRIP] = self._grip_lo, self._grip_hi
        act = self._active.copy()
        # which rows can hold together: step and velocity always; then by priority
        lo_all = np.maximum(lo[_STEP], lo[_VEL])
        hi_all = np.minimum(hi[_STEP], hi[_VEL])
        for row in (_POS, _GRIP, _ACC, _JERK):
            if not act[row].any():
                continue
            lo2 = np.where(act[row], np.maximum(lo_all, lo[row]), lo_all)
            hi2 = np.where(act[row], np.minimum(hi_all, hi[row]), hi_all)
            fits = lo2 <= hi2
            if not fits.all():
                yielded = act[row] & ~fits
                self._record(f"{FILTERS[_ROW_FILTER[row]]}_yielded", yielded, target, p)
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
        tol = _TOL * (1.0 + np.abs(x))
        outside = self.is_pos & ((x < lo_all - tol) | (x > hi_all + tol))
        if outside.any():
            # the target is out of reach this tick. Clipping alone would head for it flat out and
            # overshoot (then ring) under acceleration limits, so the approach is also bounded by
            # the speed from which the command can still settle onto the target's own motion.
            # Not a limit: it only shapes a command that is being limited anyway, always inside
            # the limits' intersection.
            # where even the hardest braking the limits allow is not enough, brake that hard
            lo_a, hi_a = self._approach_bounds(x, p)
            lo2 = np.minimum(np.maximum(lo_a, lo_all), hi_all)
            hi2 = np.maximum(np.minimum(hi_a, hi_all), lo_all)
            lo_all, hi_all = np.where(outside, lo2, lo_all), np.where(outside, hi2, hi_all)
        # clipping in the fixed order is clipping to the intersection of the rows kept
        x = np.where(self.is_pos, np.minimum(np.maximum(x, lo_all), hi_all), x)
        # the interventions: limit rows that excluded the target, on joints whose command differs
        hits = act & ((requested < lo - tol) | (requested > hi + tol))
        if hits.any():
            hits &= np.abs(x - requested) > tol
            for row in np.flatnonzero(hits.any(axis=1)):
                self._record(FILTERS[_ROW_FILTER[row]], hits[row], requested, x)
        self._last_request = np.where(np.isfinite(requested), requested, p)

        # 7. workspace box on the forward kinematics
        if self.workspace_active:
            x = self._workspace(p, x)

        # 9. base velocity joints: speed and acceleration
        if "base" not in self.disabled and self.is_base.any():
            # speed first, then acceleration: a base already over its speed limit brakes at the
            # acceleration limit instead of stopping dead
            speed = np.clip(x, -self.base_vel, self.base_vel)
            lo_b, hi_b = p - self.base_acc * dt, p + self.base_acc * dt
            self._record("base", self.is_base & (np.abs(speed - x) > _TOL * (1.0 + np.abs(x))), x, speed)
            x = np.where(self.is_base, speed, x)
            clipped = np.where(self.is_base, np.clip(x, lo_b, hi_b), x)
            moved = self.is_base & (np.abs(clipped - x) > _TOL * (1.0 + np.abs(x)))
            self._record("base", moved, x, clipped)
            x = clipped

        v_new = np.where(self.is_pos, (x - p) / dt, 0.0)
        self._a = np.where(self.is_pos, (v_new - v) / dt, 0.0)
        self._v = v_new
        self._p = x.copy()
        return x

    def _approach_bounds(self, x: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Next-position bounds from which the command can still brake onto a target moving at its
        current velocity (estimated from the last two targets) without passing it."""
        dt, b = self.dt, self._approach_brake
        v_t = np.nan_to_num(np.clip((x - self._last_request) / dt, -self._vcap, self._vcap))
        e = x - p
        gap = np.abs(e) - np.sign(e) * v_t * dt  # what is left after the target moves on a tick
        # under a jerk limit the acceleration needs time to turn round before braking starts;
        # meanwhile the closing speed keeps eating the gap: gap >= w^2 / 2b + w * (t_turn + dt)
        b_safe = np.where(np.isfinite(b), b, 1.0)
        push = np.maximum(np.sign(e) * self._a, 0.0)
        t_turn = np.where(np.isfinite(self.max_jerk), (push + b_safe) / self.max_jerk, 0.0) + dt
        w = b_safe * (np.sqrt(t_turn * t_turn + 2.0 * np.maximum(gap, 0.0) / b_safe) - t_turn)
        reach = np.where(gap >= 0.0, (np.sign(e) * v_t + w) * dt, np.abs(e))  # along the gap
        bounded = np.isfinite(b) & (e != 0.0)
        hi_a = np.where(bounded & (e > 0), p + reach, np.inf)
        lo_a = np.where(bounded & (e < 0), p - reach, -np.inf)
        return lo_a, hi_a

    def _workspace(self, p: np.ndarray, x: np.ndarray) -> np.ndarray:
        lo = np.asarray(self.config.workspace_min)
        hi = np.asarray(self.config.workspace_max)
        assert self.fk is not None

        def excess(q: np.ndarray) -> float:
            pts = self.fk(q)
            if pts is None:
                return 0.0
            pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
            return float(np.max(np.maximum(lo - pts, 0.0) + np.maximum(pts - hi, 0.0), initial=0.0))

        e_new = excess(x)
        if e_new <= 0.0:
            return x
        e_old = excess(p)
        mask = np.abs(x - p) > 0
        if e_old > 0.0:
            # already outside (e.g. started there): allow only moves that do not go further out
            out = x if e_new <= e_old else p.copy()
        else:
            f_in, f_out = 0.0, 1.0
            for _ in range(20):
                mid = 0.5 * (f_in + f_out)
                if excess(p + mid * (x - p)) > 0.0:
                    f_out = mid
                else:
                    f_in = mid
            out = p + f_in * (x - p)
        self._record("workspace", mask & (np.abs(out - x) > 0), x, out)
        return out


def joint_step_limits(joints: Sequence[JointSpec], config: SafetyConfig, dt: float) -> np.ndarray:
    """The tightest per-tick change each joint may see (step and velocity), for the splice guard."""
    out = []
    for j in joints:
        vel = j.limits.max_velocity if j.limits.has_velocity_limits else math.inf
        if j.kind in BASE_KINDS:
            base = config.base
            acc = base.max_linear_acceleration if j.kind == "base_linear" else base.max_angular_acceleration
            out.append(acc * dt)
        else:
            out.append(min(config.step_for(j.name), vel * dt))
    return np.array(out)
