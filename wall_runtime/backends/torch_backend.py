"""The PyTorch backend: the WALL-OSS pipeline run eagerly (fp32 on CPU, bf16 + fp32 head on CUDA).

The shared :class:`~wall_runtime.model.preprocess.Preprocessor` around the network's two stages:
the prefix (vision tower + prefill → KV cache) always eager, the denoise loop eager or, on a GPU,
replayed from a CUDA graph (:class:`~wall_runtime.backends.cuda_graph.CudaGraphDenoise`, applied
from outside the model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wall_runtime.backends.base import Policy, policy_metadata
from wall_runtime.backends.input_check import ModelInputCheck
from wall_runtime.backends.noise import check_knots, smooth_noise
from wall_runtime.types import Observation, PolicyResult

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    if value not in _DTYPES:
        raise ValueError(f"unknown dtype {value!r}; choose one of {', '.join(_DTYPES)}")
    return _DTYPES[value]


class TorchPolicy(Policy):
    """``Policy`` over :class:`wall_runtime.model.pipeline.WallOSS` (its preprocessor and network).

    ``denoise``: the denoise stage to run instead of the model's eager one (a CUDA graph)."""

    def __init__(
        self,
        model,
        seed: int | None = None,
        noise_knots: int | None = None,
        denoise: Callable[..., torch.Tensor] | None = None,
    ):
        self.model = model
        self.preprocessor = model.preprocessor
        self.denoise = denoise
        self.noise_knots = check_knots(noise_knots, model.cfg.net.action_horizon)
        self._rng = np.random.default_rng(seed)
        self.metadata = policy_metadata(model.preprocessor, "torch", model.settings.num_steps)
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.input_check = ModelInputCheck(model.preprocessor)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None,
        *,
        device: str = "cpu",
        dtype: torch.dtype | str | None = None,
        norm_key: str | None = None,
        seed: int | str | None = None,
        noise_knots: int | str | None = None,
        cuda_graph: bool | str = True,
        **config_options: Any,
    ) -> TorchPolicy:
        """Options: ``device``, ``dtype``, ``norm_key`` (default embodiment), ``seed`` (noise RNG),
        ``noise_knots`` (see :meth:`smooth_noise`; for random-weight demo checkpoints only),
        ``cuda_graph`` (on CUDA, capture the denoise loop in a CUDA graph; default on), and
        config overrides ``num_steps``, ``action_attention``, ``dof_override``."""
        seed = None if seed is None else int(seed)
        noise_knots = None if noise_knots is None else int(noise_knots)
        from wall_runtime.model.pipeline import WallOSS

        if path is None:
            raise ValueError("the torch backend needs a checkpoint directory")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but no CUDA GPU is available")
        model = WallOSS.from_checkpoint(
            path, device=device, dtype=_dtype(dtype), norm_key=norm_key, **config_options
        )
        denoise = None
        if str(cuda_graph).lower() not in ("0", "false", "no") and model.device.type == "cuda":
            from wall_runtime.backends.cuda_graph import CudaGraphDenoise

            denoise = CudaGraphDenoise(model)  # the loop replayed as one CUDA graph (guided calls stay eager)
        return cls(model, seed=seed, noise_knots=noise_knots, denoise=denoise)

    def infer(
        self,
        observations: Sequence[Observation],
        noise: Sequence[np.ndarray | None] | None = None,
    ) -> list[PolicyResult]:
        if self.noise_knots is not None:
            given = list(noise) if noise is not None else [None] * len(observations)
            noise = [n if n is not None else self.smooth_noise() for n in given]
        return self.model.infer(observations, noise=noise, generator=self._generator, denoise=self.denoise)

    def smooth_noise(self) -> np.ndarray:
        """Smooth unit-variance initial noise (:func:`wall_runtime.backends.noise.smooth_noise`)."""
        H, D = self.model.cfg.net.action_horizon, self.model.cfg.net.action_dim
        return smooth_noise(self._rng, self.noise_knots, H, D)

    def close(self) -> None:
        self.model = None
        self.denoise = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
