"""The safety chain: no command leaving it violates a configured limit, and every intervention counts."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wall_runtime.control.limits import parse_joint_limits
from wall_runtime.control.safety import SafetyChain, SafetyConfig, SafetyConfigError
from wall_runtime.robot import JointSpec
from wall_runtime.types import RobotState

DT = 0.01
TOL = 1e-7

JOINTS = (
    JointSpec(
        "shoulder",
        "revolute",
        "rad",
        parse_joint_limits(
            "shoulder",
            {
                "min_position": -1.0,
                "max_position": 1.0,
                "soft_lower_limit": -0.9,
                "soft_upper_limit": 0.95,
                "max_velocity": 2.0,
                "max_acceleration": 10.0,
                "max_jerk": 800.0,
            },
        ),
    ),
    JointSpec(
        "lift",
        "prismatic",
        "m",
        parse_joint_limits(
            "lift", {"min_position": 0.0, "max_position": 0.3, "max_velocity": 0.5, "max_acceleration": 5}
        ),
    ),
    JointSpec(
        "elbow", "revolute", "rad", parse_joint_limits("elbow", {"min_position": -2.0, "max_position": 2.0})
    ),
    JointSpec(
        "gripper", "gripper", "m", parse_joint_limits("gripper", {"min_position": 0.0, "max_position": 0.08})
    ),
    JointSpec("base_x", "base_linear", "m/s"),
    JointSpec("base_yaw", "base_angular", "rad/s"),
)
SAFETY = {
    "max_step": {"default": 0.015, "gripper": 0.004},
    "position_margin": 0.01,
    "gripper": {"min": 0.0, "max": 0.06},
    "base": {
        "max_linear_velocity": 0.5,
        "max_angular_velocity": 1.0,
        "max_linear_acceleration": 1.0,
        "max_angular_acceleration": 3.0,
    },
}

LO = np.array([-0.89, 0.01, -1.99, 0.0, -0.5, -1.0])  # soft / margin / gripper range, base speed
HI = np.array([0.94, 0.29, 1.99, 0.06, 0.5, 1.0])
STEP = np.array([0.015, 0.015, 0.015, 0.004])
VMAX = np.array([2.0, 0.5, math.inf, math.inf])
AMAX = np.array([10.0, 5.0, math.inf, math.inf])
JMAX = np.array([800.0, math.inf, math.inf, math.inf])
BASE_ACC = np.array([1.0, 3.0])

wild = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-3.0, 3.0),
    st.floats(-3.0, 3.0),
    st.sampled_from([1e300, -1e300, 0.0, 0.95, -0.9, 0.3]),
)
target_st = st.lists(wild, min_size=6, max_size=6).map(np.array)
state_st = st.lists(st.floats(-5.0, 5.0), min_size=6, max_size=6).map(np.array)


def _outside(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.maximum(lo - x, 0.0) + np.maximum(x - hi, 0.0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=state_st, targets=st.lists(target_st, min_size=1, max_size=40))
def test_no_command_violates_a_limit_and_every_intervention_counts(
    start: np.ndarray, targets: list[np.ndarray]
) -> None:
    chain = SafetyChain(JOINTS, SafetyConfig.from_dict(SAFETY, JOINTS), DT)
    prev = start.copy()
    v_prev = np.zeros(6)
    a_prev = np.zeros(6)
    state = RobotState(stamp=0.0, position=start)
    for target in targets:
        x = chain.filter(target, state)
        events = chain.last_tick_interventions
        touched = {e.joint for e in events}
        yielded = {(e.filter, e.joint) for e in events if e.filter.endswith("_yielded")}
        assert np.all(np.isfinite(x))
        pos, base = slice(0, 4), slice(4, 6)
        # position and gripper range: inside stays inside; outside never moves further out
        before, after = _outside(prev[pos], LO[pos], HI[pos]), _outside(x[pos], LO[pos], HI[pos])
        assert np.all(after <= before + TOL)
        assert np.all(after[before <= TOL] <= TOL)
        step = np.abs(x[pos] - prev[pos])
        assert np.all(step <= STEP + TOL)
        v = (x[pos] - prev[pos]) / DT
        assert np.all(np.abs(v) <= VMAX + TOL)
        a = (v - v_prev[pos]) / DT
        for j, name in enumerate(chain.names[:4]):
            if ("acceleration_yielded", name) not in yielded:
                assert abs(a[j]) <= AMAX[j] * (1 + 1e-6) + 1e-6, (name, a[j])
            if ("jerk_yielded", name) not in yielded:
                assert abs(a[j] - a_prev[j]) / DT <= JMAX[j] * (1 + 1e-6) + 1e-4, (name, a[j], a_prev[j])
        # bases: speed inside its limit (or braking from outside it), acceleration always
        du = np.abs(x[base] - prev[base])
        assert np.all(du <= BASE_ACC * DT + TOL)
        speed_before, speed_after = np.abs(prev[base]), np.abs(x[base])
        assert np.all((speed_after <= HI[base] + TOL) | (speed_after < speed_before))
        # interventions: a changed value is always recorded on its joint; an unchanged one is not
        finite = np.isfinite(target)
        for j, name in enumerate(chain.names):
            changed = not finite[j] or abs(x[j] - target[j]) > 1e-9 * (1 + abs(target[j]))
            if changed:
                assert name in touched, (name, target[j], x[j])
            if not finite[j]:
                assert any(e.filter == "finite" and e.joint == name for e in events)
        a_prev = np.concatenate([a, np.zeros(2)])
        v_prev = np.concatenate([v, np.zeros(2)])
        prev = x
    assert sum(chain.counts.values()) == len(chain.events)
    assert sum(chain.joint_counts.values()) == len(chain.events)


def test_nan_holds_the_arm_and_brakes_the_base() -> None:
    chain = SafetyChain(JOINTS, SafetyConfig.from_dict(SAFETY, JOINTS), DT)
    start = np.array([0.1, 0.1, 0.0, 0.03, 0.0, 0.0])
    chain.filter(start, RobotState(0.0, start))
    moving = start.copy()
    for _ in range(30):
        moving = chain.filter(start + np.array([0, 0, 0, 0, 0.4, 0.5]))
    assert moving[4] > 0.25
    cmd = chain.filter(np.full(6, np.nan))
    assert chain.counts["finite"] == 6
    np.testing.assert_allclose(cmd[:4], start[:4], atol=1e-9)
    assert 0 < cmd[4] < moving[4]  # the base decelerates at its acceleration limit, not a dead stop
    assert moving[4] - cmd[4] == pytest.approx(1.0 * DT)


def test_workspace_box_is_kept_through_forward_kinematics() -> None:
    links = (0.5, 0.4)

    def fk(q: np.ndarray) -> np.ndarray:
        x1, y1 = links[0] * np.cos(q[0]), links[0] * np.sin(q[0])
        x2 = x1 + links[1] * np.cos(q[0] + q[1])
        y2 = y1 + links[1] * np.sin(q[0] + q[1])
        return np.array([[x2, y2, 0.2]])

    joints = (
        JointSpec("a", "revolute", "rad", parse_joint_limits("a", {"min_position": -3, "max_position": 3})),
        JointSpec("b", "revolute", "rad", parse_joint_limits("b", {"min_position": -3, "max_position": 3})),
    )
    cfg = SafetyConfig.from_dict(
        {"max_step": 0.05, "workspace": {"min": [0.2, -0.3, 0.0], "max": [1.0, 0.3, 0.5]}}
    )
    chain = SafetyChain(joints, cfg, DT, forward_kinematics=fk)
    q = np.zeros(2)
    chain.filter(q, RobotState(0.0, q))
    rng = np.random.default_rng(0)
    for _ in range(400):
        q = chain.filter(q + rng.normal(0, 0.2, 2))
        ee = fk(q)[0]
        assert 0.2 - 1e-6 <= ee[0] <= 1.0 + 1e-6 and -0.3 - 1e-6 <= ee[1] <= 0.3 + 1e-6
    assert chain.counts["workspace"] > 0


def test_disabling_a_filter_is_explicit_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    cfg = SafetyConfig.from_dict({**SAFETY, "disabled_filters": ["jerk"]}, JOINTS)
    with caplog.at_level(logging.WARNING):
        chain = SafetyChain(JOINTS, cfg, DT)
    assert "SAFETY FILTER DISABLED" in caplog.text and "jerk" in caplog.text
    assert "jerk" in chain.disabled
    with pytest.raises(SafetyConfigError, match="finite"):
        SafetyConfig.from_dict({"disabled_filters": ["finite"]})


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"max_stepp": 0.1}, "safety.max_stepp"),
        ({"max_step": {"elbw": 0.1}}, "safety.max_step.elbw"),
        ({"max_step": -0.1}, "safety.max_step"),
        ({"workspace": {"min": [0, 0], "max": [1, 1, 1]}}, "safety.workspace.min"),
        ({"workspace": {"min": [0, 0, 2], "max": [1, 1, 1]}}, "safety.workspace"),
        ({"gripper": {"min": 1.0, "max": 0.0}}, "safety.gripper"),
        ({"base": {"max_linear_speed": 1.0}}, "safety.base.max_linear_speed"),
        ({"base": {"max_linear_velocity": "fast"}}, "safety.base.max_linear_velocity"),
        ({"disabled_filters": ["jerks"]}, "safety.disabled_filters"),
        ({"watchdog_timeout": 0}, "safety.watchdog_timeout"),
        ({"position_margin": {"grip": 0.01}}, "safety.position_margin.grip"),
        ({"position_margin": -0.01}, "safety.position_margin"),
    ],
)
def test_bad_safety_block_names_the_field(block: dict, field: str) -> None:
    with pytest.raises(SafetyConfigError, match=field.replace(".", r"\.")):
        SafetyConfig.from_dict(block, JOINTS)


def test_non_finite_measured_pose_is_refused() -> None:
    chain = SafetyChain(JOINTS, SafetyConfig.from_dict(SAFETY, JOINTS), DT)
    with pytest.raises(ValueError, match="shoulder"):
        chain.filter(np.zeros(6), RobotState(0.0, np.array([np.nan, 0, 0, 0, 0, 0])))


@pytest.mark.parametrize("dt", [0.01, 0.002])
def test_a_limited_command_settles_onto_a_moving_target_without_ringing(dt: float) -> None:
    """Greedy clipping under acceleration and jerk limits overshoots and rings (at 500 Hz it even
    grows); the chain must settle onto the target and then pass it through untouched."""
    lim = parse_joint_limits(
        "j",
        {
            "min_position": -3,
            "max_position": 3,
            "max_velocity": 2.0,
            "max_acceleration": 15.0,
            "max_jerk": 2000,
        },
    )
    chain = SafetyChain(
        (JointSpec("j", "revolute", "rad", lim),), SafetyConfig.from_dict({"max_step": 0.03}), dt
    )
    t = np.arange(int(1.5 / dt)) * dt
    target = 0.6 * np.sin(2 * np.pi * 0.3 * t + 1.0)  # moving at 1.1 rad/s while the command starts at rest
    chain.filter(target[:1], RobotState(0.0, target[:1]))
    errors, touched = [], []
    for x in target[1:]:
        out = chain.filter(np.array([x]))
        errors.append(x - out[0])
        touched.append(bool(chain.last_tick_interventions))
    errors = np.array(errors)
    settled = int(0.3 / dt)
    assert not any(touched[settled:]) and np.abs(errors[settled:]).max() < 1e-9
    # the command lags the target on the way in; it may pass it by a hair, never swing past it
    assert errors.max() > 0.005 and errors.min() > -0.002


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"position_margin": 0.6}, r"safety\.position_margin\.lift: 0\.6 leaves no room"),
        ({"position_margin": {"elbow": 2.0}}, r"safety\.position_margin\.elbow: 2\.0 leaves no room"),
        ({"gripper": {"min": 0.1, "max": 0.2}}, r"safety\.gripper: \[0\.1, 0\.2\] does not overlap"),
        ({"max_step": True}, r"safety\.max_step: expected a number, got True"),
        ({"max_step": "0.1"}, r"safety\.max_step: expected a number, got '0\.1'"),
        (
            {"base": {"max_linear_velocity": math.inf}},
            r"safety\.base\.max_linear_velocity: expected a finite",
        ),
        ({"workspace": {"min": [0, 0, 0], "max": [1, 1, math.inf]}}, r"safety\.workspace\.max\[2\]"),
    ],
)
def test_a_block_the_chain_cannot_satisfy_is_refused_naming_the_field(block: dict, message: str) -> None:
    with pytest.raises(SafetyConfigError, match=message) as info:
        SafetyConfig.from_dict(block, JOINTS)
    assert "\n" not in str(info.value)


def test_a_safe_pose_outside_the_margins_is_refused() -> None:
    from wall_runtime.control.safety_config import check_safe_pose

    cfg = SafetyConfig.from_dict(SAFETY, JOINTS)
    check_safe_pose(cfg, JOINTS, [0.0, 0.1, 0.0, 0.03, 0.0, 0.0])
    with pytest.raises(SafetyConfigError, match=r"safety\.safe_pose\.lift: 0\.3 is outside \[0\.01, 0\.29\]"):
        check_safe_pose(cfg, JOINTS, [0.0, 0.3, 0.0, 0.03, 0.0, 0.0])
    with pytest.raises(SafetyConfigError, match=r"safety\.safe_pose\.gripper: .*within safety\.gripper"):
        check_safe_pose(cfg, JOINTS, [0.0, 0.1, 0.0, 0.07, 0.0, 0.0])
