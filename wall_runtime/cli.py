"""`wall-runtime ...`: the command-line entry point.

Each feature package contributes its commands through ``<package>/commands.py:register(app)``, so
the parts stay independent and this file stays a list.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="wall-runtime",
    help="Deployment runtime for WALL-OSS vision-language-action models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # help texts are plain text: with rich markup on, "[horizon, action_dim]" vanished as a tag
    rich_markup_mode=None,
)

COMMAND_MODULES = (
    "wall_runtime.model.commands",  # make-tiny-checkpoint, predict
    "wall_runtime.export.commands",  # export, verify
    "wall_runtime.transport.commands",  # serve, keys
    "wall_runtime.control.commands",  # run
    "wall_runtime.cameras.commands",  # cameras list | snapshot
    "wall_runtime.calibration.commands",  # calibrate ...
    "wall_runtime.adapters.commands",  # check-robot
    "wall_runtime.e2e.commands",  # demo, bench, replay
    "wall_runtime.eval.commands",  # eval
    "wall_runtime.training.commands",  # train
    "wall_runtime.sims.pick_cube_commands",  # pick-cube record | eval
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at debug level."),
) -> None:
    import logging

    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=True)],
    )


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
