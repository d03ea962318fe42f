"""One arm's forward and inverse kinematics on its reduced MuJoCo model, IK by mink.

FK is MuJoCo's own ``mj_kinematics`` on the chain model, expressed in the arm's base frame:
``T_base_tool = (T_world_base · base_offset)⁻¹ · T_world_tool · tool_offset``.

IK is mink's differential IK iterated to convergence (a Gauss-Newton / Levenberg-Marquardt loop
with step ``dt = 1``): each iteration solves one small QP

    min_dq  Σ_tasks ‖W (J dq + e)‖² + λ‖dq‖²   s.t.  q + dq within the joint limits, |dq| ≤ 0.5

with a frame task on the tool (position cost 1, orientation cost 1, or ``orientation_weight`` for
position-only arms), a posture task pulling towards the seed (``posture_weight``, small: it picks
the solution branch near the measured joints without biasing a reachable solution beyond
tolerance), Levenberg-Marquardt damping on the frame task, mink's configuration limit (the
intersection of the model's ranges and robot.yaml's joint_limits) and a per-iteration step cap,
solved by DAQP. It stops at half the tolerances, or when the error stops shrinking (an unreachable
target costs ~1-2 ms, not the iteration budget); a near miss is retried from a few starts around
the seed. Five-DoF arms get position priority: a small orientation weight first, then, once that
has settled, a few pure-position iterations so the position meets its tolerance whatever
orientation the target asked for; the orientation residual is reported, not hidden.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from wall_runtime.kinematics.config import ArmKinematicsConfig, KinematicsConfigError, parse_arm_block
from wall_runtime.kinematics.model import build_chain_model, chain_dofs_between, frame_pose

MAX_ITERATIONS = 40
# Iterate until the errors are below this fraction of the tolerances: a margin, so a converged
# solution is never within a rounding error of failing.
CONVERGED = 0.5
NO_PROGRESS_ITERATIONS = 6  # stop when the error has not shrunk by 1% for this many iterations
POSITION_POLISH_ITERATIONS = 20
MAX_STEP_RAD = 0.5  # per joint per iteration (slide joints: metres)
# A solve that stalls short of the tolerance (a joint limit or a near-singular stretch in the way)
# is retried from other starts near the seed. Rare (well under 1% of random poses), so it costs the
# tail, not the median. Only near misses are retried: a target further than RESTART_WITHIN_M is
# taken as unreachable, and retrying it would only cost time.
RESTARTS = 4
RESTART_SPREAD_RAD = 0.4
RESTART_WITHIN_M = 0.25
LM_DAMPING = 1e-3
SOLVER = "daqp"


@dataclass(frozen=True)
class Pose:
    """An EE pose in the arm's base frame."""

    position: np.ndarray  # (3,) metres
    rotation: np.ndarray  # (3, 3) rotation matrix

    def matrix(self) -> np.ndarray:
        """The 4x4 homogeneous transform."""
        T = np.eye(4)
        T[:3, :3] = self.rotation
        T[:3, 3] = self.position
        return T

    @staticmethod
    def from_matrix(T: np.ndarray) -> Pose:
        T = np.asarray(T, dtype=np.float64)
        return Pose(position=T[:3, 3].copy(), rotation=T[:3, :3].copy())


@dataclass(frozen=True)
class IKResult:
    q: np.ndarray  # arm joint positions, in ArmKinematics.joint_names order
    position_error: float  # metres
    orientation_error: float  # radians
    ok: bool  # within the arm's tolerances (position only, for position-only arms)
    iterations: int = field(default=0, compare=False)


def rotation_angle(Ra: np.ndarray, Rb: np.ndarray) -> float:
    """The angle of Ra⁻¹·Rb (radians, in [0, π]); atan2 of sine and cosine keeps small angles
    exact (acos of the trace alone loses them to rounding below ~1e-8 rad)."""
    R = Ra.T @ Rb
    s = 0.5 * math.sqrt((R[2, 1] - R[1, 2]) ** 2 + (R[0, 2] - R[2, 0]) ** 2 + (R[1, 0] - R[0, 1]) ** 2)
    c = 0.5 * (R[0, 0] + R[1, 1] + R[2, 2] - 1.0)
    return float(math.atan2(s, c))


