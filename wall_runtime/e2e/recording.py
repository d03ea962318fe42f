"""Episode recordings: what a run saw and did, tick by tick, for replay and for datasets.

A recording is a folder::

    meta.json          robot, joints, control rate, loop settings, instruction, checkpoint, summary
    ticks.npz          per tick: deadline, measured joints, scheduler target, command, status
    chunks.npz         every chunk the loop received: the tick it arrived on, stamp, dt, seq, actions
    observations.npz   every observation sent: the tick, stamp, state, masks, and one image stack per view

``EpisodeRecorder`` wraps the loop's chunk source and observation provider (nothing on the
control path changes), and ``save`` writes the folder after the run from the loop's own log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.control.loop import ChunkSource, ControlLoop, ObservationProvider
from wall_runtime.types import ActionChunk, Observation, RobotState

FORMAT_VERSION = 1


class _RecordingSource:
    def __init__(self, inner: ChunkSource, recorder: EpisodeRecorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def request(self, observation: Observation) -> None:
        self.inner.request(observation)

    def poll(self) -> ActionChunk | None:
        chunk = self.inner.poll()
        if chunk is not None:
            self.recorder.chunks.append((self.recorder.tick(), chunk))
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class EpisodeRecorder:
    def __init__(self, record_images: bool = True) -> None:
        self.record_images = record_images
        self.chunks: list[tuple[int, ActionChunk]] = []
        self.observations: list[tuple[int, Observation]] = []
        self._loop: ControlLoop | None = None

    def tick(self) -> int:
        """The loop's current tick (1-based, as the loop counts it)."""
        return self._loop.counters["ticks"] if self._loop is not None else 0

    def wrap_source(self, source: ChunkSource) -> ChunkSource:
        return _RecordingSource(source, self)

    def wrap_observe(self, observe: ObservationProvider) -> ObservationProvider:
        def recorded(state: RobotState, now: float) -> Observation | None:
            obs = observe(state, now)
            if obs is not None:
                self.observations.append((self.tick(), obs))
            return obs

        return recorded

    def bind(self, loop: ControlLoop) -> None:
        self._loop = loop

    def save(self, path: str | Path, loop: ControlLoop, meta: dict[str, Any]) -> Path:
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        log = loop.log
        n = len(log.deadline)
        np.savez_compressed(
            root / "ticks.npz",
            deadline=np.asarray(log.deadline, dtype=np.float64),
            time=np.asarray(log.time[:n], dtype=np.float64),
            measured=np.asarray(log.measured[:n], dtype=np.float64),
            target=np.asarray(log.target[:n], dtype=np.float64),
            commanded=np.asarray(log.commanded[:n], dtype=np.float64),
            status=np.asarray(log.status[:n], dtype="U8"),
        )
        if self.chunks:
            # joint chunks as the loop got them (float64, after the model edge); the edge may cut a
            # chunk short, so rows past each chunk's length are NaN padding
            lengths = np.array([len(c.actions) for _, c in self.chunks], dtype=np.int64)
            width = np.asarray(self.chunks[0][1].actions).shape[1]
            actions = np.full((len(self.chunks), int(lengths.max()), width), np.nan)
            for i, (_, c) in enumerate(self.chunks):
                actions[i, : lengths[i]] = np.asarray(c.actions, dtype=np.float64)
            np.savez_compressed(
                root / "chunks.npz",
                tick=np.array([t for t, _ in self.chunks], dtype=np.int64),
                stamp=np.array([c.stamp for _, c in self.chunks], dtype=np.float64),
                dt=np.array([c.dt for _, c in self.chunks], dtype=np.float64),
                seq=np.array([c.seq for _, c in self.chunks], dtype=np.int64),
                length=lengths,
                actions=actions,
            )
        if self.observations:
            arrays: dict[str, np.ndarray] = {
                "tick": np.array([t for t, _ in self.observations], dtype=np.int64),
                "stamp": np.array([o.stamp for _, o in self.observations], dtype=np.float64),
                "state": np.stack([np.asarray(o.state, dtype=np.float32) for _, o in self.observations]),
            }
            first = self.observations[0][1]
            for mask in ("state_mask", "dof_mask"):
                if getattr(first, mask) is not None:
                    arrays[mask] = np.asarray(getattr(first, mask), dtype=np.float32)
            if self.record_images:
                for view in first.images:
                    arrays[f"image.{view}"] = np.stack([o.images[view] for _, o in self.observations])
            np.savez_compressed(root / "observations.npz", **arrays)
        record = {
            "format": FORMAT_VERSION,
            "robot": loop.spec.name,
            "joints": loop.spec.joint_names,
            "control_hz": loop.config.control_hz,
            "smoother": loop.config.smoother,
            "smoother_options": loop.config.smoother_options,
            "watchdog_timeout": loop.config.watchdog_timeout,
            "max_observation_age": loop.config.max_observation_age,
            "instruction": first_instruction(self.observations),
            **meta,
        }
        (root / "meta.json").write_text(json.dumps(record, indent=2, default=_jsonable))
        return root


def first_instruction(observations: list[tuple[int, Observation]]) -> str:
    return observations[0][1].instruction if observations else ""


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


@dataclass
class Episode:
    """A recording read back."""

    root: Path
    meta: dict[str, Any]
    ticks: dict[str, np.ndarray]
    chunks: dict[str, np.ndarray]
    observations: dict[str, np.ndarray]

    @classmethod
    def load(cls, path: str | Path) -> Episode:
        root = Path(path)
        meta_path = root / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{root}: not an episode recording (no meta.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{root}: recording format {meta.get('format')!r}, expected {FORMAT_VERSION}")

        def read(name: str) -> dict[str, np.ndarray]:
            p = root / name
            if not p.exists():
                return {}
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}

        return cls(root, meta, read("ticks.npz"), read("chunks.npz"), read("observations.npz"))

    @property
    def num_ticks(self) -> int:
        return int(self.ticks["deadline"].shape[0]) if self.ticks else 0

    def chunks_by_tick(self) -> dict[int, list[ActionChunk]]:
        out: dict[int, list[ActionChunk]] = {}
        if not self.chunks:
            return out
        lengths = self.chunks.get("length")
        for i, tick in enumerate(self.chunks["tick"]):
            actions = self.chunks["actions"][i]
            if lengths is not None:
                actions = actions[: int(lengths[i])]
            out.setdefault(int(tick), []).append(
                ActionChunk(
                    actions=actions,
                    stamp=float(self.chunks["stamp"][i]),
                    dt=float(self.chunks["dt"][i]),
                    seq=int(self.chunks["seq"][i]),
                )
            )
        return out

    def observations_in_order(self) -> list[Observation]:
        obs = self.observations
        if not obs:
            return []
        views = [k.removeprefix("image.") for k in obs if k.startswith("image.")]
        return [
            Observation(
                stamp=float(obs["stamp"][i]),
                images={v: obs[f"image.{v}"][i] for v in views},
                state=obs["state"][i],
                instruction=self.meta.get("instruction", ""),
                state_mask=obs.get("state_mask"),
                dof_mask=obs.get("dof_mask"),
            )
            for i in range(len(obs["stamp"]))
        ]
