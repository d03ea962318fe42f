"""Policy backends behind one interface; ``load_policy`` picks one by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wall_runtime.backends.base import Policy, PolicyMetadata
from wall_runtime.backends.options import BackendOptionError, BackendOptions, parse_options

__all__ = ["BACKENDS", "BackendOptionError", "BackendOptions", "Policy", "PolicyMetadata", "load_policy"]

# name -> "module:Class"; each class has ``from_checkpoint(path, **options)``, its options typed in
# wall_runtime.backends.options.OPTIONS.
BACKENDS: dict[str, str] = {
    "echo": "wall_runtime.backends.echo:EchoPolicy",
    "expert": "wall_runtime.backends.expert:ScriptedExpertPolicy",
    "torch": "wall_runtime.backends.torch_backend:TorchPolicy",
    "onnxruntime": "wall_runtime.backends.onnxruntime_backend:OnnxRuntimePolicy",
    "tensorrt": "wall_runtime.backends.tensorrt_backend:TensorRTPolicy",
    # torch with the prefix and the denoise loop each in one CUDA graph, at static shapes (GPU)
    "cuda_graph": "wall_runtime.backends.cuda_graph:CudaGraphPolicy",
}


def load_policy(
    checkpoint: str | Path | None,
    backend: str = "torch",
    options: Mapping[str, Any] | BackendOptions | None = None,
    **kwargs: Any,
) -> Policy:
    """Build the named backend for ``checkpoint`` (the echo backend needs none).

    ``options`` (strings as ``-o KEY=VALUE`` gives them, Python values, or the backend's options
    object) and ``kwargs`` are checked against the backend's typed options first: an unknown key or a
    bad value raises :class:`BackendOptionError` before anything loads."""
    import importlib

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if isinstance(options, BackendOptions):
        if kwargs:
            options = dataclasses.replace(options, **dict(parse_options(backend, kwargs).kwargs()))
        parsed = parse_options(backend, options)
    else:
        parsed = parse_options(backend, {**(options or {}), **kwargs})
    module_name, cls_name = BACKENDS[backend].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls.from_checkpoint(checkpoint, **parsed.kwargs())
