"""The model edge in front of the control loop: a chunk source and an observation hook.

:class:`EdgeSource` wraps the policy's chunk source. Observations leave through :meth:`observe`
(the state vector and masks from the measured joints, the context kept by stamp); an RTC hint
leaves through :meth:`request` converted from joint waypoints to the checkpoint's layout; chunks
come back through :meth:`poll` as joint waypoints. The conversion (composition, EE safety, IK per
waypoint) runs when a chunk arrives, on the edge's own thread (``threaded=True``), so the control
tick only takes finished joint chunks off a queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from typing import Any

import numpy as np

from wall_runtime.action_space.edge import ModelEdge, ObservationContext
from wall_runtime.types import ActionChunk, InpaintHint, Observation, RobotState

log = logging.getLogger(__name__)

_CONTEXTS = 64  # observations kept for their chunks (a chunk answers one of the last few requests)


class EdgeSource:
    def __init__(self, edge: ModelEdge, inner: Any, threaded: bool = True, poll_s: float = 0.001) -> None:
        self.edge = edge
        self.inner = inner
        self.counts: Counter[str] = Counter()
        self._contexts: OrderedDict[float, ObservationContext] = OrderedDict()
        self._lock = threading.Lock()
        self._out: queue.SimpleQueue[ActionChunk] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._poll_s = poll_s
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="model-edge", daemon=True)
            self._thread.start()

    # -- out ----------------------------------------------------------------------------------

    def observe(self, obs: Observation, state: RobotState) -> Observation:
        """Fill ``obs`` with the checkpoint's state vector and masks from ``state``; keep its context."""
        ctx = self.edge.context(state.position)
        obs.state = self.edge.state_vector(ctx)
        obs.state_mask = self.edge.state_mask
        obs.dof_mask = self.edge.dof_mask
        with self._lock:
            self._contexts[obs.stamp] = ctx
            while len(self._contexts) > _CONTEXTS:
                self._contexts.popitem(last=False)
        return obs

    def request(self, observation: Observation) -> None:
        hint = observation.inpaint
        if hint is not None:  # the scheduler's hint is in joints: the loop after the edge speaks nothing else
            observation.inpaint = self._hint(hint, observation.stamp)
        self.inner.request(observation)

    def _hint(self, hint: InpaintHint, stamp: float) -> InpaintHint | None:
        with self._lock:
            ctx = self._contexts.get(stamp)
        if ctx is None:
            return None
        rows = self.edge.to_actions(np.asarray(hint.actions, dtype=np.float64), ctx)
        weights = np.asarray(hint.weights, dtype=np.float32)
        horizon = self.edge.horizon or len(rows)
        if len(rows) < horizon:  # a chunk cut short by the edge: the tail repeats, unweighted
            pad = horizon - len(rows)
            rows = np.concatenate([rows, np.repeat(rows[-1:], pad, axis=0)])
            weights = np.concatenate([weights, np.zeros(pad, np.float32)])
        return InpaintHint(
            actions=rows[:horizon].astype(np.float32),
            weights=weights[:horizon],
            max_guidance=hint.max_guidance,
        )

    # -- in -----------------------------------------------------------------------------------

    def convert(self, chunk: ActionChunk) -> ActionChunk | None:
        """A model chunk → a joint chunk (``None``, counted, when nothing valid remains)."""
        with self._lock:
            ctx = self._contexts.get(chunk.stamp)
        if ctx is None:
            self.counts["no_observation"] += 1
            log.warning("chunk %d answers an observation the edge did not send: dropped", chunk.seq)
            return None
        t0 = time.perf_counter()
        try:
            joints = self.edge.to_joints(chunk.actions, ctx, chunk.dt)
        except ValueError as exc:
            self.counts["malformed"] += 1
            log.warning("chunk %d: %s", chunk.seq, exc)
            return None
        if joints is None:
            self.counts["chunks_dropped"] += 1
            return None
        timing = dict(chunk.timing_ms)
        timing["model_edge"] = (time.perf_counter() - t0) * 1e3  # composition, EE safety, IK
        return ActionChunk(actions=joints, stamp=chunk.stamp, dt=chunk.dt, seq=chunk.seq, timing_ms=timing)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self.inner.poll()
            except Exception as exc:  # the loop must never see the source fail
                log.warning("chunk source failed: %s", exc)
                chunk = None
            if chunk is None:
                self._stop.wait(self._poll_s)
                continue
            try:
                out = self.convert(chunk)
            except Exception:  # an IK or kinematics failure drops the chunk, never the thread
                self.counts["edge_errors"] += 1
                log.exception("model edge failed on chunk %d", chunk.seq)
                out = None
            if out is not None:
                self._out.put(out)

    def poll(self) -> ActionChunk | None:
        if self._thread is None:
            chunk = self.inner.poll()
            return None if chunk is None else self.convert(chunk)
        try:
            return self._out.get_nowait()
        except queue.Empty:
            return None

    @property
    def last_error(self) -> str | None:
        """The policy link's last failed request (why no chunk came), if it keeps one."""
        return getattr(self.inner, "last_error", None)

    @property
    def interventions(self) -> dict[str, int]:
        return dict(self.edge.counts + self.counts)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
