"""Joint zero offsets and ranges for servo arms, recorded against a live ``RobotAdapter``.

Two steps, each ended by the operator: hold the arm in its zero pose (the mean reading is each
joint's offset, the spread its residual), then move every joint through its full range (the
extremes, relative to zero, are its range). ``calibrated = raw - zero_offset``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wall_runtime.calibration import results
from wall_runtime.calibration.intrinsics import CalibrationError
from wall_runtime.robot import RobotAdapter

KIND = "joint_calibration"


@dataclass(frozen=True)
class JointCalibration:
    robot: str
    joints: tuple[str, ...]
    zero_offset: np.ndarray  # raw reading at the zero pose, per joint
    zero_std: np.ndarray  # spread of the readings while holding the zero pose (the residual)
    range_min: np.ndarray  # calibrated (offset removed) extremes seen
    range_max: np.ndarray
    samples: int
    # servo ticks at each joint's zero (what a bus-servo adapter takes as connection.offsets);
    # empty for joints that are not on a servo bus
    offset_ticks: dict[str, float] = field(default_factory=dict)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(raw, np.float64) - self.zero_offset

    def save(self, path: Path | str) -> Path:
        return results.save(
            path,
            KIND,
            {
                "robot": self.robot,
                "joints": {
                    name: {
                        "zero_offset": float(self.zero_offset[i]),
                        "zero_std": float(self.zero_std[i]),
                        "min": float(self.range_min[i]),
                        "max": float(self.range_max[i]),
                        **(
                            {"offset_ticks": float(self.offset_ticks[name])}
                            if name in self.offset_ticks
                            else {}
                        ),
                    }
                    for i, name in enumerate(self.joints)
                },
                "residual_max_zero_std": float(np.max(self.zero_std)),
                "samples": self.samples,
            },
        )

    @classmethod
    def load(cls, path: Path | str) -> JointCalibration:
        doc = results.load(path, KIND)
        joints = doc.get("joints")
        if not isinstance(joints, dict) or not joints:
            raise results.CalibrationFileError(f"{path}: 'joints' must map joint names to offsets")
        cols: dict[str, list[float]] = {k: [] for k in ("zero_offset", "zero_std", "min", "max")}
        ticks: dict[str, float] = {}
        for name, entry in joints.items():
            t = entry.get("offset_ticks") if isinstance(entry, dict) else None
            if t is not None:
                if isinstance(t, bool) or not isinstance(t, int | float) or not np.isfinite(t):
                    raise results.CalibrationFileError(f"{path}: joints.{name}.offset_ticks is not a number")
                ticks[name] = float(t)
            for key, col in cols.items():
                v = entry.get(key) if isinstance(entry, dict) else None
                if not isinstance(v, int | float) or not np.isfinite(v):
                    raise results.CalibrationFileError(f"{path}: joints.{name}.{key} missing or not a number")
                col.append(float(v))
        return cls(
            robot=str(doc.get("robot")),
            joints=tuple(joints),
            zero_offset=np.array(cols["zero_offset"]),
            zero_std=np.array(cols["zero_std"]),
            range_min=np.array(cols["min"]),
            range_max=np.array(cols["max"]),
            samples=int(doc.get("samples", 0)),
            offset_ticks=ticks,
        )


def record_zero(adapter: RobotAdapter, n: int = 50, hz: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread of ``n`` readings while the arm is held in its zero pose."""
    readings = []
    for _ in range(n):
        readings.append(np.asarray(adapter.read_state().position, np.float64))
        time.sleep(1.0 / hz)
    arr = np.array(readings)
    if not np.all(np.isfinite(arr)):
        raise CalibrationError("the adapter returned non-finite joint positions")
    return arr.mean(0), arr.std(0)


def record_range(
    adapter: RobotAdapter, done: threading.Event, hz: float = 100.0
) -> tuple[np.ndarray, np.ndarray, int]:
    """Raw min/max of every joint from now until ``done`` is set."""
    lo = hi = np.asarray(adapter.read_state().position, np.float64)
    n = 1
    while not done.is_set():
        pos = np.asarray(adapter.read_state().position, np.float64)
        if np.all(np.isfinite(pos)):
            lo, hi = np.minimum(lo, pos), np.maximum(hi, pos)
            n += 1
        time.sleep(1.0 / hz)
    return lo, hi, n