def _is_rotation(R: np.ndarray, tol: float = 1e-6) -> bool:
    """Orthonormal and right-handed (an unnormalised or reflected matrix is not an orientation)."""
    return bool(np.max(np.abs(R.T @ R - np.eye(3))) <= tol and np.linalg.det(R) > 0)


def _inv(T: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    R = T[:3, :3]
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


class ArmKinematics:
    """FK and IK of one arm's chain. Not thread-safe (one MjData per instance): give each thread
    its own via :meth:`copy`."""

    def __init__(self, cfg: ArmKinematicsConfig, model, model_path: Path) -> None:
        import mink
        import mujoco
        import qpsolvers

        self._mj = mujoco
        self._qpsolvers = qpsolvers
        self._mink = mink
        self.config = cfg
        self.name = cfg.name
        self.model = model
        self.model_path = model_path
        self.joint_names: tuple[str, ...] = cfg.joints
        self.position_only: bool = cfg.position_only
        self.position_tolerance = cfg.position_tolerance
        self.orientation_tolerance = cfg.orientation_tolerance
        self.lower = model.jnt_range[:, 0].copy() if model.njnt else np.zeros(0)
        self.upper = model.jnt_range[:, 1].copy() if model.njnt else np.zeros(0)
        unlimited = ~model.jnt_limited.astype(bool)
        self.lower[unlimited] = -np.inf
        self.upper[unlimited] = np.inf

        obj = {"body": mujoco.mjtObj.mjOBJ_BODY, "site": mujoco.mjtObj.mjOBJ_SITE}
        self._base_id = mujoco.mj_name2id(model, obj[cfg.base.kind], cfg.base.name)
        self._tool_id = mujoco.mj_name2id(model, obj[cfg.tool.kind], cfg.tool.name)
        base_body = self._base_id if cfg.base.kind == "body" else model.site_bodyid[self._base_id]
        tool_body = self._tool_id if cfg.tool.kind == "body" else model.site_bodyid[self._tool_id]
        on_path = sorted(chain_dofs_between(model, base_body, tool_body))
        if on_path != list(range(model.njnt)):
            raise KinematicsConfigError(
                f"{cfg.where}.joints: the chain's joints must be exactly those between base "
                f"{cfg.base.name!r} and tool {cfg.tool.name!r} in {model_path.name}"
            )

        self._data = mujoco.MjData(model)
        mujoco.mj_kinematics(model, self._data)
        p, R = frame_pose(model, self._data, cfg.base.kind, self._base_id)
        T_world_base = np.eye(4)
        T_world_base[:3, :3], T_world_base[:3, 3] = R, p
        self._T_world_base = T_world_base @ cfg.base_offset  # fixed: no chain joint moves the base
        self._T_base_world = _inv(self._T_world_base)
        self._tool_offset = cfg.tool_offset
        self._tool_offset_inv = _inv(cfg.tool_offset)

        # mink's IK state: configuration, tasks, limits (built once, retargeted per waypoint).
        self._configuration = mink.Configuration(model)
        self._frame_task = mink.FrameTask(
            frame_name=cfg.tool.name,
            frame_type=cfg.tool.kind,
            position_cost=1.0,
            orientation_cost=cfg.orientation_weight,
            lm_damping=LM_DAMPING,
        )
        self._posture_task = mink.PostureTask(model, cost=cfg.posture_weight)
        self._tasks = [self._frame_task, self._posture_task] if cfg.posture_weight > 0 else [self._frame_task]
        # Joint limits as hard QP constraints, and a cap on each iteration's step: near a
        # singularity (a UR's wrist at wrist_2 = 0 or pi) an undamped Gauss-Newton step can throw
        # the arm into another branch metres away; capped steps stay on the seed's branch.
        self._limits = [mink.ConfigurationLimit(model, gain=1.0)] if model.jnt_limited.any() else []
        self._limits.append(
            mink.VelocityLimit(model, {model.joint(i).name: MAX_STEP_RAD for i in range(model.njnt)})
        )

    def copy(self) -> ArmKinematics:
        """An independent instance on the same model (for another thread)."""
        return ArmKinematics(self.config, self.model, self.model_path)

    @property
    def dof(self) -> int:
        return len(self.joint_names)

    # -- forward kinematics -------------------------------------------------------------------------
    def _check_q(self, q: np.ndarray, what: str) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (self.dof,):
            raise ValueError(f"{self.name}: {what} has shape {q.shape}, expected ({self.dof},)")
        if not np.all(np.isfinite(q)):
            raise ValueError(f"{self.name}: {what} is not finite: {q}")
        return q

    def _world_tool(self, data) -> np.ndarray:
        p, R = frame_pose(self.model, data, self.config.tool.kind, self._tool_id)
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, p
        return T

    def fk(self, q: np.ndarray) -> Pose:
        """The tool pose in the base frame for joint positions ``q`` (joint_names order)."""
        q = self._check_q(q, "q")
        self._data.qpos[:] = q
        self._mj.mj_kinematics(self.model, self._data)
        return Pose.from_matrix(self._T_base_world @ self._world_tool(self._data) @ self._tool_offset)

    # -- inverse kinematics -------------------------------------------------------------------------
    def _errors(self, T_site_target: np.ndarray) -> tuple[float, float]:
        """Position (m) and orientation (rad) error of the tool frame (after tool_offset) against
        the target, read from the configuration's MjData (updated by every integration step)."""
        p, R = frame_pose(self.model, self._configuration.data, self.config.tool.kind, self._tool_id)
        off = self._tool_offset
        tgt = T_site_target
        cur_p = p + R @ off[:3, 3]
        tgt_p = tgt[:3, 3] + tgt[:3, :3] @ off[:3, 3]
        # the tool offset's rotation cancels in the relative rotation: (R Ro)^T (Rt Ro) ~ R^T Rt
        return float(np.linalg.norm(cur_p - tgt_p)), rotation_angle(R, tgt[:3, :3])

    def _within(self, pos_err: float, ori_err: float) -> bool:
        if pos_err > self.position_tolerance:
            return False
        return self.position_only or ori_err <= self.orientation_tolerance

    def _iterate(self, T_site_target: np.ndarray, max_iter: int) -> tuple[float, float, int]:
        mink = self._mink
        qpsolvers = self._qpsolvers
        cfg = self._configuration
        pos_err, ori_err = self._errors(T_site_target)
        it = 0
        best, since_best = math.inf, 0
        while it < max_iter and not (
            pos_err <= CONVERGED * self.position_tolerance
            and (self.position_only or ori_err <= CONVERGED * self.orientation_tolerance)
        ):
            # build_ik + DAQP directly: mink.solve_ik would also re-check the limits each call.
            problem = mink.build_ik(cfg, self._tasks, 1.0, damping=1e-9, limits=self._limits)
            sol = qpsolvers.solve_problem(problem, solver=SOLVER)
            if not sol.found:  # infeasible QP (should not happen with box limits): stop here
                break
            dq = sol.x
            cfg.integrate_inplace(dq, 1.0)
            it += 1
            pos_err, ori_err = self._errors(T_site_target)
            if float(np.max(np.abs(dq))) < 1e-7:  # stalled: at a limit or at the weighted optimum
                break
            # Unreachable targets: stop once the error stops shrinking instead of spending
            # the whole iteration budget.
            err = pos_err + (0.0 if self.position_only else 0.1 * ori_err)
            if err < 0.99 * best:
                best, since_best = err, 0
            else:
                since_best += 1
                if since_best >= NO_PROGRESS_ITERATIONS:
                    break
        return pos_err, ori_err, it

    def ik(self, target: Pose, seed: np.ndarray) -> IKResult:
        """Joint positions whose FK is ``target`` (base frame), starting from ``seed`` (the measured
        joints, or the previous waypoint's solution). Never raises for an unreachable target: the
        result says how far it got and ``ok`` is False. A target that is not a pose (non-finite,
        or a rotation that is not orthonormal and right-handed) returns the seed, ``ok`` False and
        infinite errors. Raises ValueError only for a seed of the wrong shape or not finite."""
        mink = self._mink
        seed = self._check_q(seed, "seed")
        seed = np.clip(seed, self.lower, self.upper)
        pos = np.asarray(target.position, dtype=np.float64).reshape(3)
        rot = np.asarray(target.rotation, dtype=np.float64).reshape(3, 3)
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(rot))) or not _is_rotation(rot):
            # Not a pose: nothing to solve; the seed comes back, marked failed.
            return IKResult(q=seed.copy(), position_error=math.inf, orientation_error=math.inf, ok=False)
        T_target = np.eye(4)
        T_target[:3, :3], T_target[:3, 3] = rot, pos
        # The model frame (site/body) the task drives: world <- base, then undo the tool offset.
        T_site_target = self._T_world_base @ T_target @ self._tool_offset_inv
        self._frame_task.set_target(mink.SE3.from_matrix(T_site_target))
        self._posture_task.set_target(seed)

        best = self._solve_from(seed, T_site_target)
        total = best.iterations
        if not best.ok and best.position_error < RESTART_WITHIN_M:
            for start in self._restarts(seed):
                res = self._solve_from(start, T_site_target)
                total += res.iterations
                if (res.ok, -res.position_error) > (best.ok, -best.position_error):
                    best = res
                if best.ok:
                    break
        return replace(best, iterations=total)

    def _restarts(self, seed: np.ndarray):
        """Other starts for a near miss: the seed shaken (a limit or a singular stretch between
        the seed and the answer is usually passed by starting elsewhere nearby), then halfway to
        the middle of the range. Deterministic, so a target and seed always give the same answer."""
        rng = np.random.default_rng(0)
        for _ in range(RESTARTS - 1):
            yield np.clip(seed + rng.normal(0.0, RESTART_SPREAD_RAD, seed.shape), self.lower, self.upper)
        mid = np.where(np.isfinite(self.lower + self.upper), 0.5 * (self.lower + self.upper), 0.0)
        yield 0.5 * (seed + mid)

    def _solve_from(self, start: np.ndarray, T_site_target: np.ndarray) -> IKResult:
        self._configuration.update(start)
        pos_err, ori_err, iters = self._iterate(T_site_target, MAX_ITERATIONS)
        if self.position_only and pos_err > self.position_tolerance and self.config.orientation_weight > 0:
            # Position priority: drop the orientation cost for a few iterations.
            self._frame_task.set_orientation_cost(0.0)
            try:
                pos_err, ori_err, more = self._iterate(T_site_target, POSITION_POLISH_ITERATIONS)
            finally:
                self._frame_task.set_orientation_cost(self.config.orientation_weight)
            iters += more
        return IKResult(
            q=self._configuration.q.copy(),
            position_error=pos_err,
            orientation_error=ori_err,
            ok=self._within(pos_err, ori_err),
            iterations=iters,
        )

    def ik_chain(self, targets: Sequence[Pose], seed: np.ndarray) -> list[IKResult]:
        """IK for a chunk's waypoints in order, each seeded from the previous solution (the first
        from ``seed``); a failed waypoint does not seed the next (the last good solution does)."""
        results: list[IKResult] = []
        current = self._check_q(seed, "seed")
        for target in targets:
            res = self.ik(target, current)
            results.append(res)
            if res.ok:
                current = res.q
        return results

    def __repr__(self) -> str:
        kind = "position-only " if self.position_only else ""
        return f"ArmKinematics({self.name!r}, {kind}{self.dof} joints, {self.model_path.name})"


def build_arm_kinematics(
    block: Mapping,
    robot_dir: Path,
    *,
    name: str = "arm",
    joint_limits: Mapping[str, tuple[float, float]] | None = None,
    robot_joints: Sequence[str] | None = None,
) -> ArmKinematics:
    """One arm from its robot.yaml block (``kinematics.<name>``); relative model paths resolve in
    ``robot_dir``. ``joint_limits`` (robot joint -> (lower, upper)) narrow the model's ranges."""
    cfg = block if isinstance(block, ArmKinematicsConfig) else parse_arm_block(block, name, robot_joints)
    model, path = build_chain_model(cfg, Path(robot_dir), joint_limits)
    return ArmKinematics(cfg, model, path)
