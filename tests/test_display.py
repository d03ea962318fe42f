"""The live ``--display`` view (rerun): ``demo``, ``run`` and ``replay`` write a .rrd with
``--display-save`` that rerun's own reader opens, with the cameras, every joint, the chunk
boundaries and the EE targets in it; the view and the recorder both hear the loop (a fan-out);
rerun is imported only when asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wall_runtime.adapters.config import load_robot
from wall_runtime.cli import app
from wall_runtime.e2e.demo import DEFAULT_ROBOT
from wall_runtime.e2e.recording import Episode

pytest.importorskip("rerun", reason="rerun-sdk is not installed (the display extra)")
pytestmark = pytest.mark.filterwarnings("ignore:numpy 1 detected:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]


def rrd_rows(path: Path) -> Counter[str]:
    """Rows per entity (temporal data only), read back with rerun's own .rrd reader."""
    from rerun.chunk import RrdReader

    reader = RrdReader(path)
    assert len(reader.recordings()) == 1 and reader.blueprints()  # the data and its layout
    rows: Counter[str] = Counter()
    for chunk in reader.stream():
        if not chunk.is_static:
            rows[chunk.entity_path.lstrip("/")] += chunk.num_rows
    return rows


def blueprint_origins(path: Path) -> set[str]:
    """The views' origins in the layout the .rrd holds."""
    from rerun.chunk import RrdReader

    reader = RrdReader(path)
    origins: set[str] = set()
    assert len(reader.blueprints()) == 1  # laid out once, with the cameras known from the start
    for chunk in reader.stream(store=reader.blueprints()[0]):
        batch = chunk.to_record_batch()
        for name in batch.schema.names:
            if name.endswith("_origin"):  # ViewBlueprint:space_origin
                origins.update(o for row in batch.column(name).to_pylist() if row for o in row)
    return origins


