"""SO-100 / SO-101 arms: Feetech STS3215 servos on one serial bus, through ``scservo_sdk``.

``feetech-servo-sdk``'s ``GroupSyncRead`` drops each servo's error byte, so the sync read is
issued with the SDK's packet handler directly (``syncReadTx`` then ``readRx`` per servo), which
keeps it. Registers (STS3215 control table): torque enable 40, goal position 42, present
position 56 (+ present speed 58, sign in bit 15).
"""

from __future__ import annotations

from pathlib import Path

from wall_runtime.adapters.config import Connection
from wall_runtime.adapters.servo_bus import ServoBusArm
from wall_runtime.robot import RobotLinkError, RobotSpec

ADDR_HOMING_OFFSET = 31  # 2 bytes, sign in bit 11; present = actual - homing offset
ADDR_TORQUE_ENABLE = 40
ADDR_GOAL_POSITION = 42
ADDR_PRESENT_POSITION = 56  # 2 bytes position + 2 bytes speed
ERROR_BITS = {
    0x01: "input voltage",
    0x02: "angle limit",
    0x04: "overheat",
    0x08: "overcurrent",
    0x20: "overload",
}


def _from_sign_magnitude(value: int, bit: int) -> int:
    return -(value & ~(1 << bit)) if value & (1 << bit) else value


class FeetechArm(ServoBusArm):
    packet_handler_arg = 0  # STS series: little-endian words
    software_drive_mode = True  # LeRobot reverses a drive_mode 1 Feetech motor itself

    def __init__(self, spec: RobotSpec, connection: Connection, root: Path) -> None:
        super().__init__(spec, connection, root)
        import scservo_sdk  # lazy: only robots with a Feetech bus need it

        self._sdk = scservo_sdk

    def _sync_read_state(self) -> dict[int, tuple[int | None, int, float]]:
        self._ensure_open()
        sdk = self._sdk
        ids = self._id_list
        result = self._ph.syncReadTx(self._port, ADDR_PRESENT_POSITION, 4, ids, len(ids))
        if result != sdk.COMM_SUCCESS:
            raise RobotLinkError(f"{self.spec.name}: sync read not sent: {self._ph.getTxRxResult(result)}")
        # Collect status packets by id until all answered or the SDK's packet timeout runs out:
        # a silent servo must not make the answers of the servos after it look lost too.
        out: dict[int, tuple[int | None, int, float]] = {sid: (None, 0, 0.0) for sid in ids}
        pending = set(ids)
        while pending:
            try:
                rx, result = self._ph.rxPacket(self._port)
            except IndexError:
                break
            if result != sdk.COMM_SUCCESS or len(rx) <= sdk.PKT_ID:
                break
            sid = rx[sdk.PKT_ID]
            data = rx[sdk.PKT_PARAMETER0 : sdk.PKT_PARAMETER0 + 4]
            if sid not in pending or len(data) < 4:
                continue
            pending.discard(sid)
            position = data[0] | (data[1] << 8)
            speed = _from_sign_magnitude(data[2] | (data[3] << 8), 15)
            out[sid] = (position, rx[sdk.PKT_ERROR], float(speed))
        return out

    def _sync_write_goal(self, ticks: dict[int, int]) -> None:
        self._ensure_open()
        group = self._sdk.GroupSyncWrite(self._port, self._ph, ADDR_GOAL_POSITION, 2)
        for sid, t in ticks.items():
            group.addParam(sid, [t & 0xFF, (t >> 8) & 0xFF])
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
        value, result, _ = self._ph.read2ByteTxRx(self._port, servo_id, ADDR_HOMING_OFFSET)
        if result != self._sdk.COMM_SUCCESS:
            raise RobotLinkError(f"{self.spec.name}: servo id {servo_id} did not answer a homing offset read")
        return _from_sign_magnitude(value, 11)

    def describe_error(self, error: int) -> str:
        names = [name for bit, name in ERROR_BITS.items() if error & bit]
        return ", ".join(names) or f"error byte {error:#04x}"
