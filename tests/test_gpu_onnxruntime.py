"""onnxruntime's CUDA execution provider runs the exported graphs like torch (GPU only)."""

from __future__ import annotations

import pytest

from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["flow", "0.5"])
def checkpoint(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"ort-cuda-{request.param}")
    write_tiny_checkpoint(root / "ckpt", request.param)
    return request.param, root


def test_onnxruntime_cuda_provider_matches_torch(checkpoint):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu (CUDA execution provider) is not installed")
    from wall_runtime.export.verify import verify_checkpoint

    _, root = checkpoint
    report = verify_checkpoint(root / "ckpt", "onnxruntime", cache_dir=root / "cache", providers="cuda")
    # fp32 on the GPU (TF32 may be used by cuDNN/cuBLAS): hold it to the low-precision bar at least
    assert all(s.cosine >= 0.9999 for s in report.stages)
