"""``wall-runtime demo`` on the pick task, end to end: a policy server process with a checkpoint of
the demo's layout (the random-weight tiny one here; the trained ``checkpoints/pick_cube`` too when
the checkout has it), one short episode on a held-out seed through the whole runtime on the real
clock, the per-episode line (what the policy was asked, the outcome), ``success k/N`` and the
report (per-episode instruction, seed, success, time, interventions by filter; plots; dataset)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wall_runtime.cli import app
from wall_runtime.e2e import task_demo
from wall_runtime.e2e.task_demo import CheckpointMissingError, episode_line, trained_checkpoint

LINE = re.compile(
    r"seed (\d+) 'pick up the (red|green|blue) cube': "
    r"(success in \d+\.\d s|failed \(best lift \d+\.\d\d m\))"
)


def flat(text: str) -> str:
    """The output with rich's wrapping undone."""
    return " ".join(text.split())


def run_demo_cli(*args: str) -> tuple[str, int]:
    result = CliRunner().invoke(app, ["demo", "--no-live", *args])
    return flat(result.output), result.exit_code


@pytest.fixture(scope="module")
def random_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    report = tmp_path_factory.mktemp("task-demo") / "report"
    out, code = run_demo_cli(
        "--random-weights", "--seeds", "100000", "--time-limit-s", "2", "--report", str(report)
    )
    assert code == 0, out
    return out, report


@pytest.mark.slow  # ~10 s: a server process and a 2 s episode on the real clock (shared with the next)
def test_the_demo_says_what_the_policy_was_asked_and_how_it_went(random_demo: tuple[str, Path]) -> None:
    out, _ = random_demo
    assert "random-weights" in out  # which policy ran
    lines = LINE.findall(out)
    assert len(lines) == 1 and lines[0][0] == "100000", out
    ok = lines[0][2].startswith("success")
    assert f"success {int(ok)}/1" in out
    # interventions come as one summary per episode, never a line per joint or tick
    assert out.count("interventions:") == 1
    assert "safety: " not in out  # the safety chain's periodic warnings are quiet while the table runs


@pytest.mark.slow
def test_the_report_has_each_episode_its_plots_and_the_dataset(random_demo: tuple[str, Path]) -> None:
    out, report = random_demo
    summary = json.loads((report / "summary.json").read_text())
    assert summary["command"] == "demo" and summary["robot"] == "pick_cube_task"
    assert summary["checkpoint_kind"] == "random-weights" and summary["clock"] == "real"
    (ep,) = summary["episodes"]
    assert ep["seed"] == 100000
    assert re.fullmatch(r"pick up the (red|green|blue) cube", ep["instruction"])
    assert ep["instruction"] in out
    assert isinstance(ep["success"], bool) and summary["successes"] == int(ep["success"])
    assert (ep["success_time_s"] is not None) == ep["success"]
    assert ep["chunks_received"] >= 1 and ep["link_errors"] == {}
    # at most the 2 s limit (plus the real clock's last moments); less when a loaded machine made the
    # physics thread drop its backlog (the real clock never fast-forwards)
    assert 0.0 < ep["episode_time_s"] < 4.0
    assert isinstance(ep["interventions"], dict) and isinstance(ep["ee_interventions"], dict)
    assert summary["interventions"] == ep["interventions"]
    details = json.loads((report / ep["details"]).read_text())
    assert details["seed"] == 100000 and "splices" in details  # the loop's own record of the episode
    for name in ("lift.png", "episodes/seed-100000/trajectory.png", "dataset/meta/info.json"):
        assert (report / name).is_file(), name
    # the episode was recorded through the runtime with its instruction as the task, success marked
    meta = json.loads((report / "dataset" / "wall_runtime" / "episode_000000.json").read_text())
    assert meta["instruction"] == ep["instruction"] and meta["success"] == ep["success"]


