"""``wall-runtime check-robot``: the conformance kit on the command line."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import typer


def check_robot(
    robot_yaml: Path = typer.Argument(
        ..., help="Robot name (./robots/NAME or a shipped robot), its folder or its robot.yaml."
    ),
    hardware: bool = typer.Option(
        False, "--hardware", help="Run against the real robot (reduced speed, asks for confirmation)."
    ),
    emulate: bool = typer.Option(
        False,
        "--emulate",
        help="Bus robots: run against emulated devices (Feetech/Dynamixel on a pty, CAN on python-can virtual).",
    ),
    yes: bool = typer.Option(False, "--yes", help="With --hardware: skip the confirmation prompt."),
    speed: float = typer.Option(
        0.25, "--speed", min=0.01, max=1.0, help="With --hardware: fraction of the velocity limits."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results here as JSON."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Also check that the model: block's slot mapping fits this checkpoint."
    ),
    mapping_only: bool = typer.Option(
        False, "--mapping-only", help="With --checkpoint: only the slot-mapping check (no robot needed)."
    ),
) -> None:
    """Run the adapter contract checks against a robot: the simulator by default, --hardware for real."""
    from rich.console import Console

    from wall_runtime.adapters.checks import CheckOptions
    from wall_runtime.adapters.config import RobotConfigError, load_robot

    console = Console()
    try:
        config = load_robot(robot_yaml)
    except RobotConfigError as exc:
        console.print(f"[red]robot.yaml is invalid:[/red] {exc}")
        raise typer.Exit(2) from None
    _show_calibration(console, config)
    if mapping_only:
        if checkpoint is None:
            console.print("[red]--mapping-only needs --checkpoint[/red]")
            raise typer.Exit(2)
        result = _check_mapping(config, checkpoint)
        console.print(
            f"  {result.name:<13} {'[green]pass[/green]' if result.passed else '[red]FAIL[/red]'}  {result.detail}"
        )
        _report(console, config, [result], False, json_out)
        return
    from wall_runtime.adapters.emulators import EMULATED_PART_TYPES, emulated
    from wall_runtime.adapters.registry import SIMULATED_PART_TYPES

    if emulate and hardware:
        console.print("[red]--emulate and --hardware exclude each other[/red]")
        raise typer.Exit(2)
    if emulate and not all(p.type in (*EMULATED_PART_TYPES, "mujoco") for p in config.parts):
        console.print(f"[red]--emulate covers {', '.join(EMULATED_PART_TYPES)} parts only[/red]")
        raise typer.Exit(2)
    simulated = all(p.type in SIMULATED_PART_TYPES for p in config.parts)
    if not simulated and not hardware and not emulate:
        console.print(
            f"[red]{config.name} has hardware parts ({', '.join(p.type for p in config.parts)}); "
            "pass --hardware to check the real robot (or --emulate for a serial bus).[/red]"
        )
        raise typer.Exit(2)
    options = CheckOptions()
    if hardware:
        options = CheckOptions(speed_scale=speed, hardware=True, settle_s=3.0)
        console.print(
            f"[bold yellow]This moves the real robot {config.name!r}[/bold yellow] at {speed:.0%} of its velocity "
            "limits, to its joint limits and back. Clear the workspace and keep the e-stop in reach."
        )
        if not yes and not typer.confirm("Proceed?", default=False):
            raise typer.Exit(1)
    with contextlib.ExitStack() as stack:
        if emulate:
            config, _ = stack.enter_context(emulated(config))
        results = _run(console, config, options, hardware, emulate)
    if checkpoint is not None:
        results.append(_check_mapping(config, checkpoint))
    _report(console, config, results, hardware, json_out)


def _show_calibration(console, config) -> None:
    """One line per calibration file found for this robot (a bad one ends the check, naming it)."""
    from rich.markup import escape

    from wall_runtime.calibration.runtime import calibration_root, load_calibration
    from wall_runtime.cameras.config import CamerasConfig

    try:
        loaded = load_calibration(config.name, CamerasConfig.from_dict(config.cameras or None))
    except ValueError as exc:
        console.print(f"[red]calibration:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if not loaded.lines:
        console.print(f"calibration: none under {calibration_root() / config.name}")
    for line in loaded.lines:
        console.print(f"calibration: {escape(line)}")


def _run(console, config, options, hardware: bool, emulate: bool) -> list:
    from wall_runtime.adapters.checks import CheckResult, check_kinematics, run_checks
    from wall_runtime.adapters.config import RobotConfigError
    from wall_runtime.adapters.registry import build_adapter

    try:
        adapter = build_adapter(config)
    except (RobotConfigError, ValueError, ImportError) as exc:
        console.print(f"[red]cannot build the adapter:[/red] {exc}")
        raise typer.Exit(2) from None

    def show(result: CheckResult) -> None:
        mark = (
            "[yellow]skip[/yellow]"
            if result.skipped
            else "[green]pass[/green]"
            if result.passed
            else "[red]FAIL[/red]"
        )
        console.print(f"  {result.name:<13} {mark}  {result.detail}")

    target = "hardware" if hardware else "protocol emulator" if emulate else "simulator"
    console.print(f"checking {config.name} ({target})")
    with console.status("running checks"):
        results = run_checks(adapter, options, on_result=show)
        if config.kinematics:
            kin = check_kinematics(config)
            show(kin)
            results.append(kin)
    return results


def _check_mapping(config, checkpoint: Path):
    """The handshake's fit check, offline: the model: block against the checkpoint's layout."""
    from wall_runtime.action_space.edge import FitError
    from wall_runtime.action_space.fit import describe_fit, fit_checkpoint
    from wall_runtime.adapters.checks import CheckResult

    try:
        edge = fit_checkpoint(config, checkpoint)
    except FitError as exc:
        return CheckResult("slot_mapping", False, str(exc))
    return CheckResult(
        "slot_mapping",
        True,
        describe_fit(edge),
        figures={
            "action_dim": edge.actions.dim,
            "state_dim": edge.state.dim,
            "masked_action_dims": int((edge.dof_mask == 0).sum()),
        },
    )


def _report(console, config, results: list, hardware: bool, json_out: Path | None) -> None:
    from rich.table import Table

    table = Table(title=f"check-robot {config.name}")
    for col in ("check", "result", "detail"):
        table.add_column(col)
    for r in results:
        table.add_row(r.name, "skip" if r.skipped else "pass" if r.passed else "FAIL", r.detail)
    console.print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(
            json.dumps(
                {
                    "robot": config.name,
                    "hardware": hardware,
                    "passed": all(r.passed for r in results),
                    "checks": [
                        {
                            "name": r.name,
                            "passed": r.passed,
                            "skipped": r.skipped,
                            "detail": r.detail,
                            "figures": r.figures,
                        }
                        for r in results
                    ],
                },
                indent=2,
            )
        )
    failed = [r.name for r in results if not r.passed]
    if failed:
        console.print(f"[red]{len(failed)} check(s) failed: {', '.join(failed)}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]{config.name}: all {len(results)} checks passed[/green]")


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
    app.command("check-robot")(check_robot)
