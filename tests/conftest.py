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


_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without running native libraries' static destructors.

    After a full run (every test passed and reported), the interpreter's exit crashed in C code with
    no Python frame (SIGSEGV in a library's teardown: MuJoCo's OSMesa contexts, librealsense and
    onnxruntime all register their own). The results are final by now; a crash while unloading
    them would only turn a green run red, so the process ends here with pytest's own status.
    """
    import sys

    if os.environ.get("WALL_RUNTIME_NATIVE_EXIT") == "1" or not _exit_status:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status[0])