def test_episode_line_formats() -> None:
    from wall_runtime.eval.episode import EpisodeResult

    won = EpisodeResult(100000, True, 2.34, 1, 3.3, 4.0, instruction="pick up the red cube")
    lost = EpisodeResult(
        100001, False, None, 0, 8.0, 9.0, instruction="pick up the blue cube", best_lift_m=0.012
    )
    assert episode_line(won) == "seed 100000 'pick up the red cube': success in 2.3 s"
    assert episode_line(lost) == "seed 100001 'pick up the blue cube': failed (best lift 0.01 m)"


def test_the_trained_checkpoint_is_found_or_its_absence_explained(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "pick_cube").mkdir()
    monkeypatch.setattr(task_demo, "checkpoint_dirs", lambda: [tmp_path])
    with pytest.raises(CheckpointMissingError, match=r"docs/training\.md.*--random-weights"):
        trained_checkpoint()  # a folder without config.json is not a checkpoint
    (tmp_path / "pick_cube" / "config.json").write_text("{}")
    assert trained_checkpoint() == tmp_path / "pick_cube"
    # the command: one clear line, before any server process starts
    monkeypatch.setattr(task_demo, "checkpoint_dirs", lambda: [])
    out, code = run_demo_cli("--seeds", "100000", "--report", str(tmp_path / "r"))
    assert code == 2
    assert "cannot run the demo: no trained demo checkpoint checkpoints/pick_cube/" in out
    assert not (tmp_path / "r").exists()


def test_bad_demo_arguments_are_refused() -> None:
    out, code = run_demo_cli("--random-weights", "--checkpoint", "somewhere")
    assert code == 2 and "give one of them" in out
    out, code = run_demo_cli("--seeds", "x-y")
    assert code == 2 and "--seeds" in out
    out, code = run_demo_cli("--checkpoint", "/nonexistent/ck")
    assert code == 2 and "not a checkpoint folder" in out


@pytest.mark.slow
def test_the_committed_trained_checkpoint_runs_one_seed(tmp_path: Path) -> None:
    try:
        checkpoint = trained_checkpoint()
    except CheckpointMissingError:
        pytest.skip("checkpoints/pick_cube is not in this checkout yet")
    out, code = run_demo_cli("--seeds", "100000", "--report", str(tmp_path / "r"))
    assert code == 0, out
    assert "trained" in out and checkpoint.name in out
    assert len(LINE.findall(out)) == 1 and re.search(r"success [01]/1", out), out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["checkpoint_kind"] == "trained"


def test_the_served_expert_succeeds_and_the_demo_says_so(tmp_path: Path) -> None:
    """The success path: the task's scripted expert served as the policy (``--backend expert``) picks
    up the named cube through the runtime; the line gives the time, the count 1/1. On the simulated
    clock (chunks land at once), so a loaded machine does not decide the outcome."""
    report = tmp_path / "report"
    args = ("--backend", "expert", "--clock", "simulated", "--seeds", "100000")
    out, code = run_demo_cli(*args, "--report", str(report))
    assert code == 0, out
    (line,) = LINE.findall(out)
    assert line[2].startswith("success in "), out
    assert "success 1/1" in out
    summary = json.loads((report / "summary.json").read_text())
    (ep,) = summary["episodes"]
    assert summary["checkpoint_kind"] == "scripted-expert" and summary["successes"] == 1
    assert summary["clock"] == "simulated"
    assert ep["success"] and 0.5 < ep["success_time_s"] < 8.0 and ep["best_lift_m"] >= 0.05
    assert f"success in {ep['success_time_s']:.1f} s" in out
    # it ran on after success (--after-success-s 1 by default): the recording ends holding the cube
    assert ep["episode_time_s"] >= ep["success_time_s"] + 0.9


def test_the_expert_backend_needs_a_task_robot() -> None:
    out, code = run_demo_cli("--robot", "sim_arm", "--backend", "expert")
    assert code == 2 and "needs a task robot" in out
