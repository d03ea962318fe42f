"""The LeRobot v3 recorder on its own (no simulator): `run --dry-run --record` appends episodes to
one dataset that LeRobot's reader opens; a dataset of other features is refused; a recorder that
fails never blocks the loop and says why when closed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wall_runtime.cli import app
from wall_runtime.recording.lerobot_v3 import DatasetError, DatasetLayout, read_episode
from wall_runtime.recording.recorder import LeRobotRecorder
from wall_runtime.recording.subscriber import TickRecord
from wall_runtime.types import ActionChunk


def _dry_run(tmp_path: Path, dataset: Path, instruction: str) -> dict:
    log = tmp_path / f"{instruction}.json"
    args = ["run", "--dry-run", "--duration", "0.5", "--no-safe-pose", "--no-keys", "-i", instruction]
    args += ["--estop-file", str(tmp_path / "estop"), "--record", str(dataset), "--log-json", str(log)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    return json.loads(log.read_text())


def test_dry_runs_append_episodes_that_lerobot_reads(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    first = _dry_run(tmp_path, dataset, "wave")
    second = _dry_run(tmp_path, dataset, "point")
    n1, n2 = first["counters"]["ticks"], second["counters"]["ticks"]
    info = json.loads((dataset / "meta" / "info.json").read_text())
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, n1 + n2, 2)
    assert info["fps"] == 100 and info["video_path"] is None  # the dry run has no cameras

    from wall_runtime.interop import torchvision_cpu

    torchvision_cpu.install()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/dry", root=dataset)
    assert (ds.num_episodes, ds.num_frames, ds.fps) == (2, n1 + n2, 100)
    assert ds[0]["task"] == "wave" and ds[n1]["task"] == "point"
    assert ds[n1]["episode_index"].item() == 1 and ds[n1]["frame_index"].item() == 0
    # the chunks and loop settings are kept beside, per episode
    ep = read_episode(dataset, 1)
    assert ep.chunks["actions"].ndim == 3 and len(ep.chunks["tick"]) == second["counters"]["chunks_received"]
    assert ep.meta["control_hz"] == 100.0 and ep.meta["summary"]["counters"]["ticks"] == n2
    commanded = ep.frames["wall.commanded"]
    ok = np.all(np.isfinite(commanded), axis=1)
    assert ok.sum() > 0.5 * n2
    np.testing.assert_array_equal(ep.frames["action"][ok], commanded[ok].astype(np.float32))
    stats = json.loads((dataset / "meta" / "stats.json").read_text())
    assert stats["action"]["count"] == [n1 + n2]


def _layout(views: dict[str, tuple[int, int]] | None = None) -> DatasetLayout:
    return DatasetLayout(fps=10, joint_names=("a", "b"), views=views or {"front": (8, 8)})


def _tick(k: int) -> TickRecord:
    q = np.array([0.1 * k, -0.1 * k])
    return TickRecord(k, 0.1 * k, q, q, q, "ok", ())


def test_a_dataset_of_other_features_is_refused(tmp_path: Path) -> None:
    rec = LeRobotRecorder(
        tmp_path / "ds", _layout(), "t", images=lambda: {"front": np.zeros((8, 8, 3), np.uint8)}
    )
    for k in range(1, 4):
        rec.on_tick(_tick(k))
    rec.close()
    other = LeRobotRecorder(tmp_path / "ds", _layout({"front": (16, 16)}), "t", images=lambda: None)
    other.on_tick(_tick(1))
    with pytest.raises(DatasetError, match="fps/features differ"):
        other.close()
    assert json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())["total_episodes"] == 1


def test_a_failing_recorder_never_blocks_the_loop_and_says_why(tmp_path: Path) -> None:
    wrong = np.zeros((4, 4, 3), np.uint8)  # not the 8x8 the layout announced
    rec = LeRobotRecorder(tmp_path / "ds", _layout(), "t", images=lambda: {"front": wrong})
    for k in range(1, 50):  # the loop's calls return at once even though the writer has failed
        rec.on_chunk(k, ActionChunk(actions=np.zeros((4, 2), np.float32), stamp=0.0, dt=0.1, seq=k))
        rec.on_tick(_tick(k))
    with pytest.raises(DatasetError, match=r"observation.images.front: image \(4, 4, 3\)"):
        rec.close()


def test_replay_and_convert_name_what_is_wrong(tmp_path: Path) -> None:
    def run(*args: str) -> tuple[int, str]:
        out = CliRunner().invoke(app, list(args))
        return out.exit_code, " ".join(out.output.split())  # rich wraps long lines

    code, text = run("replay", str(tmp_path / "nothing"))
    assert code == 2 and "not an episode recording" in text
    _dry_run(tmp_path, tmp_path / "ds", "wave")
    code, text = run("replay", str(tmp_path / "ds"), "--episode", "3")
    assert code == 2 and "no episode 3 (it has 1)" in text
    code, text = run("convert-recording", str(tmp_path / "ds"), str(tmp_path / "other"))
    assert code == 2 and "already a LeRobot dataset" in text
