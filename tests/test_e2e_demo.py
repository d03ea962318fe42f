"""The demo, headless, for a few seconds: chunks flow, the arm stays inside its limits, the report is
written, the recording is a LeRobot v3 dataset that LeRobot's own reader opens, and it replays to
the same commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wall_runtime.adapters.config import load_robot
from wall_runtime.cli import app
from wall_runtime.e2e.demo import DEFAULT_ROBOT, DemoOptions, run_demo
from wall_runtime.e2e.recording import Episode
from wall_runtime.e2e.replay import replay_dry


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("demo")
    summary = run_demo(DemoOptions(duration=6.0, live=False, report=root / "report"))
    return summary, Path(summary["report"])


def test_chunks_flowed_and_the_loop_kept_time(demo_run: tuple[dict, Path]) -> None:
    summary, _ = demo_run
    counters = summary["counters"]
    assert counters["chunks_received"] >= 3, counters
    assert summary["link_errors"] == {}
    # every chunk went through the model's stages on the server
    for stage in (
        "policy_preprocess",
        "policy_vision",
        "policy_prefix",
        "policy_denoise",
        "capture_to_chunk",
    ):
        # the model edge takes each chunk off the link, converts it (IK) on its own thread and hands
        # it on: one may still be in conversion when the run ends, and a dropped one never arrives
        n = summary["stages_ms"][stage]["n"]
        dropped = summary["model_edge"]["interventions"].get("chunks_dropped", 0)
        assert counters["chunks_received"] <= n <= counters["chunks_received"] + dropped + 1
    # the model edge's time per chunk (composition, EE safety, IK for every waypoint)
    assert summary["stages_ms"]["model_edge"]["n"] == counters["chunks_received"]
    assert summary["watchdog_trips"] == 0


def test_the_arm_moved_within_its_limits(demo_run: tuple[dict, Path]) -> None:
    _, report = demo_run
    ticks = Episode.load(report / "dataset").ticks
    joints = load_robot(DEFAULT_ROBOT).joints
    commanded, measured = ticks["commanded"], ticks["measured"]
    ok = np.all(np.isfinite(commanded), axis=1)
    assert ok.sum() > 0.5 * len(ok)
    lower = np.array([j.limits.lower for j in joints])
    upper = np.array([j.limits.upper for j in joints])
    assert np.all(commanded[ok] >= lower - 1e-9) and np.all(commanded[ok] <= upper + 1e-9)
    # the simulated joints follow the commands with a lag: allow that lag, never a limit breach
    assert np.all(measured >= lower - 0.05) and np.all(measured <= upper + 0.05)
    moved = np.ptp(measured[:, :6], axis=0)
    assert moved.max() > 0.05, "the arm did not move"
    # per-tick steps never exceed the velocity limit
    vmax = np.array([j.limits.max_velocity for j in joints])
    steps = np.abs(np.diff(commanded[ok], axis=0))
    assert np.all(steps <= vmax / 30.0 * 1.5 + 1e-9)  # 30 Hz; one skipped tick allowed


def test_report_is_written(demo_run: tuple[dict, Path]) -> None:
    _, report = demo_run
    for name in (
        "summary.json",
        "trajectory.png",
        "latency.png",
        "dataset/meta/info.json",
        "dataset/meta/stats.json",
        "dataset/meta/tasks.parquet",
        "dataset/meta/episodes/chunk-000/file-000.parquet",
        "dataset/data/chunk-000/file-000.parquet",
        "dataset/videos/observation.images.face_view/chunk-000/file-000.mp4",
        "dataset/wall_runtime/chunks_000000.parquet",
    ):
        assert (report / name).exists(), name
    summary = json.loads((report / "summary.json").read_text())
    assert summary["counters"]["ticks"] > 100


def test_the_recording_opens_with_lerobots_reader(demo_run: tuple[dict, Path]) -> None:
    """LeRobot's own LeRobotDataset reads the episode: fps, one frame per tick, the features, the
    video frames decoded at each frame's timestamp, the instruction as the task."""
    summary, report = demo_run
    from wall_runtime.interop import torchvision_cpu

    torchvision_cpu.install()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/demo", root=report / "dataset")
    ticks = summary["counters"]["ticks"]
    assert ds.fps == 30 and ds.num_episodes == 1 and ds.num_frames == ticks
    assert ds.meta.camera_keys == ["observation.images.face_view", "observation.images.left_wrist_view"]
    joints = [j.name for j in load_robot(DEFAULT_ROBOT).joints]
    assert ds.features["observation.state"]["names"] == joints
    assert tuple(ds.features["action"]["shape"]) == (len(joints),)
    first, last = ds[0], ds[ticks - 1]
    assert last["frame_index"].item() == ticks - 1
    assert abs(last["timestamp"].item() - (ticks - 1) / 30) < 1e-5
    for item in (first, last):
        assert tuple(item["observation.images.face_view"].shape) == (3, 224, 224)
        assert item["task"] == "pick up the red cube and place it in the bowl"
    # the picture changes over the episode (the arm moves in view): the frames are not one image
    assert (first["observation.images.face_view"] - last["observation.images.face_view"]).abs().max() > 0.05
    # the measured joints come back as recorded
    episode = Episode.load(report / "dataset")
    np.testing.assert_allclose(
        last["observation.state"].numpy(), episode.ticks["measured"][-1].astype(np.float32), atol=0
    )
    assert ds.meta.stats["observation.images.face_view"]["mean"].shape == (3, 1, 1)


