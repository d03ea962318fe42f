"""The exported graphs are rebuilt when the checkpoint, the shapes or the step count change, and when a
cached file was tampered with; otherwise they are reused (through the real export path and CLI)."""

from __future__ import annotations

import json

import onnx
from typer.testing import CliRunner

from wall_runtime.backends.graph_policy import load_graph_preprocessor
from wall_runtime.backends.static_shapes import resolve_shapes
from wall_runtime.cli import app
from wall_runtime.export.artifacts import onnx_artifacts
from wall_runtime.export.cache import EngineCache
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint


def _export(ck, cache, steps=2, frames=None):
    model = load_graph_preprocessor(ck, num_steps=steps)
    shapes = resolve_shapes(model, frames, 1, 16)
    return onnx_artifacts(model, ck, shapes, cache)


def _weights(path):
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_checkpoint_shape_step_and_tamper_changes_rebuild(tmp_path):
    ck = write_tiny_checkpoint(tmp_path / "ckpt", "flow", seed=0)
    cache = EngineCache(tmp_path / "cache")
    first = _export(ck, cache)
    assert not first.entry.reused
    assert _export(ck, cache).entry.reused

    # new weights in the same directory: a new key, a new export carrying the new weights
    write_tiny_checkpoint(ck, "flow", seed=1)
    second = _export(ck, cache)
    assert not second.entry.reused and second.entry.path != first.entry.path
    w1, w2 = _weights(first.denoise), _weights(second.denoise)
    assert any((w1[n] != w2[n]).any() for n in w1.keys() & w2.keys())

    # another camera frame size (another image grid) and another step count: rebuilt each
    wide = {"face_view": (720, 1280), "right_wrist_view": (480, 640)}  # 16:9 gives another grid
    third = _export(ck, cache, frames=wide)
    assert not third.entry.reused and third.shapes.grid_thw != second.shapes.grid_thw
    fourth = _export(ck, cache, steps=3)
    assert not fourth.entry.reused and fourth.entry.key.steps == 3

    # a cached graph edited on disk is never used: rebuilt under the same key
    second.denoise.write_bytes(second.denoise.read_bytes()[:-10])
    again = _export(ck, cache)
    assert not again.entry.reused and again.entry.path == second.entry.path
    onnx.checker.check_model(str(again.denoise))


def test_export_command_writes_and_then_reuses(tmp_path):
    ck = write_tiny_checkpoint(tmp_path / "ckpt", "0.5")
    args = ["export", "--checkpoint", str(ck), "--backend", "onnx", "--steps", "2", "--text-tokens", "16"]
    args += [
        "--camera",
        "face_view=640x480",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "out"),
    ]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "built onnx" in first.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["key"]["steps"] == 2 and manifest["key"]["extra"]["cameras"] == "face_view=480x640"
    for name in manifest["files"]:
        assert (tmp_path / "out" / name).is_file()
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "reused onnx" in second.output
    bad = runner.invoke(app, [*args[:-4], "--camera", "no_such_view=640x480"])
    assert bad.exit_code == 2 and "unknown camera" in bad.output


def test_a_graph_backend_reads_the_network_only_to_export(tmp_path, monkeypatch):
    """The onnxruntime policy keeps the preprocessor and its two sessions: the torch network is read
    from the checkpoint once, for the export, and not at all when the graphs are cached."""
    import wall_runtime.export.artifacts as artifacts
    from wall_runtime.backends.onnxruntime_backend import OnnxRuntimePolicy
    from wall_runtime.model.preprocess import Preprocessor

    ck = write_tiny_checkpoint(tmp_path / "ckpt", "flow")
    reads = []
    real = artifacts.load_network

    def counted(*args, **kwargs):
        reads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(artifacts, "load_network", counted)
    options = {"num_steps": 2, "text_tokens": 16, "cache_dir": tmp_path / "cache", "seed": 0}
    first = OnnxRuntimePolicy.from_checkpoint(ck, **options)
    assert reads == [ck]
    second = OnnxRuntimePolicy.from_checkpoint(ck, **options)
    assert reads == [ck]  # cached graphs: no network read
    assert isinstance(second.preprocessor, Preprocessor)
    assert not hasattr(second, "model") and not hasattr(second.preprocessor, "net")
    obs = _observation(second)
    a, b = first.infer([obs])[0], second.infer([obs])[0]
    assert a.actions.shape == (second.metadata.action_horizon, second.metadata.action_dim)
    assert (a.actions_normalized == b.actions_normalized).all()  # same seed, same graphs


def _observation(policy):
    import numpy as np

    from wall_runtime.types import Observation

    rng = np.random.default_rng(0)
    return Observation(
        stamp=0.0,
        images={
            name: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for name, (h, w) in zip(policy.shapes.cameras, policy.shapes.frame_sizes, strict=True)
        },
        state=rng.uniform(-1, 1, policy.metadata.state_dim).astype(np.float32),
        instruction="stack the cups",
    )
