"""The model edge: the one place that converts between a checkpoint's vectors and the robot's joints.

Going out (observation): measured joints → forward kinematics per arm → the checkpoint's state
vector in its ``agent_pos_config`` order (FLOW: position + Euler + gripper; 0.5: position + 6D +
gripper), plus the dof and state masks (1 where a robot part fills the slot).

Coming in (a chunk, robot units after un-normalisation): absolute EE waypoints (FLOW as they are;
0.5 composed onto the observation's pose, spec §11) → EE safety (:mod:`.ee_safety`) → inverse
kinematics once per waypoint, seeded along the chunk from the observation's joints → a residual
check → joint waypoints in robot order. A waypoint that fails drops with every later one; a chunk
with nothing valid left is no chunk (the robot keeps its plan or holds). Joint-space slots are
copied (``relative_joints``: added to the chunk-start joints, grippers and base velocities stay
absolute). Everything after this edge — scheduler, smoothers, seams, the joint safety chain —
speaks the robot's joints only.

Going back (the RTC hint): joint waypoints → FK → the checkpoint's layout relative to the new
observation (the server normalises it).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from wall_runtime.action_space import rotations as rot
from wall_runtime.action_space.ee_safety import EELimits, check_ee_waypoints
from wall_runtime.action_space.layout import Layout, LayoutError, parse_layout
from wall_runtime.action_space.mapping import ArmSlot, SlotMapping
from wall_runtime.robot import JointSpec

log = logging.getLogger(__name__)


class FitError(ValueError):
    """The robot's slot mapping does not fit the checkpoint; the message names the slot."""


class ArmKinematics(Protocol):
    """What the edge needs of an arm's kinematics (``wall_runtime.kinematics.ArmKinematics``)."""

    joint_names: Sequence[str]
    position_only: bool

    def fk(self, q: np.ndarray) -> Any: ...  # -> Pose(position (3,), rotation (3, 3))

    def ik_chain(self, targets: Sequence[Any], seed: np.ndarray) -> list[Any]: ...  # -> IKResult


@dataclass(frozen=True)
class ObservationContext:
    """What a chunk is composed onto: the joints and EE poses the observation carried."""

    q: np.ndarray  # robot joints, robot order
    poses: dict[str, tuple[np.ndarray, np.ndarray]]  # arm slot -> (position, rotation)


@dataclass
class _Arm:
    slot: ArmSlot
    kin: ArmKinematics
    index: np.ndarray  # robot joint indices of kin.joint_names
    grip_index: int | None
    ik: ArmKinematics  # its own copy: IK runs on the edge's thread while FK serves observations