def test_the_recording_replays_to_the_same_commands(demo_run: tuple[dict, Path]) -> None:
    _, report = demo_run
    result = replay_dry(Episode.load(report / "dataset"))
    assert result.identical, (result.max_abs_diff, result.nan_mismatches)
    assert result.max_abs_diff == 0.0 and result.chunks >= 3
    out = CliRunner().invoke(app, ["replay", str(report / "dataset"), "--episode", "0"])
    assert out.exit_code == 0, out.output


def test_replay_notices_a_tampered_recording(demo_run: tuple[dict, Path], tmp_path: Path) -> None:
    _, report = demo_run
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    copy = tmp_path / "dataset"
    shutil.copytree(report / "dataset", copy)
    path = copy / "wall_runtime" / "chunks_000000.parquet"
    table = pq.read_table(path)
    actions = table.column("actions").combine_chunks()
    flat = actions.flatten().to_numpy().copy()
    width = actions.type.list_size
    flat[width : 2 * width] += 0.05  # the second chunk, a little off
    table = table.set_column(
        table.column_names.index("actions"),
        "actions",
        pa.FixedSizeListArray.from_arrays(pa.array(flat), width),
    )
    pq.write_table(table, path)
    result = replay_dry(Episode.load(copy))
    assert not result.identical and result.max_abs_diff > 1e-4


def test_the_demo_runs_the_bimanual_on_a_05_checkpoint_through_the_ee_edge(tmp_path: Path) -> None:
    """Wall-OSS-0.5's layout (relative position + relative 6D per arm, state position + 6D): every
    chunk is composed onto the observation's poses, solved by IK per waypoint and executed; the
    recording holds the joint chunks after the edge and replays to the same commands."""
    summary = run_demo(
        DemoOptions(
            robot="sim_bimanual",
            variant="0.5",
            duration=5.0,
            live=False,
            report=tmp_path / "report",
        )
    )
    assert summary["policy"]["variant"] == "0.5"
    assert summary["counters"]["chunks_received"] >= 2, summary["counters"]
    edge = summary["model_edge"]["interventions"]
    assert edge.get("chunks_dropped", 0) < summary["counters"]["chunks_received"], edge
    episode = Episode.load(Path(summary["report"]) / "dataset")
    commanded = episode.ticks["commanded"]
    moved = np.nanmax(commanded, axis=0) - np.nanmin(commanded, axis=0)
    assert moved[:6].max() > 0.01 and moved[7:13].max() > 0.01  # both arms followed their EE targets
    joints = load_robot("sim_bimanual").joints
    assert episode.chunks["actions"].shape[-1] == len(joints)  # joint chunks, not the model's layout
    result = replay_dry(episode)
    assert result.identical and result.max_abs_diff == 0.0, (result.max_abs_diff, result.nan_mismatches)


def _legacy_npz(episode: Episode, folder: Path) -> Path:
    """The recording in the npz layout older versions wrote (with pictures made up per observation)."""
    folder.mkdir(parents=True)
    t = episode.ticks
    np.savez_compressed(folder / "ticks.npz", **t)
    np.savez_compressed(folder / "chunks.npz", **episode.chunks)
    obs = episode.observations
    k = len(obs["tick"])
    pictures = np.zeros((k, 48, 64, 3), dtype=np.uint8)
    pictures[:] = (np.arange(k, dtype=np.uint8) * 20)[:, None, None, None]
    np.savez_compressed(folder / "observations.npz", **obs, **{"image.face_view": pictures})
    meta = {k: v for k, v in episode.meta.items() if k not in ("episode_index", "fps", "interventions")}
    meta.update(format=1, robot="sim_arm", instruction=episode.meta["task"])
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_a_legacy_npz_recording_converts_to_a_dataset_episode(
    demo_run: tuple[dict, Path], tmp_path: Path
) -> None:
    _, report = demo_run
    recorded = Episode.load(report / "dataset")
    legacy = _legacy_npz(recorded, tmp_path / "episode")
    assert replay_dry(Episode.load(legacy)).identical
    out = CliRunner().invoke(app, ["convert-recording", str(legacy), str(tmp_path / "converted")])
    assert out.exit_code == 0, out.output
    converted = Episode.load(tmp_path / "converted")
    result = replay_dry(converted)
    assert result.identical and result.max_abs_diff == 0.0
    np.testing.assert_array_equal(converted.ticks["commanded"], recorded.ticks["commanded"])

    from wall_runtime.interop import torchvision_cpu

    torchvision_cpu.install()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/converted", root=tmp_path / "converted")
    assert ds.num_frames == recorded.num_ticks and ds.meta.camera_keys == ["observation.images.face_view"]
    # each frame shows the latest observation's picture: the last one here (value 20 * (k - 1))
    last = ds[ds.num_frames - 1]["observation.images.face_view"]
    k = len(recorded.observations["tick"])
    assert abs(float(last.mean()) * 255 - 20 * (k - 1) % 256) < 3
