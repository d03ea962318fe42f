"""TensorRT engines for both generations: built through the cache, verified against torch fp32 (GPU only)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed"),
]


@pytest.fixture(scope="module", params=["flow", "0.5"])
def checkpoint(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"trt-{request.param}")
    write_tiny_checkpoint(root / "ckpt", request.param)
    return request.param, root


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_tensorrt_engines_verify_against_torch(checkpoint, precision):
    from wall_runtime.export.verify import verify_checkpoint

    variant, root = checkpoint
    report = verify_checkpoint(
        root / "ckpt",
        "tensorrt",
        precision=precision,
        cache_dir=root / "cache",
        num_steps=10,
        show_progress=False,
    )
    for stage in report.stages:
        print(variant, precision, stage)
    assert report.passed, [s for s in report.stages if not s.passed]


def test_tensorrt_policy_is_cached_and_matches_torch(checkpoint):
    from wall_runtime.backends.tensorrt_backend import TensorRTPolicy
    from wall_runtime.export.verify import synthetic_observation
    from wall_runtime.model.pipeline import WallOSS

    _, root = checkpoint
    policy = TensorRTPolicy.from_checkpoint(
        root / "ckpt", cache_dir=root / "cache", precision="bf16", show_progress=False
    )
    again = TensorRTPolicy.from_checkpoint(
        root / "ckpt", cache_dir=root / "cache", precision="bf16", show_progress=False
    )
    assert len(list((root / "cache" / "tensorrt").glob("*/manifest.json"))) == 1
    reference = WallOSS.from_checkpoint(root / "ckpt", device="cuda", dtype=torch.float32)
    obs = synthetic_observation(policy, seed=2)
    noise = np.random.default_rng(3).standard_normal(
        (policy.metadata.action_horizon, policy.metadata.action_dim)
    )
    noise = noise.astype(np.float32)
    want = reference.infer([obs], [noise])[0].actions_normalized
    for p in (policy, again):
        got = p.infer([obs], [noise])[0].actions_normalized
        cos = float(np.dot(got.ravel(), want.ravel()) / (np.linalg.norm(got) * np.linalg.norm(want)))
        assert cos >= 0.999
