"""The ``kinematics:`` block of robot.yaml: one kinematic chain per arm, validated without loading
any model (so ``load_robot`` stays cheap and fails early, naming the field).

.. code-block:: yaml

    kinematics:
      left:                                   # the arm's name (the model block maps slots onto it)
        model: sim_bimanual.xml               # MJCF or URDF, relative to the robot folder, or
                                              # package:NAME/path/in/package.xml (an installed package)
        base: {body: left_base}               # the arm's base frame: a body or a site of the model
        tool: {site: left_ee}                 # the tool frame: a site or a body of the model
        joints: [left_waist, left_shoulder]   # robot.yaml joints of the chain, base to tool
        model_joints: {left_waist: waist}     # optional: robot joint -> model joint where they differ
        position_only: false                  # 5-DoF arms: position priority, orientation reported
        tolerance: {position_m: 0.001, orientation_deg: 0.5}
        base_offset: {xyz: [0, 0, 0], rpy: [0, 0, 0]}   # optional fixed transforms (URDF rpy:
        tool_offset: {xyz: [0, 0, 0.1], rpy: [0, 0, 0]}  # R = Rz(y) Ry(p) Rx(r))
        orientation_weight: 0.05              # optional: orientation cost of position-only arms
        posture_weight: 0.001                 # optional: pull towards the seed (branch choice)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_POSITION_TOLERANCE_M = 1e-3
DEFAULT_ORIENTATION_TOLERANCE_DEG = 0.5
_FIELDS = {
    "model": True,
    "base": True,
    "tool": True,
    "joints": True,
    "model_joints": False,
    "position_only": False,
    "tolerance": False,
    "base_offset": False,
    "tool_offset": False,
    "orientation_weight": False,
    "posture_weight": False,
}


class KinematicsConfigError(ValueError):
    """The kinematics block is malformed; the message starts with the field's path."""


@dataclass(frozen=True)
class FrameRef:
    """A frame of the model: ``kind`` is ``body`` or ``site``."""

    kind: str
    name: str


@dataclass(frozen=True)
class ArmKinematicsConfig:
    """One arm's validated kinematics block (nothing loaded yet)."""

    name: str
    model: str  # as written: a relative/absolute path or ``package:NAME/path``
    base: FrameRef
    tool: FrameRef
    joints: tuple[str, ...]
    model_joints: tuple[str, ...]  # the model's joint name for each of ``joints``
    position_only: bool
    position_tolerance: float  # metres
    orientation_tolerance: float  # radians
    base_offset: np.ndarray  # (4, 4)
    tool_offset: np.ndarray  # (4, 4)
    orientation_weight: float
    posture_weight: float
    where: str  # "kinematics.left", for error messages raised later (model loading)


def _fail(where: str, message: str) -> KinematicsConfigError:
    return KinematicsConfigError(f"{where}: {message}")


def _number(value: Any, where: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, f"expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise _fail(where, f"must be > 0, got {value!r}")
    if nonnegative and value < 0:
        raise _fail(where, f"must be >= 0, got {value!r}")
    return float(value)


def _frame(value: Any, where: str, kinds: tuple[str, ...]) -> FrameRef:
    if not isinstance(value, Mapping) or len(value) != 1:
        raise _fail(where, f"expected a mapping with exactly one of {', '.join(kinds)}, got {value!r}")
    (kind, name), *_ = value.items()
    if kind not in kinds:
        raise _fail(where, f"unknown frame kind {kind!r} (known: {', '.join(kinds)})")
    if not isinstance(name, str) or not name:
        raise _fail(f"{where}.{kind}", f"expected a non-empty name, got {name!r}")
    return FrameRef(kind=kind, name=name)


def rpy_matrix(rpy: Sequence[float]) -> np.ndarray:
    """URDF / WALL-OSS convention: R = Rz(yaw) Ry(pitch) Rx(roll)."""
    r, p, y = (float(v) for v in rpy)
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    return np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )


def _offset(value: Any, where: str) -> np.ndarray:
    T = np.eye(4)
    if value is None:
        return T
    if not isinstance(value, Mapping):
        raise _fail(where, f"expected a mapping with xyz and/or rpy, got {value!r}")
    for key in value:
        if key not in ("xyz", "rpy"):
            raise _fail(f"{where}.{key}", "unknown field (known: xyz, rpy)")
    for key in ("xyz", "rpy"):
        v = value.get(key, [0.0, 0.0, 0.0])
        if not isinstance(v, Sequence) or isinstance(v, str) or len(v) != 3:
            raise _fail(f"{where}.{key}", f"expected 3 numbers, got {v!r}")
        nums = [_number(x, f"{where}.{key}[{i}]") for i, x in enumerate(v)]
        if key == "xyz":
            T[:3, 3] = nums
        else:
            T[:3, :3] = rpy_matrix(nums)
    return T


