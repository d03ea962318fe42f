"""ONNX graphs over protobuf's 2 GiB limit keep their weights in an external-data file: exercised on
the tiny model by forcing the threshold down; onnxruntime loads and runs them, equal to torch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from wall_runtime.backends.onnxruntime_backend import OnnxRuntimePolicy
from wall_runtime.export import onnx_export
from wall_runtime.export.verify import synthetic_observation
from wall_runtime.model.pipeline import WallOSS
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint

STEPS = 10
TOL = 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["0.5"])
def test_graphs_over_the_threshold_use_external_data_and_run(tmp_path, monkeypatch, variant):
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1)  # every graph counts as "large"
    ck = write_tiny_checkpoint(tmp_path / "ckpt", variant)
    cache = tmp_path / "cache"
    policy = OnnxRuntimePolicy.from_checkpoint(ck, cache_dir=cache, num_steps=STEPS, seed=0)

    for name in ("prefix", "denoise"):
        (graph,) = cache.rglob(f"{name}.onnx")
        data = graph.with_name(f"{name}.onnx.data")
        assert data.is_file(), f"{name}: no external data file"
        model = onnx.load(str(graph), load_external_data=False)
        external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert external, f"{name}: weights are inline"
        inline = sum(len(t.raw_data) for t in model.graph.initializer)
        outside = sum(int(e.value) for t in external for e in t.external_data if e.key == "length")
        assert outside > 10 * inline  # the weights live in the data file, only tiny tensors inline
        assert data.stat().st_size >= outside
        # nothing else was left next to the graph (the exporter's per-tensor files are gathered)
        assert sorted(p.name for p in graph.parent.iterdir()) == sorted([graph.name, data.name])

    reference = WallOSS.from_checkpoint(ck, num_steps=STEPS)
    obs = synthetic_observation(policy, seed=3)
    noise = np.random.default_rng(1).standard_normal(
        (policy.metadata.action_horizon, policy.metadata.action_dim)
    )
    noise = noise.astype(np.float32)
    got = policy.infer([obs], [noise])[0].actions_normalized
    want = reference.infer([obs], [noise])[0].actions_normalized
    assert np.abs(got - want).max() <= TOL

    # the cached graphs (with their data files) are found and loaded again, not re-exported
    again = OnnxRuntimePolicy.from_checkpoint(ck, cache_dir=cache, num_steps=STEPS, seed=0)
    assert len(list((cache / "onnx").glob("*/manifest.json"))) == 1
    np.testing.assert_allclose(again.infer([obs], [noise])[0].actions_normalized, got, rtol=0, atol=1e-6)
