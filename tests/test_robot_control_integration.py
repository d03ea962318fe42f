"""The simulated arm behind the control loop's safety chain, and robot.yaml as the control loop
reads it (``wall_runtime.control.commands.load_control_setup``)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from layouts import FLOW_LAYOUT

from wall_runtime.adapters.config import load_robot
from wall_runtime.adapters.registry import build_adapter
from wall_runtime.control.safety import SafetyChain
from wall_runtime.e2e.robot_side import safety_config

ROBOTS = Path(__file__).resolve().parents[1] / "robots"


def test_scripted_motion_through_the_safety_chain_stays_within_limits() -> None:
    """Targets asking for twice each joint's range, jumps and NaN bursts: the chain configured from
    robot.yaml (joint_limits + safety) sits between them and the simulated arm, as in the control
    loop, and the arm's *measured* positions never leave the limits."""
    cfg = load_robot(ROBOTS / "sim_arm")
    robot = build_adapter(cfg)
    robot.connect()
    try:
        spec = robot.spec
        chain = SafetyChain(
            spec.joints,
            safety_config(cfg, spec),
            spec.period_s,
            robot.forward_kinematics,
        )
        lower, upper = spec.lower, spec.upper
        centre, half = (lower + upper) / 2, (upper - lower) / 2
        freq = np.array([1.0, 1.3, 0.7, 1.1, 0.9, 1.5, 2.0])
        tol = np.array([0.01 if j.unit == "rad" else 0.001 for j in spec.joints])
        worst = np.full(spec.dof, -np.inf)
        n = 120
        seen = []
        next_t = time.monotonic()
        for k in range(n):
            wish = centre + 2.0 * half * np.sin(2 * np.pi * k / 60 * freq)
            if k % 37 == 5:
                wish = wish.copy()
                wish[2] = np.nan  # a corrupted action
            if k % 29 == 3:
                wish = -wish  # a jump across the range
            state = robot.read_state()
            robot.command(chain.filter(wish, state))
            seen.append(state.position)
            worst = np.maximum(worst, state.position - upper)
            worst = np.maximum(worst, lower - state.position)
            next_t += spec.period_s
            time.sleep(max(0.0, next_t - time.monotonic()))
        over = {j.name: round(float(w), 4) for j, w, t in zip(spec.joints, worst, tol, strict=True) if w > t}
        assert not over, f"measured positions past the limits: {over}"
        assert chain.counts["position"] > 0 and chain.counts["finite"] > 0 and chain.counts["velocity"] > 0
        # and the chain did not freeze the motion: the waist swung at its velocity limit (2 rad/s),
        # more than a radian each way of the 2 s wish
        assert np.ptp(np.array(seen)[:, 0]) > 1.0
    finally:
        robot.disconnect()


FLOW_ARM = FLOW_LAYOUT


def _flow_meta(horizon: int = 16):
    from wall_runtime.backends.base import PolicyMetadata

    return PolicyMetadata(
        model="wall-oss-flow",
        variant="flow",
        backend="test",
        action_horizon=horizon,
        action_dim=20,
        state_dim=20,
        num_steps=1,
        cameras=("face_view", "left_wrist_view"),
        dof_config=dict(FLOW_ARM),
        agent_pos_config=dict(FLOW_ARM),
    )


