"""The demo, headless, for a few seconds: chunks flow, the arm stays inside its limits, the report is
written and the recording replays to the same commands."""

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
    ticks = np.load(report / "episode" / "ticks.npz")
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
    for name in ("summary.json", "trajectory.png", "latency.png", "episode/meta.json", "episode/chunks.npz"):
        assert (report / name).exists(), name
    summary = json.loads((report / "summary.json").read_text())
    assert summary["counters"]["ticks"] > 100
    obs = np.load(report / "episode" / "observations.npz")
    assert obs["image.face_view"].dtype == np.uint8 and obs["image.face_view"].ndim == 4


def test_the_recording_replays_to_the_same_commands(demo_run: tuple[dict, Path]) -> None:
    _, report = demo_run
    result = replay_dry(Episode.load(report / "episode"))
    assert result.identical, (result.max_abs_diff, result.nan_mismatches)
    out = CliRunner().invoke(app, ["replay", str(report / "episode")])
    assert out.exit_code == 0, out.output


def test_replay_notices_a_tampered_recording(demo_run: tuple[dict, Path], tmp_path: Path) -> None:
    _, report = demo_run
    import shutil

    copy = tmp_path / "episode"
    shutil.copytree(report / "episode", copy)
    with np.load(copy / "chunks.npz") as z:
        chunks = {k: z[k] for k in z.files}
    chunks["actions"][1] += 0.05
    np.savez_compressed(copy / "chunks.npz", **chunks)
    result = replay_dry(Episode.load(copy))
    assert not result.identical and result.max_abs_diff > 1e-4


def test_the_demo_runs_the_bimanual_on_a_05_checkpoint_through_the_ee_edge(tmp_path: Path) -> None:
    """Wall-OSS-0.5's layout (relative position + relative 6D per arm, state position + 6D): every
    chunk is composed onto the observation's poses, solved by IK per waypoint and executed."""
    from wall_runtime.e2e.demo import REPO_ROOT

    summary = run_demo(
        DemoOptions(
            robot=REPO_ROOT / "robots" / "sim_bimanual" / "robot.yaml",
            variant="0.5",
            duration=5.0,
            live=False,
            record_images=False,
            report=tmp_path / "report",
        )
    )
    assert summary["policy"]["variant"] == "0.5"
    assert summary["counters"]["chunks_received"] >= 2, summary["counters"]
    edge = summary["model_edge"]["interventions"]
    assert edge.get("chunks_dropped", 0) < summary["counters"]["chunks_received"], edge
    ticks = np.load(Path(summary["report"]) / "episode" / "ticks.npz")
    commanded = ticks["commanded"]
    moved = np.nanmax(commanded, axis=0) - np.nanmin(commanded, axis=0)
    assert moved[:6].max() > 0.01 and moved[7:13].max() > 0.01  # both arms followed their EE targets
