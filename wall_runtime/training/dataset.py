"""The episode dataset ``wall-runtime train`` reads: one ``.npz`` file, LeRobot-like columns.

Arrays (``N`` frames, frames of one episode consecutive and in time order):

- ``image.<view>``: uint8 ``[N, h, w, 3]`` RGB, one array per model view (e.g. ``face_view``);
- ``state``: float32 ``[N, P]``, the raw robot state in the checkpoint's ``agent_pos_config`` order
  (the real dims only, no ``action_padding``);
- ``action``: float32 ``[N, A]``, the action *at* that frame, in ``dof_config`` order (real dims);
- ``episode_index``: int64 ``[N]``; ``task_index``: int64 ``[N]`` into ``tasks``;
- ``tasks``: str ``[T]``, the instructions;
- ``meta``: one JSON string: ``{"dof_config": {...}, "agent_pos_config": {...}, "fps": ..., ...}``;
  optional ``chunk_stride`` (frames between two chunk rows, default 1).

A training sample is frame ``i``'s observation and the chunk ``action[i : i + s·H : s]`` of its
episode (``s`` = ``chunk_stride``; the rows are ``s / fps`` seconds apart, the period the checkpoint
declares), padded past the episode's end by repeating the last action (the arm holds its final
pose), as LeRobot's ``delta_timestamps`` loaders do with ``action_is_pad``.

Normalisation statistics are the per-dim 1 % / 99 % quantiles over every frame (spec §5: min = q01,
delta = q99 − q01).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# A dim that never moves in the data (q99 == q01) would divide by zero when normalised; its range is
# widened to this, centred on the value, so it normalises to 0.
MIN_DELTA = 1e-3


class DatasetError(ValueError):
    """A dataset file that is not in the documented format."""


@dataclass
class EpisodeDataset:
    images: dict[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray
    episode_index: np.ndarray
    task_index: np.ndarray
    tasks: list[str]
    meta: dict

    @property
    def num_frames(self) -> int:
        return int(self.state.shape[0])

    @property
    def num_episodes(self) -> int:
        return len(np.unique(self.episode_index))

    @property
    def dof_config(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.meta["dof_config"].items()}

    @property
    def agent_pos_config(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.meta["agent_pos_config"].items()}

    @property
    def chunk_stride(self) -> int:
        """Frames between two rows of an action chunk (``meta.chunk_stride``, default 1): a dataset
        recorded at the robot's 30 Hz control rate trains rows 0.1 s apart with stride 3."""
        return int(self.meta.get("chunk_stride", 1))

    @property
    def action_period(self) -> float | None:
        """Seconds between two chunk rows (``chunk_stride / fps``); None when ``meta.fps`` is absent."""
        fps = self.meta.get("fps")
        return None if not fps else self.chunk_stride / float(fps)

    def chunk_indices(self, horizon: int) -> np.ndarray:
        """``[N, horizon]`` frame indices of each frame's action chunk: frames ``i, i + s, i + 2s, …``
        (``s`` = :attr:`chunk_stride`), clamped to its episode's end."""
        last = np.empty(self.num_frames, np.int64)
        for ep in np.unique(self.episode_index):
            rows = np.flatnonzero(self.episode_index == ep)
            last[rows] = rows[-1]
        idx = np.arange(self.num_frames)[:, None] + self.chunk_stride * np.arange(horizon)[None, :]
        return np.minimum(idx, last[:, None])

    def start_frames(self, n: int) -> np.ndarray:
        """Indices of the first ``n`` frames of every episode."""
        first = np.r_[True, self.episode_index[1:] != self.episode_index[:-1]]
        starts = np.flatnonzero(first)
        ends = np.r_[starts[1:], self.num_frames]
        return np.concatenate([np.arange(a, min(a + n, b)) for a, b in zip(starts, ends, strict=True)])

    def stats(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """``((action q01, q99), (state q01, q99))``, float32, widened where a dim never moves."""
        return quantile_range(self.action), quantile_range(self.state)


def quantile_range(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    q01 = np.quantile(x, 0.01, axis=0)
    q99 = np.quantile(x, 0.99, axis=0)
    narrow = (q99 - q01) < MIN_DELTA
    mid = (q01 + q99) / 2
    q01 = np.where(narrow, mid - MIN_DELTA / 2, q01)
    q99 = np.where(narrow, mid + MIN_DELTA / 2, q99)
    return q01.astype(np.float32), q99.astype(np.float32)


def write_dataset(path: str | Path, ds: EpisodeDataset) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"image.{k}": np.ascontiguousarray(v, np.uint8) for k, v in ds.images.items()}
    arrays.update(
        state=np.asarray(ds.state, np.float32),
        action=np.asarray(ds.action, np.float32),
        episode_index=np.asarray(ds.episode_index, np.int64),
        task_index=np.asarray(ds.task_index, np.int64),
        tasks=np.asarray(ds.tasks, dtype=str),
        meta=np.asarray(json.dumps(ds.meta, sort_keys=True)),
    )
    np.savez_compressed(path, **arrays)
    return path


def read_dataset(path: str | Path) -> EpisodeDataset:
    """Load and check a dataset file; every problem is one ``DatasetError`` naming the array."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path} is not an .npz archive")
    with data:
        missing = [
            k for k in ("state", "action", "episode_index", "task_index", "tasks", "meta") if k not in data
        ]
        if missing:
            raise DatasetError(f"dataset {path} lacks {', '.join(missing)}")
        images = {k.removeprefix("image."): data[k] for k in data.files if k.startswith("image.")}
        try:
            meta = json.loads(str(data["meta"]))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"dataset {path}: 'meta' is not JSON ({exc})") from exc
        ds = EpisodeDataset(
            images=images,
            state=data["state"].astype(np.float32),
            action=data["action"].astype(np.float32),
            episode_index=data["episode_index"].astype(np.int64),
            task_index=data["task_index"].astype(np.int64),
            tasks=[str(t) for t in data["tasks"]],
            meta=meta,
        )
    check_dataset(ds, str(path))
    return ds


def check_dataset(ds: EpisodeDataset, where: str = "dataset") -> None:
    n = ds.num_frames
    if n == 0:
        raise DatasetError(f"{where}: no frames")
    if not ds.images:
        raise DatasetError(f"{where}: no 'image.<view>' array")
    for name, img in ds.images.items():
        if img.dtype != np.uint8 or img.ndim != 4 or img.shape[0] != n or img.shape[3] != 3:
            raise DatasetError(
                f"{where}: image.{name} must be uint8 [{n}, h, w, 3], got {img.dtype} {img.shape}"
            )
    for name in ("dof_config", "agent_pos_config"):
        if not isinstance(ds.meta.get(name), dict):
            raise DatasetError(f"{where}: meta.{name} is missing")
    real_a = sum(v for k, v in ds.dof_config.items() if k != "action_padding")
    real_s = sum(v for k, v in ds.agent_pos_config.items() if k != "action_padding")
    if ds.action.shape != (n, real_a):
        raise DatasetError(f"{where}: action must be [{n}, {real_a}] (dof_config), got {ds.action.shape}")
    if ds.state.shape != (n, real_s):
        raise DatasetError(f"{where}: state must be [{n}, {real_s}] (agent_pos_config), got {ds.state.shape}")
    for name, arr in (("episode_index", ds.episode_index), ("task_index", ds.task_index)):
        if arr.shape != (n,):
            raise DatasetError(f"{where}: {name} must be [{n}], got {arr.shape}")
    if not np.isfinite(ds.state).all() or not np.isfinite(ds.action).all():
        raise DatasetError(f"{where}: state or action holds NaN or infinity")
    if ds.task_index.min() < 0 or ds.task_index.max() >= len(ds.tasks):
        raise DatasetError(f"{where}: task_index out of range of tasks ({len(ds.tasks)})")
    stride = ds.meta.get("chunk_stride", 1)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise DatasetError(f"{where}: meta.chunk_stride must be an integer >= 1, got {stride!r}")
    fps = ds.meta.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int | float) or not fps > 0):
        raise DatasetError(f"{where}: meta.fps must be a positive number, got {fps!r}")
    if np.any(np.diff(ds.episode_index) < 0):
        raise DatasetError(f"{where}: episode_index must be non-decreasing (episodes stored consecutively)")
