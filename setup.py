"""Packaging beyond what pyproject.toml can declare: the top-level ``robots/`` folder ships inside
the package as ``wall_runtime.robots`` (package data), so an installed wheel finds its robots by
name. Everything else lives in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["wall_runtime", "wall_runtime.*"]), "wall_runtime.robots"],
    package_dir={"wall_runtime.robots": "robots"},
)
