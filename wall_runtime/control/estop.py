"""The e-stop: latched until an explicit reset, from any of several sources.

Sources: a signal (SIGINT, i.e. Ctrl-C), a key press on the terminal, a trigger file (its
existence asserts the stop: ``touch /tmp/wall-estop``), a local UNIX datagram socket (send
``estop``; ``reset`` is the explicit reset), and the robot's hardware input (``RobotState.estop``).
A reset is refused while a source still asserts the stop (the file still exists, the hardware
button is still pressed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import IO

from wall_runtime.types import RobotState

log = logging.getLogger(__name__)


class EStop:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engaged = False
        self.reason: str | None = None
        self.engaged_at: float | None = None
        self.triggers = 0
        self.sources: list[EStopSource] = []
        self._hardware_asserted = False
        self._reset_requested = False

    @property
    def engaged(self) -> bool:
        return self._engaged

    def trigger(self, reason: str) -> None:
        with self._lock:
            if self._engaged:
                return
            self._engaged = True
            self.reason = reason
            self.engaged_at = time.monotonic()
            self.triggers += 1
        log.error("E-STOP: %s (latched until reset)", reason)

    def asserted_by(self) -> list[str]:
        """Sources that still assert the stop right now."""
        out = [s.name for s in self.sources if s.asserted()]
        if self._hardware_asserted:
            out.append("hardware e-stop input")
        return out

    def reset(self) -> bool:
        """Clear the latch; refused (False) while a source still asserts the stop."""
        holding = self.asserted_by()
        if holding:
            log.warning("e-stop reset refused: still asserted by %s", ", ".join(holding))
            return False
        with self._lock:
            was = self._engaged
            self._engaged = False
            self.reason = None
        if was:
            log.warning("e-stop reset")
        return True

    def request_reset(self) -> None:
        """A reset asked for from another thread or process (the socket); the loop applies it."""
        self._reset_requested = True

    def poll(self, state: RobotState | None = None) -> None:
        """Called every tick by the control loop: polls the sources and the hardware input."""
        if state is not None:
            self._hardware_asserted = bool(state.estop)
            if state.estop:
                self.trigger("hardware e-stop input")
        for source in self.sources:
            source.poll(self)
        if self._reset_requested:
            self._reset_requested = False
            self.reset()

    def add(self, source: EStopSource) -> EStopSource:
        self.sources.append(source)
        source.start(self)
        return source

    def close(self) -> None:
        for source in self.sources:
            source.close()
        self.sources = []


class EStopSource:
    name = "source"

    def start(self, estop: EStop) -> None:
        """Begin listening (push sources install handlers or threads here)."""

    def poll(self, estop: EStop) -> None:
        """Checked every tick (pull sources)."""

    def asserted(self) -> bool:
        return False

    def close(self) -> None:
        pass


class SignalSource(EStopSource):
    """SIGINT (Ctrl-C) engages the e-stop; a second one while engaged raises KeyboardInterrupt."""

    name = "signal"

    def __init__(self, signals: Iterable[int] = (signal.SIGINT,)) -> None:
        self.signals = tuple(signals)
        self._previous: dict[int, object] = {}

    def start(self, estop: EStop) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            if estop.engaged:
                raise KeyboardInterrupt
            estop.trigger(f"signal {signal.Signals(signum).name}")

        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, handler)

    def close(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous = {}


class KeySource(EStopSource):
    """A key press on the terminal (space or ``e`` by default) engages the e-stop."""

    name = "key"

    def __init__(self, stream: IO[str] | None = None, keys: str = " eE") -> None:
        self.stream = stream if stream is not None else sys.stdin
        self.keys = keys
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved_tty: list | None = None

    def start(self, estop: EStop) -> None:
        fd = self.stream.fileno()
        if os.isatty(fd):
            import termios
            import tty

            self._saved_tty = termios.tcgetattr(fd)
            tty.setcbreak(fd)  # one key, no Enter needed

        def watch() -> None:
            while not self._stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(fd, 64).decode(errors="replace")
                if not data:
                    return  # end of input: nothing more can be pressed
                if any(ch in self.keys for ch in data):
                    estop.trigger(f"key press {data.strip()!r}")

        self._thread = threading.Thread(target=watch, name="estop-keys", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._saved_tty is not None:
            import termios

            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None


class TriggerFileSource(EStopSource):
    """The file's existence asserts the stop (checked at most every ``interval`` seconds)."""

    name = "trigger file"

    def __init__(self, path: str | Path, interval: float = 0.02) -> None:
        self.path = Path(path)
        self.interval = interval
        self._next = 0.0
        self._exists = False

    def poll(self, estop: EStop) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self._exists = self.path.exists()
        if self._exists:
            estop.trigger(f"trigger file {self.path}")

    def asserted(self) -> bool:
        self._exists = self.path.exists()
        return self._exists


class SocketSource(EStopSource):
    """A UNIX datagram socket: ``estop`` engages, ``reset`` asks for the explicit reset."""

    name = "socket"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._sock: socket.socket | None = None

    def start(self, estop: EStop) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.setblocking(False)

    def poll(self, estop: EStop) -> None:
        if self._sock is None:
            return
        while True:
            try:
                message = self._sock.recv(256).strip().lower()
            except BlockingIOError:
                return
            if message == b"estop":
                estop.trigger(f"socket {self.path}")
            elif message == b"reset":
                estop.request_reset()
            else:
                log.warning("e-stop socket: ignoring unknown message %r (send 'estop' or 'reset')", message)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def send(path: str | Path, message: str = "estop") -> None:
    """Send ``estop`` or ``reset`` to a running loop's socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), str(path))
