"""Property tests of the safety chain's guarantees, measured on the command stream itself.

Every command's finite differences (velocity, acceleration, jerk over the control period) are
checked against the limits on every tick, from a start inside the limits: at the position bounds,
the gripper range and the workspace box (which the chain must brake for, never hit), with and
without jerk limits, across idle gaps (after which the chain starts again from the setpoint the
robot held, moving as the robot is measured to move: the first command is measured against that
motion), and in a control loop fed chunks with abusive timing or shape. No limit may yield from
such a start, and every changed command is counted.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planar_arm import BOX, planar_arm, planar_fk

from wall_runtime.control.dryrun import FirstOrderRobot
from wall_runtime.control.limits import parse_joint_limits
from wall_runtime.control.loop import ControlLoop, LoopConfig
from wall_runtime.control.safety import SafetyChain, SafetyConfig
from wall_runtime.robot import JointSpec, RobotSpec
from wall_runtime.types import ActionChunk, Observation, RobotState

DT = 0.01
REL = 1e-6  # relative tolerance on every limit (float rounding in the finite differences)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# the worst measured ratio of each limit (value / limit) over every tick of this module's tests;
# written to the file WALL_SAFETY_RATIOS names, if set (how the worst case is reported)
WORST: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_worst_ratios() -> Iterator[None]:
    yield
    path = os.environ.get("WALL_SAFETY_RATIOS")
    if path:
        with open(path, "w") as f:
            json.dump(dict(sorted(WORST.items())), f, indent=1)


@dataclass
class Meter:
    """Measures a command stream against the limits, tick by tick; collects every violation."""

    chain: SafetyChain
    dt: float
    fk: object = None
    box: tuple[np.ndarray, np.ndarray] | None = None
    p: np.ndarray | None = None
    v: np.ndarray | None = None
    a: np.ndarray | None = None
    violations: list[str] = field(default_factory=list)
    ticks: int = 0

    def anchor(
        self, position: np.ndarray, velocity: np.ndarray | None = None, acceleration: np.ndarray | None = None
    ) -> None:
        """The robot was not following the stream: measure from the measured state again."""
        self.p = np.asarray(position, dtype=np.float64).copy()
        self.v = np.zeros_like(self.p) if velocity is None else np.asarray(velocity, dtype=np.float64)
        self.a = np.zeros_like(self.p) if acceleration is None else np.asarray(acceleration, dtype=np.float64)

    def measure(self, x: np.ndarray, target: np.ndarray | None = None) -> None:
        assert self.p is not None and self.v is not None and self.a is not None
        self.ticks += 1
        c, dt = self.chain, self.dt
        pos = c.is_pos
        v = (x - self.p) / dt
        a = (v - self.v) / dt
        j = (a - self.a) / dt
        slowing = (v * self.v >= 0) & (np.abs(v) <= np.abs(self.v))
        acc_limit = np.where(slowing, c.limits.max_dec, c.limits.max_acc)

        def over(value: np.ndarray, limit: np.ndarray) -> np.ndarray:
            return pos & (np.abs(value) > limit * (1 + REL) + 1e-9)

        with np.errstate(divide="ignore", invalid="ignore"):
            for name, value, limit in (
                ("step", x - self.p, c.max_step),
                ("velocity", v, c.max_vel),
                ("acceleration", a, acc_limit),
                ("jerk", j, c.max_jerk),
            ):
                ratio = np.where(pos & np.isfinite(limit), np.abs(value) / limit, 0.0)
                WORST[name] = max(WORST.get(name, 0.0), float(np.max(ratio, initial=0.0)))
            beyond = np.where(pos, np.maximum(c.lower - x, 0.0) + np.maximum(x - c.upper, 0.0), 0.0)
            WORST["position_excess"] = max(
                WORST.get("position_excess", 0.0), float(np.max(beyond, initial=0))
            )

        checks = {
            "position": pos & ((x < c.lower - 1e-9) | (x > c.upper + 1e-9)),
            "step": over(x - self.p, c.max_step),
            "velocity": over(v, c.max_vel),
            "acceleration": over(a, acc_limit),
            "jerk": over(j, c.max_jerk),
        }
        for name, bad in checks.items():
            for i in np.flatnonzero(bad):
                self.violations.append(
                    f"tick {self.ticks} {c.names[i]}: {name} (x {x[i]:.6g} v {v[i]:.6g} a {a[i]:.6g} j {j[i]:.6g})"
                )
        if self.box is not None:
            ee = np.asarray(self.fk(x)).reshape(-1, 3)  # type: ignore[operator]
            out = np.max(np.maximum(self.box[0] - ee, 0) + np.maximum(ee - self.box[1], 0))
            WORST["workspace_excess"] = max(WORST.get("workspace_excess", 0.0), float(out))
            if out > 1e-9:
                self.violations.append(f"tick {self.ticks}: end effector {ee} outside the box by {out:.3g}")
        yielded = [e for e in c.last_tick_interventions if e.filter.endswith("_yielded")]
        if yielded:
            self.violations.append(f"tick {self.ticks}: yielded {yielded}")
        if target is not None:  # a changed command is always counted on its joint
            touched = {e.joint for e in c.last_tick_interventions}
            changed = ~np.isfinite(target) | (np.abs(x - target) > 1e-9 * (1 + np.abs(target)))
            for i in np.flatnonzero(changed):
                if c.names[i] not in touched:
                    self.violations.append(f"tick {self.ticks} {c.names[i]}: changed but not counted")
        self.p, self.v, self.a = x.copy(), v, a


def _joint(name: str, kind: str, unit: str, **limits: float) -> JointSpec:
    return JointSpec(name, kind, unit, parse_joint_limits(name, dict(limits)))


# -- the gripper range and the position bounds ----------------------------------------------------


def _gripper_joints(jerk: bool) -> tuple[JointSpec, ...]:
    """A wrist, a lift and a gripper; with ``jerk``, each with a jerk limit tight enough that the
    deceleration takes several ticks to build up (so braking must plan for it)."""
    j = (lambda value: {"max_jerk": value}) if jerk else (lambda value: {})
    return (
        _joint(
            "wrist",
            "revolute",
            "rad",
            min_position=-1.0,
            max_position=1.0,
            max_velocity=2.0,
            max_acceleration=20.0,
            **j(400.0),
        ),
        _joint(
            "lift",
            "prismatic",
            "m",
            min_position=0.0,
            max_position=0.3,
            max_velocity=0.5,
            max_acceleration=4.0,
            max_deceleration=8.0,
            **j(150.0),
        ),
        _joint(
            "gripper",
            "gripper",
            "m",
            min_position=0.0,
            max_position=0.08,
            max_velocity=0.2,
            max_acceleration=2.0,
            max_deceleration=1.0,
            **j(40.0),
        ),
    )


GRIPPER_JOINTS = _gripper_joints(jerk=False)
JERK_GRIPPER_JOINTS = _gripper_joints(jerk=True)
GRIPPER_SAFETY = {
    "max_step": {"default": 0.05, "gripper": 0.01},
    "position_margin": 0.01,
    "gripper": {"min": 0.02, "max": 0.03},
}

wild = st.one_of(
    st.floats(-3.0, 3.0),
    st.sampled_from([1e300, -1e300, 0.0, 0.025, 0.02, 0.03, 1.0, -1.0, 0.3]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@pytest.mark.parametrize("joints", [GRIPPER_JOINTS, JERK_GRIPPER_JOINTS], ids=["no-jerk", "jerk"])
@SETTINGS
@given(
    start=st.tuples(st.floats(-0.99, 0.99), st.floats(0.01, 0.29), st.floats(0.02, 0.03)),
    targets=st.lists(st.lists(wild, min_size=3, max_size=3), min_size=1, max_size=120),
    hold_each=st.integers(1, 30),
)
def test_the_gripper_range_and_the_bounds_are_braked_for(joints, start, targets, hold_each) -> None:
    """Position, velocity, acceleration and (where limited) jerk hold on every tick."""
    chain = SafetyChain(joints, SafetyConfig.from_dict(GRIPPER_SAFETY, joints), DT)
    meter = Meter(chain, DT)
    meter.anchor(np.array(start))
    state = RobotState(0.0, np.array(start))
    for t in targets:
        target = np.array(t, dtype=np.float64)
        for _ in range(hold_each):  # a target held for a while runs into the bounds at speed
            meter.measure(chain.filter(target, state), target)
    assert not meter.violations, meter.violations[:5]
    total = sum(chain.counts.values())
    assert total == sum(chain.joint_counts.values()) and len(chain.events) == min(total, chain.events.maxlen)


def test_a_narrow_gripper_range_is_reached_at_the_deceleration_limit_not_hit() -> None:
    """The issue's case: slamming into a narrow safety.gripper range at 5.6x the limit."""
    chain = SafetyChain(GRIPPER_JOINTS, SafetyConfig.from_dict(GRIPPER_SAFETY, GRIPPER_JOINTS), DT)
    meter = Meter(chain, DT)
    start = np.array([0.0, 0.1, 0.02])
    meter.anchor(start)
    target = np.array([0.0, 0.1, 0.08])
    x = chain.filter(target, RobotState(0.0, start))
    meter.measure(x, target)
    for _ in range(200):
        x = chain.filter(target)
        meter.measure(x, target)
    assert not meter.violations, meter.violations[:5]
    assert x[2] == pytest.approx(0.03, abs=1e-6)  # it got to the range's edge
    assert chain.counts["gripper"] > 0