def parse_arm_block(
    block: Any, name: str = "arm", robot_joints: Sequence[str] | None = None, where: str | None = None
) -> ArmKinematicsConfig:
    """Validate one arm's block; ``robot_joints`` (robot.yaml's joint names), where given, must
    contain every chain joint."""
    where = where or f"kinematics.{name}"
    if not isinstance(block, Mapping):
        raise _fail(where, f"expected a mapping, got {type(block).__name__}")
    for key in block:
        if key not in _FIELDS:
            raise _fail(f"{where}.{key}", f"unknown field (known: {', '.join(_FIELDS)})")
    for key, required in _FIELDS.items():
        if required and key not in block:
            raise _fail(f"{where}.{key}", "missing (required)")

    model = block["model"]
    if not isinstance(model, str) or not model:
        raise _fail(f"{where}.model", f"expected a path or package:NAME/path, got {model!r}")
    if not model.lower().endswith((".xml", ".urdf", ".mjcf")):
        raise _fail(f"{where}.model", f"{model!r} is neither an MJCF (.xml) nor a URDF (.urdf)")
    base = _frame(block["base"], f"{where}.base", ("body", "site"))
    tool = _frame(block["tool"], f"{where}.tool", ("site", "body"))

    joints = block["joints"]
    if not isinstance(joints, list) or not joints:
        raise _fail(f"{where}.joints", f"expected a non-empty list of joint names, got {joints!r}")
    for i, j in enumerate(joints):
        if not isinstance(j, str) or not j:
            raise _fail(f"{where}.joints[{i}]", f"expected a joint name, got {j!r}")
        if robot_joints is not None and j not in robot_joints:
            raise _fail(f"{where}.joints[{i}]", f"{j!r} names no joint in `joints`")
    if len(set(joints)) != len(joints):
        raise _fail(f"{where}.joints", "a joint is listed twice")

    name_map = block.get("model_joints") or {}
    if not isinstance(name_map, Mapping):
        raise _fail(
            f"{where}.model_joints", f"expected a mapping robot joint -> model joint, got {name_map!r}"
        )
    for k, v in name_map.items():
        if k not in joints:
            raise _fail(f"{where}.model_joints.{k}", "names no joint of this chain's `joints`")
        if not isinstance(v, str) or not v:
            raise _fail(f"{where}.model_joints.{k}", f"expected a model joint name, got {v!r}")
    model_joints = tuple(name_map.get(j, j) for j in joints)

    position_only = block.get("position_only", False)
    if not isinstance(position_only, bool):
        raise _fail(f"{where}.position_only", f"expected true or false, got {position_only!r}")

    tol = block.get("tolerance") or {}
    if not isinstance(tol, Mapping):
        raise _fail(f"{where}.tolerance", f"expected a mapping, got {tol!r}")
    for key in tol:
        if key not in ("position_m", "orientation_deg"):
            raise _fail(f"{where}.tolerance.{key}", "unknown field (known: position_m, orientation_deg)")
    pos_tol = _number(
        tol.get("position_m", DEFAULT_POSITION_TOLERANCE_M), f"{where}.tolerance.position_m", positive=True
    )
    ori_tol = _number(
        tol.get("orientation_deg", DEFAULT_ORIENTATION_TOLERANCE_DEG),
        f"{where}.tolerance.orientation_deg",
        positive=True,
    )
    return ArmKinematicsConfig(
        name=name,
        model=model,
        base=base,
        tool=tool,
        joints=tuple(joints),
        model_joints=model_joints,
        position_only=position_only,
        position_tolerance=pos_tol,
        orientation_tolerance=math.radians(ori_tol),
        base_offset=_offset(block.get("base_offset"), f"{where}.base_offset"),
        tool_offset=_offset(block.get("tool_offset"), f"{where}.tool_offset"),
        orientation_weight=_number(
            block.get("orientation_weight", 0.05 if position_only else 1.0),
            f"{where}.orientation_weight",
            nonnegative=True,
        ),
        posture_weight=_number(
            block.get("posture_weight", 1e-3), f"{where}.posture_weight", nonnegative=True
        ),
        where=where,
    )


def parse_kinematics_block(
    raw: Any, robot_joints: Sequence[str] | None = None
) -> dict[str, ArmKinematicsConfig]:
    """The whole ``kinematics:`` block -> validated per-arm configs; no chain joint in two arms."""
    if not isinstance(raw, Mapping) or not raw:
        raise _fail("kinematics", f"expected a mapping of arm name -> chain, got {raw!r}")
    arms: dict[str, ArmKinematicsConfig] = {}
    owner: dict[str, str] = {}
    for name, block in raw.items():
        if not isinstance(name, str) or not name:
            raise _fail("kinematics", f"arm names must be non-empty strings, got {name!r}")
        arm = parse_arm_block(block, name, robot_joints)
        for j in arm.joints:
            if j in owner:
                raise _fail(f"kinematics.{name}.joints", f"{j!r} is already in arm {owner[j]!r}")
            owner[j] = name
        arms[name] = arm
    return arms
