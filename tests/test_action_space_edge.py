"""The model edge: layouts by key name, state vectors of both generations, chunks to joints through
EE safety and IK, the RTC hint back, and the fit check — on the sim arm's and bimanual's real
kinematics (MuJoCo via mink), against scipy's Rotation for the conventions."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from layouts import FLOW_LAYOUT
from scipy.spatial.transform import Rotation

from wall_runtime.action_space import rotations as rot
from wall_runtime.action_space.edge import FitError, build_edge
from wall_runtime.action_space.ee_safety import EELimits
from wall_runtime.action_space.layout import LayoutError, parse_layout
from wall_runtime.action_space.mapping import parse_slot_mapping
from wall_runtime.adapters.config import load_robot
from wall_runtime.kinematics import load_robot_kinematics

ROBOTS = Path(__file__).resolve().parents[1] / "robots"
FLOW = {**FLOW_LAYOUT, "action_padding": 2}
V05_ACTIONS = {
    "follow_left_ee_cartesian_pos_relative": 3,
    "follow_left_ee_rotation_6D_relative": 6,
    "follow_left_gripper": 1,
    "follow_right_ee_cartesian_pos_relative": 3,
    "follow_right_ee_rotation_6D_relative": 6,
    "follow_right_gripper": 1,
    "car_pose": 3,
}
V05_STATE = {
    "follow_left_ee_cartesian_pos": 3,
    "follow_left_ee_rotation_6D": 6,
    "follow_left_gripper": 1,
    "follow_right_ee_cartesian_pos": 3,
    "follow_right_ee_rotation_6D": 6,
    "follow_right_gripper": 1,
    "car_pose": 3,
}
V05_LEFT = {k: v for k, v in V05_ACTIONS.items() if k.startswith("follow_left")}
V05_LEFT_STATE = {k: v for k, v in V05_STATE.items() if k.startswith("follow_left")}
HOME = np.array([0.0, 0.0, 0.8, 0.0, 0.6, 0.0, 0.02])


@pytest.fixture(scope="module")
def sim_arm():
    cfg = load_robot(ROBOTS / "sim_arm")
    return cfg, load_robot_kinematics(cfg)


@pytest.fixture(scope="module")
def bimanual():
    cfg = load_robot(ROBOTS / "sim_bimanual")
    return cfg, load_robot_kinematics(cfg)


def _edge(robot, dof, pos, limits=None):
    cfg, kin = robot
    return build_edge(cfg.joints, cfg.mapping, dof, pos, kin, limits or EELimits(), horizon=8)


def test_layout_reads_keys_by_name_and_refuses_an_unknown_one():
    lay = parse_layout(FLOW, "dof_config")
    assert [(s.kind, s.arm, s.start, s.width) for s in lay.slots[:3]] == [
        ("ee_position", "left", 0, 3),
        ("ee_euler", "left", 3, 3),
        ("gripper", "left", 6, 1),
    ]
    assert lay.dim == 22 and lay.find("base_velocity").start == 17
    assert parse_layout(V05_ACTIONS, "dof_config").arm_convention("right") == (
        "ee_position_relative",
        "ee_rotation_6d_relative",
    )
    with pytest.raises(
        LayoutError, match=r"dof_config.follow_left_ee_quat: unknown key \(known: .*head_actions"
    ):
        parse_layout({"follow_left_ee_quat": 4}, "dof_config")
    with pytest.raises(
        LayoutError, match="follow_left_ee_rotation_6D: a ee_rotation_6d slot is 6 wide, got 3"
    ):
        parse_layout({"follow_left_ee_rotation_6D": 3}, "agent_pos_config")
    # a robot declares its joint-space checkpoint's own keys
    assert parse_layout({"koch_joints": 5}, "dof_config", ["koch_joints"]).slots[0].kind == "joints"


def test_flow_state_is_fk_position_euler_gripper(sim_arm):
    edge = _edge(sim_arm, FLOW, FLOW)
    ctx = edge.context(HOME)
    state = edge.state_vector(ctx)
    pose = sim_arm[1]["arm"].fk(HOME[:6])
    np.testing.assert_allclose(state[:3], pose.position, atol=1e-6)
    ref = Rotation.from_matrix(pose.rotation).as_euler("xyz")
    np.testing.assert_allclose(rot.wrap_angle(state[3:6] - ref), 0, atol=1e-6)
    assert state[6] == pytest.approx(0.5)  # 0.02 m of 0 ... 0.04 m onto 0 ... 1
    # the sim arm is the checkpoint's left arm: right arm, head, lift, base, padding masked
    assert edge.state_mask.tolist() == [1.0] * 7 + [0.0] * 15
    assert edge.dof_mask.tolist() == [1.0] * 7 + [0.0] * 15
    assert not state[7:].any()


def test_05_state_is_fk_position_6d_rows_gripper(bimanual):
    edge = _edge(bimanual, V05_ACTIONS, V05_STATE)
    q = np.zeros(14)
    q[[2, 4, 9, 11]] = [0.8, 0.6, 0.5, 0.3]
    q[[6, 13]] = [0.04, 0.0]
    ctx = edge.context(q)
    state = edge.state_vector(ctx)
    for arm, off, grip in (("left", 0, 1.0), ("right", 10, 0.0)):
        pose = bimanual[1][arm].fk(q[edge.arms[arm].index])
        np.testing.assert_allclose(state[off : off + 3], pose.position, atol=1e-6)
        np.testing.assert_allclose(state[off + 3 : off + 9], pose.rotation[:2].reshape(6), atol=1e-6)
        assert state[off + 9] == pytest.approx(grip)
    assert edge.state_mask[-3:].tolist() == [0, 0, 0]  # car_pose: unsupported, masked


def test_flow_chunk_is_tracked_by_ik(sim_arm):
    edge = _edge(sim_arm, FLOW, FLOW)
    ctx = edge.context(HOME)
    p0, r0 = ctx.poses["left"]
    t = np.linspace(0, 1, 8)
    target_p = p0 + 0.03 * np.stack([np.sin(t), np.cos(t) - 1, 0.5 * t], axis=1)
    target_r = Rotation.from_euler("xyz", np.outer(t, [0.1, -0.1, 0.2])) * Rotation.from_matrix(r0)
    actions = np.zeros((8, 22))
    actions[:, :3] = target_p
    actions[:, 3:6] = target_r.as_euler("xyz")
    actions[:, 6] = 0.25
    joints = edge.to_joints(actions, ctx, dt=0.1)
    assert joints.shape == (8, 7) and not edge.counts
    kin = sim_arm[1]["arm"]
    for i in range(8):
        pose = kin.fk(joints[i, :6])
        assert np.linalg.norm(pose.position - target_p[i]) < 1e-3
        assert rot.rotation_angle(pose.rotation, target_r[i].as_matrix()) < math.radians(0.5)
    np.testing.assert_allclose(joints[:, 6], 0.01)  # 0.25 of the gripper's 0 ... 0.04 m


def test_05_chunk_composes_on_the_left_onto_the_observation_pose(bimanual):
    edge = _edge(bimanual, V05_ACTIONS, V05_STATE)
    q = np.zeros(14)
    q[[2, 4, 9, 11]] = [0.8, 0.6, 0.8, 0.6]
    ctx = edge.context(q)
    rel = Rotation.from_euler("z", np.linspace(0, 0.3, 8)[:, None])  # about the base frame's z
    dp = np.outer(np.linspace(0, 1, 8), [0.02, 0.01, -0.01])
    actions = np.zeros((8, 23))
    for off in (0, 10):
        actions[:, off : off + 3] = dp
        actions[:, off + 3 : off + 9] = rel.as_matrix()[:, :2].reshape(8, 6)
        actions[:, off + 9] = 0.5
    actions[:, 20:] = 99.0  # car_pose: masked, never executed
    joints = edge.to_joints(actions, ctx, dt=0.1)
    assert joints.shape == (8, 14), dict(edge.counts)
    for arm in ("left", "right"):
        a = edge.arms[arm]
        p0, r0 = ctx.poses[arm]
        for i in range(8):
            pose = bimanual[1][arm].fk(joints[i, a.index])
            np.testing.assert_allclose(pose.position, p0 + dp[i], atol=1e-3)
            want = (rel[i] * Rotation.from_matrix(r0)).as_matrix()  # GS(rel) · R_state
            assert rot.rotation_angle(pose.rotation, want) < math.radians(0.5)
    # the RTC hint back: joints -> FK -> relative to the observation -> the same layout
    back = edge.to_actions(joints, ctx)
    np.testing.assert_allclose(back[:, :3], dp, atol=1e-3)
    np.testing.assert_allclose(back[:, 3:9], actions[:, 3:9], atol=1e-2)
    np.testing.assert_allclose(back[:, 9], 0.5, atol=1e-9)
    assert not back[:, 20:].any()


def test_unreachable_and_invalid_waypoints_drop_the_rest_of_the_chunk(sim_arm):
    limits = EELimits(workspace={None: (np.array([-1.0, -1.0, -1.0]), np.array([1.0, 1.0, 1.0]))})
    edge = _edge(sim_arm, FLOW, FLOW, limits)
    ctx = edge.context(HOME)
    p0, r0 = ctx.poses["left"]
    actions = np.zeros((8, 22))
    actions[:, :3] = p0
    actions[:, 3:6] = rot.matrix_to_euler(r0)
    actions[5, 0] = 0.9  # inside the box, out of reach
    joints = edge.to_joints(actions, ctx, dt=0.1)
    assert joints.shape[0] == 5 and edge.counts["ik_residual"] == 3
    actions[2, 1] = np.nan
    assert edge.to_joints(actions, ctx, dt=0.1).shape[0] == 2 and edge.counts["ee_invalid"] == 6
    actions[0, 2] = 5.0  # outside the workspace from the first row: nothing valid
    assert edge.to_joints(actions, ctx, dt=0.1) is None and edge.counts["ee_workspace"] == 8


def test_ee_speed_is_capped_per_step(sim_arm):
    edge = _edge(sim_arm, FLOW, FLOW, EELimits(max_linear_speed=0.1, max_angular_speed=0.5))
    ctx = edge.context(HOME)
    p0, r0 = ctx.poses["left"]
    actions = np.zeros((4, 22))
    actions[:, :3] = p0 + np.array([0.05, 0.0, 0.0])  # 5 cm at once; 1 cm per 0.1 s allowed
    actions[:, 3:6] = (Rotation.from_euler("z", 0.3) * Rotation.from_matrix(r0)).as_euler("xyz")
    joints = edge.to_joints(actions, ctx, dt=0.1)
    kin = sim_arm[1]["arm"]
    xs = [kin.fk(joints[i, :6]).position[0] - p0[0] for i in range(4)]
    np.testing.assert_allclose(xs, [0.01, 0.02, 0.03, 0.04], atol=1e-3)
    angles = [rot.rotation_angle(r0, kin.fk(joints[i, :6]).rotation) for i in range(4)]
    np.testing.assert_allclose(angles, [0.05, 0.1, 0.15, 0.2], atol=0.01)
    assert edge.counts["ee_linear_speed"] == 4 and edge.counts["ee_angular_speed"] == 4


def test_a_mapping_that_does_not_fit_is_refused_naming_the_slot(sim_arm):
    cfg, kin = sim_arm
    no_gripper = {k: v for k, v in FLOW.items() if k != "follow_left_gripper"}
    with pytest.raises(
        FitError, match=re.escape("model.arms.left.gripper: the checkpoint has no follow_left_gripper")
    ):
        build_edge(cfg.joints, cfg.mapping, no_gripper, no_gripper, kin)
    right_only = {k.replace("left", "right"): v for k, v in no_gripper.items() if "left" in k}
    with pytest.raises(FitError, match=re.escape("model.arms.left: the checkpoint has no follow_left_")):
        build_edge(cfg.joints, cfg.mapping, right_only, right_only, kin)
    with pytest.raises(
        FitError, match=re.escape("model.arms: arm(s) ['arm'] have no entry in the robot's kinematics")
    ):
        build_edge(cfg.joints, cfg.mapping, FLOW, FLOW, {})
    with pytest.raises(FitError, match=re.escape("dof_config.follow_left_ee_quat: unknown key")):
        build_edge(cfg.joints, cfg.mapping, {"follow_left_ee_quat": 4}, FLOW, kin)
    pinned = parse_slot_mapping(
        {"norm_key": "x", "action_dim": 20, "arms": {"left": {"arm": "arm"}}}, cfg.joints
    )
    with pytest.raises(
        FitError,
        match=re.escape(
            "model.action_dim: the robot is configured for 20 but the checkpoint's dof_config has 22"
        ),
    ):
        build_edge(cfg.joints, pinned, FLOW, FLOW, kin)


def test_joint_slots_relative_joints_are_deltas_from_the_chunk_start(sim_arm):
    cfg, kin = sim_arm
    names = cfg.joint_names
    m = parse_slot_mapping(
        {"norm_key": "x", "joint_slots": {"sim_arm_joints": names}}, cfg.joints, relative_joints=True
    )
    layout = {"sim_arm_joints": 7, "action_padding": 3}
    edge = build_edge(cfg.joints, m, layout, layout, kin)
    ctx = edge.context(HOME)
    np.testing.assert_allclose(edge.state_vector(ctx)[:7], HOME, atol=1e-6)
    actions = np.zeros((3, 10))
    actions[:, :7] = 0.01
    joints = edge.to_joints(actions, ctx, dt=0.1)
    np.testing.assert_allclose(
        joints[:, :6], np.tile(HOME[:6] + 0.01, (3, 1))
    )  # deltas onto the chunk-start joints
    np.testing.assert_allclose(joints[:, 6], 0.01)  # the gripper stays absolute
    np.testing.assert_allclose(edge.to_actions(joints, ctx)[:, :7], actions[:, :7], atol=1e-12)


def test_the_rtc_hint_goes_back_in_the_checkpoints_layout(sim_arm):
    """The scheduler's hint is in joints (and as long as the last, possibly shortened, chunk): the
    edge sends it in the checkpoint's layout, relative to the new observation, padded unweighted."""
    from wall_runtime.action_space.source import EdgeSource
    from wall_runtime.types import ActionChunk, InpaintHint, Observation, RobotState

    edge = _edge(sim_arm, V05_LEFT, V05_LEFT_STATE)
    sent: list[Observation] = []

    class Inner:
        def request(self, obs):
            sent.append(obs)

        def poll(self):
            return None

    source = EdgeSource(edge, Inner(), threaded=False)
    obs = source.observe(
        Observation(stamp=1.0, images={}, state=np.zeros(0), instruction="x"), RobotState(1.0, HOME.copy())
    )
    actions = np.zeros((8, 10))
    actions[:, :3] = np.linspace(0, 0.02, 8)[:, None]
    actions[:, 3:9] = rot.matrix_to_6d(np.eye(3))
    actions[:, 9] = 0.5
    joints = source.convert(ActionChunk(actions=actions, stamp=1.0, dt=0.1, seq=1))
    assert joints.actions.shape == (8, 7) and "model_edge" in joints.timing_ms
    obs.inpaint = InpaintHint(actions=joints.actions[:5], weights=np.ones(5, np.float32))
    source.request(obs)
    hint = sent[0].inpaint
    assert hint.actions.shape == (8, 10) and hint.actions.dtype == np.float32
    np.testing.assert_allclose(hint.actions[:5, :3], actions[:5, :3], atol=1e-3)
    np.testing.assert_allclose(hint.actions[:5, 3:9], actions[:5, 3:9], atol=1e-2)
    assert hint.weights.tolist() == [1.0] * 5 + [0.0] * 3
    # a chunk answering an observation the edge never sent is dropped, counted
    assert source.convert(ActionChunk(actions=actions, stamp=7.0, dt=0.1, seq=2)) is None
    assert source.interventions["no_observation"] == 1
