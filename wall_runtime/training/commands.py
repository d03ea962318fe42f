"""``wall-runtime train``: train a small WALL-OSS-architecture model on an episode dataset."""

from __future__ import annotations

import hashlib
from pathlib import Path

import typer


def train_command(
    data: Path = typer.Option(
        ...,
        "--data",
        help="Episode dataset: an .npz, or a LeRobotDataset v3 folder the runtime recorded (see docs/training.md).",
    ),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to write (published layout)."),
    steps: int = typer.Option(
        2000, help="Optimizer steps (0: write the untrained starting checkpoint, the random-weight baseline)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Samples per step."),
    lr: float = typer.Option(3e-4, help="Peak learning rate (AdamW; linear warm-up, cosine decay)."),
    warmup: int = typer.Option(100, help="Warm-up steps."),
    seed: int = typer.Option(0, help="Seed of the initial weights, batches, times and noise."),
    variant: str = typer.Option("flow", help="Generation: flow or 0.5."),
    size: str = typer.Option("demo", help="Model size: tiny, demo or small."),
    threads: int = typer.Option(2, help="Torch CPU threads (fixed: part of what makes a run reproducible)."),
    log_every: int = typer.Option(10, "--log-every", help="Write a log line every this many steps."),
    robot: str | None = typer.Option(
        None,
        "--robot",
        help="A recorded dataset's robot (robot.yaml or name): its model: mapping and kinematics turn "
        "the recorded joints into the checkpoint's end-effector state and actions.",
    ),
    action_period: float = typer.Option(
        0.1,
        "--action-period",
        help="Seconds between two rows of a trained chunk (a recorded dataset: a whole number of its "
        "frames); the checkpoint declares it and the server stamps it as each chunk's dt.",
    ),
    start_fraction: float = typer.Option(
        0.0,
        "--start-fraction",
        help="Share of each batch drawn from the first --start-frames frames of the episodes, where "
        "the instruction and images alone decide the motion (0: uniform over all frames).",
    ),
    start_frames: int = typer.Option(8, "--start-frames", help="Frames at each episode's start (see above)."),
    snapshot_every: int = typer.Option(
        0,
        "--snapshot-every",
        help="Also write the weights so far every this many steps, to OUT-snapshots/step_N (0: never).",
    ),
) -> None:
    """Train with the flow-matching objective of WALL-OSS and write a checkpoint the server loads."""
    from rich import print as rprint
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from wall_runtime.training.dataset import DatasetError, read_dataset
    from wall_runtime.training.trainer import LOG_NAME, TrainSettings, train

    settings = TrainSettings(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup,
        seed=seed,
        variant=variant,
        size=size,
        threads=threads,
        log_every=log_every,
        start_fraction=start_fraction,
        start_frames=start_frames,
    )
    try:
        settings.check()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        if data.is_dir():
            ds, digest, load_s = _read_recorded(data, robot, action_period)
            rprint(
                f"read {data}: {ds.num_frames} frames, {len(ds.images)} views decoded in {load_s:.1f} s; "
                f"chunk rows every {ds.chunk_stride} frames ({ds.action_period:g} s)"
            )
        else:
            ds = read_dataset(data)
            digest = hashlib.sha256(data.read_bytes()).hexdigest()[:16]
            if ds.meta.get("fps") and "chunk_stride" not in ds.meta:
                from wall_runtime.training.lerobot_data import chunk_stride

                ds.meta["chunk_stride"] = chunk_stride(action_period, float(ds.meta["fps"]))
    except DatasetError as exc:
        rprint(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    rprint(
        f"training {variant} ({size}) on {ds.num_episodes} episodes / {ds.num_frames} frames, "
        f"tasks: {', '.join(ds.tasks)}"
    )
    with Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as progress:
        task = progress.add_task("train", total=steps, loss=float("nan"))

        def on_step(step: int, loss: float) -> None:
            progress.update(task, completed=step + 1, loss=loss)

        result = train(
            ds,
            out,
            settings,
            on_step=on_step,
            data_id=f"{data.name} sha256:{digest}",
            snapshot_every=snapshot_every,
        )
    where = f"checkpoint {out} (model.safetensors sha256 {result.weights_sha256[:16]}), log {out / LOG_NAME}"
    if not result.losses:
        rprint(f"no training steps: the untrained starting checkpoint; {where}")
        return
    first, last = result.losses[0], sum(result.losses[-10:]) / len(result.losses[-10:])
    rprint(f"loss {first:.4f} -> {last:.4f} (mean of the last 10) in {result.seconds:.0f} s; {where}")


def _read_recorded(data: Path, robot: str | None, action_period: float):
    """A LeRobotDataset v3 folder: the dataset, a digest of its metadata and data files, load seconds."""
    import time

    from wall_runtime.training.dataset import DatasetError
    from wall_runtime.training.lerobot_data import is_lerobot_dataset, read_recorded_dataset

    if not is_lerobot_dataset(data):
        raise DatasetError(f"{data}: a folder but not a LeRobot dataset (no meta/info.json)")
    if robot is None:
        raise DatasetError(
            f"{data}: a recorded dataset needs --robot (the robot.yaml whose model: mapping and "
            "kinematics give the checkpoint's state and actions)"
        )
    start = time.perf_counter()
    ds = read_recorded_dataset(data, robot, action_period=action_period)
    seconds = time.perf_counter() - start
    h = hashlib.sha256()
    for path in [*sorted(data.rglob("*.parquet")), data / "meta" / "info.json"]:
        h.update(path.read_bytes())
    return ds, h.hexdigest()[:16], seconds


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