class ModelEdge:
    def __init__(
        self,
        joints: Sequence[JointSpec],
        mapping: SlotMapping,
        actions: Layout,
        state: Layout,
        kinematics: Mapping[str, ArmKinematics],
        limits: EELimits | None = None,
        horizon: int | None = None,
    ) -> None:
        self.joints = tuple(joints)
        self.mapping = mapping
        self.actions = actions
        self.state = state
        self.limits = limits or EELimits()
        self.horizon = horizon
        self.counts: Counter[str] = Counter()
        self.orientation_residual = 0.0  # the largest accepted IK orientation residual (rad)
        names = [j.name for j in self.joints]
        self._index = {n: i for i, n in enumerate(names)}
        self.is_velocity = np.array([j.is_velocity for j in self.joints])
        self.is_gripper = np.array([j.kind == "gripper" for j in self.joints])
        self.arms: dict[str, _Arm] = {}
        for a in mapping.arms:
            kin = kinematics[a.arm]
            idx = np.array([self._index[n] for n in kin.joint_names], dtype=int)
            grip = None if a.gripper is None else self._index[a.gripper.joint]
            ik = kin.copy() if hasattr(kin, "copy") else kin
            self.arms[a.slot] = _Arm(a, kin, idx, grip, ik)
        self._check_fit()
        self.dof_mask = self._mask(actions)
        self.state_mask = self._mask(state)
        self.is_ee = actions.is_ee

    # -- fit ----------------------------------------------------------------------------------

    def _fills(self, slot: Any) -> bool:
        """Whether a robot part fills ``slot``."""
        m = self.mapping
        if slot.kind in ("padding", "car_pose"):
            return False
        if slot.kind == "joints":
            return slot.key in m.joint_slots
        if slot.arm is not None:
            arm = self.arms.get(slot.arm)
            if arm is None:
                return False
            return arm.slot.gripper is not None if slot.kind == "gripper" else True
        return {
            "head": bool(m.head),
            "height": m.height is not None,
            "base_velocity": bool(m.base),
        }[slot.kind]

    def _mask(self, layout: Layout) -> np.ndarray:
        mask = np.zeros(layout.dim, dtype=np.float32)
        for s in layout.slots:
            if self._fills(s):
                width = 1 if s.kind == "gripper" else s.width
                if s.kind == "base_velocity":
                    for k, axis in enumerate(("vx", "vy", "vyaw")):
                        mask[s.start + k] = float(axis in self.mapping.base)
                    continue
                mask[s.start : s.start + width] = 1.0
        return mask

    def _check_fit(self) -> None:
        m = self.mapping
        for name, layout, dim in (
            ("action", self.actions, m.action_dim),
            ("state", self.state, m.state_dim),
        ):
            if dim is not None and layout.dim != dim:
                raise FitError(
                    f"model.{name}_dim: the robot is configured for {dim} but the checkpoint's "
                    f"{layout.name} has {layout.dim} dims"
                )
        for s in self.state.slots:
            if s.kind in ("ee_position_relative", "ee_rotation_6d_relative"):
                raise FitError(f"{self.state.name}.{s.key}: a relative slot in a state layout")
        for slot, arm in self.arms.items():
            where = f"model.arms.{slot}"
            if slot not in self.actions.arms() and not any(
                s.arm == slot and s.kind == "joints" for s in self.actions.slots
            ):
                raise FitError(f"{where}: the checkpoint has no follow_{slot}_* action slots")
            if arm.slot.gripper is not None and self.actions.find("gripper", slot) is None:
                raise FitError(f"{where}.gripper: the checkpoint has no follow_{slot}_gripper slot")
            pos, _rot_kind = self.actions.arm_convention(slot)
            if pos is not None:
                spos, _srot = self.state.arm_convention(slot)
                if spos is None and pos == "ee_position_relative":
                    raise FitError(
                        f"{where}: the checkpoint's relative follow_{slot}_* actions need the EE pose "
                        "in its state, which has no such slot"
                    )
        for key, names in m.joint_slots.items():
            found = [lay.by_key(key) for lay in (self.actions, self.state)]
            if all(s is None for s in found):
                raise FitError(f"model.joint_slots.{key}: the checkpoint has no such key")
            for s in found:
                if s is not None and s.width != len(names):
                    raise FitError(f"model.joint_slots.{key}: {len(names)} joints for a {s.width}-wide slot")
        for what, present in (("head", m.head), ("height", m.height), ("base", m.base)):
            kind = {"head": "head", "height": "height", "base": "base_velocity"}[what]
            if present and self.actions.find(kind) is None and self.state.find(kind) is None:
                raise FitError(f"model.{what}: the checkpoint has no {kind} slot")
        for s in self.actions.slots:
            if s.arm is not None and s.kind != "joints" and s.arm not in self.arms:
                log.debug("%s: no robot arm fills the checkpoint's %s slot: masked", self.actions.name, s.key)

    # -- observation --------------------------------------------------------------------------

    def context(self, q: np.ndarray) -> ObservationContext:
        q = np.asarray(q, dtype=np.float64)
        poses = {}
        for slot, arm in self.arms.items():
            pose = arm.kin.fk(q[arm.index])
            poses[slot] = (np.asarray(pose.position, dtype=np.float64), np.asarray(pose.rotation, np.float64))
        return ObservationContext(q=q.copy(), poses=poses)

    def state_vector(self, ctx: ObservationContext) -> np.ndarray:
        """The checkpoint's state vector (robot units; the server normalises), zeros where masked."""
        out = np.zeros(self.state.dim, dtype=np.float64)
        self._write(out, self.state, ctx.q, ctx.poses, None)
        return (out * self.state_mask).astype(np.float32)

    def _write(
        self,
        out: np.ndarray,
        layout: Layout,
        q: np.ndarray,
        poses: Mapping[str, tuple[np.ndarray, np.ndarray]],
        reference: ObservationContext | None,
    ) -> None:
        """One row of ``layout`` from joints ``q`` and EE ``poses`` (relative slots need ``reference``)."""
        m = self.mapping
        for s in layout.slots:
            if not self._fills(s):
                continue
            i = s.index
            if s.kind == "joints":
                vals = q[[self._index[n] for n in m.joint_slots[s.key]]]
                if m.relative_joints and reference is not None and layout is self.actions:
                    idx = [self._index[n] for n in m.joint_slots[s.key]]
                    absolute = self.is_velocity[idx] | self.is_gripper[idx]
                    vals = np.where(absolute, vals, vals - reference.q[idx])
                out[i] = vals
            elif s.kind == "gripper":
                arm = self.arms[s.arm]
                out[s.start] = arm.slot.gripper.to_model(q[arm.grip_index])
            elif s.kind in ("head", "height"):
                names = m.head if s.kind == "head" else (m.height,)
                out[i] = q[[self._index[n] for n in names]]
            elif s.kind == "base_velocity":
                for k, axis in enumerate(("vx", "vy", "vyaw")):
                    if axis in m.base:
                        out[s.start + k] = q[self._index[m.base[axis]]]
            else:
                p, r = poses[s.arm]
                if s.kind == "ee_position":
                    out[i] = p
                elif s.kind == "ee_euler":
                    out[i] = rot.matrix_to_euler(r)
                elif s.kind == "ee_rotation_6d":
                    out[i] = rot.matrix_to_6d(r)
                elif s.kind == "ee_position_relative":
                    assert reference is not None
                    out[i] = p - reference.poses[s.arm][0]
                elif s.kind == "ee_rotation_6d_relative":
                    assert reference is not None
                    out[i] = rot.matrix_to_6d(r @ reference.poses[s.arm][1].T)

    # -- chunk in -----------------------------------------------------------------------------

    def ee_waypoints(
        self, actions: np.ndarray, ctx: ObservationContext, slot: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """One arm's absolute EE waypoints ``[H, 3]``, ``[H, 3, 3]`` from a chunk (composed for 0.5)."""
        lay = self.actions
        pos_kind, rot_kind = lay.arm_convention(slot)
        p = actions[:, lay.find(pos_kind, slot).index]
        r_raw = actions[:, lay.find(rot_kind, slot).index]
        if pos_kind == "ee_position_relative":
            p0, r0 = ctx.poses[slot]
            return rot.compose_relative(p0, r0, p, r_raw)
        r = rot.euler_to_matrix(r_raw) if rot_kind == "ee_euler" else rot.sixd_to_matrix(r_raw)
        return p, r

    def to_joints(self, actions: np.ndarray, ctx: ObservationContext, dt: float) -> np.ndarray | None:
        """A chunk ``[H, D]`` (robot units) → joint waypoints ``[H', J]`` (``H' ≤ H``), or ``None``
        when no waypoint is valid. Joints no slot drives stay at the observation's values (base
        velocities at 0)."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.actions.dim:
            raise ValueError(f"chunk has shape {actions.shape}, expected (H, {self.actions.dim})")
        horizon = actions.shape[0]
        out = np.tile(np.where(self.is_velocity, 0.0, ctx.q), (horizon, 1))
        valid = horizon
        m = self.mapping
        for s in self.actions.slots:
            if not self._fills(s):
                continue
            a = actions[:, s.index]
            if s.kind == "joints":
                idx = [self._index[n] for n in m.joint_slots[s.key]]
                if m.relative_joints:
                    absolute = self.is_velocity[idx] | self.is_gripper[idx]
                    a = np.where(absolute, a, a + ctx.q[idx])
                out[:, idx] = a
            elif s.kind == "gripper":
                arm = self.arms[s.arm]
                out[:, arm.grip_index] = arm.slot.gripper.to_robot(a[:, 0])
            elif s.kind in ("head", "height"):
                names = m.head if s.kind == "head" else (m.height,)
                out[:, [self._index[n] for n in names]] = a
            elif s.kind == "base_velocity":
                for k, axis in enumerate(("vx", "vy", "vyaw")):
                    if axis in m.base:
                        out[:, self._index[m.base[axis]]] = a[:, k]
        for slot, arm in self.arms.items():
            if self.actions.arm_convention(slot)[0] is None:
                continue
            with np.errstate(invalid="ignore", over="ignore"):  # NaN / inf rows: refused just below
                p, r = self.ee_waypoints(actions, ctx, slot)
            p, r, n = check_ee_waypoints(slot, p, r, ctx.poses[slot], dt, self.limits, self.counts)
            n = min(n, valid)  # rows another arm already dropped need no IK
            n = self._solve(arm, p[:n], r[:n], ctx, out)
            valid = min(valid, n)
        # a non-finite value in a non-EE slot (gripper, head...) ends the chunk there too
        finite = np.all(np.isfinite(out), axis=1)
        if not finite.all():
            first = int(np.argmin(finite))
            if first < valid:
                self.counts["non_finite"] += valid - first
                valid = first
        if valid < horizon:
            log.warning(
                "EE edge: %d of %d waypoints dropped (%s)", horizon - valid, horizon, dict(self.counts)
            )
        return out[:valid] if valid > 0 else None

    def _solve(
        self, arm: _Arm, p: np.ndarray, r: np.ndarray, ctx: ObservationContext, out: np.ndarray
    ) -> int:
        """IK for the arm's valid waypoints, written into ``out``; returns how many passed."""
        if len(p) == 0:
            return 0
        from wall_runtime.kinematics import Pose

        lim = self.limits
        seed = ctx.q[arm.index]
        for i in range(len(p)):
            # seeded from the previous waypoint's solution (the first from the observation's joints);
            # the interpreter is yielded between waypoints so the control thread never waits for
            # the GIL through a whole chunk's IK
            res = arm.ik.ik(Pose(position=p[i], rotation=r[i]), seed)
            time.sleep(0)
            # the edge's tolerances rule (safety.ee), not the solver's convergence flag: a
            # position-only arm is judged on position, its orientation residual only reported
            pos_ok = res.position_error <= lim.position_tolerance
            ori_ok = arm.ik.position_only or res.orientation_error <= lim.orientation_tolerance
            if not (pos_ok and ori_ok and np.all(np.isfinite(res.q))):
                failed = not (np.isfinite(res.position_error) and np.isfinite(res.orientation_error))
                self.counts["ik_failed" if failed else "ik_residual"] += len(p) - i
                return i  # later waypoints were planned from this one: dropped with it
            self.orientation_residual = max(self.orientation_residual, float(res.orientation_error))
            out[i, arm.index] = res.q
            seed = res.q
        return len(p)

    # -- the RTC hint back --------------------------------------------------------------------

    def to_actions(self, joint_rows: np.ndarray, ctx: ObservationContext) -> np.ndarray:
        """Joint waypoints ``[H, J]`` → the checkpoint's action rows ``[H, D]`` (robot units),
        relative slots relative to ``ctx`` (the new observation); masked dims 0."""
        joint_rows = np.asarray(joint_rows, dtype=np.float64)
        out = np.zeros((len(joint_rows), self.actions.dim))
        for h, q in enumerate(joint_rows):
            poses = {}
            for slot, arm in self.arms.items():
                pose = arm.kin.fk(q[arm.index])
                poses[slot] = (np.asarray(pose.position, np.float64), np.asarray(pose.rotation, np.float64))
            self._write(out[h], self.actions, q, poses, ctx)
        return out * self.dof_mask


def build_edge(
    joints: Sequence[JointSpec],
    mapping: SlotMapping,
    dof_config: Mapping[str, int],
    agent_pos_config: Mapping[str, int],
    kinematics: Mapping[str, ArmKinematics],
    limits: EELimits | None = None,
    horizon: int | None = None,
) -> ModelEdge:
    """The edge for a checkpoint's layouts, or a :class:`FitError` naming the slot that does not fit."""
    missing = [a.arm for a in mapping.arms if a.arm not in kinematics]
    if missing:
        raise FitError(
            f"model.arms: arm(s) {missing} have no entry in the robot's kinematics: block "
            f"(it has {sorted(kinematics) or 'none'})"
        )
    try:
        actions = parse_layout(dof_config, "dof_config", mapping.joint_slots)
        state = parse_layout(agent_pos_config, "agent_pos_config", mapping.joint_slots)
    except LayoutError as exc:
        raise FitError(str(exc)) from None
    return ModelEdge(joints, mapping, actions, state, kinematics, limits, horizon)
