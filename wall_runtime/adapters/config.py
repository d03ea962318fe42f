"""``robots/<name>/robot.yaml``: what a robot is made of and how it maps onto the model.

A wrong or incomplete file fails here, at load, with a :class:`RobotConfigError` whose message
starts with the path of the offending field (``parts[0].connection.port: ...``), never later at
run time. The format is documented in ``docs/adding-a-robot.md`` and ``robots/_template/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wall_runtime.action_space.ee_safety import EELimits, EELimitsError
from wall_runtime.action_space.mapping import MappingError, SlotMapping, parse_slot_mapping
from wall_runtime.control.limits import JointLimits, LimitsError, parse_joint_limits
from wall_runtime.robot import JOINT_KINDS, UNITS_FOR_KIND, JointSpec, RobotSpec

ACTION_TYPES = ("absolute_joints", "relative_joints")
_TOP_LEVEL = {
    "name": True,
    "description": False,
    "control_hz": True,
    "watchdog_timeout_s": False,
    "action_type": False,
    "capabilities": False,
    "joints": True,
    "parts": True,
    "kinematics": False,
    "joint_limits": True,
    "safety": False,
    "cameras": False,
    "model": True,
}


class RobotConfigError(ValueError):
    """robot.yaml is malformed; the message starts with the field's path."""


@dataclass(frozen=True)
class PartConfig:
    """One hardware (or simulated) part: an arm, a gripper, a bus of servos, a base."""

    name: str
    type: str  # key in wall_runtime.adapters.registry.PART_TYPES
    joints: tuple[str, ...]
    connection: dict[str, Any]
    where: str  # "parts[i]", for error messages raised by the adapter's own validation


@dataclass(frozen=True)
class RobotConfig:
    name: str
    path: Path
    control_hz: float
    watchdog_timeout_s: float
    action_type: str
    joints: tuple[JointSpec, ...]
    parts: tuple[PartConfig, ...]
    mapping: SlotMapping  # the model: block (wall_runtime.action_space.mapping)
    # parsed by wall_runtime.control.safety; ``safe_pose`` (if any) normalised to a list in joint order
    safety: dict[str, Any] = field(default_factory=dict)
    cameras: dict[str, Any] = field(default_factory=dict)  # parsed by wall_runtime.cameras.config
    # validated by wall_runtime.kinematics.config; models load with wall_runtime.kinematics
    kinematics: dict[str, Any] = field(default_factory=dict)
    capabilities: frozenset[str] = frozenset()
    description: str = ""

    @property
    def ee_limits(self) -> EELimits:
        """``safety.ee``: the EE-space checks before inverse kinematics."""
        return EELimits.from_dict(self.safety.get("ee"))

    @property
    def safe_pose(self) -> tuple[float, ...] | None:
        """``safety.safe_pose`` in joint order: where the control loop parks the robot on shutdown."""
        pose = self.safety.get("safe_pose")
        return None if pose is None else tuple(float(v) for v in pose)

    @property
    def root(self) -> Path:
        """The robot's folder; relative paths in robot.yaml (MJCF, calibration) resolve here."""
        return self.path.parent

    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def joint_limits(self) -> dict[str, JointLimits]:
        return {j.name: j.limits for j in self.joints}

    def spec(self) -> RobotSpec:
        return RobotSpec(
            name=self.name,
            joints=self.joints,
            control_hz=self.control_hz,
            capabilities=self.capabilities,
            watchdog_timeout_s=self.watchdog_timeout_s,
        )

    def part_spec(self, part: PartConfig) -> RobotSpec:
        by_name = {j.name: j for j in self.joints}
        return RobotSpec(
            name=f"{self.name}.{part.name}",
            joints=tuple(by_name[n] for n in part.joints),
            control_hz=self.control_hz,
            capabilities=self.capabilities,
            watchdog_timeout_s=self.watchdog_timeout_s,
        )


def _fail(where: str, message: str) -> RobotConfigError:
    return RobotConfigError(f"{where}: {message}")


def _require_mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected a mapping, got {type(value).__name__}")
    return value


def _require_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f"expected a list, got {type(value).__name__}")
    return value


def _require_str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"expected a non-empty string, got {value!r}")
    return value


def _require_positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, f"expected a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise _fail(where, f"must be a positive finite number, got {value!r}")
    return float(value)


def _require_int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"expected an integer, got {value!r}")
    if not low <= value < high:
        raise _fail(where, f"must be in [{low}, {high}), got {value}")
    return value


def load_robot(path: str | Path) -> RobotConfig:
    """Read and validate a robot.yaml: a path, a folder holding one, or a robot's name
    (``sim_arm``: ``./robots/sim_arm`` or the one shipped with the package)."""
    from wall_runtime.robot_files import RobotNotFoundError, resolve_robot

    try:
        path = resolve_robot(path)
    except RobotNotFoundError as exc:
        raise RobotConfigError(str(exc)) from None
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RobotConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_robot(raw, path.resolve())
    except RobotConfigError as exc:
        raise RobotConfigError(f"{path}: {exc}") from None


