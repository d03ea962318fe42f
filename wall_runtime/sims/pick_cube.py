"""Pick up the cube the instruction names: the trained demo policy's task, in the project's own scene.

The scene and its expert (:class:`PickCubeEnv`, :class:`ScriptedExpert`), and the same task as a
robot the runtime drives (:class:`PickCubeTask`, ``robots/pick_cube_task``; ``wall-runtime eval``).

Scene: ``robots/sim_pick`` (sim_arm on its table with a red, a green and a blue cube). At reset the
three cubes stand in three slots across the arm's reach (red, green, blue from the arm's right; each
jittered by up to 1 cm and turned by up to ±0.3 rad; a seeded generator) and one colour is named: ``"pick up the red cube"``. **Success comes from the physics**: the named cube's
centre is at least ``LIFT_M`` above its resting height (and so off the table) at the end of the
episode, or at any control step when ``stop_on_success``.

Spaces, as the runtime's end-effector edge uses them for this arm (spec §11, FLOW layout, the
``follow_left_*`` slots ``robots/sim_arm`` maps its arm onto):

- state ``[x, y, z, roll, pitch, yaw, gripper]``: the fingertip site ``ee`` in the arm's base frame
  (forward kinematics of the measured joints), Euler ``R = Rz(yaw)·Ry(pitch)·Rx(roll)``, gripper
  opening in model units ``0 = closed … 1 = open`` (robot metres / 0.04);
- action: the same 7 numbers as a target, executed through ``ArmKinematics.ik`` (seeded from the
  measured joints) to joint position targets, gripper × 0.04 m.

The scripted expert reads the privileged cube pose and moves the tool in EE space: above the cube,
down, close, lift; the grasp comes from the side facing the base, tilted ``GRASP_PITCH`` below the
horizontal (a vertical tool axis would put Euler pitch at ±π/2, its singularity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from wall_runtime.adapters.config import Connection, RobotConfigError
from wall_runtime.robot import RobotSpec
from wall_runtime.sims.task_robot import SimTaskRobot
from wall_runtime.types import RobotState

COLOURS = ("red", "green", "blue")
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_pitch", "wrist_roll")
VIEWS = ("face_view", "left_wrist_view")
GRIPPER_M = 0.04  # robot gripper range: 0 … 0.04 m = model 0 … 1
LIFT_M = 0.05
CONTROL_HZ = 10
PHYSICS_DT = 0.002
GRASP_PITCH = 1.2  # rad below the horizontal
CUBE_HALF = 0.02
SLOT_ANGLES = (-0.45, 0.0, 0.45)  # rad from straight ahead, seen from the arm's base
SLOT_RADIUS_M = 0.32
SLOT_JITTER_M = 0.01
HOME = {"shoulder": 0.0, "elbow": 0.8, "wrist_pitch": 0.6, "gripper": 0.04}

# the layout of the checkpoint this task trains (FLOW, the arm in the left slot as robots/sim_arm maps it)
DOF_CONFIG = {"follow_left_ee_cartesian_pos": 3, "follow_left_ee_rotation": 3, "follow_left_gripper": 1}


def instruction_for(colour: str) -> str:
    return f"pick up the {colour} cube"


def euler_from_matrix(r: np.ndarray) -> np.ndarray:
    """``[roll, pitch, yaw]`` of ``R = Rz(yaw)·Ry(pitch)·Rx(roll)``, each wrapped to [−π, π) (spec §11)."""
    pitch = math.asin(float(np.clip(-r[2, 0], -1.0, 1.0)))
    roll = math.atan2(r[2, 1], r[2, 2])
    yaw = math.atan2(r[1, 0], r[0, 0])
    e = np.array([roll, pitch, yaw])
    return (e + np.pi) % (2 * np.pi) - np.pi


def matrix_from_euler(e: np.ndarray) -> np.ndarray:
    roll, pitch, yaw = (float(v) for v in e)
    cr, sr, cp, sp, cy, sy = (
        math.cos(roll),
        math.sin(roll),
        math.cos(pitch),
        math.sin(pitch),
        math.cos(yaw),
        math.sin(yaw),
    )
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx


@dataclass
class StepInfo:
    success: bool
    lifted_m: float
    ik_ok: bool


@dataclass
class Episode:
    seed: int
    colour: str
    instruction: str
    images: dict[str, list[np.ndarray]] = field(default_factory=dict)
    states: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    success: bool = False
    steps_to_success: int | None = None


class PickCubeEnv:
    """The task in MuJoCo, stepped at ``CONTROL_HZ`` (physics at 500 Hz), rendered at ``image_size``."""

    def __init__(self, image_size: int = 96, render: bool = True) -> None:
        import mujoco

        from wall_runtime.kinematics import load_robot_kinematics

        self._mj = mujoco
        from wall_runtime.robot_files import resolve_robot

        robot_yaml = resolve_robot("sim_pick")  # the checkout's robots/ or the installed package's
        self.model = mujoco.MjModel.from_xml_path(str(robot_yaml.parent / "sim_pick.xml"))
        self.data = mujoco.MjData(self.model)
        self.kin = load_robot_kinematics(robot_yaml)["arm"]
        self.image_size = image_size
        self.renderer = mujoco.Renderer(self.model, image_size, image_size) if render else None
        self.qadr = np.array([self.model.jnt_qposadr[self.model.joint(j).id] for j in ARM_JOINTS])
        self.grip_adr = self.model.jnt_qposadr[self.model.joint("gripper").id]
        self.act = {a: self.model.actuator(a).id for a in (*ARM_JOINTS, "gripper")}
        self.cube_adr = {c: self.model.jnt_qposadr[self.model.joint(f"cube_{c}").id] for c in COLOURS}
        self.base_id = self.model.body("base").id
        self.substeps = round(1.0 / CONTROL_HZ / PHYSICS_DT)
        self.colour = "red"
        self.rest_z = 0.0

    # ------------------------------------------------------------------ reset / observe / act

    def reset(self, seed: int, colour: str | None = None) -> str:
        """Place the cubes, pick the named colour (from the seed unless given); returns the instruction."""
        mj = self._mj
        rng = np.random.default_rng(seed)
        mj.mj_resetData(self.model, self.data)
        for name, value in HOME.items():
            adr = self.model.jnt_qposadr[self.model.joint(name).id]
            self.data.qpos[adr] = value
            self.data.ctrl[self.act[name]] = value
        self.data.qpos[self.model.jnt_qposadr[self.model.joint("gripper_mirror").id]] = HOME["gripper"]
        # three slots across the arm's reach (0.32 m from the base at world (0.12, 0, 0.40), straight
        # ahead and ±0.45 rad to each side: 14 cm apart), one colour each (red, green, blue from the
        # arm's right), each cube jittered by up to SLOT_JITTER_M and turned: the instruction says
        # which cube, the images where exactly. (Shuffling the colours over the slots makes the
        # target an XOR of the colour word and the image, which neither input predicts alone; a
        # from-scratch model on the 2-core CPU budget stayed at chance on it: docs/training.md)
        spots = []
        for a in SLOT_ANGLES:
            jitter = rng.uniform(-SLOT_JITTER_M, SLOT_JITTER_M, size=2)
            spots.append(np.array([0.12 + SLOT_RADIUS_M * math.cos(a), SLOT_RADIUS_M * math.sin(a)]) + jitter)
        table_z = 0.40
        for c, p in zip(COLOURS, spots, strict=True):
            adr = self.cube_adr[c]
            yaw = rng.uniform(-0.3, 0.3)
            self.data.qpos[adr : adr + 3] = [p[0], p[1], table_z + CUBE_HALF]
            self.data.qpos[adr + 3 : adr + 7] = [math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)]
        self.colour = colour if colour is not None else COLOURS[int(rng.integers(len(COLOURS)))]
        mj.mj_forward(self.model, self.data)
        for _ in range(100):  # settle
            mj.mj_step(self.model, self.data)
        self.rest_z = float(self.data.qpos[self.cube_adr[self.colour] + 2])
        return instruction_for(self.colour)

    def arm_q(self) -> np.ndarray:
        return self.data.qpos[self.qadr].copy()

    def state(self) -> np.ndarray:
        pose = self.kin.fk(self.arm_q())
        grip = float(self.data.qpos[self.grip_adr]) / GRIPPER_M
        return np.concatenate([pose.position, euler_from_matrix(pose.rotation), [grip]]).astype(np.float32)

    def images(self) -> dict[str, np.ndarray]:
        if self.renderer is None:
            return {}
        out = {}
        for view in VIEWS:
            self.renderer.update_scene(self.data, camera=view)
            out[view] = self.renderer.render().copy()
        return out

    def cube_base_frame(self, colour: str) -> np.ndarray:
        """The cube's centre in the arm's base frame (privileged: the expert's input)."""
        adr = self.cube_adr[colour]
        world = self.data.qpos[adr : adr + 3]
        r = self.data.xmat[self.base_id].reshape(3, 3)
        return r.T @ (world - self.data.xpos[self.base_id])

    def lifted(self) -> float:
        return float(self.data.qpos[self.cube_adr[self.colour] + 2]) - self.rest_z

    def step(self, action: np.ndarray) -> StepInfo:
        """Execute one EE action ``[x, y, z, roll, pitch, yaw, gripper]`` for one control period."""
        from wall_runtime.kinematics import Pose

        action = np.asarray(action, np.float64)
        res = self.kin.ik(Pose(action[:3], matrix_from_euler(action[3:6])), seed=self.arm_q())
        for j, q in zip(ARM_JOINTS, res.q, strict=True):
            self.data.ctrl[self.act[j]] = q
        self.data.ctrl[self.act["gripper"]] = float(np.clip(action[6], 0.0, 1.0)) * GRIPPER_M
        for _ in range(self.substeps):
            self._mj.mj_step(self.model, self.data)
        lift = self.lifted()
        return StepInfo(success=lift >= LIFT_M, lifted_m=lift, ik_ok=bool(res.ok))

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None


def expert_plan(start: np.ndarray, cube: np.ndarray) -> np.ndarray:
    """The expert's EE plan, one ``[x, y, z, roll, pitch, yaw, gripper]`` row per control step
    (``CONTROL_HZ``), from the episode's start state and the named cube's centre (base frame):
    above the cube, down, close, lift, each leg at ``ScriptedExpert.SPEED`` then held."""
    cube = np.asarray(cube, np.float64)
    yaw = math.atan2(cube[1], cube[0])
    rot = np.array([0.0, GRASP_PITCH, yaw])
    grasp = cube.copy()  # the fingertip at the cube's centre
    above = grasp + np.array([0.0, 0.0, ScriptedExpert.APPROACH_M])
    lifted = grasp + np.array([0.0, 0.0, ScriptedExpert.LIFT_TO_M])
    waypoints: list[tuple[np.ndarray, float, int]] = [  # (position, gripper, hold steps)
        (above, 1.0, 2),
        (grasp, 1.0, 2),
        (grasp, 0.0, 5),
        (lifted, 0.0, 8),
    ]
    plan: list[np.ndarray] = []
    pos = np.asarray(start[:3], np.float64)
    step_m = ScriptedExpert.SPEED / CONTROL_HZ
    for target, grip, hold in waypoints:
        n = max(1, math.ceil(np.linalg.norm(target - pos) / step_m))
        for k in range(1, n + 1):
            plan.append(np.concatenate([pos + (target - pos) * k / n, rot, [grip]]))
        plan.extend(np.concatenate([target, rot, [grip]]) for _ in range(hold))
        pos = target
    return np.asarray(plan)


def sample_plan(plan: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The plan at episode ``times`` (s): row ``k`` is the target from ``k / CONTROL_HZ`` on (as the
    direct run commands it for the whole control step), the last row held after the plan ends."""
    idx = np.floor(np.asarray(times, np.float64) * CONTROL_HZ + 1e-6).astype(int)
    return plan[np.clip(idx, 0, len(plan) - 1)]


class ScriptedExpert:
    """EE-space waypoints from the named cube's privileged pose: above, down, close, lift, hold."""

    SPEED = 0.3  # m/s of the tool between waypoints
    APPROACH_M = 0.08
    LIFT_TO_M = 0.15

    def __init__(self, env: PickCubeEnv) -> None:
        self.env = env
        self.plan: list[np.ndarray] = []

    def reset(self) -> None:
        env = self.env
        self.plan = list(expert_plan(env.state(), env.cube_base_frame(env.colour)))

    def act(self, step: int) -> np.ndarray:
        return self.plan[min(step, len(self.plan) - 1)].astype(np.float32)

    def __len__(self) -> int:
        return len(self.plan)


def run_expert_episode(env: PickCubeEnv, seed: int, record: bool = True, extra_steps: int = 0) -> Episode:
    """One expert episode from ``seed``: observations and actions recorded at every control step."""
    instruction = env.reset(seed)
    expert = ScriptedExpert(env)
    expert.reset()
    ep = Episode(seed=seed, colour=env.colour, instruction=instruction)
    if record:
        ep.images = {v: [] for v in VIEWS}
    for step in range(len(expert) + extra_steps):
        action = expert.act(step)
        if record:
            for v, img in env.images().items():
                ep.images[v].append(img)
            ep.states.append(env.state())
            ep.actions.append(action)
        info = env.step(action)
        if info.success and ep.steps_to_success is None:
            ep.steps_to_success = step + 1
    ep.success = env.lifted() >= LIFT_M
    return ep


def run_direct_episode(env: PickCubeEnv, seed: int, time_limit_s: float) -> dict[str, Any]:
    """The expert straight into the environment, no runtime (``wall-runtime eval``'s ``direct``
    baseline): its plan row → IK → joint targets each control step until the cube is lifted or
    the time is up."""
    instruction = env.reset(seed)
    expert = ScriptedExpert(env)
    expert.reset()
    steps = round(time_limit_s * CONTROL_HZ)
    success_time = None
    for step in range(steps):
        if env.step(expert.act(step)).success:
            success_time = (step + 1) / CONTROL_HZ
            break
    return {
        "seed": seed,
        "instruction": instruction,
        "success": success_time is not None,
        "success_time_s": success_time,
    }


# ---------------------------------------------------------------------------------------- the robot


class PickCubeTask(SimTaskRobot):
    """The pick task as a robot the runtime drives (``robots/pick_cube_task``): the arm's 6 joints
    (rad) + the gripper opening (m), position-controlled by the scene's actuators.

    The scene is a :class:`PickCubeEnv` (so ``reset(seed)`` places the cubes and names the colour
    exactly as the recorded data and the in-process eval do). Clocks, connection and the dropped link
    from :class:`~wall_runtime.sims.task_robot.SimTaskRobot`.
    Success is the physics': the named cube ``LIFT_M`` above its resting height at any physics step.
    """

    JOINTS = (*ARM_JOINTS, "gripper")
    thread_name = "pick"
    # the served scripted expert for this task (``wall-runtime eval --backend expert``)
    expert_options: ClassVar[dict[str, str]] = {"task": "pick_cube", "cameras": ",".join(VIEWS)}
    video_view = ("face_view", 256, 256)  # the eval's videos of failed episodes

    def __init__(self, spec: RobotSpec, connection: Connection, root: Path) -> None:
        if tuple(spec.joint_names) != self.JOINTS:
            raise RobotConfigError(
                f"joints: the pick task has exactly the joints {list(self.JOINTS)} in that order"
            )
        self._init_task_robot(spec, connection, time_limit_s=8.0)
        self.env = PickCubeEnv(render=False)
        self._renderers: dict[tuple[int, int], Any] = {}
        self._start_clock()

    # -- episode -------------------------------------------------------------------------------

    def reset(self, seed: int) -> None:
        """A new episode: the cubes placed and the colour named from ``seed`` (``PickCubeEnv.reset``),
        the arm at home, the episode time at 0."""
        with self._lock:
            self.seed = int(seed)
            self.instruction = self.env.reset(self.seed)
            self.colour = self.env.colour
            data = self.env.data
            self._t0 = float(data.time)  # after the cubes settled
            self.start_state = self.env.state()
            self.cube_start = self.env.cube_base_frame(self.colour)
            self.success_time: float | None = None
            self.best_lift = 0.0
            self._episode_started()

    @property
    def episode_time(self) -> float:
        return float(self.env.data.time) - self._t0

    @property
    def success(self) -> bool:
        return self.success_time is not None

    def _physics_steps(self, target: float) -> None:
        """Step until the episode time reaches ``target`` s, watching the named cube's height."""
        mj, model, data = self.env._mj, self.env.model, self.env.data
        while self.episode_time + 0.5 * PHYSICS_DT <= target:
            mj.mj_step(model, data)
            lift = self.env.lifted()
            self.best_lift = max(self.best_lift, lift)
            if lift >= LIFT_M and self.success_time is None:
                self.success_time = self.episode_time

    def _on_disconnect(self) -> None:
        with self._lock:  # the offscreen contexts (made again on the next render)
            for renderer in self._renderers.values():
                renderer.close()
            self._renderers.clear()

    # -- contract --------------------------------------------------------------------------------

    def _q(self) -> tuple[np.ndarray, np.ndarray]:
        env = self.env
        adr = np.append(env.qadr, env.grip_adr)
        dof = [env.model.jnt_dofadr[env.model.joint(j).id] for j in self.JOINTS]
        return env.data.qpos[adr].astype(np.float64), env.data.qvel[dof].astype(np.float64)

    def read_state(self) -> RobotState:
        self._check()
        with self._lock:
            position, velocity = self._q()
        return RobotState(stamp=self.now(), position=position, velocity=velocity)

    def _set_ctrl(self, target: np.ndarray) -> None:
        for name, value in zip(self.JOINTS, target, strict=True):
            self.env.data.ctrl[self.env.act[name]] = float(value)

    def command(self, target: np.ndarray) -> None:
        target = self.spec.validate_target(target)
        self._check()
        with self._lock:
            self._set_ctrl(self.spec.clamp(target))

    def hold(self) -> None:
        self._check()
        with self._lock:
            self._set_ctrl(self.spec.clamp(self._q()[0]))

    def forward_kinematics(self, position: np.ndarray) -> np.ndarray | None:
        """The fingertip site in the scene frame (the joint safety chain's workspace box)."""
        env = self.env
        pose = env.kin.fk(np.asarray(position, np.float64)[:6])
        r = env.data.xmat[env.base_id].reshape(3, 3)
        return (env.data.xpos[env.base_id] + r @ pose.position)[None, :]

    # -- what the eval and the scripted expert read ----------------------------------------------

    def privileged_state(self) -> dict[str, list[float]]:
        """What the scripted expert plans from: the episode time, the EE state at the episode's
        start (``[x, y, z, roll, pitch, yaw, gripper]``, base frame) and the named cube's centre then
        (base frame), and the named cube's centre now."""
        with self._lock:
            return {
                "episode_time": [self.episode_time],
                "start_state": [float(v) for v in self.start_state],
                "cube_start": [float(v) for v in self.cube_start],
                "cube": [float(v) for v in self.env.cube_base_frame(self.colour)],
            }

    @property
    def camera_names(self) -> tuple[str, ...]:
        model = self.env.model
        return tuple(
            self.env._mj.mj_id2name(model, self.env._mj.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)
        )

    def render(self, camera: str, width: int | None = None, height: int | None = None) -> np.ndarray:
        """One MJCF camera's view (``face_view``, ``left_wrist_view``), HxWx3 uint8."""
        w, h = int(width or 96), int(height or 96)
        with self._lock:
            renderer = self._renderers.get((w, h))
            if renderer is None:
                renderer = self._renderers[(w, h)] = self.env._mj.Renderer(self.env.model, h, w)
            renderer.update_scene(self.env.data, camera=camera)
            return renderer.render().copy()

    def run_direct(self, seed: int) -> dict[str, Any]:
        """The expert straight into this scene, no runtime (the eval's ``direct`` baseline)."""
        with self._lock:
            result = run_direct_episode(self.env, seed, self.time_limit_s)
        self.reset(seed)
        return result

    def episode_result(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "instruction": self.instruction,
            "success": self.success,
            "success_time_s": self.success_time,
            "best_reward": int(self.success),
            "best_lift_m": self.best_lift,
            "episode_time_s": self.episode_time,
        }