@pytest.mark.parametrize("rate", [100.0, 500.0])
def test_a_jerk_limited_joint_flat_out_into_its_bounds_stops_within_every_limit(rate: float) -> None:
    """The issue's case: the braking plans ignored jerk (up to ~4x the jerk limit at a bound)."""
    joints = JERK_GRIPPER_JOINTS
    dt = 1.0 / rate
    chain = SafetyChain(joints, SafetyConfig.from_dict(GRIPPER_SAFETY, joints), dt)
    meter = Meter(chain, dt)
    start = np.array([-0.99, 0.01, 0.02])
    meter.anchor(start)
    state = RobotState(0.0, start)
    x = start
    for target in ([3.0, 3.0, 3.0], [-3.0, -3.0, -3.0], [3.0, 0.0, 0.08]):
        for _ in range(int(2.0 * rate)):
            x = chain.filter(np.array(target), state)
            meter.measure(x, np.array(target))
        # it got to the bound (the gripper to its range), at rest
        assert np.allclose(x, np.clip(target, chain.lower, chain.upper), atol=1e-6)
    assert not meter.violations, meter.violations[:5]
    assert chain.counts["position"] > 0 and chain.counts["gripper"] > 0


# -- the workspace box -------------------------------------------------------------------------

ARM = planar_arm(jerk=False)
JERK_ARM = planar_arm(jerk=True)


