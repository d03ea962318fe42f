"""Inverse kinematics per waypoint, per shipped robot arm (wall_runtime.kinematics, mink + DAQP).

    python benchmarks/bench_ik.py [--poses 1000] [--chunks 30] [--smoke] [--out DIR]

Two workloads per arm:

* **random**: ``--poses`` random reachable poses, each the FK of joint positions drawn uniformly
  inside the arm's limits (robot.yaml ∩ model); the seed is those joints perturbed by N(0, 0.2 rad)
  per joint and clipped to the limits (a measured state some 10° per joint away from the answer).
* **chunk**: what the runtime does when a chunk arrives: ``--chunks`` chunks of 32 waypoints along a
  smooth joint-space path (each joint moves up to ±0.3 rad over the chunk, so the EE moves a few mm
  per waypoint), solved by ``ik_chain`` from the chunk start's joints, each waypoint seeded from the
  previous solution.

Per arm: success rate against the arm's tolerances (1 mm / 0.5°; position only for 5-DoF arms),
position and orientation error, iterations, and time per waypoint as wall time and as the
thread's CPU time (the machine is shared: wall-time tails include waiting for a core, CPU time
does not). Results: benchmarks/results/ik.json and ik.png; ``--smoke`` runs a few poses per arm
into ``--out`` (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from wall_runtime.kinematics import Pose, build_arm_kinematics, load_robot_kinematics, rotation_angle
from wall_runtime.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
ROBOTS = ("sim_arm", "sim_bimanual", "so100", "koch", "piper", "ur5e", "xarm6")
SEED_SIGMA = 0.2
CHUNK = 32
CHUNK_SPAN = 0.3

# A third-party arm model: ALOHA's ViperX 300s from gym-aloha's assets (installed --no-deps).
VIPERX_BLOCK = {
    "model": "package:gym_aloha/assets/bimanual_viperx_transfer_cube.xml",
    "base": {"body": "vx300s_left"},
    "tool": {"site": "cali_left_site1"},
    "joints": ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate"],
    "model_joints": {
        j: f"vx300s_left/{j}"
        for j in ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
    },
}


def arms() -> dict[str, object]:
    out: dict[str, object] = {}
    for robot in ROBOTS:
        for name, arm in load_robot_kinematics(ROOT / "robots" / robot).items():
            out[robot if name == "arm" else f"{robot}.{name}"] = arm
    try:
        out["viperx (gym-aloha)"] = build_arm_kinematics(VIPERX_BLOCK, ROOT, name="viperx")
    except ValueError as exc:  # gym-aloha not installed
        print(f"skipping the ViperX: {exc}")
    return out


def pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def timed_ik(arm, target: Pose, seed: np.ndarray):
    t, c = time.perf_counter(), time.thread_time()
    res = arm.ik(target, seed)
    return res, (time.perf_counter() - t) * 1e3, (time.thread_time() - c) * 1e3


def summarise(results, wall_ms, cpu_ms) -> dict:
    return {
        "n": len(results),
        "ok_rate": float(np.mean([r.ok for r in results])),
        "position_error_mm": pct([r.position_error * 1e3 for r in results]),
        "orientation_error_deg": pct([np.degrees(r.orientation_error) for r in results]),
        "iterations": {
            "mean": float(np.mean([r.iterations for r in results])),
            "max": max(r.iterations for r in results),
        },
        "wall_ms": pct(wall_ms),
        "cpu_ms": pct(cpu_ms),
    }


def bench_random(arm, n: int, rng: np.random.Generator) -> dict:
    results, wall, cpu = [], [], []
    for _ in range(n):
        q = rng.uniform(arm.lower, arm.upper)
        seed = np.clip(q + rng.normal(0.0, SEED_SIGMA, q.shape), arm.lower, arm.upper)
        res, w, c = timed_ik(arm, arm.fk(q), seed)
        results.append(res)
        wall.append(w)
        cpu.append(c)
    return summarise(results, wall, cpu)


def bench_chunks(arm, chunks: int, rng: np.random.Generator) -> dict:
    results, wall, cpu = [], [], []
    margin = 0.1 * (arm.upper - arm.lower)
    for _ in range(chunks):
        q0 = rng.uniform(arm.lower + margin, arm.upper - margin)
        delta = rng.uniform(-CHUNK_SPAN, CHUNK_SPAN, q0.shape)
        path = [np.clip(q0 + delta * (k + 1) / CHUNK, arm.lower, arm.upper) for k in range(CHUNK)]
        seed = q0
        for q in path:
            res, w, c = timed_ik(arm, arm.fk(q), seed)
            if res.ok:
                seed = res.q
            results.append(res)
            wall.append(w)
            cpu.append(c)
    return summarise(results, wall, cpu)


def check_solutions(arm, n: int, rng: np.random.Generator) -> dict[str, float]:
    """Independent of the solver's own report: FK of the returned joints against the target."""
    worst_pos = worst_ori = 0.0
    for _ in range(n):
        q = rng.uniform(arm.lower, arm.upper)
        target = arm.fk(q)
        res = arm.ik(target, np.clip(q + rng.normal(0.0, SEED_SIGMA, q.shape), arm.lower, arm.upper))
        got = arm.fk(res.q)
        worst_pos = max(worst_pos, float(np.linalg.norm(got.position - target.position)))
        worst_ori = max(worst_ori, rotation_angle(got.rotation, target.rotation))
    return {"position_m": worst_pos, "orientation_rad": worst_ori}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["arms"])
    x = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    w = 0.2
    for i, (work, key, label) in enumerate(
        [
            ("chunk", "p50", "chunk waypoint p50"),
            ("chunk", "p99", "chunk waypoint p99"),
            ("random", "p50", "random pose p50"),
            ("random", "p99", "random pose p99"),
        ]
    ):
        ax1.bar(x + (i - 1.5) * w, [report["arms"][n][work]["cpu_ms"][key] for n in names], w, label=label)
    ax1.axhline(1.0, color="k", ls="--", lw=1, label="1 ms target")
    ax1.set_xticks(x, names, rotation=30, ha="right")
    ax1.set_ylabel("CPU time per waypoint (ms)")
    ax1.set_title("IK time per waypoint (thread CPU time)")
    ax1.legend(fontsize=8)
    for work, marker in (("random", "o"), ("chunk", "s")):
        ax2.scatter(
            x,
            [report["arms"][n][work]["position_error_mm"]["max"] for n in names],
            marker=marker,
            label=f"{work}: max position error (mm)",
        )
        ax2.scatter(
            x,
            [report["arms"][n][work]["orientation_error_deg"]["p99"] for n in names],
            marker=marker,
            facecolors="none",
            edgecolors="C3",
            label=f"{work}: p99 orientation error (deg)",
        )
    ax2.axhline(1.0, color="k", ls="--", lw=1, label="1 mm")
    ax2.axhline(0.5, color="grey", ls=":", lw=1, label="0.5°")
    ax2.set_yscale("log")
    ax2.set_xticks(x, names, rotation=30, ha="right")
    ax2.set_title("IK residuals (5-DoF arms: orientation is reported, not required)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--poses", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=30)
    ap.add_argument("--smoke", action="store_true", help="a few poses per arm (the test suite runs this)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.poses, args.chunks = 5, 1
    import mink
    import mujoco

    report = {
        "machine": describe_machine(
            "mujoco", "mink", "daqp", mujoco=mujoco.__version__, mink=getattr(mink, "__version__", None)
        ),
        "settings": {
            "poses": args.poses,
            "chunks": args.chunks,
            "chunk_len": CHUNK,
            "seed_sigma_rad": SEED_SIGMA,
        },
        "arms": {},
    }
    rng = np.random.default_rng(0)
    for name, arm in arms().items():
        entry = {
            "dof": arm.dof,
            "position_only": arm.position_only,
            "model": arm.model_path.name,
            "random": bench_random(arm, args.poses, rng),
            "chunk": bench_chunks(arm, args.chunks, rng),
            "fk_check_worst": check_solutions(arm, min(args.poses, 50), rng),
        }
        report["arms"][name] = entry
        r, c = entry["random"], entry["chunk"]
        print(
            f"{name:>20}  random ok {r['ok_rate']:.3f} pos max {r['position_error_mm']['max']:.3f} mm "
            f"ori p99 {r['orientation_error_deg']['p99']:.3f}° cpu p50/p99 {r['cpu_ms']['p50']:.2f}/{r['cpu_ms']['p99']:.2f} ms"
            f" | chunk ok {c['ok_rate']:.3f} cpu p50/p99 {c['cpu_ms']['p50']:.2f}/{c['cpu_ms']['p99']:.2f} ms"
            f" wall p99 {c['wall_ms']['p99']:.2f} ms"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ik.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / "ik.png")
    print(f"wrote {args.out / 'ik.json'} and ik.png")
    return report


if __name__ == "__main__":
    main()
