"""``wall-runtime export`` and ``wall-runtime verify``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

_BACKENDS = {"onnx": "onnxruntime", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "trt": "tensorrt"}


def _backend(name: str) -> str:
    if name not in _BACKENDS:
        raise typer.BadParameter(f"backend must be onnx or tensorrt, got {name!r}")
    return _BACKENDS[name]


def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint directory (published layout)."),
    backend: str = typer.Option("onnx", "--backend", help="onnx (graphs) or tensorrt (graphs + engines)."),
    steps: int | None = typer.Option(
        None, "--steps", help="Euler steps fused into the denoise graph (default 10)."
    ),
    camera: list[str] = typer.Option(
        [],
        "--camera",
        help="NAME=WIDTHxHEIGHT of a camera's frames, once per camera (default: all at 640x480).",
    ),
    batch: int = typer.Option(1, "--batch", help="Observations per call the graphs take."),
    text_tokens: int = typer.Option(
        64, "--text-tokens", help="Prompt budget for the instruction (and state text)."
    ),
    precision: str = typer.Option("bf16", "--precision", help="TensorRT precision: bf16, fp16 or fp32."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Engine cache (default $WALL_RUNTIME_CACHE)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Also copy the graphs / engines and manifest here."),
) -> None:
    """Export the prefix graph and the fused denoise graph (and build TensorRT engines) into the cache."""
    from rich.console import Console

    from wall_runtime.backends.graph_policy import load_graph_preprocessor, parse_cameras
    from wall_runtime.backends.static_shapes import resolve_shapes
    from wall_runtime.export.artifacts import onnx_artifacts, tensorrt_artifacts
    from wall_runtime.export.cache import EngineCache

    console = Console()
    which = _backend(backend)
    try:
        # the preprocessor only: the network is read from the checkpoint if the cache misses
        model = load_graph_preprocessor(checkpoint, num_steps=steps)
        shapes = resolve_shapes(model, parse_cameras(camera) if camera else None, batch, text_tokens)
    except (ValueError, FileNotFoundError) as e:
        console.print(f"[red]export: {e}")
        raise typer.Exit(2) from e
    cache = EngineCache(cache_dir)
    with console.status(f"exporting {checkpoint} ({model.cfg.net.num_steps} steps)"):
        art = onnx_artifacts(model, checkpoint, shapes, cache)
    if which == "tensorrt":
        art = tensorrt_artifacts(model, checkpoint, shapes, cache, precision=precision)
    entry = art.entry
    console.print(
        f"{'reused' if entry.reused else 'built'} {entry.key.format} for {checkpoint}: {entry.path}\n"
        f"  steps {entry.key.steps}, cameras {list(shapes.cameras)} {[f'{w}x{h}' for h, w in shapes.frame_sizes]}, "
        f"prompt length {shapes.prefix_length}, batch {shapes.batch}, precision {entry.key.precision}"
    )
    for name in entry.files:
        console.print(f"  {name}  ({entry.file(name).stat().st_size / 1e6:.1f} MB)")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in [*entry.files, "manifest.json"]:
            dst = out / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(entry.file(name), dst)
        console.print(f"copied to {out}")


def verify(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint directory (published layout)."),
    backend: str = typer.Option("onnx", "--backend", help="onnx or tensorrt."),
    steps: int | None = typer.Option(None, "--steps", help="Euler steps (default: the checkpoint's 10)."),
    camera: list[str] = typer.Option([], "--camera", help="NAME=WIDTHxHEIGHT, once per camera."),
    text_tokens: int = typer.Option(64, "--text-tokens", help="Prompt budget the graphs were built with."),
    precision: str | None = typer.Option(
        None, "--precision", help="fp32 (onnx) or bf16 / fp16 / fp32 (tensorrt)."
    ),
    providers: str = typer.Option("cpu", "--providers", help="onnxruntime providers: cpu, cuda or tensorrt."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic observation and noise."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Engine cache (default $WALL_RUNTIME_CACHE)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON here."),
) -> None:
    """Run a backend and the torch fp32 reference on the same inputs and noise; report each stage.

    Exits 1 when a stage misses its bar (fp32: max abs ≤ 1e-4; fp16/bf16: cosine ≥ 0.999).
    """
    from rich.console import Console

    from wall_runtime.export.verify import verify_checkpoint

    console = Console()
    which = _backend(backend)
    options: dict = {"cache_dir": cache_dir, "text_tokens": text_tokens, "num_steps": steps}
    if camera:
        options["cameras"] = camera
    if which == "onnxruntime":
        options["providers"] = providers
    try:
        report = verify_checkpoint(checkpoint, which, precision=precision, seed=seed, **options)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        console.print(f"[red]verify: {e}")
        raise typer.Exit(2) from e
    console.print(report.table())
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_dict(), indent=2))
    if not report.passed:
        console.print("[red]verify: FAILED")
        raise typer.Exit(1)
    console.print("[green]verify: passed")


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
    app.command("export")(export)
    app.command("verify")(verify)
