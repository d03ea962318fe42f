from typer.testing import CliRunner

from wall_runtime.cli import app


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "wall-runtime" in result.output or "Usage" in result.output


def test_unknown_command_is_an_error() -> None:
    result = CliRunner().invoke(app, ["no-such-command"])
    assert result.exit_code != 0
