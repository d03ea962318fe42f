"""A simulated clock: time advances only when someone sleeps on it.

The control loop takes ``clock`` / ``sleep`` callables (``ControlLoop(clock=..., sleep=...)``);
handing it :meth:`SimClock.now` and :meth:`SimClock.sleep` makes the loop's waits advance the
simulation instead of wall time, so physics advances only when the loop ticks and a run's result
does not depend on how loaded the machine is. Listeners (the simulator) are told each advance.
"""

from __future__ import annotations

from collections.abc import Callable

# every sleep lands a hair past the requested time: the loop's ``clock() < deadline`` check never
# spins on a float rounding error (1e-12 s per tick is far below any physics step)
_EPS = 1e-12


class SimClock:
    def __init__(self, start: float = 0.0) -> None:
        self.t = float(start)
        self._listeners: list[Callable[[float], None]] = []

    def now(self) -> float:
        return self.t

    def on_advance(self, listener: Callable[[float], None]) -> None:
        """``listener(new_time)`` after every advance (the simulator steps its physics to it)."""
        self._listeners.append(listener)

    def sleep(self, seconds: float) -> None:
        if not seconds > 0:
            return
        self.advance_to(self.t + seconds + _EPS)

    def restart(self, t: float = 0.0) -> None:
        """Set the time back (a new episode): every episode then computes on the same float times,
        so the same seed gives bit-identical runs whatever ran before it."""
        self.t = float(t)

    def advance_to(self, t: float) -> None:
        if t <= self.t:
            return
        self.t = float(t)
        for listener in self._listeners:
            listener(self.t)