def calibrate_joints(
    adapter: RobotAdapter,
    wait_for_operator: Callable[[str], None],
    *,
    min_travel: float = 0.05,
    hz: float = 100.0,
) -> JointCalibration:
    """The two-step flow. ``wait_for_operator(prompt)`` returns when the operator confirms the step
    (the command line waits for Enter; tests call it with a scripted motion). Joints that moved less
    than ``min_travel`` (robot units) in the range step are an error: their range was not recorded.
    """
    names = adapter.spec.joint_names
    wait_for_operator(
        "Step 1/2: put the arm in its ZERO pose (all joints at their marked zero, gripper closed), "
        "hold it still, then press Enter."
    )
    offset, std = record_zero(adapter, hz=hz)
    done = threading.Event()
    box: dict[str, object] = {}

    def sample() -> None:
        try:
            box["result"] = record_range(adapter, done, hz)
        except Exception as e:  # reported below, in the caller's thread
            box["error"] = e

    sampler = threading.Thread(target=sample, name="joint-range", daemon=True)
    sampler.start()
    try:
        wait_for_operator(
            "Step 2/2: move EVERY joint slowly through its full range, end stop to end stop, "
            "then press Enter."
        )
    finally:
        done.set()
        sampler.join(timeout=2.0)
    if "error" in box:
        raise CalibrationError(f"reading the robot failed while recording ranges: {box['error']}")
    lo, hi, n = box["result"]  # type: ignore[misc]
    travel = hi - lo
    still = [names[i] for i in range(len(names)) if travel[i] < min_travel]
    if still:
        raise CalibrationError(
            f"joints {still} moved less than {min_travel} during the range step; record again"
        )
    return JointCalibration(
        robot=adapter.spec.name,
        joints=tuple(names),
        zero_offset=offset,
        zero_std=std,
        range_min=lo - offset,
        range_max=hi - offset,
        samples=n,
    )


def resolve_robot_yaml(robot: str | Path) -> Path:
    """A robot.yaml path, or the name of a folder under the repository's ``robots/``."""
    path = Path(robot)
    if path.is_file():
        return path
    if path.is_dir() and (path / "robot.yaml").is_file():
        return path / "robot.yaml"
    named = Path(__file__).resolve().parents[2] / "robots" / str(robot) / "robot.yaml"
    if named.is_file():
        return named
    raise CalibrationError(f"--robot {robot!r}: neither a robot.yaml nor a robot under robots/")


def calibrate_robot(
    robot: str | Path,
    wait_for_operator: Callable[[str], None],
    root: Path | str = results.DEFAULT_ROOT,
    *,
    hz: float = 100.0,
    min_travel: float = 0.05,
) -> tuple[JointCalibration, Path]:
    """``calibrate joints --robot NAME``: the robot from its robot.yaml, every bus-servo part limp
    (torque off, so the arm is moved by hand), the two-step flow, and the servo ticks at each
    joint's zero written to ``<root>/<robot>/joints.yaml``, which the servo adapters load in place
    of robot.yaml's ``offsets`` from then on. The servos stay limp afterwards."""
    import dataclasses

    from wall_runtime.adapters.config import load_robot
    from wall_runtime.adapters.registry import build_adapter

    config = load_robot(resolve_robot_yaml(robot))
    adapter = build_adapter(config)
    parts = [a for _, a in getattr(adapter, "parts", [(None, adapter)])]
    limp = [a for a in parts if hasattr(a, "torque_off")]
    if not limp:
        raise CalibrationError(
            f"{config.name}: no part whose torque can be turned off (Feetech / Dynamixel servos); "
            "its joints cannot be moved by hand"
        )
    adapter.connect()
    try:
        for part in limp:
            part.torque_off()
        cal = calibrate_joints(adapter, wait_for_operator, hz=hz, min_travel=min_travel)
        names = list(adapter.spec.joint_names)
        ticks: dict[str, float] = {}
        for part in limp:
            idx = [names.index(j) for j in part.spec.joint_names]
            ticks.update(part.ticks_at(cal.zero_offset[idx]))
        cal = dataclasses.replace(cal, robot=config.name, offset_ticks=ticks)
    finally:
        adapter.disconnect()
    return cal, cal.save(results.result_path(config.name, "joints.yaml", root))
