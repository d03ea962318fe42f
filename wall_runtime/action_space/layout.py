"""A checkpoint's action or state vector read by key name: ``dof_config`` / ``agent_pos_config`` → typed slots.

Each key of the layout becomes a :class:`Slot` (what it means, which arm, where it sits); the
meanings are spec §11's table. A key this module does not know is an error that names it and the
known ones — a robot config can declare extra keys as joint slots (joint-space checkpoints, whose
keys are the robot's own), never silently as something else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# kind -> (width, or None when any width is allowed)
SLOT_WIDTHS: dict[str, int | None] = {
    "ee_position": 3,  # absolute EE position, m, base frame
    "ee_position_relative": 3,  # delta from the chunk-start pose (0.5 actions)
    "ee_euler": 3,  # absolute [roll, pitch, yaw]
    "ee_rotation_6d": 6,  # absolute 6D (first two rows)
    "ee_rotation_6d_relative": 6,  # delta rotation, left-multiplied onto the chunk-start R
    "gripper": 1,  # absolute opening, larger = more open
    "head": 2,  # head angles, rad
    "height": 1,  # lift height, m
    "base_velocity": 3,  # [vx, vy, vyaw] body frame
    "car_pose": 3,  # base pose (x, y, θ): unsupported unless a robot opts in
    "joints": None,  # joint positions (joint-space checkpoints)
    "padding": None,
}

_ARM_KEYS = {
    "ee_cartesian_pos": "ee_position",
    "ee_cartesian_pos_relative": "ee_position_relative",
    "ee_rotation": "ee_euler",
    "ee_rotation_6D": "ee_rotation_6d",
    "ee_rotation_6D_relative": "ee_rotation_6d_relative",
    "gripper": "gripper",
    "joints": "joints",
}
_GLOBAL_KEYS = {
    "head_actions": "head",
    "height": "height",
    "velocity_decomposed": "base_velocity",
    "car_pose": "car_pose",
    "action_padding": "padding",
}
_ARM_RE = re.compile(r"^follow_(left|right)_(.+)$")
ARMS = ("left", "right")
EE_KINDS = ("ee_position", "ee_position_relative", "ee_euler", "ee_rotation_6d", "ee_rotation_6d_relative")


class LayoutError(ValueError):
    """A checkpoint layout key is unknown, has the wrong width, or the layout is inconsistent."""


def known_keys() -> list[str]:
    arm = [f"follow_{{left,right}}_{suffix}" for suffix in _ARM_KEYS]
    return arm + list(_GLOBAL_KEYS)


@dataclass(frozen=True)
class Slot:
    key: str  # the checkpoint's key, e.g. "follow_left_ee_cartesian_pos"
    kind: str  # one of SLOT_WIDTHS
    arm: str | None  # "left" / "right" for follow_* keys
    start: int
    width: int

    @property
    def index(self) -> slice:
        return slice(self.start, self.start + self.width)


@dataclass(frozen=True)
class Layout:
    """One vector's layout (actions or state), slots in order."""

    name: str  # "dof_config" or "agent_pos_config", for messages
    slots: tuple[Slot, ...]

    @property
    def dim(self) -> int:
        return sum(s.width for s in self.slots)

    def find(self, kind: str, arm: str | None = None) -> Slot | None:
        for s in self.slots:
            if s.kind == kind and s.arm == arm:
                return s
        return None

    def by_key(self, key: str) -> Slot | None:
        for s in self.slots:
            if s.key == key:
                return s
        return None

    def arms(self) -> list[str]:
        """Arms with any EE or gripper slot, in left, right order."""
        present = {s.arm for s in self.slots if s.arm is not None and s.kind != "joints"}
        return [a for a in ARMS if a in present]

    @property
    def is_ee(self) -> bool:
        return any(s.kind in EE_KINDS for s in self.slots)

    def arm_convention(self, arm: str) -> tuple[str | None, str | None]:
        """The (position kind, rotation kind) this layout uses for ``arm``."""
        pos = rot = None
        for s in self.slots:
            if s.arm != arm:
                continue
            if s.kind in ("ee_position", "ee_position_relative"):
                pos = s.kind
            elif s.kind in ("ee_euler", "ee_rotation_6d", "ee_rotation_6d_relative"):
                rot = s.kind
        return pos, rot


def parse_layout(config: Mapping[str, int], name: str, joint_keys: Iterable[str] = ()) -> Layout:
    """Slots from a ``dof_config`` / ``agent_pos_config`` mapping (in its order).

    ``joint_keys``: keys a robot declares as joint-position slots (a joint-space checkpoint's own
    key names); any other unknown key is refused.
    """
    joint_keys = set(joint_keys)
    slots: list[Slot] = []
    start = 0
    seen: set[tuple[str, str | None]] = set()
    for key, width in config.items():
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise LayoutError(f"{name}.{key}: width must be a positive integer, got {width!r}")
        arm: str | None = None
        if key in joint_keys:
            kind = "joints"
        elif key in _GLOBAL_KEYS:
            kind = _GLOBAL_KEYS[key]
        else:
            m = _ARM_RE.match(key)
            if m is None or m.group(2) not in _ARM_KEYS:
                raise LayoutError(
                    f"{name}.{key}: unknown key (known: {', '.join(known_keys())}; a joint-space "
                    "checkpoint's own keys are declared in robot.yaml model.joint_slots)"
                )
            arm, kind = m.group(1), _ARM_KEYS[m.group(2)]
        expected = SLOT_WIDTHS[kind]
        # the 0.5 layouts carry a 2-wide gripper in some state configs: only its first dim is read
        if expected is not None and width != expected and not (kind == "gripper" and width >= 1):
            raise LayoutError(f"{name}.{key}: a {kind} slot is {expected} wide, got {width}")
        if kind not in ("padding", "joints"):
            if (kind, arm) in seen:
                raise LayoutError(f"{name}.{key}: a second {kind} slot for {arm or 'the robot'}")
            seen.add((kind, arm))
        slots.append(Slot(key=str(key), kind=kind, arm=arm, start=start, width=width))
        start += width
    layout = Layout(name=name, slots=tuple(slots))
    for arm in layout.arms():
        pos, rot = layout.arm_convention(arm)
        if (pos is None) != (rot is None):
            raise LayoutError(f"{name}: arm {arm!r} has a position without a rotation slot or the reverse")
        if pos is not None and (pos == "ee_position_relative") != (rot == "ee_rotation_6d_relative"):
            raise LayoutError(f"{name}: arm {arm!r} mixes a relative and an absolute EE slot")
    return layout
