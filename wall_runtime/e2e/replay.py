"""Replay a recorded episode through the same control pipeline, without a model.

Two ways, as GR00T's replay policy and wall-x's dummy controller allow:

- ``replay_dry``: the recorded chunks arrive on the ticks they arrived on, the robot "measures"
  what was measured, and a fresh loop (scheduler, smoother, safety chain) runs on the recorded
  deadlines. It must command exactly what the run commanded; the result says how close it came.
- ``ReplaySource``: the recorded chunks, re-timed to now, as a live chunk source, so a robot
  (the simulator or hardware) can be driven by a recording through the whole loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wall_runtime.control.loop import ControlLoop
from wall_runtime.control.safety import SafetyConfig
from wall_runtime.e2e.assemble import LoopOptions, assemble_loop
from wall_runtime.e2e.recording import Episode
from wall_runtime.robot import RobotAdapter, RobotSpec
from wall_runtime.types import ActionChunk, Observation, RobotState

if TYPE_CHECKING:
    from wall_runtime.recording.rerun_view import DisplayOptions


class RecordedRobot(RobotAdapter):
    """Reads back the recorded measurements tick by tick and keeps what it is commanded."""

    def __init__(
        self,
        spec: RobotSpec,
        measured: np.ndarray,
        deadlines: np.ndarray,
        fk: Callable[[np.ndarray], np.ndarray | None] | None = None,
        velocity: np.ndarray | None = None,
    ) -> None:
        self.spec = spec
        self._fk = fk
        self.measured = measured
        self.velocity = velocity  # reported velocities, NaN rows where the robot reported none
        self.deadlines = deadlines
        self.k = -1
        self.commands: list[np.ndarray] = []
        self.holds = 0

    def connect(self) -> None:
        pass

    def read_state(self) -> RobotState:
        self.k = min(self.k + 1, len(self.measured) - 1)
        velocity = None
        if self.velocity is not None and not np.all(np.isnan(self.velocity[self.k])):
            velocity = self.velocity[self.k].copy()
        return RobotState(
            stamp=float(self.deadlines[self.k]), position=self.measured[self.k].copy(), velocity=velocity
        )

    def command(self, target: np.ndarray) -> None:
        self.commands.append(np.asarray(target, dtype=np.float64).copy())

    def hold(self) -> None:
        self.holds += 1

    def disconnect(self) -> None:
        pass

    def forward_kinematics(self, position: np.ndarray) -> np.ndarray | None:
        return None if self._fk is None else self._fk(position)


class _TickSource:
    def __init__(self, by_tick: dict[int, list[ActionChunk]], tick: Callable[[], int]) -> None:
        self.by_tick = by_tick
        self.tick = tick
        self._pending: list[ActionChunk] = []
        self._served = 0

    def request(self, observation: Observation) -> None:
        pass

    def poll(self) -> ActionChunk | None:
        t = self.tick()
        if t != self._served:
            self._served = t
            self._pending = list(self.by_tick.get(t, []))
        return self._pending.pop(0) if self._pending else None


@dataclass
class DryReplay:
    ticks: int
    chunks: int
    max_abs_diff: float  # between the replayed and the recorded commands (NaN rows must match)
    nan_mismatches: int
    commanded: np.ndarray

    @property
    def identical(self) -> bool:
        return self.nan_mismatches == 0 and self.max_abs_diff <= 1e-9


def check_joint_chunks(episode: Episode, spec: RobotSpec) -> None:
    """A recording made before the model edge holds chunks in the checkpoint's layout (its meta says
    which action dim drove each joint, ``joint_dims``); replay drives the loop with joint chunks."""
    dims = episode.meta.get("joint_dims")
    width = episode.chunks["actions"].shape[-1] if episode.chunks else spec.dof
    if (dims is not None and list(dims) != list(range(spec.dof))) or width != spec.dof:
        raise ValueError(
            f"{episode.root}: its chunks are {width} wide in the checkpoint's layout (recorded before "
            f"the model edge), not the {spec.dof} joints of {spec.name}; record it again to replay it"
        )


def _robot_setup(episode: Episode) -> tuple[RobotSpec, SafetyConfig, Callable | None]:
    """The recorded robot's spec, safety settings and forward kinematics (the workspace filter
    needs the same kinematics as the run; the adapter is built but never connected)."""
    from wall_runtime.adapters.config import load_robot
    from wall_runtime.adapters.registry import build_adapter
    from wall_runtime.e2e.robot_side import safety_config

    robot_yaml = episode.meta.get("robot_yaml")
    if not robot_yaml or not Path(robot_yaml).exists():
        raise FileNotFoundError(
            f"{episode.root}: the recording names robot.yaml {robot_yaml!r}, which is not there; "
            "pass --robot to say which robot it was"
        )
    config = load_robot(robot_yaml)
    spec = config.spec()
    return spec, safety_config(config, spec), build_adapter(config).forward_kinematics


def dataset_images(episode: Episode, ticks: set[int]) -> dict[int, dict[str, np.ndarray]]:
    """The recorded camera frames (decoded from the dataset's videos, one frame per tick) of the
    given ticks, by view; nothing for a legacy recording (its observations carry their images)."""
    import av

    from wall_runtime.recording.lerobot_v3 import IMAGE_PREFIX, VIDEO_PATH, _chunk_file, read_info

    index = episode.meta.get("episode_index")
    if index is None or not (episode.root / "meta" / "info.json").exists():
        return {}
    out: dict[int, dict[str, np.ndarray]] = {}
    for key, feature in read_info(episode.root)["features"].items():
        if feature.get("dtype") != "video" or not key.startswith(IMAGE_PREFIX):
            continue
        path = episode.root / VIDEO_PATH.format(video_key=key, **_chunk_file(int(index)))
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i + 1 in ticks:  # frame i was recorded on tick i + 1
                    out.setdefault(i + 1, {})[key.removeprefix(IMAGE_PREFIX)] = frame.to_ndarray(
                        format="rgb24"
                    )
    return out


def _view(spec: RobotSpec, display: DisplayOptions | None, name: str, fk: Callable | None, lossless: bool):
    if display is None or not display.wanted:
        return None
    from wall_runtime.recording.rerun_view import open_view

    return open_view(spec, display, name=name, forward_kinematics=fk, lossless=lossless)


def replay_dry(
    episode: Episode, robot_yaml: str | Path | None = None, display: DisplayOptions | None = None
) -> DryReplay:
    """``display``: the replayed run in the live view too (lossless: the loop waits for the view,
    as a dry replay runs faster than real time)."""
    if robot_yaml is not None:
        episode.meta["robot_yaml"] = str(robot_yaml)
    spec, safety, fk = _robot_setup(episode)
    check_joint_chunks(episode, spec)
    view = _view(spec, display, f"replay {spec.name}", fk, lossless=True)
    try:
        return _replay_dry(episode, spec, safety, fk, view)
    finally:
        if view is not None:
            view.close()


def _replay_dry(
    episode: Episode, spec: RobotSpec, safety: SafetyConfig, fk: Callable | None, view: Any
) -> DryReplay:
    ticks = episode.ticks
    robot = RecordedRobot(spec, ticks["measured"], ticks["deadline"], fk, ticks.get("measured_velocity"))
    # each observation is handed back on the tick it was taken on (None on the others, as a
    # camera with nothing fresh answers)
    recorded_obs = dict(
        zip(episode.observations.get("tick", []).tolist(), episode.observations_in_order(), strict=True)
    )
    if view is not None:  # the view shows the images; the replayed loop never looks at them
        for tick, images in dataset_images(episode, set(recorded_obs)).items():
            recorded_obs[tick].images = images
    options = LoopOptions(
        smoother=episode.meta["smoother"],
        smoother_options=dict(episode.meta.get("smoother_options") or {}),
        safe_pose=False,
        overrides={
            "control_hz": float(episode.meta["control_hz"]),
            "watchdog_timeout": float(episode.meta["watchdog_timeout"]),
            "max_observation_age": float(episode.meta["max_observation_age"]),
        },
    )
    holder: dict[str, ControlLoop] = {}
    source = _TickSource(episode.chunks_by_tick(), lambda: holder["loop"].counters["ticks"])
    loop = assemble_loop(
        robot,
        source,
        lambda state, now: recorded_obs.get(holder["loop"].counters["ticks"]),
        safety,
        options,
        subscribers=[view] if view is not None else [],
    )
    holder["loop"] = loop
    loop.watchdog.arm(float(ticks["deadline"][0]))
    for deadline in ticks["deadline"]:
        loop.tick(float(deadline))
    replayed = np.asarray(loop.log.commanded, dtype=np.float64)
    recorded = np.asarray(ticks["commanded"], dtype=np.float64)
    nan_a, nan_b = np.isnan(replayed), np.isnan(recorded)
    both = ~(nan_a | nan_b)
    diff = float(np.max(np.abs(replayed[both] - recorded[both]))) if both.any() else 0.0
    return DryReplay(
        ticks=len(replayed),
        chunks=len(episode.chunks.get("tick", [])),
        max_abs_diff=diff,
        nan_mismatches=int(np.sum(nan_a != nan_b)),
        commanded=replayed,
    )


class ReplaySource:
    """The recorded chunks as a live source: each arrives as long after the start as it did then,
    with its stamp moved by the same offset, so the scheduler times it as it did."""

    def __init__(self, episode: Episode, clock: Callable[[], float] = time.monotonic) -> None:
        deadlines = episode.ticks["deadline"]
        self.t0_recorded = float(deadlines[0])
        self.clock = clock
        self.offset: float | None = None
        by_tick = episode.chunks_by_tick()
        self.queue = sorted(
            ((float(deadlines[min(t, len(deadlines)) - 1]), c) for t, cs in by_tick.items() for c in cs),
            key=lambda item: item[0],
        )
        self.delivered = 0

    @property
    def finished(self) -> bool:
        return self.delivered >= len(self.queue)

    def request(self, observation: Observation) -> None:
        pass

    def poll(self) -> ActionChunk | None:
        now = self.clock()
        if self.offset is None:
            self.offset = now - self.t0_recorded
        if self.finished or self.queue[self.delivered][0] + self.offset > now:
            return None
        _, chunk = self.queue[self.delivered]
        self.delivered += 1
        return ActionChunk(actions=chunk.actions, stamp=chunk.stamp + self.offset, dt=chunk.dt, seq=chunk.seq)


def drive_with_recording(
    episode: Episode, robot_yaml: str | Path | None = None, display: DisplayOptions | None = None
) -> dict:
    """Drive the robot named by the recording (or ``robot_yaml``) with its chunks, in real time,
    through the same loop, smoother and safety chain; stops when the last chunk has played out.
    ``display``: the drive in the live view."""
    from wall_runtime.e2e.robot_side import load_robot_side

    path = robot_yaml or episode.meta.get("robot_yaml")
    if not path:
        raise FileNotFoundError(f"{episode.root}: the recording names no robot.yaml; pass one")
    side = load_robot_side(path)
    check_joint_chunks(episode, side.adapter.spec)
    view = _view(
        side.adapter.spec, display, f"replay {side.config.name}", side.adapter.forward_kinematics, False
    )
    side.adapter.connect()
    try:
        source = ReplaySource(episode)
        options = LoopOptions(
            smoother=episode.meta["smoother"],
            smoother_options=dict(episode.meta.get("smoother_options") or {}),
            safe_pose=False,
        )
        # the recording holds joint chunks (recorded after the model edge): no edge here
        loop = assemble_loop(
            side.adapter,
            source,
            lambda state, now: None,
            side.safety,
            options,
            subscribers=[view] if view is not None else [],
        )
        horizon_s = (
            float(episode.chunks["actions"].shape[1] * episode.chunks["dt"][-1]) if episode.chunks else 0.0
        )
        played_out: list[float] = []

        def done() -> bool:
            if source.finished and not played_out:
                played_out.append(time.monotonic())
            return bool(played_out) and time.monotonic() - played_out[0] > horizon_s

        summary = loop.run(duration=None, should_stop=done)
        summary["robot"] = side.config.name
        return summary
    finally:
        side.adapter.disconnect()
        if view is not None:
            view.close()