def parse_robot(raw: Any, path: Path) -> RobotConfig:
    doc = _require_mapping(raw, "robot.yaml")
    for key in doc:
        if key not in _TOP_LEVEL:
            raise _fail(str(key), f"unknown field (known: {', '.join(_TOP_LEVEL)})")
    for key, required in _TOP_LEVEL.items():
        if required and key not in doc:
            raise _fail(key, "missing (required)")

    name = _require_str(doc["name"], "name")
    control_hz = _require_positive(doc["control_hz"], "control_hz")
    watchdog = _require_positive(doc.get("watchdog_timeout_s", 0.5), "watchdog_timeout_s")
    if watchdog < 1.0 / control_hz:
        raise _fail("watchdog_timeout_s", f"{watchdog} s is shorter than one control period")
    action_type = doc.get("action_type", "absolute_joints")
    if action_type == "ee_pose":
        raise _fail(
            "action_type",
            "gone: a checkpoint's own keys say whether it acts on EE poses; map the arms under "
            "model.arms (docs/action-spaces.md)",
        )
    if action_type not in ACTION_TYPES:
        raise _fail("action_type", f"{action_type!r} is not one of {', '.join(ACTION_TYPES)}")
    caps = doc.get("capabilities", [])
    capabilities = frozenset(
        _require_str(c, f"capabilities[{i}]") for i, c in enumerate(_require_list(caps, "capabilities"))
    )

    limits_block = _require_mapping(doc["joint_limits"], "joint_limits")
    joints = _parse_joints(doc["joints"], limits_block)
    names = [j.name for j in joints]
    for extra in limits_block:
        if extra not in names:
            raise _fail(f"joint_limits.{extra}", "names no joint in `joints`")

    parts = _parse_parts(doc["parts"], names)
    safety = dict(_require_mapping(doc.get("safety") or {}, "safety"))
    if "safe_pose" in safety:
        safety["safe_pose"] = list(_parse_safe_pose(safety["safe_pose"], joints))
    if "watchdog_timeout" in safety:
        raise _fail(
            "safety.watchdog_timeout",
            "the watchdog has one key: the top-level watchdog_timeout_s (every command reads it)",
        )
    try:
        EELimits.from_dict(safety.get("ee"))
    except EELimitsError as exc:
        raise RobotConfigError(str(exc)) from None
    _validate_safety({k: v for k, v in safety.items() if k != "ee"}, joints)
    cameras = _require_mapping(doc.get("cameras") or {}, "cameras")
    _validate_cameras(cameras)
    kinematics = doc.get("kinematics")
    if kinematics is not None:
        _validate_kinematics(kinematics, names)
    try:
        mapping = parse_slot_mapping(doc["model"], joints, relative_joints=action_type == "relative_joints")
    except MappingError as exc:
        raise RobotConfigError(str(exc)) from None
    if kinematics is not None:
        _check_model_arms(mapping, kinematics)
    return RobotConfig(
        name=name,
        path=path,
        control_hz=control_hz,
        watchdog_timeout_s=watchdog,
        action_type=action_type,
        joints=joints,
        parts=parts,
        mapping=mapping,
        safety=safety,
        cameras=dict(cameras),
        kinematics=dict(kinematics or {}),
        capabilities=capabilities,
        description=str(doc.get("description", "")),
    )


def _validate_safety(safety: dict[str, Any], joints: tuple[JointSpec, ...]) -> None:
    """The control loop's parser, run at load so a bad block fails here, naming its field: also a
    block the chain could not satisfy (no room inside a margin, a safe pose it would not command)."""
    try:
        from wall_runtime.control.safety_config import SafetyConfig, check_safe_pose
    except ImportError:  # the control package is optional for loading a robot
        return
    try:
        config = SafetyConfig.from_dict({k: v for k, v in safety.items() if k != "safe_pose"}, joints)
        if "safe_pose" in safety:
            check_safe_pose(config, joints, safety["safe_pose"])
    except ValueError as exc:
        raise RobotConfigError(str(exc)) from None


def _validate_kinematics(block: Any, joint_names: list[str]) -> None:
    """The block's schema only (no model is loaded here: that needs MuJoCo and the model files)."""
    from wall_runtime.kinematics.config import KinematicsConfigError, parse_kinematics_block

    try:
        parse_kinematics_block(block, joint_names)
    except KinematicsConfigError as exc:
        raise RobotConfigError(str(exc)) from None


