"""The trained demo's data recipe and training, measured: expert episodes recorded in the pick-cube
scene, ``wall-runtime train`` on them, the loss curve as JSON + plot.

Full run (what produced ``benchmarks/results/training_pick_cube.*``)::

    python benchmarks/bench_training.py --episodes 60 --steps 150 --batch-size 8

or, to summarise a run made with the CLI (``pick-cube record`` then ``train``)::

    python benchmarks/bench_training.py --from-checkpoint CKPT_DIR --data DATA.npz

``--smoke``: 2 episodes at 32×32, 3 steps of the tiny model, into ``--out``.

Times: wall seconds and this process's CPU seconds. On a shared machine the wall time includes
waiting for a core; CPU seconds / threads is what an otherwise idle machine of the same kind needs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wall_runtime.machine import describe_machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
NAME = "training_pick_cube"


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    log = record["log"]
    steps = np.array([r["step"] for r in log])
    loss = np.array([r["loss"] for r in log])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss (per step)")
    if len(loss) >= 10:
        k = max(5, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=2, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching MSE (dof-masked)")
    s = record["settings"]
    ax.set_title(
        f"wall-runtime train, pick-cube: {s['variant']} {s['size']}, batch {s['batch_size']}, "
        f"{record['data']['episodes']} episodes",
        fontsize=9,
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(ckpt: Path, ds, episodes: int) -> dict:
    """Closed-loop success on held-out seeds of the trained checkpoint and of its starting point
    (the same seed's random weights, in the same layout)."""
    from dataclasses import asdict

    from wall_runtime.model.config import load_config
    from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
    from wall_runtime.sims.pick_cube_data import EVAL_SEED_START, evaluate_checkpoint
    from wall_runtime.training.trainer import NORM_KEY, dataset_layout

    settings = json.loads((ckpt / "training.json").read_text())["settings"]
    seeds = list(range(EVAL_SEED_START, EVAL_SEED_START + episodes))
    image_size = int(next(iter(ds.images.values())).shape[1])
    random_dir = Path(tempfile.mkdtemp(prefix="bench-training-random-"))
    layout = dataset_layout(ds, sorted(ds.images), load_config(ckpt).net.action_horizon)
    write_tiny_checkpoint(
        random_dir,
        settings["variant"],
        seed=settings["seed"],
        size=settings["size"],
        layout=layout,
        norm_key=NORM_KEY,
    )
    out = {"seeds": [seeds[0], seeds[-1]], "execute": 8, "max_steps": 60}
    for name, path in (("trained", ckpt), ("random_weights", random_dir)):
        eps = evaluate_checkpoint(path, seeds, image_size=image_size)
        out[name] = {
            "success_rate": sum(e.success for e in eps) / len(eps),
            "episodes": [asdict(e) for e in eps],
        }
    return out


def summarise(ckpt: Path, data: Path, record_summary: dict | None, out: Path, eval_episodes: int = 0) -> dict:
    from wall_runtime.training.dataset import read_dataset
    from wall_runtime.training.trainer import LOG_NAME, SUMMARY_NAME

    ds = read_dataset(data)
    summary = json.loads((ckpt / SUMMARY_NAME).read_text())
    log = [json.loads(line) for line in (ckpt / LOG_NAME).read_text().splitlines()]
    last = log[-1]
    steps = summary["settings"]["steps"]
    record = {
        "machine": describe_machine("mujoco", "mink"),
        "settings": summary["settings"],
        "data": {
            "file": data.name,
            "episodes": ds.num_episodes,
            "frames": ds.num_frames,
            "tasks": ds.tasks,
            "image_size": int(next(iter(ds.images.values())).shape[1]),
            "recording": record_summary or ds.meta,
        },
        "loss_first": log[0]["loss"],
        "loss_last_10_mean": sum(r["loss"] for r in log[-10:]) / len(log[-10:]),
        "seconds": summary["seconds"],
        "cpu_seconds": summary.get("cpu_seconds", last.get("cpu_seconds")),
        "cpu_seconds_per_step": (summary.get("cpu_seconds") or 0) / steps,
        "model.safetensors sha256": summary["model.safetensors sha256"],
        "checkpoint_mb": round(sum(f.stat().st_size for f in ckpt.iterdir()) / 1e6, 2),
        "log": log,
    }
    if eval_episodes:
        record["closed_loop_eval"] = evaluate(ckpt, ds, eval_episodes)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps(record, indent=1))
    plot(record, out / f"{NAME}.png")
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="2 episodes, 3 tiny steps")
    ap.add_argument("--episodes", type=int, default=60)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--size", default="demo")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--from-checkpoint", type=Path, help="summarise this trained checkpoint instead")
    ap.add_argument("--data", type=Path, help="its dataset (with --from-checkpoint)")
    ap.add_argument("--eval-episodes", type=int, default=0, help="closed-loop episodes on held-out seeds")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.from_checkpoint is not None:
        if args.data is None:
            ap.error("--from-checkpoint needs --data")
        record = summarise(args.from_checkpoint, args.data, None, args.out, args.eval_episodes)
    else:
        from wall_runtime.sims.pick_cube_data import record_expert_dataset
        from wall_runtime.training.trainer import TrainSettings, train

        if args.smoke:
            args.episodes, args.steps, args.batch_size, args.size, args.image_size = 2, 3, 2, "tiny", 32
        work = Path(tempfile.mkdtemp(prefix="bench-training-"))
        t0 = time.perf_counter()
        data, rec = record_expert_dataset(work / "data.npz", args.episodes, image_size=args.image_size)
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        from wall_runtime.training.dataset import read_dataset

        settings = TrainSettings(
            steps=args.steps,
            batch_size=args.batch_size,
            size=args.size,
            lr=5e-4,
            warmup_steps=min(15, args.steps),
            log_every=1,
        )
        train(read_dataset(data), work / "ckpt", settings, data_id=data.name)
        record = summarise(work / "ckpt", data, rec, args.out, 1 if args.smoke else args.eval_episodes)
    for name, ev in record.get("closed_loop_eval", {}).items():
        if isinstance(ev, dict) and "success_rate" in ev:
            print(f"{name}: success {ev['success_rate']:.0%} on {len(ev['episodes'])} held-out seeds")
    print(
        f"loss {record['loss_first']:.4f} -> {record['loss_last_10_mean']:.4f} over "
        f"{record['settings']['steps']} steps; {record['cpu_seconds_per_step']:.2f} CPU s/step; "
        f"wrote {args.out / (NAME + '.json')}"
    )


if __name__ == "__main__":
    main()
