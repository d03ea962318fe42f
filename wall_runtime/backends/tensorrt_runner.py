"""Run a serialized TensorRT engine on torch CUDA tensors (no pycuda / cuda-python needed).

Inputs and outputs are bound by name with ``set_tensor_address`` and the engine runs with
``execute_async_v3`` on the current torch stream, so the prefix engine's KV outputs feed the denoise
engine without leaving the GPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from wall_runtime.export.tensorrt_build import require_tensorrt, trt_logger


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.bool: torch.bool,
        trt.int8: torch.int8,
    }
    if dtype not in table:
        raise TypeError(f"unsupported TensorRT tensor type {dtype}")
    return table[dtype]


class TensorRTRunner:
    """One deserialized engine with its execution context and preallocated outputs."""

    def __init__(self, engine_path: Path, device: torch.device | str = "cuda") -> None:
        trt = require_tensorrt()
        self._trt = trt
        self.device = torch.device(device)
        self.path = Path(engine_path)
        runtime = trt.Runtime(trt_logger())
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise RuntimeError(
                f"TensorRT could not load {self.path}: it was built by another TensorRT version or for another GPU"
            )
        self._runtime = runtime
        self.engine = engine
        self.context = engine.create_execution_context()
        self.inputs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(engine.get_tensor_shape(name))
            dtype = _torch_dtype(trt, engine.get_tensor_dtype(name))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs[name] = (shape, dtype)
            else:
                self.outputs[name] = torch.empty(shape, dtype=dtype, device=self.device)
                self.context.set_tensor_address(name, self.outputs[name].data_ptr())

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on ``feeds`` (any device / dtype: converted to the engine's); returns fresh output copies."""
        keep = []  # converted inputs must outlive the asynchronous launch
        for name, (shape, dtype) in self.inputs.items():
            if name not in feeds:
                raise KeyError(f"{self.path.name}: input {name!r} not given")
            t = torch.as_tensor(feeds[name])
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"{self.path.name}: input {name} has shape {tuple(t.shape)}, engine expects {shape}"
                )
            t = t.to(device=self.device, dtype=dtype).contiguous()
            keep.append(t)
            self.context.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.path.name} failed")
        out = {name: t.clone() for name, t in self.outputs.items()}
        del keep
        return out
