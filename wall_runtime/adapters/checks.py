"""The conformance kit: contract checks every adapter must pass before it drives a robot.

``run_checks`` connects, reads, commands, holds, drops and re-establishes the link, and
disconnects, measuring what it can (read/command latency, tracking error, worst excursion past a
limit, time to rest after ``hold``). Motions are ramped at the control rate and never faster than
``speed_scale`` times the declared velocity limits, so ``--hardware`` runs at reduced speed.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from wall_runtime.robot import (
    UNITS_FOR_KIND,
    RobotAdapter,
    RobotError,
    RobotLinkError,
)


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    figures: dict[str, float] = field(default_factory=dict)
    skipped: bool = False


@dataclass
class CheckOptions:
    speed_scale: float = 1.0  # fraction of the declared velocity limits motions may use
    step_rad: float = 0.15  # size of the commanded test step on revolute joints
    step_m: float = 0.008  # ... on prismatic joints and grippers in metres
    settle_s: float = 1.5  # time allowed to reach a commanded target
    timing_samples: int = 100
    hardware: bool = False


def _tolerance(unit: str) -> float:
    return {"rad": 0.03, "m": 0.003, "normalized": 0.03, "m/s": 0.05, "rad/s": 0.1}[unit]


class _Kit:
    def __init__(self, adapter: RobotAdapter, options: CheckOptions) -> None:
        self.a = adapter
        self.spec = adapter.spec
        self.o = options
        self.period = self.spec.period_s
        self.tol = np.array([_tolerance(j.unit) for j in self.spec.joints])
        self.vel = np.array([j.is_velocity for j in self.spec.joints])
        vmax = np.array(
            [j.limits.max_velocity if j.limits.has_velocity_limits else 1.0 for j in self.spec.joints]
        )
        self.vmax = vmax * options.speed_scale
        self.read_ms: list[float] = []
        self.command_ms: list[float] = []

    # -- helpers ----------------------------------------------------------------------------------

    def read(self) -> np.ndarray:
        t = time.perf_counter()
        state = self.a.read_state()
        self.read_ms.append((time.perf_counter() - t) * 1e3)
        return state.position.copy()

    def command(self, target: np.ndarray) -> None:
        t = time.perf_counter()
        self.a.command(target)
        self.command_ms.append((time.perf_counter() - t) * 1e3)

    def rest_target(self, position: np.ndarray) -> np.ndarray:
        """The current position with base velocities set to zero."""
        out = position.copy()
        out[self.vel] = 0.0
        return out

    def move_to(self, goal: np.ndarray, extra_s: float = 0.0) -> list[np.ndarray]:
        """Ramp targets towards ``goal`` at the control rate within the scaled velocity limits."""
        start = self.rest_target(self.read())
        goal = np.where(self.vel, 0.0, goal)
        distance = np.abs(goal - start)
        duration = float(np.max(np.where(self.vel, 0.0, distance / self.vmax), initial=0.0))
        steps = max(1, math.ceil(duration / self.period))
        samples = []
        next_t = time.monotonic()
        for k in range(1, steps + 1 + math.ceil(extra_s / self.period)):
            target = start + (goal - start) * min(1.0, k / steps)
            self.command(target)
            samples.append(self.read())
            next_t += self.period
            time.sleep(max(0.0, next_t - time.monotonic()))
        return samples

    def within_limits(self, samples: list[np.ndarray]) -> tuple[bool, float, str]:
        lower, upper = self.spec.lower, self.spec.upper
        worst, where = 0.0, ""
        for s in samples:
            over = np.maximum(s - upper, lower - s)
            excess = over - self.tol
            i = int(np.argmax(excess))
            if over[i] > worst:
                worst, where = float(over[i]), self.spec.joints[i].name
            if excess[i] > 0:
                return False, float(over[i]), self.spec.joints[i].name
        return True, worst, where

    def wait_at_rest(self, timeout: float, speed_tol: float = 0.05) -> tuple[bool, float]:
        """Sample until every joint is still (position joints) / stopped (base joints)."""
        t0 = time.monotonic()
        prev, prev_t = self.read(), time.monotonic()
        while time.monotonic() - t0 <= timeout:
            time.sleep(self.period)
            now, now_t = self.read(), time.monotonic()
            speed = np.abs(now - prev) / max(now_t - prev_t, 1e-6)
            moving_pos = np.any((speed > speed_tol) & ~self.vel)
            moving_base = np.any((np.abs(now) > self.tol) & self.vel)
            if not moving_pos and not moving_base:
                return True, now_t - t0
            prev, prev_t = now, now_t
        return False, time.monotonic() - t0

    # -- checks -----------------------------------------------------------------------------------

    def check_spec(self) -> CheckResult:
        problems = []
        for j in self.spec.joints:
            if j.unit not in UNITS_FOR_KIND.get(j.kind, ()):
                problems.append(f"{j.name}: unit {j.unit!r} does not fit kind {j.kind!r}")
        lo, hi = self.spec.lower, self.spec.upper
        for j, a, b in zip(self.spec.joints, lo, hi, strict=False):
            if not (math.isfinite(a) and math.isfinite(b) and a < b):
                problems.append(f"{j.name}: limits [{a}, {b}] are not a finite range")
        if not self.spec.watchdog_timeout_s >= self.period:
            problems.append("watchdog timeout shorter than a control period")
        return CheckResult(
            "spec",
            not problems,
            "; ".join(problems) or f"{self.spec.dof} joints, {self.spec.control_hz:g} Hz",
        )

    def check_connect(self) -> CheckResult:
        t = time.perf_counter()
        self.a.connect()
        ms = (time.perf_counter() - t) * 1e3
        ok = self.a.is_connected
        return CheckResult(
            "connect", ok, "connected" if ok else "is_connected is false after connect()", {"connect_ms": ms}
        )

    def check_read(self) -> CheckResult:
        stamps = []
        for _ in range(self.o.timing_samples):
            state = self.a.read_state()
            stamps.append((state.stamp, time.monotonic()))
            if state.position.shape != (self.spec.dof,):
                return CheckResult(
                    "read",
                    False,
                    f"position has shape {state.position.shape}, spec has {self.spec.dof} joints",
                )
            if not np.all(np.isfinite(state.position)):
                return CheckResult("read", False, "position is not finite")
        for _ in range(self.o.timing_samples):
            self.read()
        diffs = np.diff([s for s, _ in stamps])
        if np.any(diffs < 0):
            return CheckResult("read", False, "state stamps go backwards")
        age = max(now - s for s, now in stamps)
        ok, worst, joint = self.within_limits([self.read()])
        figures = {
            "read_p50_ms": float(np.percentile(self.read_ms, 50)),
            "read_p99_ms": float(np.percentile(self.read_ms, 99)),
            "stamp_age_max_ms": age * 1e3,
        }
        if age > self.period:
            return CheckResult(
                "read", False, f"state stamp is {age * 1e3:.1f} ms old (more than a control period)", figures
            )
        if not ok:
            return CheckResult(
                "read", False, f"measured {joint} is {worst:.4f} outside its declared limits", figures
            )
        if figures["read_p99_ms"] > self.period * 1e3:
            return CheckResult(
                "read", False, f"read p99 {figures['read_p99_ms']:.1f} ms exceeds the control period", figures
            )
        return CheckResult("read", True, f"p99 {figures['read_p99_ms']:.2f} ms", figures)

    def check_command(self) -> CheckResult:
        start = self.read()
        lower, upper = self.spec.lower, self.spec.upper
        step = np.array(
            [self.o.step_rad if j.unit in ("rad", "normalized") else self.o.step_m for j in self.spec.joints]
        )
        step = step * max(self.o.speed_scale, 0.25)
        # Step towards the middle of the range so the target is always reachable.
        direction = np.where(start < (lower + upper) / 2, 1.0, -1.0)
        goal = np.clip(start + direction * step, lower, upper)
        figures: dict[str, float] = {}
        if np.any(~self.vel):
            self.move_to(goal)
            # keep commanding the goal until it is reached (or settle_s runs out)
            t_end = time.monotonic() + self.o.settle_s
            while True:
                self.command(np.where(self.vel, 0.0, goal))
                reached = self.read()
                err = np.where(self.vel, 0.0, np.abs(reached - goal))
                if np.all(err <= 0.5 * self.tol) or time.monotonic() > t_end:
                    break
                time.sleep(self.period)
            figures["tracking_error_max"] = float(err.max())
            bad = np.flatnonzero(err > self.tol)
            if bad.size:
                names = ", ".join(f"{self.spec.joints[i].name} off by {err[i]:.4f}" for i in bad)
                return CheckResult(
                    "command", False, f"target not reached in {self.o.settle_s} s: {names}", figures
                )
        if np.any(self.vel):
            # Drive each base axis at 40 % of its (scaled) limit and compare the measured speed.
            for i in np.flatnonzero(self.vel):
                target = self.rest_target(self.read())
                target[i] = 0.4 * self.vmax[i]
                seen = []
                t_end = time.monotonic() + 1.2
                while time.monotonic() < t_end:
                    self.command(target)
                    seen.append(self.read()[i])
                    time.sleep(self.period)
                measured = float(np.mean(seen[-max(3, len(seen) // 4) :]))
                self.command(self.rest_target(self.read()))
                name = self.spec.joints[i].name
                figures[f"{name}_commanded"] = float(target[i])
                figures[f"{name}_measured"] = measured
                if not 0.5 * target[i] <= measured <= 1.5 * target[i]:
                    return CheckResult(
                        "command",
                        False,
                        f"{name}: commanded {target[i]:.3f}, measured {measured:.3f}",
                        figures,
                    )
            self.wait_at_rest(self.spec.watchdog_timeout_s + 1.0)
        return CheckResult("command", True, "targets reached", figures)

    def check_bad_commands(self) -> CheckResult:
        before = self.read()
        bad_inputs = {
            "NaN": np.where(np.arange(self.spec.dof) == 0, np.nan, before),
            "inf": np.where(np.arange(self.spec.dof) == 0, np.inf, before),
            "wrong shape": np.zeros(self.spec.dof + 1),
        }
        for label, target in bad_inputs.items():
            try:
                self.a.command(target)
            except ValueError:
                continue
            return CheckResult(
                "bad_commands", False, f"a {label} command was accepted (must raise ValueError)"
            )
        time.sleep(0.2)
        after = self.read()
        drift = np.where(self.vel, np.abs(after), np.abs(after - before))
        if np.any(drift > self.tol):
            return CheckResult(
                "bad_commands", False, f"the robot moved after refused commands (drift {drift.max():.4f})"
            )
        return CheckResult(
            "bad_commands", True, "NaN, inf and wrong-shape commands refused with ValueError, robot unmoved"
        )

    def check_limits(self) -> CheckResult:
        start = self.read()
        lower, upper = self.spec.lower, self.spec.upper
        # Command past the nearer limit of every joint; the adapter must clamp.
        past = np.where(
            upper - start <= start - lower, upper + 0.2 * (upper - lower), lower - 0.2 * (upper - lower)
        )
        samples = self.move_to(past, extra_s=0.5)
        ok, worst, joint = self.within_limits(samples)
        moved = np.max(np.abs(samples[-1] - start)[~self.vel], initial=0.0)
        back = self.move_to(self.rest_target(start), extra_s=0.5)
        ok_back, worst_back, joint_back = self.within_limits(back)
        figures = {"worst_excursion": max(worst, worst_back)}
        if np.any(self.vel):
            # Base velocity limits: command twice the limit, measure.
            seen = []
            for _ in range(round(1.0 / self.period)):
                self.command(np.where(self.vel, 2.0 * self.spec.upper, self.rest_target(self.read())))
                seen.append(self.read())
                time.sleep(self.period)
            self.command(self.rest_target(self.read()))
            ok_v, worst_v, joint_v = self.within_limits(seen)
            figures["worst_velocity_excursion"] = worst_v
            self.wait_at_rest(self.spec.watchdog_timeout_s + 1.0)
            if not ok_v:
                return CheckResult(
                    "limits", False, f"{joint_v} exceeded its velocity limit by {worst_v:.4f}", figures
                )
        if not ok or not ok_back:
            j = joint if not ok else joint_back
            return CheckResult(
                "limits", False, f"{j} went {max(worst, worst_back):.4f} past its limit", figures
            )
        if np.any(~self.vel) and moved < 0.5 * min(self.tol):
            return CheckResult("limits", False, "the robot did not move towards its limits", figures)
        return CheckResult(
            "limits",
            True,
            f"worst excursion past a limit {figures['worst_excursion']:.4f} (tolerance per unit)",
            figures,
        )

    def check_hold(self) -> CheckResult:
        # Set the robot moving, then hold: hold() must return fast and the robot be at rest
        # within the watchdog timeout.
        start = self.read()
        lower, upper = self.spec.lower, self.spec.upper
        direction = np.where(start < (lower + upper) / 2, 1.0, -1.0)
        moving = np.where(self.vel, 0.4 * self.vmax, start + direction * 0.5 * self.vmax)
        moving = np.clip(moving, lower, upper)
        t_end = time.monotonic() + 0.3
        while time.monotonic() < t_end:
            self.command(moving)
            time.sleep(self.period)
        t = time.perf_counter()
        self.a.hold()
        hold_ms = (time.perf_counter() - t) * 1e3
        at_rest, rest_s = self.wait_at_rest(self.spec.watchdog_timeout_s)
        held = self.read()
        time.sleep(0.3)
        drift = np.abs(self.read() - held)
        figures = {"hold_call_ms": hold_ms, "time_to_rest_s": rest_s, "drift_after_hold": float(drift.max())}
        if hold_ms > self.period * 1e3:
            return CheckResult(
                "hold", False, f"hold() took {hold_ms:.1f} ms (more than a control period)", figures
            )
        if not at_rest:
            return CheckResult(
                "hold", False, f"not at rest {self.spec.watchdog_timeout_s} s after hold()", figures
            )
        if np.any(drift > self.tol):
            return CheckResult("hold", False, f"drifted {drift.max():.4f} while holding", figures)
        return CheckResult("hold", True, f"at rest {rest_s * 1e3:.0f} ms after hold()", figures)

    def check_watchdog(self) -> CheckResult:
        # Stop commanding: within the watchdog timeout the robot must be holding / at rest.
        start = self.read()
        target = np.where(self.vel, 0.4 * self.vmax, start)
        for _ in range(5):
            self.command(target)
            time.sleep(self.period)
        last = time.monotonic()
        at_rest, _rest_s = self.wait_at_rest(self.spec.watchdog_timeout_s + 0.5)
        waited = time.monotonic() - last
        held = self.read()
        time.sleep(0.3)
        drift = np.abs(self.read() - held)
        figures = {"time_to_rest_after_last_command_s": waited if at_rest else math.inf}
        if not at_rest:
            return CheckResult(
                "watchdog", False, f"still moving {waited:.2f} s after the last command", figures
            )
        if np.any(drift > self.tol):
            return CheckResult("watchdog", False, f"drifts {drift.max():.4f} without commands", figures)
        return CheckResult("watchdog", True, f"at rest {waited * 1e3:.0f} ms after the last command", figures)

    def check_reconnect(self) -> CheckResult:
        before = self.read()
        inject = getattr(self.a, "inject_fault", None)
        how = "disconnect/connect"
        detect_ms = math.nan
        if inject is not None and not self.o.hardware:
            inject("link_drop")
            # A dropped link must be *detected* (RobotLinkError) within the watchdog timeout;
            # feedback-driven adapters notice when the feedback goes stale.
            t_drop = time.monotonic()
            detected = None
            while time.monotonic() - t_drop <= self.spec.watchdog_timeout_s:
                try:
                    self.a.read_state()
                except RobotLinkError as exc:
                    detected = exc
                    break
                except Exception as exc:
                    return CheckResult(
                        "reconnect",
                        False,
                        f"a dropped link raised {type(exc).__name__}, not RobotLinkError: {exc}",
                    )
                time.sleep(0.005)
            if detected is None:
                return CheckResult(
                    "reconnect",
                    False,
                    f"read_state() still succeeds {self.spec.watchdog_timeout_s} s after the link dropped",
                )
            detect_ms = (time.monotonic() - t_drop) * 1e3
            how = f"dropped link detected in {detect_ms:.0f} ms ({detected})"
            try:
                self.a.command(self.rest_target(before))
            except RobotLinkError:
                pass
            else:
                return CheckResult("reconnect", False, "command() succeeded on a dropped link")
        else:
            self.a.disconnect()
        t = time.perf_counter()
        self.a.connect()
        ms = (time.perf_counter() - t) * 1e3
        after = self.read()
        jump = np.where(self.vel, 0.0, np.abs(after - before))
        self.command(self.rest_target(after))
        figures = {"reconnect_ms": ms, "position_jump": float(jump.max()), "link_drop_detect_ms": detect_ms}
        if np.any(jump > self.tol):
            return CheckResult(
                "reconnect", False, f"position jumped {jump.max():.4f} across the reconnect", figures
            )
        return CheckResult("reconnect", True, f"{how}; reconnected in {ms:.0f} ms", figures)

    def check_timing(self) -> CheckResult:
        # read + command at the control rate for a second: the loop must keep its period.
        t_prev = time.monotonic()
        periods = []
        next_t = t_prev
        for _ in range(round(1.0 / self.period)):
            self.command(self.rest_target(self.read()))
            next_t += self.period
            time.sleep(max(0.0, next_t - time.monotonic()))
            now = time.monotonic()
            periods.append(now - t_prev)
            t_prev = now
        figures = {
            "read_p50_ms": float(np.percentile(self.read_ms, 50)),
            "read_p99_ms": float(np.percentile(self.read_ms, 99)),
            "command_p50_ms": float(np.percentile(self.command_ms, 50)),
            "command_p99_ms": float(np.percentile(self.command_ms, 99)),
            "loop_period_p99_ms": float(np.percentile(periods, 99) * 1e3),
        }
        budget = self.period * 1e3
        if figures["read_p99_ms"] + figures["command_p99_ms"] > budget:
            return CheckResult(
                "timing",
                False,
                f"read+command p99 {figures['read_p99_ms'] + figures['command_p99_ms']:.1f} ms exceeds the {budget:.1f} ms period",
                figures,
            )
        return CheckResult(
            "timing",
            True,
            f"read p99 {figures['read_p99_ms']:.2f} ms, command p99 {figures['command_p99_ms']:.2f} ms",
            figures,
        )

    def check_disconnect(self) -> CheckResult:
        self.a.disconnect()
        try:
            self.a.read_state()
        except RobotError:
            pass
        else:
            return CheckResult("disconnect", False, "read_state() succeeded after disconnect()")
        self.a.disconnect()  # twice must be harmless
        return CheckResult("disconnect", True, "read refused after disconnect; second disconnect harmless")


CHECKS = (
    "spec",
    "connect",
    "read",
    "command",
    "bad_commands",
    "limits",
    "hold",
    "watchdog",
    "reconnect",
    "timing",
    "disconnect",
)


def run_checks(
    adapter: RobotAdapter,
    options: CheckOptions | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run every check in order; a failure skips the checks that need a working connection."""
    kit = _Kit(adapter, options or CheckOptions())
    results: list[CheckResult] = []
    broken = False
    for name in CHECKS:
        if broken and name not in ("disconnect",):
            result = CheckResult(name, False, "skipped: an earlier check failed", skipped=True)
        else:
            try:
                result = getattr(kit, f"check_{name}")()
            except Exception as exc:
                result = CheckResult(name, False, f"{type(exc).__name__}: {exc}")
            if not result.passed and name in ("spec", "connect", "read", "reconnect"):
                broken = True
        results.append(result)
        if on_result is not None:
            on_result(result)
    if adapter.is_connected:
        with contextlib.suppress(Exception):
            adapter.disconnect()
    return results


