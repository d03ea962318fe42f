"""robot.yaml's ``model:`` block: which robot part fills which checkpoint slot, by name.

::

    model:
      norm_key: so101               # the checkpoint's normalisation statistics key
      # action_dim: 20              # optional: pin the checkpoint's vector sizes (checked)
      # state_dim: 20
      arms:
        left:                       # the checkpoint's follow_left_* slots
          arm: arm                  # an arm of the top-level `kinematics:` block
          gripper: {joint: gripper, robot: [0.0, 1.5], model: [0.0, 1.0]}
      head: [head_pan, head_tilt]   # head_actions, 2 joints
      height: lift                  # height, 1 joint
      base: {vx: base_x, vyaw: base_yaw}  # velocity_decomposed: vx, vy, vyaw (absent ones masked)
      joint_slots:                  # joint-space checkpoints: a key of theirs -> the robot's joints
        my_robot_action: [j1, j2, j3]

A gripper's ``robot`` pair is the joint's value at closed and at open, ``model`` the checkpoint's
(larger = more open, spec §11); the map between them is linear and declared, never guessed. Slots
the mapping leaves out are masked (dof and state mask 0). Whether a mapping fits a checkpoint is
checked at the handshake (:func:`wall_runtime.action_space.edge.build_edge`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wall_runtime.action_space.layout import ARMS
from wall_runtime.robot import JointSpec

BASE_AXES = ("vx", "vy", "vyaw")


class MappingError(ValueError):
    """The ``model:`` block is malformed; the message starts with the field's path."""


@dataclass(frozen=True)
class GripperMap:
    joint: str
    robot: tuple[float, float]  # joint value at (closed, open)
    model: tuple[float, float] = (0.0, 1.0)  # checkpoint value at (closed, open)

    def to_model(self, q: np.ndarray | float) -> np.ndarray:
        (r0, r1), (m0, m1) = self.robot, self.model
        return m0 + (np.asarray(q, dtype=np.float64) - r0) * (m1 - m0) / (r1 - r0)

    def to_robot(self, v: np.ndarray | float) -> np.ndarray:
        (r0, r1), (m0, m1) = self.robot, self.model
        return r0 + (np.asarray(v, dtype=np.float64) - m0) * (r1 - r0) / (m1 - m0)


@dataclass(frozen=True)
class ArmSlot:
    slot: str  # "left" / "right": the checkpoint's arm
    arm: str  # the kinematics block's arm name
    gripper: GripperMap | None = None


@dataclass(frozen=True)
class SlotMapping:
    norm_key: str
    action_dim: int | None = None  # the checkpoint's sizes, when the robot pins them (else: its own)
    state_dim: int | None = None
    arms: tuple[ArmSlot, ...] = ()
    head: tuple[str, ...] = ()
    height: str | None = None
    base: Mapping[str, str] = field(default_factory=dict)  # axis (vx/vy/vyaw) -> joint
    joint_slots: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    relative_joints: bool = False  # joint slots are deltas from the chunk-start joints

    def arm(self, slot: str) -> ArmSlot | None:
        for a in self.arms:
            if a.slot == slot:
                return a
        return None

    def joints_used(self) -> list[str]:
        """Joints the mapping names directly (arm joints come from the kinematics)."""
        out = [a.gripper.joint for a in self.arms if a.gripper is not None]
        out += list(self.head) + ([self.height] if self.height else []) + list(self.base.values())
        for names in self.joint_slots.values():
            out += list(names)
        return out


def _fail(where: str, message: str) -> MappingError:
    return MappingError(f"{where}: {message}")


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _fail(where, f"expected a finite number, got {v!r}")
    return float(v)


def _pair(v: Any, where: str) -> tuple[float, float]:
    if not isinstance(v, list) or len(v) != 2:
        raise _fail(where, f"expected [closed, open], got {v!r}")
    a, b = _number(v[0], f"{where}[0]"), _number(v[1], f"{where}[1]")
    if a == b:
        raise _fail(where, "closed and open must differ")
    return a, b


