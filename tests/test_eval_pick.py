"""The pick-cube task as a robot the runtime drives (wall_runtime.sims.pick_cube.PickCubeTask) and
`wall-runtime eval` on it: real MuJoCo physics, the served scripted expert and a tiny WALL-OSS-FLOW
checkpoint through a policy server process and ZeroMQ on loopback, the per-episode instruction,
and `--record` into a LeRobot v3 dataset that LeRobot's own reader loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wall_runtime.e2e.robot_side import load_robot_side
from wall_runtime.eval.episode import _task_part
from wall_runtime.sims.pick_cube import (
    COLOURS,
    DOF_CONFIG,
    VIEWS,
    PickCubeEnv,
    ScriptedExpert,
    expert_plan,
    instruction_for,
)

ROBOT = Path(__file__).resolve().parents[1] / "robots" / "pick_cube_task" / "robot.yaml"
SEEDS = [100000, 100001]


@pytest.fixture(scope="module")
def side():
    s = load_robot_side(ROBOT)
    _task_part(s.adapter).use_clock("simulated")
    s.adapter.connect()
    yield s
    s.adapter.disconnect()


def test_reset_places_the_cubes_as_the_recorded_task_does(side) -> None:
    """Same seed -> the same scene and named colour as PickCubeEnv (the training data's and the
    in-process eval's); the physics steps only when the simulated clock is slept on."""
    task = _task_part(side.adapter)
    env = PickCubeEnv(render=False)
    colours = set()
    for seed in (*SEEDS, *range(100002, 100020), 5):
        instruction = env.reset(seed)
        task.reset(seed)
        assert task.instruction == instruction and task.colour == env.colour
        colours.add(task.colour)
        for c in COLOURS:
            adr = env.cube_adr[c]
            assert np.array_equal(task.env.data.qpos[adr : adr + 7], env.data.qpos[adr : adr + 7])
    assert colours == set(COLOURS)
    assert instruction_for(task.colour) == task.instruction
    task.reset(SEEDS[0])
    q0 = side.adapter.read_state()
    assert task.episode_time == 0.0 and q0.position.shape == (7,)
    assert q0.position[6] == pytest.approx(0.04, abs=1e-3)  # gripper open, in metres
    target = q0.position.copy()
    target[0] += 0.2
    side.adapter.command(target)
    assert task.episode_time == 0.0
    task.sim_clock.sleep(0.3)
    assert task.episode_time == pytest.approx(0.3, abs=1e-9)
    assert side.adapter.read_state().position[0] > 0.1
    assert not task.success  # nothing lifted
    assert {"face_view", "left_wrist_view"} <= set(task.camera_names)
    img = task.render("face_view", 96, 96)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8 and img.std() > 5


def test_served_expert_chunk_is_the_direct_plan(side) -> None:
    """The expert policy's FLOW rows (pick_cube: the left-arm slots only) are the direct expert's
    plan sampled at the chunk's action times."""
    from wall_runtime.backends.expert import ScriptedExpertPolicy
    from wall_runtime.types import Observation

    policy = ScriptedExpertPolicy(task="pick_cube", horizon=16, cameras=VIEWS)
    assert policy.metadata.dof_config == DOF_CONFIG and policy.metadata.action_dim == 7
    task = _task_part(side.adapter)
    task.reset(SEEDS[1])
    env = PickCubeEnv(render=False)
    env.reset(SEEDS[1])
    direct = ScriptedExpert(env)
    direct.reset()
    priv = {**task.privileged_state(), "action_period": [0.1]}
    priv["episode_time"] = [0.5]
    obs = Observation(stamp=0.0, images={}, state=np.zeros(7, np.float32), instruction="x")
    obs.privileged = priv
    rows = policy.infer([obs])[0].actions
    assert rows.shape == (16, 7)
    want = np.array([direct.act(5 + i) for i in range(16)])
    assert np.allclose(rows, want, atol=1e-5)
    assert len(expert_plan(task.start_state, task.cube_start)) == len(direct)
    with pytest.raises(ValueError, match="privileged"):
        obs.privileged = {"episode_time": [0.0]}
        policy.infer([obs])


def test_eval_connects_with_one_hello_and_takes_the_policys_state_size() -> None:
    """The runner's one handshake names every rendered view and leaves the state size to the
    policy: no probe session before the real one."""
    from wall_runtime.backends.expert import ScriptedExpertPolicy
    from wall_runtime.eval.episode import EvalConfig, EvalRunner
    from wall_runtime.transport.server import PolicyServer, ServerConfig

    policy = ScriptedExpertPolicy(task="pick_cube", horizon=16, cameras=VIEWS)
    with PolicyServer(policy, ServerConfig(bind="tcp://127.0.0.1:*")) as server:
        runner = EvalRunner(ROBOT, server.endpoint, EvalConfig())
        try:
            hellos = sum(
                c["value"]
                for c in server.metrics.snapshot()["counters"]
                if c["name"] == "requests" and c["labels"].get("type") == "hello"
            )
            assert hellos == 1
            assert runner.description.state_dim == policy.metadata.state_dim
            assert sorted(runner.description.cameras) == sorted(VIEWS)
        finally:
            runner.close()


@pytest.mark.slow  # ~10 s: a policy server process and a few closed-loop episodes
def test_expert_through_the_runtime_succeeds_records_and_is_deterministic(tmp_path) -> None:
    """`wall-runtime eval --backend expert --record`: the expert through server process, ZeroMQ,
    scheduler, smoother, EE edge + IK, safety chain and adapter lifts the named cube; each episode
    carries its own instruction; the recording loads with LeRobot's LeRobotDataset with one task
    string per episode, each running on 1 s after the lift; the same seed again (not recording)
    gives the same episode."""
    from wall_runtime.eval.sweep import EvalOptions, run_eval

    record = run_eval(
        EvalOptions(
            robot=ROBOT,
            seeds=SEEDS,
            video="none",
            out=tmp_path / "a",
            record=tmp_path / "ds",
            after_success_s=1.0,
        ),
        progress=lambda m: None,
    )
    assert record["direct"]["successes"] == 2
    cfg = record["configs"][0]
    assert cfg["summary"]["successes"] == 2
    env = PickCubeEnv(render=False)
    instructions = [env.reset(s) for s in SEEDS]
    for ep, want in zip(cfg["episodes"], instructions, strict=True):
        assert ep["instruction"] == want
        assert ep["success_time_s"] < 4.0 and ep["counters"]["chunks_received"] >= 1
    assert record["policy"]["dof_config"] == DOF_CONFIG

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/pick", root=tmp_path / "ds")
    assert ds.fps == 10 and ds.num_episodes == 2
    for view in VIEWS:
        assert tuple(ds.features[f"observation.images.{view}"]["shape"]) == (96, 96, 3)
    assert ds.features["observation.state"]["shape"] == (7,) and ds.features["action"]["shape"] == (7,)
    assert sorted(ds.meta.tasks.index) == sorted(set(instructions))
    for i in range(ds.num_episodes):
        start = int(ds.meta.episodes["dataset_from_index"][i])
        stop = int(ds.meta.episodes["dataset_to_index"][i])
        first, last = ds[start], ds[stop - 1]
        assert first["task"] == instructions[i] == last["task"]
        assert first["observation.images.face_view"].shape == (3, 96, 96)
        assert float(first["observation.images.face_view"].std()) > 0.01  # rendered, not blank
        # one frame per 0.1 s tick, up to 1 s after the lift
        assert abs((stop - start) - (cfg["episodes"][i]["success_time_s"] + 1.0) * 10) <= 2
        assert cfg["episodes"][i]["episode_time_s"] == pytest.approx(
            cfg["episodes"][i]["success_time_s"] + 1.0, abs=0.11
        )
    assert (tmp_path / "ds" / "wall_runtime" / "chunks_000000.parquet").exists()
    import json

    meta = json.loads((tmp_path / "ds" / "wall_runtime" / "episode_000001.json").read_text())
    assert meta["success"] is True and meta["instruction"] == instructions[1] and meta["seed"] == SEEDS[1]

    again = run_eval(
        EvalOptions(
            robot=ROBOT, seeds=SEEDS[1:], video="none", direct=False, out=tmp_path / "b", after_success_s=1.0
        ),
        progress=lambda m: None,
    )["configs"][0]["episodes"][0]
    first_run = cfg["episodes"][1]
    for key in (
        "success",
        "success_time_s",
        "interventions",
        "ee_interventions",
        "counters",
        "seams",
        "instruction",
    ):
        assert again[key] == first_run[key], key


@pytest.mark.slow  # ~10 s: a policy server process and a few closed-loop episodes
def test_tiny_flow_checkpoint_runs_through_eval(tmp_path) -> None:
    """A random-weight FLOW checkpoint with the task's layout (views face_view + left_wrist_view,
    the left-arm EE slots, the trainer's norm key) runs closed-loop through `wall-runtime eval` and
    reports; its episodes carry the task's instruction."""
    from wall_runtime.eval.sweep import EvalOptions, run_eval
    from wall_runtime.model.tiny_checkpoint import TinyLayout, write_tiny_checkpoint

    lo = np.array([0.1, -0.3, -0.05, -0.2, 1.0, -0.7, 0.0], np.float32)
    hi = np.array([0.45, 0.3, 0.25, 0.2, 1.45, 0.7, 1.0], np.float32)
    layout = TinyLayout(dict(DOF_CONFIG), dict(DOF_CONFIG), VIEWS, 8, (lo, hi), (lo, hi))
    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", "flow", norm_key="default", layout=layout)
    record = run_eval(
        EvalOptions(
            robot=ROBOT,
            seeds=[100002],
            backend="torch",
            checkpoint=ckpt,
            backend_options={},
            video="failures",  # the task's own camera (face_view) for the failed episode's video
            time_limit_s=3.0,
            out=tmp_path / "eval",
        ),
        progress=lambda m: None,
    )
    ep = record["configs"][0]["episodes"][0]
    assert ep["instruction"] == PickCubeEnv(render=False).reset(100002)
    assert ep["counters"]["chunks_received"] >= 3 and not ep["link_errors"]
    assert ep["success"] or ep["episode_time_s"] == pytest.approx(3.0, abs=0.05)  # ran to the time limit
    assert tuple(record["policy"]["cameras"]) == VIEWS
    assert "direct" not in record
    if not ep["success"]:
        assert ep["video"] and (tmp_path / "eval" / ep["video"]).stat().st_size > 1000
    saved = (tmp_path / "eval" / "eval.json").read_text()
    assert f'"instruction": "{ep["instruction"]}"' in saved


@pytest.mark.slow
def test_check_robot_passes_on_the_pick_task(tmp_path) -> None:
    """The conformance kit on the pick-task robot (the same contract as any adapter)."""
    import json

    from typer.testing import CliRunner

    from wall_runtime.cli import app

    out = tmp_path / "pick.json"
    result = CliRunner().invoke(app, ["check-robot", str(ROBOT), "--json", str(out)])
    report = json.loads(out.read_text())
    failed = [c["name"] for c in report["checks"] if not c["passed"]]
    assert set(failed) <= {"timing"}, result.output  # timing: a shared CI machine
