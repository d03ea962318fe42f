"""The eager denoise loops, measured against each other fairly: ``fused_torch`` vs ``python_loop``.

``fused_torch`` (``sampler.denoise``, the body the ONNX graph and the CUDA graph are made of) and
``python_loop`` (``sampler.denoise_stepwise``, one public ``net.denoise_step`` per step) run the same
per-step network; the fused one builds the RoPE tables and the suffix masks once instead of every
step. A sequential measurement (all calls of one, then all of the other) on a shared machine turns
load drift into a difference between them, so here the two alternate call by call (ABAB…, BABA…),
at each intra-op thread count, on the same weights, inputs and noise; outputs are checked equal. A
``torch.profiler`` op table of one call of each is kept in the JSON.

    python benchmarks/bench_denoise_loop.py [--threads 1 2] [--repeats 20] [--out benchmarks/results]
    python benchmarks/bench_denoise_loop.py --smoke --out /tmp/x   # tiny, 3 calls (the test suite)

Writes ``denoise_loop.json`` and ``denoise_loop.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_inference import observation, small_checkpoint

from wall_runtime.machine import describe_machine
from wall_runtime.model.pipeline import WallOSS
from wall_runtime.model.sampler import denoise, denoise_stepwise

LOOPS = ("python_loop", "fused_torch")


def setup(ck: Path, views: int):
    model = WallOSS.from_checkpoint(ck, num_steps=10)
    net, settings = model.net, model.settings
    batch = model.preprocess([observation(views)])
    noise = model.make_noise(1, None, torch.Generator().manual_seed(0))
    lp, h = batch.prefix_length, model.cfg.net.action_horizon
    with torch.no_grad():
        embeds = model.prefix_embeds(batch, model.encode_images(batch))
        pos = torch.from_numpy(batch.position_ids[:, :, :lp])
        mask = torch.from_numpy(batch.attention_mask[:, :lp])
        kv = net.prefix(embeds, pos, mask)
    dof = torch.from_numpy(batch.dof_mask)[:, None, :].expand(-1, h, -1).contiguous()
    spos = torch.from_numpy(batch.position_ids[:, :, lp:])
    pad = torch.from_numpy(batch.padding_action)
    fns = {
        "python_loop": lambda: denoise_stepwise(net, kv, noise, dof, spos, mask, settings, pad),
        "fused_torch": lambda: denoise(net, kv, noise, dof, spos, mask, settings, pad),
    }
    return fns, lp


def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    with torch.no_grad():
        for _ in range(warmup):
            for _, fn in order:
                fn()
        for i in range(repeats):
            for name, fn in order if i % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def profile_ops(fn, rows: int = 8) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    table = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return [{"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3, 2)} for e in table]


def summary(samples: list[float]) -> dict:
    q = np.percentile(samples, [25, 50, 75, 95])
    return {"n": len(samples), "p25": q[0], "p50": q[1], "p75": q[2], "p95": q[3], "min": min(samples)}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = list(results)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    width = 0.38
    for j, loop in enumerate(LOOPS):
        p50 = [results[t][loop]["p50"] for t in threads]
        err = [
            [results[t][loop]["p50"] - results[t][loop]["p25"] for t in threads],
            [results[t][loop]["p75"] - results[t][loop]["p50"] for t in threads],
        ]
        ax.bar(
            [i + (j - 0.5) * width for i in range(len(threads))], p50, width, yerr=err, capsize=3, label=loop
        )
    ax.set_xticks(range(len(threads)), [f"{t} thread(s)" for t in threads])
    ax.set_ylabel("denoise ms (p50, IQR)")
    ax.set_title("eager denoise loops, interleaved calls", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--size", choices=("small", "tiny"), default="small")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--smoke", action="store_true", help="tiny config, 3 calls, 1 thread (test suite)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.size, args.repeats, args.threads, args.views = "tiny", 3, [1], 1
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        ck = small_checkpoint(Path(tmp), "0.5", size=args.size)
        fns, lp = setup(ck, args.views)
        with torch.no_grad():
            outs = {k: f() for k, f in fns.items()}
        max_diff = float((outs["python_loop"] - outs["fused_torch"]).abs().max())
        for threads in args.threads:
            torch.set_num_threads(threads)
            samples = interleaved(fns, args.repeats)
            results[str(threads)] = {k: summary(v) for k, v in samples.items()}
            results[str(threads)]["fused_over_loop_p50"] = statistics.median(
                f / p for f, p in zip(samples["fused_torch"], samples["python_loop"], strict=True)
            )
        torch.set_num_threads(1)
        ops = {k: profile_ops(f) for k, f in fns.items()}
    report = {
        "benchmark": "denoise_loop",
        "size": args.size,
        "variant": "0.5",
        "views": args.views,
        "prefix_tokens": lp,
        "steps": 10,
        "max_abs_fused_vs_loop": max_diff,
        "method": "calls alternate ABAB/BABA; p50 and IQR over repeats; fused_over_loop_p50 = median of "
        "per-pair ratios; ops = torch.profiler self CPU time of one call at 1 thread",
        "results": results,
        "ops_one_call_1_thread": ops,
        "machine": describe_machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "denoise_loop_smoke" if args.smoke else "denoise_loop"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out / f"{stem}.png")
    for t, r in results.items():
        print(
            f"{t} thread(s): python_loop p50 {r['python_loop']['p50']:.1f} ms, fused_torch p50 "
            f"{r['fused_torch']['p50']:.1f} ms, fused/loop {r['fused_over_loop_p50']:.3f}"
        )
    print(f"max |fused − loop| = {max_diff:.2e}; wrote {args.out / stem}.json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