@pytest.mark.parametrize("arm", [ARM, JERK_ARM], ids=["no-jerk", "jerk"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.tuples(st.floats(-0.5, 0.5), st.floats(-1.5, 1.5)),
    targets=st.lists(st.tuples(st.floats(-3, 3), st.floats(-3, 3)), min_size=1, max_size=10),
    hold_each=st.integers(1, 30),
)
def test_the_workspace_box_is_braked_for_within_the_joint_limits(arm, start, targets, hold_each) -> None:
    q0 = np.array(start)
    box = (np.array(BOX["min"]), np.array(BOX["max"]))
    ee0 = planar_fk(q0)[0]
    if np.any(ee0 < box[0]) or np.any(ee0 > box[1]):
        return  # starts outside the box: not this property
    chain = SafetyChain(
        arm,
        SafetyConfig.from_dict({"max_step": 0.1, "workspace": BOX}, arm),
        DT,
        forward_kinematics=planar_fk,
    )
    meter = Meter(chain, DT, fk=planar_fk, box=box)
    meter.anchor(q0)
    state = RobotState(0.0, q0)
    for t in targets:
        for _ in range(hold_each):
            meter.measure(chain.filter(np.array(t), state), np.array(t))
    assert not meter.violations, meter.violations[:5]


def test_the_workspace_box_stops_a_fast_arm_within_its_acceleration_limit() -> None:
    """The issue's case: the box stopped the arm at up to 5.9x max_acceleration."""
    chain = SafetyChain(
        ARM,
        SafetyConfig.from_dict({"max_step": 0.1, "workspace": BOX}, ARM),
        DT,
        forward_kinematics=planar_fk,
    )
    meter = Meter(chain, DT, fk=planar_fk, box=(np.array(BOX["min"]), np.array(BOX["max"])))
    q = np.array([0.0, 0.3])
    meter.anchor(q)
    target = np.array([2.5, 0.3])  # straight out of the box's y = 0.3 face at full speed
    x = chain.filter(target, RobotState(0.0, q))
    meter.measure(x, target)
    for _ in range(300):
        x = chain.filter(target)
        meter.measure(x, target)
    assert not meter.violations, meter.violations[:5]
    assert planar_fk(x)[0][1] > 0.29  # it did get close to the face
    assert chain.counts["workspace"] > 0


# -- idle gaps ------------------------------------------------------------------------------------

GAP_JOINTS = (
    _joint(
        "j",
        "revolute",
        "rad",
        min_position=-3,
        max_position=3,
        max_velocity=2.0,
        max_acceleration=20.0,
        max_jerk=5000,
    ),
    _joint("k", "revolute", "rad", min_position=-3, max_position=3, max_velocity=3.0, max_acceleration=20.0),
)


@SETTINGS
@given(
    plan=st.lists(
        st.tuples(
            st.tuples(st.floats(-2.5, 2.5), st.floats(-2.5, 2.5)),  # target
            st.integers(1, 30),  # ticks it is held for
            st.integers(0, 9),  # after this many idle ticks
            # the velocity measured at the end of the gap (inside the limits, with room to take
            # the measured acceleration back to zero under the jerk limit)
            st.tuples(st.floats(-1.7, 1.7), st.floats(-2.7, 2.7)),
            st.tuples(st.floats(-19.0, 19.0), st.floats(-19.0, 19.0)),  # acceleration then
            st.booleans(),  # whether the robot reports its velocity (else it is differenced)
        ),
        min_size=1,
        max_size=12,
    )
)
def test_after_an_idle_gap_the_chain_starts_from_the_measured_motion(plan) -> None:
    """No command after a gap exceeds a limit relative to the motion the robot is measured to have
    (the command stream's velocity from before the gap would be wrong: the setpoint was held)."""
    chain = SafetyChain(GAP_JOINTS, SafetyConfig.from_dict({}, GAP_JOINTS), DT)
    meter = Meter(chain, DT)
    last = np.zeros(2)
    meter.anchor(last)
    clock = 0.0
    seen: list[tuple[np.ndarray, np.ndarray | None]] = []  # what the robot reported, tick by tick

    def observe(q: np.ndarray, v: np.ndarray | None = None) -> None:
        chain.observe(RobotState(clock, q, velocity=v), clock)
        seen.append((q.copy(), None if v is None else v.copy()))

    def measured_velocity(k: int) -> np.ndarray:  # reported, else differenced (NaN: unknown)
        q, v = seen[k]
        if v is not None:
            return v
        return (q - seen[k - 1][0]) / DT if len(seen) >= 1 - k else np.full(2, np.nan)

    observe(last)
    meter.measure(chain.filter(last, RobotState(0.0, last)))  # the first command: from the robot
    for target, ticks, idle, v_end, a0, reports in plan:
        target, v_end, a0 = np.array(target), np.array(v_end), np.array(a0)
        if idle > 0:
            # the robot still moving (catching up with its setpoint, or pushed): it ends the gap
            # at v_end, accelerating at a0
            t0 = -idle * DT  # the motion is continuous from the last measured position
            q0 = seen[-1][0] - v_end * t0 - 0.5 * a0 * t0 * t0
            for k in range(1, idle + 1):
                clock += DT
                t = (k - idle) * DT
                v = v_end + a0 * t
                observe(q0 + v_end * t + 0.5 * a0 * t * t, v if reports else None)
            v_m = measured_velocity(-1)
            a_m = np.nan_to_num(np.clip((v_m - measured_velocity(-2)) / DT, -20.0, 20.0))
            x = chain.filter(target, RobotState(clock, seen[-1][0]), dt=(idle + 1) * DT)
            np.testing.assert_allclose(chain.gap_motion[0], v_m, atol=1e-9)
            np.testing.assert_allclose(chain.gap_motion[1], a_m, atol=1e-6)
            meter.anchor(last, v_m, a_m)  # measured against the robot's motion, from its setpoint
            meter.measure(x, target)
            last = x
            ticks -= 1
        for _ in range(ticks):
            clock += DT
            observe(last)
            x = chain.filter(target, RobotState(clock, last), dt=DT)
            meter.measure(x, target)
            last = x
    assert not meter.violations, meter.violations[:5]


@pytest.mark.parametrize("idle", [2, 5, 9])
def test_the_first_command_after_a_gap_is_limited_from_the_measured_motion(idle: int) -> None:
    """The issue's case: limited with the velocity from before the gap, 3 rad/s against 2 and
    300 rad/s^2 against 20 from rest. Now from what the robot is measured to do: at rest, or
    still moving (by differences of the measured positions, or its reported velocity)."""
    for measured_v, reports in ((0.0, True), (1.2, False), (-1.5, True)):
        chain = SafetyChain(GAP_JOINTS, SafetyConfig.from_dict({}, GAP_JOINTS), DT)
        x = chain.filter(np.zeros(2), RobotState(0.0, np.zeros(2)))
        for _ in range(100):  # at full speed
            x = chain.filter(np.array([2.5, 0.0]), dt=DT)
        assert (x[0] - chain.state.p[0] + chain.state.v[0] * DT) / DT == pytest.approx(2.0)
        for k in range(idle + 1):  # the gap: the robot measured moving at measured_v
            q = x + np.array([measured_v * k * DT, 0.0])
            v = np.array([measured_v, 0.0]) if reports else None
            chain.observe(RobotState(k * DT, q, velocity=v), 1.0 + k * DT)
        nxt = chain.filter(np.array([2.5, 0.0]), RobotState(0.0, q), dt=(idle + 1) * DT)
        v = (nxt[0] - x[0]) / DT
        # one tick of the acceleration limit from the measured velocity, no more
        assert abs(v - measured_v) <= 20.0 * DT + 1e-9 and abs(v) <= 2.0 + 1e-9
        assert v > measured_v - 1e-9  # towards the target
        assert chain.gaps == 1


# -- a control loop fed chunks with abusive timing and shape ---------------------------------------

LOOP_HZ = 100.0
LOOP_JOINTS = (
    _joint(
        "j1",
        "revolute",
        "rad",
        min_position=-1.0,
        max_position=1.0,
        max_velocity=2.0,
        max_acceleration=20.0,
        max_deceleration=30.0,
    ),
    _joint(
        "j2", "revolute", "rad", min_position=-0.5, max_position=0.5, max_velocity=1.0, max_acceleration=10.0
    ),
    _joint(
        "gripper", "gripper", "m", min_position=0.0, max_position=0.08, max_velocity=0.2, max_acceleration=2.0
    ),
)
LOOP_SAFETY = {
    "max_step": {"default": 0.05, "gripper": 0.01},
    "position_margin": 0.02,
    "gripper": {"min": 0.02, "max": 0.03},
}

abusive_dt = st.sampled_from(
    [0.02, 0.01, 0.05, 1e9, 1e-9, 0.0, -0.02, math.nan, math.inf, -math.inf, 1e-4, 0.5, 2.0]
)
chunk_recipe = st.one_of(
    st.none(),  # no answer: the watchdog's business
    st.fixed_dictionaries(
        {
            "rows": st.integers(0, 8),
            "dims": st.sampled_from([3, 3, 3, 2, 0]),
            "dt": abusive_dt,
            "stamp": st.sampled_from(["obs", "obs", "future", "nan", "old"]),
            "value": st.one_of(st.floats(-2, 2), st.sampled_from([math.nan, math.inf, 1e300, 0.025])),
            "slope": st.floats(-5, 5),
        }
    ),
)


class _ScriptedPolicy:
    """Answers each request on the simulated clock with the next recipe's chunk."""

    def __init__(self, clock: list[float], recipes: list, latency: float = 0.03) -> None:
        self.clock, self.recipes, self.latency, self.queue, self.seq = clock, list(recipes), latency, [], 0

    def request(self, observation: Observation) -> None:
        self.seq += 1
        recipe = self.recipes.pop(0) if self.recipes else None
        if recipe is None:
            return
        rows, dims = recipe["rows"], recipe["dims"]
        actions = recipe["value"] + recipe["slope"] * 0.02 * np.arange(rows)[:, None] * np.ones((rows, dims))
        stamp = {
            "obs": observation.stamp,
            "future": observation.stamp + 5.0,
            "nan": math.nan,
            "old": observation.stamp - 100.0,
        }[recipe["stamp"]]
        self.queue.append((self.clock[0] + self.latency, ActionChunk(actions, stamp, recipe["dt"], self.seq)))

    def poll(self) -> ActionChunk | None:
        if self.queue and self.queue[0][0] <= self.clock[0]:
            return self.queue.pop(0)[1]
        return None


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes=st.lists(chunk_recipe, min_size=1, max_size=25))
def test_abusive_chunks_are_refused_and_the_commands_stay_within_every_limit(recipes) -> None:
    clock = [1000.0]
    spec = RobotSpec("abuse", LOOP_JOINTS, LOOP_HZ)
    robot = FirstOrderRobot(spec, initial=np.array([0.0, 0.0, 0.025]), tau=0.03, clock=lambda: clock[0])
    robot.connect()
    policy = _ScriptedPolicy(clock, recipes)

    def observe(state: RobotState, now: float) -> Observation:
        return Observation(stamp=now, images={}, state=state.position.astype(np.float32), instruction="")

    cfg = LoopConfig(control_hz=LOOP_HZ, watchdog_timeout=0.05)
    loop = ControlLoop(
        robot, policy, observe, cfg, SafetyConfig.from_dict(LOOP_SAFETY, LOOP_JOINTS), clock=lambda: clock[0]
    )
    loop.watchdog.arm(clock[0])
    meter = Meter(loop.safety, 1.0 / LOOP_HZ)
    had_command, held = False, True
    dt = 1.0 / LOOP_HZ
    for _ in range(250):
        loop.tick(clock[0])  # never raises, whatever arrives
        commanded = loop.log.commanded[-1]
        if np.all(np.isfinite(commanded)):
            if held:  # after a hold the chain starts from the measured state
                meter.anchor(loop.log.measured[-1])
            elif not had_command:  # after idle ticks, from the last command, moving as measured
                m = loop.log.measured  # (the dry-run robot reports no velocity: differences)
                v_m = (m[-1] - m[-2]) / dt
                a_m = (m[-1] - 2 * m[-2] + m[-3]) / dt**2
                cap = np.maximum(loop.safety.limits.max_acc, loop.safety.limits.max_dec)
                meter.anchor(meter.p, v_m, np.clip(a_m, -cap, cap))
            meter.measure(commanded, loop.log.target[-1])
            had_command, held = True, False
        else:
            had_command, held = False, held or loop.log.status[-1] in ("hold", "estop")
        clock[0] += 1.0 / LOOP_HZ
    assert not meter.violations, meter.violations[:5]
    rejected = sum(loop.scheduler.rejected.values()) - loop.scheduler.rejected.get("request_timeout", 0)
    assert rejected + len(loop.log.splices) == loop.counters["chunks_received"]

    def timing_ok(r: dict) -> bool:
        return math.isfinite(r["dt"]) and r["dt"] >= 0.1 / LOOP_HZ and r["rows"] * r["dt"] <= 10.0

    # a chunk can never pin the plan: the loop keeps asking while it is answered with abuse (a
    # valid chunk of a few seconds is followed for its length, longer than this run)
    if not any(r is not None and timing_ok(r) and r["rows"] * r["dt"] > 1.0 for r in recipes):
        assert loop.counters["requests"] >= min(len(recipes), 2)

    if all(r is None or not timing_ok(r) for r in recipes):
        assert loop.log.splices == [] and "ok" not in loop.log.status


