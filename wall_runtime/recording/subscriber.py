"""What the control loop tells a recorder, tick by tick.

The loop calls these from its own thread, so an implementation must return at once: hand the
data to another thread (as :class:`~wall_runtime.recording.recorder.LeRobotRecorder` does) and
never block on disk or an encoder. ``tick`` is the loop's 1-based tick counter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from wall_runtime.types import ActionChunk, Observation


@dataclass(frozen=True)
class TickRecord:
    """One tick of the loop, as the recorder sees it."""

    tick: int
    deadline: float  # the tick's deadline on the loop's clock (what the tick worked on)
    measured: np.ndarray  # joint positions read at the start of the tick
    target: np.ndarray  # the scheduler's joint target before safety (NaN when there was none)
    commanded: np.ndarray  # what the adapter was commanded (NaN when nothing was)
    status: str  # ok | idle | hold | estop
    interventions: tuple[str, ...]  # the safety filters that changed this tick's command
    # joint velocities the robot reported with the measurement (None: it reports none); after an
    # idle gap the safety chain starts from them, so a replay needs them
    measured_velocity: np.ndarray | None = None


class LoopRecorder(Protocol):
    def on_chunk(self, tick: int, chunk: ActionChunk) -> None:
        """A chunk arrived from the source on this tick (before the scheduler saw it)."""
        ...

    def on_request(self, tick: int, observation: Observation) -> None:
        """This observation was sent to the policy on this tick."""
        ...

    def on_tick(self, record: TickRecord) -> None:
        """The tick is done."""
        ...


class FanOut:
    """Several subscribers on one loop (a recorder and a live view, say): each is told everything,
    in the order given. The loop keeps one subscriber slot; this is what goes in it."""

    def __init__(self, subscribers: Sequence[LoopRecorder]) -> None:
        self.subscribers = tuple(subscribers)

    def on_chunk(self, tick: int, chunk: ActionChunk) -> None:
        for sub in self.subscribers:
            sub.on_chunk(tick, chunk)

    def on_request(self, tick: int, observation: Observation) -> None:
        for sub in self.subscribers:
            sub.on_request(tick, observation)

    def on_tick(self, record: TickRecord) -> None:
        for sub in self.subscribers:
            sub.on_tick(record)


def fan_out(*subscribers: LoopRecorder | None) -> LoopRecorder | None:
    """One subscriber for the loop from any number (``None`` entries skipped): none, the one, or
    a :class:`FanOut` of them."""
    subs = [s for s in subscribers if s is not None]
    if not subs:
        return None
    return subs[0] if len(subs) == 1 else FanOut(subs)
