"""Plots and files from a control run's log."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.control.loop import ControlLoop


def plot_run(
    loop: ControlLoop, path: Path, joints: Sequence[int] | None = None, title: str | None = None
) -> list[str]:
    """Target, command and measurement per joint (every joint unless ``joints`` picks some), chunk
    boundaries as green lines, safety interventions as red crosses, holds and e-stops shaded.
    Returns the names of the joints drawn, top to bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = loop.log
    t = log.array("time")
    if t.size == 0:
        raise ValueError("the run log is empty: nothing to plot")
    t = t - t[0]
    n = min(len(t), len(log.commanded))
    t = t[:n]
    commanded, measured, target = (log.array(k)[:n] for k in ("commanded", "measured", "target"))
    joints = list(range(loop.spec.dof)) if joints is None else list(joints)
    # a panel per joint; flatter panels when there are many (a bimanual robot has 14 and more)
    panel = 2.6 if len(joints) <= 4 else 1.8
    fig, axes = plt.subplots(
        len(joints), 1, figsize=(12, panel * len(joints) + 0.8), sharex=True, squeeze=False
    )
    held = np.array([s in ("hold", "estop") for s in log.status[:n]])
    for ax, j in zip(axes[:, 0], joints, strict=True):
        ax.plot(t, target[:, j], color="0.6", lw=1, label="scheduler target")
        ax.plot(t, commanded[:, j], color="C0", lw=1.2, label="commanded (after safety)")
        ax.plot(t, measured[:, j], color="C1", lw=1, ls="--", label="measured")
        for tick, _ in log.splices:
            if tick < n:
                ax.axvline(t[tick], color="C2", lw=0.5, alpha=0.5)
        if held.any():
            ax.fill_between(t, 0, 1, where=held, transform=ax.get_xaxis_transform(), color="C3", alpha=0.1)
        name = loop.spec.joints[j].name
        hits = sorted({row for row, e in log.interventions if e.joint == name and row < n})
        if hits:
            ax.plot(t[hits], commanded[hits, j], "x", color="C3", ms=4, label="safety intervention")
        ax.set_ylabel(f"{name} [{loop.spec.joints[j].unit}]")
    axes[0, 0].plot([], [], color="C2", lw=0.5, label="chunk boundary")
    axes[0, 0].legend(loc="upper right", fontsize=8, ncol=3)
    axes[-1, 0].set_xlabel("time [s]")
    fig.suptitle(title or f"control run at {loop.config.control_hz:.0f} Hz ({loop.config.smoother})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [loop.spec.joints[j].name for j in joints]


def write_summary(loop: ControlLoop, summary: dict[str, Any], path: Path) -> None:
    """The run summary plus the splice and intervention events, as JSON."""
    t0 = loop.log.time[0] if loop.log.time else 0.0
    record = {
        **summary,
        "splices": [
            {
                "tick": tick,
                "t": e.time - t0,
                "seq": e.seq,
                "dropped": e.first_index,
                "latency_s": e.latency_s,
                "offset": e.offset,
            }
            for tick, e in loop.log.splices
        ],
        "interventions": [
            {
                "tick": row,
                "filter": e.filter,
                "joint": e.joint,
                "requested": e.requested,
                "commanded": e.commanded,
            }
            for row, e in loop.log.interventions[:10_000]
        ],
        "events": [
            {"tick": k, "t": tt - t0, "kind": kind, "detail": d} for k, tt, kind, d in loop.log.events
        ],
    }
    path.write_text(json.dumps(record, indent=2, default=float))
