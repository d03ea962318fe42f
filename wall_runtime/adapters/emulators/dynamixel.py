"""Dynamixel Protocol 2.0 bus emulator (X series: XL330, XL430, XM430 — the Koch arm's servos).

Wire format: ``FF FF FD 00 ID LEN_L LEN_H INST PARAMS... CRC_L CRC_H`` with ``LEN`` counting
INST, PARAMS and the CRC; CRC-16 (polynomial 0x8005, initial 0, no reflection) over everything
before it; byte stuffing inserts ``FD`` after any ``FF FF FD`` inside the payload. Status packets
use INST 0x55 followed by the error byte (bit 7: hardware alert, see Hardware Error Status).
Implements PING, READ, WRITE, SYNC READ and SYNC WRITE; a packet with a bad CRC gets a status
with error 3 (CRC error) when unicast, nothing when broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass

from wall_runtime.adapters.emulators.bus import BusEmulator, EmulatedServo, EmulatorProcess, ServoModel

PING, READ, WRITE, SYNC_READ, SYNC_WRITE, STATUS = 0x01, 0x02, 0x03, 0x82, 0x83, 0x55
BROADCAST = 0xFE
ERR_RESULT_FAIL, ERR_INSTRUCTION, ERR_CRC, ERR_DATA_RANGE = 1, 2, 3, 4
ERR_ALERT = 0x80
HEADER = b"\xff\xff\xfd\x00"

XL430 = ServoModel(
    model_number=1060,
    model_number_addr=0,
    torque_addr=64,
    goal_addr=116,
    present_pos_addr=132,
    present_vel_addr=128,
    pos_size=4,
    vel_size=4,
    table_size=256,
    hw_error_addr=70,
)
VELOCITY_UNIT_RPM = 0.229


def crc16(data: bytes | bytearray) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def stuff(payload: bytes) -> bytes:
    out = bytearray()
    for b in payload:
        out.append(b)
        if b == 0xFD and len(out) >= 3 and out[-3:-1] == b"\xff\xff":
            out.append(0xFD)
    return bytes(out)


def unstuff(payload: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(payload):
        out.append(payload[i])
        if (
            payload[i] == 0xFD
            and len(out) >= 3
            and out[-3:-1] == b"\xff\xff"
            and i + 1 < len(payload)
            and payload[i + 1] == 0xFD
        ):
            i += 1  # skip the stuffed FD
        i += 1
    return bytes(out)


def encode_packet(servo_id: int, inst: int, params: bytes = b"", error: int | None = None) -> bytes:
    body = bytes([inst]) + (bytes([error]) if error is not None else b"") + params
    body = stuff(body)
    length = len(body) + 2
    head = HEADER + bytes([servo_id, length & 0xFF, length >> 8])
    crc = crc16(head + body)
    return head + body + bytes([crc & 0xFF, crc >> 8])


@dataclass
class Instruction:
    id: int
    inst: int
    params: bytes
    crc_ok: bool


class DynamixelServo(EmulatedServo):
    def __init__(self, id: int, position: float = 2048.0, operating_mode: int = 3, **kw) -> None:
        super().__init__(id=id, model=XL430, position=position, **kw)
        self.table[11] = operating_mode  # 1 velocity, 3 position, 4 extended position, 16 PWM

    @property
    def torque(self) -> bool:
        # goal positions only drive the servo in a position mode
        return bool(self.table[64]) and self.table[11] in (3, 4, 5)

    def encode_present(self, ticks: int, velocity: float) -> None:
        self.write_int(132, 4, ticks)
        units = round(velocity * 60.0 / 4096 / VELOCITY_UNIT_RPM)
        self.write_int(128, 4, units)

    @property
    def hardware_error(self) -> int:
        return self.table[70]

    @hardware_error.setter
    def hardware_error(self, bits: int) -> None:
        """Hardware Error Status bits (0 input voltage, 2 overheating, 3 encoder, 4 shock, 5 overload)."""
        self.table[70] = bits
        self.error_bits = (self.error_bits | ERR_ALERT) if bits else (self.error_bits & ~ERR_ALERT)
        if bits:
            self.table[64] = 0  # a hardware error switches the torque off, as on the real servo


class DynamixelBusEmulator(BusEmulator):
    def take_packet(self, buf: bytearray) -> Instruction | None:
        while True:
            start = buf.find(HEADER)
            if start < 0:
                del buf[: max(0, len(buf) - 3)]
                return None
            del buf[:start]
            if len(buf) < 7:
                return None
            length = buf[5] | (buf[6] << 8)
            total = 7 + length
            if len(buf) < total:
                return None
            raw = bytes(buf[:total])
            del buf[:total]
            crc_ok = crc16(raw[:-2]) == (raw[-2] | (raw[-1] << 8))
            if not crc_ok:
                self.bad_checksums += 1
            body = unstuff(raw[7:-2])
            return Instruction(id=raw[4], inst=body[0], params=body[1:], crc_ok=crc_ok)

    def _status(self, servo: EmulatedServo, params: bytes = b"", error: int | None = None) -> list[bytes]:
        if servo.silent:
            return []
        return [encode_packet(servo.id, STATUS, params, servo.error_bits if error is None else error)]

    def handle(self, packet: Instruction) -> list[bytes]:
        p = packet.params
        if not packet.crc_ok:
            servo = self.servos.get(packet.id)
            return [] if servo is None else self._status(servo, error=ERR_CRC)
        if packet.inst == SYNC_READ:
            addr, size = p[0] | (p[1] << 8), p[2] | (p[3] << 8)
            out: list[bytes] = []
            for sid in p[4:]:
                servo = self.servos.get(sid)
                if servo is not None:
                    out += self._status(servo, bytes(servo.table[addr : addr + size]))
            return out
        if packet.inst == SYNC_WRITE:
            addr, size = p[0] | (p[1] << 8), p[2] | (p[3] << 8)
            for k in range(4, len(p), size + 1):
                servo = self.servos.get(p[k])
                if servo is not None and not servo.silent:
                    self._write(servo, addr, p[k + 1 : k + 1 + size])
            return []
        servo = self.servos.get(packet.id)
        if servo is None:
            return []
        if packet.inst == PING:
            return self._status(
                servo, bytes([servo.model.model_number & 0xFF, servo.model.model_number >> 8, 52])
            )
        if packet.inst == READ:
            addr, size = p[0] | (p[1] << 8), p[2] | (p[3] << 8)
            return self._status(servo, bytes(servo.table[addr : addr + size]))
        if packet.inst == WRITE:
            addr = p[0] | (p[1] << 8)
            if not servo.silent:
                self._write(servo, addr, p[2:])
            return self._status(servo)
        return self._status(servo, error=ERR_INSTRUCTION)

    def _write(self, servo: EmulatedServo, addr: int, data: bytes) -> None:
        if addr == 64 and data[:1] == b"\x01" and servo.table[70]:
            return  # torque stays off until the hardware error is cleared (reboot)
        if addr < 64 and servo.table[64]:
            return  # EEPROM area (operating mode, limits...) is locked while torque is on
        servo.table[addr : addr + len(data)] = data


def make_bus(servo_args: list[dict]) -> DynamixelBusEmulator:
    """Build the bus from plain arguments (``[{"id": 1, "position": 2048}, ...]``), e.g. in a child process."""
    return DynamixelBusEmulator([DynamixelServo(**a) for a in servo_args])


def start_process(servo_args: list[dict]) -> EmulatorProcess:
    return EmulatorProcess("dynamixel", servo_args)
