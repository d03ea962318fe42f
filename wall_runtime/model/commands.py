"""``make-tiny-checkpoint`` and ``predict``: the model's command-line tools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

OBSERVATION_FORMAT = """\
obs.npz: one array per camera 'image.<name>' (HxWx3 uint8 RGB), 'state' (float32), 'instruction'
(string); optional 'state_mask' / 'dof_mask' (float32, one entry per model state / action dim,
1 = present; when absent the first len(state) dims are present)."""


class ObservationFileError(ValueError):
    """The observation file is not in the documented format."""


def read_observation(path: Path):
    """An :class:`Observation` from an ``obs.npz`` file (format: ``OBSERVATION_FORMAT``)."""
    from wall_runtime.types import Observation

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ObservationFileError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ObservationFileError(f"{path} is not an .npz archive.\n{OBSERVATION_FORMAT}")
    with data:
        names = set(data.files)
        missing = [k for k in ("state", "instruction") if k not in names]
        if missing:
            raise ObservationFileError(f"{path} lacks {', '.join(missing)}.\n{OBSERVATION_FORMAT}")
        images = {k.removeprefix("image."): data[k] for k in data.files if k.startswith("image.")}
        if not images:
            raise ObservationFileError(f"{path} holds no 'image.<camera>' array.\n{OBSERVATION_FORMAT}")
        unknown = sorted(
            names - {"state", "instruction", "state_mask", "dof_mask"} - {f"image.{k}" for k in images}
        )
        if unknown:
            raise ObservationFileError(f"{path} holds unknown arrays {unknown}.\n{OBSERVATION_FORMAT}")
        instruction = data["instruction"]
        if instruction.dtype.kind != "U" or instruction.size != 1:
            raise ObservationFileError(f"'instruction' in {path} must be one string")
        state = data["state"]
        if state.dtype.kind != "f" or state.ndim != 1:
            raise ObservationFileError(
                f"'state' in {path} must be a 1-D float array, got {state.dtype} {state.shape}"
            )
        return Observation(
            stamp=0.0,
            images=images,
            state=state.astype(np.float32),
            instruction=str(instruction.reshape(()).item()),
            state_mask=data["state_mask"].astype(np.float32) if "state_mask" in names else None,
            dof_mask=data["dof_mask"].astype(np.float32) if "dof_mask" in names else None,
        )


def make_tiny_checkpoint(
    out: Path = typer.Argument(..., help="Directory to write the checkpoint into."),
    variant: str = typer.Option("flow", "--variant", help="Generation: flow or 0.5."),
    seed: int = typer.Option(0, help="Weight seed (same seed, same bytes)."),
    form: str = typer.Option("published", help="Projection form: published, fused or unfused."),
    shard_bytes: int = typer.Option(
        0, help="Shard the weights into files of at most this many bytes (0 = one file)."
    ),
    normalizers: str = typer.Option("json", help="Statistics files: json (norm_stats.json), pth or both."),
    size: str = typer.Option(
        "tiny",
        help="Model size: tiny (tests), demo (the trained demo policy) or small (about 40 M parameters).",
    ),
) -> None:
    """Write a deterministic random-weight tiny WALL-OSS checkpoint in the published layout."""
    from rich import print as rprint

    from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint

    if variant not in ("flow", "0.5"):
        raise typer.BadParameter(f"unknown variant {variant!r}; choose flow or 0.5", param_hint="--variant")
    if form not in ("published", "fused", "unfused"):
        raise typer.BadParameter(f"unknown form {form!r}", param_hint="--form")
    if size not in ("tiny", "demo", "small"):
        raise typer.BadParameter(f"unknown size {size!r}; choose tiny, demo or small", param_hint="--size")
    if normalizers not in ("json", "pth", "both"):
        raise typer.BadParameter(f"unknown normalizers {normalizers!r}", param_hint="--normalizers")
    root = write_tiny_checkpoint(
        out,
        variant,  # type: ignore[arg-type]
        seed=seed,
        form=form,  # type: ignore[arg-type]
        max_shard_bytes=shard_bytes or None,
        normalizers=normalizers,  # type: ignore[arg-type]
        size=size,
    )
    files = ", ".join(sorted(p.name for p in root.iterdir()))
    rprint(f"[green]wrote tiny {variant} checkpoint[/green] to {root}: {files}")


def predict(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint directory (published layout)."),
    observation: Path = typer.Option(..., "--observation", help="Observation file (obs.npz)."),
    out: Path = typer.Option(..., "--out", help="Result file (npz: actions_normalized, actions)."),
    noise: Path | None = typer.Option(
        None, "--noise", help="Initial flow sample, .npy [horizon, action_dim]."
    ),
    norm_key: str | None = typer.Option(None, "--norm-key", help="Normalisation key (embodiment)."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
    steps: int = typer.Option(10, help="Euler steps."),
    seed: int = typer.Option(0, help="Noise seed when no --noise is given."),
    action_attention: str | None = typer.Option(
        None,
        help="Attention among action tokens: mixed, causal or bidirectional (default: the generation's).",
    ),
) -> None:
    """Offline inference on one observation file; prints each stage's time.

    obs.npz holds one 'image.<camera>' array per camera (HxWx3 uint8 RGB), 'state' (float32) and
    'instruction' (a string), and optionally 'state_mask' / 'dof_mask' (float32, one entry per model
    state / action dim, 1 = present; when absent the first len(state) dims are present). The noise file
    is the initial flow sample [horizon, action_dim]. The result holds 'actions_normalized' (the model's
    full normalised chunk) and 'actions' (robot units), both [horizon, action_dim].
    """
    from rich.console import Console
    from rich.table import Table

    from wall_runtime.backends.torch_backend import TorchPolicy

    console = Console()
    if action_attention not in (None, "mixed", "causal", "bidirectional"):
        raise typer.BadParameter(
            f"unknown action attention {action_attention!r}", param_hint="--action-attention"
        )
    try:
        obs = read_observation(observation)
        initial = None
        if noise is not None:
            initial = np.load(noise, allow_pickle=False)
        with console.status("loading checkpoint"):
            policy = TorchPolicy.from_checkpoint(
                checkpoint, device=device, norm_key=norm_key, seed=seed, num_steps=steps
            )
        obs.norm_key = policy.model.norm_key
        result = policy.infer([obs], noise=[initial] if initial is not None else None)[0]
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, actions_normalized=result.actions_normalized, actions=result.actions)
    table = Table(title=f"predict: {policy.metadata.model} ({policy.metadata.backend}, {device})")
    table.add_column("stage")
    table.add_column("ms", justify="right")
    for stage, ms in result.timing_ms.items():
        table.add_row(stage, f"{ms:.1f}")
    console.print(table)
    console.print(f"chunk {result.actions.shape[0]}×{result.actions.shape[1]} written to {out}")


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
    app.command("make-tiny-checkpoint")(make_tiny_checkpoint)
    app.command("predict")(predict)
