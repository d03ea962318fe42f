"""Camera capture-to-observation latency and CPU cost: three cameras at 30 fps, resized to 224x224.

Sources: 640x480 MJPG video files replayed in real time (decode + colour conversion + resize on
each camera's capture thread, like a USB camera's MJPG stream), and simulated cameras whose
render() draws a fresh 640x480 picture. A consumer at 30 Hz takes a synchronised group snapshot
and builds the observation's image dict, as the control loop does.

- latency: observation ready minus the oldest frame's capture stamp. It includes the wait for the
  consumer's tick (up to one frame period, since camera and control clocks are not phase-locked).
- capture_to_ring: frame in the ring minus its capture stamp (decode/render end, RGB conversion,
  resize, frozen-frame fingerprint): the pipeline's own cost per frame.
- cpu: process CPU time / wall time (1.0 = one core), all three capture threads and the consumer.

    python benchmarks/bench_cameras.py [--seconds 10] [--out benchmarks/results]
    python benchmarks/bench_cameras.py --smoke --out /tmp/bench   # one second per source
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wall_runtime.cameras import CameraGroup, ImageTransform, SnapshotError
from wall_runtime.cameras.opencv import OpenCVCamera
from wall_runtime.cameras.simulated import SimulatedCamera
from wall_runtime.machine import describe_machine

RESULTS = Path(__file__).parent / "results"
W, H, FPS, RESIZE = 640, 480, 30, (224, 224)


def make_video(path: Path, seconds: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (H // 8, W // 8, 3), dtype=np.uint8)
    base = cv2.resize(base, (W, H), interpolation=cv2.INTER_CUBIC)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    for i in range(int(seconds * FPS)):
        frame = np.roll(base, 4 * i, axis=1)
        cv2.putText(frame, str(i), (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
        writer.write(frame)
    writer.release()
    return path


class Scene:
    """A render callable drawing a moving scene each call (a stand-in for MuJoCo's offscreen render cost is
    not the point here; the camera pipeline's own cost is)."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.base = cv2.resize(rng.integers(0, 255, (H // 8, W // 8, 3), dtype=np.uint8), (W, H))
        self.i = 0

    def __call__(self) -> np.ndarray:
        self.i += 1
        return np.roll(self.base, 4 * self.i, axis=1)


def run(kind: str, seconds: float, tmp: Path) -> dict[str, object]:
    transform = ImageTransform(resize=RESIZE)
    if kind == "video":
        cams = {
            f"cam{i}": OpenCVCamera(
                f"cam{i}", str(make_video(tmp / f"v{i}.avi", seconds + 3, i)), transform=transform
            )
            for i in range(3)
        }
    else:
        cams = {
            f"cam{i}": SimulatedCamera(f"cam{i}", Scene(i), fps=FPS, transform=transform) for i in range(3)
        }
    group = CameraGroup(cams, max_age=0.1, max_skew=0.034)
    latencies, pipeline, skews, refused = [], [], [], 0
    group.start()
    try:
        time.sleep(0.5)
        cpu0, wall0 = time.process_time(), time.monotonic()
        next_tick = wall0
        while time.monotonic() - wall0 < seconds:
            next_tick += 1 / FPS
            try:
                snap = group.snapshot()
                images = snap.images(group.views)
                ready = time.monotonic()
                assert all(img.shape == (*RESIZE[::-1], 3) for img in images.values())
                latencies.append(1000 * (ready - snap.stamp))
                pipeline.extend(1000 * (f.received - f.stamp) for f in snap.frames.values())
                skews.append(1000 * snap.skew)
            except SnapshotError:
                refused += 1
            time.sleep(max(0.0, next_tick - time.monotonic()))
        cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        stats = {n: c.stats() for n, c in cams.items()}
    finally:
        group.stop()
    lat = np.array(latencies)
    return {
        "source": kind,
        "observations": len(latencies),
        "refused": refused,
        "refusals": dict(group.counters),
        "latency_ms": {
            p: round(float(np.percentile(lat, q)), 2) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))
        }
        | {"max": round(float(lat.max()), 2)},
        "capture_to_ring_ms": {
            p: round(float(np.percentile(pipeline, q)), 2) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))
        },
        "skew_ms_p95": round(float(np.percentile(skews, 95)), 2),
        "cpu_cores": round(cpu, 3),
        "camera_fps": {n: round(s.fps, 2) for n, s in stats.items()},
        "dropped": {n: s.dropped for n, s in stats.items()},
        "_latencies": latencies,
    }


def machine() -> dict[str, object]:
    return describe_machine("cv2", note="shared 2-core machine with other jobs running; no GPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for cameras.json and cameras.png")
    ap.add_argument("--smoke", action="store_true", help="check the script runs: one second per source")
    args = ap.parse_args()
    if args.smoke:
        args.seconds = 1.0
    cv2.setNumThreads(1)  # one thread per camera already; OpenCV's own pool would oversubscribe 2 cores
    with tempfile.TemporaryDirectory() as d:
        runs = [run(kind, args.seconds, Path(d)) for kind in ("video", "simulated")]
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "cameras: capture-to-observation latency, 3 cameras @ 30 fps, 640x480 -> 224x224",
        "machine": machine(),
        "seconds_per_run": args.seconds,
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
    }
    (args.out / "cameras.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(runs, args.out / "cameras.png")
    for r in report["runs"]:
        print(r["source"], r["latency_ms"], "cpu", r["cpu_cores"], "refused", r["refused"], r["camera_fps"])


def plot(runs: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in runs:
        lat = np.sort(np.array(r["_latencies"]))
        ax1.plot(lat, np.linspace(0, 1, len(lat)), label=f"{r['source']} (p95 {r['latency_ms']['p95']} ms)")
    ax1.set_xlabel("capture -> observation latency (ms)")
    ax1.set_ylabel("fraction of observations")
    ax1.set_title("3 cameras @ 30 fps, resize to 224x224")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.bar(
        [r["source"] for r in runs], [100 * r["cpu_cores"] for r in runs], color=["tab:blue", "tab:orange"]
    )
    ax2.set_ylabel("CPU (% of one core)")
    ax2.set_title("capture + transform + sync CPU cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
