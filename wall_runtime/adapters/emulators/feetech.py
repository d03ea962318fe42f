"""Feetech STS/SCS bus emulator (the SO-100/SO-101 servos, STS3215).

Wire format: ``FF FF ID LEN INSTR PARAMS... CHK`` with ``LEN = len(PARAMS) + 2`` and
``CHK = ~(ID + LEN + INSTR + sum(PARAMS)) & 0xFF``; status packets carry the servo's error byte
in place of INSTR. Implements PING, READ, WRITE, SYNC READ (each addressed servo answers in turn)
and SYNC WRITE (no answer). Packets with a bad checksum are dropped, as the servos do.
"""

from __future__ import annotations

from dataclasses import dataclass

from wall_runtime.adapters.emulators.bus import BusEmulator, EmulatedServo, EmulatorProcess, ServoModel

PING, READ, WRITE, SYNC_READ, SYNC_WRITE = 0x01, 0x02, 0x03, 0x82, 0x83
BROADCAST = 0xFE
# Status error bits (STS series).
ERR_VOLTAGE, ERR_ANGLE, ERR_OVERHEAT, ERR_OVERCURRENT, ERR_OVERLOAD = 0x01, 0x02, 0x04, 0x08, 0x20

STS3215 = ServoModel(
    model_number=777,
    model_number_addr=3,
    torque_addr=40,
    goal_addr=42,
    present_pos_addr=56,
    present_vel_addr=58,
    pos_size=2,
    vel_size=2,
    table_size=128,
    min_angle_addr=9,
    max_angle_addr=11,
)


def checksum(body: bytes | bytearray) -> int:
    return ~sum(body) & 0xFF


def encode_packet(servo_id: int, instr_or_error: int, params: bytes = b"") -> bytes:
    body = bytes([servo_id, len(params) + 2, instr_or_error]) + params
    return b"\xff\xff" + body + bytes([checksum(body)])


def sign_magnitude(value: int, bit: int) -> int:
    """Feetech's signed registers: bit ``bit`` is the sign, the rest the magnitude."""
    return (abs(value) | (1 << bit)) if value < 0 else value


@dataclass
class Instruction:
    id: int
    instr: int
    params: bytes


HOMING_OFFSET_ADDR = 31  # sign-magnitude, bit 11


class FeetechServo(EmulatedServo):
    """An STS3215: positions on the wire are homed, ``present = actual - Homing_Offset`` (and a
    goal is reached at ``actual = goal + Homing_Offset``), as LeRobot's calibration relies on.
    ``position`` is the actual (unhomed) position in ticks."""

    def __init__(self, id: int, position: float = 2048.0, homing_offset: int = 0, **kw) -> None:
        super().__init__(id=id, model=STS3215, position=position, **kw)
        self.write_int(HOMING_OFFSET_ADDR, 2, sign_magnitude(homing_offset, 11))
        self.write_int(STS3215.goal_addr, 2, max(0, min(4095, round(position) - homing_offset)))

    @property
    def homing_offset(self) -> int:
        raw = self.read_int(HOMING_OFFSET_ADDR, 2)
        return -(raw & ~(1 << 11)) if raw & (1 << 11) else raw

    @property
    def goal(self) -> int:
        return super().goal + self.homing_offset

    def encode_present(self, ticks: int, velocity: float) -> None:
        self.write_int(56, 2, max(0, min(4095, ticks - self.homing_offset)))
        self.write_int(58, 2, sign_magnitude(round(velocity), 15))


class FeetechBusEmulator(BusEmulator):
    def take_packet(self, buf: bytearray) -> Instruction | None:
        while True:
            start = buf.find(b"\xff\xff")
            if start < 0:
                del buf[:-1]
                return None
            del buf[:start]
            if len(buf) < 4:
                return None
            if buf[2] == 0xFF:  # a third FF: the header starts one byte later
                del buf[0]
                continue
            length = buf[3]
            total = length + 4
            if len(buf) < total:
                return None
            body, chk = bytes(buf[2 : total - 1]), buf[total - 1]
            del buf[:total]
            if checksum(body) != chk:
                self.bad_checksums += 1
                continue
            return Instruction(id=body[0], instr=body[2], params=body[3:])

    def _status(self, servo: EmulatedServo, params: bytes = b"") -> list[bytes]:
        if servo.silent:
            return []
        return [encode_packet(servo.id, servo.error_bits, params)]

    def handle(self, packet: Instruction) -> list[bytes]:
        p = packet.params
        if packet.instr == SYNC_READ:
            addr, size, ids = p[0], p[1], p[2:]
            out: list[bytes] = []
            for sid in ids:
                servo = self.servos.get(sid)
                if servo is not None:
                    out += self._status(servo, bytes(servo.table[addr : addr + size]))
            return out
        if packet.instr == SYNC_WRITE:
            addr, size = p[0], p[1]
            for k in range(2, len(p), size + 1):
                servo = self.servos.get(p[k])
                if servo is not None and not servo.silent:
                    self._write(servo, addr, p[k + 1 : k + 1 + size])
            return []
        servo = self.servos.get(packet.id)
        if servo is None:
            return []  # nobody at this id: silence, as on a real bus
        if packet.instr == PING:
            return self._status(servo)
        if packet.instr == READ:
            addr, size = p[0], p[1]
            return self._status(servo, bytes(servo.table[addr : addr + size]))
        if packet.instr == WRITE:
            if not servo.silent:
                self._write(servo, p[0], p[1:])
            return [] if packet.id == BROADCAST else self._status(servo)
        return []

    def _write(self, servo: EmulatedServo, addr: int, data: bytes) -> None:
        servo.table[addr : addr + len(data)] = data
        if addr <= STS3215.goal_addr < addr + len(data):
            lo, hi = servo.read_int(9, 2), servo.read_int(11, 2)
            goal = servo.read_int(42, 2)
            if not lo <= goal <= hi:
                # The servo refuses to go past its angle limits and flags it.
                servo.write_int(42, 2, max(lo, min(hi, goal)))
                servo.error_bits |= ERR_ANGLE


def make_bus(servo_args: list[dict]) -> FeetechBusEmulator:
    """Build the bus from plain arguments (``[{"id": 1, "position": 2048}, ...]``), e.g. in a child process."""
    return FeetechBusEmulator([FeetechServo(**a) for a in servo_args])


def start_process(servo_args: list[dict]) -> EmulatorProcess:
    return EmulatorProcess("feetech", servo_args)
