"""``wall-runtime pick-cube record | eval``: the demo task's data recipe and its checkpoint evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import typer

pick_cube = typer.Typer(
    help="The language-conditioned pick-cube task (robots/sim_pick): record expert data, evaluate a checkpoint.",
    no_args_is_help=True,
)


@pick_cube.command("record")
def record(
    out: Path = typer.Option(..., "--out", help="Dataset file to write (.npz)."),
    episodes: int = typer.Option(100, help="Successful expert episodes to record."),
    seed_start: int = typer.Option(0, "--seed-start", help="First episode seed."),
    image_size: int = typer.Option(96, "--image-size", help="Camera width = height in pixels."),
) -> None:
    """Record scripted-expert episodes (directly in the simulator) as a training dataset."""
    from rich import print as rprint
    from rich.progress import Progress

    from wall_runtime.sims.pick_cube_data import record_expert_dataset

    with Progress() as progress:
        task = progress.add_task("record", total=episodes)
        done = [0]

        def on_episode(tried: int, success: bool) -> None:
            done[0] += int(success)
            progress.update(task, completed=done[0])

        path, summary = record_expert_dataset(
            out, episodes, seed_start=seed_start, image_size=image_size, on_episode=on_episode
        )
    rprint(f"wrote {path}: {json.dumps(summary)}")


@pick_cube.command("eval")
def evaluate(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory."),
    episodes: int = typer.Option(20, help="Held-out seeds to run (from 100000)."),
    execute: int = typer.Option(8, help="Actions executed from each chunk before the next inference."),
    max_steps: int = typer.Option(60, "--max-steps", help="Control steps per episode (10 Hz)."),
    out: Path = typer.Option(None, "--out", help="Write the per-episode results as JSON here."),
) -> None:
    """Run a checkpoint closed-loop on held-out seeds of the task (in-process) and print its success."""
    from dataclasses import asdict

    from rich import print as rprint

    from wall_runtime.sims.pick_cube_data import EVAL_SEED_START, evaluate_checkpoint

    def show(ep) -> None:
        rprint(
            f"seed {ep.seed} '{ep.instruction}': {'success' if ep.success else 'fail'} (lift {ep.max_lift_m:.3f} m)"
        )

    seeds = range(EVAL_SEED_START, EVAL_SEED_START + episodes)
    results = evaluate_checkpoint(checkpoint, seeds, execute=execute, max_steps=max_steps, on_episode=show)
    rate = sum(r.success for r in results) / len(results)
    rprint(f"success {sum(r.success for r in results)}/{len(results)} = {rate:.0%}")
    if out is not None:
        out.write_text(json.dumps({"success_rate": rate, "episodes": [asdict(r) for r in results]}, indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(pick_cube, name="pick-cube")
