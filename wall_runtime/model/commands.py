"""``make-tiny-checkpoint`` and ``predict``: the model's command-line tools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

OBSERVATION_FORMAT = """\
obs.npz: one array per camera 'image.<name>' (HxWx3 uint8 RGB), 'state' (float32), 'instruction'
(string); optional 'state_mask' / 'dof_mask' (float32, one entry per model state / action dim,
1 = present; when absent the first len(state) dims are present). For an end-effector checkpoint,
'pose.left' / 'pose.right' (7 floats: x, y, z, roll, pitch, yaw, gripper; base frame, Euler as
R = Rz(yaw)·Ry(pitch)·Rx(roll)) may replace 'state': the state vector is built from them."""


class ObservationFileError(ValueError):
    """The observation file is not in the documented format."""


def read_observation(path: Path):
    """An :class:`Observation` from an ``obs.npz`` file (format: ``OBSERVATION_FORMAT``)."""
    return read_observation_file(path)[0]


def read_observation_file(path: Path):
    """``(Observation, {arm: pose})`` from an ``obs.npz`` file; the poses are the 'pose.<arm>' arrays."""
    from wall_runtime.types import Observation

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ObservationFileError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ObservationFileError(f"{path} is not an .npz archive.\n{OBSERVATION_FORMAT}")
    with data:
        names = set(data.files)
        poses = {
            k.removeprefix("pose."): data[k].astype(np.float64) for k in data.files if k.startswith("pose.")
        }
        bad = [a for a in poses if a not in ("left", "right")]
        if bad:
            raise ObservationFileError(f"{path}: pose.{bad[0]}: the arms are pose.left and pose.right")
        if poses and "state" in names:
            raise ObservationFileError(f"{path} holds both 'state' and 'pose.*': give one of them")
        missing = [k for k in ("state", "instruction") if k not in names and not (k == "state" and poses)]
        if missing:
            raise ObservationFileError(f"{path} lacks {', '.join(missing)}.\n{OBSERVATION_FORMAT}")
        images = {k.removeprefix("image."): data[k] for k in data.files if k.startswith("image.")}
        if not images:
            raise ObservationFileError(f"{path} holds no 'image.<camera>' array.\n{OBSERVATION_FORMAT}")
        unknown = sorted(
            names
            - {"state", "instruction", "state_mask", "dof_mask"}
            - {f"image.{k}" for k in images}
            - {f"pose.{k}" for k in poses}
        )
        if unknown:
            raise ObservationFileError(f"{path} holds unknown arrays {unknown}.\n{OBSERVATION_FORMAT}")
        instruction = data["instruction"]
        if instruction.dtype.kind != "U" or instruction.size != 1:
            raise ObservationFileError(f"'instruction' in {path} must be one string")
        state = data["state"] if "state" in names else np.zeros(0, np.float32)
        if state.dtype.kind != "f" or state.ndim != 1:
            raise ObservationFileError(
                f"'state' in {path} must be a 1-D float array, got {state.dtype} {state.shape}"
            )
        obs = Observation(
            stamp=0.0,
            images=images,
            state=state.astype(np.float32),
            instruction=str(instruction.reshape(()).item()),
            state_mask=data["state_mask"].astype(np.float32) if "state_mask" in names else None,
            dof_mask=data["dof_mask"].astype(np.float32) if "dof_mask" in names else None,
        )
        return obs, poses


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
    robot: Path | None = typer.Option(
        None,
        "--robot",
        help="a robot name (./robots/NAME or a shipped robot), folder or robot.yaml: lay the checkpoint "
        "out on that robot's EE slots in the "
        "generation's convention (FLOW: absolute position + Euler; 0.5: relative position + 6D), "
        "its views and norm key.",
    ),
    pad_vision_mlp: bool = typer.Option(
        False,
        "--pad-vision-mlp",
        help="Store the vision MLP zero-padded to a multiple of 128 wide, as the 1.1.0 model saves it.",
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
    extra: dict = {}
    if robot is not None:
        from wall_runtime.adapters.config import RobotConfigError, load_robot
        from wall_runtime.e2e.demo_checkpoint import demo_layout

        try:
            config = load_robot(robot)
            layout = demo_layout(config, variant, horizon=32 if size == "small" else 8)
        except (RobotConfigError, ValueError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--robot") from None
        extra = {"layout": layout, "norm_key": config.mapping.norm_key}
    root = write_tiny_checkpoint(
        out,
        variant,  # type: ignore[arg-type]
        seed=seed,
        form=form,  # type: ignore[arg-type]
        max_shard_bytes=shard_bytes or None,
        normalizers=normalizers,  # type: ignore[arg-type]
        size=size,
        pad_vision_mlp=pad_vision_mlp,
        **extra,
    )
    files = ", ".join(sorted(p.name for p in root.iterdir()))
    rprint(f"[green]wrote tiny {variant} checkpoint[/green] to {root}: {files}")
    if robot is not None:
        rprint(f"dof_config: {extra['layout'].dof_config}")


def predict(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint directory (published layout)."),
    observation: Path = typer.Option(..., "--observation", help="Observation file (obs.npz)."),
    out: Path = typer.Option(..., "--out", help="Result file (npz: actions_normalized, actions)."),
    noise: Path | None = typer.Option(
        None, "--noise", help="Initial flow sample, .npy [horizon, action_dim]."
    ),
    norm_key: str | None = typer.Option(None, "--norm-key", help="Normalisation key (embodiment)."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
    steps: int = typer.Option(
        10, min=0, help="Euler steps; 0 returns the initial sample (--noise) unchanged, un-normalised."
    ),
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

    End-effector checkpoints: 'pose.left' / 'pose.right' (7 floats: x, y, z, roll, pitch, yaw,
    gripper) in place of 'state' build the state vector in the checkpoint's layout, and the result
    then also holds 'pose.<arm>' [horizon, 7]: absolute poses in the base frame (0.5's relative
    actions composed onto the observation's pose as the authors' serving does), Euler wrapped to
    [-π, π). With --steps 0 the chunk is the initial sample itself, so a chunk given as --noise can
    be decoded to check its convention.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from wall_runtime.backends.torch_backend import TorchPolicy

    console = Console()
    if action_attention not in (None, "mixed", "causal", "bidirectional"):
        raise typer.BadParameter(
            f"unknown action attention {action_attention!r}", param_hint="--action-attention"
        )
    try:
        obs, poses = read_observation_file(observation)
        initial = None
        if noise is not None:
            initial = np.load(noise, allow_pickle=False)
        with console.status("loading checkpoint"):
            policy = TorchPolicy.from_checkpoint(
                checkpoint, device=device, norm_key=norm_key, seed=seed, num_steps=max(steps, 1)
            )
        obs.norm_key = policy.preprocessor.norm_key
        layouts = None
        if poses:
            layouts = _pose_state(obs, poses, policy.preprocessor.cfg.data)
        if steps == 0:
            result = _initial_sample(policy, obs, initial, seed)
        else:
            result = policy.infer([obs], noise=[initial] if initial is not None else None)[0]
    except (ValueError, RuntimeError, OSError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(code=1) from exc
    if not (np.isfinite(result.actions).all() and np.isfinite(result.actions_normalized).all()):
        # e.g. NaN weights: a chunk a robot must never receive; nothing is written
        console.print(
            f"[red]error:[/red] the policy's output holds NaN or infinity (check the weights in "
            f"{escape(str(checkpoint))}); {escape(str(out))} not written",
            soft_wrap=True,
        )
        raise typer.Exit(code=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"actions_normalized": result.actions_normalized, "actions": result.actions}
    if layouts is not None:
        from wall_runtime.action_space.poses import poses_from_actions

        for arm, rows in poses_from_actions(layouts[0], result.actions, poses).items():
            arrays[f"pose.{arm}"] = rows.astype(np.float64)
    np.savez(out, **arrays)
    table = Table(title=f"predict: {policy.metadata.model} ({policy.metadata.backend}, {device})")
    table.add_column("stage")
    table.add_column("ms", justify="right")
    for stage, ms in result.timing_ms.items():
        table.add_row(stage, f"{ms:.1f}")
    console.print(table)
    console.print(f"chunk {result.actions.shape[0]}×{result.actions.shape[1]} written to {out}")


def _pose_state(obs, poses: dict, data) -> tuple:
    """Fill ``obs`` (state, masks) from per-arm poses in the checkpoint's layouts."""
    from wall_runtime.action_space.layout import parse_layout
    from wall_runtime.action_space.poses import dof_mask_for, state_from_poses

    actions = parse_layout(data.dof_config, "dof_config")
    state = parse_layout(data.agent_pos_config, "agent_pos_config")
    obs.state, obs.state_mask = state_from_poses(state, poses)
    obs.dof_mask = dof_mask_for(actions, list(poses))
    return actions, state


