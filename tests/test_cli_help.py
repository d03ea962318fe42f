"""Every command's --help keeps its text: bracketed help ("[horizon, action_dim]") is not eaten as markup."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from wall_runtime.cli import app


def _commands(group, path: tuple[str, ...] = ()) -> list:
    """(path, command) for the root and every command below it (typer ships its own click)."""
    out = [(path, group)]
    if hasattr(group, "commands"):
        for name, sub in group.commands.items():
            out += _commands(sub, (*path, name))
    return out


COMMANDS = _commands(typer.main.get_command(app))


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "root" for p, _ in COMMANDS])
def test_help_keeps_bracketed_text(path: tuple[str, ...], command) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    texts = [p.help for p in command.params if getattr(p, "help", None)] + [command.help or ""]
    for text in texts:
        for bracketed in re.findall(r"\[[^\]\[]+\]", text):
            assert " ".join(bracketed.split()) in shown, (
                f"{bracketed!r} missing from `{' '.join(path)} --help`"
            )


def test_predict_noise_help_shows_its_shape() -> None:
    result = CliRunner().invoke(app, ["predict", "--help"], terminal_width=200)
    assert "Initial flow sample, .npy [horizon, action_dim]." in result.output
