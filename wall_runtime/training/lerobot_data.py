"""A LeRobotDataset v3 folder the runtime recorded, turned into the :class:`EpisodeDataset` training reads.

The recording holds the robot's own units at its control rate (``wall_runtime.recording.lerobot_v3``):
per frame the measured joints (``observation.state``), the commanded joints (``action``, NaN on ticks
where nothing was commanded) and one video frame per camera view. Training needs the checkpoint's
units: the state and action vectors are built by the runtime's own model edge
(:class:`~wall_runtime.action_space.edge.ModelEdge`, from the robot.yaml ``model:`` mapping and
``kinematics:`` block), the same code that builds the state at run time — FK → EE position + Euler
(FLOW) per arm, the gripper through its declared linear map.

- state of frame ``i``: ``edge.state_vector(edge.context(measured[i]))``;
- action of frame ``i``: ``edge.to_actions(commanded[i])`` — the EE pose FK gives for the commanded
  joints, in the FLOW action layout. A tick with nothing commanded (idle before the first chunk, hold,
  e-stop) takes the last command of its episode (the robot's setpoint stayed there), or the measured
  joints before the first command (the arm held where it was);
- chunk rows: every ``stride``-th frame, ``stride = action_period · fps`` (e.g. 0.1 s at 30 fps = 3),
  stored as ``meta.chunk_stride`` so :meth:`EpisodeDataset.chunk_indices` subsamples, and the
  trained checkpoint declares ``action_period`` (the server stamps it as each chunk's dt);
- images: the views' videos decoded once with PyAV (as replay does), kept in memory as uint8;
- instruction: the episode's task string.

Every frame is a training sample. The layout is FLOW's end-effector layout for the arms the robot's
mapping fills (``follow_<slot>_ee_cartesian_pos`` 3, ``follow_<slot>_ee_rotation`` 3,
``follow_<slot>_gripper`` 1), the same for state and action.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.training.dataset import DatasetError, EpisodeDataset, check_dataset

DEFAULT_ACTION_PERIOD = 0.1


def is_lerobot_dataset(path: str | Path) -> bool:
    return (Path(path) / "meta" / "info.json").is_file()


def flow_ee_layout(mapping: Any) -> dict[str, int]:
    """The FLOW end-effector layout (spec §11) of the arms a robot's ``model:`` mapping fills."""
    if mapping.head or mapping.height or mapping.base or mapping.joint_slots:
        raise DatasetError(
            "model: training from a recording builds the FLOW end-effector layout of the mapped arms "
            "only; this robot also maps head / height / base / joint_slots"
        )
    if not mapping.arms:
        raise DatasetError("model.arms: the robot maps no arm, so there is no end-effector layout to train")
    layout: dict[str, int] = {}
    for arm in sorted(mapping.arms, key=lambda a: a.slot):
        layout[f"follow_{arm.slot}_ee_cartesian_pos"] = 3
        layout[f"follow_{arm.slot}_ee_rotation"] = 3
        if arm.gripper is not None:
            layout[f"follow_{arm.slot}_gripper"] = 1
    return layout


def chunk_stride(action_period: float, fps: float) -> int:
    """Frames between two chunk rows; the period must be a whole number of frames."""
    if not (math.isfinite(action_period) and action_period > 0):
        raise DatasetError(f"action period must be a positive number of seconds, got {action_period!r}")
    frames = action_period * fps
    stride = round(frames)
    if stride < 1 or abs(frames - stride) > 1e-6:
        raise DatasetError(
            f"action period {action_period:g} s is not a whole number of frames at the dataset's "
            f"{fps:g} fps (use a multiple of {1 / fps:.4g} s)"
        )
    return int(stride)


def decode_video(path: Path, frames: int, shape: tuple[int, int]) -> np.ndarray:
    """All frames of one episode's video, ``[frames, h, w, 3]`` uint8 (frame ``i`` = tick ``i``)."""
    import av

    h, w = shape
    out = np.empty((frames, h, w, 3), np.uint8)
    n = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if n >= frames:
                    break
                img = frame.to_ndarray(format="rgb24")
                if img.shape != (h, w, 3):
                    raise DatasetError(f"{path}: frame {n} is {img.shape}, the dataset says {(h, w, 3)}")
                out[n] = img
                n += 1
    except (OSError, av.error.FFmpegError) as exc:
        raise DatasetError(f"{path}: cannot decode ({exc})") from exc
    if n != frames:
        raise DatasetError(f"{path}: {n} video frames for an episode of {frames} frames")
    return out