def _validate_cameras(cameras: dict[str, Any]) -> None:
    if not cameras:
        return
    try:
        from wall_runtime.cameras.config import CamerasConfig
    except ImportError:
        return
    try:
        CamerasConfig.from_dict(cameras)
    except ValueError as exc:
        raise RobotConfigError(str(exc)) from None


def _parse_safe_pose(raw: Any, joints: tuple[JointSpec, ...]) -> tuple[float, ...]:
    """``safety.safe_pose``: one value per joint, as a list in joint order or a ``{joint: value}``
    mapping; inside the limits; base joints 0 (standing still)."""
    names = [j.name for j in joints]
    if isinstance(raw, list):
        if len(raw) != len(joints):
            raise _fail("safety.safe_pose", f"expected {len(joints)} values (one per joint), got {len(raw)}")
        block = dict(zip(names, raw, strict=True))
    else:
        block = _require_mapping(raw, "safety.safe_pose")
        for jn in block:
            if jn not in names:
                raise _fail(f"safety.safe_pose.{jn}", "names no joint in `joints`")
    pose = []
    for j in joints:
        if j.is_velocity:
            if block.get(j.name, 0.0) != 0.0:
                raise _fail(f"safety.safe_pose.{j.name}", "a base joint's safe pose is standing still (0)")
            pose.append(0.0)
            continue
        if j.name not in block:
            raise _fail(f"safety.safe_pose.{j.name}", "missing: the safe pose names every position joint")
        v = block[j.name]
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not j.limits.lower <= v <= j.limits.upper
        ):
            raise _fail(
                f"safety.safe_pose.{j.name}", f"{v!r} is not inside [{j.limits.lower}, {j.limits.upper}]"
            )
        pose.append(float(v))
    return tuple(pose)


