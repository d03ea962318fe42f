"""Kinematics per arm (wall_runtime.kinematics): FK against MuJoCo's own site poses on the full
scene models, IK over random reachable poses, and the robot.yaml block's validation."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")
pytest.importorskip("mink")

from wall_runtime.adapters.config import RobotConfigError, load_robot  # noqa: E402
from wall_runtime.kinematics import (  # noqa: E402
    KinematicsConfigError,
    Pose,
    build_arm_kinematics,
    load_robot_kinematics,
    rotation_angle,
)

ROBOTS = Path(__file__).resolve().parents[1] / "robots"


def _full_model_tool_in_base(model_path: Path, arm, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MuJoCo's own tool-site pose, from the unreduced scene model, in the arm's base body frame."""
    full = mujoco.MjModel.from_xml_path(str(model_path))
    data = mujoco.MjData(full)
    for name, value in zip(arm.config.model_joints, q, strict=True):
        data.joint(name).qpos[:] = value
    mujoco.mj_kinematics(full, data)
    base = data.body(arm.config.base.name)
    bR = base.xmat.reshape(3, 3)
    tool = (
        data.site(arm.config.tool.name) if arm.config.tool.kind == "site" else data.body(arm.config.tool.name)
    )
    return bR.T @ (tool.xpos - base.xpos), bR.T @ tool.xmat.reshape(3, 3)


@pytest.mark.parametrize("robot", ["sim_arm", "sim_bimanual"])
def test_fk_equals_mujoco_site_pose_on_the_full_scene(robot: str) -> None:
    arms = load_robot_kinematics(ROBOTS / robot)
    rng = np.random.default_rng(1)
    for arm in arms.values():
        for _ in range(20):
            q = rng.uniform(arm.lower, arm.upper)
            pose = arm.fk(q)
            p, R = _full_model_tool_in_base(arm.model_path, arm, q)
            assert np.max(np.abs(pose.position - p)) <= 1e-9
            assert rotation_angle(pose.rotation, R) <= 1e-9


def test_ik_recovers_random_reachable_poses_on_the_sim_arm() -> None:
    (arm,) = load_robot_kinematics(ROBOTS / "sim_arm").values()
    rng = np.random.default_rng(2)
    worst_pos = worst_ori = 0.0
    for _ in range(200):
        q = rng.uniform(arm.lower, arm.upper)
        seed = np.clip(q + rng.normal(0.0, 0.2, q.shape), arm.lower, arm.upper)
        res = arm.ik(arm.fk(q), seed)
        assert res.ok, res
        check = arm.fk(res.q)
        worst_pos = max(worst_pos, float(np.linalg.norm(check.position - arm.fk(q).position)))
        worst_ori = max(worst_ori, rotation_angle(check.rotation, arm.fk(q).rotation))
        assert np.all(res.q >= arm.lower - 1e-9) and np.all(res.q <= arm.upper + 1e-9)
    assert worst_pos <= 1e-3 and np.degrees(worst_ori) <= 0.5


def test_unreachable_and_non_finite_targets_are_reported_not_raised() -> None:
    (arm,) = load_robot_kinematics(ROBOTS / "sim_arm").values()
    seed = np.zeros(arm.dof)
    far = arm.ik(Pose(np.array([3.0, 0.0, 0.0]), np.eye(3)), seed)
    assert not far.ok and far.position_error > 1.0
    assert np.all(far.q >= arm.lower - 1e-9) and np.all(far.q <= arm.upper + 1e-9)
    nan = arm.ik(Pose(np.array([np.nan, 0.0, 0.0]), np.eye(3)), seed)
    assert not nan.ok and np.array_equal(nan.q, seed)


def test_ik_chain_seeds_each_waypoint_from_the_previous_solution() -> None:
    (arm,) = load_robot_kinematics(ROBOTS / "sim_arm").values()
    q0 = np.array([0.0, 0.2, 1.0, 0.0, 0.5, 0.0])
    start = arm.fk(q0)
    targets = [Pose(start.position + np.array([0.0, 0.003 * i, 0.0]), start.rotation) for i in range(32)]
    results = arm.ik_chain(targets, q0)
    assert all(r.ok for r in results)
    steps = [np.max(np.abs(b.q - a.q)) for a, b in itertools.pairwise(results)]
    assert max(steps) < 0.05  # continuous: no branch flips between neighbouring waypoints


def test_robot_config_keeps_the_block_and_refuses_bad_fields(tmp_path: Path) -> None:
    cfg = load_robot(ROBOTS / "sim_arm")
    assert cfg.kinematics["arm"]["tool"] == {"site": "ee"}
    text = (ROBOTS / "sim_arm" / "robot.yaml").read_text()
    bad = tmp_path / "robot.yaml"
    bad.write_text(text.replace("tool: {site: ee}", "tool: {frame: ee}"))
    with pytest.raises(RobotConfigError, match=r"kinematics\.arm\.tool: unknown frame kind"):
        load_robot(bad)
    bad.write_text(
        text.replace(
            "joints: [waist, shoulder, elbow, forearm_roll, wrist_pitch, wrist_roll]\n",
            "joints: [waist, shouldr, elbow]\n",
        )
    )
    with pytest.raises(RobotConfigError, match=r"kinematics\.arm\.joints\[1\]: 'shouldr' names no joint"):
        load_robot(bad)


def test_model_errors_name_the_field() -> None:
    block = {
        "model": "sim_arm.xml",
        "base": {"body": "base"},
        "tool": {"site": "fingertip"},
        "joints": ["waist", "shoulder", "elbow", "forearm_roll", "wrist_pitch", "wrist_roll"],
    }
    with pytest.raises(
        KinematicsConfigError, match=r"kinematics\.arm\.tool\.site: 'fingertip' is not a site"
    ):
        build_arm_kinematics(block, ROBOTS / "sim_arm")
    with pytest.raises(KinematicsConfigError, match=r"kinematics\.arm\.model: .*does not exist"):
        build_arm_kinematics({**block, "model": "nope.xml"}, ROBOTS / "sim_arm")
    with pytest.raises(KinematicsConfigError, match=r"package 'no_such_pkg_xyz' is not installed"):
        build_arm_kinematics({**block, "model": "package:no_such_pkg_xyz/a.xml"}, ROBOTS / "sim_arm")
    with pytest.raises(KinematicsConfigError, match=r"kinematics\.arm\.joints: 'wrist' .*not a joint"):
        build_arm_kinematics({**block, "joints": ["waist", "wrist"]}, ROBOTS / "sim_arm")
    with pytest.raises(KinematicsConfigError, match=r"exactly those between base"):
        build_arm_kinematics(
            {**block, "base": {"body": "link3"}, "tool": {"site": "ee"}, "joints": ["elbow", "forearm_roll"]},
            ROBOTS / "sim_arm",
        )
