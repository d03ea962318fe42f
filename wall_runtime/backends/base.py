"""One Policy interface over every backend (torch, onnxruntime, TensorRT, and test doubles).

Backends differ only in how ``prefix`` and ``denoise`` run; preprocessing (images, prompt, state)
and postprocessing (un-normalisation) are shared.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

# PolicyMetadata lives in types.py (the transport speaks it without importing a backend); it is
# re-exported here for the backends that build it.
from wall_runtime.types import Observation, PolicyMetadata, PolicyResult

__all__ = ["Policy", "PolicyMetadata", "policy_metadata"]

if TYPE_CHECKING:
    from wall_runtime.backends.input_check import ModelInputCheck


class Policy(abc.ABC):
    metadata: PolicyMetadata
    # What ``infer`` refuses beyond the handshake's shapes (``backends.input_check``); the server
    # checks each observation against it so one robot's bad input never fails a batch. None: no limits.
    input_check: ModelInputCheck | None = None

    @abc.abstractmethod
    def infer(
        self,
        observations: Sequence[Observation],
        noise: Sequence[np.ndarray | None] | None = None,
    ) -> list[PolicyResult]:
        """One chunk per observation. ``noise[i]`` (``[H, D]`` float32) fixes the initial flow sample."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engines, sessions and device memory."""


def policy_metadata(
    preprocessor: Any, backend: str, num_steps: int, cameras: Sequence[str] | None = None
) -> PolicyMetadata:
    """The handshake's description of a WALL-OSS policy over ``preprocessor`` (a
    :class:`wall_runtime.model.preprocess.Preprocessor`); ``cameras`` defaults to every view."""
    cfg = preprocessor.cfg
    views = tuple(cfg.data.cameras if cameras is None else cameras)
    return PolicyMetadata(
        model="wall-oss-flow" if cfg.variant == "flow" else "wall-oss-0.5",
        variant=cfg.variant,
        backend=backend,
        action_horizon=cfg.net.action_horizon,
        action_dim=cfg.net.action_dim,
        state_dim=cfg.net.state_dim,
        num_steps=num_steps,
        cameras=views,
        norm_keys=tuple(preprocessor.normalizers.keys),
        dof_config=dict(cfg.data.dof_config),
        agent_pos_config=dict(cfg.data.agent_pos_config),
        resolutions={v: int(cfg.data.resolution[v]) for v in views},
        action_period=cfg.data.action_period,
    )
