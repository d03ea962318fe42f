"""Batched policy calls, shared by both endpoints: the ZeroMQ server and the openpi websocket one.

- :func:`batch_due` is the rule both batch by (``queue.RequestQueue`` for ZeroMQ robots,
  :class:`CallBatcher` for openpi connections).
- :func:`infer_isolating` makes one ``infer`` call for a batch and, if it raises, one call per
  member, so an observation the policy cannot take fails only its own request.
- :class:`CallBatcher` gathers requests that arrive on different threads (one per websocket
  connection) into one call. There is no worker thread: the first caller whose request is due runs
  the batch itself and hands the others their results, so a lone client's request goes straight
  to the policy on its own thread, with no hand-off and no wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from wall_runtime.types import Observation, PolicyResult

log = logging.getLogger(__name__)

ACTIVE_WINDOW_S = 1.0  # a client that sent a request this recently may be about to join a batch

Infer = Callable[[list[Observation]], list[PolicyResult]]


def batch_due(waiting: int, active: int, waited_s: float, max_batch: int, max_wait_s: float) -> bool:
    """Whether the ``waiting`` requests should be computed now: ``max_batch`` of them wait, every
    client that has been sending lately (``active``) has one waiting (nobody else is coming, so
    waiting would only delay them), or the oldest has waited ``max_wait_s``."""
    return waiting >= max_batch or waiting >= active or waited_s >= max_wait_s


@dataclass
class InferCall:
    """One ``infer`` call made for some members of a batch (``members``: their indices)."""

    members: list[int]
    started: float  # perf_counter
    infer_ms: float
    results: list[PolicyResult] | None = None  # one per member; None when the call failed
    error: Exception | None = None


def infer_isolating(infer: Infer, observations: Sequence[Observation]) -> list[InferCall]:
    """The calls made for ``observations``: one for all of them; if it raises (or returns a
    different number of results) and holds more than one, then one per member, in order, so only
    the members the policy cannot take end with an ``error``."""
    t0 = time.perf_counter()
    try:
        results = infer(list(observations))
        if len(results) != len(observations):
            raise RuntimeError(f"policy returned {len(results)} results for {len(observations)} observations")
    except Exception as exc:
        failed = InferCall(list(range(len(observations))), t0, (time.perf_counter() - t0) * 1e3, error=exc)
        if len(observations) == 1:
            return [failed]
        log.warning(
            "policy failed on a batch of %d (%s: %s); retrying its members one by one",
            len(observations),
            type(exc).__name__,
            exc,
        )
        calls = [failed]
        for i, obs in enumerate(observations):
            (alone,) = infer_isolating(infer, [obs])
            alone.members = [i]
            calls.append(alone)
        return calls
    return [InferCall(list(range(len(observations))), t0, (time.perf_counter() - t0) * 1e3, list(results))]


@dataclass
class Served:
    """What one request got from :meth:`CallBatcher.infer`: a result or the policy's error."""

    result: PolicyResult | None
    error: Exception | None
    infer_ms: float  # the call that produced it (the batch's, or its own on a retry)
    queue_ms: float  # from submission until that call started
    batch_size: int  # observations in that call


class _Slot:
    __slots__ = ("obs", "served", "submitted")

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.submitted = time.perf_counter()
        self.served: Served | None = None


class CallBatcher:
    """Requests from many threads run as shared ``infer`` calls of up to ``max_batch``.

    A request waits for others only while a client that sent one within ``active_window`` has
    none waiting, and at most ``max_wait_s`` after the oldest waiting one arrived or the batch in
    compute finished, whichever is later (:func:`batch_due`, the ZeroMQ server's rule but for that
    "or"); a lone client never waits. One batch is in compute at a time; requests arriving
    meanwhile form the next one. ``infer`` is called outside the batcher's lock (pass one that
    takes the policy's own lock when other endpoints share the policy).
    """

    def __init__(
        self,
        infer: Infer,
        max_batch: int = 8,
        max_wait_s: float = 0.002,
        active_window: float = ACTIVE_WINDOW_S,
    ) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait >= 0")
        self._infer = infer
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.active_window = active_window
        self._cond = threading.Condition()
        self._waiting: list[_Slot] = []
        self._computing = False
        self._free_since = float("-inf")  # perf_counter when the last batch finished
        self._last_seen: dict[Hashable, float] = {}  # client -> perf_counter of its latest request

    def forget(self, client: Hashable) -> None:
        """``client`` is gone (its connection closed): nobody waits for it any more."""
        with self._cond:
            self._last_seen.pop(client, None)
            self._cond.notify_all()

    def infer(self, client: Hashable, obs: Observation) -> Served:
        """``obs``'s result (or the policy's error for it), computed with whatever else is waiting.
        Blocks until it is served; never raises for the policy's failures."""
        slot = _Slot(obs)
        with self._cond:
            self._last_seen[client] = slot.submitted
            self._waiting.append(slot)
            self._cond.notify_all()  # a caller waiting for more may now have enough
            while slot.served is None:
                timeout = None if self._computing else self._due_in(time.perf_counter())
                if timeout is None or timeout > 0:
                    self._cond.wait(timeout)
                    continue
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                self._computing = True
                served: list[Served] | None = None
                self._cond.release()
                try:
                    served = self._compute(batch)  # outside the lock: others queue up meanwhile
                finally:
                    self._cond.acquire()
                    self._computing = False
                    self._free_since = time.perf_counter()
                    for k, member in enumerate(batch):  # a BaseException fails the batch, not hangs it
                        member.served = served[k] if served is not None else _failed(member, "interrupted")
                    self._cond.notify_all()
        assert slot.served is not None
        return slot.served

    def _due_in(self, now: float) -> float | None:
        """Seconds until the waiting requests are due (0: now); None when none wait."""
        if not self._waiting:
            return None
        # Time spent queued behind a batch in compute does not count: the clients of that batch
        # send their next requests right after it, and waiting for them keeps the batches whole
        # (counting it, one early client would run alone and the rest after it, round after round).
        waited = now - max(self._waiting[0].submitted, self._free_since)
        horizon = now - self.active_window
        stale = [c for c, seen in self._last_seen.items() if seen < horizon]
        for client in stale:  # silent this long: a client between episodes holds nobody back
            del self._last_seen[client]
        if batch_due(len(self._waiting), len(self._last_seen), waited, self.max_batch, self.max_wait_s):
            return 0.0
        return self.max_wait_s - waited

    def _compute(self, batch: list[_Slot]) -> list[Served]:
        served: list[Served | None] = [None] * len(batch)
        for call in infer_isolating(self._infer, [s.obs for s in batch]):
            if call.error is not None and len(call.members) > 1:
                continue  # its members were retried one by one
            for k, i in enumerate(call.members):
                served[i] = Served(
                    result=call.results[k] if call.results is not None else None,
                    error=call.error,
                    infer_ms=call.infer_ms,
                    queue_ms=(call.started - batch[i].submitted) * 1e3,
                    batch_size=len(call.members),
                )
        return [s or _failed(batch[i], "not computed") for i, s in enumerate(served)]


def _failed(slot: _Slot, why: str) -> Served:
    return Served(None, RuntimeError(why), 0.0, (time.perf_counter() - slot.submitted) * 1e3, 0)