def check_kinematics(config, samples: int = 200, seed: int = 0) -> CheckResult:
    """FK/IK consistency of every arm in robot.yaml's ``kinematics:`` block, on the models alone
    (no robot moves): for ``samples`` random joint positions q inside each arm's limits, IK of
    FK(q), seeded from q perturbed by N(0, 0.2 rad), must return q' whose FK matches FK(q) within
    the arm's tolerances (position only for position-only arms; their orientation residual is
    reported). Catches a model that does not load, a chain that does not match the joints, limits
    that leave no room, and IK that does not converge. It cannot see calibration: whether the real
    arm's joint zeros and signs match the model is for a measurement with the robot."""
    from wall_runtime.kinematics import load_robot_kinematics, rotation_angle

    name = "kinematics"
    if not getattr(config, "kinematics", None):
        return CheckResult(name, True, "no kinematics block: skipped", skipped=True)
    try:
        arms = load_robot_kinematics(config)
    except (ValueError, ImportError) as exc:
        return CheckResult(name, False, f"cannot load the kinematic models: {exc}")
    rng = np.random.default_rng(seed)
    figures: dict[str, float] = {}
    details: list[str] = []
    passed = True
    for arm_name, arm in arms.items():
        fails, worst_pos, worst_ori, ms = 0, 0.0, 0.0, []
        for _ in range(samples):
            q = rng.uniform(arm.lower, arm.upper)
            target = arm.fk(q)
            start = np.clip(q + rng.normal(0.0, 0.2, q.shape), arm.lower, arm.upper)
            t = time.perf_counter()
            res = arm.ik(target, start)
            ms.append((time.perf_counter() - t) * 1e3)
            got = arm.fk(res.q)  # recomputed: the solver's own report is not trusted here
            pos = float(np.linalg.norm(got.position - target.position))
            ori = rotation_angle(got.rotation, target.rotation)
            inside = bool(np.all(res.q >= arm.lower - 1e-9) and np.all(res.q <= arm.upper + 1e-9))
            if not (
                inside
                and pos <= arm.position_tolerance
                and (arm.position_only or ori <= arm.orientation_tolerance)
            ):
                fails += 1
            else:
                worst_pos, worst_ori = max(worst_pos, pos), max(worst_ori, ori)
        rate = 1.0 - fails / samples
        # A few near-singular samples may miss; more than 1% means the model or limits are wrong.
        ok = rate >= 0.99
        passed &= ok
        figures |= {
            f"{arm_name}.ik_success_rate": rate,
            f"{arm_name}.worst_position_error_mm": worst_pos * 1e3,
            f"{arm_name}.worst_orientation_error_deg": math.degrees(worst_ori),
            f"{arm_name}.ik_ms_p50": float(np.percentile(ms, 50)),
            f"{arm_name}.ik_ms_p99": float(np.percentile(ms, 99)),
        }
        kind = "position-only, orientation residual" if arm.position_only else "orientation"
        details.append(
            f"{arm_name}: {rate:.1%} of {samples} IK(FK(q)) within tolerance, worst {worst_pos * 1e3:.2f} mm, "
            f"{kind} {math.degrees(worst_ori):.2f}°, p50 {np.percentile(ms, 50):.2f} ms"
        )
    return CheckResult(name, passed, "; ".join(details), figures)
