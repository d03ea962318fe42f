"""Seams on synthetic chunk streams: every smoother beats plain switching on boundary jerk.

The "policy" answers each observation with the true trajectory from the observation's stamp,
plus a per-chunk offset and slope error (chunks that disagree, as real ones do), after a latency
with jitter. For RTC the policy honestly simulates what the guided flow sampler does with the
hint: the new chunk is the raw chunk inpainted toward ``hint.actions`` with the soft mask,
``new = w * hint + (1 - w) * raw`` row by row. That is the fixed point guidance pulls toward, not
the sampler itself (the sampler hook is tested with the model).
"""

from __future__ import annotations

import numpy as np
import pytest

from wall_runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from wall_runtime.control.seams import seam_metrics, summarize
from wall_runtime.control.smoothing import make_smoother, rtc_soft_mask
from wall_runtime.types import ActionChunk

DT = 0.02  # control period = action period, so a switch is a one-tick jump
H = 32
LATENCY = 0.09


def truth(t: np.ndarray) -> np.ndarray:
    t = np.asarray(t)[:, None]
    return np.hstack([0.4 * np.sin(2 * np.pi * 0.4 * t), 0.3 * np.cos(2 * np.pi * 0.25 * t + 0.5)])


def run_stream(smoother: str, seconds: float = 8.0, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    sched = ChunkScheduler(make_smoother(smoother), SchedulerConfig(request_threshold_s=0.25))
    pending: list[tuple[float, ActionChunk]] = []
    trace, boundaries = [], []
    seq = 0
    for k in range(int(seconds / DT)):
        now = k * DT
        for arrival, chunk in [p for p in pending if p[0] <= now]:
            pending.remove((arrival, chunk))
            if sched.accept(chunk, now) is not None:
                boundaries.append(len(trace))
        target = sched.target(now)
        if target is not None:
            trace.append(target)
        if sched.should_request(now):
            sched.note_request(now, now)
            hint = sched.hint(now)
            times = now + np.arange(H) * DT
            raw = truth(times) + rng.normal(0, 0.04, 2) + np.outer(np.arange(H) * DT, rng.normal(0, 0.1, 2))
            if smoother == "rtc" and hint is not None:
                w = hint.weights[:, None].astype(np.float64)
                raw = w * hint.actions + (1 - w) * raw
            seq += 1
            chunk = ActionChunk(actions=raw.astype(np.float32), stamp=now, dt=DT, seq=seq)
            pending.append((now + LATENCY + rng.uniform(0, 0.02), chunk))
    return np.array(trace), boundaries


def test_every_smoother_reduces_boundary_jerk_against_switching(capsys: pytest.CaptureFixture) -> None:
    results = {}
    for name in ("none", "crossfade", "ensemble", "rtc"):
        worst = []
        for seed in range(3):
            trace, boundaries = run_stream(name, seed=seed)
            assert len(boundaries) > 15
            worst.append(summarize(seam_metrics(trace[:, :], DT, boundaries[1:])))
        results[name] = {k: max(w[k] for w in worst) for k in ("max_jump", "max_acceleration", "max_jerk")}
    with capsys.disabled():
        print("\nseam metrics (worst over 3 seeds; jump in units, jerk in units/s^3):")
        for name, r in results.items():
            print(
                f"  {name:9s} jump {r['max_jump']:.4f}  acc {r['max_acceleration']:9.1f}  jerk {r['max_jerk']:11.1f}"
            )
    base = results["none"]["max_jerk"]
    for name in ("crossfade", "ensemble", "rtc"):
        assert results[name]["max_jerk"] < 0.7 * base, (name, results[name], base)
        assert results[name]["max_jump"] < results["none"]["max_jump"]


def test_rtc_soft_mask_follows_the_paper() -> None:
    w = rtc_soft_mask(horizon=10, delay_steps=3, overlap_steps=7)
    assert np.all(w[:3] == 1.0) and np.all(w[7:] == 0.0)
    assert np.all(np.diff(w[3:8]) < 0) and 0 < w[6] < w[3] < 1


def test_rtc_hint_carries_the_plan_that_runs_during_the_delay() -> None:
    sched = ChunkScheduler(make_smoother("rtc"), SchedulerConfig(latency_warmup=0))
    actions = np.arange(H, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    sched.accept(ActionChunk(actions=actions, stamp=0.0, dt=DT, seq=1), now=0.1)  # latency 0.1 s = 5 steps
    hint = sched.hint(stamp=0.2)
    assert hint is not None and hint.actions.shape == (H, 2)
    # row i is what the old plan commands at 0.2 + i*DT: old action 10 + i, the last one repeated
    np.testing.assert_allclose(hint.actions[:5, 0], 10 + np.arange(5), atol=1e-5)
    assert hint.actions[-1, 0] == pytest.approx(H - 1)
    assert np.all(hint.weights[:5] == 1.0)  # five actions run during the estimated delay
    assert np.all(hint.weights[H - 10 :] == 0.0)  # past the old chunk's end nothing to continue
