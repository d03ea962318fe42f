"""Recording the pick-cube expert into a training dataset, and evaluating a checkpoint on the task.

Recording runs the expert **directly in the simulator** (``PickCubeEnv``), not through the runtime's
server/link/scheduler: the observation and action layout is the one the runtime's EE edge feeds the
model for this arm (FLOW ``follow_left_*`` slots, base-frame EE pose, Euler, gripper 0…1), written as
the ``.npz`` episode dataset of :mod:`wall_runtime.training.dataset`.

Evaluation loads a checkpoint with the normal loader (:class:`WallOSS`) in this process and runs it
closed-loop in the same simulator: every ``execute`` control steps it infers a chunk from the current
observation and executes its first ``execute`` actions through the IK. Success is the task's own
(the named cube lifted ``LIFT_M``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wall_runtime.sims.pick_cube import (
    COLOURS,
    CONTROL_HZ,
    DOF_CONFIG,
    LIFT_M,
    VIEWS,
    PickCubeEnv,
    instruction_for,
    run_expert_episode,
)
from wall_runtime.training.dataset import EpisodeDataset, write_dataset

# held-out evaluation seeds start here; recording uses seeds below it
EVAL_SEED_START = 100_000


def record_expert_dataset(
    out: str | Path,
    episodes: int,
    *,
    seed_start: int = 0,
    image_size: int = 96,
    successful_only: bool = True,
    on_episode: Callable[[int, bool], None] | None = None,
) -> tuple[Path, dict]:
    """Record ``episodes`` expert episodes (seeds ``seed_start …``) into ``out`` (.npz).

    With ``successful_only`` a failed episode is skipped and the next seed tried, so the dataset
    holds exactly ``episodes`` successes. Returns the path and a summary (seeds, success rate).
    """
    if seed_start + 10 * episodes > EVAL_SEED_START:
        raise ValueError(f"recording seeds must stay below the evaluation seeds ({EVAL_SEED_START})")
    env = PickCubeEnv(image_size=image_size)
    tasks = [instruction_for(c) for c in COLOURS]
    images: dict[str, list[np.ndarray]] = {v: [] for v in VIEWS}
    states, actions, ep_index, task_index = [], [], [], []
    tried, kept, seed = 0, 0, seed_start
    try:
        while kept < episodes:
            ep = run_expert_episode(env, seed)
            tried += 1
            seed += 1
            if on_episode is not None:
                on_episode(tried, ep.success)
            if successful_only and not ep.success:
                continue
            for v in VIEWS:
                images[v].extend(ep.images[v])
            states.extend(ep.states)
            actions.extend(ep.actions)
            ep_index.extend([kept] * len(ep.actions))
            task_index.extend([tasks.index(ep.instruction)] * len(ep.actions))
            kept += 1
    finally:
        env.close()
    meta = {
        "dof_config": DOF_CONFIG,
        "agent_pos_config": DOF_CONFIG,
        "fps": CONTROL_HZ,
        "robot": "sim_pick",
        "task": "pick_cube",
        "seeds": [seed_start, seed],
        "recorded": "directly in the simulator (not through the runtime)",
    }
    ds = EpisodeDataset(
        images={v: np.stack(images[v]) for v in VIEWS},
        state=np.asarray(states, np.float32),
        action=np.asarray(actions, np.float32),
        episode_index=np.asarray(ep_index, np.int64),
        task_index=np.asarray(task_index, np.int64),
        tasks=tasks,
        meta=meta,
    )
    path = write_dataset(out, ds)
    return path, {
        "episodes": kept,
        "tried": tried,
        "expert_success_rate": kept / tried,
        "frames": ds.num_frames,
    }


@dataclass
class EvalEpisode:
    seed: int
    instruction: str
    success: bool
    steps_to_success: int | None
    max_lift_m: float
    infer_ms: float


def evaluate_checkpoint(
    checkpoint: str | Path,
    seeds: Sequence[int],
    *,
    execute: int = 8,
    max_steps: int = 60,
    image_size: int = 96,
    on_episode: Callable[[EvalEpisode], None] | None = None,
) -> list[EvalEpisode]:
    """Closed-loop episodes of a checkpoint in the simulator (in-process, no runtime in between)."""
    import torch

    from wall_runtime.model.pipeline import WallOSS
    from wall_runtime.types import Observation

    policy = WallOSS.from_checkpoint(checkpoint)
    views = [v for v in VIEWS if v in policy.cfg.data.cameras]
    env = PickCubeEnv(image_size=image_size)
    out = []
    try:
        for seed in seeds:
            instruction = env.reset(seed)
            gen = torch.Generator().manual_seed(seed)
            step, first, best, infer = 0, None, 0.0, []
            while step < max_steps:
                imgs = env.images()
                obs = Observation(
                    stamp=0.0, images={v: imgs[v] for v in views}, state=env.state(), instruction=instruction
                )
                t0 = time.perf_counter()
                (res,) = policy.infer([obs], generator=gen)
                infer.append((time.perf_counter() - t0) * 1e3)
                for action in res.actions[:execute, : len(env.state())]:
                    info = env.step(action)
                    best = max(best, info.lifted_m)
                    step += 1
                    if info.success and first is None:
                        first = step
                    if step >= max_steps:
                        break
            ep = EvalEpisode(seed, instruction, env.lifted() >= LIFT_M, first, best, float(np.mean(infer)))
            out.append(ep)
            if on_episode is not None:
                on_episode(ep)
    finally:
        env.close()
    return out
