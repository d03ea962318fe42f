"""A scripted expert served as a policy: its chunks in a WALL-OSS end-effector layout.

Two tasks (``task=``): ``aloha_transfer_cube`` (both arms) and ``pick_cube`` (the project's pick
task, ``wall_runtime.sims.pick_cube``: its one arm in the left slots, FLOW only, the direct expert's
plan rebuilt from the episode's start state and the named cube's start pose).

The ALOHA expert (``wall_runtime.sims.aloha_expert``) plans from a simulator's privileged state, which
the robot side sends with each observation (``Observation.privileged``; the eval does, a real
robot never does). Each chunk is the expert's EE plan sampled at the chunk's action times
(``episode_time + i * action_period``), written in one of the checkpoint generations' layouts:

- ``variant=flow``: WALL-OSS-FLOW's absolute EE position + Euler ``[roll, pitch, yaw]`` + gripper
  per arm (spec §11; Euler wrapped to [-π, π));
- ``variant=0.5``: Wall-OSS-0.5's position and 6D rotation *relative to the observation's state*
  (``R_rel = R · R_stateᵀ``, left-multiplied back on the robot side) + absolute gripper; its
  state layout is position + 6D + gripper.

So a served expert goes through everything a served model does — transport, scheduler, smoother,
the model edge (composition, EE safety, IK), the joint safety chain, the adapter — and its success
through the runtime against its success run directly in the environment measures the runtime.
There is no network and nothing is normalised: ``actions_normalized`` is the chunk itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.action_space import rotations as rot
from wall_runtime.backends.base import Policy, PolicyMetadata
from wall_runtime.types import Observation, PolicyResult

TASKS = ("aloha_transfer_cube", "pick_cube")
# the pick task's one arm in the checkpoint's left slots (wall_runtime.sims.pick_cube.DOF_CONFIG)
PICK_SLOTS = ("follow_left_ee_cartesian_pos", "follow_left_ee_rotation", "follow_left_gripper")


def expert_layouts(variant: str, task: str = "aloha_transfer_cube") -> tuple[dict[str, int], dict[str, int]]:
    """``(dof_config, agent_pos_config)`` of the expert's chunks, both arms, left first (the pick
    task: its one arm in the left slots, FLOW only)."""
    if task == "pick_cube":
        if variant != "flow":
            raise ValueError(f"expert variant {variant!r}: the pick_cube expert writes the flow layout")
        slots = {"follow_left_ee_cartesian_pos": 3, "follow_left_ee_rotation": 3, "follow_left_gripper": 1}
        return dict(slots), dict(slots)
    dof: dict[str, int] = {}
    pos: dict[str, int] = {}
    for arm in ("left", "right"):
        f = f"follow_{arm}_"
        if variant == "flow":
            dof.update({f + "ee_cartesian_pos": 3, f + "ee_rotation": 3, f + "gripper": 1})
            pos.update({f + "ee_cartesian_pos": 3, f + "ee_rotation": 3, f + "gripper": 1})
        elif variant == "0.5":
            dof.update(
                {f + "ee_cartesian_pos_relative": 3, f + "ee_rotation_6D_relative": 6, f + "gripper": 1}
            )
            pos.update({f + "ee_cartesian_pos": 3, f + "ee_rotation_6D": 6, f + "gripper": 1})
        else:
            raise ValueError(f"expert variant {variant!r}: choose flow or 0.5")
    return dof, pos


class ScriptedExpertPolicy(Policy):
    def __init__(
        self,
        variant: str = "flow",
        task: str = "aloha_transfer_cube",
        horizon: int = 32,
        cameras: Sequence[str] = ("face_view",),
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"expert task {task!r}: known {list(TASKS)}")
        if not 1 <= int(horizon) <= 256:
            raise ValueError(f"expert horizon {horizon!r}: expected 1..256 actions")
        dof, pos = expert_layouts(variant, task)
        self.variant = variant
        self.task = task
        self.metadata = PolicyMetadata(
            model="scripted-expert",
            variant=variant,
            backend="expert",
            action_horizon=int(horizon),
            action_dim=sum(dof.values()),
            state_dim=sum(pos.values()),
            num_steps=0,
            cameras=tuple(cameras),
            dof_config=dof,
            agent_pos_config=pos,
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, **options: Any) -> ScriptedExpertPolicy:
        """``path`` is ignored (a script, no weights); options: variant, task, horizon, cameras."""
        cams = options.pop("cameras", ("face_view",))
        if isinstance(cams, str):
            cams = tuple(c for c in cams.split(",") if c)
        if "variant" in options:  # ``-o variant=0.5`` arrives as a number
            options["variant"] = str(options["variant"])
        return cls(cameras=cams, **options)

    def _pick_chunk(self, obs: Observation) -> np.ndarray:
        """The pick task: the expert's plan (from the episode's start state and the named cube's
        start pose, as the direct expert plans it) at the chunk's action times."""
        from wall_runtime.sims.pick_cube import expert_plan, sample_plan

        priv = obs.privileged
        need = ("episode_time", "action_period", "start_state", "cube_start")
        missing = [k for k in need if not priv or k not in priv]
        if missing:
            raise ValueError(
                f"the scripted expert needs the simulator's privileged state; the observation lacks {missing}"
            )
        plan = expert_plan(np.asarray(priv["start_state"]), np.asarray(priv["cube_start"]))
        dt = float(priv["action_period"][0])
        times = float(priv["episode_time"][0]) + np.arange(self.metadata.action_horizon) * dt
        rows = sample_plan(plan, times)
        rows[:, 3:6] = (rows[:, 3:6] + np.pi) % (2 * np.pi) - np.pi
        rows[:, 6] = np.clip(rows[:, 6], 0.0, 1.0)
        return rows.astype(np.float32)

    def _chunk(self, obs: Observation) -> np.ndarray:
        from wall_runtime.sims.aloha_expert import arm_targets

        if self.task == "pick_cube":
            return self._pick_chunk(obs)
        priv = obs.privileged
        need = ("episode_time", "action_period", "objects", "objects_initial", "left_base", "right_base")
        missing = [k for k in need if not priv or k not in priv]
        if missing:
            raise ValueError(
                f"the scripted expert needs the simulator's privileged state; the observation lacks {missing}"
            )
        dt = float(priv["action_period"][0])
        times = float(priv["episode_time"][0]) + np.arange(self.metadata.action_horizon) * dt
        targets = arm_targets(priv, times)
        state = np.asarray(obs.state, dtype=np.float64)
        rows = []
        for arm in ("left", "right"):
            p, r, g = targets[arm]
            g = np.clip(g, 0.0, 1.0)[:, None]
            if self.variant == "flow":
                rows.append(np.concatenate([p, rot.matrix_to_euler(r), g], axis=1))
            else:
                base = 0 if arm == "left" else 10
                p0 = state[base : base + 3]
                r0 = rot.sixd_to_matrix(state[base + 3 : base + 9])
                dp, rel6d = rot.relative_from_absolute(p0, r0, p, r)
                rows.append(np.concatenate([dp, rel6d, g], axis=1))
        return np.concatenate(rows, axis=1).astype(np.float32)

    def infer(
        self, observations: Sequence[Observation], noise: Sequence[np.ndarray | None] | None = None
    ) -> list[PolicyResult]:
        out = []
        for obs in observations:
            start = time.perf_counter()
            actions = self._chunk(obs)
            out.append(
                PolicyResult(
                    actions=actions,
                    actions_normalized=actions,
                    timing_ms={"policy_expert": (time.perf_counter() - start) * 1e3},
                )
            )
        return out
