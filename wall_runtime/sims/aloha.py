"""gym-aloha's bimanual ViperX tasks as a robot the runtime drives (joint space).

The adapter drives ``dm_control.mujoco.Physics`` built from the task's own MJCF, and uses the
task's own code for everything that defines the benchmark: ``initialize_episode`` (start pose,
the cube placed by gym-aloha's ``sample_box_pose(seed)``), ``before_step`` (the joint-space action:
6 arm joints + a normalised gripper per arm, 0 closed ... 1 open) and ``get_reward`` (transfer-cube:
4 = the left gripper holds the cube off the table, which gym-aloha reports as success). Nothing
is rendered unless asked (``render``): gym-aloha's own ``AlohaEnv`` renders three 480×640 views
on every step, ~0.3 s a step on a 2-core CPU.

Two clocks (``connection.clock``):

- ``real``: the physics steps in real time on its own thread, like a servo controller;
- ``simulated``: a :class:`~wall_runtime.sims.clock.SimClock` that the control loop sleeps on;
  the physics advances only when the loop waits for its next tick, so results do not depend on
  the machine's load (``wall-runtime eval`` uses it).

The reward is evaluated after every 20 ms of physics (gym-aloha's control step), and the episode
keeps its best reward and the time it first reached the task's maximum (success).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.adapters.config import Connection, RobotConfigError
from wall_runtime.robot import RobotSpec
from wall_runtime.sims.task_robot import SimTaskRobot
from wall_runtime.types import RobotState

log = logging.getLogger(__name__)

ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
# gym-aloha's 14-dim joint-space action / observation order
JOINT_ORDER = tuple(f"{side}_{j}" for side in ("left", "right") for j in ARM_JOINTS)
TASKS = {
    "transfer_cube": ("bimanual_viperx_transfer_cube.xml", "TransferCubeTask"),
    "insertion": ("bimanual_viperx_insertion.xml", "InsertionTask"),
}
CONTROL_DT = 0.02  # gym-aloha's control step: the reward is evaluated this often


def _quat(physics: Any, body: str) -> np.ndarray:
    """A body's world pose: x, y, z, qw, qx, qy, qz."""
    return np.concatenate([physics.named.data.xpos[body], physics.named.data.xquat[body]]).astype(float)


