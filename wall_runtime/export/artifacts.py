"""Exported graphs and engines for a checkpoint, taken from the cache or built into it.

``onnx_artifacts`` exports both ONNX graphs (fp32, device independent); ``tensorrt_artifacts``
builds both engines from them for this GPU, TensorRT version and precision. Each is one cache entry
whose key holds everything it depends on (see :mod:`wall_runtime.export.cache`).

Both take either a loaded fp32 CPU :class:`~wall_runtime.model.pipeline.WallOSS` or just the
checkpoint's :class:`~wall_runtime.model.preprocess.Preprocessor`: then the network is read from the
checkpoint only when the cache misses and dropped after the export, so a backend whose graphs are
cached never holds the torch network at all.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from wall_runtime.export.cache import (
    CacheEntry,
    EngineCache,
    EngineKey,
    checkpoint_hash,
    gpu_model,
    tensorrt_version,
)
from wall_runtime.export.onnx_export import OPSET, GraphShapes, export_graphs
from wall_runtime.model.pipeline import WallOSS, load_network
from wall_runtime.model.preprocess import Preprocessor
from wall_runtime.model.sampler import SamplerSettings

SHAPES_FILE = "shapes.json"


@dataclass
class Artifacts:
    entry: CacheEntry
    shapes: GraphShapes
    prefix: Path
    denoise: Path


def _settings(model: WallOSS | Preprocessor) -> SamplerSettings:
    """The sampler settings the graphs bake in: the model's, or the checkpoint config's."""
    return model.settings if isinstance(model, WallOSS) else SamplerSettings.from_config(model.cfg.net)


def _key(
    ck_hash: str, shapes: GraphShapes, settings, fmt: str, precision: str, gpu: str, trt: str
) -> EngineKey:
    graph_shapes = {f"prefix.{k}": v for k, v in shapes.prefix_input_shapes().items()}
    graph_shapes |= {f"denoise.{k}": v for k, v in shapes.denoise_input_shapes().items()}
    return EngineKey.make(
        checkpoint_hash=ck_hash,
        graph="wall-oss",
        format=fmt,
        shapes=graph_shapes,
        steps=settings.num_steps,
        precision=precision,
        gpu_model=gpu,
        tensorrt_version=trt,
        extra={
            "sampler": json.dumps(asdict(settings), sort_keys=True),
            "cameras": ",".join(
                f"{c}={h}x{w}" for c, (h, w) in zip(shapes.cameras, shapes.frame_sizes, strict=True)
            ),
            "opset": OPSET,
            "torch": torch.__version__.split("+")[0],
        },
    )


def onnx_artifacts(
    model: WallOSS | Preprocessor,
    checkpoint: str | Path,
    shapes: GraphShapes,
    cache: EngineCache,
    ck_hash: str | None = None,
) -> Artifacts:
    """Both ONNX graphs for ``shapes`` and the model's sampler settings (exported on the CPU in fp32)."""
    ck_hash = ck_hash or checkpoint_hash(checkpoint, memo_dir=cache.root)
    settings = _settings(model)
    key = _key(ck_hash, shapes, settings, "onnx", "fp32", "cpu", "none")

    def build(out: Path) -> list[str]:
        # a preprocessor: the network is read for this export only (fp32, CPU) and dropped after it
        net = model.net if isinstance(model, WallOSS) else load_network(checkpoint, model.cfg)
        if next(net.parameters()).dtype != torch.float32 or next(net.parameters()).device.type != "cpu":
            raise RuntimeError("export from an fp32 CPU model (WallOSS.from_checkpoint(path, device='cpu'))")
        exported = export_graphs(net, net.visual, shapes, settings, out)
        (out / SHAPES_FILE).write_text(json.dumps(shapes.to_json(), indent=2))
        return [*exported.files, SHAPES_FILE]

    entry = cache.get_or_build(key, build)
    return Artifacts(entry, shapes, entry.file("prefix/prefix.onnx"), entry.file("denoise/denoise.onnx"))


def tensorrt_artifacts(
    model: WallOSS | Preprocessor,
    checkpoint: str | Path,
    shapes: GraphShapes,
    cache: EngineCache,
    precision: str = "bf16",
    ck_hash: str | None = None,
    show_progress: bool = True,
) -> Artifacts:
    """Both TensorRT engines for this GPU (built from the cached ONNX graphs, with a timing cache)."""
    from wall_runtime.export.tensorrt_build import BuildOptions, build_engine

    ck_hash = ck_hash or checkpoint_hash(checkpoint, memo_dir=cache.root)
    gpu, trt = gpu_model(), tensorrt_version()
    if gpu == "cpu":
        raise RuntimeError("TensorRT engines are built for a CUDA GPU and none is available")
    settings = _settings(model)
    key = _key(ck_hash, shapes, settings, "tensorrt", precision, gpu, trt)
    timing_name = EngineKey.make(
        checkpoint_hash="",
        graph="timing",
        format="tensorrt",
        shapes={},
        steps=0,
        precision=precision,
        gpu_model=gpu,
        tensorrt_version=trt,
    ).digest()
    options = BuildOptions(
        precision=precision,
        timing_cache=cache.root / "tensorrt" / f"timing-{timing_name}.cache",
        show_progress=show_progress,
    )

    def build(out: Path) -> list[str]:
        onnx = onnx_artifacts(model, checkpoint, shapes, cache, ck_hash)
        build_engine(onnx.prefix, out / "prefix.engine", options, label="prefix")
        build_engine(
            onnx.denoise, out / "denoise.engine", options, label=f"denoise ({settings.num_steps} steps)"
        )
        (out / SHAPES_FILE).write_text(json.dumps(shapes.to_json(), indent=2))
        return ["prefix.engine", "denoise.engine", SHAPES_FILE]

    entry = cache.get_or_build(key, build)
    return Artifacts(entry, shapes, entry.file("prefix.engine"), entry.file("denoise.engine"))
