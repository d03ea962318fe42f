"""The onnxruntime backend: the exported prefix graph and fused denoise graph in onnxruntime sessions.

On the CPU it runs the CPU execution provider; on a GPU the CUDA or TensorRT provider
(``providers="cuda"`` / ``"tensorrt"``, needing ``onnxruntime-gpu``). The two sessions pass the KV
cache as ``OrtValue``s through I/O binding, so on a GPU it never leaves the device. Graphs come from
the engine cache (exported on first use).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.backends.graph_policy import GraphPolicy, common_options, load_graph_preprocessor

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OrtRunner:
    """One onnxruntime session run through I/O binding; outputs stay ``OrtValue``s on the session's device."""

    def __init__(
        self,
        path: Path,
        providers: Sequence[Any],
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        available = set(ort.get_available_providers())
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        missing = [n for n in names if n not in available]
        if missing:
            raise RuntimeError(
                f"onnxruntime providers {missing} are not available here (have {sorted(available)}); "
                "the GPU providers need onnxruntime-gpu: pip install 'wall-runtime[gpu]'"
            )
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=list(providers))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.device = "cuda" if names[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name in self.input_names:  # inputs the graph does not use were pruned at export
            if name not in feeds:
                raise KeyError(f"{self.path.name}: input {name!r} not given")
            value = feeds[name]
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.get_outputs(), strict=True))


def _to_numpy(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


class OnnxRuntimePolicy(GraphPolicy):
    @classmethod
    def from_checkpoint(cls, path: str | Path | None, **options: Any) -> OnnxRuntimePolicy:
        """Options: ``providers`` ("cpu" | "cuda" | "tensorrt" or a provider list; ``device="cuda"`` means
        "cuda"), ``threads``,
        ``cameras`` (``["face_view=640x480", ...]`` or ``{view: (h, w)}``), ``batch``, ``text_tokens``,
        ``num_steps``, ``norm_key``, ``seed``, ``cache_dir``."""
        from wall_runtime.backends.static_shapes import resolve_shapes
        from wall_runtime.export.artifacts import onnx_artifacts
        from wall_runtime.export.cache import EngineCache

        common = common_options(options)
        device = str(options.pop("device", "cpu"))
        providers = options.pop("providers", "cuda" if device.startswith("cuda") else "cpu")
        threads = options.pop("threads", None)
        preprocessor = load_graph_preprocessor(path, common["norm_key"], common["num_steps"], **options)
        shapes = resolve_shapes(preprocessor, common["cameras"], common["batch"], common["text_tokens"])
        cache = EngineCache(common["cache_dir"])
        # the sessions hold the weights; the torch network is read only if the graphs must be exported
        art = onnx_artifacts(preprocessor, path, shapes, cache)
        if isinstance(providers, str) and providers not in PROVIDERS:
            raise ValueError(f"providers must be one of {', '.join(PROVIDERS)} or a list, got {providers!r}")
        provider_list = PROVIDERS[providers] if isinstance(providers, str) else list(providers)
        if isinstance(providers, str) and providers == "tensorrt":
            trt_cache = cache.root / "ort-tensorrt" / art.entry.path.name
            trt_cache.mkdir(parents=True, exist_ok=True)
            provider_list = [
                (
                    "TensorrtExecutionProvider",
                    {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache)},
                ),
                *provider_list[1:],
            ]
        threads = threads or int(os.environ.get("WALL_RUNTIME_ORT_THREADS", "0")) or None
        prefix = OrtRunner(art.prefix, provider_list, threads)
        denoise = OrtRunner(art.denoise, provider_list, threads)
        return cls(
            preprocessor,
            shapes,
            prefix,
            denoise,
            backend="onnxruntime",
            seed=common["seed"],
            to_numpy=_to_numpy,
            noise_knots=common["noise_knots"],
        )
