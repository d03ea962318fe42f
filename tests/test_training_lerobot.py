"""Training on a LeRobotDataset v3 the runtime recorded (issue 13), and a checkpoint's declared row period.

The dataset is a real `wall-runtime run --robot sim_pick --record` of a served echo policy (30 Hz,
two 96x96 views, the model edge's IK in the loop). The loader must give the state and actions the
runtime's model edge gives (FK of the measured / commanded joints, Euler, gripper 0…1), chunk rows
every 3rd frame (0.1 s), the frames LeRobot's own reader decodes; `wall-runtime train` on it writes
`data.action_period: 0.1` into the checkpoint, and the server then stamps every chunk with dt 0.1 for
the 30 Hz robot, whose scheduler interpolates between the rows.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from wall_runtime.cli import app

ROBOT = Path(__file__).resolve().parent.parent / "robots" / "sim_pick" / "robot.yaml"
LAYOUT = {"follow_left_ee_cartesian_pos": 3, "follow_left_ee_rotation": 3, "follow_left_gripper": 1}
VIEWS = ("face_view", "left_wrist_view")


def _run(dataset: Path, tmp: Path, instruction: str) -> dict:
    from wall_runtime.backends.echo import EchoPolicy
    from wall_runtime.transport.server import PolicyServer, ServerConfig

    policy = EchoPolicy.from_checkpoint(
        None, dof_config=LAYOUT, agent_pos_config=LAYOUT, step=0.0005, cameras=VIEWS, norm_keys=("sim_pick",)
    )
    log = tmp / f"{len(list(tmp.glob('*.json')))}.json"
    with PolicyServer(policy, ServerConfig(bind="tcp://127.0.0.1:0")) as server:
        endpoint = server.start()
        args = ["run", "--robot", str(ROBOT), "--server", endpoint, "--duration", "1.5", "-i", instruction]
        args += ["--no-keys", "--no-safe-pose", "--estop-file", str(tmp / "estop")]
        result = CliRunner().invoke(app, [*args, "--log-json", str(log), "--record", str(dataset)])
    assert result.exit_code == 0, result.output
    return json.loads(log.read_text())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """Two episodes of sim_pick recorded through the runtime (two instructions)."""
    tmp = tmp_path_factory.mktemp("recorded")
    dataset = tmp / "dataset"
    for instruction in ("pick up the red cube", "pick up the blue cube"):
        _run(dataset, tmp, instruction)
    return dataset


@pytest.fixture(scope="module")
def trained(recorded: Path, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("trained") / "ck"
    args = ["train", "--data", str(recorded), "--robot", str(ROBOT), "--out", str(out), "--steps", "2"]
    res = CliRunner().invoke(app, [*args, "--size", "tiny", "--batch-size", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    return out, " ".join(res.output.split())


def _fk_row(kin, q: np.ndarray) -> np.ndarray:
    """The task expert's own convention, independently of the edge: base-frame fingertip position,
    [roll, pitch, yaw] of R = Rz·Ry·Rx, gripper opening 0 … 0.04 m -> 0 … 1."""
    from wall_runtime.sims.pick_cube import euler_from_matrix

    pose = kin.fk(q[:6])
    return np.concatenate([pose.position, euler_from_matrix(pose.rotation), [q[6] / 0.04]])


def test_recorded_dataset_is_fk_of_the_joints_with_chunks_every_third_frame(recorded: Path) -> None:
    from wall_runtime.adapters.config import load_robot
    from wall_runtime.kinematics import load_robot_kinematics
    from wall_runtime.recording.lerobot_v3 import read_episode
    from wall_runtime.training.lerobot_data import read_recorded_dataset

    start = time.perf_counter()
    ds = read_recorded_dataset(recorded, ROBOT)
    load_s = time.perf_counter() - start
    episodes = [read_episode(recorded, e) for e in range(2)]
    n = [len(e.frames["index"]) for e in episodes]
    assert ds.num_frames == sum(n) and ds.num_episodes == 2 and min(n) >= 30
    assert ds.tasks == ["pick up the red cube", "pick up the blue cube"]
    assert ds.dof_config == LAYOUT and ds.agent_pos_config == LAYOUT
    assert (ds.meta["fps"], ds.chunk_stride, ds.action_period) == (30, 3, 0.1)
    assert sorted(ds.images) == list(VIEWS) and ds.images["face_view"].shape == (sum(n), 96, 96, 3)
    print(f"loaded {ds.num_frames} frames ({len(VIEWS)} views) in {load_s:.2f} s")

    kin = load_robot_kinematics(load_robot(ROBOT))["arm"]
    measured = np.concatenate([e.frames["wall.measured"] for e in episodes])
    commanded = np.concatenate([e.frames["wall.commanded"] for e in episodes])
    for i in range(ds.num_frames):
        np.testing.assert_allclose(ds.state[i], _fk_row(kin, measured[i]), atol=2e-6)
    moving = np.all(np.isfinite(commanded), axis=1)
    assert moving.sum() > 0.5 * ds.num_frames
    for i in np.flatnonzero(moving):
        np.testing.assert_allclose(ds.action[i], _fk_row(kin, commanded[i]), atol=2e-6)
    # the commanded EE moves (the echo's ramp), so the chunks are not the state repeated
    assert np.abs(ds.action[moving] - ds.state[moving]).max() > 1e-3
    # a tick with nothing commanded holds the last command, or the measured joints before the first
    for ep_rows in (np.arange(n[0]), n[0] + np.arange(n[1])):
        first = ep_rows[np.argmax(moving[ep_rows])]
        for i in ep_rows[ep_rows < first]:
            np.testing.assert_allclose(ds.action[i], ds.state[i], atol=1e-6)

    # chunk row k of frame i is frame i + 3k (0.1 s at 30 Hz), never past its episode's end
    idx = ds.chunk_indices(8)
    np.testing.assert_array_equal(idx[0], np.arange(0, 24, 3))
    last0 = n[0] - 1
    np.testing.assert_array_equal(idx[last0 - 4], np.minimum(last0 - 4 + 3 * np.arange(8), last0))
    np.testing.assert_array_equal(idx[n[0]], n[0] + np.arange(0, 24, 3))

    # the frames are the ones LeRobot's own reader decodes at timestamp i / fps
    from wall_runtime.interop import torchvision_cpu

    torchvision_cpu.install()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    theirs = LeRobotDataset("local/recorded", root=recorded)
    for i in (0, n[0] - 1, n[0] + 7):
        frame = theirs[i]
        assert frame["task"] == ds.tasks[int(ds.task_index[i])]
        for v in VIEWS:
            img = (frame[f"observation.images.{v}"].numpy().transpose(1, 2, 0) * 255).round()
            assert np.abs(img - ds.images[v][i].astype(np.float64)).mean() < 1.0, (i, v)


def test_a_period_that_is_not_whole_frames_and_a_missing_robot_are_refused(recorded: Path) -> None:
    from wall_runtime.training.dataset import DatasetError
    from wall_runtime.training.lerobot_data import read_recorded_dataset

    with pytest.raises(DatasetError, match=r"0.05 s is not a whole number of frames at the dataset's 30 fps"):
        read_recorded_dataset(recorded, ROBOT, action_period=0.05)
    ds = read_recorded_dataset(recorded, ROBOT, action_period=1 / 30)
    assert ds.chunk_stride == 1
    res = CliRunner().invoke(app, ["train", "--data", str(recorded), "--out", str(recorded.parent / "x")])
    assert res.exit_code == 2 and "needs --robot" in " ".join(res.output.split())


def test_training_on_a_recording_declares_the_period(trained: tuple[Path, str]) -> None:
    from wall_runtime.model.config import load_config

    out, output = trained
    assert "chunk rows every 3 frames (0.1 s)" in output
    assert yaml.safe_load((out / "config.yml").read_text())["data"]["action_period"] == 0.1
    assert load_config(out).data.action_period == 0.1
    summary = json.loads((out / "training.json").read_text())
    assert (summary["action_period"], summary["chunk_stride"]) == (0.1, 3)


def test_a_declared_period_is_the_chunks_dt_and_the_30hz_robot_interpolates(trained) -> None:
    """Through a real server on loopback: the checkpoint's 0.1 s reaches the 30 Hz robot as the chunk's
    dt (a checkpoint that declares none gets the robot's period, as before), and the robot's scheduler
    plays row k at stamp + 0.1·k with the ticks between interpolated."""
    from wall_runtime.backends.torch_backend import TorchPolicy
    from wall_runtime.control.scheduler import ChunkScheduler, SchedulerConfig
    from wall_runtime.control.smoothing import make_smoother
    from wall_runtime.transport.client import PolicyClient
    from wall_runtime.transport.protocol import RobotDescription
    from wall_runtime.transport.server import PolicyServer, ServerConfig
    from wall_runtime.types import Observation

    out, _ = trained
    policy = TorchPolicy.from_checkpoint(out, seed=0)
    assert policy.metadata.action_period == 0.1
    hello = RobotDescription(
        robot_id="sim_pick-1",
        embodiment="sim_pick",
        cameras={v: (96, 96, 3) for v in VIEWS},
        state_dim=7,
        action_period=1 / 30,
    )
    rng = np.random.default_rng(0)

    def chunk_from(served):
        with PolicyServer(served, ServerConfig(bind="tcp://127.0.0.1:0")) as server:
            client = PolicyClient(server.start(), hello)
            try:
                meta = client.connect(timeout=10.0)
                obs = Observation(
                    stamp=time.monotonic(),
                    images={v: rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for v in VIEWS},
                    state=np.array([0.15, 0.0, 0.05, 0.0, 1.2, 0.0, 0.5], np.float32),
                    instruction="pick up the red cube",
                )
                return meta, client.submit(obs, deadline=30.0).result(timeout=60)
            finally:
                client.close()

    meta, chunk = chunk_from(policy)
    assert meta.action_period == 0.1  # the welcome carries it to the robot
    assert chunk.dt == pytest.approx(0.1) and chunk.actions.shape[0] == policy.metadata.action_horizon

    sched = ChunkScheduler(make_smoother("none"), SchedulerConfig(interpolation="linear"))
    sched.set_control_period(1 / 30)
    assert sched.accept(chunk, now=chunk.stamp + 1e-4) is not None
    a = chunk.actions.astype(np.float64)
    for tick in range(1, 9):  # 30 Hz ticks: rows 0.1 s apart, two interpolated ticks between
        k, frac = divmod(tick, 3)
        expected = a[k] + (a[k + 1] - a[k]) * frac / 3
        np.testing.assert_allclose(sched.target(chunk.stamp + tick / 30), expected, atol=1e-5)

    undeclared = dataclasses.replace(policy.metadata, action_period=None)
    policy.metadata = undeclared
    meta, chunk = chunk_from(policy)
    assert meta.action_period is None and chunk.dt == pytest.approx(1 / 30)


def test_a_bad_declared_period_is_refused_and_old_peers_omit_it(tmp_path: Path) -> None:
    from wall_runtime.model.config import ConfigError, load_config
    from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
    from wall_runtime.training.trainer import declare_action_period
    from wall_runtime.transport import protocol
    from wall_runtime.transport.errors import ProtocolError

    ck = tmp_path / "ck"
    write_tiny_checkpoint(ck, "flow")
    assert load_config(ck).data.action_period is None
    declare_action_period(ck, -0.1)
    with pytest.raises(ConfigError, match=r"data\.action_period"):
        load_config(ck)
    declare_action_period(ck, 0.1)
    old = {"model": "m", "variant": "flow", "backend": "torch", "action_horizon": 4, "action_dim": 7}
    meta = protocol.metadata_from_dict({**old, "state_dim": 7, "num_steps": 2, "cameras": ["face_view"]})
    assert meta.action_period is None  # a welcome from a server that predates the field
    assert (
        protocol.metadata_from_dict(dataclasses.replace(meta, action_period=0.1).to_dict()).action_period
        == 0.1
    )
    with pytest.raises(ProtocolError, match="action_period"):
        protocol.metadata_from_dict({**meta.to_dict(), "action_period": float("nan")})


def test_failed_episodes_are_left_out(recorded: Path, tmp_path: Path) -> None:
    """`eval --record` keeps failed episodes, marked `success: false`; they are not demonstrations."""
    import shutil

    from wall_runtime.training.lerobot_data import read_recorded_dataset

    copy = tmp_path / "dataset"
    shutil.copytree(recorded, copy)
    side = copy / "wall_runtime" / "episode_000001.json"
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "success": False}))
    full = read_recorded_dataset(recorded, ROBOT)
    kept = read_recorded_dataset(copy, ROBOT)
    assert kept.meta["skipped_episodes"] == [1]
    assert set(kept.episode_index.tolist()) == {0}
    assert kept.num_frames == int((full.episode_index == 0).sum()) < full.num_frames
    assert read_recorded_dataset(copy, ROBOT, successful_only=False).num_frames == full.num_frames


def test_zero_steps_is_the_untrained_start_and_snapshots_load(recorded: Path, tmp_path: Path) -> None:
    """`--steps 0` writes the recipe's random-weight starting point (the baseline); `--snapshot-every`
    writes loadable checkpoints of the run so far without changing the final weights."""
    from safetensors.numpy import load_file

    from wall_runtime.model.pipeline import WallOSS

    base = ["train", "--data", str(recorded), "--robot", str(ROBOT), "--size", "tiny"]
    base += ["--batch-size", "2", "--threads", "1"]
    runs = {}
    for name, extra in {
        "start": ["--steps", "0"],
        "plain": ["--steps", "2"],
        "snap": ["--steps", "2", "--snapshot-every", "1"],
    }.items():
        res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / name), *extra])
        assert res.exit_code == 0, res.output
        runs[name] = load_file(str(tmp_path / name / "model.safetensors"))
    snapshot = tmp_path / "snap-snapshots" / "step_000001"
    assert (snapshot / "config.yml").exists() and not (tmp_path / "snap-snapshots" / "step_000002").exists()
    WallOSS.from_checkpoint(snapshot)  # a complete checkpoint
    first = load_file(str(snapshot / "model.safetensors"))
    for key, value in runs["plain"].items():
        assert np.array_equal(value, runs["snap"][key]), key  # snapshots do not perturb the run
    changed = [k for k in runs["start"] if not np.array_equal(runs["start"][k], runs["plain"][k])]
    assert changed and any(not np.array_equal(first[k], runs["start"][k]) for k in changed)
