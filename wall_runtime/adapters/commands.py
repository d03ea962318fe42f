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
    from wall_runtime.adapters.emulators import EMULATED_PART_TYPES, emulated

    if emulate and hardware:
        console.print("[red]--emulate and --hardware exclude each other[/red]")
        raise typer.Exit(2)
    if emulate and not all(p.type in (*EMULATED_PART_TYPES, "mujoco") for p in config.parts):
        console.print(f"[red]--emulate covers {', '.join(EMULATED_PART_TYPES)} parts only[/red]")
        raise typer.Exit(2)
    simulated = all(p.type == "mujoco" for p in config.parts)
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
    _report(console, config, results, hardware, json_out)


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
