"""Pick up the cube the instruction names: the trained demo policy's task, in the project's own scene.

Scene: ``robots/sim_pick`` (sim_arm on its table with a red, a green and a blue cube). At reset the
three cubes are placed at random, non-overlapping spots in the arm's reach (a seeded generator) and
one colour is named: ``"pick up the red cube"``. **Success comes from the physics**: the named cube's
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

import numpy as np

COLOURS = ("red", "green", "blue")
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_pitch", "wrist_roll")
VIEWS = ("face_view", "left_wrist_view")
GRIPPER_M = 0.04  # robot gripper range: 0 … 0.04 m = model 0 … 1
LIFT_M = 0.05
CONTROL_HZ = 10
PHYSICS_DT = 0.002
GRASP_PITCH = 1.2  # rad below the horizontal
CUBE_HALF = 0.02
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
        spots: list[np.ndarray] = []
        while len(spots) < len(COLOURS):
            # in the arm's reach for the tilted grasp: 0.25 … 0.40 m from the base (at world
            # (0.12, 0, 0.40)), within ±0.55 rad of straight ahead
            r, a = rng.uniform(0.25, 0.40), rng.uniform(-0.55, 0.55)
            p = np.array([0.12 + r * math.cos(a), r * math.sin(a)])
            if all(np.linalg.norm(p - q) > 0.085 for q in spots):
                spots.append(p)
        table_z = 0.40
        for c, p in zip(COLOURS, spots, strict=True):
            adr = self.cube_adr[c]
            yaw = rng.uniform(-0.4, 0.4)
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
        cube = env.cube_base_frame(env.colour)
        yaw = math.atan2(cube[1], cube[0])
        rot = np.array([0.0, GRASP_PITCH, yaw])
        # the fingertip a little past the cube's centre along the tool axis, at its centre height
        grasp = cube + np.array([0.0, 0.0, 0.0])
        above = grasp + np.array([0.0, 0.0, self.APPROACH_M])
        lifted = grasp + np.array([0.0, 0.0, self.LIFT_TO_M])
        start = env.state()
        waypoints: list[tuple[np.ndarray, float, int]] = [  # (position, gripper, hold steps)
            (above, 1.0, 2),
            (grasp, 1.0, 2),
            (grasp, 0.0, 5),
            (lifted, 0.0, 8),
        ]
        plan: list[np.ndarray] = []
        pos = start[:3].astype(np.float64)
        step_m = self.SPEED / CONTROL_HZ
        for target, grip, hold in waypoints:
            n = max(1, math.ceil(np.linalg.norm(target - pos) / step_m))
            for k in range(1, n + 1):
                plan.append(np.concatenate([pos + (target - pos) * k / n, rot, [grip]]))
            plan.extend(np.concatenate([target, rot, [grip]]) for _ in range(hold))
            pos = target
        self.plan = plan

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
