"""The TensorRT backend: native engines for the prefix (vision + prefill) and the fused denoise loop.

Engines are built through the TensorRT Python API from the exported ONNX graphs on first use (rich
progress, timing cache) and cached under a key of checkpoint hash, shapes, steps, precision, GPU
model and TensorRT version; a stale or foreign engine is rebuilt. The KV cache passes from one
engine to the other as a CUDA tensor. Needs a CUDA GPU and ``pip install 'wall-runtime[gpu]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.backends.graph_policy import GraphPolicy, common_options, load_graph_preprocessor


def _to_numpy(value: Any) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        return value.float().cpu().numpy()
    return np.asarray(value)


class TensorRTPolicy(GraphPolicy):
    @classmethod
    def from_checkpoint(cls, path: str | Path | None, **options: Any) -> TensorRTPolicy:
        """Options: ``precision`` ("bf16" default, "fp16", "fp32"), ``device`` ("cuda"), ``cameras``,
        ``batch``, ``text_tokens``, ``num_steps``, ``norm_key``, ``seed``, ``cache_dir``,
        ``show_progress``."""
        import torch

        from wall_runtime.backends.static_shapes import resolve_shapes
        from wall_runtime.backends.tensorrt_runner import TensorRTRunner
        from wall_runtime.export.artifacts import tensorrt_artifacts
        from wall_runtime.export.cache import EngineCache
        from wall_runtime.export.tensorrt_build import require_tensorrt

        require_tensorrt()
        if not torch.cuda.is_available():
            raise RuntimeError("the tensorrt backend needs a CUDA GPU and none is available")
        common = common_options(options)
        precision = options.pop("precision", "bf16")
        device = options.pop("device", "cuda")
        show_progress = bool(options.pop("show_progress", True))
        preprocessor = load_graph_preprocessor(path, common["norm_key"], common["num_steps"], **options)
        shapes = resolve_shapes(preprocessor, common["cameras"], common["batch"], common["text_tokens"])
        cache = EngineCache(common["cache_dir"])
        # the engines hold the weights; the torch network is read only if the graphs must be exported
        art = tensorrt_artifacts(
            preprocessor, path, shapes, cache, precision=precision, show_progress=show_progress
        )
        prefix = TensorRTRunner(art.prefix, device)
        denoise = TensorRTRunner(art.denoise, device)
        policy = cls(
            preprocessor,
            shapes,
            prefix,
            denoise,
            backend="tensorrt",
            seed=common["seed"],
            to_numpy=_to_numpy,
            noise_knots=common["noise_knots"],
        )
        policy.precision = precision
        return policy

    def close(self) -> None:
        import torch

        self.run_prefix = None
        self.run_denoise = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
