"""Property test over end-effector chunks through the model edge (hypothesis): NaN, unreachable
poses, huge jumps and unnormalised or degenerate 6D never make a command leave any joint limit;
every waypoint the edge drops is counted; a chunk with nothing valid left is no chunk, and the
control loop then holds the robot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wall_runtime.action_space import rotations as rot
from wall_runtime.action_space.edge import build_edge
from wall_runtime.action_space.source import EdgeSource
from wall_runtime.adapters.config import load_robot
from wall_runtime.control.dryrun import FirstOrderRobot
from wall_runtime.control.safety import SafetyChain
from wall_runtime.e2e.assemble import LoopOptions, assemble_loop
from wall_runtime.e2e.robot_side import safety_config
from wall_runtime.kinematics import load_robot_kinematics
from wall_runtime.types import ActionChunk, Observation, RobotState

ROBOTS = Path(__file__).resolve().parents[1] / "robots"
H = 8
DROPS = ("ee_invalid", "ee_workspace", "ik_failed", "ik_residual", "non_finite")
V05 = (
    {
        "follow_left_ee_cartesian_pos_relative": 3,
        "follow_left_ee_rotation_6D_relative": 6,
        "follow_left_gripper": 1,
        "follow_right_ee_cartesian_pos_relative": 3,
        "follow_right_ee_rotation_6D_relative": 6,
        "follow_right_gripper": 1,
    },
    {
        "follow_left_ee_cartesian_pos": 3,
        "follow_left_ee_rotation_6D": 6,
        "follow_left_gripper": 1,
        "follow_right_ee_cartesian_pos": 3,
        "follow_right_ee_rotation_6D": 6,
        "follow_right_gripper": 1,
    },
)
HOME = np.array([0.0, 0.0, 0.8, 0.0, 0.6, 0.0, 0.02] * 2)


@pytest.fixture(scope="module")
def setup():
    cfg = load_robot(ROBOTS / "sim_bimanual")
    kin = load_robot_kinematics(cfg)
    edge = build_edge(cfg.joints, cfg.mapping, *V05, kin, cfg.ee_limits, horizon=H)
    return cfg, edge


# one row of one arm: what kind of trouble, and how much
ROW = st.tuples(
    st.sampled_from(["good", "nan", "inf", "huge", "jump", "unnormalised_6d", "degenerate_6d", "gripper"]),
    st.floats(-1.0, 1.0),
    st.floats(1e-6, 1e3),
)


def _row(kind: str, x: float, scale: float, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(10)
    out[:3] = 0.01 * x * np.ones(3)
    out[3:9] = rot.matrix_to_6d(rot.euler_to_matrix(0.05 * x * np.ones(3)))
    out[9] = 0.5
    if kind == "nan":
        out[rng.integers(0, 10)] = np.nan
    elif kind == "inf":
        out[rng.integers(0, 10)] = np.inf * np.sign(x or 1.0)
    elif kind == "huge":
        out[:3] = 1e6 * x
    elif kind == "jump":
        out[:3] = 0.5 * np.sign(x or 1.0) * np.array([1.0, -1.0, 0.5])
    elif kind == "unnormalised_6d":
        out[3:9] *= scale
    elif kind == "degenerate_6d":
        out[3:9] = np.array([1.0, 0.0, 0.0, 2.0, 0.0, 0.0]) * x  # zero or parallel rows
    elif kind == "gripper":
        out[9] = 1e3 * x
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(ROW, ROW), min_size=H, max_size=H), seed=st.integers(0, 2**16))
def test_no_command_leaves_a_joint_limit_and_every_drop_is_counted(setup, rows, seed) -> None:
    cfg, edge = setup
    rng = np.random.default_rng(seed)
    actions = np.array([np.concatenate([_row(*left, rng), _row(*right, rng)]) for left, right in rows])
    ctx = edge.context(HOME)
    before = sum(edge.counts[k] for k in DROPS)
    joints = edge.to_joints(actions, ctx, dt=1 / 30)
    kept = 0 if joints is None else len(joints)
    dropped = sum(edge.counts[k] for k in DROPS) - before
    assert (dropped > 0) == (kept < H), (kept, dict(edge.counts))
    assert dropped >= H - kept
    if joints is None:
        return
    assert np.all(np.isfinite(joints))
    # IK keeps the arm joints inside their limits; the joint chain after it keeps every command in
    chain = SafetyChain(cfg.joints, safety_config(cfg, cfg.spec()), 1 / 30)
    lower, upper = cfg.spec().lower, cfg.spec().upper
    for arm in edge.arms.values():
        i = arm.index
        assert np.all(joints[:, i] >= lower[i] - 1e-9) and np.all(joints[:, i] <= upper[i] + 1e-9)
    state = RobotState(stamp=0.0, position=HOME.copy())
    for row in joints:
        cmd = chain.filter(row, state)
        assert np.all(cmd >= lower - 1e-12) and np.all(cmd <= upper + 1e-12)


class _Once:
    """A chunk source answering every request with one chunk built from the observation."""

    def __init__(self, make) -> None:
        self.make = make
        self.pending: list[ActionChunk] = []
        self.seq = 0

    def request(self, obs: Observation) -> None:
        self.seq += 1
        self.pending.append(ActionChunk(actions=self.make(obs), stamp=obs.stamp, dt=1 / 30, seq=self.seq))

    def poll(self) -> ActionChunk | None:
        return self.pending.pop(0) if self.pending else None


def test_the_robot_holds_when_no_valid_waypoint_remains(setup) -> None:
    cfg, edge = setup
    robot = FirstOrderRobot(cfg.spec(), initial=HOME)
    robot.connect()
    source = EdgeSource(edge, _Once(lambda obs: np.full((H, 20), np.nan)), threaded=False)

    def observe(state: RobotState, now: float) -> Observation:
        return source.observe(Observation(stamp=now, images={}, state=np.zeros(0), instruction="x"), state)

    loop = assemble_loop(robot, source, observe, safety_config(cfg, robot.spec), LoopOptions(safe_pose=False))
    summary = loop.run(duration=1.0)
    assert robot.commands == []  # nothing reached the actuator
    assert robot.holds and summary["watchdog_trips"] >= 1
    assert source.interventions["ee_invalid"] >= 2 * H and source.interventions["chunks_dropped"] >= 1
