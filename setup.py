"""Packaging beyond what pyproject.toml can declare: the top-level ``robots/`` folder ships inside
the package as ``wall_runtime.robots`` (package data), so an installed wheel finds its robots by
name; the top-level ``checkpoints/`` folder (the trained demo checkpoint, ``checkpoints/pick_cube``)
ships as ``wall_runtime.checkpoints`` the same way, so ``wall-runtime demo`` finds it from a wheel.
Everything else lives in pyproject.toml."""

from pathlib import Path

from setuptools import find_packages, setup

data = {"wall_runtime.robots": "robots"}
if (Path(__file__).resolve().parent / "checkpoints").is_dir():  # a checkout without it still builds
    data["wall_runtime.checkpoints"] = "checkpoints"

setup(
    packages=[*find_packages(include=["wall_runtime", "wall_runtime.*"]), *data],
    package_dir=data,
)