def fill_commands(commanded: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Commanded joints with the NaN ticks filled: the last command before, else the measured joints."""
    out = np.array(commanded, dtype=np.float64)
    have = np.all(np.isfinite(out), axis=1)
    last = None
    for i in range(len(out)):
        if have[i]:
            last = out[i]
        else:
            out[i] = measured[i] if last is None else last
    return out


def read_recorded_dataset(
    root: str | Path,
    robot: str | Path | Any,
    *,
    action_period: float = DEFAULT_ACTION_PERIOD,
    views: Sequence[str] | None = None,
    successful_only: bool = True,
) -> EpisodeDataset:
    """The recorded dataset at ``root`` for ``robot`` (a robot.yaml / name, or a loaded RobotConfig),
    chunk rows ``action_period`` seconds apart; every problem is one :class:`DatasetError`.

    With ``successful_only``, an episode the recording marks ``success: false`` (``wall-runtime eval
    --record`` keeps failures, marked) is left out: a demonstration that failed is not one to imitate.
    The skipped episodes are listed in ``meta["skipped_episodes"]``."""
    from wall_runtime.action_space.edge import FitError, build_edge
    from wall_runtime.adapters.config import RobotConfigError, load_robot
    from wall_runtime.kinematics import KinematicsConfigError, load_robot_kinematics
    from wall_runtime.recording import lerobot_v3 as lr

    root = Path(root)
    try:
        info = lr.read_info(root)
    except lr.DatasetError as exc:
        raise DatasetError(str(exc)) from exc
    try:
        config = robot if hasattr(robot, "mapping") else load_robot(robot)
        kinematics = load_robot_kinematics(config)
    except (RobotConfigError, KinematicsConfigError) as exc:
        raise DatasetError(f"robot: {exc}") from exc
    layout = flow_ee_layout(config.mapping)
    try:
        edge = build_edge(config.joints, config.mapping, layout, layout, kinematics, config.ee_limits)
    except FitError as exc:
        raise DatasetError(f"robot {config.name}: {exc}") from exc

    features = info.get("features") or {}
    names = (features.get("observation.state") or {}).get("names")
    joint_names = [j.name for j in config.joints]
    if list(names or []) != joint_names:
        raise DatasetError(
            f"{root}: observation.state joints {names} are not robot {config.name}'s {joint_names}"
        )
    fps = float(info["fps"])
    stride = chunk_stride(action_period, fps)
    video_views = {
        k.removeprefix(lr.IMAGE_PREFIX): tuple(int(s) for s in ft["shape"][:2])
        for k, ft in features.items()
        if k.startswith(lr.IMAGE_PREFIX) and ft.get("dtype") == "video"
    }
    wanted = sorted(video_views) if views is None else list(views)
    missing = [v for v in wanted if v not in video_views]
    if missing or not wanted:
        raise DatasetError(f"{root}: no video for view(s) {missing or 'any'} (it has {sorted(video_views)})")

    images: dict[str, list[np.ndarray]] = {v: [] for v in wanted}
    states, actions, ep_index, task_index = [], [], [], []
    tasks: list[str] = []
    skipped: list[int] = []
    for ep in range(int(info["total_episodes"])):
        try:
            rec = lr.read_episode(root, ep)
        except lr.DatasetError as exc:
            raise DatasetError(str(exc)) from exc
        if successful_only and rec.meta.get("success") is False:
            skipped.append(ep)
            continue
        measured = np.asarray(rec.frames["observation.state"], np.float64)
        if "wall.commanded" in rec.frames:
            commanded = rec.frames["wall.commanded"]  # float64, exactly what was commanded
        else:
            commanded = rec.frames["action"]
        n = len(measured)
        if n == 0:
            continue
        if not np.isfinite(measured).all():
            raise DatasetError(f"{root}: episode {ep}: observation.state holds NaN or infinity")
        commanded = fill_commands(commanded, measured)
        for q, cmd in zip(measured, commanded, strict=True):
            ctx = edge.context(q)
            states.append(edge.state_vector(ctx))
            actions.append(edge.to_actions(cmd[None], ctx)[0])
        task = str(rec.meta.get("task", ""))
        if task not in tasks:
            tasks.append(task)
        ep_index.extend([ep] * n)
        task_index.extend([tasks.index(task)] * n)
        for v in wanted:
            path = root / lr.VIDEO_PATH.format(video_key=lr.IMAGE_PREFIX + v, **lr._chunk_file(ep))
            images[v].append(decode_video(path, n, video_views[v]))
    if not states:
        raise DatasetError(f"{root}: no frames")
    meta = {
        "dof_config": layout,
        "agent_pos_config": layout,
        "fps": int(fps) if fps.is_integer() else fps,
        "chunk_stride": stride,
        "action_period": action_period,
        "robot": config.name,
        "source": f"LeRobotDataset v3 recorded by the runtime: {root}",
        "skipped_episodes": skipped,
    }
    ds = EpisodeDataset(
        images={v: np.concatenate(images[v]) for v in wanted},
        state=np.asarray(states, np.float32),
        action=np.asarray(actions, np.float32),
        episode_index=np.asarray(ep_index, np.int64),
        task_index=np.asarray(task_index, np.int64),
        tasks=tasks,
        meta=meta,
    )
    check_dataset(ds, str(root))
    return ds
