"""The control loop: fixed rate, absolute deadlines, never blocking on the network or the cameras.

Each tick: read the robot → poll the e-stop sources → take in any chunks that arrived → the
scheduler's target for now → the safety chain → ``adapter.command``; or, when there is no valid
target for the watchdog's timeout, ``adapter.hold``. Then, when the plan runs low, the latest
observation goes out (with the RTC hint when that smoother is used). Chunks come from a
non-blocking :class:`ChunkSource` (``request`` must return at once, ``poll`` returns what has
arrived or ``None``), and observations from a callable that returns the latest captured one or
``None`` — both must not block; a slow camera or a dead server shows as a missing target, which is
the watchdog's business, never as a late tick.

Chunks arrive in the robot's joint order and units: the model edge (``wall_runtime.action_space``)
converts the checkpoint's layout before the loop sees it, so the scheduler, smoothers, seam metrics
and the safety chain all speak the robot's joints.

Deadlines are ``t0 + k * period`` on ``time.monotonic``, so the rate does not drift; a tick that
overruns skips the deadlines it missed (counted) rather than bunching ticks to catch up.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from wall_runtime.control.estop import EStop
from wall_runtime.control.safety import BASE_KINDS, Intervention, SafetyChain, SafetyConfig, joint_step_limits
from wall_runtime.control.scheduler import ChunkScheduler, SchedulerConfig, SpliceEvent
from wall_runtime.control.seams import SeamRecord, seam_metrics, summarize
from wall_runtime.control.smoothing import make_smoother
from wall_runtime.control.watchdog import Watchdog
from wall_runtime.recording.subscriber import LoopRecorder, TickRecord
from wall_runtime.robot import RobotAdapter
from wall_runtime.types import ActionChunk, Observation, RobotState

log = logging.getLogger(__name__)


class ChunkSource(Protocol):
    """Where chunks come from: the transport client, or anything that answers like it."""

    def request(self, observation: Observation) -> None:
        """Send an observation; must return at once."""
        ...

    def poll(self) -> ActionChunk | None:
        """A chunk that has arrived, or ``None``; must return at once."""
        ...


# (measured state, now) -> the latest observation, or None when the cameras have nothing fresh
ObservationProvider = Callable[[RobotState, float], Observation | None]


@dataclass
class LoopConfig:
    control_hz: float
    smoother: str = "crossfade"
    smoother_options: dict[str, float] = field(default_factory=dict)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    watchdog_timeout: float = 0.25
    max_observation_age: float = 0.5  # an older observation is stale: not sent
    hold_repeat_s: float = 0.1  # while held, hold() is repeated this often
    spin_s: float = 0.0003  # the last bit before a deadline is waited out by spinning, not sleep
    safe_pose: Sequence[float] | None = None  # moved to on shutdown, under the same limits
    safe_pose_timeout: float = 5.0
    log_ticks: int = 200_000  # the run log stops recording after this many ticks

    def __post_init__(self) -> None:
        if not (math.isfinite(self.control_hz) and self.control_hz > 0):
            raise ValueError(f"control_hz must be a positive number, got {self.control_hz!r}")


@dataclass
class RunLog:
    """What a run did, tick by tick, for reports and plots."""

    time: list[float] = field(default_factory=list)
    deadline: list[float] = field(default_factory=list)
    compute_s: list[float] = field(default_factory=list)
    target: list[np.ndarray] = field(default_factory=list)  # joint targets before safety (NaN if none)
    commanded: list[np.ndarray] = field(default_factory=list)  # what the adapter got (NaN if nothing)
    measured: list[np.ndarray] = field(default_factory=list)
    status: list[str] = field(default_factory=list)  # ok | idle | hold | estop
    splices: list[tuple[int, SpliceEvent]] = field(default_factory=list)
    interventions: list[tuple[int, Intervention]] = field(default_factory=list)  # (row, intervention)
    events: list[tuple[int, float, str, str]] = field(default_factory=list)  # tick, time, kind, detail

    def array(self, name: str) -> np.ndarray:
        return np.array(getattr(self, name))

    def seams(self, dt: float) -> list[SeamRecord]:
        """Seam metrics on the commanded trajectory, on the ticks' deadlines (rows where nothing was
        commanded are NaN, so no derivative is taken across them)."""
        commanded = self.array("commanded")
        if commanded.size == 0:
            return []
        deadlines = self.array("deadline")
        times = deadlines if len(deadlines) == len(commanded) else None
        boundaries = [t for t, _ in self.splices]
        return seam_metrics(commanded, dt, boundaries[1:], times)  # the first chunk is a start, not a seam

    def timing(self, period: float) -> dict[str, float]:
        start = self.array("time")
        late = start - self.array("deadline")
        out: dict[str, float] = {"ticks": len(start)}
        if len(start) > 2:
            jitter = np.diff(start) - period
            out.update(
                period_jitter_p50_us=float(np.percentile(np.abs(jitter), 50) * 1e6),
                period_jitter_p99_us=float(np.percentile(np.abs(jitter), 99) * 1e6),
                period_jitter_max_us=float(np.max(np.abs(jitter)) * 1e6),
                lateness_p99_us=float(np.percentile(late, 99) * 1e6),
                tick_compute_p50_us=float(np.percentile(self.compute_s, 50) * 1e6),
                tick_compute_p99_us=float(np.percentile(self.compute_s, 99) * 1e6),
            )
        return out


class ControlLoop:
    def __init__(
        self,
        adapter: RobotAdapter,
        source: ChunkSource,
        observe: ObservationProvider,
        config: LoopConfig,
        safety_config: SafetyConfig | None = None,
        estop: EStop | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        recorder: LoopRecorder | None = None,
    ) -> None:
        self.adapter = adapter
        # told about every chunk, request and tick (e.g. a LeRobot dataset being written)
        self.recorder = recorder
        self.spec = adapter.spec
        self.source = source
        self.observe = observe
        self.config = config
        self.period = 1.0 / config.control_hz
        self.safety_config = safety_config if safety_config is not None else SafetyConfig()
        self.safety = SafetyChain(
            self.spec.joints, self.safety_config, self.period, forward_kinematics=adapter.forward_kinematics
        )
        if (
            self.safety_config.workspace_min is not None
            and adapter.forward_kinematics(np.zeros(self.spec.dof)) is None
        ):
            log.warning(
                "safety.workspace is set but %s has no forward kinematics: box not enforced", self.spec.name
            )
        self.scheduler = ChunkScheduler(
            make_smoother(config.smoother, **config.smoother_options), config.scheduler
        )
        self.scheduler.set_control_period(self.period)
        # chunks reach the loop in the robot's joints (the model edge converted them): exactly dof wide
        self.scheduler.min_action_dim = self.scheduler.max_action_dim = self.spec.dof
        self._joint_step = joint_step_limits(self.spec.joints, self.safety_config, self.period)
        self.watchdog = Watchdog(config.watchdog_timeout)
        self.estop = estop if estop is not None else EStop()
        self.clock = clock
        self.sleep = sleep
        self.log = RunLog()
        self.counters: dict[str, int] = {
            "ticks": 0,
            "overruns": 0,
            "requests": 0,
            "request_errors": 0,
            "stale_observations": 0,
            "chunks_received": 0,
            "chunks_discarded_estop": 0,
        }
        self._held = False
        self._last_hold = -math.inf
        self._last_command_time = -math.inf
        self._in_estop = False
        self._tick = 0
        self._nan_row = np.full(self.spec.dof, np.nan)

    # -- one tick -----------------------------------------------------------------------------

    def _hold(self, now: float, why: str) -> None:
        self.adapter.hold()
        self._last_hold = now
        if not self._held:
            self.log.events.append((self._tick, now, "hold", why))
            log.warning("holding: %s", why)
        self._held = True
        self.scheduler.reset()
        self.safety.reset(None)

    def _anchor(self, chunk: ActionChunk, state: RobotState, now: float) -> None:
        """Start the plan from where the robot is: the last command (or the measured state; base
        velocities at rest), so the first splice cannot jump. Chunks arrive in the robot's joints
        (the model edge converted them), so every dim here is a joint."""
        if self.scheduler.check(chunk, now) is not None:
            return  # the scheduler rejects it and says why
        last = self.safety.last_command
        joints = last if last is not None else np.asarray(state.position, dtype=np.float64)
        is_base = np.array([j.kind in BASE_KINDS for j in self.spec.joints])
        anchor = np.where(is_base & (last is None), 0.0, joints)
        self._set_scheduler_limits()
        self.scheduler.anchor(anchor, now - self.period)

    def _set_scheduler_limits(self) -> None:
        """The joint limits for the scheduler's splice blend and guard."""
        chain = self.safety
        # a base velocity joint's "position" is a velocity: its blend speed is the base acceleration
        velocity = np.where(chain.is_base, chain.base_acc, self._joint_step / self.period)
        self.scheduler.set_limits(
            max_step=self._joint_step,
            velocity=velocity,
            acceleration=np.where(chain.is_base, math.inf, chain.max_acc),
            jerk=np.where(chain.is_base, math.inf, chain.max_jerk),
        )

    def tick(self, now: float) -> None:
        self._tick += 1
        self.counters["ticks"] += 1
        state = self.adapter.read_state()
        self.safety.observe(state, now)  # after a gap the chain starts from the measured motion
        self.estop.poll(state)
        chunks = []
        for _ in range(16):
            chunk = self.source.poll()
            if chunk is None:
                break
            chunks.append(chunk)
        self.counters["chunks_received"] += len(chunks)
        if self.recorder is not None:
            for chunk in chunks:
                self.recorder.on_chunk(self._tick, chunk)

        target_joints = self._nan_row
        commanded = self._nan_row
        status = "ok"
        intervened: tuple[str, ...] = ()
        if self.estop.engaged:
            status = "estop"
            self.counters["chunks_discarded_estop"] += len(chunks)
            if not self._in_estop:
                self._in_estop = True
                self.log.events.append((self._tick, now, "estop", self.estop.reason or ""))
                self._held = False
                self._hold(now, f"e-stop: {self.estop.reason}")
            elif now - self._last_hold >= self.config.hold_repeat_s:
                self._hold(now, "e-stop")
        else:
            if self._in_estop:
                self._in_estop = False
                self.log.events.append((self._tick, now, "estop_reset", ""))
                self.watchdog.arm(now)
            for chunk in chunks:
                if self.scheduler.last_output is None:
                    self._anchor(chunk, state, now)
                event = self.scheduler.accept(chunk, now)
                if event is not None:
                    self.log.splices.append((self._tick - 1, event))
            target = self.scheduler.target(now)
            if target is not None:
                target_joints = target
                # after idle ticks or an overrun the chain starts again from the last command, moving
                # as the robot was measured to move (SafetyChain.filter)
                elapsed = now - self._last_command_time
                gap = math.isfinite(elapsed) and elapsed > 1.5 * self.period
                commanded = self.safety.filter(target_joints, state, dt=elapsed if gap else None)
                self._last_command_time = now
                self.adapter.command(commanded)
                row = self._tick - 1
                self.log.interventions.extend((row, e) for e in self.safety.last_tick_interventions)
                intervened = tuple(e.filter for e in self.safety.last_tick_interventions)
                self.watchdog.feed(now)
                self._held = False
            else:
                status = "idle"
                if self.watchdog.check(now):
                    self._hold(now, f"no valid target for {self.watchdog.timeout:.3f}s")
                elif self._held and now - self._last_hold >= self.config.hold_repeat_s:
                    self._hold(now, "watchdog")
                if self._held:
                    status = "hold"
            self._maybe_request(state, now)

        if len(self.log.time) < self.config.log_ticks:
            self.log.target.append(np.array(target_joints, dtype=np.float64))
            self.log.commanded.append(np.array(commanded, dtype=np.float64))
            self.log.measured.append(np.asarray(state.position, dtype=np.float64).copy())
            self.log.status.append(status)
        if self.recorder is not None:
            self.recorder.on_tick(
                TickRecord(
                    self._tick,
                    now,
                    np.asarray(state.position, dtype=np.float64),
                    np.asarray(target_joints, dtype=np.float64),
                    np.asarray(commanded, dtype=np.float64),
                    status,
                    intervened,
                    None if state.velocity is None else np.asarray(state.velocity, dtype=np.float64),
                )
            )

    def _maybe_request(self, state: RobotState, now: float) -> None:
        if not self.scheduler.should_request(now):
            return
        try:
            obs = self.observe(state, now)
        except Exception as exc:  # a camera error must not stop the loop: the watchdog handles it
            log.warning("observation failed: %s", exc)
            obs = None
        if obs is None or not (now - obs.stamp <= self.config.max_observation_age):
            self.counters["stale_observations"] += 1
            return
        hint = self.scheduler.hint(obs.stamp)
        if hint is not None:
            obs.inpaint = hint
        try:
            self.source.request(obs)
        except Exception as exc:
            self.counters["request_errors"] += 1
            log.warning("chunk request failed: %s", exc)
            return
        self.counters["requests"] += 1
        self.scheduler.note_request(obs.stamp, now)
        if self.recorder is not None:
            self.recorder.on_request(self._tick, obs)

    # -- the loop -----------------------------------------------------------------------------

    def _wait_until(self, deadline: float) -> None:
        remaining = deadline - self.clock()
        if remaining > self.config.spin_s:
            self.sleep(remaining - self.config.spin_s)
        while self.clock() < deadline:
            pass

    def run(
        self,
        duration: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_tick: Callable[[ControlLoop], Any] | None = None,
    ) -> dict[str, Any]:
        """Run until ``duration`` seconds have passed or ``should_stop()``; returns the summary."""
        t0 = self.clock()
        self.watchdog.arm(t0)
        k = 0
        try:
            while True:
                deadline = t0 + k * self.period
                self._wait_until(deadline)
                start = self.clock()
                # the tick works on its deadline, not on when it happened to wake: commands form a
                # uniformly timed sequence (the limits assume one period between them), and the
                # wake-up jitter does not turn into position noise on a moving target
                self.tick(deadline)
                if len(self.log.time) < self.config.log_ticks:
                    self.log.time.append(start)
                    self.log.deadline.append(deadline)
                    self.log.compute_s.append(self.clock() - start)
                if on_tick is not None:
                    on_tick(self)
                if (duration is not None and start - t0 >= duration) or (
                    should_stop is not None and should_stop()
                ):
                    break
                k += 1
                behind = int((self.clock() - (t0 + k * self.period)) // self.period)
                if behind > 0:  # overran: skip the missed deadlines instead of bunching ticks
                    self.counters["overruns"] += behind
                    k += behind
        finally:
            self.shutdown()
        return self.summary()

    def shutdown(self) -> None:
        """Optional safe pose (under the same limits), then hold."""
        try:
            if self.config.safe_pose is not None and not self.estop.engaged:
                self.move_to(
                    np.asarray(self.config.safe_pose, dtype=np.float64), self.config.safe_pose_timeout
                )
        finally:
            self.adapter.hold()

    def move_to(self, pose: np.ndarray, timeout: float, tolerance: float = 1e-3) -> bool:
        """Drive to ``pose`` through the safety chain at a braking-aware speed; False on timeout/e-stop."""
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (self.spec.dof,) or not np.all(np.isfinite(pose)):
            raise ValueError(f"safe pose must be {self.spec.dof} finite values")
        chain = self.safety
        is_base = chain.is_base
        goal = np.where(is_base, 0.0, np.clip(pose, chain.lower, chain.upper))
        # without any speed limit configured, a conservative 0.25 units/s
        vmax = np.minimum(chain.max_vel, chain.max_step / self.period)
        vmax = np.where(np.isfinite(vmax), vmax, 0.25)
        amax = chain.max_acc
        t0 = self.clock()
        k = 0
        while self.clock() - t0 < timeout:
            self._wait_until(t0 + k * self.period)
            k += 1
            state = self.adapter.read_state()
            self.estop.poll(state)
            if self.estop.engaged:
                self.adapter.hold()
                return False
            p = chain.last_command
            if p is None:
                p = np.asarray(state.position, dtype=np.float64)
            err = goal - p
            with np.errstate(invalid="ignore"):
                speed = np.minimum(vmax, np.sqrt(2.0 * amax * np.abs(err)))
            speed = np.minimum(np.nan_to_num(speed, nan=0.0, posinf=vmax), np.abs(err) / self.period)
            target = np.where(is_base, 0.0, p + np.sign(err) * speed * self.period)
            self.adapter.command(chain.filter(target, state))
            if np.all(np.abs(goal - chain.last_command) <= tolerance):
                return True
        log.warning("safe pose not reached within %.1fs", timeout)
        return False

    def summary(self) -> dict[str, Any]:
        return {
            "control_hz": self.config.control_hz,
            "smoother": self.config.smoother,
            "counters": dict(self.counters),
            "chunks_rejected": dict(self.scheduler.rejected),
            "splice_guard_clips": self.scheduler.guard_clips,
            "interventions": dict(self.safety.counts),
            "watchdog_trips": self.watchdog.trips,
            "estop_triggers": self.estop.triggers,
            "latency_p95_s": self.scheduler.latency.estimate(),
            "timing": self.log.timing(self.period),
            "seams": summarize(self.log.seams(self.period)),
        }
