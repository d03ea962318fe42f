"""Peak resident memory while loading a checkpoint, against the size of the weights it loads.

Each measurement runs in a fresh subprocess: import torch and the runtime, reset the process's peak
RSS (``/proc/self/clear_refs``; where that is refused, the peak so far is the baseline), note the RSS
as the baseline (interpreter + torch + the runtime, subtracted from every figure), load the
checkpoint, and read the peak RSS (``VmHWM``). The figure reported is

    ratio = (peak RSS − baseline RSS) / (bytes of the loaded parameters in their run dtype)

The target is ≤ 1.2: the loader copies each stored tensor from the memory-mapped file straight into
its (pre-allocated, uninitialised) parameter, casting on the way, and drops the file's pages after
each tensor. ``legacy`` reproduces the previous loader (read every tensor into memory, build the
network with its random init, copy) for comparison.

    python benchmarks/bench_loading.py [--size small] [--repeats 3] [--out benchmarks/results]
    python benchmarks/bench_loading.py --smoke --out /tmp/x   # tiny, one repeat (the test suite runs it)

Writes ``loading.json`` (figures and the machine) and ``loading.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from wall_runtime.machine import describe_machine
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint

TARGET_RATIO = 1.2
ROOT = Path(__file__).resolve().parents[1]

# Runs in the child. argv: checkpoint, mode ("stream" | "legacy"), dtype ("float32" | "bfloat16"),
# warm-up checkpoint ("-" for none).
CHILD = r"""
import json, sys, time
from pathlib import Path

import torch

from wall_runtime.model.pipeline import WallOSS


def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def legacy(path, dtype):
    # the loader before streaming: every tensor read into memory, the network built (and randomly
    # initialised) in full, then copied
    from wall_runtime.model.checkpoint import embedding_rows, load_into, read_state_dict
    from wall_runtime.model.config import load_config
    from wall_runtime.model.decoder import WallOSSNet
    from wall_runtime.model.vision import VisionTower

    sd = read_state_dict(path)
    cfg = load_config(path, vocab_size=embedding_rows(sd))
    net = WallOSSNet(cfg.net)
    net.visual = VisionTower(cfg.vision_config())
    load_into(net, sd, cfg)
    del sd
    if dtype != torch.float32:
        net.to_inference_dtype(dtype)
    return net


path, mode, dtype_name, warm = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
dtype = getattr(torch, dtype_name)
torch.set_num_threads(1)
# Warm up everything but the weights (imports, tokenizer, config, statistics), so that the figure
# is the weights' cost: these are a few MB for a real checkpoint, but not small next to a tiny one.
from wall_runtime.model.config import load_config
from wall_runtime.model.normalizer import load_normalizers
from wall_runtime.model.tokenizer import WallTokenizer

WallTokenizer.from_checkpoint(path)
_cfg = load_config(path)
load_normalizers(path, _cfg.net.action_dim, _cfg.net.state_dim)
if warm != "-":
    # a tiny checkpoint loaded the same way first: the kernels' code pages and the allocator are
    # then warm, so what remains is the cost of the weights themselves
    _net = WallOSS.from_checkpoint(warm, dtype=dtype).net if mode == "stream" else legacy(warm, dtype)
    del _net
try:
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    reset = True
except OSError:
    reset = False
baseline = status("VmRSS")
hwm_before = status("VmHWM")
t0 = time.perf_counter()
if mode == "stream":
    net = WallOSS.from_checkpoint(path, dtype=dtype).net
else:
    net = legacy(path, dtype)
