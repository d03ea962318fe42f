"""Robot adapter latency: read_state and command per robot, and simulated camera rendering.

    python benchmarks/bench_robot_adapters.py [--samples 300] [--out benchmarks/results]
    python benchmarks/bench_robot_adapters.py --smoke --out /tmp/bench   # 3 samples per robot

Each robot is connected as `wall-runtime check-robot` would: the MuJoCo robots directly, the
Feetech (SO-100) and Dynamixel (Koch) arms through their vendor SDKs against protocol emulators on
pseudo-terminals (in their own process), the Piper (piper_sdk) and the AgileX base against
emulated devices on python-can's virtual bus. A serial emulator is a Python process, not a servo
answering in microseconds, so bus figures bound the adapter + SDK + pty cost from above rather
than predicting a real bus. Results: benchmarks/results/robot_adapters.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track

from wall_runtime.adapters.config import load_robot
from wall_runtime.adapters.emulators import emulated
from wall_runtime.adapters.registry import build_adapter
from wall_runtime.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
ROBOTS = ("sim_arm", "sim_bimanual", "sim_base", "so100", "koch", "piper", "agilex_scout")
console = Console()


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {f"p{q}": float(np.percentile(a, q)) for q in (50, 95, 99)} | {"max": float(a.max()), "n": len(a)}


def measure(name: str, samples: int, renders: int = 20) -> dict:
    with emulated(load_robot(ROOT / "robots" / name)) as (cfg, _):
        robot = build_adapter(cfg)
        robot.connect()
        try:
            period = robot.spec.period_s
            vel = np.array([j.is_velocity for j in robot.spec.joints])
            read_ms, cmd_ms = [], []
            for _ in track(range(samples), description=f"{name:>13}", console=console):
                t = time.perf_counter()
                state = robot.read_state()
                read_ms.append((time.perf_counter() - t) * 1e3)
                target = np.where(vel, 0.0, state.position)
                t = time.perf_counter()
                robot.command(target)
                cmd_ms.append((time.perf_counter() - t) * 1e3)
                time.sleep(period / 4)
            out = {"read_ms": stats(read_ms), "command_ms": stats(cmd_ms), "control_period_ms": period * 1e3}
            if hasattr(robot, "camera_names") and robot.camera_names:
                cam = robot.camera_names[0]
                robot.render(cam)  # renderer creation is not part of the per-frame cost
                render_ms = []
                for _ in range(renders):
                    t = time.perf_counter()
                    robot.render(cam)
                    render_ms.append((time.perf_counter() - t) * 1e3)
                out["render_224_ms"] = stats(render_ms) | {"camera": cam}
            return out
        finally:
            robot.disconnect()


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["robots"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for k, (key, colour) in enumerate((("read_ms", "tab:blue"), ("command_ms", "tab:orange"))):
        p50 = [results["robots"][n][key]["p50"] for n in names]
        p99 = [results["robots"][n][key]["p99"] for n in names]
        ax.bar(x + (k - 0.5) * 0.38, p99, 0.36, color=colour, alpha=0.35, label=f"{key[:-3]} p99")
        ax.bar(x + (k - 0.5) * 0.38, p50, 0.36, color=colour, label=f"{key[:-3]} p50")
    ax.axhline(1000 / 30, color="k", ls="--", lw=1, label="30 Hz control period")
    ax.set_yscale("log")
    ax.set_xticks(
        x, [n + ("\n(emulated)" if n in ("so100", "koch", "piper", "agilex_scout") else "") for n in names]
    )
    ax.set_ylabel("ms (log)")
    ax.set_title(f"adapter read_state / command latency ({results['machine']['cores']} cores, shared)")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for robot_adapters.json and .png")
    parser.add_argument("--smoke", action="store_true", help="check the script runs: 3 samples per robot")
    args = parser.parse_args()
    if args.smoke:
        args.samples = 3
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    results = {
        "machine": describe_machine(
            "mujoco", note="shared 2-core machine with other jobs running; timings include their interference"
        ),
        "robots": {name: measure(name, args.samples, renders=2 if args.smoke else 20) for name in ROBOTS},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "robot_adapters.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "robot_adapters.png")
    for name, r in results["robots"].items():
        extra = f"  render {r['render_224_ms']['p50']:.1f} ms" if "render_224_ms" in r else ""
        console.print(
            f"{name:>13}: read p50 {r['read_ms']['p50']:.3f} p99 {r['read_ms']['p99']:.3f} ms, "
            f"command p50 {r['command_ms']['p50']:.3f} p99 {r['command_ms']['p99']:.3f} ms{extra}"
        )


if __name__ == "__main__":
    main()
