"""Streaming servo setpoints at the controller's rate between control-loop targets.

Industrial arms in servo mode (UR ``servoJ``, xArm mode 1 ``set_servo_angle_j``) expect a
setpoint every controller cycle (125-500 Hz), while the policy's control loop runs at 10-50 Hz.
:class:`ServoStreamer` runs its own thread at ``rate_hz`` and moves the setpoint linearly from
where it is to the newest target over one control period, so the arm sees a smooth ramp rather
than a step per control tick, and keeps sending the last setpoint (holding) when targets stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)


def ramp(start: np.ndarray, target: np.ndarray, elapsed: float, duration: float) -> np.ndarray:
    """The setpoint ``elapsed`` seconds into a linear move from ``start`` to ``target``."""
    frac = 1.0 if duration <= 0 else min(1.0, max(0.0, elapsed / duration))
    return start + (target - start) * frac


class ServoStreamer:
    def __init__(
        self, send: Callable[[np.ndarray], None], rate_hz: float, control_period_s: float, name: str
    ) -> None:
        self._send = send
        self.rate_hz = rate_hz
        self.control_period_s = control_period_s
        self._name = name
        self._lock = threading.Lock()
        self._start: np.ndarray | None = None
        self._target: np.ndarray | None = None
        self._t_target = 0.0
        self._setpoint: np.ndarray | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # the exception that stopped the stream, if any
        self.sent = 0

    def start(self, position: np.ndarray) -> None:
        with self._lock:
            self._setpoint = self._start = self._target = np.asarray(position, dtype=np.float64).copy()
            self._t_target = time.monotonic()
        self.error = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"servo-stream:{self._name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def set_target(self, target: np.ndarray) -> None:
        with self._lock:
            self._start = (
                self._setpoint.copy() if self._setpoint is not None else np.asarray(target, dtype=np.float64)
            )
            self._target = np.asarray(target, dtype=np.float64).copy()
            self._t_target = time.monotonic()

    def hold_at(self, position: np.ndarray) -> None:
        """Stop where ``position`` is, immediately (no ramp)."""
        with self._lock:
            self._setpoint = self._start = self._target = np.asarray(position, dtype=np.float64).copy()
            self._t_target = time.monotonic()

    def next_setpoint(self, now: float) -> np.ndarray:
        with self._lock:
            assert self._start is not None and self._target is not None
            self._setpoint = ramp(self._start, self._target, now - self._t_target, self.control_period_s)
            return self._setpoint

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self._send(self.next_setpoint(time.monotonic()))
                self.sent += 1
            except Exception as exc:  # surfaced to the adapter, which raises it on the next call
                self.error = exc
                log.error("%s: servo stream stopped: %s", self._name, exc)
                return
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.monotonic()  # fell behind: do not burst to catch up
