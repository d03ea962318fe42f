"""Run reports: a folder a person can open after a run.

summary.json     counters, timing, seams, interventions, stage latencies, policy metadata
trajectory.png   commanded vs measured joints, chunk boundaries, safety interventions, holds
latency.png      a histogram per stage (server stages and the robot's capture-to-chunk time)
episode/         the recording (see ``wall_runtime.e2e.recording``), replayable
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from wall_runtime.control.loop import ControlLoop
from wall_runtime.control.report import plot_run, write_summary


def plot_latency(samples: dict[str, list[float]], path: Path, title: str = "latency per stage") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [k for k, v in samples.items() if v]
    if not stages:
        raise ValueError("no latency samples to plot")
    cols = min(3, len(stages))
    rows = math.ceil(len(stages) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, stage in zip(axes.flat, stages, strict=False):
        values = samples[stage]
        ax.hist(values, bins=min(40, max(5, len(values) // 2)), color="C0", alpha=0.8)
        p50 = sorted(values)[len(values) // 2]
        ax.axvline(p50, color="C3", lw=1)
        ax.set_title(f"{stage}: p50 {p50:.1f} ms (n={len(values)})", fontsize=9)
        ax.set_xlabel("ms")
    for ax in list(axes.flat)[len(stages) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(folder: Path, loop: ControlLoop, summary: dict[str, Any], stages: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_summary(loop, summary, folder / "summary.json")
    if loop.log.time:
        plot_run(loop, folder / "trajectory.png", joints=range(loop.spec.dof))
    if any(stages.samples.values()):
        plot_latency(stages.samples, folder / "latency.png")
    return folder