@pytest.fixture(scope="module")
def demo_view(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("display")
    rrd, report = root / "demo.rrd", root / "report"
    result = CliRunner().invoke(
        app,
        [
            "demo",
            "--robot",
            "sim_arm",
            "--duration",
            "3",
            "--no-live",
            "--display-save",
            str(rrd),
            "--report",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    return rrd, report


@pytest.mark.slow
def test_demo_display_has_cameras_joints_chunks_and_ee_targets(demo_view: tuple[Path, Path]) -> None:
    rrd, report = demo_view
    rows = rrd_rows(rrd)
    ticks = Episode.load(report / "dataset").num_ticks
    assert ticks > 30
    # the recorder and the view both heard every tick (the fan-out), one row per joint per tick
    for joint in load_robot(DEFAULT_ROBOT).joints:
        assert rows[f"joints/{joint.name}"] == ticks, (joint.name, rows)
    # the observation images sent to the policy, per model view of sim_arm
    for view in ("face_view", "left_wrist_view"):
        assert rows[f"cameras/{view}"] > 0, rows
    assert rows["cameras/face_view"] == rows["cameras/left_wrist_view"]
    # a row per chunk boundary, and sim_arm's kinematics gives the chunk's EE path and the EE each tick
    assert rows["chunks/seq"] > 0 and rows["world/ee_target"] == rows["chunks/seq"]
    assert rows["world/ee_measured"] == ticks
    assert rows["safety/interventions"] == ticks
    # the layout: a plot per joint, a view per camera, the EE in 3D, chunks, interventions, events
    joints = {f"joints/{j.name}" for j in load_robot(DEFAULT_ROBOT).joints}
    cameras = {"cameras/face_view", "cameras/left_wrist_view"}
    assert blueprint_origins(rrd) == joints | cameras | {"world", "chunks", "safety", "events"}


@pytest.mark.slow
def test_replay_display_shows_the_replayed_run(demo_view: tuple[Path, Path], tmp_path: Path) -> None:
    _, report = demo_view
    rrd = tmp_path / "replay.rrd"
    result = CliRunner().invoke(app, ["replay", str(report / "dataset"), "--display-save", str(rrd)])
    assert result.exit_code == 0, result.output
    assert "identical commands" in result.output
    rows = rrd_rows(rrd)
    episode = Episode.load(report / "dataset")
    # a dry replay's view is lossless: every replayed tick, every recorded chunk
    assert rows["joints/waist"] == episode.num_ticks
    assert rows["chunks/seq"] == len(episode.chunks["tick"])
    # the images of every replayed request, decoded from the dataset's videos
    sent = len(episode.observations["tick"])
    assert sent > 0 and rows["cameras/face_view"] == rows["cameras/left_wrist_view"] == sent


def test_run_dry_run_display_has_every_joint(tmp_path: Path) -> None:
    rrd = tmp_path / "run.rrd"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--dry-run",
            "--duration",
            "1.0",
            "--no-safe-pose",
            "--estop-file",
            str(tmp_path / "estop"),
            "--display-save",
            str(rrd),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = rrd_rows(rrd)
    for name in ("joint1", "joint2", "joint3", "gripper", "base_x"):
        assert rows[f"joints/{name}"] > 50, rows
    assert rows["chunks/seq"] >= 2
    assert "world/ee_target" not in rows  # the dry-run arm has no kinematics: no EE shown


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rerun_is_imported_only_for_the_display(tmp_path: Path) -> None:
    code = f"""
import sys
from typer.testing import CliRunner
from wall_runtime.cli import app
r = CliRunner().invoke(app, ["run", "--dry-run", "--duration", "0.3", "--no-safe-pose",
                             "--estop-file", {str(tmp_path / "estop")!r}])
assert r.exit_code == 0, r.output
print("rerun" in sys.modules)
"""
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_without_rerun_the_display_is_a_clear_error(tmp_path: Path) -> None:
    # rerun made unimportable, as on a machine without the display extra
    code = f"""
import sys
sys.modules["rerun"] = None
from typer.testing import CliRunner
from wall_runtime.cli import app
r = CliRunner().invoke(app, ["run", "--dry-run", "--duration", "0.3", "--estop-file",
                             {str(tmp_path / "estop")!r}, "--display-save", {str(tmp_path / "x.rrd")!r}])
print(r.exit_code)
print(r.output)
"""
    out = _python(code)
    assert out.returncode == 0, out.stderr
    code_line, _, output = out.stdout.partition("\n")
    assert code_line == "2", out.stdout
    assert "rerun-sdk" in output and "wall-runtime[display]" in output


def test_display_without_a_screen_serves_on_loopback_or_says_the_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from wall_runtime.recording.rerun_view import VIEW_PORT

    if sys.platform in ("darwin", "win32"):
        pytest.skip("there is always a screen: --display spawns a viewer")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    args = ["run", "--dry-run", "--duration", "0.5", "--no-safe-pose", "--display"]
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", VIEW_PORT))
        except OSError:
            pytest.skip(f"port {VIEW_PORT} is in use on this machine")
        taken.listen()
        result = CliRunner().invoke(app, [*args, "--estop-file", str(tmp_path / "e1")])
    assert result.exit_code == 2 and f"port {VIEW_PORT} is in use" in result.output
    result = CliRunner().invoke(app, [*args, "--estop-file", str(tmp_path / "e2")])
    assert result.exit_code == 0, result.output
    assert f"rerun+http://127.0.0.1:{VIEW_PORT}/proxy" in " ".join(result.output.split())


@pytest.mark.slow
def test_task_demo_display_shows_the_task_and_summarises_interventions(tmp_path: Path) -> None:
    """On the pick task the view has a task panel (what the policy was asked, the episode, its
    outcome), and the safety chain's interventions as a count per filter with an event only when the
    set of filters acting changes, not an event every tick."""
    rrd, report = tmp_path / "task.rrd", tmp_path / "report"
    args = ["demo", "--random-weights", "--seeds", "100000", "--time-limit-s", "2", "--no-live"]
    result = CliRunner().invoke(app, [*args, "--display-save", str(rrd), "--report", str(report)])
    assert result.exit_code == 0, result.output
    rows = rrd_rows(rrd)
    episode = Episode.load(report / "dataset")
    ticks = episode.num_ticks
    status = list(episode.ticks["status"])
    changes = sum(a != b for a, b in zip(["ok", *status], status, strict=False))
    assert ticks > 10 and rows["joints/waist"] == ticks
    assert rows["task"] >= 2  # the episode's start and its outcome
    assert rows["cameras/face_view"] > 0 and rows["chunks/seq"] > 0
    assert rows["safety/interventions"] == ticks
    # per filter: one row per tick it acted on; events: chunks, status changes, the task's start and
    # outcome, and safety only when the set of filters acting changes (at most one per tick acted on)
    acted = sum(v for k, v in rows.items() if k.startswith("safety/") and k != "safety/interventions")
    assert rows["events"] <= rows["chunks/seq"] + changes + 2 + acted
    assert "task" in blueprint_origins(rrd)


def test_task_view_summarises_interventions_by_filter(tmp_path: Path) -> None:
    """Ticks with interventions, as the loop reports them: the task view logs a count per filter
    each tick a filter acts, an event only when the set acting changes, and the task panel."""
    import numpy as np

    from wall_runtime.recording.rerun_view import DisplayOptions, RerunView
    from wall_runtime.recording.subscriber import TickRecord
    from wall_runtime.robot import JointSpec, RobotSpec

    joints = (JointSpec("a", "revolute", "rad"), JointSpec("b", "revolute", "rad"))
    spec = RobotSpec(name="two", joints=joints, control_hz=10.0)
    rrd = tmp_path / "task.rrd"
    view = RerunView(spec, DisplayOptions(save=rrd), task=True)
    view.show_task("## 'pick up the red cube'", "episode 1: seed 100000")
    acting = [("step",)] * 10 + [()] * 5 + [("step", "velocity")] * 4 + [()] * 3
    for tick, filters in enumerate(acting):
        q = np.zeros(2)
        view.on_tick(TickRecord(tick, tick * 0.1, q, q, q, "ok", filters))
    view.show_task("success", "seed 100000: success in 1.0 s")
    view.close()
    rows = rrd_rows(rrd)
    assert rows["safety/step"] == 14 and rows["safety/velocity"] == 4
    assert rows["safety/interventions"] == len(acting)
    # 2 task events + onset, clear, onset of another set, clear: not one per tick (14)
    assert rows["events"] == 6, rows
    assert rows["task"] == 2
    assert "task" in blueprint_origins(rrd)
