"""CAN devices on python-can's virtual bus: an AgileX UGV base and an AgileX Piper arm.

Each one listens on a ``virtual`` channel (every ``can.Bus(interface="virtual", channel=X)`` in
the process shares traffic) and answers as the device's firmware does: it applies control frames
and publishes feedback frames periodically. Faults: ``silent`` (stops publishing: a pulled CAN
cable), ``estop`` (the base's e-stop input).
"""

from __future__ import annotations

import math
import threading
import time

import can


class _CanDevice:
    feedback_hz = 100.0

    def __init__(self, channel: str) -> None:
        self.bus = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        self.silent = False
        self.frames_in = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"can-device:{channel}", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.bus.shutdown()

    def _run(self) -> None:
        period = 1.0 / self.feedback_hz
        next_t = time.monotonic()
        last = time.monotonic()
        while not self._stop.is_set():
            msg = self.bus.recv(timeout=max(0.0, next_t - time.monotonic()))
            if msg is not None:
                self.frames_in += 1
                with self._lock:
                    self.on_frame(msg)
            now = time.monotonic()
            if now >= next_t:
                with self._lock:
                    self.advance(now - last)
                    last = now
                    frames = [] if self.silent else self.feedback()
                for f in frames:
                    self.bus.send(f)
                next_t += period

    def on_frame(self, msg: can.Message) -> None:
        raise NotImplementedError

    def advance(self, dt: float) -> None:
        raise NotImplementedError

    def feedback(self) -> list[can.Message]:
        raise NotImplementedError


def _frame(arbitration_id: int, data: bytes) -> can.Message:
    return can.Message(arbitration_id=arbitration_id, data=data.ljust(8, b"\x00"), is_extended_id=False)


class AgilexBaseDevice(_CanDevice):
    """AgileX UGV (Scout 2.0 / Scout Mini / Tracer) on protocol V2, 500 kbit/s.

    0x421 control-mode select (byte 0 = 1: CAN command mode); 0x111 motion command (int16
    big-endian: linear mm/s, angular 0.001 rad/s); 0x211 system state (vehicle state, control
    mode, battery 0.1 V, error code, count); 0x221 motion state (same scaling as 0x111). Like the
    firmware, it stops when motion commands stop for ``timeout_s`` and refuses motion while its
    e-stop is engaged.
    """

    feedback_hz = 50.0

    def __init__(self, channel: str, accel: float = 1.5, timeout_s: float = 0.5) -> None:
        super().__init__(channel)
        self.can_mode = False
        self.estop = False
        self.commanded = (0.0, 0.0)
        self.velocity = [0.0, 0.0]  # linear m/s, angular rad/s
        self.accel = accel
        self.timeout_s = timeout_s
        self.last_command = 0.0
        self.count = 0

    def on_frame(self, msg: can.Message) -> None:
        if msg.arbitration_id == 0x421:
            self.can_mode = msg.data[0] == 0x01
        elif msg.arbitration_id == 0x111 and self.can_mode:
            lin = int.from_bytes(msg.data[0:2], "big", signed=True) / 1000.0
            ang = int.from_bytes(msg.data[2:4], "big", signed=True) / 1000.0
            self.commanded = (lin, ang)
            self.last_command = time.monotonic()

    def advance(self, dt: float) -> None:
        target = self.commanded
        if self.estop or not self.can_mode or time.monotonic() - self.last_command > self.timeout_s:
            target = (0.0, 0.0)
        for k in range(2):
            step = self.accel * dt * (3.0 if k else 1.0)
            self.velocity[k] += max(-step, min(step, target[k] - self.velocity[k]))

    def feedback(self) -> list[can.Message]:
        self.count = (self.count + 1) & 0xFF
        state = 0x01 if self.estop else 0x00
        mode = 0x01 if self.can_mode else 0x00
        system = bytes([state, mode]) + (264).to_bytes(2, "big") + b"\x00\x00\x00" + bytes([self.count])
        lin = round(self.velocity[0] * 1000).to_bytes(2, "big", signed=True)
        ang = round(self.velocity[1] * 1000).to_bytes(2, "big", signed=True)
        return [_frame(0x211, system), _frame(0x221, lin + ang)]


class PiperArmDevice(_CanDevice):
    """AgileX Piper arm: joint control 0x155-0x157 (int32 big-endian, 0.001 deg, two joints each),
    gripper control 0x159 (int32 0.001 mm), motion control 0x151 (byte 0 = 1: CAN command mode,
    byte 2: speed percent), motor enable 0x471; feedback 0x2A5-0x2A7 joints, 0x2A8 gripper,
    0x2A1 status. Joints move towards their targets at ``speed_percent`` of ``max_speed``."""

    feedback_hz = 200.0

    def __init__(self, channel: str, max_speed_rad_s: float = 3.0) -> None:
        super().__init__(channel)
        self.enabled = False
        self.can_mode = False
        self.speed_percent = 50
        self.max_speed = max_speed_rad_s
        self.joints = [0.0] * 6  # rad
        self.targets = [0.0] * 6
        self.gripper = 0.0  # m
        self.gripper_target = 0.0

    def on_frame(self, msg: can.Message) -> None:
        d, i = msg.data, msg.arbitration_id
        if i == 0x471:
            # motor number (7 = all), enable flag 0x02 / disable 0x01
            self.enabled = d[1] == 0x02
        elif i == 0x151:
            self.can_mode = d[0] == 0x01
            self.speed_percent = max(1, min(100, d[2]))
        elif i in (0x155, 0x156, 0x157) and self.enabled and self.can_mode:
            k = (i - 0x155) * 2
            for n in range(2):
                mdeg = int.from_bytes(d[4 * n : 4 * n + 4], "big", signed=True)
                self.targets[k + n] = math.radians(mdeg / 1000.0)
        elif i == 0x159 and self.enabled:
            self.gripper_target = int.from_bytes(d[0:4], "big", signed=True) / 1e6

    def advance(self, dt: float) -> None:
        if not self.enabled:
            return
        step = self.max_speed * self.speed_percent / 100.0 * dt
        for k in range(6):
            self.joints[k] += max(-step, min(step, self.targets[k] - self.joints[k]))
        gstep = 0.1 * dt
        self.gripper += max(-gstep, min(gstep, self.gripper_target - self.gripper))

    def feedback(self) -> list[can.Message]:
        mdeg = [round(math.degrees(q) * 1000).to_bytes(4, "big", signed=True) for q in self.joints]
        status = bytes([0x01 if self.can_mode else 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00])
        grip = (
            round(self.gripper * 1e6).to_bytes(4, "big", signed=True)
            + b"\x00\x00"
            + bytes([0x40 if self.enabled else 0])
        )
        return [
            _frame(0x2A1, status),
            _frame(0x2A5, mdeg[0] + mdeg[1]),
            _frame(0x2A6, mdeg[2] + mdeg[3]),
            _frame(0x2A7, mdeg[4] + mdeg[5]),
            _frame(0x2A8, grip),
        ]
