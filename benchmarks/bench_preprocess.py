"""Time our image preprocessing against the reference pipeline built on transformers' processor.

Reference = what WALL-OSS does: Pillow longest-side resize, then transformers' Qwen2-VL image processor
(PIL backend, Qwen2.5-VL parameters). Ours = ``wall_runtime.model.image_processing.preprocess_image``.
Both get the same uint8 frames; outputs are checked equal before timing. Cases: 640×480, 320×240 and
1280×720 frames at resolutions 256 and 448, and the 3-camera set (one frame of each size) per call.

    python benchmarks/bench_preprocess.py [--repeats 100] [--out benchmarks/results]

Writes ``preprocess-cpu.json`` (per-image ms p50/p95, ratio, machine description) and ``preprocess-cpu.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wall_runtime.model import image_processing as ip

SIZES = [(640, 480), (320, 240), (1280, 720)]
RESOLUTIONS = [256, 448]


def camera_frame(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 9.0) * np.cos(y / 13.0)], -1)
    frame += rng.normal(0, 12, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def make_reference():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(min_pixels=ip.MIN_PIXELS, max_pixels=ip.MAX_PIXELS)

    def reference(frames: list[np.ndarray], resolutions: list[int]) -> tuple[np.ndarray, np.ndarray]:
        first = []
        for frame, resolution in zip(frames, resolutions, strict=True):
            h, w = ip.longest_side_size(frame.shape[0], frame.shape[1], resolution)
            first.append(Image.fromarray(frame).resize((w, h), Image.Resampling.BICUBIC))
        out = processor(images=first, return_tensors="np")
        return out["pixel_values"], out["image_grid_thw"]

    return reference


def timed(fn, args, repeats: int) -> np.ndarray:
    fn(*args)  # warm-up
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times[i] = time.perf_counter() - start
    return times * 1e3


def machine() -> dict:
    import PIL
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def plot(cases: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["case"] for c in cases]
    x = np.arange(len(cases))
    fig, ax = plt.subplots(figsize=(10, 4.8))
    for offset, key, label, color in [
        (-0.2, "reference", "Pillow + transformers processor", "#999999"),
        (0.2, "ours", "wall_runtime (Pillow + numpy)", "#1f77b4"),
    ]:
        p50 = [c[key]["p50_ms_per_image"] for c in cases]
        p95 = [c[key]["p95_ms_per_image"] for c in cases]
        ax.bar(
            x + offset,
            p50,
            0.4,
            label=label,
            color=color,
            yerr=[np.zeros(len(p50)), np.subtract(p95, p50)],
            capsize=3,
        )
    for i, c in enumerate(cases):
        top = max(c["reference"]["p95_ms_per_image"], c["ours"]["p95_ms_per_image"])
        ax.text(i, top * 1.03, f"{c['speedup_p50']:.1f}×", ha="center", fontsize=9)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("ms per image (bar p50, whisker p95)")
    ax.set_title("Image preprocessing on CPU: ours vs reference")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    console = Console()
    reference = make_reference()

    cases = [
        (f"{w}x{h} @ {r}", [camera_frame(w, h, seed=i)], [r])
        for r in RESOLUTIONS
        for i, (w, h) in enumerate(SIZES)
    ]
    cases += [
        (f"3 cameras @ {r}", [camera_frame(w, h, seed=i) for i, (w, h) in enumerate(SIZES)], [r] * 3)
        for r in RESOLUTIONS
    ]

    results = []
    with Progress(console=console) as progress:
        task = progress.add_task("timing", total=len(cases))
        for name, frames, resolutions in cases:
            ours_pixels, ours_grid = ip.preprocess_images(frames, resolutions)
            ref_pixels, ref_grid = reference(frames, resolutions)
            error = float(np.abs(ours_pixels - ref_pixels).max())
            if error > 1e-5 or not np.array_equal(ours_grid, ref_grid):
                raise SystemExit(f"{name}: outputs differ (max abs {error}); timing would be meaningless")
            per_image = {}
            for key, fn in [("reference", reference), ("ours", ip.preprocess_images)]:
                ms = timed(fn, (frames, resolutions), args.repeats) / len(frames)
                per_image[key] = {
                    "p50_ms_per_image": round(float(np.percentile(ms, 50)), 4),
                    "p95_ms_per_image": round(float(np.percentile(ms, 95)), 4),
                }
            results.append(
                {
                    "case": name,
                    "images": len(frames),
                    "patches": int(ours_pixels.shape[0]),
                    "max_abs_difference": error,
                    **per_image,
                    "speedup_p50": round(
                        per_image["reference"]["p50_ms_per_image"] / per_image["ours"]["p50_ms_per_image"], 2
                    ),
                }
            )
            progress.advance(task)

    table = Table(title="ms per image")
    for column in ("case", "reference p50", "reference p95", "ours p50", "ours p95", "speedup"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r["case"],
            f"{r['reference']['p50_ms_per_image']:.2f}",
            f"{r['reference']['p95_ms_per_image']:.2f}",
            f"{r['ours']['p50_ms_per_image']:.2f}",
            f"{r['ours']['p95_ms_per_image']:.2f}",
            f"{r['speedup_p50']:.1f}×",
        )
    console.print(table)

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "image preprocessing, ours vs Pillow resize + transformers Qwen2VLImageProcessorPil",
        "repeats": args.repeats,
        "machine": machine(),
        "note": "shared 2-core machine: other jobs may run concurrently; the ratio is the robust figure",
        "cases": results,
    }
    (args.out / "preprocess-cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out / "preprocess-cpu.png")
    console.print(f"wrote {args.out / 'preprocess-cpu.json'} and {args.out / 'preprocess-cpu.png'}")


if __name__ == "__main__":
    main()