def _loop_with(chunk: ActionChunk) -> tuple[ControlLoop, FirstOrderRobot, list[float]]:
    clock = [1000.0]
    spec = RobotSpec("abuse", LOOP_JOINTS, LOOP_HZ)
    robot = FirstOrderRobot(spec, initial=np.array([0.0, 0.0, 0.025]), clock=lambda: clock[0])
    robot.connect()

    class Once:
        sent = False
        requests = 0

        def request(self, observation: Observation) -> None:
            self.requests += 1

        def poll(self) -> ActionChunk | None:
            if self.sent:
                return None
            self.sent = True
            return ActionChunk(chunk.actions, clock[0] - 0.001, chunk.dt, 1)

    loop = ControlLoop(
        robot,
        Once(),
        lambda s, now: Observation(stamp=now, images={}, state=s.position.astype(np.float32), instruction=""),
        LoopConfig(control_hz=LOOP_HZ, watchdog_timeout=0.05),
        SafetyConfig.from_dict(LOOP_SAFETY, LOOP_JOINTS),
        clock=lambda: clock[0],
    )
    loop.watchdog.arm(clock[0])
    for _ in range(30):
        loop.tick(clock[0])
        clock[0] += 1.0 / LOOP_HZ
    return loop, robot, clock


@pytest.mark.parametrize(
    ("actions", "dt", "reason"),
    [
        (np.zeros((0, 3)), 0.02, "malformed"),  # raised IndexError out of ControlLoop.tick
        (np.zeros((5, 3)), 1e9, "bad_dt"),  # was followed forever, nothing requested again
        (np.zeros((5, 3)), 1e-7, "bad_dt"),
        (np.full((5, 3), np.nan), 0.02, "non_finite"),
    ],
)
def test_a_bad_chunk_is_refused_with_a_reason_and_the_robot_holds(actions, dt, reason) -> None:
    loop, robot, _ = _loop_with(ActionChunk(actions, 0.0, dt, 1))
    assert loop.scheduler.rejected[reason] == 1
    assert robot.commands == [] and robot.holds  # nothing commanded; held by the watchdog
    assert loop.counters["requests"] >= 1


