"""The pick-cube task: physics success, the scripted EE expert through the IK, the data recipe, and a
trained checkpoint evaluated closed-loop in the simulator."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("mink")

from wall_runtime.sims.pick_cube import (
    COLOURS,
    PickCubeEnv,
    ScriptedExpert,
    euler_from_matrix,
    matrix_from_euler,
    run_expert_episode,
)
from wall_runtime.training.dataset import read_dataset


@pytest.fixture(scope="module")
def env():
    e = PickCubeEnv(render=False)
    yield e
    e.close()


def test_euler_round_trip_spec_convention():
    rng = np.random.default_rng(0)
    for _ in range(20):
        e = rng.uniform([-3, -1.5, -3], [3, 1.5, 3])
        r = matrix_from_euler(e)
        assert np.allclose(euler_from_matrix(r), e, atol=1e-9)
    # R = Rz(yaw)·Ry(pitch)·Rx(roll): a pure yaw rotates x toward y
    assert np.allclose(matrix_from_euler([0, 0, np.pi / 2]) @ [1, 0, 0], [0, 1, 0])


def test_expert_lifts_the_named_cube(env):
    colours = set()
    for seed in range(6):
        ep = run_expert_episode(env, seed, record=False)
        colours.add(ep.colour)
        assert ep.success, f"seed {seed}: the expert did not lift the {ep.colour} cube"
        others = [c for c in COLOURS if c != ep.colour]
        for c in others:  # only the named cube left the table
            assert env.cube_base_frame(c)[2] < 0.03
    assert len(colours) >= 2


def test_doing_nothing_is_not_success(env):
    env.reset(0)
    hold = env.state()
    for _ in range(10):
        info = env.step(hold)
    assert not info.success and abs(info.lifted_m) < 0.005


def test_picking_the_wrong_cube_fails(env):
    env.reset(1)
    named = env.colour
    env.colour = next(c for c in COLOURS if c != named)  # the expert goes for another cube ...
    expert = ScriptedExpert(env)
    expert.reset()
    for k in range(len(expert)):
        env.step(expert.act(k))
    assert env.lifted() >= 0.05
    env.colour = named  # ... and the named one stayed on the table
    assert env.lifted() < 0.005


def test_record_train_eval(tmp_path):
    from wall_runtime.sims.pick_cube_data import evaluate_checkpoint, record_expert_dataset
    from wall_runtime.training.trainer import TrainSettings, train

    path, summary = record_expert_dataset(tmp_path / "d.npz", 2, image_size=32)
    assert summary["episodes"] == 2 and summary["expert_success_rate"] == 1.0
    ds = read_dataset(path)
    assert set(ds.images) == {"face_view", "left_wrist_view"} and ds.images["face_view"].shape[1:] == (
        32,
        32,
        3,
    )
    assert ds.num_episodes == 2 and ds.action.shape[1] == 7
    # the recorded state is the measured EE pose the expert's action drove toward: close one step on
    same = ds.episode_index[1:] == ds.episode_index[:-1]
    assert np.abs(ds.state[1:, :3] - ds.action[:-1, :3])[same].max() < 0.05
    train(ds, tmp_path / "ck", TrainSettings(steps=2, size="tiny", batch_size=2, threads=1))
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["num_experts"] == 2
    (ep,) = evaluate_checkpoint(tmp_path / "ck", [100_000], execute=4, max_steps=4, image_size=32)
    assert not ep.success and ep.infer_ms > 0


def test_task_state_is_the_runtime_edges_state(env):
    """The recorded state equals what the runtime's EE edge gives the model for robots/sim_pick
    (FK in the base frame, Euler convention, gripper map): the trained policy sees the same numbers
    through the runtime."""
    from wall_runtime.action_space.edge import build_edge
    from wall_runtime.adapters.config import load_robot
    from wall_runtime.kinematics import load_robot_kinematics
    from wall_runtime.sims.pick_cube import DOF_CONFIG

    robot = load_robot("robots/sim_pick")
    edge = build_edge(robot.joints, robot.mapping, DOF_CONFIG, DOF_CONFIG, load_robot_kinematics(robot))
    env.reset(3)
    expert = ScriptedExpert(env)
    expert.reset()
    names = [j.name for j in robot.joints]
    for k in range(len(expert)):
        env.step(expert.act(k))
        if k % 5:
            continue
        q = np.array([env.data.qpos[env.model.jnt_qposadr[env.model.joint(n).id]] for n in names])
        np.testing.assert_allclose(edge.state_vector(edge.context(q)), env.state(), atol=1e-5)
