"""``verify``: per-stage max abs and cosine, gated by precision; a backend that computes something else fails."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from wall_runtime.cli import app
from wall_runtime.export.parity import compare_stage, cosine_similarity
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint


def test_fp32_gate_is_max_abs_1e_4():
    ref = np.linspace(-1, 1, 64).reshape(8, 8)
    assert compare_stage("x", ref, ref + 9e-5, "fp32").passed
    failed = compare_stage("x", ref, ref + 2e-4, "fp32")
    assert not failed.passed and failed.max_abs == pytest.approx(2e-4)


def test_low_precision_gate_is_cosine_0_999():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(4096)
    close = ref + 0.02 * rng.standard_normal(4096)  # cosine ≈ 0.9998
    far = ref + 0.1 * rng.standard_normal(4096)  # cosine ≈ 0.995
    assert compare_stage("x", ref, close, "bf16").passed
    assert not compare_stage("x", ref, far, "fp16").passed
    assert cosine_similarity(ref, -ref) == pytest.approx(-1.0)


def test_shape_mismatch_and_nan_fail_outright():
    ref = np.zeros((2, 3))
    assert not compare_stage("x", ref, np.zeros((3, 2)), "fp32").passed
    bad = ref.copy()
    bad[0, 0] = np.nan
    assert not compare_stage("x", ref, bad, "bf16").passed


@pytest.fixture(scope="module")
def flow_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    write_tiny_checkpoint(root / "ckpt", "flow")
    return root


def test_verify_command_passes_for_onnxruntime_and_reports_every_stage(flow_checkpoint):
    root = flow_checkpoint
    out = root / "report.json"
    args = ["verify", "--checkpoint", str(root / "ckpt"), "--backend", "onnx", "--steps", "2"]
    result = CliRunner().invoke(app, [*args, "--cache-dir", str(root / "cache"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["passed"] and report["precision"] == "fp32" and report["steps"] == 2
    stages = {s["stage"]: s for s in report["stages"]}
    assert set(stages) == {"prefix.k", "prefix.v", "denoise", "chunk", "actions"}
    for s in stages.values():
        assert s["max_abs"] <= 1e-4 and s["cosine"] > 0.99999


def test_verify_fails_when_the_backend_computes_something_else(flow_checkpoint):
    """Graphs exported for 2 steps checked against a 3-step reference: the denoise stages must fail."""
    import torch

    from wall_runtime.backends.onnxruntime_backend import OnnxRuntimePolicy
    from wall_runtime.export.verify import verify_policy
    from wall_runtime.model.pipeline import WallOSS

    root = flow_checkpoint
    policy = OnnxRuntimePolicy.from_checkpoint(root / "ckpt", cache_dir=root / "cache", num_steps=2)
    reference = WallOSS.from_checkpoint(root / "ckpt", device="cpu", dtype=torch.float32, num_steps=3)
    report = verify_policy(policy, reference, "fp32")
    stages = {s.stage: s for s in report.stages}
    assert stages["prefix.k"].passed and stages["prefix.v"].passed  # the prefix does not depend on steps
    assert not stages["denoise"].passed and not stages["chunk"].passed
    assert not report.passed
