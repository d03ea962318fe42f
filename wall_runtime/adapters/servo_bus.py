"""What Feetech and Dynamixel arms share: ticks <-> radians, sync read/write, faults, hold.

Each joint is one servo on a half-duplex serial bus. ``read_state`` is one SYNC READ of present
position and velocity (each servo answers in turn); ``command`` one SYNC WRITE of goal positions
(no answer, so it costs one packet on the wire). A servo that does not answer raises
:class:`RobotLinkError` naming it; a status packet with error bits raises
:class:`RobotFaultError` with the bits decoded. ``hold`` writes the last measured positions back
as goals, so it works even when a servo has gone silent.
"""

from __future__ import annotations

import abc
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.adapters.config import Connection, RobotConfigError
from wall_runtime.robot import (
    RobotAdapter,
    RobotFaultError,
    RobotLinkError,
    RobotNotConnectedError,
    RobotSpec,
)
from wall_runtime.types import RobotState

log = logging.getLogger(__name__)


def port_with_margin(base: type, margin_ms: float) -> type:
    """The SDK's PortHandler with ``margin_ms`` more patience per packet."""

    class _Port(base):  # type: ignore[misc, valid-type]
        def setPacketTimeout(self, packet_length: int) -> None:  # the SDK names it
            super().setPacketTimeout(packet_length)
            self.packet_timeout += margin_ms

    return _Port


def joint_calibration_file(robot: str) -> Path | None:
    """``calibration/<robot>/joints.yaml`` (the root: ``$WALL_RUNTIME_CALIBRATION``, else
    ``calibration`` in the working directory), if it exists."""
    root = Path(os.environ.get("WALL_RUNTIME_CALIBRATION", "calibration"))
    path = root / robot / "joints.yaml"
    return path if path.is_file() else None


def calibrated_offsets(path: Path, joints: tuple[str, ...] | list[str]) -> dict[str, float]:
    """The servo ticks at each joint's zero from a ``calibrate joints`` result (joints of this part
    only; a joint the file has no ticks for keeps robot.yaml's offset)."""
    from wall_runtime.calibration.joints import JointCalibration

    cal = JointCalibration.load(path)
    return {j: cal.offset_ticks[j] for j in joints if j in cal.offset_ticks}


