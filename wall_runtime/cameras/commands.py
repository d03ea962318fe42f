"""Command-line commands of this package (registered by wall_runtime.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
