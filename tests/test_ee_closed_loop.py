"""Closed loop in the MuJoCo simulator through the model edge: a scripted end-effector trajectory,
a 10 cm circle in the arm's base frame, delivered as chunks in each generation's convention (FLOW:
absolute position + Euler; 0.5: deltas + relative 6D composed onto the observation's pose), is
tracked within 5 mm — FK of the *measured* joints against the circle at the state's time (which
includes the simulated position servo's lag, ~65 ms), and within 1 mm for the commanded joints
(the edge, scheduler and safety chain alone). The simulator runs in lockstep (one control period
of physics per command), so the figures do not depend on how loaded the machine is."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from wall_runtime.action_space import rotations as rot
from wall_runtime.action_space.edge import build_edge
from wall_runtime.action_space.source import EdgeSource
from wall_runtime.adapters.config import parse_robot
from wall_runtime.adapters.registry import build_adapter
from wall_runtime.control.dryrun import ThreadedPolicySource
from wall_runtime.e2e.assemble import LoopOptions, assemble_loop
from wall_runtime.e2e.robot_side import safety_config
from wall_runtime.kinematics import load_robot_kinematics
from wall_runtime.types import Observation, RobotState

ROBOT = Path(__file__).resolve().parents[1] / "robots" / "sim_arm" / "robot.yaml"
RADIUS = 0.05  # a 10 cm circle
PERIOD = 8.0  # s: ~4 cm/s along the circle
H = 32
LAYOUTS = {
    "flow": (
        {"follow_left_ee_cartesian_pos": 3, "follow_left_ee_rotation": 3, "follow_left_gripper": 1},
        {"follow_left_ee_cartesian_pos": 3, "follow_left_ee_rotation": 3, "follow_left_gripper": 1},
    ),
    "0.5": (
        {
            "follow_left_ee_cartesian_pos_relative": 3,
            "follow_left_ee_rotation_6D_relative": 6,
            "follow_left_gripper": 1,
        },
        {"follow_left_ee_cartesian_pos": 3, "follow_left_ee_rotation_6D": 6, "follow_left_gripper": 1},
    ),
}


def _run_circle(variant: str, seconds: float = 6.0) -> tuple[np.ndarray, dict]:
    raw = yaml.safe_load(ROBOT.read_text())
    raw["parts"][0]["connection"]["realtime"] = False  # lockstep physics
    cfg = parse_robot(raw, ROBOT)
    kin = load_robot_kinematics(cfg)
    adapter = build_adapter(cfg)
    dof, pos = LAYOUTS[variant]
    edge = build_edge(cfg.joints, cfg.mapping, dof, pos, kin, cfg.ee_limits, horizon=H)
    adapter.connect()
    home_q = adapter.read_state().position
    home = kin["arm"].fk(home_q[:6])
    t0: list[float] = []
    dt = 1.0 / cfg.control_hz

    def circle(t: np.ndarray) -> np.ndarray:
        w = 2 * math.pi * (t - t0[0]) / PERIOD
        return home.position + RADIUS * np.stack([np.cos(w) - 1.0, np.sin(w), 0.0 * w], axis=-1)

    def policy(obs: Observation) -> np.ndarray:
        if not t0:
            t0.append(obs.stamp)
        p = circle(obs.stamp + np.arange(H) * dt)
        out = np.zeros((H, edge.actions.dim))
        if variant == "flow":
            out[:, :3] = p
            out[:, 3:6] = rot.matrix_to_euler(home.rotation)
            out[:, 6] = 0.5
        else:  # relative to the observation's state, as 0.5 was trained
            p_state, r_state = obs.state[:3].astype(np.float64), rot.sixd_to_matrix(obs.state[3:9])
            out[:, :3] = p - p_state
            out[:, 3:9] = rot.matrix_to_6d(home.rotation @ r_state.T)
            out[:, 9] = 0.5
        return out

    source = EdgeSource(edge, ThreadedPolicySource(policy, dt, latency=0.05))

    def observe(state: RobotState, now: float) -> Observation:
        obs = Observation(stamp=state.stamp, images={}, state=np.zeros(0, np.float32), instruction="circle")
        return source.observe(obs, state)

    samples: list[tuple[float, np.ndarray, np.ndarray]] = []
    loop = assemble_loop(
        adapter, source, observe, safety_config(cfg, adapter.spec), LoopOptions(safe_pose=False)
    )
    try:
        summary = loop.run(
            duration=seconds,
            on_tick=lambda lp: samples.append(
                (lp.log.deadline[-1], lp.adapter.read_state().position.copy(), lp.log.commanded[-1].copy())
            ),
        )
    finally:
        source.close()
        adapter.disconnect()
    settled = [s for s in samples if t0 and s[0] - t0[0] > 1.5]  # past the first chunk's arrival

    def error(t: float, q: np.ndarray) -> float:
        return float(np.linalg.norm(kin["arm"].fk(q[:6]).position - circle(np.array(t))))

    measured = np.array([error(t, q) for t, q, _ in settled])
    commanded = np.array([error(t, c) for t, _, c in settled if np.all(np.isfinite(c))])
    summary["edge"] = dict(edge.counts)
    return measured, commanded, summary


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_a_circle_in_the_base_frame_is_tracked_within_5_mm(variant: str) -> None:
    """Typical figures (lockstep sim, 2-core VM): measured max ~2 mm, commanded max ~0.01 mm."""
    errors, commanded, summary = _run_circle(variant)
    assert len(errors) > 60 and len(commanded) > 60, summary["counters"]
    print(
        f"{variant}: EE error measured p50 {np.median(errors) * 1e3:.2f} / p95 "
        f"{np.percentile(errors, 95) * 1e3:.2f} / max {errors.max() * 1e3:.2f} mm, "
        f"commanded p50 {np.median(commanded) * 1e3:.3f} / max {commanded.max() * 1e3:.3f} mm, "
        f"overruns {summary['counters']['overruns']}"
    )
    # within 5 mm; a tick that ran late on a loaded machine (overruns: the loop skips the deadlines it
    # missed) may lag once, so the bound is on the 95th percentile and the worst case gets a margin
    overruns = summary["counters"]["overruns"]
    assert np.percentile(errors, 95) < 0.005, (np.median(errors), errors.max(), overruns, summary["edge"])
    assert errors.max() < 0.010, (errors.max(), overruns)
    assert np.percentile(commanded, 95) < 0.001, (np.median(commanded), commanded.max(), overruns)
    assert summary["watchdog_trips"] == 0 and not summary["edge"]
