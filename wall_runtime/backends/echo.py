"""A policy without a model: a deterministic chunk derived from the observation.

Used by the transport tests and benchmark and by dry runs (robot host, smoothing, safety chain,
all exercised end to end without a GPU). The chunk depends on every input that travels, so a
corrupted image or state on the wire changes it:

    base[d]        = state[d] for d < len(state), else 0           (model action layout)
    brightness     = mean of all image bytes / 255, cameras in name order
    actions[i, d]  = base[d] + step * (i + 1) * (1 + brightness)
    with an inpaint hint, rows blend towards the hint: a = w * hint + (1 - w) * a
    with a dof mask, undriven dims are 0

``delay_ms`` makes it slow, to exercise batching, superseding and deadlines; ``fail_on`` makes
``infer`` raise when the instruction equals it, to exercise error replies; ``image_digest=False``
drops the brightness term (summing 450 kB of pixels costs ~0.2 ms, which would blur a transport
benchmark).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.backends.base import Policy, PolicyMetadata
from wall_runtime.types import Observation, PolicyResult

DEFAULT_CAMERAS = ("face_view", "left_wrist_view", "right_wrist_view")


class EchoPolicy(Policy):
    def __init__(
        self,
        metadata: PolicyMetadata,
        delay_ms: float = 0.0,
        step: float = 0.01,
        fail_on: str | None = None,
        image_digest: bool = True,
    ) -> None:
        self.metadata = metadata
        self.delay_ms = float(delay_ms)
        self.step = float(step)
        self.fail_on = fail_on
        self.image_digest = bool(image_digest)
        self._lock = threading.Lock()
        # One entry per infer call: the stamps it computed (tests assert on batching through it).
        self.calls: list[list[float]] = []

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, **options: Any) -> EchoPolicy:
        """``path`` is ignored (there is no model); options size the chunk and set the delay."""
        # a checkpoint layout by key name (dicts, from Python) makes the echo fit a robot's slots
        dof = dict(options.pop("dof_config", None) or {})
        pos = dict(options.pop("agent_pos_config", None) or {})
        meta = PolicyMetadata(
            model="echo",
            variant="none",
            backend="echo",
            action_horizon=int(options.pop("action_horizon", 32)),
            action_dim=int(options.pop("action_dim", sum(dof.values()) or 20)),
            state_dim=int(options.pop("state_dim", sum(pos.values()) or 20)),
            num_steps=int(options.pop("num_steps", 0)),
            cameras=tuple(options.pop("cameras", DEFAULT_CAMERAS)),
            norm_keys=tuple(options.pop("norm_keys", ())),
            dof_config=dof,
            agent_pos_config=pos,
        )
        return cls(meta, **options)

    def expected_actions(self, obs: Observation) -> np.ndarray:
        """The chunk ``infer`` returns for ``obs`` (float32 [H, D])."""
        meta = self.metadata
        base = np.zeros(meta.action_dim, dtype=np.float64)
        state = np.asarray(obs.state, dtype=np.float64)[: meta.action_dim]
        base[: state.shape[0]] = state
        if obs.images and self.image_digest:
            total = sum(float(obs.images[k].sum(dtype=np.uint64)) for k in sorted(obs.images))
            count = sum(obs.images[k].size for k in obs.images)
            brightness = total / max(count, 1) / 255.0
        else:
            brightness = 0.0
        ramp = self.step * (np.arange(meta.action_horizon, dtype=np.float64) + 1.0) * (1.0 + brightness)
        actions = base[None, :] + ramp[:, None]
        if obs.inpaint is not None:
            w = np.asarray(obs.inpaint.weights, dtype=np.float64)[:, None]
            actions = w * np.asarray(obs.inpaint.actions, dtype=np.float64) + (1.0 - w) * actions
        if obs.dof_mask is not None:
            actions = actions * (np.asarray(obs.dof_mask) > 0.5)[None, :]
        return actions.astype(np.float32)

    def infer(
        self,
        observations: Sequence[Observation],
        noise: Sequence[np.ndarray | None] | None = None,
    ) -> list[PolicyResult]:
        start = time.perf_counter()
        with self._lock:
            self.calls.append([float(o.stamp) for o in observations])
        if self.fail_on is not None and any(o.instruction == self.fail_on for o in observations):
            raise RuntimeError(f"echo policy told to fail on instruction {self.fail_on!r}")
        if self.delay_ms > 0:
            time.sleep(self.delay_ms / 1000.0)
        results = []
        for obs in observations:
            actions = self.expected_actions(obs)
            results.append(
                PolicyResult(
                    actions=actions,
                    actions_normalized=np.tanh(actions),
                    timing_ms={"infer": (time.perf_counter() - start) * 1000.0},
                )
            )
        return results
