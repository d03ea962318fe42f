"""Policy backends behind one interface; ``load_policy`` picks one by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wall_runtime.backends.base import Policy, PolicyMetadata

__all__ = ["BACKENDS", "Policy", "PolicyMetadata", "load_policy"]

# name -> "module:Class"; each class has ``from_checkpoint(path, **options)``.
BACKENDS: dict[str, str] = {
    "echo": "wall_runtime.backends.echo:EchoPolicy",
    "expert": "wall_runtime.backends.expert:ScriptedExpertPolicy",
    "torch": "wall_runtime.backends.torch_backend:TorchPolicy",
    "onnxruntime": "wall_runtime.backends.onnxruntime_backend:OnnxRuntimePolicy",
    "tensorrt": "wall_runtime.backends.tensorrt_backend:TensorRTPolicy",
}


def load_policy(checkpoint: str | Path | None, backend: str = "torch", **options: Any) -> Policy:
    """Build the named backend for ``checkpoint`` (the echo backend needs none)."""
    import importlib

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    module_name, cls_name = BACKENDS[backend].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls.from_checkpoint(checkpoint, **options)