def _parse_joints(raw: Any, limits_block: dict[str, Any]) -> tuple[JointSpec, ...]:
    entries = _require_list(raw, "joints")
    if not entries:
        raise _fail("joints", "a robot needs at least one joint")
    joints: list[JointSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"joints[{i}]"
        entry = _require_mapping(entry, where)
        for key in entry:
            if key not in ("name", "kind", "unit"):
                raise _fail(f"{where}.{key}", "unknown field (known: name, kind, unit)")
        name = _require_str(entry.get("name"), f"{where}.name")
        if name in seen:
            raise _fail(f"{where}.name", f"{name!r} appears twice")
        seen.add(name)
        kind = entry.get("kind")
        if kind not in JOINT_KINDS:
            raise _fail(f"{where}.kind", f"{kind!r} is not one of {', '.join(JOINT_KINDS)}")
        unit = entry.get("unit")
        if unit not in UNITS_FOR_KIND[kind]:
            raise _fail(
                f"{where}.unit",
                f"{unit!r} is not a unit for a {kind} joint ({', '.join(UNITS_FOR_KIND[kind])})",
            )
        if name not in limits_block:
            raise _fail(f"joint_limits.{name}", "missing: every joint needs its limits")
        try:
            limits = parse_joint_limits(name, limits_block[name])
        except LimitsError as exc:
            raise RobotConfigError(str(exc)) from None
        # The conformance kit and every clamp need finite bounds: position joints must declare
        # position limits, base joints velocity limits.
        if kind in ("base_linear", "base_angular"):
            if not limits.has_velocity_limits:
                raise _fail(
                    f"joint_limits.{name}.max_velocity", "missing: a base joint needs a velocity limit"
                )
        elif not (limits.has_position_limits and math.isfinite(limits.lower) and math.isfinite(limits.upper)):
            raise _fail(
                f"joint_limits.{name}.min_position", "missing: a position joint needs min/max_position"
            )
        joints.append(JointSpec(name=name, kind=kind, unit=unit, limits=limits))
    return tuple(joints)


def _parse_parts(raw: Any, joint_names: list[str]) -> tuple[PartConfig, ...]:
    entries = _require_list(raw, "parts")
    if not entries:
        raise _fail("parts", "a robot needs at least one part")
    parts: list[PartConfig] = []
    owner: dict[str, str] = {}
    part_names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"parts[{i}]"
        entry = _require_mapping(entry, where)
        for key in entry:
            if key not in ("name", "type", "joints", "connection"):
                raise _fail(f"{where}.{key}", "unknown field (known: name, type, joints, connection)")
        pname = _require_str(entry.get("name"), f"{where}.name")
        if pname in part_names:
            raise _fail(f"{where}.name", f"{pname!r} appears twice")
        part_names.add(pname)
        ptype = _require_str(entry.get("type"), f"{where}.type")
        from wall_runtime.adapters.registry import PART_TYPES

        if ptype not in PART_TYPES:
            raise _fail(
                f"{where}.type", f"{ptype!r} is not a known part type ({', '.join(sorted(PART_TYPES))})"
            )
        pjoints = _require_list(entry.get("joints"), f"{where}.joints")
        if not pjoints:
            raise _fail(f"{where}.joints", "a part drives at least one joint")
        for k, jn in enumerate(pjoints):
            jn = _require_str(jn, f"{where}.joints[{k}]")
            if jn not in joint_names:
                raise _fail(f"{where}.joints[{k}]", f"{jn!r} is not declared in `joints`")
            if jn in owner:
                raise _fail(f"{where}.joints[{k}]", f"{jn!r} is already driven by part {owner[jn]!r}")
            owner[jn] = pname
        connection = _require_mapping(entry.get("connection") or {}, f"{where}.connection")
        parts.append(PartConfig(pname, ptype, tuple(pjoints), dict(connection), where))
    for jn in joint_names:
        if jn not in owner:
            raise _fail("parts", f"joint {jn!r} is driven by no part")
    return tuple(parts)


def _check_model_arms(mapping: SlotMapping, kinematics: Any) -> None:
    """Every arm the model block names is an arm of the kinematics block (loaded later)."""
    arms = set((kinematics or {}).keys()) if isinstance(kinematics, dict) else set()
    direct = mapping.joints_used()
    for slot in mapping.arms:
        if slot.arm not in arms:
            raise _fail(
                f"model.arms.{slot.slot}.arm",
                f"{slot.arm!r} is not an arm of the kinematics: block (it has {sorted(arms) or 'none'})",
            )
        block = kinematics[slot.arm]
        chain = block.get("joints") or [] if isinstance(block, dict) else []
        for joint in chain:
            if joint in direct:
                raise _fail(
                    f"model.arms.{slot.slot}",
                    f"joint {joint!r} of arm {slot.arm!r} also fills another slot of the model block",
                )


class Connection:
    """Typed reads from a part's ``connection`` block; errors name the field."""

    def __init__(self, block: dict[str, Any], where: str) -> None:
        self._block = dict(block)
        self._where = where
        self._used: set[str] = set()

    @property
    def where(self) -> str:
        """The part's path in robot.yaml, for error messages."""
        return self._where

    def _get(self, key: str, default: Any) -> Any:
        self._used.add(key)
        if key not in self._block:
            if default is _REQUIRED:
                raise _fail(f"{self._where}.connection.{key}", "missing (required)")
            return default
        return self._block[key]

    def str(self, key: str, default: Any = None) -> Any:
        value = self._get(key, _REQUIRED if default is None else default)
        return _require_str(value, f"{self._where}.connection.{key}")

    def float(self, key: str, default: Any = None) -> float:
        value = self._get(key, _REQUIRED if default is None else default)
        return _require_positive(value, f"{self._where}.connection.{key}")

    def number(self, key: str, default: float | None = None) -> float:
        value = self._get(key, _REQUIRED if default is None else default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(f"{self._where}.connection.{key}", f"expected a finite number, got {value!r}")
        return float(value)

    def int(self, key: str, default: Any = None, low: int = 0, high: int = 2**31) -> int:
        value = self._get(key, _REQUIRED if default is None else default)
        return _require_int(value, f"{self._where}.connection.{key}", low, high)

    def bool(self, key: str, default: bool | None = None) -> bool:
        value = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(value, bool):
            raise _fail(f"{self._where}.connection.{key}", f"expected true or false, got {value!r}")
        return value

    def per_joint(
        self, key: str, joints: tuple[str, ...] | list[str], kind: type = int, default: Any = None
    ) -> dict[str, Any]:
        """A ``{joint: value}`` block covering exactly the part's joints."""
        value = self._get(key, _REQUIRED if default is None else default)
        block = _require_mapping(value, f"{self._where}.connection.{key}")
        out: dict[str, Any] = {}
        for jn in block:
            if jn not in joints:
                raise _fail(f"{self._where}.connection.{key}.{jn}", "names no joint of this part")
        for jn in joints:
            if jn not in block:
                raise _fail(f"{self._where}.connection.{key}.{jn}", "missing")
            v = block[jn]
            ok = (
                isinstance(v, kind) and not isinstance(v, bool)
                if kind in (int, float)
                else isinstance(v, kind)
            )
            if kind is float and isinstance(v, int) and not isinstance(v, bool):
                v, ok = float(v), True
            if not ok:
                raise _fail(f"{self._where}.connection.{key}.{jn}", f"expected {kind.__name__}, got {v!r}")
            out[jn] = v
        return out

    def raw(self, key: str, default: Any = None) -> Any:
        return self._get(key, default)

    def finish(self) -> None:
        """Refuse keys the adapter did not read: a typo must not silently fall back to a default."""
        for key in self._block:
            if key not in self._used:
                known = ", ".join(sorted(self._used))
                raise _fail(f"{self._where}.connection.{key}", f"unknown field (known: {known})")


_REQUIRED = object()
