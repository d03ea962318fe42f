"""One Policy interface over every backend (torch, onnxruntime, TensorRT, and test doubles).

Backends differ only in how ``prefix`` and ``denoise`` run; preprocessing (images, prompt, state)
and postprocessing (un-normalisation) are shared.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from wall_runtime.types import Observation, PolicyResult


@dataclass(frozen=True)
class PolicyMetadata:
    """What a client learns about the policy at the handshake."""

    model: str  # e.g. "wall-oss-flow", "wall-oss-0.5", "echo"
    variant: str  # "flow" | "0.5" | "none"
    backend: str  # "torch" | "onnxruntime" | "tensorrt" | "echo"
    action_horizon: int
    action_dim: int
    state_dim: int
    num_steps: int
    cameras: tuple[str, ...]  # model view names the policy expects, in prompt order
    norm_keys: tuple[str, ...] = ()
    # the checkpoint's layouts by key name (spec §11): the robot side maps its parts onto them
    dof_config: dict[str, int] = field(default_factory=dict, hash=False)
    agent_pos_config: dict[str, int] = field(default_factory=dict, hash=False)
    # view -> longest side of the reference's first (Pillow bicubic) resize; a client may do that
    # resize itself and send model-sized frames (the model input is the same, bit for bit)
    resolutions: dict[str, int] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cameras"] = list(self.cameras)
        d["norm_keys"] = list(self.norm_keys)
        d["dof_config"] = dict(self.dof_config)
        d["agent_pos_config"] = dict(self.agent_pos_config)
        d["resolutions"] = dict(self.resolutions)
        return d


class Policy(abc.ABC):
    metadata: PolicyMetadata

    @abc.abstractmethod
    def infer(
        self,
        observations: Sequence[Observation],
        noise: Sequence[np.ndarray | None] | None = None,
    ) -> list[PolicyResult]:
        """One chunk per observation. ``noise[i]`` (``[H, D]`` float32) fixes the initial flow sample."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engines, sessions and device memory."""