class ServoBusArm(RobotAdapter):
    ticks_per_rev = 4096
    default_baudrate = 1_000_000

    def __init__(self, spec: RobotSpec, connection: Connection, root: Path) -> None:
        self.spec = spec
        names = spec.joint_names
        for j in spec.joints:
            if j.unit not in ("rad",):
                raise ValueError(f"joints.{j.name}.unit: a bus servo joint is in rad, not {j.unit}")
        self.port_name = connection.str("port")
        self.baudrate = connection.int("baudrate", self.default_baudrate, 9600, 10_000_001)
        self.ids = connection.per_joint("ids", names, int)
        for jn, sid in self.ids.items():
            if not 0 <= sid <= 252:
                raise ValueError(f"connection.ids.{jn}: servo id {sid} is outside 0..252")
        if len(set(self.ids.values())) != len(self.ids):
            raise ValueError("connection.ids: two joints share a servo id")
        # An arm calibrated with lerobot-calibrate: its JSON gives the offsets (and Feetech's
        # software direction) and the homing offsets the servos must hold (checked on connect).
        self.lerobot_calibration: dict[str, Any] | None = None
        lerobot_file = connection.raw("lerobot_calibration")
        if lerobot_file is not None:
            from wall_runtime.interop import lerobot_calibration

            where = f"{connection.where}.connection"
            for key in ("offsets", "directions"):
                if connection.raw(key) is not None:
                    raise RobotConfigError(
                        f"{where}.{key}: give either {key} or lerobot_calibration, not both"
                    )
            path = Path(lerobot_file).expanduser()
            path = path if path.is_absolute() else root / path
            try:
                offsets, directions, cal = lerobot_calibration.for_joints(
                    path, self.ids, self.software_drive_mode
                )
            except ValueError as exc:
                raise RobotConfigError(f"{where}.lerobot_calibration: {exc}") from None
            self.offsets, self.directions, self.lerobot_calibration = offsets, directions, cal
        else:
            self.offsets = connection.per_joint(
                "offsets", names, int, default={n: self.ticks_per_rev // 2 for n in names}
            )
            self.directions = connection.per_joint("directions", names, int, default={n: 1 for n in names})
            # `calibrate joints` results for this robot replace robot.yaml's offsets
            self.calibration_file = joint_calibration_file(spec.name.split(".")[0])
            if self.calibration_file is not None:
                self.offsets = {**self.offsets, **calibrated_offsets(self.calibration_file, names)}
                log.info("%s: joint offsets from %s", spec.name, self.calibration_file)
        for jn, d in self.directions.items():
            if d not in (1, -1):
                raise ValueError(f"connection.directions.{jn}: must be 1 or -1, got {d}")
        self.retries = connection.int("retries", 1, 0, 10)
        # Added to the SDK's packet timeout (2 x 16 ms USB latency + 2 ms): for long cables, slow
        # USB adapters, or emulators on a loaded machine.
        self.timeout_margin_ms = connection.int("timeout_margin_ms", 0, 0, 1001)
        self.disable_torque_on_disconnect = connection.bool("disable_torque_on_disconnect", False)
        self._id_list = [self.ids[n] for n in names]
        self._offset = np.array([self.offsets[n] for n in names], dtype=np.float64)
        self._dir = np.array([self.directions[n] for n in names], dtype=np.float64)
        self._scale = 2 * math.pi / self.ticks_per_rev
        self._connected = False
        self._bus_lock = threading.Lock()  # one transaction at a time on a half-duplex bus
        self._last_position: np.ndarray | None = None

    # -- unit conversion -------------------------------------------------------------------------

    def ticks_to_rad(self, ticks: np.ndarray) -> np.ndarray:
        return (np.asarray(ticks, dtype=np.float64) - self._offset) * self._scale * self._dir

    def rad_to_ticks(self, rad: np.ndarray) -> np.ndarray:
        ticks = np.rint(self._offset + np.asarray(rad) / self._scale * self._dir)
        return np.clip(ticks, 0, self.ticks_per_rev - 1).astype(np.int64)

    def ticks_at(self, rad: np.ndarray) -> dict[str, float]:
        """The (unrounded) servo ticks at these joint positions: offsets in robot.yaml's units."""
        ticks = self._offset + np.asarray(rad, dtype=np.float64) / self._scale * self._dir
        return {n: float(t) for n, t in zip(self.spec.joint_names, ticks, strict=True)}

    def torque_off(self) -> None:
        """Every servo limp, so the arm can be moved by hand (calibration)."""
        self._require()
        with self._bus_lock:
            for sid in self._id_list:
                self._write_torque(sid, False)

    def joint_of(self, servo_id: int) -> str:
        return next(n for n, i in self.ids.items() if i == servo_id)

    # -- the port (both vendor SDKs share the PortHandler / PacketHandler design) ---------------

    #: the vendor SDK module (``scservo_sdk`` / ``dynamixel_sdk``), set by the subclass
    _sdk: Any = None
    _port: Any = None
    _ph: Any = None
    #: what the SDK's PacketHandler is built with (protocol version or byte order)
    packet_handler_arg: float = 2.0
    #: whether LeRobot reverses a ``drive_mode: 1`` motor in software (Feetech) rather than the
    #: servo doing it through a register (Dynamixel)
    software_drive_mode: bool = False

    def _read_homing_offset(self, servo_id: int) -> int | None:
        """The servo's Homing_Offset register (None where the family has none)."""
        return None

    def _check_homing(self) -> None:
        """With a LeRobot calibration: each servo must hold the homing offset the file names, or
        its positions are not the ones the file's range was measured in."""
        if self.lerobot_calibration is None:
            return
        wrong = []
        for joint, cal in self.lerobot_calibration.items():
            held = self._read_homing_offset(cal.id)
            if held is not None and held != cal.homing_offset:
                wrong.append(f"{joint} (id {cal.id}) holds {held}, the file says {cal.homing_offset}")
        if wrong:
            raise RobotLinkError(
                f"{self.spec.name}: homing offsets differ from the LeRobot calibration: {'; '.join(wrong)} "
                "(calibrated with another file, or the servos were reset: run lerobot-calibrate again)"
            )

    def _open(self) -> None:
        sdk = self._sdk
        self._port = port_with_margin(sdk.PortHandler, self.timeout_margin_ms)(self.port_name)
        self._ph = sdk.PacketHandler(self.packet_handler_arg)
        try:
            opened = self._port.openPort() and self._port.setBaudRate(self.baudrate)
        except Exception as exc:  # pyserial raises SerialException for a missing device
            raise RobotLinkError(f"{self.spec.name}: cannot open {self.port_name}: {exc}") from None
        if not opened:
            raise RobotLinkError(f"{self.spec.name}: cannot open {self.port_name} at {self.baudrate} baud")
        # The SDK polls a non-blocking port in a tight loop; a 1 ms read timeout lets it sleep in
        # the kernel instead (same packet timeouts, no core burnt while the servos answer).
        self._port.ser.timeout = 0.001

    def _close(self) -> None:
        if self._port is not None and self._port.is_open:
            self._port.closePort()

    def _ensure_open(self) -> None:
        if self._port is None or not self._port.is_open:
            raise RobotLinkError(
                f"{self.spec.name}: {self.port_name} is closed (link dropped); call connect()"
            )

    def _ping(self, servo_id: int) -> tuple[bool, int, int]:
        """(answered, model number, error byte)."""
        try:
            model, result, error = self._ph.ping(self._port, servo_id)
        except IndexError:  # the SDK indexes into a truncated packet: line noise, not an answer
            return False, 0, 0
        return result == self._sdk.COMM_SUCCESS, model, error

    # -- protocol hooks (one vendor SDK each) ----------------------------------------------------

    @abc.abstractmethod
    def _sync_read_state(self) -> dict[int, tuple[int | None, int, float]]:
        """servo id -> (present ticks or None when silent, error byte, velocity in ticks/s)."""

    @abc.abstractmethod
    def _sync_write_goal(self, ticks: dict[int, int]) -> None: ...

    @abc.abstractmethod
    def _write_torque(self, servo_id: int, on: bool) -> int:
        """Returns the status error byte; raises RobotLinkError when the servo is silent."""

    @abc.abstractmethod
    def describe_error(self, error: int) -> str: ...

    def _configure(self) -> None:
        """Per-family set-up written while torque is still off (operating mode, ...)."""

    # -- contract --------------------------------------------------------------------------------

    def connect(self) -> None:
        with self._bus_lock:
            if self._connected:
                self._close()
                self._connected = False
            self._open()
            try:
                missing = []
                for name, sid in self.ids.items():
                    for _ in range(self.retries + 1):
                        answered, model, _ = self._ping(sid)
                        if answered:
                            break
                    if not answered:
                        missing.append(f"{name} (id {sid})")
                    else:
                        log.debug("%s: servo %d model %d", self.spec.name, sid, model)
                if missing:
                    raise RobotLinkError(
                        f"{self.spec.name}: no answer on {self.port_name} from servo(s) {', '.join(missing)}"
                    )
                self._check_homing()
                self._connected = True
                self._configure()
                # Goal := present before torque on, so enabling torque never jumps the arm.
                position = self._read_locked().position
                self._sync_write_goal(
                    dict(zip(self._id_list, self.rad_to_ticks(position).tolist(), strict=False))
                )
                for sid in self._id_list:
                    self._write_torque(sid, True)
            except Exception:
                self._connected = False
                self._close()
                raise

    def disconnect(self) -> None:
        if not self._connected:
            return
        with self._bus_lock:
            try:
                if self._last_position is not None:
                    self._sync_write_goal(
                        dict(
                            zip(self._id_list, self.rad_to_ticks(self._last_position).tolist(), strict=False)
                        )
                    )
                if self.disable_torque_on_disconnect:
                    for sid in self._id_list:
                        try:
                            self._write_torque(sid, False)
                        except RobotLinkError:
                            log.warning("%s: servo %d did not confirm torque off", self.spec.name, sid)
            finally:
                self._connected = False
                self._close()

    def _require(self) -> None:
        if not self._connected:
            raise RobotNotConnectedError(f"{self.spec.name}: not connected")

    def read_state(self) -> RobotState:
        self._require()
        with self._bus_lock:
            return self._read_locked()

    def _read_locked(self) -> RobotState:
        for attempt in range(self.retries + 1):
            result = self._sync_read_state()
            silent = [sid for sid in self._id_list if result.get(sid, (None,))[0] is None]
            if not silent:
                break
            if attempt == self.retries:
                # Keep what the answering servos said: hold() then holds them where they are now.
                if self._last_position is not None:
                    fresh = np.array([result.get(sid, (None,))[0] is not None for sid in self._id_list])
                    ticks = np.array(
                        [result[sid][0] if ok else 0 for sid, ok in zip(self._id_list, fresh, strict=True)]
                    )
                    self._last_position = np.where(fresh, self.ticks_to_rad(ticks), self._last_position)
                names = ", ".join(f"{self.joint_of(s)} (id {s})" for s in silent)
                raise RobotLinkError(
                    f"{self.spec.name}: servo(s) {names} did not answer on {self.port_name} "
                    f"({self.retries + 1} tries); the others keep their last goal, call hold()"
                )
        stamp = time.monotonic()
        faults = [(sid, result[sid][1]) for sid in self._id_list if result[sid][1]]
        ticks = np.array([result[sid][0] for sid in self._id_list], dtype=np.float64)
        position = self.ticks_to_rad(ticks)
        velocity = np.array([result[sid][2] for sid in self._id_list]) * self._scale * self._dir
        self._last_position = position
        if faults:
            desc = "; ".join(f"{self.joint_of(s)} (id {s}): {self.describe_error(e)}" for s, e in faults)
            raise RobotFaultError(f"{self.spec.name}: servo error {desc}")
        return RobotState(stamp=stamp, position=position, velocity=velocity)

    def command(self, target: np.ndarray) -> None:
        target = self.spec.validate_target(target)
        self._require()
        ticks = self.rad_to_ticks(self.spec.clamp(target))
        with self._bus_lock:
            self._sync_write_goal(dict(zip(self._id_list, ticks.tolist(), strict=False)))

    def hold(self) -> None:
        self._require()
        with self._bus_lock:
            try:
                position = self._read_locked().position
            except (RobotLinkError, RobotFaultError) as exc:
                # Still hold: the positions last measured are where the arm is or very near.
                log.warning("%s: holding at the last measured position: %s", self.spec.name, exc)
                position = self._last_position
            if position is None:
                raise RobotLinkError(f"{self.spec.name}: no position ever read, cannot hold")
            self._sync_write_goal(
                dict(zip(self._id_list, self.rad_to_ticks(self.spec.clamp(position)).tolist(), strict=False))
            )

    def inject_fault(self, fault: str) -> None:
        """Drop the link (closes the port under the adapter's feet) for the conformance kit."""
        if fault != "link_drop":
            raise ValueError(f"unknown fault {fault!r} (known: link_drop)")
        with self._bus_lock:
            self._close()
