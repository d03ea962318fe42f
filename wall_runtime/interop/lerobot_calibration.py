"""LeRobot calibration files, read by the native Feetech / Dynamixel adapters.

``lerobot-calibrate`` writes one JSON per arm (``~/.cache/huggingface/lerobot/calibration/robots/
<robot type>/<id>.json``), keyed by LeRobot's motor name::

    {"shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": -1487, "range_min": 745, "range_max": 3370}, ...}

and writes ``homing_offset`` and the range into the servos' own registers (Homing_Offset, Min/Max
Position Limit), so the positions the servos report are already homed. LeRobot's degrees are
``(present - mid) * 360 / (resolution - 1)`` with ``mid = (range_min + range_max) / 2``: the
middle of the calibrated range is zero. A joint of ours in radians therefore gets ``offset = mid``
(ticks), and the direction LeRobot applies in software (Feetech: ``drive_mode`` 1 reverses it;
Dynamixel servos reverse themselves through their Drive_Mode register, so nothing is applied).

The motors are matched to our joints by servo id, so LeRobot's motor names and ours may differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FIELDS = ("id", "drive_mode", "homing_offset", "range_min", "range_max")


@dataclass(frozen=True)
class MotorCalibration:
    motor: str  # LeRobot's name for it
    id: int
    drive_mode: int
    homing_offset: int
    range_min: int
    range_max: int

    @property
    def mid(self) -> float:
        return (self.range_min + self.range_max) / 2


def load(path: str | Path) -> dict[int, MotorCalibration]:
    """The file's motors by servo id; a malformed file raises ``ValueError`` naming the field."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such LeRobot calibration file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected an object of motors")
    out: dict[int, MotorCalibration] = {}
    for motor, entry in raw.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {motor}: expected an object with {', '.join(FIELDS)}")
        values = {}
        for field in FIELDS:
            value = entry.get(field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{path}: {motor}.{field}: expected an integer, got {value!r}")
            values[field] = value
        cal = MotorCalibration(motor=motor, **values)
        if cal.range_max <= cal.range_min:
            raise ValueError(
                f"{path}: {motor}: range_max {cal.range_max} is not above range_min {cal.range_min}"
            )
        if cal.drive_mode not in (0, 1):
            raise ValueError(f"{path}: {motor}.drive_mode: expected 0 or 1, got {cal.drive_mode}")
        if cal.id in out:
            raise ValueError(f"{path}: {motor}: servo id {cal.id} also belongs to {out[cal.id].motor}")
        out[cal.id] = cal
    return out


def for_joints(
    path: str | Path, ids: dict[str, int], software_drive_mode: bool
) -> tuple[dict[str, float], dict[str, int], dict[str, MotorCalibration]]:
    """(offsets in ticks, directions, calibration) per joint of ours, matched by servo id."""
    motors = load(path)
    missing = [f"{joint} (id {sid})" for joint, sid in ids.items() if sid not in motors]
    if missing:
        raise ValueError(f"{path}: no calibration for {', '.join(missing)}")
    cal = {joint: motors[sid] for joint, sid in ids.items()}
    offsets = {joint: c.mid for joint, c in cal.items()}
    directions = {joint: -1 if (software_drive_mode and c.drive_mode) else 1 for joint, c in cal.items()}
    return offsets, directions, cal
