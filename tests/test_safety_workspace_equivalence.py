"""The workspace check's faster form gives the commands the original one did, bit for bit.

The chain's workspace box check was made cheaper (stopping paths simulated in one batch for every
candidate the bisection can visit, the samples checked in one numpy pass, from the path's end
backwards, so a failing path costs fewer forward-kinematics calls). It must not change what the
chain admits: this module keeps the original check (``_legacy_workspace``, as it was before the
change) and drives random command streams through :func:`solve` with each, on a planar arm with a
hand-written forward kinematics and on the simulated arm's MuJoCo model, with and without jerk
limits, comparing every command, intervention and verification flag exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from planar_arm import BOX, planar_arm, planar_fk

from wall_runtime.control import safety_solver
from wall_runtime.control.safety_config import SafetyConfig
from wall_runtime.control.safety_solver import (
    _PATH_TICKS,
    _TOL,
    _WS_BISECT,
    _WS_MAX_SAMPLES,
    _WS_PATH_MARGIN,
    _WS_PATH_SAMPLES,
    _WS_SAMPLE,
    ChainLimits,
    ChainState,
    ForwardKinematics,
    _line_brake,
    _PerPeriod,
    _stop_path_fast,
    _travel_after,
    solve,
    stair_inverse,
    stop_path,
)
from wall_runtime.robot import JointSpec

# -- the original check, verbatim (only renamed) -------------------------------------------------


def _legacy_stop_path(
    q: np.ndarray, u: np.ndarray, al: np.ndarray, jd: np.ndarray, dd: np.ndarray
) -> np.ndarray | None:
    """The positions, tick by tick, of every joint stopping on its own braking plan (the one
    :func:`jerk_overshoot` sums; without a jerk limit, steps shrinking by the deceleration) from
    ``q`` after a step ``u`` with change of step ``al``: ``[ticks + 1, n]``, the first row ``q``.
    A feedback plan per joint, so the path from its next row is the rest of this one. ``None``
    where it did not stop within ``_PATH_TICKS`` ticks."""
    sign = np.where(u != 0.0, np.sign(u), np.sign(al))
    us, als = u * sign, al * sign
    x = np.zeros(q.shape)
    rows = [q.copy()]
    active = ~((us <= 0.0) & (als <= 0.0))
    for _ in range(_PATH_TICKS):
        if not active.any():
            return np.array(rows)
        a_n = np.maximum(als - jd, -dd)
        a_end = np.where(us >= 0.0, -stair_inverse(us, jd), -np.inf)
        a_n = np.minimum(np.maximum(a_n, a_end), als + jd)
        us = np.where(active, us + a_n, us)
        als = np.where(active, a_n, als)
        x = np.where(active, x + sign * us, x)
        rows.append(q + x)
        # a joint that could not stop without reversing (already decelerating too hard for its
        # speed) goes on the other way: it brakes again in that direction, as it would
        rev = active & (us < 0.0)
        sign, us, als = np.where(rev, -sign, sign), np.where(rev, -us, us), np.where(rev, -als, als)
        active &= ~((us <= 0.0) & (als <= 0.0))
    return None


def _legacy_workspace(
    lim: ChainLimits,
    d: _PerPeriod,
    state: ChainState,
    x: np.ndarray,
    lo_all: np.ndarray,
    hi_all: np.ndarray,
    dt: float,
    fk: ForwardKinematics,
    record: Callable[[str, np.ndarray, np.ndarray, np.ndarray], None],
) -> tuple[np.ndarray, bool]:
    """The command, and whether its stopping path was verified inside the box."""
    box_lo, box_hi = lim.workspace_min, lim.workspace_max
    assert box_lo is not None and box_hi is not None
    p = state.p
    cache: dict[bytes, np.ndarray | None] = {}

    def ee(q: np.ndarray) -> np.ndarray | None:
        key = q.tobytes()
        if key not in cache:
            pts = fk(q)
            cache[key] = None if pts is None else np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        return cache[key]

    def excess(pts: np.ndarray | None, slack: float = 0.0) -> float:
        if pts is None:
            return 0.0
        out = np.maximum(box_lo + slack - pts, 0.0) + np.maximum(pts - box_hi + slack, 0.0)
        return float(np.max(out, initial=0.0))

    def margin(pts: np.ndarray) -> float:
        return float(np.min(np.minimum(pts - box_lo, box_hi - pts), initial=np.inf))

    # under a jerk limit the line plan cannot be carried out (the acceleration cannot turn at
    # once): every joint brakes on its own jerk-limited plan instead, and the box is checked
    # along that (curved) path, sampled the same way
    jerky = bool(d.jerk_bounds.any())
    if jerky:
        jd = np.where(d.jerk_bounds, d.jdt3, np.inf)
        dd = np.where(lim.is_pos, d.bdt2, np.inf)
        u_prev = np.where(lim.is_pos, state.v * dt, 0.0)

    def path_viable(q: np.ndarray) -> bool:
        step = np.where(lim.is_pos, q - p, 0.0)
        path = _legacy_stop_path(q, step, step - u_prev, jd, dd)
        here, start = ee(q), ee(p)
        if here is None or start is None:
            return True
        if path is None:
            return False
        # the path turns, so this step's own motion does not bound where it goes (no shortcut far
        # from the box), and samples far apart miss where it bulges out between them: every tick
        # of it is checked (the commands it would send), or _WS_PATH_SAMPLES spread over a long one
        if len(path) > _WS_PATH_SAMPLES:
            rows = sorted(
                {round(i * (len(path) - 1) / (_WS_PATH_SAMPLES - 1)) for i in range(_WS_PATH_SAMPLES)}
            )
        else:
            rows = list(range(len(path)))
        pts = [ee(path[i]) for i in rows]
        for i, here in enumerate(pts):
            assert here is not None
            near = [pts[j] for j in (i - 1, i + 1) if 0 <= j < len(pts)]
            slack = max((0.5 * float(np.max(np.linalg.norm(here - o, axis=1))) for o in near), default=0.0)
            if excess(here, slack + _WS_PATH_MARGIN) > 0.0:
                return False
        return True

    def viable(q: np.ndarray) -> bool:
        """The end effector stays in the box while the command brakes along its direction."""
        if jerky:
            return path_viable(q)
        step = np.where(lim.is_pos, q - p, 0.0)
        travel = _travel_after(_line_brake(lim, step, dt))
        here, start = ee(q), ee(p)
        if here is None or start is None:
            return True
        # far from every face: the stopping path, extrapolated from this step's own end-effector
        # motion, reaches less than half way (forward kinematics is costly on some adapters)
        reach = float(np.max(np.linalg.norm(here - start, axis=1))) * (travel + 1.0)
        if margin(here) > 2.0 * reach + 1e-6:
            return True
        length = float(np.max(np.abs(step))) * travel
        k = min(_WS_MAX_SAMPLES, 1 + math.ceil(length / _WS_SAMPLE)) if length > 0 else 0
        pts = [ee(q)]
        for i in range(1, k + 1):
            pts.append(ee(q + step * (travel * i / k)))
        if pts[0] is None:
            return True
        for i, here in enumerate(pts):
            assert here is not None
            near = [pts[j] for j in (i - 1, i + 1) if 0 <= j < len(pts)]
            slack = max((0.5 * float(np.max(np.linalg.norm(here - o, axis=1))) for o in near), default=0.0)
            if excess(here, slack) > 0.0:
                return False
        return True

    e_here = excess(ee(p))
    if e_here > 0.0:
        # already outside (e.g. started there): only moves that do not go further out
        if excess(ee(x)) <= e_here:
            return x, False
        out = np.where(lim.is_pos, np.clip(p, lo_all, hi_all), x)
        record("workspace_yielded", lim.is_pos & (np.abs(out - x) > 0), x, out)
        return out, False
    if viable(x):
        return x, True
    # the braking command: the previous step, shrunk at the common deceleration (under a jerk
    # limit: the next row of every joint's own stopping plan). Its stopping path is the rest of
    # the previous command's, so where that was verified, so is this one
    prev_step = np.where(lim.is_pos, state.v * dt, 0.0)
    if jerky:
        path = _legacy_stop_path(p, prev_step, np.where(lim.is_pos, state.a * dt * dt, 0.0), jd, dd)
        on_line = path[1] if path is not None and len(path) > 1 else p.copy()
    else:
        shrink = max(0.0, 1.0 - _line_brake(lim, prev_step, dt))
        on_line = p + shrink * prev_step
    brake = np.where(lim.is_pos, np.clip(on_line, lo_all, hi_all), x)
    inherited = state.braking_verified and bool(
        np.all(np.abs(brake - on_line)[lim.is_pos] <= _TOL * (1.0 + np.abs(on_line[lim.is_pos])))
    )
    if not (inherited or viable(brake)):
        record("workspace_yielded", lim.is_pos & (np.abs(brake - x) > 0), x, brake)
        return brake, False
    s_in, s_out = 0.0, 1.0
    for _ in range(_WS_BISECT):
        mid = 0.5 * (s_in + s_out)
        if viable(brake + mid * (x - brake)):
            s_in = mid
        else:
            s_out = mid
    out = brake + s_in * (x - brake)
    record("workspace", lim.is_pos & (np.abs(out - x) > _TOL * (1.0 + np.abs(x))), x, out)
    return out, True


# -- the comparison --------------------------------------------------------------------------------

DT = 0.01


def _planar(jerk: bool) -> tuple[tuple[JointSpec, ...], SafetyConfig, ForwardKinematics, np.ndarray]:
    joints = planar_arm(jerk)
    return (
        joints,
        SafetyConfig.from_dict({"max_step": 0.1, "workspace": BOX}, joints),
        planar_fk,
        np.array([0.0, 0.5]),
    )


def _sim_arm(jerk: bool) -> tuple[tuple[JointSpec, ...], SafetyConfig, ForwardKinematics, np.ndarray]:
    pytest.importorskip("mujoco")
    from wall_runtime.adapters.config import load_robot
    from wall_runtime.adapters.registry import build_adapter
    from wall_runtime.e2e.robot_side import safety_config

    config = load_robot("sim_arm")
    spec = config.spec()
    if jerk:
        joints = tuple(
            replace(
                j, limits=replace(j.limits, has_jerk_limits=True, max_jerk=10.0 * j.limits.max_acceleration)
            )
            for j in spec.joints
        )
        spec = replace(spec, joints=joints)
    q0 = np.array(config.safety["safe_pose"], dtype=float)
    return spec.joints, safety_config(config, spec), build_adapter(config).forward_kinematics, q0


def _stream(q0: np.ndarray, rng: np.random.Generator, ticks: int) -> list[np.ndarray]:
    """Targets that jump between random poses (held a while each) and sweep through them: the
    chain brakes for the box, rides it and leaves it again."""
    out, goal, hold = [], q0.copy(), 0
    for _ in range(ticks):
        if hold == 0:
            goal = q0 + rng.uniform(-1.2, 1.2, q0.shape)
            hold = int(rng.integers(5, 60))
        hold -= 1
        out.append(goal + rng.normal(0.0, 0.01, q0.shape))
    return out


def _run(setup, workspace: Callable, targets: list[np.ndarray], q0: np.ndarray) -> list:
    joints, config, fk, _ = setup
    lim = ChainLimits.build(joints, config)
    calls = {"n": 0}

    def counted(q: np.ndarray) -> np.ndarray | None:
        calls["n"] += 1
        return fk(q)

    state = ChainState.at_rest(q0)
    trace = []
    original = safety_solver._workspace
    safety_solver._workspace = workspace
    try:
        for target in targets:
            step = solve(lim, state, target, DT, counted)
            hits = [
                (h.filter, h.joints.tobytes(), h.requested.tobytes(), h.commanded.tobytes())
                for h in step.hits
            ]
            trace.append((step.command.tobytes(), step.state.braking_verified, hits))
            state = step.state
    finally:
        safety_solver._workspace = original
    trace.append(calls["n"])
    return trace


@pytest.mark.parametrize("jerk", [False, True], ids=["no-jerk", "jerk"])
@pytest.mark.parametrize("arm", ["planar", "sim_arm"])
def test_the_faster_workspace_check_gives_the_original_commands(arm: str, jerk: bool) -> None:
    setup = (_planar if arm == "planar" else _sim_arm)(jerk)
    q0 = setup[3]
    rng = np.random.default_rng(7 + jerk)
    targets = _stream(q0, rng, 400 if arm == "planar" else 250)
    new = _run(setup, safety_solver._workspace, targets, q0)
    old = _run(setup, _legacy_workspace, targets, q0)
    new_calls, old_calls = new.pop(), old.pop()
    boxed = sum(any(h[0] == "workspace" for h in tick[2]) for tick in old)
    assert boxed >= 10, f"only {boxed} ticks braked for the box: the stream does not test the check"
    for k, (a, b) in enumerate(zip(new, old, strict=True)):
        assert a == b, f"tick {k}: the new check differs from the original"
    assert new_calls <= old_calls  # and it never needs more forward kinematics


def test_the_plain_float_stopping_path_is_the_numpy_one() -> None:
    """_stop_path_fast returns, bit for bit, what the original stop_path does (the current
    stop_path is that code), over random starts: reversing joints, joints at rest, joints without a
    jerk limit or without a deceleration limit, and long paths."""
    rng = np.random.default_rng(3)
    n = 5
    jd = np.array([3e-4, 5e-4, np.inf, 2e-4, 1e-3])
    dd = np.array([1e-3, 2.5e-3, 1e-3, np.inf, 4e-3])
    longest = 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for i in range(200):
            q = rng.uniform(-1, 1, n)
            q[rng.random(n) < 0.2] = 0.0
            u = rng.uniform(-0.03, 0.03, n) * (rng.random(n) > 0.15)
            al = rng.uniform(-0.004, 0.004, n) * (rng.random(n) > 0.15)
            if i == 0:
                u[:], al[:] = 0.0, 0.0  # at rest
            want = _legacy_stop_path(q, u, al, jd, dd)
            got = _stop_path_fast(q, u, al, jd, dd)
            assert want is not None and got is not None
            assert got.shape == want.shape and got.tobytes() == want.tobytes(), i
            assert stop_path(q, u, al, jd, dd).tobytes() == want.tobytes()
            longest = max(longest, len(want))
        # not finite: the numpy path's answer (it falls back to it)
        q, u, al = np.zeros(n), np.full(n, 0.01), np.zeros(n)
        u[1] = np.nan
        a, b = _stop_path_fast(q, u, al, jd, dd), _legacy_stop_path(q, u, al, jd, dd)
        assert (a is None) == (b is None) and (a is None or np.array_equal(a, b, equal_nan=True))
    assert longest > 20  # long paths among them
