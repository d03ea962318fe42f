"""The one place a control loop is assembled: ``run``, ``demo``, ``replay`` and ``bench`` all call
:func:`assemble_loop`.

It takes the robot's side as plain pieces (adapter, its spec's watchdog, safety settings, safe
pose) so a recorded or simulated robot goes through the same code; the watchdog timeout is the
robot's one key, ``watchdog_timeout_s`` (robot.yaml top level, :class:`RobotSpec`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wall_runtime.control.estop import EStop
from wall_runtime.control.loop import ChunkSource, ControlLoop, LoopConfig, ObservationProvider
from wall_runtime.control.safety import SafetyConfig
from wall_runtime.recording.subscriber import LoopRecorder, fan_out
from wall_runtime.robot import RobotAdapter, RobotSpec


@dataclass
class LoopOptions:
    smoother: str = "crossfade"
    smoother_options: dict[str, float] = field(default_factory=dict)
    safe_pose: bool = True  # park at the robot's safe pose on shutdown (when it has one)
    disabled_filters: frozenset[str] = frozenset()  # --unsafe-disable-filter
    overrides: dict[str, Any] = field(default_factory=dict)  # other LoopConfig fields (replay)


def loop_parts(
    spec: RobotSpec,
    safety: SafetyConfig,
    options: LoopOptions,
    safe_pose: Sequence[float] | None = None,
) -> tuple[LoopConfig, SafetyConfig]:
    """The loop's settings and safety settings for ``spec`` (what :func:`assemble_loop` builds the
    loop with), for a caller that checks or records them before the loop exists."""
    if options.disabled_filters:
        safety = dataclasses.replace(safety, disabled=safety.disabled | set(options.disabled_filters))
    fields: dict[str, Any] = {
        "control_hz": spec.control_hz,
        "smoother": options.smoother,
        "smoother_options": dict(options.smoother_options),
        "watchdog_timeout": spec.watchdog_timeout_s,
        "safe_pose": safe_pose if options.safe_pose else None,
    }
    fields.update(options.overrides)  # a replay runs with the recorded run's settings
    return LoopConfig(**fields), safety


def assemble_loop(
    adapter: RobotAdapter,
    source: ChunkSource,
    observe: ObservationProvider,
    safety: SafetyConfig,
    options: LoopOptions,
    *,
    safe_pose: Sequence[float] | None = None,
    estop: EStop | None = None,
    recorder: LoopRecorder | None = None,
    subscribers: Sequence[LoopRecorder] = (),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ControlLoop:
    """The control loop for ``adapter``; ``clock`` / ``sleep`` default to wall time (``wall-runtime
    eval`` passes a simulated clock's, so the loop's waits advance the simulation). ``recorder`` and
    ``subscribers`` (e.g. the live ``--display`` view) are all told every chunk, request and tick,
    the recorder first."""
    cfg, safety = loop_parts(adapter.spec, safety, options, safe_pose)
    return ControlLoop(
        adapter,
        source,
        observe,
        cfg,
        safety,
        estop=estop or EStop(),
        recorder=fan_out(recorder, *subscribers),
        clock=clock,
        sleep=sleep,
    )
