"""Build TensorRT engines from the exported ONNX graphs with the native TensorRT Python API.

The build shows its phases as rich progress bars (TensorRT's ``IProgressMonitor``) and keeps a
timing cache next to the engine cache, so a rebuild for another step count or a new checkpoint of
the same shape skips most kernel timing. Requires a CUDA GPU and the ``tensorrt`` package
(``pip install wall-runtime[gpu]``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")


def require_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeError(
            "the tensorrt backend needs the TensorRT Python package and a CUDA GPU: "
            "pip install 'wall-runtime[gpu]' (or use the Docker image)"
        ) from e
    return trt


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "bf16"
    workspace_gib: float = 8.0
    optimization_level: int = 3  # TensorRT's default; 5 searches longer for faster kernels
    timing_cache: Path | None = None
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


def _make_progress_monitor(trt, progress):
    """A TensorRT ``IProgressMonitor`` that mirrors each build phase as a rich task."""

    class RichProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._tasks: dict[str, int] = {}
            self._depth: dict[str, int] = {}
            self._lock = threading.Lock()  # TensorRT may call from several builder threads

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                self._depth[phase_name] = depth
                desc = "  " * depth + phase_name
                self._tasks[phase_name] = progress.add_task(desc, total=max(num_steps, 1))

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                task = self._tasks.get(phase_name)
                if task is not None:
                    progress.update(task, completed=step + 1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                task = self._tasks.pop(phase_name, None)
                self._depth.pop(phase_name, None)
                if task is not None:
                    progress.remove_task(task)

    return RichProgressMonitor()


def _make_logger(trt):
    """A TensorRT logger that routes into ours (info and verbose at debug level)."""
    severity = trt.ILogger.Severity

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, level, msg) -> None:
            if level in (severity.INTERNAL_ERROR, severity.ERROR):
                log.error("TensorRT: %s", msg)
            elif level == severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return Logger()


_LOGGER = None


def trt_logger():
    """One logger per process: TensorRT objects keep a reference to it."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = _make_logger(require_tensorrt())
    return _LOGGER


def build_engine(onnx_path: Path, engine_path: Path, options: BuildOptions, label: str = "") -> Path:
    """Parse ``onnx_path``, build a serialized engine for the current GPU and write it to ``engine_path``.

    Shapes are static (the export fixes them), so no optimization profile is needed.
    """
    trt = require_tensorrt()
    logger = trt_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves the external-data weights file next to the model
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    for i in range(network.num_inputs):
        shape = tuple(network.get_input(i).shape)
        if any(d < 0 for d in shape):
            raise RuntimeError(
                f"{onnx_path}: input {network.get_input(i).name} has a dynamic shape {shape}; "
                "the export must fix every shape"
            )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    config.builder_optimization_level = options.optimization_level
    if options.precision == "fp32":
        # TF32 is on by default and rounds matmul inputs to 10 mantissa bits: not fp32 parity
        config.clear_flag(trt.BuilderFlag.TF32)
    elif options.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif options.precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)

    timing_cache_bytes = b""
    if options.timing_cache is not None and options.timing_cache.is_file():
        timing_cache_bytes = options.timing_cache.read_bytes()
    timing_cache = config.create_timing_cache(timing_cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not options.show_progress,
        transient=True,
    )
    monitor = _make_progress_monitor(trt, progress)
    config.progress_monitor = monitor
    log.info("building TensorRT %s engine %s (%s)", options.precision, label or onnx_path.name, onnx_path)
    with progress:
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    engine_path.write_bytes(bytes(serialized))

    if options.timing_cache is not None:
        options.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = options.timing_cache.with_suffix(".tmp")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        tmp.replace(options.timing_cache)
    return engine_path
