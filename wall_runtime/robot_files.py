"""Finding a robot's folder: a path, a folder under ``./robots``, or one shipped with the package.

The repository's top-level ``robots/`` folder is installed as package data under the name
``wall_runtime.robots`` (see ``setup.py``; a namespace package of data files), so ``--robot sim_arm`` works from any directory once the
wheel is installed. Run from a checkout (``PYTHONPATH`` pointing at it, nothing installed), the
same folder is found beside the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROBOT_FILE = "robot.yaml"


class RobotNotFoundError(FileNotFoundError):
    """``--robot`` names neither a robot.yaml, nor a folder holding one, nor a known robot."""


def bundled_robots_dir() -> Path | None:
    """The folder of robots shipped with the package (None if this install has none)."""
    try:
        spec = importlib.util.find_spec("wall_runtime.robots")
    except ModuleNotFoundError:
        spec = None
    # a folder of data, not code: a namespace package, whose locations are real directories (MuJoCo
    # and the camera readers need file system paths, which a wheel install always gives)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if Path(location).is_dir():
            return Path(location)
    checkout = Path(__file__).resolve().parent.parent / "robots"
    return checkout if checkout.is_dir() else None


def bundled_robots() -> list[str]:
    """Names of the shipped robots (folders with a robot.yaml; ``_template`` excluded)."""
    root = bundled_robots_dir()
    if root is None:
        return []
    return sorted(p.name for p in root.iterdir() if (p / ROBOT_FILE).is_file() and not p.name.startswith("_"))


def _is_name(spec: str) -> bool:
    return bool(spec) and "/" not in spec and "\\" not in spec and not spec.endswith((".yaml", ".yml"))


def resolve_robot(spec: str | Path) -> Path:
    """The robot.yaml that ``spec`` means.

    In order: ``spec`` itself (a robot.yaml file or a folder holding one); for a bare name,
    ``./robots/NAME/robot.yaml`` in the current directory (your own robots win), then the shipped
    ``NAME``. The path returned is absolute. Anything else is a :class:`RobotNotFoundError` naming what was tried.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path.resolve()
    if path.is_dir() and (path / ROBOT_FILE).is_file():
        return (path / ROBOT_FILE).resolve()
    text = str(spec)
    if _is_name(text):
        local = Path("robots") / text / ROBOT_FILE
        if local.is_file():
            return local.resolve()
        root = bundled_robots_dir()
        if root is not None and (root / text / ROBOT_FILE).is_file():
            return root / text / ROBOT_FILE
        known = ", ".join(bundled_robots()) or "none installed"
        raise RobotNotFoundError(
            f"{text}: no such robot (not a file, not ./robots/{text}/{ROBOT_FILE}; shipped robots: {known})"
        )
    raise RobotNotFoundError(f"{path}: no such {ROBOT_FILE}")
