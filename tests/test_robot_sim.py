"""The simulated arm (the embedded default): contract, cameras, limits, conformance kit."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from wall_runtime.adapters.checks import run_checks
from wall_runtime.adapters.config import load_robot
from wall_runtime.adapters.registry import build_adapter
from wall_runtime.robot import RobotLinkError, RobotNotConnectedError

ROBOTS = Path(__file__).resolve().parents[1] / "robots"


@pytest.fixture
def sim_arm():
    robot = build_adapter(load_robot(ROBOTS / "sim_arm"))
    robot.connect()
    yield robot
    robot.disconnect()


def test_sim_arm_passes_check_robot() -> None:
    robot = build_adapter(load_robot(ROBOTS / "sim_arm"))
    results = run_checks(robot)
    failed = [(r.name, r.detail) for r in results if not r.passed]
    assert not failed
    by_name = {r.name: r for r in results}
    assert by_name["limits"].figures["worst_excursion"] < 0.01
    assert by_name["timing"].figures["command_p99_ms"] < 1000 / 30


def test_commands_are_refused_before_connect_and_after_a_dropped_link() -> None:
    robot = build_adapter(load_robot(ROBOTS / "sim_arm"))
    with pytest.raises(RobotNotConnectedError):
        robot.read_state()
    robot.connect()
    try:
        robot.inject_fault("link_drop")
        with pytest.raises(RobotLinkError, match="link dropped"):
            robot.command(np.zeros(7))
        robot.connect()
        assert robot.read_state().position.shape == (7,)
    finally:
        robot.disconnect()


def test_renders_the_model_views(sim_arm) -> None:
    face = sim_arm.render("face_view")
    wrist = sim_arm.render("left_wrist_view", 64, 48)
    assert face.shape == (224, 224, 3) and face.dtype == np.uint8
    assert wrist.shape == (48, 64, 3)
    assert face.std() > 10  # a scene, not a blank frame
    with pytest.raises(KeyError, match="no simulated camera"):
        sim_arm.render("right_wrist_view")


def test_the_wrist_view_moves_with_the_arm(sim_arm) -> None:
    before = sim_arm.render("left_wrist_view", 64, 64).astype(float)
    target = sim_arm.read_state().position
    target[0] += 0.8
    for _ in range(30):
        sim_arm.command(target)
        time.sleep(1 / 30)
    after = sim_arm.render("left_wrist_view", 64, 64).astype(float)
    assert np.abs(after - before).mean() > 2.0


def test_out_of_range_command_is_clamped_by_the_adapter(sim_arm) -> None:
    target = sim_arm.spec.upper + 1.0
    for _ in range(45):
        sim_arm.command(target)
        time.sleep(1 / 30)
    pos = sim_arm.read_state().position
    assert np.all(pos <= sim_arm.spec.upper + 0.01)


def test_lockstep_mode_advances_one_period_per_command() -> None:
    cfg = load_robot(ROBOTS / "sim_arm")
    from dataclasses import replace

    part = replace(cfg.parts[0], connection={**cfg.parts[0].connection, "realtime": False})
    cfg = replace(cfg, parts=(part,))
    robot = build_adapter(cfg)
    robot.connect()
    try:
        sim = robot.part("sim")
        t0 = sim.data.time
        start = robot.read_state().position
        time.sleep(0.1)  # nothing moves between commands in lockstep
        assert sim.data.time == t0
        target = start.copy()
        target[0] += 0.3
        for _ in range(30):
            robot.command(target)
        assert sim.data.time - t0 == pytest.approx(1.0, abs=0.01)
        assert robot.read_state().position[0] == pytest.approx(target[0], abs=0.02)
    finally:
        robot.disconnect()


def test_forward_kinematics_reports_the_end_effector(sim_arm) -> None:
    pos = sim_arm.read_state().position
    ee = sim_arm.forward_kinematics(pos)
    assert ee.shape == (1, 3)
    turned = pos.copy()
    turned[0] += np.pi / 2
    ee2 = sim_arm.forward_kinematics(turned)
    # turning the waist a quarter turn keeps the height and the distance from the base axis
    assert ee2[0, 2] == pytest.approx(ee[0, 2], abs=1e-6)
