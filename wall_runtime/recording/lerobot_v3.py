"""Episodes recorded as they run, in the LeRobotDataset v3 layout.

A dataset folder (one or many episodes; a new run appends one)::

    meta/info.json                              codebase_version v3.0, fps, features, totals, paths
    meta/stats.json                             min / max / mean / std / count per feature
    meta/tasks.parquet                          task (the instruction) -> task_index
    meta/episodes/chunk-000/file-NNN.parquet    one row per episode: length, where its rows and
                                                videos are, its tasks, its own stats
    data/chunk-000/file-NNN.parquet             one row per control tick (frame)
    videos/observation.images.<view>/chunk-000/file-NNN.mp4   one frame per tick, per camera view
    wall_runtime/episode_NNNNNN.json            the loop settings replay needs (robot.yaml,
                                                smoother, watchdog) and the summary
    wall_runtime/chunks_NNNNNN.parquet          every chunk the loop received, on its tick: joint
                                                waypoints after the model edge (float64, NaN-padded
                                                to the longest, with each chunk's length)

Each episode gets its own data, episode and video file (``file-NNN`` = episode index within its
chunk of 1000), which the v3 layout allows (LeRobot itself packs several episodes per file until
a size limit; its reader follows the indices either way). A frame is one control tick:

- ``observation.state`` (float32, measured joints), ``action`` (float32, commanded joints: NaN on
  ticks where nothing was commanded — hold, idle, e-stop), as LeRobot's own robots record them;
- ``observation.images.<view>``: the newest camera image at that tick, as video;
- ``wall.measured`` / ``wall.commanded`` / ``wall.target`` (float64, exact, for replay),
  ``wall.measured_velocity`` (float64, the velocities the robot reported, NaN where it reports
  none: after an idle gap the safety chain starts from them, so replay needs them),
  ``wall.deadline`` (the tick's deadline on the robot host's monotonic clock), ``wall.status``
  (0 ok, 1 idle, 2 hold, 3 e-stop), ``wall.interventions`` (safety filters that acted),
  ``wall.chunks`` (chunks that arrived), ``wall.obs_stamp`` (stamp of the observation sent to the
  policy on that tick, NaN if none).

``timestamp`` is ``frame_index / fps`` (LeRobot finds video frames by it); the true tick time is
``wall.deadline`` (ticks skipped after an overrun show there, not in ``timestamp``).

:class:`~wall_runtime.recording.recorder.LeRobotRecorder` is the control loop's recorder
(``ControlLoop(recorder=...)``): the loop
thread only queues rows and image references; a writer thread encodes the videos (PyAV) and
writes the parquet row groups (pyarrow) as the episode runs, and ``close()`` writes the metadata.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.recording.stats import RunningStats, merge_stats
from wall_runtime.recording.subscriber import TickRecord
from wall_runtime.recording.video import VideoStream
from wall_runtime.types import ActionChunk

log = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk folder, as LeRobot
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
SIDECAR = "wall_runtime"
STATUS_CODES = {"ok": 0, "idle": 1, "hold": 2, "estop": 3}
STATUS_NAMES = {v: k for k, v in STATUS_CODES.items()}
IMAGE_PREFIX = "observation.images."
ROWS_PER_GROUP = 256  # parquet row group: written as soon as this many ticks are in


class DatasetError(ValueError):
    """A dataset folder that is not what it claims, or a frame that does not fit it (named in the message)."""


def _chunk_file(episode_index: int) -> dict[str, int]:
    return {"chunk_index": episode_index // CHUNKS_SIZE, "file_index": episode_index % CHUNKS_SIZE}


@dataclass(frozen=True)
class DatasetLayout:
    """What every frame of the dataset holds: joints, state dims, camera views and their sizes."""

    fps: int
    joint_names: tuple[str, ...]
    views: Mapping[str, tuple[int, int]]  # view -> (height, width)
    robot_type: str = ""
    codec: str = "libx264"

    def features(self) -> dict[str, dict[str, Any]]:
        dof = len(self.joint_names)
        names = list(self.joint_names)
        feats: dict[str, dict[str, Any]] = {
            "observation.state": {"dtype": "float32", "shape": [dof], "names": names},
            "action": {"dtype": "float32", "shape": [dof], "names": names},
        }
        for view, (h, w) in self.views.items():
            feats[IMAGE_PREFIX + view] = {
                "dtype": "video",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": "h264" if self.codec == "libx264" else self.codec,
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": 3,
                    "has_audio": False,
                },
            }
        for key in ("wall.measured", "wall.measured_velocity", "wall.commanded", "wall.target"):
            feats[key] = {"dtype": "float64", "shape": [dof], "names": names}
        feats["wall.deadline"] = {"dtype": "float64", "shape": [1], "names": None}
        feats["wall.obs_stamp"] = {"dtype": "float64", "shape": [1], "names": None}
        for key in ("wall.status", "wall.interventions", "wall.chunks"):
            feats[key] = {"dtype": "int64", "shape": [1], "names": None}
        for key, dtype in (
            ("timestamp", "float32"),
            ("frame_index", "int64"),
            ("episode_index", "int64"),
            ("index", "int64"),
            ("task_index", "int64"),
        ):
            feats[key] = {"dtype": dtype, "shape": [1], "names": None}
        return feats


# -- the writer ---------------------------------------------------------------------------------


class EpisodeWriter:
    """Writes one episode into a dataset folder (created, or appended to when it exists with the
    same features and fps). ``add_frame`` and ``add_chunk`` may be called as the episode runs;
    ``finish`` writes the metadata. Not thread-safe: one thread drives it (the recorder's)."""

    def __init__(
        self,
        root: str | Path,
        layout: DatasetLayout,
        task: str,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        import pyarrow as pa

        self.root = Path(root)
        self.layout = layout
        self.features = layout.features()
        self.info = self._open_or_create()
        self.episode_index = int(self.info["total_episodes"])
        self.global_start = int(self.info["total_frames"])
        self.tasks = self._load_tasks()
        if task not in self.tasks:
            self.tasks[task] = len(self.tasks)
        self.task = task
        self.task_index = self.tasks[task]
        self.meta = dict(meta or {})
        self.image_keys = {IMAGE_PREFIX + v for v in layout.views}
        self.stats = RunningStats()
        self.frames = 0
        self.pending: list[dict[str, Any]] = []
        self.chunks: list[dict[str, Any]] = []
        self.intervention_counts: Counter[str] = Counter()
        self.videos = {
            view: VideoStream(
                self.root
                / VIDEO_PATH.format(video_key=IMAGE_PREFIX + view, **_chunk_file(self.episode_index)),
                layout.fps,
                h,
                w,
                layout.codec,
            )
            for view, (h, w) in layout.views.items()
        }
        self.schema = pa.schema(
            [(k, _arrow_type(ft)) for k, ft in self.features.items() if ft["dtype"] != "video"]
        )
        data_path = self.root / DATA_PATH.format(**_chunk_file(self.episode_index))
        data_path.parent.mkdir(parents=True, exist_ok=True)
        import pyarrow.parquet as pq

        self.data_path = data_path
        self._pq = pq.ParquetWriter(str(data_path), self.schema)
        self._image_every = max(1, layout.fps // 2)  # image stats from two frames a second

    # -- dataset-level files --

    def _open_or_create(self) -> dict[str, Any]:
        info_path = self.root / "meta" / "info.json"
        if info_path.exists():
            info = json.loads(info_path.read_text())
            if info.get("codebase_version") != CODEBASE_VERSION:
                raise DatasetError(
                    f"{info_path}: codebase_version {info.get('codebase_version')!r}, expected v3.0"
                )
            if int(info["fps"]) != self.layout.fps or _strip(info["features"]) != _strip(self.features):
                raise DatasetError(
                    f"{info_path}: this dataset's fps/features differ from this run's "
                    f"(fps {info['fps']} vs {self.layout.fps}); record into another folder"
                )
            return info
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.layout.robot_type,
            "total_episodes": 0,
            "total_frames": 0,
            "total_tasks": 0,
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            "fps": self.layout.fps,
            "splits": {},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.layout.views else None,
            "features": self.features,
        }

    def _load_tasks(self) -> dict[str, int]:
        path = self.root / "meta" / "tasks.parquet"
        if not path.exists():
            return {}
        import pyarrow.parquet as pq

        table = pq.read_table(path).to_pydict()
        index_col = next(k for k in table if k != "task_index")
        return {str(t): int(i) for t, i in zip(table[index_col], table["task_index"], strict=True)}

    # -- per frame --

    def add_frame(
        self, rec: TickRecord, chunks: int, obs_stamp: float, images: Mapping[str, np.ndarray]
    ) -> None:
        i = self.frames
        self.pending.append(
            {
                "observation.state": rec.measured.astype(np.float32),
                "action": rec.commanded.astype(np.float32),
                "wall.measured": rec.measured,
                "wall.measured_velocity": (
                    np.full(len(rec.measured), np.nan)
                    if rec.measured_velocity is None
                    or np.shape(rec.measured_velocity) != np.shape(rec.measured)
                    else np.asarray(rec.measured_velocity, dtype=np.float64)
                ),
                "wall.commanded": rec.commanded,
                "wall.target": rec.target,
                "wall.deadline": rec.deadline,
                "wall.obs_stamp": obs_stamp,
                "wall.status": STATUS_CODES.get(rec.status, -1),
                "wall.interventions": len(rec.interventions),
                "wall.chunks": chunks,
                "timestamp": i / self.layout.fps,
                "frame_index": i,
                "episode_index": self.episode_index,
                "index": self.global_start + i,
                "task_index": self.task_index,
            }
        )
        self.intervention_counts.update(rec.interventions)
        for view, stream in self.videos.items():
            image = images.get(view)
            if image is None:
                raise DatasetError(f"tick {rec.tick}: no image for view {view!r}")
            stream.add(image)
            if i % self._image_every == 0:
                self.stats.add_image(IMAGE_PREFIX + view, np.asarray(image))
        self.frames += 1
        if len(self.pending) >= ROWS_PER_GROUP:
            self._flush()

    def add_chunk(self, tick: int, chunk: ActionChunk) -> None:
        self.chunks.append(
            {
                "tick": tick,
                "stamp": float(chunk.stamp),
                "dt": float(chunk.dt),
                "seq": int(chunk.seq),
                # as the loop got it: joint waypoints after the model edge, in float64, so a
                # replay commands exactly what the run did
                "actions": np.asarray(chunk.actions, dtype=np.float64),
            }
        )

    def _flush(self) -> None:
        if not self.pending:
            return
        import pyarrow as pa

        columns = {}
        for name in self.schema.names:
            values = [row[name] for row in self.pending]
            ft = self.features[name]
            if list(ft["shape"]) != [1]:
                arr = np.stack(values).astype(ft["dtype"])
                self.stats.add(name, arr)
                columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])
            else:
                arr = np.asarray(values, dtype=ft["dtype"])
                self.stats.add(name, arr.reshape(-1, 1))
                columns[name] = pa.array(arr)
        self._pq.write_table(pa.Table.from_pydict(columns, schema=self.schema))
        self.pending = []

    # -- the end --

    def finish(self) -> Path:
        """Close the files and write the episode's metadata; returns the dataset root."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._flush()
        self._pq.close()
        for stream in self.videos.values():
            stream.close()
        if self.frames == 0:
            # nothing was recorded: leave the dataset as it was
            self.data_path.unlink(missing_ok=True)
            for stream in self.videos.values():
                stream.path.unlink(missing_ok=True)
            raise DatasetError(f"{self.root}: the episode has no frames; nothing recorded")
        ep = self.episode_index
        cf = _chunk_file(ep)
        stats = self.stats.result(self.image_keys)
        row: dict[str, Any] = {
            "episode_index": ep,
            "tasks": [self.task],
            "length": self.frames,
            "data/chunk_index": cf["chunk_index"],
            "data/file_index": cf["file_index"],
            "dataset_from_index": self.global_start,
            "dataset_to_index": self.global_start + self.frames,
        }
        duration = self.frames / self.layout.fps
        for view in self.layout.views:
            key = IMAGE_PREFIX + view
            row[f"videos/{key}/chunk_index"] = cf["chunk_index"]
            row[f"videos/{key}/file_index"] = cf["file_index"]
            row[f"videos/{key}/from_timestamp"] = 0.0
            row[f"videos/{key}/to_timestamp"] = duration
        row["meta/episodes/chunk_index"] = cf["chunk_index"]
        row["meta/episodes/file_index"] = cf["file_index"]
        for key, entry in stats.items():
            for stat, value in entry.items():
                row[f"stats/{key}/{stat}"] = np.asarray(value, dtype=np.float64).reshape(-1).tolist()
        ep_path = self.root / EPISODES_PATH.format(**cf)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([row]), ep_path)

        # sidecar: what replay needs, and every chunk
        side = self.root / SIDECAR
        side.mkdir(parents=True, exist_ok=True)
        if self.chunks:
            # the edge may cut a chunk short (its first unreachable waypoint): rows past each
            # chunk's length are NaN padding, the length column says where each chunk ends
            widths = {c["actions"].shape[1:] for c in self.chunks}
            if len(widths) == 1:
                lengths = np.array([len(c["actions"]) for c in self.chunks], dtype=np.int64)
                actions = np.full((len(self.chunks), int(lengths.max()), *next(iter(widths))), np.nan)
                for i, c in enumerate(self.chunks):
                    actions[i, : lengths[i]] = c["actions"]
                table = pa.table(
                    {
                        "tick": pa.array([c["tick"] for c in self.chunks], pa.int64()),
                        "stamp": pa.array([c["stamp"] for c in self.chunks], pa.float64()),
                        "dt": pa.array([c["dt"] for c in self.chunks], pa.float64()),
                        "seq": pa.array([c["seq"] for c in self.chunks], pa.int64()),
                        "length": pa.array(lengths, pa.int64()),
                        "actions": pa.FixedSizeListArray.from_arrays(
                            pa.array(actions.reshape(-1), pa.float64()), int(np.prod(actions.shape[1:]))
                        ),
                    }
                )
                table = table.replace_schema_metadata({"actions_shape": json.dumps(list(actions.shape[1:]))})
                pq.write_table(table, side / f"chunks_{ep:06d}.parquet")
            else:
                log.warning("chunks of different widths %s: not recorded", sorted(widths))
        record = {
            "episode_index": ep,
            "task": self.task,
            "fps": self.layout.fps,
            "joints": list(self.layout.joint_names),
            "interventions": dict(self.intervention_counts),
            **self.meta,
        }
        (side / f"episode_{ep:06d}.json").write_text(json.dumps(record, indent=2, default=_jsonable))

        # dataset-level metadata last: a crash before here leaves the earlier episodes readable
        tasks = sorted(self.tasks.items(), key=lambda kv: kv[1])
        task_table = pa.table(
            {
                "task_index": pa.array([i for _, i in tasks], pa.int64()),
                "__index_level_0__": [t for t, _ in tasks],
            }
        )
        # pandas index metadata, so pandas.read_parquet gives LeRobot its task-indexed frame
        task_table = task_table.replace_schema_metadata(
            {
                "pandas": json.dumps(
                    {
                        "index_columns": ["__index_level_0__"],
                        "column_indexes": [],
                        "columns": [
                            {
                                "name": "task_index",
                                "field_name": "task_index",
                                "pandas_type": "int64",
                                "numpy_type": "int64",
                                "metadata": None,
                            },
                            {
                                "name": None,
                                "field_name": "__index_level_0__",
                                "pandas_type": "unicode",
                                "numpy_type": "object",
                                "metadata": None,
                            },
                        ],
                        "pandas_version": "2.0.0",
                    }
                )
            }
        )
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        pq.write_table(task_table, self.root / "meta" / "tasks.parquet")
        stats_path = self.root / "meta" / "stats.json"
        total = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        stats_path.write_text(json.dumps(merge_stats(total, stats), indent=2))
        self.info["total_episodes"] = ep + 1
        self.info["total_frames"] = self.global_start + self.frames
        self.info["total_tasks"] = len(self.tasks)
        self.info["splits"] = {"train": f"0:{ep + 1}"}
        (self.root / "meta" / "info.json").write_text(json.dumps(self.info, indent=4))
        return self.root


def _arrow_type(ft: Mapping[str, Any]) -> Any:
    import pyarrow as pa

    scalar = pa.from_numpy_dtype(np.dtype(ft["dtype"]))
    shape = list(ft["shape"])
    return scalar if shape == [1] else pa.list_(scalar, int(shape[0]))


def _strip(features: Mapping[str, Any]) -> dict[str, Any]:
    """Features compared across runs: dtypes, shapes and names (lists and tuples alike)."""
    return {
        k: (v["dtype"], [int(s) for s in v["shape"]], list(v["names"]) if v.get("names") else None)
        for k, v in features.items()
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


# -- reading an episode back (for replay) -------------------------------------------------------


@dataclass
class RecordedEpisode:
    """One episode of a dataset, as replay needs it."""

    root: Path
    index: int
    meta: dict[str, Any]
    frames: dict[str, np.ndarray]
    chunks: dict[str, np.ndarray]


def read_info(root: str | Path) -> dict[str, Any]:
    path = Path(root) / "meta" / "info.json"
    if not path.exists():
        raise DatasetError(f"{root}: not a LeRobot dataset (no meta/info.json)")
    info = json.loads(path.read_text())
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise DatasetError(f"{path}: codebase_version {info.get('codebase_version')!r}, expected v3.0")
    return info


def read_episode(root: str | Path, episode: int | None = None) -> RecordedEpisode:
    """Episode ``episode`` (default: the last) of a dataset this runtime recorded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    info = read_info(root)
    total = int(info["total_episodes"])
    index = total - 1 if episode is None else int(episode)
    if not 0 <= index < total:
        raise DatasetError(f"{root}: no episode {index} (it has {total})")
    side = root / SIDECAR / f"episode_{index:06d}.json"
    if not side.exists():
        raise DatasetError(
            f"{side}: missing; episode {index} was not recorded by wall-runtime (nothing to replay)"
        )
    meta = json.loads(side.read_text())
    data = pq.read_table(root / DATA_PATH.format(**_chunk_file(index)))
    frames: dict[str, np.ndarray] = {}
    for name in data.column_names:
        col = data.column(name).combine_chunks()
        if isinstance(col.type, pa.FixedSizeListType):
            frames[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
        else:
            frames[name] = col.to_numpy(zero_copy_only=False)
    chunks: dict[str, np.ndarray] = {}
    chunk_path = root / SIDECAR / f"chunks_{index:06d}.parquet"
    if chunk_path.exists():
        table = pq.read_table(chunk_path)
        shape = json.loads(table.schema.metadata[b"actions_shape"])
        for name in ("tick", "stamp", "dt", "seq", "length"):
            if name in table.column_names:  # "length": chunks of different lengths, NaN-padded
                chunks[name] = table.column(name).to_numpy()
        flat = table.column("actions").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        chunks["actions"] = flat.reshape(len(table), *shape).astype(np.float64)
    return RecordedEpisode(root, index, meta, frames, chunks)


def dataset_fps(control_hz: float) -> int:
    """LeRobot datasets have a whole-number fps; one frame per tick needs the rate to be one."""
    fps = round(control_hz)
    if fps < 1 or abs(fps - control_hz) > 1e-9:
        raise DatasetError(
            f"control_hz {control_hz:g}: a LeRobot dataset needs a whole-number rate to record"
        )
    return int(fps)
