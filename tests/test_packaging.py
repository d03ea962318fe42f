"""The built wheel works away from the checkout: robots found by name, reports under ./runs.

The wheel is installed with ``--no-deps`` into a fresh virtual environment outside the checkout; the
dependencies (torch, MuJoCo, ...) are made visible to it by a ``.pth`` line naming the test
interpreter's own site-packages, so the test does not download torch again. Only plain paths from
that line are added: the checkout's editable install (a ``.pth`` import hook there) is not run, so
``wall_runtime`` can only come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from wall_runtime.robot_files import RobotNotFoundError, bundled_robots, resolve_robot

ROOT = Path(__file__).resolve().parents[1]


def test_robots_resolve_by_name_folder_and_file(tmp_path, monkeypatch):
    assert {"sim_arm", "sim_base", "sim_bimanual", "so100"} <= set(bundled_robots())
    assert "_template" not in bundled_robots()
    shipped = resolve_robot("sim_arm")
    assert shipped.name == "robot.yaml" and shipped.parent.name == "sim_arm"
    assert resolve_robot(shipped.parent) == shipped
    assert resolve_robot(shipped) == shipped
    # your own ./robots/NAME wins over a shipped robot of the same name
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "robots" / "sim_arm" / "robot.yaml"
    own.parent.mkdir(parents=True)
    own.write_text(shipped.read_text())
    assert resolve_robot("sim_arm").resolve() == own
    with pytest.raises(RobotNotFoundError, match=r"nope: no such robot .*shipped robots: .*sim_arm"):
        resolve_robot("nope")
    with pytest.raises(RobotNotFoundError, match=r"no such robot\.yaml"):
        resolve_robot("missing/robot.yaml")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment outside the checkout with the wheel built from it installed."""
    base = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools' build/ and egg-info folders stay out of the checkout, and no stale
    # build/ left there can slip old files into the wheel
    source = base / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "runs", "artifacts", ".cache", "__pycache__", "benchmarks"
        ),
    )
    wheels = base / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            wheels,
            source,
        ],
        check=True,
        capture_output=True,
        cwd=base,
    )
    (wheel,) = wheels.glob("wall_runtime-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # installed before the dependencies become visible, and with nothing from the checkout on the
    # path: pip must not take the checkout's (editable) wall-runtime for an installed one
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel],
        check=True,
        capture_output=True,
        env=_clean_env(),
    )
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from the checkout
    env.setdefault("MUJOCO_GL", "osmesa")
    env.setdefault("PYOPENGL_PLATFORM", "osmesa")
    return env


def _run(venv: Path, cwd: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [venv / "bin" / "wall-runtime", *args],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_wheel_runs_demo_and_check_robot_from_another_directory(installed, tmp_path):
    where = subprocess.run(
        [installed / "bin" / "python", "-c", "import wall_runtime; print(wall_runtime.__file__)"],
        cwd=tmp_path,
        env=_clean_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(str(installed)), where  # the wheel's copy, not the checkout's

    check = _run(installed, tmp_path, "check-robot", "sim_arm", "--json", "check.json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads((tmp_path / "check.json").read_text())["passed"]

    demo = _run(installed, tmp_path, "demo", "--robot", "sim_arm", "--duration", "5", "--no-live")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    (report,) = (tmp_path / "runs").glob("demo-*")
    summary = json.loads((report / "summary.json").read_text())
    assert summary["counters"]["chunks_received"] > 0

    # the pick task (its robot and sim_pick's scene are package data) with the random-weight baseline
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    args = ("demo", "--random-weights", "--seeds", "100000", "--time-limit-s", "2", "--no-live")
    task = _run(installed, task_dir, *args)
    assert task.returncode == 0, task.stdout[-3000:] + task.stderr[-3000:]
    assert "seed 100000 'pick up the" in task.stderr and "success " in task.stderr, task.stderr[-3000:]
    (report,) = (task_dir / "runs").glob("demo-*")
    assert json.loads((report / "summary.json").read_text())["episodes"][0]["seed"] == 100000

    # the trained demo checkpoint ships in the wheel when the checkout has it (demo's default)
    found = subprocess.run(
        [
            installed / "bin" / "python",
            "-c",
            "from wall_runtime.e2e.task_demo import trained_checkpoint as t; print(t())",
        ],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
    )
    if (ROOT / "checkpoints" / "pick_cube" / "config.json").is_file():
        assert found.returncode == 0 and found.stdout.startswith(str(installed)), found.stderr[-2000:]
    else:
        assert "no trained demo checkpoint checkpoints/pick_cube/" in found.stderr
