"""Inference latency per backend and per stage, and the three denoise strategies compared.

CPU mode (default) on a generated "small" checkpoint (Wall-OSS-0.5 structure, random weights,
three 640×480 cameras at resolution 448):

1. **Denoise strategies** on one config and the same weights, inputs and noise:
   - ``full_recompute``: the whole sequence (prefix + action tokens) re-run at every step (LeRobot's
     WALL-OSS port);
   - ``python_loop``: prefix once, then a Python loop of N cached action-token steps (wall-x);
   - ``fused_torch``: our fused loop in eager torch (RoPE tables and masks built once);
   - ``fused_onnx``: our fused denoise graph, all N steps in one onnxruntime call.
   Reported alone ("denoise") and with the one prefill the cached strategies need ("prefill+denoise").
2. **Backends × stages**: end-to-end ``Policy.infer`` for torch (eager) and onnxruntime, stages
   preprocess / vision / prefill / denoise / postprocess (the onnxruntime prefix graph runs vision
   and prefill as one call, reported as ``prefix``), p50 / p95 / p99, sweeping the denoise steps
   (1, 2, 4, 10 at 1 view) and the camera views (1, 2, 3 at 10 steps); ``--full-grid`` for all pairs.

GPU mode (``--mode gpu``, for an H100): the Wall-OSS-0.5 shape with random weights (3 views at
448×336, 10 steps, bf16), backends torch eager (``torch``), torch with the denoise loop in a CUDA
graph (``torch_cuda_graph``), torch with the whole call in two CUDA graphs (``cuda_graph``: prefix =
vision + prefill, and the fused denoise; ``cuda_graph_compile`` with ``torch.compile``'d modules in
the graphs, asked for by name), onnxruntime CUDA (when onnxruntime-gpu is installed) and TensorRT
(when tensorrt is installed).

    python benchmarks/bench_inference.py [--repeats 20] [--out benchmarks/results]
    python benchmarks/bench_inference.py --mode gpu --repeats 50
    python benchmarks/bench_inference.py --smoke --out /tmp/bench   # tiny config, one call per point

In GPU mode a backend whose package or execution provider is missing is recorded as skipped, with
the reason, before anything is exported for it.

Writes ``inference_<mode>.json`` (figures and the machine) and ``inference_<mode>.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from wall_runtime.machine import describe_machine
from wall_runtime.model.pipeline import WallOSS
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
from wall_runtime.types import Observation

CAMERAS = ("face_view", "left_wrist_view", "right_wrist_view")
STEPS_SWEEP = (1, 2, 4, 10)
VIEWS_SWEEP = (1, 2, 3)
INSTRUCTION = "pick up the red block and put it in the bowl"
console = Console()


# ----------------------------------------------------------------------------------------- machine, stats


def machine() -> dict:
    info = describe_machine("onnxruntime", "tensorrt")
    if info["onnxruntime"]:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    return info


def percentiles(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "n": int(a.size),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


# ----------------------------------------------------------------------------------------- checkpoints


def _three_cameras(root: Path, resolution: int) -> None:
    """Give the generated checkpoint a third camera (the published 0.5 robots have three)."""
    yml_path = root / "config.yml"
    yml = yaml.safe_load(yml_path.read_text())
    data = yml.setdefault("data", {})
    data["resolution"] = dict.fromkeys(CAMERAS, resolution)
    data["key_mappings"] = {"camera": {f"observation.images.{c}": c for c in CAMERAS}}
    yml_path.write_text(yaml.safe_dump(yml, sort_keys=False))


def small_checkpoint(root: Path, variant: str, size: str = "small") -> Path:
    ck = root / f"{size}-{variant}"
    write_tiny_checkpoint(ck, variant, size=size)
    res = yaml.safe_load((ck / "config.yml").read_text())["data"]["resolution"]
    _three_cameras(ck, next(iter(res.values())))
    return ck


def full_size_checkpoint(root: Path) -> Path:
    """A Wall-OSS-0.5-shaped checkpoint with random weights, written in bf16 in the published layout:
    the config ``model-size`` plans (``published_config_files``: Qwen2.5-VL-3B backbone, 1024-wide
    action expert, 3 views at 448, chunk 32)."""
    from wall_runtime.model.checkpoint import (
        fuse_state_dict,
        published_fused_names,
        unfused_weight_shapes,
        write_state_dict,
    )
    from wall_runtime.model.config import build_config
    from wall_runtime.model.normalizer import write_norm_stats_json
    from wall_runtime.model.size import TOKENIZER_LEN, published_config_files

    ck = root / "wall-oss-0.5-random"
    if (ck / ".complete").exists():  # a rerun in the same workdir (8 GB are not written twice)
        return ck
    write_tiny_checkpoint(ck, "0.5")  # the tokenizer and norm stats; config and weights replaced below
    (ck / "model.safetensors").unlink()
    # the published size as `wall-runtime model-size` plans it (its assumptions: model/size.py)
    cfg, yml = published_config_files("0.5")
    (ck / "config.json").write_text(json.dumps(cfg, indent=2))
    (ck / "config.yml").write_text(yaml.safe_dump(yml, sort_keys=False))
    wall_cfg = build_config(cfg, yml, vocab_size=TOKENIZER_LEN)

    def unit_range(layout: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        real = sum(n for key, n in layout.items() if key != "action_padding")
        return -np.ones(real), np.ones(real)

    # statistics of the published layout's real dims (the tiny ones are for another layout)
    write_norm_stats_json(
        ck / "norm_stats.json",
        unit_range(wall_cfg.data.dof_config),
        unit_range(wall_cfg.data.agent_pos_config),
    )
    # ~4 B random values: drawn on the GPU where there is one (seconds, not a minute of CPU time)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device).manual_seed(0)
    sd = {}
    for name, shape in unfused_weight_shapes(wall_cfg).items():
        if "norm" in name and len(shape) == 1:
            sd[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            sd[name] = (torch.randn(shape, generator=g, device=device) * 0.02).to(torch.bfloat16).cpu()
    sd = fuse_state_dict(sd, published_fused_names(wall_cfg, "published"))
    write_state_dict(sd, ck, max_shard_bytes=4 << 30)
    (ck / ".complete").write_text("written by benchmarks/bench_inference.py\n")
    return ck


def observation(views: int, seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(
        stamp=0.0,
        images={c: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for c in CAMERAS[:views]},
        state=rng.uniform(-1, 1, 8).astype(np.float32),
        instruction=INSTRUCTION,
    )


# ----------------------------------------------------------------------------------------- strategies


def strategies(ck: Path, views: int, steps: int, repeats: int, warmup: int, cache: Path, device: str) -> dict:
    """The three denoise strategies (and eager fused torch) on the same weights, inputs and noise."""
    from wall_runtime.backends.onnxruntime_backend import OnnxRuntimePolicy
    from wall_runtime.backends.static_shapes import denoise_feeds
    from wall_runtime.model.sampler import denoise, denoise_full_recompute, denoise_stepwise

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = WallOSS.from_checkpoint(ck, device=device, dtype=dtype, num_steps=steps)
    net, settings = model.net, model.settings
    obs = observation(views)
    batch = model.preprocess([obs])
    noise = model.make_noise(1, None, torch.Generator().manual_seed(0))
    lp, h = batch.prefix_length, model.cfg.net.action_horizon
    with torch.no_grad():
        embeds = model.prefix_embeds(batch, model.encode_images(batch))
    pos = torch.from_numpy(batch.position_ids[:, :, :lp]).to(device)
    mask = torch.from_numpy(batch.attention_mask[:, :lp]).to(device)
    dof = torch.from_numpy(batch.dof_mask).to(device)[:, None, :].expand(-1, h, -1).contiguous()
    spos = torch.from_numpy(batch.position_ids[:, :, lp:]).to(device)
    pad = torch.from_numpy(batch.padding_action).to(device)
    with torch.no_grad():
        kv = net.prefix(embeds, pos, mask)
        ref = denoise_stepwise(net, kv, noise, dof, spos, mask, settings, pad)

    results: dict = {"views": views, "steps": steps, "prefix_tokens": lp, "horizon": h}
    results["prefill"] = percentiles(time_ms(lambda: net.prefix(embeds, pos, mask), repeats, warmup))
    runs = {
        "full_recompute": lambda: denoise_full_recompute(
            net, embeds, pos, mask, noise, dof, spos, settings, pad
        ),
        "python_loop": lambda: denoise_stepwise(net, kv, noise, dof, spos, mask, settings, pad),
        "fused_torch": lambda: denoise(net, kv, noise, dof, spos, mask, settings, pad),
    }
    outputs = {}
    for name, fn in runs.items():
        with torch.no_grad():
            outputs[name] = fn().float().cpu().numpy()
        results[name] = {"denoise": percentiles(time_ms(fn, repeats, warmup))}

    if device == "cuda":
        from wall_runtime.backends.cuda_graph import CudaGraphDenoiser

        graphed = CudaGraphDenoiser(net, settings)
        runs_graph = {"fused_cuda_graph": lambda: graphed(kv, noise, dof, spos, mask, pad)}
        for name, fn in runs_graph.items():
            outputs[name] = fn().float().cpu().numpy()
            results[name] = {"denoise": percentiles(time_ms(fn, repeats, warmup))}
    if device == "cpu":
        policy = OnnxRuntimePolicy.from_checkpoint(
            ck, cache_dir=cache, num_steps=steps, cameras={c: (480, 640) for c in CAMERAS[:views]}
        )
        # the ONNX graph takes the torch KV cache, left-padded to its prompt length
        shapes = policy.shapes
        extra = shapes.prefix_length - lp
        feeds_kv = {
            n: np.pad(t.numpy(), [(0, 0)] * 3 + [(extra, 0), (0, 0)]) for n, t in (("k", kv.k), ("v", kv.v))
        }
        full_mask = np.pad(batch.attention_mask[:, :lp], [(0, 0), (extra, 0)])
        feeds = denoise_feeds(batch, shapes, noise.numpy(), full_mask) | feeds_kv
        outputs["fused_onnx"] = policy.run_denoise(feeds)["actions"].numpy()
        results["fused_onnx"] = {
            "denoise": percentiles(time_ms(lambda: policy.run_denoise(feeds), repeats, warmup))
        }
        results["fused_onnx"]["note"] = f"graph prompt length {shapes.prefix_length} (left-padded from {lp})"
    ref_np = ref.float().cpu().numpy()
    for name, out in outputs.items():
        results[name]["max_abs_vs_python_loop"] = float(np.abs(out - ref_np).max())
    prefill = results["prefill"]["p50"]
    for name in [n for n in ("python_loop", "fused_torch", "fused_onnx", "fused_cuda_graph") if n in results]:
        results[name]["prefill+denoise_p50"] = prefill + results[name]["denoise"]["p50"]
    results["full_recompute"]["prefill+denoise_p50"] = results["full_recompute"]["denoise"]["p50"]
    best = next(n for n in ("fused_onnx", "fused_cuda_graph", "fused_torch") if n in results)
    results["speedups"] = {
        "fused": best,
        "vs_full_recompute_end_to_end": results["full_recompute"]["prefill+denoise_p50"]
        / results[best]["prefill+denoise_p50"],
        "vs_full_recompute_denoise": results["full_recompute"]["denoise"]["p50"]
        / results[best]["denoise"]["p50"],
        "vs_python_loop_denoise": results["python_loop"]["denoise"]["p50"] / results[best]["denoise"]["p50"],
        "vs_python_loop_end_to_end": results["python_loop"]["prefill+denoise_p50"]
        / results[best]["prefill+denoise_p50"],
    }
    return results


# ----------------------------------------------------------------------------------------- backends × stages


def unavailable(backend: str, device: str) -> str | None:
    """Why ``backend`` cannot run on ``device`` here (None when it can), checked before any export:
    at full size an ONNX export or an engine build takes minutes, wasted if the runtime is missing."""
    import importlib.util

    if backend in ("torch_cuda_graph", "cuda_graph", "cuda_graph_compile") and device != "cuda":
        return "CUDA graphs need a CUDA device"
    if backend == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed"
        if device == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    if backend == "tensorrt":
        if device != "cuda":
            return "TensorRT needs a CUDA device"
        if importlib.util.find_spec("tensorrt") is None:
            return "tensorrt is not installed"
    return None


def make_policy(backend: str, ck: Path, views: int, steps: int, cache: Path, device: str):
    cameras = {c: (480, 640) for c in CAMERAS[:views]}
    if backend in ("torch", "torch_cuda_graph"):
        from wall_runtime.backends.torch_backend import TorchPolicy

        # on CUDA the torch backend captures the denoise loop by default: "torch" is the eager baseline
        graphs = backend == "torch_cuda_graph"
        return TorchPolicy.from_checkpoint(ck, device=device, num_steps=steps, seed=0, cuda_graph=graphs)
    if backend in ("cuda_graph", "cuda_graph_compile"):
        from wall_runtime.backends.cuda_graph import CudaGraphPolicy

        # the whole call in two CUDA graphs (prefix = vision + prefill; fused denoise), static shapes;
        # "_compile": torch.compile'd modules inside the graphs
        compile_ = backend == "cuda_graph_compile"
        return CudaGraphPolicy.from_checkpoint(ck, num_steps=steps, cameras=cameras, seed=0, compile=compile_)
    if backend == "onnxruntime":
        from wall_runtime.backends.onnxruntime_backend import OnnxRuntimePolicy

        providers = "cpu" if device == "cpu" else "cuda"
        return OnnxRuntimePolicy.from_checkpoint(
            ck, cache_dir=cache, num_steps=steps, cameras=cameras, providers=providers, seed=0
        )
    if backend == "tensorrt":
        from wall_runtime.backends.tensorrt_backend import TensorRTPolicy

        return TensorRTPolicy.from_checkpoint(
            ck, cache_dir=cache, num_steps=steps, cameras=cameras, precision="bf16", seed=0
        )
    raise ValueError(backend)


def time_policy(policy, views: int, repeats: int, warmup: int) -> dict:
    obs = observation(views)
    per_stage: dict[str, list[float]] = {}
    for i in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        result = policy.infer([obs])[0]
        sync()
        wall = (time.perf_counter() - t0) * 1e3
        if i < warmup:
            continue
        for stage, ms in result.timing_ms.items():
            per_stage.setdefault(stage, []).append(ms)
        per_stage.setdefault("wall", []).append(wall)
    if "prefix" in per_stage and "vision" in per_stage:  # torch: "prefix" is embeddings + prefill
        per_stage["prefill"] = per_stage.pop("prefix")
    return {stage: percentiles(v) for stage, v in per_stage.items()}


def sweep(
    backends,
    ck: Path,
    configs,
    repeats: int,
    warmup: int,
    cache: Path,
    device: str,
    progress,
    exported_configs=None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """``exported_configs`` (if given) limits the exported backends, each of whose points is an export
    and, for TensorRT, an engine build (minutes each at full size)."""
    plan = [
        (b, c)
        for b in backends
        for c in (exported_configs if exported_configs and b in ("onnxruntime", "tensorrt") else configs)
    ]
    rows = []
    task = progress.add_task("backends × stages", total=len(plan))
    for backend, (views, steps) in plan:
        progress.update(task, description=f"{backend}: {views} view(s), {steps} step(s)")
        try:
            t0 = time.perf_counter()
            policy = make_policy(backend, ck, views, steps, cache, device)
            setup_s = time.perf_counter() - t0
            stages = time_policy(policy, views, repeats, warmup)
            rows.append(
                {"backend": backend, "views": views, "steps": steps, "setup_s": setup_s, "stages": stages}
            )
            policy.close()
        except (RuntimeError, ImportError) as e:
            rows.append({"backend": backend, "views": views, "steps": steps, "error": str(e)})
            console.print(f"[yellow]{backend} {views} view(s) {steps} step(s): {e}")
        if on_row is not None:
            on_row(rows[-1])
        progress.advance(task)
    return rows


def _point(text: str) -> tuple[int, int]:
    try:
        views, steps = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--points {text!r}: write VIEWSxSTEPS, e.g. 3x10") from None
    if views not in VIEWS_SWEEP or steps < 1:
        raise SystemExit(f"--points {text!r}: views must be 1, 2 or 3 and steps >= 1")
    return views, steps


# ----------------------------------------------------------------------------------------- report


def print_tables(result: dict) -> None:
    s = result.get("strategies")
    if s:
        t = Table(
            title=f"denoise strategies ({s['views']} view(s), {s['steps']} steps, {s['prefix_tokens']} prefix tokens)"
        )
        for col in ("strategy", "denoise p50 ms", "p95", "p99", "prefill+denoise p50 ms", "max abs vs loop"):
            t.add_column(col)
        for name in ("full_recompute", "python_loop", "fused_torch", "fused_onnx", "fused_cuda_graph"):
            if name in s:
                d = s[name]["denoise"]
                t.add_row(
                    name,
                    f"{d['p50']:.1f}",
                    f"{d['p95']:.1f}",
                    f"{d['p99']:.1f}",
                    f"{s[name]['prefill+denoise_p50']:.1f}",
                    f"{s[name]['max_abs_vs_python_loop']:.1e}",
                )
        console.print(t)
        console.print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in s["speedups"].items()})
    t = Table(title="Policy.infer per stage, p50 ms (p99)")
    stages = ("preprocess", "vision", "prefill", "prefix", "denoise", "postprocess", "total")
    for col in ("backend", "views", "steps", *stages):
        t.add_column(col)
    for row in result["backends"]:
        if "error" in row:
            t.add_row(row["backend"], str(row["views"]), str(row["steps"]), f"[yellow]{row['error'][:60]}")
            continue
        cells = []
        for st in stages:
            v = row["stages"].get(st)
            cells.append(f"{v['p50']:.1f} ({v['p99']:.1f})" if v else "-")
        t.add_row(row["backend"], str(row["views"]), str(row["steps"]), *cells)
    console.print(t)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["backends"] if "error" not in r]
    backends = sorted({r["backend"] for r in rows}, key=[r["backend"] for r in rows].index) if rows else []
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    s = result.get("strategies")
    ax = axes[0]
    if s:
        names = [
            n
            for n in ("full_recompute", "python_loop", "fused_torch", "fused_onnx", "fused_cuda_graph")
            if n in s
        ]
        den = [s[n]["denoise"]["p50"] for n in names]
        err = [[0] * len(names), [s[n]["denoise"]["p95"] - s[n]["denoise"]["p50"] for n in names]]
        e2e = [s[n]["prefill+denoise_p50"] for n in names]
        x = np.arange(len(names))
        ax.bar(x - 0.2, den, 0.4, yerr=err, label="denoise (p50, bar to p95)")
        ax.bar(x + 0.2, e2e, 0.4, label="prefill + denoise (p50)")
        ax.set_xticks(x, [n.replace("_", "\n") for n in names])
        ax.set_ylabel("ms")
        ax.set_title(f"denoise strategies, {s['steps']} steps, {s['views']} view(s)")
        ax.legend()
    for ax, (label, key, fixed_key, fixed) in zip(
        axes[1:],
        (("denoise steps", "steps", "views", 1), ("camera views", "views", "steps", 10)),
        strict=True,
    ):
        for b in backends:
            pts = sorted((r[key], r) for r in rows if r["backend"] == b and r[fixed_key] == fixed)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            total = [p[1]["stages"]["total"]["p50"] for p in pts]
            p99 = [p[1]["stages"]["total"]["p99"] for p in pts]
            den = [p[1]["stages"]["denoise"]["p50"] for p in pts]
            (line,) = ax.plot(xs, total, "o-", label=f"{b} total p50")
            ax.fill_between(xs, total, p99, color=line.get_color(), alpha=0.15)
            ax.plot(xs, den, "s--", color=line.get_color(), label=f"{b} denoise p50")
        ax.set_xlabel(label)
        ax.set_ylabel("ms")
        ax.set_title(f"Policy.infer vs {label} ({fixed_key}={fixed}; band to p99)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"{result['config']} on {m.get('gpu') or m['cpu']} ({m['usable_cores']} cpus)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--variant", choices=("0.5", "flow"), default="0.5", help="CPU mode model generation")
    ap.add_argument("--size", choices=("small", "tiny"), default="small", help="CPU mode model size")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per point (cpu 10, gpu 50)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--full-grid", action="store_true", help="every (steps, views) pair, not one factor at a time"
    )
    ap.add_argument("--backends", nargs="*", default=None)
    ap.add_argument(
        "--points",
        nargs="*",
        default=None,
        metavar="VIEWSxSTEPS",
        help="only these (views, steps) points for every backend, e.g. 3x10 (default: the sweep)",
    )
    ap.add_argument("--skip-strategies", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true", help="only the denoise strategies")
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--workdir", type=Path, default=None, help="where checkpoints and the engine cache go")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--tag", default="", help="suffix of the result file names")
    ap.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a backend that ran failed (skipped ones do not count)",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="check the script runs: tiny config (also in GPU mode), 1 and 2 steps at 1 view, one timed call",
    )
    args = ap.parse_args()
    if args.smoke:
        args.size, args.repeats, args.warmup = "tiny", args.repeats or 1, 0

    gpu = args.mode == "gpu"
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["WALL_RUNTIME_ORT_THREADS"] = str(args.threads)
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--mode gpu needs a CUDA GPU")
    device = "cuda" if gpu else "cpu"
    repeats = args.repeats or (50 if gpu else 10)
    backends = args.backends or (
        ["torch", "torch_cuda_graph", "cuda_graph", "onnxruntime", "tensorrt"]
        if gpu
        else ["torch", "onnxruntime"]
    )
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-inference-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    if args.points:
        configs = [_point(p) for p in args.points]
    elif args.smoke:
        configs = [(1, 1), (1, 2)]
    elif args.full_grid:
        configs = [(v, s) for v in VIEWS_SWEEP for s in STEPS_SWEEP]
    elif gpu:
        configs = [
            (3, 10),
            *[(3, s) for s in STEPS_SWEEP if s != 10],
            *[(v, 10) for v in VIEWS_SWEEP if v != 3],
        ]
    else:
        configs = [(1, s) for s in STEPS_SWEEP] + [(v, 10) for v in VIEWS_SWEEP if v != 1]

    skipped = {b: why for b in backends if (why := unavailable(b, device))}
    backends = [b for b in backends if b not in skipped]
    for b, why in skipped.items():
        console.print(f"[yellow]{b}: skipped ({why})")
    full_size = gpu and not args.smoke
    with console.status("writing the checkpoint"):
        ck = full_size_checkpoint(work) if full_size else small_checkpoint(work, args.variant, args.size)
    dtype = "bf16" if gpu else "fp32"
    config = (
        "Wall-OSS-0.5 shape, random weights, bf16"
        if full_size
        else f"'{args.size}' {args.variant} config ({dtype})"
    )
    result: dict = {
        "mode": args.mode,
        "config": config,
        "checkpoint": str(ck),
        "frames": "640x480 per camera",
        "repeats": repeats,
        "warmup": args.warmup,
        "machine": machine(),
        "skipped_backends": skipped,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"inference_{args.mode}{'_' + args.tag if args.tag else ''}"

    def save(row: dict | None = None) -> None:
        """Write what is measured so far: a run stopped by a time box still leaves its figures."""
        if row is not None:
            result["backends"].append(row)
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))

    with Progress(console=console) as progress:
        if not args.skip_strategies:
            t = progress.add_task("denoise strategies", total=None)
            views = 3 if full_size else 1
            steps = 2 if args.smoke else 10
            result["strategies"] = strategies(ck, views, steps, repeats, args.warmup, cache, device)
            progress.remove_task(t)
            save()
        if args.points:
            exported = configs
        elif args.smoke:
            exported = [(1, 2)]
        else:
            exported = None if (args.full_grid or not gpu) else [(3, 10)]
        result["backends"] = []
        if not args.skip_sweep:
            sweep(backends, ck, configs, repeats, args.warmup, cache, device, progress, exported, save)
    result["load_average_1min_at_end"] = os.getloadavg()[0]
    print_tables(result)
    save()
    plot(result, args.out / f"{stem}.png")
    console.print(f"wrote {args.out / stem}.json and .png")
    failed = [r for r in result["backends"] if "error" in r]
    if args.strict and failed:
        raise SystemExit(
            f"{len(failed)} backend point(s) failed: " + "; ".join(r["error"][:200] for r in failed)
        )


if __name__ == "__main__":
    main()
