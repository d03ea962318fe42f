"""Inference latency on a simulated clock, applied deterministically.

:class:`SimLatencySource` sits between the model edge and the ZeroMQ link. A request goes out at
once; its reply, whenever it really arrives, is handed to the loop only when the simulated clock
reaches ``sent + latency`` — and if the simulated clock gets there first, the loop waits (in real
time, the simulation stopped) until the reply is in. So the loop sees exactly the configured
latency whatever the machine's load, and the same seeds give the same run. With ``latency_s=None``
each request's measured latency is applied instead (on the simulated clock too, but then the run
depends on what was measured): the server's own receipt-to-reply time (``server_total``: queue +
inference) when the chunk reports it, else the round trip. The round trip would also count the
robot side's own stalls (rendering and video encoding while it records), which the simulated clock
exists to keep out of the outcome.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from wall_runtime.sims.clock import SimClock
from wall_runtime.types import ActionChunk, Observation

_TOL = 1e-9  # s: due times equal up to float rounding count as due


class ReplyTimeout(RuntimeError):
    """The policy server did not answer a request within the real-time limit."""


class SimLatencySource:
    def __init__(
        self,
        inner: Any,
        clock: SimClock,
        latency_s: float | None,
        extra_s: float = 0.0,
        wait_limit_s: float = 60.0,
    ) -> None:
        self.inner = inner
        self.clock = clock
        self.latency_s = latency_s
        self.extra_s = float(extra_s)
        self.wait_limit_s = wait_limit_s
        self._pending: dict[float, tuple[float, float]] = {}  # stamp -> (sim sent, wall sent)
        self._ready: list[tuple[float, ActionChunk]] = []  # (sim due, chunk), in arrival order
        self.applied_s: list[float] = []  # the latency each chunk got on the simulated clock
        self.measured_s: list[float] = []  # each reply's real round trip
        self.dropped: Counter[str] = Counter()
        self._errors_seen = sum(getattr(inner, "errors", {}).values())

    def request(self, observation: Observation) -> None:
        self._pending[observation.stamp] = (self.clock.now(), time.monotonic())
        self.inner.request(observation)

    def _take_arrivals(self) -> None:
        while (chunk := self.inner.poll()) is not None:
            sent = self._pending.pop(chunk.stamp, None)
            if sent is None:
                self.dropped["unrequested"] += 1  # a reply from an earlier episode
                continue
            measured = time.monotonic() - sent[1]
            self.measured_s.append(measured)
            server_ms = (getattr(chunk, "timing_ms", None) or {}).get("server_total")
            served = measured if server_ms is None else float(server_ms) / 1e3
            latency = (self.latency_s if self.latency_s is not None else served) + self.extra_s
            self.applied_s.append(latency)
            self._ready.append((sent[0] + latency, chunk))

    def _overdue(self) -> bool:
        now = self.clock.now()
        if self.latency_s is None:
            return bool(self._pending)  # a measured latency is known only once the reply is in
        # the same tolerance as delivery (``poll``): a reply due "now" up to float rounding is
        # waited for, never delivered a tick later because it happened to be slow
        return any(sim + self.latency_s + self.extra_s <= now + _TOL for sim, _ in self._pending.values())

    def _wait_for_replies(self) -> None:
        deadline = time.monotonic() + self.wait_limit_s
        while True:
            self._take_arrivals()
            if not self._overdue():
                return
            errors = sum(getattr(self.inner, "errors", {}).values())
            if errors > self._errors_seen:
                # the request failed (the link counted it): no chunk will come for it
                self._errors_seen = errors
                self.dropped["request_failed"] += 1
                oldest = min(self._pending, key=lambda s: self._pending[s][0])
                del self._pending[oldest]
                continue
            if time.monotonic() > deadline:
                raise ReplyTimeout(
                    f"no reply from the policy server within {self.wait_limit_s:.0f} s "
                    f"(last link error: {getattr(self.inner, 'last_error', None)})"
                )
            time.sleep(0.0005)

    def poll(self) -> ActionChunk | None:
        self._wait_for_replies()
        now = self.clock.now()
        for i, (due, chunk) in enumerate(self._ready):
            if due <= now + _TOL:
                del self._ready[i]
                return chunk
        return None

    def drain(self, limit_s: float = 10.0) -> None:
        """Wait for the replies still owed (end of an episode), then forget them."""
        deadline = time.monotonic() + limit_s
        while self._pending and time.monotonic() < deadline:
            self._take_arrivals()
            time.sleep(0.0005)
        self._pending.clear()
        self._ready.clear()
