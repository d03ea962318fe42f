"""What the control loop tells a recorder, tick by tick.

The loop calls these from its own thread, so an implementation must return at once: hand the
data to another thread (as :class:`~wall_runtime.recording.recorder.LeRobotRecorder` does) and
never block on disk or an encoder. ``tick`` is the loop's 1-based tick counter.
"""

from __future__ import annotations

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
