"""Closed-loop episodes of a simulated task through the whole runtime.

Per configuration: the policy server in its own process (``wall-runtime serve``), one ZeroMQ link
with the handshake, and per episode the model edge (composition, EE safety, IK), the control loop
from the project's one assembly function (:func:`wall_runtime.e2e.assemble.assemble_loop`:
scheduler, smoother, joint safety chain, watchdog) and the task's adapter, reset to the seed.

On the simulated clock the loop's waits advance the physics and the inference latency is applied
by :class:`~wall_runtime.eval.latency.SimLatencySource`, so a configuration's results are the same
on any machine; on the real clock the physics runs on its own thread and the latency is whatever
it is (plus any injected extra).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.action_space.source import EdgeSource
from wall_runtime.control.scheduler import SchedulerConfig
from wall_runtime.e2e.assemble import LoopOptions, assemble_loop, loop_parts
from wall_runtime.e2e.policy_link import ClientChunkSource
from wall_runtime.e2e.robot_side import RobotSide, load_robot_side
from wall_runtime.e2e.session import check_fit
from wall_runtime.eval.latency import SimLatencySource
from wall_runtime.recording.subscriber import LoopRecorder
from wall_runtime.transport.client import PolicyClient
from wall_runtime.transport.protocol import RobotDescription
from wall_runtime.types import Observation, RobotState

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """One configuration of the runtime under test."""

    smoother: str = "crossfade"
    latency_ms: float | None = 0.0  # simulated clock: the inference latency applied; None = measured
    extra_latency_ms: float = 0.0  # injected on top (both clocks)
    execute_horizon: int | None = None  # actions of a chunk run before the next takes over; None = auto
    clock: str = "simulated"  # simulated | real
    render: bool | None = None  # observation images rendered (None: unless the policy is a scripted expert)
    num_steps: int | None = None  # a model's denoise steps (the server's option), for the record
    after_success_s: float = (
        0.0  # run on this long after success (within the time limit): a recorded demo's ending
    )

    def label(self) -> str:
        lat = "measured" if self.latency_ms is None else f"{self.latency_ms:g}"
        steps = "" if self.num_steps is None else f"/{self.num_steps}steps"
        return f"{self.smoother}/lat{lat}+{self.extra_latency_ms:g}ms/h{self.execute_horizon or 'auto'}{steps}/{self.clock}"


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    success_time_s: float | None
    best_reward: int
    episode_time_s: float
    wall_s: float
    interventions: dict[str, int] = field(default_factory=dict)  # joint safety chain, by filter
    ee_interventions: dict[str, int] = field(default_factory=dict)  # the model edge, by kind
    seams: dict[str, float] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    watchdog_trips: int = 0
    holds: int = 0
    chunks_rejected: dict[str, int] = field(default_factory=dict)
    splice_guard_clips: int = 0
    latency_applied_ms: float | None = None  # mean latency the chunks got (simulated clock)
    latency_measured_ms: float | None = None  # mean real round trip
    link_errors: dict[str, int] = field(default_factory=dict)  # failed requests, by error kind
    last_link_error: str | None = None
    video: str | None = None
    instruction: str = ""  # what the policy was told (the task's own per-episode instruction)
    recorded_episode: int | None = None  # its episode index in the --record dataset
    best_lift_m: float | None = None  # the pick task's highest lift of the named cube (a failure's progress)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EvalRunner:
    """A task robot (robot.yaml) and a policy server endpoint; runs episodes of one configuration."""

    def __init__(
        self,
        robot: str | Path,
        endpoint: str,
        config: EvalConfig,
        instruction: str = "transfer the cube to the left arm",
        side: RobotSide | None = None,
    ) -> None:
        self.config = config
        self.instruction = instruction
        self.side = side or load_robot_side(robot)
        self.adapter = self.side.adapter
        self.task = _task_part(self.adapter)
        if not self.task.is_connected:
            self.task.use_clock(config.clock)
        elif self.task.clock_kind != config.clock:
            raise ValueError(f"the task robot is already connected on the {self.task.clock_kind} clock")
        self.period = 1.0 / self.side.config.control_hz
        self.endpoint = endpoint
        self.client, self.metadata, self.description = self._connect()
        self.link = ClientChunkSource(self.client, deadline_s=60.0 if config.clock == "simulated" else None)
        if config.clock == "real":
            self.link.deadline_s = self.metadata.action_horizon * self.period
        self.render = config.render if config.render is not None else self.metadata.model != "scripted-expert"
        self.loop: Any = None  # the current (or last) episode's control loop: its log, counters, safety
        if not self.adapter.is_connected:
            self.adapter.connect()

    # -- the link -----------------------------------------------------------------------------

    def _views(self) -> dict[str, tuple[str, int, int]]:
        """model view -> (MJCF camera, width, height), from robot.yaml's simulated cameras."""
        cams = self.side.config.cameras or {}
        out = {}
        for name, dev in (cams.get("devices") or {}).items():
            out[str(dev.get("view", name))] = (name, int(dev.get("width", 224)), int(dev.get("height", 224)))
        return out

    def _connect(self) -> tuple[PolicyClient, Any, RobotDescription]:
        """One handshake: every view the robot renders (the server refuses a view the policy does
        not take, and a policy view the robot lacks, by name), the state size left to the policy
        (the model edge builds the state in the checkpoint's layout)."""
        description = RobotDescription(
            robot_id=self.side.config.name,
            embodiment=self.side.config.mapping.norm_key,
            cameras={v: (h, w, 3) for v, (_, w, h) in self._views().items()},
            state_dim=None,
            action_period=self.period,
        )
        client = PolicyClient(self.endpoint, description)
        try:
            meta = client.connect(timeout=30.0)
            check_fit(meta, self.side)  # refuses a layout the robot's mapping does not fit, naming the slot
        except BaseException:
            client.close()
            raise
        return client, meta, client.robot

    def _frame(self, view: str) -> np.ndarray:
        camera, w, h = self._views()[view]
        if not self.render:
            return np.zeros((h, w, 3), np.uint8)  # the expert reads privileged state, not pixels
        return self.task.render(camera, w, h)

    def warm_up(self, timeout_s: float = 60.0) -> None:
        """Before the first episode: render each view once and send one request through the link.
        A renderer's first frame (an OpenGL context each) and a cold server's first inference each
        take up to a second, which would otherwise land in the first episode: a hold on the real
        clock, and on the simulated clock with measured latency a first chunk due after the second."""
        for view in self.description.cameras:
            self._frame(view)
        # wrapped: closing the edge must not close the link, which outlives every episode
        edge = EdgeSource(check_fit(self.metadata, self.side), _DelayedSource(self.link, 0.0), threaded=False)
        try:
            state = self.adapter.read_state()
            obs = Observation(
                stamp=state.stamp,
                images={v: self._frame(v) for v in self.description.cameras},
                state=np.zeros(0, np.float32),
                instruction=getattr(self.task, "instruction", None) or self.instruction,
                norm_key=self.side.config.mapping.norm_key,
            )
            obs.privileged = {**self.task.privileged_state(), "action_period": [self.period]}
            edge.request(edge.observe(obs, state))
            deadline = time.monotonic() + timeout_s
            while self.link.poll() is None and time.monotonic() < deadline and not self.link.errors:
                time.sleep(0.002)
        finally:
            edge.close()

    # -- one episode --------------------------------------------------------------------------

    def run_episode(
        self,
        seed: int,
        time_limit_s: float | None = None,
        on_tick: Callable[[Any], None] | None = None,
        record_to: str | Path | None = None,
        subscribers: Sequence[LoopRecorder] = (),
    ) -> EpisodeResult:
        """One episode from ``seed``; ``record_to``: append it to that LeRobot v3 dataset folder
        (the task's instruction as its task; every tick's images rendered; success in its metadata).
        ``subscribers`` are told what the loop does after the recorder (e.g. ``demo``'s live view)."""
        cfg = self.config
        wall0 = time.monotonic()
        self.task.reset(seed)
        # a task that names its goal per episode (the pick task's colour) says so; else the runner's
        instruction = getattr(self.task, "instruction", None) or self.instruction
        limit = time_limit_s if time_limit_s is not None else self.task.time_limit_s
        latency: SimLatencySource | None = None
        inner: Any
        if cfg.clock == "simulated":
            assert self.task.sim_clock is not None
            latency = SimLatencySource(
                self.link,
                self.task.sim_clock,
                None if cfg.latency_ms is None else cfg.latency_ms / 1e3,
                cfg.extra_latency_ms / 1e3,
            )
            inner = latency
            clock, sleep = self.task.sim_clock.now, self.task.sim_clock.sleep
        else:
            inner = _DelayedSource(self.link, cfg.extra_latency_ms / 1e3)
            clock, sleep = time.monotonic, time.sleep
        # simulated clock: the edge converts a chunk when the loop polls (the clock stands still
        # meanwhile); real clock: on its own thread, off the control tick, as in `run`
        edge = EdgeSource(check_fit(self.metadata, self.side), inner, threaded=cfg.clock == "real")
        views = [v for v in self.description.cameras]

        def observe(state: RobotState, now: float) -> Observation | None:
            obs = Observation(
                stamp=state.stamp,
                images={v: self._frame(v) for v in views},
                state=np.zeros(0, np.float32),
                instruction=instruction,
                norm_key=self.side.config.mapping.norm_key,
            )
            obs.privileged = {**self.task.privileged_state(), "action_period": [self.period]}
            return edge.observe(obs, state)

        overrides: dict[str, Any] = {"spin_s": 0.0} if cfg.clock == "simulated" else {}
        if cfg.execute_horizon is not None:
            h = self.metadata.action_horizon
            if not 1 <= cfg.execute_horizon <= h:
                raise ValueError(f"execute_horizon {cfg.execute_horizon}: expected 1..{h}")
            lat = (cfg.latency_ms or 0.0) / 1e3 + cfg.extra_latency_ms / 1e3
            # ask for the next chunk so that it lands after ``execute_horizon`` actions of this one
            overrides["scheduler"] = SchedulerConfig(
                request_threshold_s=(h - cfg.execute_horizon) * self.period + lat
            )
        loop_options = LoopOptions(smoother=cfg.smoother, safe_pose=False, overrides=overrides)
        recorder = None
        if record_to is not None:
            from wall_runtime.recording.recorder import LeRobotRecorder, loop_settings, recording_layout

            if not self.render:
                raise ValueError("recording needs rendered images: run the eval with EvalConfig.render")
            loop_cfg, _ = loop_parts(self.adapter.spec, self.side.safety, loop_options)
            recorder = LeRobotRecorder(
                record_to,
                recording_layout(self.side, self.description.cameras),
                instruction,
                meta={**loop_settings(loop_cfg, self.side.config.path), "seed": seed},
                images=lambda: {v: self._frame(v) for v in views},
            )
        loop = assemble_loop(
            self.adapter,
            edge,
            observe,
            self.side.safety,
            loop_options,
            recorder=recorder,
            subscribers=subscribers,
            clock=clock,
            sleep=sleep,
        )
        self.loop = loop
        task = self.task
        errors_before = dict(self.link.errors)

        def stop() -> bool:
            if task.episode_time >= limit - 1e-9:
                return True
            if not task.success:
                return False
            return (
                cfg.after_success_s <= 0
                or task.episode_time >= task.success_time + cfg.after_success_s - 1e-9
            )

        result: dict[str, Any] | None = None
        try:
            summary = loop.run(duration=limit + 1.0, should_stop=stop, on_tick=on_tick)
            if cfg.clock == "real":  # now: the physics runs on while a reply still owed is drained
                result = task.episode_result()
        finally:
            edge.close()  # its thread; the link outlives the episode (neither wrapper closes it)
            if latency is not None:
                latency.drain()
            else:
                _drain_real(self.link)
        if result is None:
            result = task.episode_result()
        recorded = None
        if recorder is not None:
            recorder.close(
                {"success": bool(result["success"]), "instruction": instruction, "task_result": result}
            )
            recorded = recorder.episode_index
        holds = sum(1 for e in loop.log.events if e[2] == "hold")
        return EpisodeResult(
            seed=seed,
            success=bool(result["success"]),
            success_time_s=result["success_time_s"],
            best_reward=int(result["best_reward"]),
            episode_time_s=float(result["episode_time_s"]),
            wall_s=time.monotonic() - wall0,
            interventions={k: int(v) for k, v in summary["interventions"].items()},
            ee_interventions={k: int(v) for k, v in edge.interventions.items()},
            seams=summary["seams"],
            counters=summary["counters"],
            watchdog_trips=int(summary["watchdog_trips"]),
            holds=holds,
            chunks_rejected=dict(summary["chunks_rejected"]),
            splice_guard_clips=int(summary["splice_guard_clips"]),
            latency_applied_ms=_mean_ms(latency.applied_s) if latency else None,
            latency_measured_ms=_mean_ms(latency.measured_s) if latency else None,
            link_errors={
                k: v - errors_before.get(k, 0)
                for k, v in self.link.errors.items()
                if v > errors_before.get(k, 0)
            },
            last_link_error=self.link.last_error,
            instruction=instruction,
            recorded_episode=recorded,
            best_lift_m=None if result.get("best_lift_m") is None else float(result["best_lift_m"]),
        )

    def close(self) -> None:
        self.link.close()
        if self.adapter.is_connected:
            self.adapter.disconnect()