def _initial_sample(policy, obs, initial, seed: int):
    """``--steps 0``: the initial sample as the chunk (un-normalised for the robot-unit view)."""
    from wall_runtime.types import PolicyResult

    net = policy.preprocessor.cfg.net
    shape = (net.action_horizon, net.action_dim)
    if initial is None:
        initial = np.random.default_rng(seed).standard_normal(shape)
    initial = np.asarray(initial, dtype=np.float32)
    if initial.shape != shape:
        raise ValueError(f"--noise has shape {initial.shape}; expected {shape}")
    actions = policy.preprocessor.normalizers.action.unnormalize(initial, obs.norm_key)
    return PolicyResult(actions=np.asarray(actions, np.float32), actions_normalized=initial.copy())


def model_size(
    variant: str = typer.Option("flow", "--variant", help="Generation at its published size: flow or 0.5."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON."),
    out: Path | None = typer.Option(None, "--out", help="Also write the JSON report to this file."),
) -> None:
    """Parameters per part, exported graphs' sizes and the memory plan per backend of a published-size
    model, built on the meta device (no weights needed)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from wall_runtime.model.size import BACKENDS, BATCHES, gib, param_count_str, size_report

    if variant not in ("flow", "0.5"):
        raise typer.BadParameter(f"unknown variant {variant!r}; choose flow or 0.5", param_hint="--variant")
    report = size_report(variant)
    text = json.dumps(report, indent=2) + "\n"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    if as_json:
        typer.echo(text, nl=False)
        return
    console = Console()
    params = Table(
        title=f"{report['model']}: parameters (published {report['published_parameters'] / 1e9:.1f} B)"
    )
    params.add_column("part")
    params.add_column("parameters", justify="right")
    for part, n in report["parameters"].items():
        params.add_row(part, param_count_str(n))
    params.add_row("deviation from published", f"{100 * report['deviation_from_published']:+.1f} %")
    console.print(params)
    graphs = Table(title="exported graphs")
    for col in ("graph", "parameters", "ONNX fp32 GiB", "external data", "TensorRT bf16 GiB"):
        graphs.add_column(col, justify="left" if col == "graph" else "right")
    for name, g in report["graphs"].items():
        graphs.add_row(
            name,
            param_count_str(g["parameters"]),
            gib(g["onnx_fp32_bytes"]),
            "yes" if g["onnx_external_data"] else "no",
            gib(g["tensorrt_bf16_bytes"]),
        )
    console.print(graphs)
    rows = {(r["backend"], r["views"], r["batch"]): r for r in report["plan"]}
    plan = Table(
        title=f"memory plan, GiB (weights + KV cache + peak activations; {report['config']['resolution']} px "
        f"views of {report['config']['image_tokens_per_view']} tokens)"
    )
    for col in ("views", "batch", "prefix tokens", *BACKENDS):
        plan.add_column(col, justify="right")
    for views in (1, 2, 3):
        for batch in BATCHES:
            cells = [rows[(b, views, batch)] for b in BACKENDS]
            plan.add_row(
                str(views),
                str(batch),
                str(cells[0]["prefix_tokens"]),
                *(gib(c["total_bytes"]) for c in cells),
            )
    console.print(plan)
    parts = Table(title="breakdown at 3 views, GiB")
    for col in ("backend", "batch", "weights", "KV cache", "vision act.", "prefill act."):
        parts.add_column(col, justify="left" if col == "backend" else "right")
    for backend in BACKENDS:
        for batch in (1, BATCHES[-1]):
            r = rows[(backend, 3, batch)]
            parts.add_row(
                backend,
                str(batch),
                gib(r["weights_bytes"]),
                gib(r["kv_cache_bytes"]),
                gib(r["activation_vision_bytes"]),
                gib(r["activation_prefill_bytes"]),
            )
    console.print(parts)
    for line in report["assumptions"]:
        console.print(f"- {line}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
    app.command("make-tiny-checkpoint")(make_tiny_checkpoint)
    app.command("predict")(predict)
    app.command("model-size")(model_size)
