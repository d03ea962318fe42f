"""`cameras snapshot --robot NAME` renders the shipped simulated robots' cameras."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from wall_runtime.cli import app
from wall_runtime.robot_files import bundled_robots, resolve_robot


def _sims() -> list[str]:
    return [r for r in bundled_robots() if "type: simulated" in resolve_robot(r).read_text()]


def test_every_simulated_robot_with_cameras_is_covered() -> None:
    assert {"sim_arm", "sim_base", "sim_bimanual"} <= set(_sims())


@pytest.mark.parametrize("robot", _sims())
def test_snapshot_renders_a_simulated_robot(robot: str, tmp_path: Path) -> None:
    out = tmp_path / "snap.png"
    result = CliRunner().invoke(
        app, ["cameras", "snapshot", "--robot", robot, "--out", str(out), "--seconds", "0.5"]
    )
    assert result.exit_code == 0, result.output
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 100
    # rendered pixels, not an empty mosaic: the scene has many distinct colours
    assert len({tuple(px) for px in image[::7, ::7].reshape(-1, 3)}) > 50