class AlohaTask(SimTaskRobot):
    """One gym-aloha task: both ViperX arms in gym-aloha's joint order (``JOINT_ORDER``)."""

    thread_name = "aloha"

    def __init__(self, spec: RobotSpec, connection: Connection, root: Path) -> None:
        try:
            from dm_control import mujoco as dm_mujoco
            from gym_aloha import utils as aloha_utils
            from gym_aloha.constants import ASSETS_DIR
            from gym_aloha.tasks import sim as aloha_sim
        except ImportError as exc:
            raise RobotConfigError(
                f"connection: the gym-aloha task needs gym-aloha and dm-control ({exc}); "
                "install the 'tasks' extra (scripts/setup.sh does)"
            ) from None
        self._sim = aloha_sim
        self._utils = aloha_utils
        if tuple(spec.joint_names) != JOINT_ORDER:
            raise RobotConfigError(
                f"joints: a gym-aloha robot has exactly the joints {list(JOINT_ORDER)} in that order"
            )
        self.task_name = connection.str("task", "transfer_cube")
        if self.task_name not in TASKS:
            raise RobotConfigError(f"connection.task: {self.task_name!r} is not one of {sorted(TASKS)}")
        self._init_task_robot(spec, connection, time_limit_s=6.0)  # gym-aloha registers 300 steps
        xml, cls = TASKS[self.task_name]
        self.physics = dm_mujoco.Physics.from_xml_path(str(ASSETS_DIR / xml))
        self.task = getattr(aloha_sim, cls)()
        self.max_reward = int(self.task.max_reward)
        self._episode_start = 0.0
        self._next_reward_at = CONTROL_DT
        self._start_clock()

    # -- episode -------------------------------------------------------------------------------

    def reset(self, seed: int) -> None:
        """A new episode: the task's start pose with the objects placed from ``seed`` (gym-aloha's
        sampler), the physics time at 0, the reward bookkeeping cleared."""
        with self._lock:
            self.seed = int(seed)
            if self.task_name == "transfer_cube":
                self._sim.BOX_POSE[0] = self._utils.sample_box_pose(self.seed)
            else:
                self._sim.BOX_POSE[0] = np.concatenate(self._utils.sample_insertion_pose(self.seed))
            self.task.initialize_episode(self.physics)
            self.physics.forward()
            self._next_reward_at = CONTROL_DT
            self.reward = 0
            self.best_reward = 0
            self.success_time: float | None = None
            self.objects_initial = self.physics.data.qpos[16:].copy()
            self._episode_started()

    @property
    def episode_time(self) -> float:
        return float(self.physics.data.time)

    @property
    def success(self) -> bool:
        return self.success_time is not None

    def _physics_steps(self, target: float) -> None:
        """Step until the physics time reaches ``target`` (episode seconds), scoring every 20 ms."""
        dt = self.physics.model.opt.timestep
        while self.physics.data.time + 0.5 * dt <= target:
            self.physics.step()
            if self.physics.data.time + 0.5 * dt >= self._next_reward_at:
                self._next_reward_at += CONTROL_DT
                self.reward = int(self.task.get_reward(self.physics))
                self.best_reward = max(self.best_reward, self.reward)
                if self.reward >= self.max_reward and self.success_time is None:
                    self.success_time = float(self.physics.data.time)

    # -- contract ------------------------------------------------------------------------------

    def read_state(self) -> RobotState:
        self._check()
        with self._lock:
            position = np.asarray(self.task.get_qpos(self.physics), dtype=np.float64)
            velocity = np.asarray(self.task.get_qvel(self.physics), dtype=np.float64)
        return RobotState(stamp=self.now(), position=position, velocity=velocity)

    def command(self, target: np.ndarray) -> None:
        target = self.spec.validate_target(target)
        self._check()
        with self._lock:
            self.task.before_step(self.spec.clamp(target), self.physics)

    def hold(self) -> None:
        self._check()
        with self._lock:
            here = self.spec.clamp(np.asarray(self.task.get_qpos(self.physics), dtype=np.float64))
            self.task.before_step(here, self.physics)

    # -- what the eval and the scripted expert read --------------------------------------------

    def privileged_state(self) -> dict[str, list[float]]:
        """The task's state a scripted expert plans from (world frame; poses as x y z qw qx qy qz):
        the episode time, the objects now and at the episode's start, each arm's base."""
        with self._lock:
            p = self.physics
            return {
                "episode_time": [float(p.data.time)],
                "objects": [float(v) for v in p.data.qpos[16:]],
                "objects_initial": [float(v) for v in self.objects_initial],
                "left_base": [float(v) for v in _quat(p, "vx300s_left")],
                "right_base": [float(v) for v in _quat(p, "vx300s_right")],
            }

    @property
    def camera_names(self) -> tuple[str, ...]:
        """The MJCF's cameras (what a composite robot, and so ``cameras snapshot``, may render)."""
        model = self.physics.model
        return tuple(model.id2name(i, "camera") for i in range(model.ncam))

    def render(self, camera: str, width: int | None = None, height: int | None = None) -> np.ndarray:
        """One MJCF camera's view (``top``, ``angle``, ``front_close``, ``left_wrist``, ...), HxWx3 uint8."""
        with self._lock:
            return np.asarray(
                self.physics.render(height=height or 240, width=width or 320, camera_id=camera), np.uint8
            ).copy()

    def episode_result(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "success": self.success,
            "success_time_s": self.success_time,
            "best_reward": self.best_reward,
            "final_reward": self.reward,
            "max_reward": self.max_reward,
            "episode_time_s": self.episode_time,
        }
