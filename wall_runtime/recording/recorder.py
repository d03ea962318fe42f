"""The control loop's recorder: one episode into a LeRobot v3 dataset, written as the run goes."""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.recording.lerobot_v3 import DatasetError, DatasetLayout, EpisodeWriter, dataset_fps
from wall_runtime.recording.subscriber import TickRecord
from wall_runtime.types import ActionChunk, Observation

log = logging.getLogger(__name__)


class LeRobotRecorder:
    """The control loop's recorder: one episode into a LeRobot v3 dataset folder.

    ``images`` returns the newest image per view without blocking (or ``None`` when the cameras
    have nothing yet); without it, each frame shows the latest observation sent to the policy.
    Ticks before every view has a picture are held back and written with the first complete set;
    if none ever comes, they are left out (logged)."""

    def __init__(
        self,
        root: str | Path,
        layout: DatasetLayout,
        task: str,
        meta: Mapping[str, Any] | None = None,
        images: Callable[[], Mapping[str, np.ndarray] | None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.layout = layout
        self.task = task
        self.meta = dict(meta or {})
        self.images = images
        self._queue: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._chunks_this_tick: dict[int, int] = Counter()
        self._obs_stamp: dict[int, float] = {}
        self._latest: dict[str, np.ndarray] = {}
        self.error: BaseException | None = None
        self.episode_index: int | None = None
        self.frames = 0
        self._writer: EpisodeWriter | None = None
        self._thread = threading.Thread(target=self._work, name="lerobot-recorder", daemon=True)
        self._thread.start()

    # -- called on the control thread: return at once --

    def on_chunk(self, tick: int, chunk: ActionChunk) -> None:
        self._chunks_this_tick[tick] += 1
        self._queue.put(("chunk", (tick, chunk)))

    def on_request(self, tick: int, observation: Observation) -> None:
        self._obs_stamp[tick] = float(observation.stamp)
        if self.images is None and observation.images:
            self._latest = dict(observation.images)

    def on_tick(self, record: TickRecord) -> None:
        if self.images is not None:
            try:
                fresh = self.images()
            except Exception as exc:  # a camera hiccup must not stop the loop
                log.debug("recorder: no images this tick: %s", exc)
                fresh = None
            if fresh:
                self._latest = {**self._latest, **fresh}
        rec = TickRecord(
            record.tick,
            record.deadline,
            record.measured.copy(),
            record.target.copy(),
            record.commanded.copy(),
            record.status,
            record.interventions,
            None if record.measured_velocity is None else record.measured_velocity.copy(),
        )
        extra = (self._chunks_this_tick.pop(record.tick, 0), self._obs_stamp.pop(record.tick, math.nan))
        self._queue.put(("tick", (rec, extra, dict(self._latest))))

    # -- the writer thread --

    def _work(self) -> None:
        backlog: list[tuple[TickRecord, tuple[int, float]]] = []
        while True:
            item = self._queue.get()
            if item is None:
                break
            if self.error is not None:
                continue  # keep draining, so the loop never blocks on a dead writer
            kind, payload = item
            try:
                if kind == "chunk":
                    self._ensure_writer().add_chunk(*payload)
                    continue
                rec, extra, images = payload
                views = set(self.layout.views)
                if views and not views <= set(images):
                    backlog.append((rec, extra))  # no picture yet for some view
                    continue
                writer = self._ensure_writer()
                for old, old_extra in backlog:  # the ticks before the first picture show it
                    writer.add_frame(old, *old_extra, images)
                backlog = []
                writer.add_frame(rec, *extra, images)
            except BaseException as exc:
                self.error = exc
                log.error("recording stopped: %s", exc)
        if self.error is None and backlog:
            log.warning("recorder: %d ticks had no camera image; not recorded", len(backlog))

    def _ensure_writer(self) -> EpisodeWriter:
        if self._writer is None:
            self._writer = EpisodeWriter(self.root, self.layout, self.task, self.meta)
            self.episode_index = self._writer.episode_index
        return self._writer

    def close(self, extra_meta: Mapping[str, Any] | None = None) -> Path:
        """Wait for the writer to catch up and write the episode's metadata; returns the root."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise DatasetError(f"{self.root}: recording failed: {self.error}") from self.error
        writer = self._ensure_writer()
        writer.meta.update(extra_meta or {})
        self.frames = writer.frames
        return writer.finish()


def loop_settings(config: Any, robot_yaml: str | Path | None) -> dict[str, Any]:
    """What replay needs to rebuild the loop (``config``: the run's ``LoopConfig``). The chunks are
    recorded as the loop got them, in the robot's joints (after the model edge), so replay needs
    neither the checkpoint's layout nor kinematics."""
    return {
        "robot_yaml": None if robot_yaml is None else str(robot_yaml),
        "control_hz": float(config.control_hz),
        "smoother": config.smoother,
        "smoother_options": dict(config.smoother_options),
        "watchdog_timeout": float(config.watchdog_timeout),
        "max_observation_age": float(config.max_observation_age),
    }


def recording_layout(side: Any, cameras: Mapping[str, tuple[int, ...]]) -> DatasetLayout:
    """The dataset layout for a robot side (``RobotSide``) whose cameras deliver ``cameras``
    (model view -> (H, W, 3), as announced to the policy server)."""
    spec = side.adapter.spec
    return DatasetLayout(
        fps=dataset_fps(side.config.control_hz),
        joint_names=tuple(spec.joint_names),
        views={view: (int(shape[0]), int(shape[1])) for view, shape in cameras.items()},
        robot_type=side.config.name,
    )