def test_a_replay_reproduces_the_commands_after_a_gap_from_the_recorded_velocities() -> None:
    """After a gap the chain starts from the measured velocity, so the loop tells a recorder the
    velocities the robot reported, and a robot replaying them gets the same commands again."""
    from wall_runtime.e2e.replay import RecordedRobot

    class ReportingRobot(FirstOrderRobot):
        def read_state(self) -> RobotState:
            state = super().read_state()
            # a first-order lag's, and a sway its positions do not show (so the replay can only
            # reproduce the commands from the recorded velocities)
            velocity = (self._target - state.position) / self.tau + 0.4 * math.sin(7.0 * state.stamp)
            return RobotState(state.stamp, state.position, velocity=np.where(self._is_base, 0.0, velocity))

    class Records:
        def __init__(self) -> None:
            self.ticks: list = []
            self.chunks: dict[int, list[ActionChunk]] = {}

        def on_chunk(self, tick: int, chunk: ActionChunk) -> None:
            self.chunks.setdefault(tick, []).append(chunk)

        def on_request(self, tick: int, observation: Observation) -> None:
            pass

        def on_tick(self, record) -> None:
            self.ticks.append(record)

    class Scheduled:
        """A chunk of 0.2 s every 0.22 s: the plan runs out, a few idle ticks, then the next."""

        def __init__(self) -> None:
            self.ticks = 0

        def request(self, observation: Observation) -> None:
            pass

        def poll(self) -> ActionChunk | None:
            self.ticks += 1
            if self.ticks % 22 != 5:
                return None
            k = self.ticks // 22
            actions = (0.3 * (-1) ** k) * np.ones((10, 3)) + 0.05 * np.arange(10)[:, None]
            actions[:, 2] = 0.025
            return ActionChunk(actions, clock[0] - 0.001, 0.02, k + 1)

    def run(robot, source, recorder=None) -> ControlLoop:
        loop = ControlLoop(
            robot,
            source,
            lambda s, now: Observation(
                stamp=now, images={}, state=s.position.astype(np.float32), instruction=""
            ),
            LoopConfig(control_hz=LOOP_HZ, watchdog_timeout=0.5),
            SafetyConfig.from_dict(LOOP_SAFETY, LOOP_JOINTS),
            clock=lambda: clock[0],
            recorder=recorder,
        )
        loop.watchdog.arm(clock[0])
        return loop

    clock = [1000.0]
    spec = RobotSpec("gaps", LOOP_JOINTS, LOOP_HZ)
    robot = ReportingRobot(spec, initial=np.array([0.0, 0.0, 0.025]), tau=0.3, clock=lambda: clock[0])
    robot.connect()
    records = Records()
    loop = run(robot, Scheduled(), records)
    for _ in range(300):
        loop.tick(clock[0])
        clock[0] += 1.0 / LOOP_HZ
    assert loop.safety.gaps >= 3, "".join(x[0] for x in loop.log.status)
    assert np.any(np.abs(loop.safety.gap_motion[0]) > 0.05)  # it was measured moving then

    class TickSource:
        def request(self, observation: Observation) -> None:
            pass

        def poll(self) -> ActionChunk | None:
            pending = records.chunks.get(replay.counters["ticks"], [])
            return pending.pop(0) if pending else None

    measured = np.array([r.measured for r in records.ticks])
    velocity = np.array([r.measured_velocity for r in records.ticks])
    deadlines = np.array([r.deadline for r in records.ticks])
    clock = [1000.0]
    replay = run(RecordedRobot(spec, measured, deadlines, velocity=velocity), TickSource())
    for deadline in deadlines:
        replay.tick(float(deadline))
    np.testing.assert_array_equal(np.array(replay.log.commanded), np.array(loop.log.commanded))
