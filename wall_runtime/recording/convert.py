"""Legacy npz episode recordings (meta.json, ticks.npz, chunks.npz, observations.npz) into episodes
of a LeRobot v3 dataset, so older runs replay and train like new ones.

The npz format kept images only for the observations sent to the policy, so each tick's frame
shows the latest of those (the first one for the ticks before it); it did not keep which safety
filters acted on which tick, so ``wall.interventions`` is 0 throughout (the run's counts are in
the summary, carried over into the episode's sidecar).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from wall_runtime.e2e.recording import Episode
from wall_runtime.recording.lerobot_v3 import DatasetError, DatasetLayout, EpisodeWriter, dataset_fps
from wall_runtime.recording.subscriber import TickRecord
from wall_runtime.types import ActionChunk


def convert_npz_episode(source: str | Path, dataset: str | Path) -> int:
    """Append the npz recording at ``source`` to the dataset at ``dataset``; returns its index."""
    source = Path(source)
    if (source / "meta" / "info.json").exists():
        raise DatasetError(f"{source}: already a LeRobot dataset")
    ep = Episode.load(source)
    meta = ep.meta
    n = ep.num_ticks
    if n == 0:
        raise DatasetError(f"{source}: no ticks recorded")
    obs = ep.observations
    view_keys = [k for k in obs if k.startswith("image.")]
    views = {k.removeprefix("image."): (int(obs[k].shape[1]), int(obs[k].shape[2])) for k in view_keys}
    layout = DatasetLayout(
        fps=dataset_fps(float(meta["control_hz"])),
        joint_names=tuple(meta["joints"]),
        views=views,
        robot_type=str(meta.get("robot", "")),
    )
    carried = {
        k: meta[k]
        for k in (
            "robot_yaml",
            "control_hz",
            "smoother",
            "smoother_options",
            "watchdog_timeout",
            "max_observation_age",
            "joint_dims",
            "summary",
            "checkpoint",
            "backend",
            "command",
        )
        if k in meta
    }
    writer = EpisodeWriter(
        dataset, layout, str(meta.get("instruction", "")), {**carried, "converted_from": str(source)}
    )
    by_tick = ep.chunks_by_tick()
    for tick in sorted(by_tick):
        for chunk in by_tick[tick]:
            writer.add_chunk(tick, chunk if isinstance(chunk, ActionChunk) else ActionChunk(**chunk))
    obs_ticks = obs["tick"].astype(int) if obs else np.zeros(0, dtype=int)
    # one dict per observation, built once: a repeated picture is the same object, encoded once
    pictures = [{v: obs[f"image.{v}"][i] for v in views} for i in range(len(obs_ticks))]
    sent = {int(t): float(s) for t, s in zip(obs_ticks, obs["stamp"], strict=True)} if obs else {}
    t = ep.ticks
    for k in range(n):
        tick = k + 1
        j = int(np.searchsorted(obs_ticks, tick, side="right")) - 1
        images = pictures[max(j, 0)] if pictures else {}
        record = TickRecord(
            tick,
            float(t["deadline"][k]),
            np.asarray(t["measured"][k], dtype=np.float64),
            np.asarray(t["target"][k], dtype=np.float64),
            np.asarray(t["commanded"][k], dtype=np.float64),
            str(t["status"][k]),
            (),
            # the reported velocities, where the recording kept them (after a gap the safety
            # chain starts from them, so replay needs them)
            np.asarray(t["measured_velocity"][k], dtype=np.float64) if "measured_velocity" in t else None,
        )
        writer.add_frame(record, len(by_tick.get(tick, [])), sent.get(tick, math.nan), images)
    writer.finish()
    return writer.episode_index
