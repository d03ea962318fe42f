"""Dynamixel arms and grippers (Protocol 2.0, X series; e.g. the Koch arm) via ``dynamixel-sdk``.

Registers (X-series control table): torque enable 64, hardware error status 70, goal position
116, present velocity 128 (0.229 rpm units) and present position 132, read together in one sync
read of 8 bytes. A status error byte with bit 7 set means a hardware alert: the adapter reads
Hardware Error Status and names the bits.
"""

from __future__ import annotations

from pathlib import Path

from wall_runtime.adapters.config import Connection
from wall_runtime.adapters.servo_bus import ServoBusArm
from wall_runtime.robot import RobotLinkError, RobotSpec

ADDR_HOMING_OFFSET = 20  # 4 bytes, signed; present = actual + homing offset
ADDR_OPERATING_MODE = 11
ADDR_TORQUE_ENABLE = 64
ADDR_HARDWARE_ERROR = 70
ADDR_GOAL_POSITION = 116
ADDR_PRESENT_VELOCITY = 128  # 4 bytes velocity + 4 bytes position
VELOCITY_UNIT_RPM = 0.229
PACKET_ERRORS = {
    1: "result fail",
    2: "instruction error",
    3: "CRC error",
    4: "data range",
    5: "data length",
    6: "data limit",
    7: "access error",
}
HARDWARE_ERRORS = {
    0x01: "input voltage",
    0x04: "overheating",
    0x08: "motor encoder",
    0x10: "electrical shock",
    0x20: "overload",
}


class DynamixelArm(ServoBusArm):
    packet_handler_arg = 2.0  # Protocol 2.0

    def __init__(self, spec: RobotSpec, connection: Connection, root: Path) -> None:
        super().__init__(spec, connection, root)
        import dynamixel_sdk  # lazy: only robots with a Dynamixel bus need it

        self._sdk = dynamixel_sdk
        self._hw_errors: dict[int, int] = {}
        # 3 = position control, 4 = extended position, 5 = current-based position (Koch grippers)
        modes = connection.raw("operating_modes", None)
        names = spec.joint_names
        if modes is None:
            self.operating_modes = {n: 3 for n in names}
        else:
            self.operating_modes = connection.per_joint("operating_modes", names, int)
        for jn, mode in self.operating_modes.items():
            if mode not in (3, 4, 5):
                raise ValueError(
                    f"connection.operating_modes.{jn}: {mode} is not a position mode (3, 4 or 5)"
                )

    def _sync_read_state(self) -> dict[int, tuple[int | None, int, float]]:
        self._ensure_open()
        sdk = self._sdk
        ids = self._id_list
        result = self._ph.syncReadTx(self._port, ADDR_PRESENT_VELOCITY, 8, ids, len(ids), False)
        if result != sdk.COMM_SUCCESS:
            raise RobotLinkError(f"{self.spec.name}: sync read not sent: {self._ph.getTxRxResult(result)}")
        out: dict[int, tuple[int | None, int, float]] = {sid: (None, 0, 0.0) for sid in ids}
        pending = set(ids)
        while pending:
            try:
                rx, result = self._ph.rxPacket(self._port, False)
            except IndexError:
                break
            if result != sdk.COMM_SUCCESS or len(rx) <= sdk.PKT_ID:
                break
            sid = rx[sdk.PKT_ID]
            data = rx[sdk.PKT_PARAMETER0 + 1 : sdk.PKT_PARAMETER0 + 9]
            if sid not in pending or len(data) < 8:
                continue
            pending.discard(sid)
            velocity = int.from_bytes(bytes(data[0:4]), "little", signed=True)
            position = int.from_bytes(bytes(data[4:8]), "little", signed=True)
            ticks_per_s = velocity * VELOCITY_UNIT_RPM / 60.0 * self.ticks_per_rev
            out[sid] = (position, rx[sdk.PKT_ERROR], ticks_per_s)
        # A hardware alert: fetch the detail while the bus is ours (one READ per alerting servo).
        self._hw_errors = {}
        for sid, (_, error, _) in out.items():
            if error & 0x80:
                value, result, _ = self._ph.read1ByteTxRx(self._port, sid, ADDR_HARDWARE_ERROR)
                if result == sdk.COMM_SUCCESS:
                    self._hw_errors[sid] = value
                out[sid] = (
                    out[sid][0],
                    error | (value << 8 if result == sdk.COMM_SUCCESS else 0),
                    out[sid][2],
                )
        return out

    def _sync_write_goal(self, ticks: dict[int, int]) -> None:
        self._ensure_open()
        group = self._sdk.GroupSyncWrite(self._port, self._ph, ADDR_GOAL_POSITION, 4)
        for sid, t in ticks.items():
            group.addParam(sid, list(int(t).to_bytes(4, "little", signed=True)))
        result = group.txPacket()
        if result != self._sdk.COMM_SUCCESS:
            raise RobotLinkError(f"{self.spec.name}: sync write failed: {self._ph.getTxRxResult(result)}")

    def _write_torque(self, servo_id: int, on: bool) -> int:
        self._ensure_open()
        result, error = self._ph.write1ByteTxRx(self._port, servo_id, ADDR_TORQUE_ENABLE, int(on))
        if result != self._sdk.COMM_SUCCESS:
            raise RobotLinkError(
                f"{self.spec.name}: servo {self.joint_of(servo_id)} (id {servo_id}) did not answer torque enable"
            )
        return error

    def _read_homing_offset(self, servo_id: int) -> int | None:
        value, result, _ = self._ph.read4ByteTxRx(self._port, servo_id, ADDR_HOMING_OFFSET)
        if result != self._sdk.COMM_SUCCESS:
            raise RobotLinkError(f"{self.spec.name}: servo id {servo_id} did not answer a homing offset read")
        return value - (1 << 32) if value & (1 << 31) else value

    def _configure(self) -> None:
        # Torque is off at this point (the servo refuses mode changes with torque on): a servo left
        # in velocity or PWM mode by another program would otherwise ignore goal positions.
        for name, mode in self.operating_modes.items():
            sid = self.ids[name]
            try:
                current, result, _ = self._ph.read1ByteTxRx(self._port, sid, ADDR_OPERATING_MODE)
            except IndexError:
                result = -1
            if result != self._sdk.COMM_SUCCESS:
                raise RobotLinkError(
                    f"{self.spec.name}: servo {name} (id {sid}) did not answer an operating-mode read"
                )
            if current != mode:
                self._write_torque(sid, False)
                self._ph.write1ByteTxRx(self._port, sid, ADDR_OPERATING_MODE, mode)

    def describe_error(self, error: int) -> str:
        # Low byte: the status packet's error byte; the next byte: Hardware Error Status (if read).
        parts = []
        if error & 0x7F:
            parts.append(PACKET_ERRORS.get(error & 0x7F, f"error {error & 0x7F}"))
        if error & 0x80:
            hw = error >> 8
            names = [n for bit, n in HARDWARE_ERRORS.items() if hw & bit]
            parts.append("hardware alert: " + (", ".join(names) or "unknown"))
        return "; ".join(parts) or f"error byte {error:#04x}"
