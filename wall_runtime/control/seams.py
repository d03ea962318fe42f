"""Seam metrics: how hard each chunk boundary hits the robot.

From a commanded trajectory sampled at the control rate and the ticks where a new chunk took over,
each seam gets the position jump at the splice tick and the largest velocity, acceleration and
jerk (finite differences, max over joints) from the splice until the next one, so the effects a
smoother spreads out (a crossfade's ramp, the end of an older chunk inside an ensemble) stay
attributed to the seam that caused them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SeamRecord:
    tick: int
    jump: float  # max |x[b] - x[b-1]| over joints
    velocity: float  # max |dx/dt| in the seam's window
    acceleration: float
    jerk: float


def derivatives(
    positions: np.ndarray, dt: float, times: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward differences ``(velocity, acceleration, jerk)``, each ``[T, J]``, NaN where undefined
    (the first rows, and around rows that are NaN because nothing was commanded). With ``times``
    the real intervals are used (a loop that skipped deadlines), else ``dt``."""
    x = np.asarray(positions, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    pad = np.full((1, x.shape[1]), np.nan)
    step = (
        np.full((len(x) - 1, 1), dt)
        if times is None
        else np.diff(np.asarray(times, dtype=np.float64))[:, None]
    )
    vel = np.vstack([pad, np.diff(x, axis=0) / step])
    acc = np.vstack([pad, np.diff(vel, axis=0) / step])
    jerk = np.vstack([pad, np.diff(acc, axis=0) / step])
    return vel, acc, jerk


def seam_metrics(
    positions: np.ndarray, dt: float, boundaries: list[int], times: np.ndarray | None = None
) -> list[SeamRecord]:
    """One record per boundary tick ``b`` (the first tick commanded from the new plan)."""
    x = np.asarray(positions, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    vel, acc, jerk = derivatives(x, dt, times)
    bounds = sorted(b for b in set(boundaries) if 1 <= b < len(x))
    out = []
    for i, b in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else len(x)

        def peak(series: np.ndarray, start: int = b, stop: int = end) -> float:
            window = np.abs(series[start:stop])
            return float(np.nanmax(window)) if np.isfinite(window).any() else 0.0

        jump = np.abs(x[b] - x[b - 1])
        out.append(
            SeamRecord(
                tick=b,
                jump=float(np.nanmax(jump)) if np.isfinite(jump).any() else 0.0,
                velocity=peak(vel),
                acceleration=peak(acc),
                jerk=peak(jerk),
            )
        )
    return out


def summarize(records: list[SeamRecord]) -> dict[str, float]:
    """Worst and median seam figures, for reports and JSON."""
    if not records:
        return {"seams": 0}
    rows = [asdict(r) for r in records]
    out: dict[str, float] = {"seams": len(rows)}
    for key in ("jump", "velocity", "acceleration", "jerk"):
        values = np.array([r[key] for r in rows])
        out[f"max_{key}"] = float(values.max())
        out[f"median_{key}"] = float(np.median(values))
    return out
