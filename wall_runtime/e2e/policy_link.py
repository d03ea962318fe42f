"""The control loop's chunk source over the ZeroMQ policy client.

``request`` hands the observation to the client and returns at once; the client's I/O thread
resolves the future, and its callback only puts the chunk (or the error) on a queue that ``poll``
drains on the control thread. Errors are counted by kind and never reach the loop as exceptions:
a silent or failing server shows as a missing target, which is the watchdog's business.
"""

from __future__ import annotations

import logging
import queue
from collections import Counter
from concurrent.futures import Future

from wall_runtime.transport.client import PolicyClient
from wall_runtime.types import ActionChunk, Observation

log = logging.getLogger(__name__)


class ClientChunkSource:
    def __init__(self, client: PolicyClient, deadline_s: float | None = None) -> None:
        self.client = client
        self.deadline_s = deadline_s
        self.errors: Counter[str] = Counter()
        self.last_error: str | None = None
        self._arrived: queue.SimpleQueue[ActionChunk] = queue.SimpleQueue()

    def request(self, observation: Observation) -> None:
        self.client.submit(observation, deadline=self.deadline_s, callback=self._done)

    def _done(self, future: Future) -> None:
        exc = future.exception()
        if exc is None:
            self._arrived.put(future.result())
            return
        kind = type(exc).__name__
        self.errors[kind] += 1
        self.last_error = f"{kind}: {exc}"
        log.debug("chunk request failed: %s", self.last_error)

    def poll(self) -> ActionChunk | None:
        try:
            return self._arrived.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        self.client.close()