def _int(v: Any, where: str, low: int, high: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v < high:
        raise _fail(where, f"expected an integer in [{low}, {high}), got {v!r}")
    return v


def _mapping(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(where, f"expected a mapping, got {type(v).__name__}")
    return v


def _known(block: dict[str, Any], where: str, known: Sequence[str]) -> None:
    for key in block:
        if key not in known:
            raise _fail(f"{where}.{key}", f"unknown field (known: {', '.join(known)})")


def parse_slot_mapping(raw: Any, joints: Sequence[JointSpec], relative_joints: bool = False) -> SlotMapping:
    """The ``model:`` block, checked against the robot's joints (the arms against the kinematics
    later, at the handshake, where the checkpoint's layout is known)."""
    doc = _mapping(raw, "model")
    known = ("action_dim", "state_dim", "norm_key", "arms", "head", "height", "base", "joint_slots")
    if "action_dims" in doc or "state_dims" in doc:
        raise _fail(
            "model.action_dims",
            "raw dim indices are gone: map parts onto the checkpoint's slots by name "
            "(model.arms / head / height / base / joint_slots; docs/action-spaces.md)",
        )
    _known(doc, "model", known)
    if "norm_key" not in doc:
        raise _fail("model.norm_key", "missing (required)")
    action_dim = _int(doc["action_dim"], "model.action_dim", 1, 4096) if "action_dim" in doc else None
    state_dim = _int(doc["state_dim"], "model.state_dim", 1, 4096) if "state_dim" in doc else None
    norm_key = doc["norm_key"]
    if not isinstance(norm_key, str) or not norm_key:
        raise _fail("model.norm_key", f"expected a non-empty string, got {norm_key!r}")
    by_name = {j.name: j for j in joints}
    owner: dict[str, str] = {}

    def joint(name: Any, where: str, kinds: Sequence[str] | None = None) -> str:
        if not isinstance(name, str) or name not in by_name:
            raise _fail(where, f"{name!r} is not a joint in `joints`")
        if kinds is not None and by_name[name].kind not in kinds:
            raise _fail(where, f"{name!r} is a {by_name[name].kind} joint, expected {' or '.join(kinds)}")
        if name in owner:
            raise _fail(where, f"{name!r} already fills {owner[name]}")
        owner[name] = where
        return name

    arms: list[ArmSlot] = []
    arms_block = _mapping(doc.get("arms") or {}, "model.arms")
    for slot, entry in arms_block.items():
        where = f"model.arms.{slot}"
        if slot not in ARMS:
            raise _fail(where, f"the checkpoints' arm slots are {', '.join(ARMS)}")
        entry = _mapping(entry, where)
        _known(entry, where, ("arm", "gripper"))
        arm_name = entry.get("arm")
        if not isinstance(arm_name, str) or not arm_name:
            raise _fail(f"{where}.arm", "missing: the name of an arm in the `kinematics:` block")
        grip = None
        if entry.get("gripper") is not None:
            g = _mapping(entry["gripper"], f"{where}.gripper")
            _known(g, f"{where}.gripper", ("joint", "robot", "model"))
            gj = joint(g.get("joint"), f"{where}.gripper.joint")
            spec = by_name[gj]
            robot = _pair(g["robot"], f"{where}.gripper.robot") if "robot" in g else None
            if robot is None:
                robot = (spec.limits.lower, spec.limits.upper)
            grip = GripperMap(gj, robot, _pair(g.get("model", [0.0, 1.0]), f"{where}.gripper.model"))
        arms.append(ArmSlot(slot=slot, arm=arm_name, gripper=grip))
    if len({a.arm for a in arms}) != len(arms):
        raise _fail("model.arms", "one kinematic arm fills two slots")

    head: tuple[str, ...] = ()
    if doc.get("head") is not None:
        raw_head = doc["head"]
        if not isinstance(raw_head, list) or len(raw_head) != 2:
            raise _fail("model.head", "expected two joints [pan, tilt] (head_actions)")
        head = tuple(joint(j, f"model.head[{i}]", ("revolute",)) for i, j in enumerate(raw_head))
    height = None
    if doc.get("height") is not None:
        height = joint(doc["height"], "model.height", ("prismatic",))
    base: dict[str, str] = {}
    if doc.get("base") is not None:
        b = _mapping(doc["base"], "model.base")
        _known(b, "model.base", BASE_AXES)
        for axis, name in b.items():
            kinds = ("base_angular",) if axis == "vyaw" else ("base_linear",)
            base[axis] = joint(name, f"model.base.{axis}", kinds)
    joint_slots: dict[str, tuple[str, ...]] = {}
    for key, names in _mapping(doc.get("joint_slots") or {}, "model.joint_slots").items():
        where = f"model.joint_slots.{key}"
        if not isinstance(names, list) or not names:
            raise _fail(where, "expected a list of joints")
        joint_slots[str(key)] = tuple(joint(n, f"{where}[{i}]") for i, n in enumerate(names))
    if not (arms or head or height or base or joint_slots):
        raise _fail("model", "maps no part onto the checkpoint (arms, head, height, base or joint_slots)")
    return SlotMapping(
        action_dim=action_dim,
        state_dim=state_dim,
        norm_key=norm_key,
        arms=tuple(arms),
        head=head,
        height=height,
        base=base,
        joint_slots=joint_slots,
        relative_joints=relative_joints,
    )
