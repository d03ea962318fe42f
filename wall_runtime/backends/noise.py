"""Smooth initial noise for random-weight checkpoints (the demo's), shared by every backend."""

from __future__ import annotations

import numpy as np


def check_knots(knots: int | None, horizon: int) -> int | None:
    """``knots`` as an int in [2, horizon], or None; ValueError naming the option otherwise."""
    if knots is None:
        return None
    knots = int(knots)
    if not 2 <= knots <= horizon:
        raise ValueError(f"noise_knots must be in [2, {horizon}], got {knots}")
    return knots


def smooth_noise(rng: np.random.Generator, knots: int, horizon: int, dim: int) -> np.ndarray:
    """Unit-variance initial noise that is smooth along the horizon: Gaussian values at ``knots``
    points, interpolated linearly and rescaled.

    Not what the reference samples (i.i.d. noise): a trained model turns i.i.d. noise into a smooth
    chunk, a random-weight one cannot, so the demo's tiny random checkpoint uses this to give the
    robot chunks that are smooth within themselves and differ between chunks.
    """
    values = rng.standard_normal((knots, dim))
    x = np.linspace(0.0, knots - 1, horizon)
    lo = np.floor(x).astype(int).clip(0, knots - 2)
    w = (x - lo)[:, None]
    curve = (1 - w) * values[lo] + w * values[lo + 1]
    # linear interpolation shrinks the variance between knots; restore unit variance per step
    curve /= np.sqrt((1 - w) ** 2 + w**2)
    return curve.astype(np.float32)
