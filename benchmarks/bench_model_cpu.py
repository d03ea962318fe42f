"""CPU timing of the WALL-OSS pipeline stages on generated checkpoints (tiny and small, both generations).

For each model: preprocessing (images + prompt + state), vision tower, prefix (embeddings + one pass
that leaves the KV cache), denoise (N Euler steps over the action tokens) and post-processing, over
repeated calls on one observation with three 640×480 camera frames. Also times our image
preprocessing against transformers' Qwen2-VL image processor on the same frames (after the same
first Pillow resize), when transformers is installed.

    python benchmarks/bench_model_cpu.py [--repeats 5] [--sizes tiny small] [--out benchmarks/results]
    python benchmarks/bench_model_cpu.py --smoke --out /tmp/bench   # tiny models, one call each

Writes ``model_cpu.json`` (figures and a description of the machine) and ``model_cpu.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from wall_runtime.machine import describe_machine
from wall_runtime.model.pipeline import WallOSS
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
from wall_runtime.types import Observation

STAGES = ("preprocess", "vision", "prefix", "denoise", "postprocess")


def machine() -> dict:
    return describe_machine()


def observation(seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    images = {
        v: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for v in ("face_view", "right_wrist_view")
    }
    return Observation(0.0, images, rng.uniform(-1, 1, 7).astype(np.float32), "put the red cube in the bowl")


def bench_model(path: Path, repeats: int) -> dict:
    model = WallOSS.from_checkpoint(path)
    obs = observation()
    noise = [np.zeros((model.cfg.net.action_horizon, model.cfg.net.action_dim), np.float32)]
    model.infer([obs], noise=noise)  # warm-up
    samples = {s: [] for s in (*STAGES, "total")}
    for _ in range(repeats):
        timing = model.infer([obs], noise=noise)[0].timing_ms
        for stage in samples:
            samples[stage].append(timing[stage])
    batch = model.preprocess([obs])
    params = sum(p.numel() for p in model.net.parameters())
    return {
        "parameters": params,
        "prompt_tokens": int(batch.input_ids.shape[1]),
        "image_tokens": int((batch.input_ids == model.tokenizer.image_pad_id).sum()),
        "action_horizon": model.cfg.net.action_horizon,
        "num_steps": model.settings.num_steps,
        "ms": {s: {"median": statistics.median(v), "min": min(v), "max": max(v)} for s, v in samples.items()},
    }


def bench_preprocessing(repeats: int, resolution: int = 256) -> dict | None:
    """Ours (numpy patchify + Pillow) vs transformers' Qwen2-VL image processor, same resized frames."""
    try:
        from transformers import Qwen2VLImageProcessor
    except ImportError:
        return None
    from wall_runtime.model.image_processing import preprocess_images, resize_longest_side

    frames = [observation(i).images["face_view"] for i in range(3)]
    reference = Qwen2VLImageProcessor()

    def ours():
        preprocess_images(frames, [resolution] * len(frames))

    def theirs():
        resized = [resize_longest_side(f, resolution) for f in frames]
        reference(images=resized, return_tensors="np")

    def clock(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    ours_ms, theirs_ms = clock(ours), clock(theirs)
    return {
        "frames": len(frames),
        "input": "640x480",
        "resolution": resolution,
        "ours_ms": ours_ms,
        "transformers_ms": theirs_ms,
        "speedup": theirs_ms / ours_ms,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({n.split()[0] for n in results["models"]}, key=["tiny", "small"].index)
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.5), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        names = [n for n in results["models"] if n.split()[0] == size]
        left = np.zeros(len(names))
        for stage in STAGES:
            values = np.array([results["models"][n]["ms"][stage]["median"] for n in names])
            ax.barh(names, values, left=left, label=stage)
            left += values
        ax.set_xlabel("median ms per chunk")
        ax.set_title(f"{size} models", fontsize=9)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"WALL-OSS pipeline on CPU (fp32, batch 1, two 640×480 cameras): {results['machine']['cpu']}, "
        f"load {results['machine']['load_average_at_start'][0]:.1f}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--smoke", action="store_true", help="check the script runs: tiny models, one call")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.sizes = 1, ["tiny"]

    console = Console(width=140)
    results = {"machine": machine(), "repeats": args.repeats, "models": {}}
    jobs = [(size, variant) for size in args.sizes for variant in ("flow", "0.5")]
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as progress:
        task = progress.add_task("benchmarking", total=len(jobs) + 1)
        for size, variant in jobs:
            progress.update(task, description=f"{size} {variant}")
            path = write_tiny_checkpoint(Path(tmp) / f"{size}-{variant}", variant, size=size)
            results["models"][f"{size} {variant}"] = bench_model(path, args.repeats)
            progress.advance(task)
        progress.update(task, description="image preprocessing vs transformers")
        results["preprocessing_vs_transformers"] = bench_preprocessing(
            1 if args.smoke else max(args.repeats, 5)
        )
        progress.advance(task)

    table = Table(title="median ms (CPU)")
    for col in ("model", "params", "tokens", *STAGES, "total"):
        table.add_column(col, justify="right")
    for name, r in results["models"].items():
        table.add_row(
            name,
            f"{r['parameters'] / 1e6:.1f} M",
            str(r["prompt_tokens"]),
            *(f"{r['ms'][s]['median']:.1f}" for s in (*STAGES, "total")),
        )
    console.print(table)
    pre = results["preprocessing_vs_transformers"]
    if pre:
        console.print(
            f"image preprocessing, {pre['frames']} frames: ours {pre['ours_ms']:.1f} ms, "
            f"transformers {pre['transformers_ms']:.1f} ms ({pre['speedup']:.1f}× faster)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_cpu.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "model_cpu.png")
    console.print(f"wrote {args.out / 'model_cpu.json'} and {args.out / 'model_cpu.png'}")


if __name__ == "__main__":
    main()
