"""AgileX UGV bases (Scout 2.0, Scout Mini, Tracer) over CAN, protocol V2, with python-can.

The protocol is small enough that no vendor SDK is needed on the robot host: 0x421 selects CAN
command mode, 0x111 carries the motion command (int16 big-endian: linear mm/s, angular
0.001 rad/s), 0x211 the system state (vehicle state: 0 normal, 1 e-stop, 2 exception; control
mode; battery; error code) and 0x221 the measured motion state. The firmware stops the base when
motion commands stop; this adapter refuses to report a state older than ``feedback_timeout_s``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from wall_runtime.adapters.config import Connection
from wall_runtime.robot import (
    RobotAdapter,
    RobotFaultError,
    RobotLinkError,
    RobotNotConnectedError,
    RobotSpec,
)
from wall_runtime.types import RobotState

MOTION_COMMAND, CONTROL_MODE, SYSTEM_STATE, MOTION_STATE = 0x111, 0x421, 0x211, 0x221


def encode_motion(linear: float, angular: float) -> bytes:
    lin = round(float(np.clip(linear * 1000.0, -32768, 32767)))
    ang = round(float(np.clip(angular * 1000.0, -32768, 32767)))
    return lin.to_bytes(2, "big", signed=True) + ang.to_bytes(2, "big", signed=True) + bytes(4)


def decode_motion(data: bytes) -> tuple[float, float]:
    return int.from_bytes(data[0:2], "big", signed=True) / 1000.0, int.from_bytes(
        data[2:4], "big", signed=True
    ) / 1000.0


class AgilexBase(RobotAdapter):
    def __init__(self, spec: RobotSpec, connection: Connection, root: Path) -> None:
        self.spec = spec
        kinds = [j.kind for j in spec.joints]
        if sorted(kinds) != ["base_angular", "base_linear"]:
            raise ValueError(
                f"{spec.name}: an AgileX base part drives exactly one base_linear and one base_angular joint"
            )
        self._lin = kinds.index("base_linear")
        self._ang = kinds.index("base_angular")
        self.channel = connection.str("channel", "can0")
        self.interface = connection.str("interface", "socketcan")
        self.bitrate = connection.int("bitrate", 500_000, 10_000, 1_000_001)
        self.feedback_timeout_s = connection.float("feedback_timeout_s", 0.2)
        self._bus = None
        self._connected = False
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._motion: tuple[float, float, float] | None = None  # (stamp, linear, angular)
        self._system: tuple[float, int, int, int] | None = None  # (stamp, state, mode, error)

    def _send(self, arbitration_id: int, data: bytes) -> None:
        import can

        try:
            self._bus.send(
                can.Message(arbitration_id=arbitration_id, data=data.ljust(8, b"\x00"), is_extended_id=False)
            )
        except (can.CanError, AttributeError) as exc:
            raise RobotLinkError(f"{self.spec.name}: CAN send on {self.channel} failed: {exc}") from None

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._bus.recv(timeout=0.05)
            except Exception:
                return
            if msg is None:
                continue
            now = time.monotonic()
            if msg.arbitration_id == MOTION_STATE:
                self._motion = (now, *decode_motion(msg.data))
            elif msg.arbitration_id == SYSTEM_STATE:
                self._system = (now, msg.data[0], msg.data[1], int.from_bytes(msg.data[4:6], "big"))

    def connect(self) -> None:
        import can

        if self._connected:
            self._close()
        try:
            self._bus = can.Bus(interface=self.interface, channel=self.channel, bitrate=self.bitrate)
        except (can.CanError, OSError, ValueError) as exc:
            raise RobotLinkError(
                f"{self.spec.name}: cannot open CAN {self.interface}:{self.channel}: {exc}"
            ) from None
        self._motion = self._system = None
        self._stop.clear()
        self._reader = threading.Thread(target=self._read_loop, name=f"agilex:{self.channel}", daemon=True)
        self._reader.start()
        self._send(CONTROL_MODE, bytes([0x01]))
        deadline = time.monotonic() + 1.0
        while self._motion is None or self._system is None:
            if time.monotonic() > deadline:
                self._close()
                raise RobotLinkError(
                    f"{self.spec.name}: no feedback from the base on {self.channel} within 1 s"
                )
            time.sleep(0.005)
        self._connected = True
        self._send(MOTION_COMMAND, encode_motion(0.0, 0.0))

    def _close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=1.0)
            self._reader = None
        if self._bus is not None:
            self._bus.shutdown()
            self._bus = None
        self._connected = False

    def disconnect(self) -> None:
        if not self._connected:
            return
        try:
            self._send(MOTION_COMMAND, encode_motion(0.0, 0.0))
        finally:
            self._close()

    def read_state(self) -> RobotState:
        if not self._connected:
            raise RobotNotConnectedError(f"{self.spec.name}: not connected")
        now = time.monotonic()
        motion, system = self._motion, self._system
        if motion is None or now - motion[0] > self.feedback_timeout_s:
            age = "never" if motion is None else f"{(now - motion[0]) * 1e3:.0f} ms ago"
            raise RobotLinkError(f"{self.spec.name}: no motion feedback on {self.channel} (last {age})")
        state, error = (system[1], system[3]) if system is not None else (0, 0)
        if state == 0x02:
            raise RobotFaultError(f"{self.spec.name}: base reports an exception, error code {error:#06x}")
        position = np.zeros(2)
        position[self._lin], position[self._ang] = motion[1], motion[2]
        return RobotState(stamp=motion[0], position=position, velocity=None, estop=state == 0x01)

    def command(self, target: np.ndarray) -> None:
        target = self.spec.clamp(self.spec.validate_target(target))
        if not self._connected:
            raise RobotNotConnectedError(f"{self.spec.name}: not connected")
        motion = self._motion
        if motion is None or time.monotonic() - motion[0] > self.feedback_timeout_s:
            # Frames may still leave the socket on a dead bus; never drive a base blind.
            raise RobotLinkError(
                f"{self.spec.name}: no fresh feedback on {self.channel}; not commanding blind"
            )
        self._send(MOTION_COMMAND, encode_motion(target[self._lin], target[self._ang]))

    def hold(self) -> None:
        if not self._connected:
            raise RobotNotConnectedError(f"{self.spec.name}: not connected")
        self._send(MOTION_COMMAND, encode_motion(0.0, 0.0))

    def inject_fault(self, fault: str) -> None:
        """Close the CAN bus under the adapter (the conformance kit's dropped link)."""
        if fault != "link_drop":
            raise ValueError(f"unknown fault {fault!r} (known: link_drop)")
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=1.0)
        self._motion = None
