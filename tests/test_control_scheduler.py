"""Chunk scheduling under latency and jitter: never a stale action, never a jump at a splice."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wall_runtime.control.latency import LatencyEstimator
from wall_runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from wall_runtime.control.smoothing import SMOOTHERS, make_smoother
from wall_runtime.types import ActionChunk

STEP = 0.01


@settings(max_examples=60, deadline=None)
@given(
    latency=st.floats(0.0, 0.4),
    jitter=st.floats(0.0, 0.2),
    control_dt=st.sampled_from([0.002, 0.01, 0.02]),
    action_dt=st.sampled_from([0.01, 0.02, 0.05]),
    horizon=st.integers(4, 40),
    smoother=st.sampled_from(SMOOTHERS),
    in_flight=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_no_stale_action_and_no_jump_at_splices(
    latency: float,
    jitter: float,
    control_dt: float,
    action_dt: float,
    horizon: int,
    smoother: str,
    in_flight: int,
    seed: int,
) -> None:
    """Dim 0 of every action is the time it is meant for, so the output's dim 0 says exactly which
    moment of the plan is being executed; dim 1 jumps by up to ±0.5 between chunks."""
    rng = np.random.default_rng(seed)
    sched = ChunkScheduler(
        make_smoother(smoother),
        SchedulerConfig(max_in_flight=in_flight, max_step=np.array([math.inf, STEP]), request_timeout_s=1.0),
    )
    pending: list[tuple[float, ActionChunk]] = []
    prev = None
    seq = 0
    executed = 0
    for k in range(int(1.5 / control_dt)):
        now = k * control_dt
        for item in sorted((p for p in pending if p[0] <= now), key=lambda p: p[0]):
            pending.remove(item)
            sched.accept(item[1], now)
        out = sched.target(now)
        if out is not None:
            executed += 1
            # the action executed now is the one meant for now (interpolated), never an older one
            assert out[0] == pytest.approx(now, abs=1e-9)
            if prev is not None:
                assert abs(out[1] - prev[1]) <= STEP + 1e-12
            prev = out
        if sched.should_request(now):
            sched.note_request(now, now)
            seq += 1
            times = now + np.arange(horizon) * action_dt
            actions = np.stack([times, rng.uniform(-0.5, 0.5) + 0.01 * np.sin(times)], axis=1)
            delay = latency + rng.uniform(0.0, jitter)
            if seq > 2 and rng.uniform() < 0.1:
                delay = 10.0  # a lost reply
            pending.append((now + delay, ActionChunk(actions=actions, stamp=now, dt=action_dt, seq=seq)))
    if latency + jitter < 0.3 and horizon * action_dt > latency + jitter + 0.1:
        assert executed > 0


def _chunk(stamp: float, seq: int, n: int = 10, dt: float = 0.02, value: float = 0.0) -> ActionChunk:
    actions = np.stack([stamp + np.arange(n) * dt, np.full(n, value)], axis=1)
    return ActionChunk(actions=actions.astype(np.float64), stamp=stamp, dt=dt, seq=seq)


def test_past_actions_are_dropped_and_the_splice_is_at_the_first_future_one() -> None:
    sched = ChunkScheduler(make_smoother("none"))
    event = sched.accept(_chunk(stamp=1.0, seq=1), now=1.075)
    assert event is not None and event.first_index == 4  # 1.00 .. 1.06 already past
    assert sched.target(1.08)[0] == pytest.approx(1.08)


@pytest.mark.parametrize(
    ("chunk", "reason"),
    [
        (_chunk(stamp=0.0, seq=1, n=3), "stale"),  # all three actions long past
        (_chunk(stamp=5.0, seq=2), "malformed"),  # stamped in the future: not a robot-clock time
        (ActionChunk(actions=np.zeros((5, 2)), stamp=0.9, dt=-0.02, seq=3), "bad_dt"),  # reversed time
        (ActionChunk(actions=np.full((5, 2), np.nan), stamp=0.9, dt=0.02, seq=4), "non_finite"),
        (ActionChunk(actions=np.zeros(5), stamp=0.9, dt=0.02, seq=5), "malformed"),
    ],
)
def test_bad_chunks_are_rejected_and_counted(chunk: ActionChunk, reason: str) -> None:
    sched = ChunkScheduler(make_smoother("none"))
    assert sched.accept(chunk, now=1.0) is None
    assert sched.rejected[reason] == 1
    assert sched.plan is None


def test_an_older_chunk_never_replaces_a_newer_one() -> None:
    sched = ChunkScheduler(make_smoother("none"))
    assert sched.accept(_chunk(stamp=1.0, seq=2, value=2.0), now=1.05) is not None
    assert sched.accept(_chunk(stamp=0.99, seq=1, value=1.0), now=1.06) is None
    assert sched.rejected["out_of_order"] == 1
    assert sched.target(1.07)[1] == 2.0


def test_interpolates_between_actions_at_the_control_rate() -> None:
    sched = ChunkScheduler(make_smoother("none"))
    actions = np.array([[0.0], [1.0], [2.0], [3.0]])
    sched.accept(ActionChunk(actions=actions, stamp=0.0, dt=0.05, seq=1), now=0.001)
    values = [sched.target(t)[0] for t in np.arange(0.06, 0.15, 0.01)]
    np.testing.assert_allclose(values, np.arange(0.06, 0.15, 0.01) / 0.05, atol=1e-9)
    assert sched.target(0.16) is None  # exhausted: the watchdog's business


def test_one_request_in_flight_and_request_when_horizon_runs_low() -> None:
    sched = ChunkScheduler(
        make_smoother("none"), SchedulerConfig(request_threshold_s=0.1, request_timeout_s=0.5)
    )
    assert sched.should_request(0.0)
    sched.note_request(0.0, 0.0)
    assert not sched.should_request(0.01)  # one in flight
    sched.accept(_chunk(stamp=0.0, seq=1, n=20), now=0.05)  # plan to 0.38
    assert sched.in_flight == 0
    assert not sched.should_request(0.2)  # 0.18 s left
    assert sched.should_request(0.3)  # 0.08 s left < 0.1
    sched.note_request(0.3, 0.3)
    assert not sched.should_request(0.5)
    assert sched.should_request(0.81)  # the request timed out and is given up on
    assert sched.rejected["request_timeout"] == 1


def test_latency_estimate_ignores_warm_up_and_outliers_leave_the_window() -> None:
    est = LatencyEstimator(window=10, warmup=2)
    for s in (3.0, 1.5):  # first inference: compilation, cache warm-up
        est.add(s)
    assert est.estimate() == 1.5  # nothing but warm-up yet: the optimistic one
    for _ in range(10):
        est.add(0.1)
    assert est.estimate() == pytest.approx(0.1)
    est.add(0.5)  # one slow reply shows in the p95
    assert est.estimate() > 0.1
    for _ in range(10):
        est.add(0.1)
    assert est.estimate() == pytest.approx(0.1)  # and leaves with the window
    est.add(float("nan"))
    est.add(-1.0)
    assert est.samples == 10


@pytest.mark.parametrize("interpolation", ["cubic", "linear"])
def test_cubic_interpolation_keeps_acceleration_near_the_true_one(interpolation: str) -> None:
    """50 Hz actions on a 500 Hz loop: linear interpolation multiplies the acceleration at every
    waypoint by the rate ratio; the cubic stays near the trajectory's own acceleration."""
    sched = ChunkScheduler(make_smoother("none"), SchedulerConfig(interpolation=interpolation))
    t = np.arange(60) * 0.02
    amplitude, omega = 0.5, 2 * np.pi
    sched.accept(
        ActionChunk(actions=amplitude * np.sin(omega * t)[:, None], stamp=0.0, dt=0.02, seq=1), now=1e-6
    )
    dt = 0.002
    x = np.array([sched.target(k * dt)[0] for k in range(10, 500)])
    acc = np.abs(np.diff(x, 2)) / dt**2
    true_peak = amplitude * omega**2  # 19.7
    if interpolation == "cubic":
        assert acc.max() < 1.3 * true_peak
    else:
        assert acc.max() > 3 * true_peak