def test_robot_side_observations_from_sim_arm_are_in_the_model_layout() -> None:
    """robot.yaml -> e2e robot side (adapter + simulated cameras rendered by the adapter) -> the
    model edge -> observations in a FLOW checkpoint's layout: the left arm's EE pose by FK (position
    + Euler), its gripper mapped onto 0..1, every other slot masked."""
    from wall_runtime.action_space import rotations as rot
    from wall_runtime.action_space.source import EdgeSource
    from wall_runtime.e2e.robot_side import load_robot_side

    side = load_robot_side(ROBOTS / "sim_arm" / "robot.yaml")
    side.start()
    try:
        edge = EdgeSource(side.edge(_flow_meta()), inner=None, threaded=False)
        observe = side.observer("pick up the red cube", edge)
        obs = None
        deadline = time.monotonic() + 5.0
        while obs is None and time.monotonic() < deadline:
            state = side.adapter.read_state()
            obs = observe(state, time.monotonic())
            time.sleep(0.05)
        assert obs is not None, "no snapshot from the simulated cameras within 5 s"
        assert set(obs.images) == {"face_view", "left_wrist_view"}
        assert all(img.shape == (224, 224, 3) and img.dtype == np.uint8 for img in obs.images.values())
        assert obs.state.shape == (20,) and obs.state.dtype == np.float32
        pose = side.kinematics["arm"].fk(state.position[:6])
        np.testing.assert_allclose(obs.state[:3], pose.position, atol=1e-6)
        np.testing.assert_allclose(obs.state[3:6], rot.matrix_to_euler(pose.rotation), atol=1e-6)
        assert obs.state[6] == pytest.approx(state.position[6] / 0.04, abs=1e-6)
        assert not obs.state[7:].any()
        assert obs.dof_mask.tolist() == [1.0] * 7 + [0.0] * 13
        assert obs.state_mask.tolist() == [1.0] * 7 + [0.0] * 13
        assert obs.norm_key == "sim_arm" and obs.instruction == "pick up the red cube"
        assert side.safe_pose == [0.0, 0.0, 0.8, 0.0, 0.6, 0.0, 0.02]
    finally:
        side.close()
    assert not side.adapter.is_connected


def test_control_loop_runs_sim_arm_from_robot_yaml() -> None:
    """`wall-runtime run --robot robots/sim_arm/robot.yaml` minus the transport: the loop's own
    setup loader, the model edge, a policy answering each observation with EE chunks that sweep
    far past the arm's reach, and the arm staying inside its limits (unreachable waypoints are
    dropped by the edge, the rest pass the joint chain)."""
    from wall_runtime.action_space.source import EdgeSource
    from wall_runtime.control.commands import load_control_setup
    from wall_runtime.control.dryrun import ThreadedPolicySource
    from wall_runtime.e2e.assemble import LoopOptions, assemble_loop

    setup = load_control_setup(ROBOTS / "sim_arm" / "robot.yaml")
    spec = setup.adapter.spec
    lower, upper = spec.lower, spec.upper
    home = setup.side.kinematics["arm"].fk(np.array([0.0, 0.0, 0.8, 0.0, 0.6, 0.0]))

    def policy(obs) -> np.ndarray:
        t = obs.stamp + np.arange(16) * 0.1
        out = np.zeros((16, 20))
        out[:, 0] = home.position[0] + 0.4 * np.sin(t)  # ±40 cm: far past the reach at the ends
        out[:, 1] = home.position[1] + 0.1 * np.cos(t)
        out[:, 2] = home.position[2]
        out[:, 3:6] = obs.state[3:6]
        out[:, 6] = 1.5 * np.sin(t)  # the gripper past both ends
        return out

    source = ThreadedPolicySource(policy, 0.1, latency=0.05)
    edge = EdgeSource(setup.side.edge(_flow_meta()), source)
    setup.observe = setup.side.observer("wave", edge)
    measured: list[np.ndarray] = []
    try:
        loop = assemble_loop(
            setup.adapter,
            edge,
            setup.observe,
            setup.safety,
            LoopOptions(safe_pose=False, overrides={"max_observation_age": 1.0}),
        )
        summary = loop.run(duration=3.0, on_tick=lambda lp: measured.append(lp.adapter.read_state().position))
    finally:
        edge.close()
        setup.close()
        setup.adapter.disconnect()
    assert summary["counters"]["chunks_received"] > 0
    assert source.observations and set(source.observations[0].images) == {"face_view", "left_wrist_view"}
    worst = np.max(np.maximum(np.array(measured) - upper, lower - np.array(measured)), axis=0)
    assert np.all(worst < np.where([j.unit == "rad" for j in spec.joints], 0.01, 0.001)), worst
    assert np.ptp(np.array(measured)[:, 0]) > 0.05  # the arm followed the policy


@pytest.mark.parametrize(
    "name", ["so100", "koch", "piper", "ur5e", "xarm6", "agilex_scout", "sim_bimanual", "sim_base"]
)
def test_every_robot_safety_block_parses_for_the_control_loop(name: str) -> None:
    cfg = load_robot(ROBOTS / name)
    SafetyChain(cfg.joints, safety_config(cfg, cfg.spec()), 1 / cfg.control_hz)
