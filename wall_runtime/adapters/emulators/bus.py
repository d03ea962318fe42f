"""The pseudo-terminal, the reader thread and the servo physics shared by both protocols."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import sys
import threading
import time
import tty
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class ServoModel:
    """Where a servo family keeps things in its control table."""

    model_number: int
    model_number_addr: int
    torque_addr: int
    goal_addr: int
    present_pos_addr: int
    present_vel_addr: int
    pos_size: int  # bytes
    vel_size: int
    table_size: int
    ticks_per_rev: int = 4096
    min_angle_addr: int | None = None  # angle-limit registers, where the family has them
    max_angle_addr: int | None = None
    hw_error_addr: int | None = None


@dataclass
class EmulatedServo:
    id: int
    model: ServoModel
    position: float = 2048.0  # ticks
    speed: float = 3000.0  # ticks/s the servo moves at towards its goal
    silent: bool = False  # stops answering (unplugged, brown-out, broken cable)
    error_bits: int = 0  # the error byte every status packet carries
    table: bytearray = field(default_factory=bytearray)
    _t: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if not self.table:
            self.table = bytearray(self.model.table_size)
        self.write_int(self.model.model_number_addr, 2, self.model.model_number)
        self.write_int(self.model.goal_addr, self.model.pos_size, round(self.position))
        if self.model.min_angle_addr is not None and self.model.max_angle_addr is not None:
            self.write_int(self.model.min_angle_addr, 2, 0)
            self.write_int(self.model.max_angle_addr, 2, self.model.ticks_per_rev - 1)

    def read_int(self, addr: int, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.table[addr : addr + size], "little", signed=signed)

    def write_int(self, addr: int, size: int, value: int) -> None:
        self.table[addr : addr + size] = int(value).to_bytes(size, "little", signed=value < 0)

    @property
    def torque(self) -> bool:
        return bool(self.table[self.model.torque_addr])

    @property
    def goal(self) -> int:
        return self.read_int(self.model.goal_addr, self.model.pos_size, signed=self.model.pos_size == 4)

    def advance(self) -> None:
        """Move towards the goal at the servo's speed (only with torque on), update registers."""
        now = time.monotonic()
        dt, self._t = now - self._t, now
        velocity = 0.0
        if self.torque:
            err = self.goal - self.position
            step = max(-self.speed * dt, min(self.speed * dt, err))
            self.position += step
            velocity = step / dt if dt > 0 else 0.0
        self.encode_present(round(self.position), velocity)

    def encode_present(self, ticks: int, velocity: float) -> None:
        raise NotImplementedError


class BusEmulator:
    """A bus of servos behind a pty; subclasses parse and answer one protocol."""

    def __init__(self, servos: list[EmulatedServo]) -> None:
        self.servos = {s.id: s for s in servos}
        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._buf = bytearray()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.packets_seen = 0
        self.bad_checksums = 0

    def __enter__(self) -> BusEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"bus-emulator:{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self, control: int | None = None) -> None:
        """Serve the bus; ``control`` is a file descriptor carrying JSON-line fault commands."""
        watch = [self._master] + ([control] if control is not None else [])
        pending = b""
        while not self._stop.is_set():
            ready, _, _ = select.select(watch, [], [], 0.02)
            if control is not None and control in ready:
                data = os.read(control, 65536)
                if not data:
                    return  # the parent went away
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if not self._control(json.loads(line)):
                        return
            if self._master not in ready:
                continue
            try:
                chunk = os.read(self._master, 4096)
            except OSError:
                continue  # the adapter closed its end; keep serving for a reconnect
            self._buf.extend(chunk)
            while True:
                packet = self.take_packet(self._buf)
                if packet is None:
                    break
                self.packets_seen += 1
                with self.lock:
                    for servo in self.servos.values():
                        servo.advance()
                    replies = self.handle(packet)
                for reply in replies:
                    os.write(self._master, reply)

    def _control(self, msg: list) -> bool:
        op, sid, attr, value = msg
        reply = None
        if op == "stop":
            self._reply(None)
            return False
        with self.lock:
            servo = self.servos[sid]
            servo.advance()
            if op == "set":
                setattr(servo, attr, value)
            elif op == "get":
                reply = getattr(servo, attr)
            elif op == "register":
                reply = servo.read_int(attr, value, signed=value == 4)
            elif op == "poke":  # attr: address, value: [size, integer]
                servo.write_int(attr, value[0], value[1])
        self._reply(reply)
        return True

    @staticmethod
    def _reply(value: object) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    # protocol hooks -------------------------------------------------------------------------------

    def take_packet(self, buf: bytearray) -> object | None:
        """Remove and return the next complete, valid instruction packet from ``buf``."""
        raise NotImplementedError

    def handle(self, packet: object) -> list[bytes]:
        raise NotImplementedError


class EmulatorProcess:
    """A bus emulator in its own process, as real servos are: no GIL shared with the adapter.

    ``set(servo_id, "silent", True)``, ``set(servo_id, "error_bits", 0x20)``,
    ``get(servo_id, "goal")``, ``register(servo_id, addr, size)`` reach the servos as JSON lines
    over the child's stdin/stdout.
    """

    def __init__(self, protocol: str, servo_args: list[dict]) -> None:
        import subprocess
        from pathlib import Path

        # The child must import this same wall_runtime, wherever it was imported from.
        src = str(Path(__file__).resolve().parents[3])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "wall_runtime.adapters.emulators.serve", protocol, json.dumps(servo_args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self._proc.stdout.readline()
        if not line:
            self._proc.kill()
            raise RuntimeError(f"{protocol} bus emulator did not start")
        self.port: str = json.loads(line)

    def _call(self, *msg: object) -> object:
        self._proc.stdin.write(json.dumps(list(msg)) + "\n")
        self._proc.stdin.flush()
        return json.loads(self._proc.stdout.readline())

    def set(self, servo_id: int, attr: str, value: object) -> None:
        self._call("set", servo_id, attr, value)

    def get(self, servo_id: int, attr: str) -> object:
        return self._call("get", servo_id, attr, None)

    def register(self, servo_id: int, addr: int, size: int) -> int:
        return int(self._call("register", servo_id, addr, size))

    def poke(self, servo_id: int, addr: int, size: int, value: int) -> None:
        """Write a control-table register behind the adapter's back (another program did it)."""
        self._call("poke", servo_id, addr, [size, value])

    def stop(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(OSError, ValueError, json.JSONDecodeError):
                self._call("stop", 0, None, None)
            try:
                self._proc.wait(timeout=5)
            except Exception:
                self._proc.kill()
        for stream in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
