"""`wall-runtime run`: the dry run drives the whole loop; missing parts give a clear error."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from wall_runtime.cli import app


def test_dry_run_writes_a_run_log_and_a_plot(tmp_path: Path) -> None:
    log_json, plot = tmp_path / "run.json", tmp_path / "run.png"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--dry-run",
            "--duration",
            "1.0",
            "--smoother",
            "rtc",
            "--estop-file",
            str(tmp_path / "estop"),
            "--log-json",
            str(log_json),
            "--plot",
            str(plot),
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(log_json.read_text())
    assert record["counters"]["ticks"] >= 90
    assert record["counters"]["chunks_received"] >= 2 and record["splices"]
    assert record["watchdog_trips"] == 0 and record["estop_triggers"] == 0
    assert plot.stat().st_size > 10_000
    # every joint of the dry-run robot (3 arm joints, gripper, base) has its panel: 1.8 in per
    # panel + 0.8 in at 110 dpi (the plot once stopped after the first four)
    from PIL import Image

    with Image.open(plot) as image:
        assert image.size[1] == round((1.8 * 5 + 0.8) * 110)


def test_plot_run_draws_every_joint(tmp_path: Path) -> None:
    from wall_runtime.control.commands import dry_run_setup
    from wall_runtime.control.report import plot_run
    from wall_runtime.e2e.assemble import LoopOptions, assemble_loop

    setup, source = dry_run_setup("plot")
    setup.adapter.connect()
    try:
        assert setup.observe is not None
        loop = assemble_loop(setup.adapter, source, setup.observe, setup.safety, LoopOptions(safe_pose=False))
        loop.run(duration=0.3)
    finally:
        setup.close()
        setup.adapter.disconnect()
    drawn = plot_run(loop, tmp_path / "run.png")
    assert drawn == [j.name for j in setup.adapter.spec.joints] and len(drawn) == 5
    assert plot_run(loop, tmp_path / "two.png", joints=[0, 4]) == ["joint1", "base_x"]


def test_disabling_a_filter_warns_and_finite_cannot_be_disabled(tmp_path: Path) -> None:
    args = ["run", "--dry-run", "--duration", "0.2", "--no-safe-pose", "--estop-file", str(tmp_path / "e")]
    result = CliRunner().invoke(app, [*args, "--unsafe-disable-filter", "jerk"])
    assert result.exit_code == 0, result.output
    assert "DISABLED" in result.output and "jerk" in result.output
    result = CliRunner().invoke(app, [*args, "--unsafe-disable-filter", "finite"])
    assert result.exit_code != 0


def test_an_existing_estop_file_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "estop").touch()
    result = CliRunner().invoke(
        app, ["run", "--dry-run", "--duration", "0.2", "--estop-file", str(tmp_path / "estop")]
    )
    assert result.exit_code == 2 and "e-stop file" in result.output


def test_without_the_robot_loader_the_command_says_what_is_missing(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", "--robot", str(tmp_path / "robot.yaml"), "--server", "tcp://127.0.0.1:5555"]
    )
    try:
        import wall_runtime.adapters.config  # noqa: F401
    except ImportError:
        assert result.exit_code == 2
        assert "load_robot" in result.output and "--dry-run" in result.output
