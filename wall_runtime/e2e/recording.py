"""Episode recordings read back for replay: a LeRobot v3 dataset episode (what ``run`` and ``demo``
record now, see :mod:`wall_runtime.recording.lerobot_v3`) or a legacy npz folder.

A legacy recording (written by earlier versions; ``wall-runtime convert-recording`` turns it into
a dataset episode) is a folder::

    meta.json          robot, joints, control rate, loop settings, instruction, checkpoint, summary
    ticks.npz          per tick: deadline, measured joints, scheduler target, command, status
    chunks.npz         every chunk the loop received: the tick it arrived on, stamp, dt, seq, actions
    observations.npz   every observation sent: the tick, stamp, state, masks, and one image stack per view

Both load into :class:`Episode`, the arrays replay needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.types import ActionChunk, Observation

FORMAT_VERSION = 1


@dataclass
class Episode:
    """A recording read back."""

    root: Path
    meta: dict[str, Any]
    ticks: dict[str, np.ndarray]
    chunks: dict[str, np.ndarray]
    observations: dict[str, np.ndarray]

    @classmethod
    def load(cls, path: str | Path, episode: int | None = None) -> Episode:
        """A dataset folder's episode ``episode`` (default: the last), or a legacy npz folder."""
        root = Path(path)
        if (root / "meta" / "info.json").exists():
            return cls.from_dataset(root, episode)
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

    @classmethod
    def from_dataset(cls, root: str | Path, episode: int | None = None) -> Episode:
        from wall_runtime.recording.lerobot_v3 import STATUS_NAMES, read_episode

        ep = read_episode(root, episode)
        f = ep.frames
        ticks = {
            "deadline": f["wall.deadline"].astype(np.float64),
            "measured": f["wall.measured"].astype(np.float64),
            # the reported velocities (NaN where none; absent in recordings made before them)
            "measured_velocity": (
                f["wall.measured_velocity"].astype(np.float64)
                if "wall.measured_velocity" in f
                else np.full(f["wall.measured"].shape, np.nan)
            ),
            "target": f["wall.target"].astype(np.float64),
            "commanded": f["wall.commanded"].astype(np.float64),
            "status": np.array([STATUS_NAMES.get(int(c), "?") for c in f["wall.status"]], dtype="U8"),
        }
        sent = np.flatnonzero(np.isfinite(f["wall.obs_stamp"]))
        observations: dict[str, np.ndarray] = {}
        if sent.size:
            observations = {
                "tick": f["frame_index"][sent].astype(np.int64) + 1,
                "stamp": f["wall.obs_stamp"][sent].astype(np.float64),
                "state": f["wall.measured"][sent].astype(
                    np.float32
                ),  # the joints then (images: in the videos)
            }
        meta = {"instruction": ep.meta.get("task", ""), **ep.meta, "episode_index": ep.index}
        return cls(Path(root), meta, ticks, dict(ep.chunks), observations)

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
