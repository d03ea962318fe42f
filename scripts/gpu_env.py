"""First stage of scripts/gpu-check.sh: what this machine has, and whether the GPU paths import here.

Prints the GPU, torch / CUDA, and the optional runtimes (onnxruntime's providers, TensorRT), then
imports every module the GPU stages use with ``zmq`` made unimportable: the GPU image has no pyzmq,
and nothing on the model / export / benchmark path may need it. Writes the description as JSON when
``--json PATH`` is given. Exit 1 when there is no CUDA device or an import fails.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

GPU_STAGE_MODULES = (
    "wall_runtime.model.preprocess",
    "wall_runtime.model.pipeline",
    "wall_runtime.backends",
    "wall_runtime.backends.torch_backend",
    "wall_runtime.backends.graph_policy",
    "wall_runtime.backends.cuda_graph",
    "wall_runtime.backends.onnxruntime_backend",
    "wall_runtime.backends.tensorrt_backend",
    "wall_runtime.export.verify",
    "wall_runtime.export.onnx_export",
    "wall_runtime.export.tensorrt_build",
    "wall_runtime.transport.protocol",
    "wall_runtime.machine",
    "wall_runtime.cli",
)


# absent from the GPU image: pyzmq, and the robot side's simulators, cameras and vendor SDKs
BLOCKED = (
    "zmq",
    "mujoco",
    "pyrealsense2",
    "serial",
    "can",
    "dynamixel_sdk",
    "scservo_sdk",
    "piper_sdk",
    "rtde_control",
    "rtde_receive",
    "xarm",
    "websockets",
    "openpi_client",
    "lerobot",
)


def import_without_zmq(modules: tuple[str, ...] = GPU_STAGE_MODULES) -> dict[str, str]:
    """Import ``modules`` with zmq (and the other packages in ``BLOCKED``) unimportable; ``{module: error}``
    for those that fail."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in BLOCKED}
    for k in saved:
        del sys.modules[k]
    for name in BLOCKED:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` now raises ImportError
    failures = {}
    try:
        for name in modules:
            try:
                importlib.import_module(name)
            except ImportError as e:
                failures[name] = str(e)
        bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_inference.py"
        spec = importlib.util.spec_from_file_location("bench_inference", bench)
        try:
            spec.loader.exec_module(importlib.util.module_from_spec(spec))  # type: ignore[union-attr]
        except ImportError as e:
            failures["benchmarks/bench_inference.py"] = str(e)
    finally:
        for name in BLOCKED:
            del sys.modules[name]
        sys.modules.update(saved)
    return failures


def describe() -> dict:
    import torch

    from wall_runtime.machine import describe_machine

    info = describe_machine("onnxruntime", "onnx", "tensorrt", "transformers")
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        info["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
        info["compute_capability"] = f"{p.major}.{p.minor}"
        info["flash_sdp"] = torch.backends.cuda.flash_sdp_enabled()
    if info.get("onnxruntime"):
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    try:
        import zmq

        info["pyzmq"] = zmq.__version__
    except ImportError:
        info["pyzmq"] = None
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    failures = import_without_zmq()
    info = describe()
    info["imports_without_zmq"] = failures or "ok"
    for key in ("gpu", "gpu_memory_gib", "compute_capability", "torch", "cuda", "python", "onnxruntime"):
        print(f"{key:>20}: {info.get(key)}")
    print(f"{'ort providers':>20}: {info.get('onnxruntime_providers')}")
    print(f"{'tensorrt':>20}: {info.get('tensorrt')}")
    print(f"{'pyzmq':>20}: {info.get('pyzmq')}")
    for name, error in failures.items():
        print(f"import without zmq FAILED: {name}: {error}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(info, indent=2, default=str))
    if not info["cuda_available"]:
        print("no CUDA device visible to torch")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
