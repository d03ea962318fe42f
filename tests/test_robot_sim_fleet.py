"""The bimanual and mobile-base simulated robots, and composition of parts."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from wall_runtime.adapters.checks import run_checks
from wall_runtime.adapters.config import load_robot, parse_robot
from wall_runtime.adapters.registry import build_adapter

ROBOTS = Path(__file__).resolve().parents[1] / "robots"


# sim_base: tests/test_robot_walkthrough.py runs the kit on it through the CLI
@pytest.mark.parametrize("name", ["sim_bimanual"])
def test_passes_check_robot(name: str) -> None:
    results = run_checks(build_adapter(load_robot(ROBOTS / name)))
    assert not [(r.name, r.detail) for r in results if not r.passed]


def test_bimanual_fills_both_arm_slots_and_renders_three_views() -> None:
    cfg = load_robot(ROBOTS / "sim_bimanual")
    assert [(a.slot, a.arm, a.gripper.joint) for a in cfg.mapping.arms] == [
        ("left", "left", "left_gripper"),
        ("right", "right", "right_gripper"),
    ]
    assert cfg.joint_names[6] == "left_gripper" and cfg.joint_names[13] == "right_gripper"
    robot = build_adapter(cfg)
    robot.connect()
    try:
        views = {name: robot.render(name, 32, 32) for name in cfg.cameras["devices"]}
        assert set(views) == {"face_view", "left_wrist_view", "right_wrist_view"}
        assert not np.array_equal(views["left_wrist_view"], views["right_wrist_view"])
        # the right arm's command reaches the right arm only
        start = robot.read_state().position
        target = start.copy()
        target[7] += 0.4
        for _ in range(30):
            robot.command(target)
            time.sleep(1 / 30)
        moved = np.abs(robot.read_state().position - start)
        assert moved[7] > 0.3 and moved[0] < 0.02
    finally:
        robot.disconnect()


def test_base_drives_turns_and_its_watchdog_stops_it() -> None:
    robot = build_adapter(load_robot(ROBOTS / "sim_base"))
    sim = robot.part("base")
    robot.connect()
    try:
        pose0 = sim.ground_truth_pose()
        for _ in range(30):
            robot.command(np.array([0.3, 0.0]))
            time.sleep(1 / 30)
        state = robot.read_state().position
        assert state[0] == pytest.approx(0.3, abs=0.05)
        moved = sim.ground_truth_pose() - pose0
        assert 0.15 < moved[0] < 0.45 and abs(moved[1]) < 0.05  # forward, straight
        # stop commanding: the base's watchdog brings it to rest after watchdog_timeout_s
        t_last = time.monotonic()
        while abs(robot.read_state().position[0]) > 0.02:
            assert time.monotonic() - t_last < 1.5
            time.sleep(0.01)
        stopped_after = time.monotonic() - t_last
        assert 0.45 < stopped_after < 1.0
        # positive yaw rate turns counter-clockwise (REP-103)
        yaw0 = sim.ground_truth_pose()[2]
        for _ in range(20):
            robot.command(np.array([0.0, 1.0]))
            time.sleep(1 / 30)
        assert sim.ground_truth_pose()[2] - yaw0 > 0.2
        # commands beyond the velocity limit are clamped
        for _ in range(30):
            robot.command(np.array([5.0, 0.0]))
            time.sleep(1 / 30)
        assert robot.read_state().position[0] <= 0.5 + 0.05
    finally:
        robot.disconnect()


def test_a_mobile_manipulator_composes_an_arm_and_a_base() -> None:
    arm = yaml.safe_load((ROBOTS / "sim_arm" / "robot.yaml").read_text())
    base = yaml.safe_load((ROBOTS / "sim_base" / "robot.yaml").read_text())
    base["parts"][0]["connection"]["mjcf"] = "../sim_base/sim_base.xml"
    raw = {
        **arm,
        "name": "sim_mobile",
        # base joints first: the composite must put each part's joints where robot.yaml says
        "joints": base["joints"] + arm["joints"],
        "parts": arm["parts"] + base["parts"],
        "joint_limits": {**arm["joint_limits"], **base["joint_limits"]},
        # the arm in the checkpoint's left-arm slots, the base in velocity_decomposed
        "model": {**arm["model"], "base": base["model"]["base"]},
    }
    cfg = parse_robot(raw, ROBOTS / "sim_arm" / "robot.yaml")  # relative paths resolve from sim_arm/
    robot = build_adapter(cfg)
    robot.connect()
    try:
        state = robot.read_state().position
        assert state.shape == (9,)
        assert state[4] == pytest.approx(0.8, abs=0.05)  # the arm's elbow, after the two base joints
        target = state.copy()
        target[0] = 0.2  # base forward
        target[2] += 0.3  # arm waist
        for _ in range(30):
            robot.command(target)
            time.sleep(1 / 30)
        now = robot.read_state().position
        assert now[0] == pytest.approx(0.2, abs=0.05)
        assert now[2] == pytest.approx(target[2], abs=0.05)
        robot.hold()
    finally:
        robot.disconnect()
