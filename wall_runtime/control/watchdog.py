"""The watchdog: no valid target for ``timeout`` seconds → the robot holds.

A target is valid when the scheduler has an action for now. It stops having one when the policy
server goes silent, when the last chunk runs out, or when the cameras go stale (no observation is
sent, so no chunk comes back). The loop checks every tick, so the hold lands at most one tick after
the timeout.
"""

from __future__ import annotations

import math


class Watchdog:
    def __init__(self, timeout: float) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"watchdog timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = timeout
        self._last_valid: float | None = None
        self.tripped = False
        self.trips = 0

    def arm(self, now: float) -> None:
        """Start the clock (the loop's first tick): a robot that never gets a target holds too."""
        self._last_valid = now
        self.tripped = False

    def feed(self, now: float) -> None:
        """A valid target was commanded at ``now``."""
        self._last_valid = now
        self.tripped = False

    def check(self, now: float) -> bool:
        """True on the tick the timeout is first exceeded (the caller holds the robot then)."""
        if self._last_valid is None:
            self._last_valid = now
        if not self.tripped and now - self._last_valid > self.timeout:
            self.tripped = True
            self.trips += 1
            return True
        return False

    def silent_for(self, now: float) -> float:
        return 0.0 if self._last_valid is None else now - self._last_valid