seconds = time.perf_counter() - t0
peak = status("VmHWM")
weights = sum(p.numel() * p.element_size() for p in net.parameters())
print(json.dumps({
    "baseline_rss": baseline, "peak_rss": peak, "hwm_reset": reset, "hwm_before": hwm_before,
    "weights_bytes": weights, "parameters": sum(p.numel() for p in net.parameters()), "seconds": seconds,
}))
"""


def measure(path: Path, mode: str, dtype: str, warm: Path | None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), mode, dtype, str(warm) if warm else "-"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"loading {path} ({mode}, {dtype}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # without a reset the baseline must be the import peak, not the RSS after it
    base = (
        result["baseline_rss"] if result["hwm_reset"] else max(result["baseline_rss"], result["hwm_before"])
    )
    result["over_baseline"] = result["peak_rss"] - base
    result["ratio"] = result["over_baseline"] / result["weights_bytes"]
    return result


CASES = (("stream", "float32"), ("stream", "bfloat16"), ("legacy", "float32"))


def run(size: str, variants: list[str], repeats: int, workdir: Path, smoke: bool = False) -> dict:
    results: dict = {}
    for variant in variants:
        path = write_tiny_checkpoint(workdir / f"{size}-{variant}", variant, size=size)  # type: ignore[arg-type]
        warm = write_tiny_checkpoint(workdir / f"warm-{variant}", variant, size="tiny", seed=1)  # type: ignore[arg-type]
        stored = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        for mode, dtype in CASES if not smoke else CASES[::2]:
            runs = [measure(path, mode, dtype, warm) for _ in range(repeats)]
            cold = runs if smoke else [measure(path, mode, dtype, None) for _ in range(repeats)]
            ratios = [r["ratio"] for r in runs]
            results[f"{variant}/{mode}/{dtype}"] = {
                "variant": variant,
                "loader": mode,
                "run_dtype": dtype,
                "stored_dtype": "float32",
                "stored_bytes": stored,
                "parameters": runs[0]["parameters"],
                "weights_bytes": runs[0]["weights_bytes"],
                "baseline_rss_bytes": statistics.median(r["baseline_rss"] for r in runs),
                "peak_over_baseline_bytes": statistics.median(r["over_baseline"] for r in runs),
                "ratio_median": statistics.median(ratios),
                "ratio_max": max(ratios),
                "cold_peak_over_baseline_bytes": statistics.median(r["over_baseline"] for r in cold),
                "cold_ratio_median": statistics.median(r["ratio"] for r in cold),
                "seconds_median": statistics.median(r["seconds"] for r in runs),
                "hwm_reset": all(r["hwm_reset"] for r in runs),
            }
    return results


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    mib = 2**20
    weights = [results[n]["weights_bytes"] / mib for n in names]
    peaks = [results[n]["peak_over_baseline_bytes"] / mib for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4.2))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], weights, 0.4, label="weights (run dtype)")
    ax.bar([i + 0.2 for i in x], peaks, 0.4, label="peak RSS − baseline")
    for i, n in enumerate(names):
        ax.text(i + 0.2, peaks[i], f"{results[n]['ratio_median']:.2f}×", ha="center", va="bottom", fontsize=8)
        ax.plot([i - 0.4, i + 0.4], [weights[i] * TARGET_RATIO] * 2, color="red", lw=1, ls="--")
    ax.set_xticks(list(x), [n.replace("/", "\n") for n in names], fontsize=8)
    ax.set_ylabel("MiB")
    ax.set_title(title + f" (dashed: {TARGET_RATIO}× target)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small"])
    parser.add_argument("--variants", nargs="+", default=["flow", "0.5"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--smoke", action="store_true", help="tiny config, one repeat (test suite)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.repeats, args.variants = "tiny", 1, ["0.5"]
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.size, args.variants, args.repeats, Path(tmp), smoke=args.smoke)
    report = {
        "benchmark": "loading",
        "size": args.size,
        "repeats": args.repeats,
        "target_ratio": TARGET_RATIO,
        "method": (
            "fresh subprocess per load; baseline = RSS after importing torch and wall_runtime, reading the "
            "tokenizer, config and statistics once and loading a tiny checkpoint the same way (warm code "
            "pages and allocator), with the peak reset (clear_refs 5), subtracted; cold_* = the same "
            "without the tiny warm-up load (includes fixed per-process costs of ~10 MB); ratio = (VmHWM after loading − baseline) / parameter bytes "
            "in the run dtype; checkpoints stored in float32 safetensors"
        ),
        "machine": describe_machine("safetensors"),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "loading" if not args.smoke else "loading_smoke"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out / f"{stem}.png", f"peak RSS while loading, {args.size} config")
    table = Table(title=f"loading the {args.size} config (MiB; ratio = peak over baseline / weights)")
    for col in ("case", "params", "weights", "peak − base", "ratio", "cold ratio", "s"):
        table.add_column(col, justify="right" if col != "case" else "left")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['parameters'] / 1e6:.1f} M",
            f"{r['weights_bytes'] / 2**20:.1f}",
            f"{r['peak_over_baseline_bytes'] / 2**20:.1f}",
            f"{r['ratio_median']:.2f}",
            f"{r['cold_ratio_median']:.2f}",
            f"{r['seconds_median']:.2f}",
        )
    console.print(table)
    console.print(f"wrote {args.out / (stem + '.json')} and {stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