def _task_part(adapter: Any) -> Any:
    """The task adapter inside the composed robot (the part with privileged state)."""
    parts = getattr(adapter, "parts", [(None, adapter)])
    for _, part in parts:
        if hasattr(part, "privileged_state"):
            return part
    raise ValueError("the robot has no simulated task part (privileged state, reward): eval needs one")


def _mean_ms(values: list[float]) -> float | None:
    return float(np.mean(values) * 1e3) if values else None


def _drain_real(link: ClientChunkSource, wait_s: float = 0.5) -> None:
    """Real clock: give a reply still owed a moment, then drop whatever arrived."""
    time.sleep(wait_s)
    while link.poll() is not None:
        pass


class _DelayedSource:
    """Real clock: each chunk reaches the loop ``extra_s`` seconds after it arrived (and closing the
    episode's edge leaves the shared link open)."""

    def __init__(self, inner: ClientChunkSource, extra_s: float) -> None:
        self.inner = inner
        self.extra_s = extra_s
        self._held: list[tuple[float, Any]] = []

    def request(self, observation: Observation) -> None:
        self.inner.request(observation)

    def poll(self) -> Any:
        while (chunk := self.inner.poll()) is not None:
            self._held.append((time.monotonic() + self.extra_s, chunk))
        if self._held and self._held[0][0] <= time.monotonic():
            return self._held.pop(0)[1]
        return None


def summarize_episodes(episodes: list[EpisodeResult]) -> dict[str, Any]:
    n = len(episodes)
    ok = [e for e in episodes if e.success]
    times = [e.success_time_s for e in ok if e.success_time_s is not None]
    interventions = Counter()
    ee = Counter()
    for e in episodes:
        interventions.update(e.interventions)
        ee.update(e.ee_interventions)
    max_jerk = [e.seams.get("max_jerk", math.nan) for e in episodes if e.seams.get("seams")]
    return {
        "episodes": n,
        "successes": len(ok),
        "success_rate": len(ok) / n if n else math.nan,
        "time_to_success_mean_s": float(np.mean(times)) if times else None,
        "interventions_per_episode": sum(interventions.values()) / n if n else math.nan,
        "interventions": dict(interventions),
        "ee_interventions": dict(ee),
        "seam_max_jerk_median": float(np.median(max_jerk)) if max_jerk else None,
        "watchdog_trips": sum(e.watchdog_trips for e in episodes),
        "holds": sum(e.holds for e in episodes),
        "failed_seeds": [e.seed for e in episodes if not e.success],
    }
