"""Feature statistics as LeRobot keeps them in meta/stats.json: min, max, mean, std, count."""

from __future__ import annotations

from collections import Counter

import numpy as np


class RunningStats:
    """Running min / max / mean / std per feature (NaN entries ignored, as nothing was commanded)."""

    def __init__(self) -> None:
        self.n: dict[str, np.ndarray] = {}
        self.sum: dict[str, np.ndarray] = {}
        self.sq: dict[str, np.ndarray] = {}
        self.min: dict[str, np.ndarray] = {}
        self.max: dict[str, np.ndarray] = {}
        self.rows: dict[str, int] = Counter()

    def add(self, key: str, values: np.ndarray) -> None:
        """``values``: [N, ...] rows (images: [N, 3] per-channel means etc. are added via add_image)."""
        v = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(v)
        z = np.where(finite, v, 0.0)
        n, s, q = finite.sum(0), z.sum(0), (z * z).sum(0)
        lo = np.where(finite, v, np.inf).min(0)
        hi = np.where(finite, v, -np.inf).max(0)
        if key not in self.n:
            self.n[key], self.sum[key], self.sq[key], self.min[key], self.max[key] = n, s, q, lo, hi
        else:
            self.n[key] = self.n[key] + n
            self.sum[key] = self.sum[key] + s
            self.sq[key] = self.sq[key] + q
            self.min[key] = np.minimum(self.min[key], lo)
            self.max[key] = np.maximum(self.max[key], hi)
        self.rows[key] += len(v)

    def add_image(self, key: str, image: np.ndarray) -> None:
        """One image (HxWx3 uint8) as LeRobot counts it: per channel, on [0, 1]."""
        px = image.reshape(-1, 3).astype(np.float64) / 255.0
        n = np.full(3, px.shape[0])
        s, q = px.sum(0), (px * px).sum(0)
        if key not in self.n:
            self.n[key], self.sum[key], self.sq[key] = n, s, q
            self.min[key], self.max[key] = px.min(0), px.max(0)
        else:
            self.n[key] = self.n[key] + n
            self.sum[key] = self.sum[key] + s
            self.sq[key] = self.sq[key] + q
            self.min[key] = np.minimum(self.min[key], px.min(0))
            self.max[key] = np.maximum(self.max[key], px.max(0))
        self.rows[key] += 1

    def result(self, image_keys: set[str]) -> dict[str, dict[str, list]]:
        out: dict[str, dict[str, list]] = {}
        for key, n in self.n.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = self.sum[key] / n
                std = np.sqrt(np.maximum(self.sq[key] / n - mean * mean, 0.0))
            entry = {"min": self.min[key], "max": self.max[key], "mean": mean, "std": std}
            entry = {k: np.where(np.isfinite(v), v, 0.0) for k, v in entry.items()}
            if key in image_keys:  # LeRobot keeps image stats as (3, 1, 1)
                entry = {k: v.reshape(3, 1, 1) for k, v in entry.items()}
            out[key] = {k: v.tolist() for k, v in entry.items()}
            out[key]["count"] = [int(self.rows[key])]
        return out


def merge_stats(a: dict[str, dict], b: dict[str, dict]) -> dict[str, dict]:
    """Aggregate two stats dicts (weighted by count), as LeRobot's aggregate_stats does."""
    out = dict(a)
    for key, sb in b.items():
        sa = a.get(key)
        if sa is None:
            out[key] = sb
            continue
        na, nb = float(sa["count"][0]), float(sb["count"][0])
        ma, mb = np.asarray(sa["mean"]), np.asarray(sb["mean"])
        va, vb = np.asarray(sa["std"]) ** 2, np.asarray(sb["std"]) ** 2
        mean = (na * ma + nb * mb) / (na + nb)
        var = (na * (va + (ma - mean) ** 2) + nb * (vb + (mb - mean) ** 2)) / (na + nb)
        out[key] = {
            "min": np.minimum(np.asarray(sa["min"]), np.asarray(sb["min"])).tolist(),
            "max": np.maximum(np.asarray(sa["max"]), np.asarray(sb["max"])).tolist(),
            "mean": mean.tolist(),
            "std": np.sqrt(var).tolist(),
            "count": [int(na + nb)],
        }
    return out
