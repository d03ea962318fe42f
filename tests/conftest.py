"""Shared test set-up: GPU and hardware markers skip with a reason where the thing is absent."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


def _gpu_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_reason = _gpu_reason()
    hardware = os.environ.get("WALL_RUNTIME_HARDWARE") == "1"
    for item in items:
        if gpu_reason and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"GPU test: {gpu_reason}"))
        if not hardware and "hardware" in item.keywords:
            item.add_marker(
                pytest.mark.skip(reason="hardware test: set WALL_RUNTIME_HARDWARE=1 with the robot attached")
            )
