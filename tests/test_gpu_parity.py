"""bf16 on the GPU computes what fp32 on the CPU computes, for both generations at the tiny and the
small size (GPU only; run by ``scripts/gpu-check.sh``).

The GPU model is the torch backend as it serves: bf16 weights with the action head and the norms in
fp32, eager (no CUDA graph here: tests/test_gpu_cuda_graph.py holds the graph to eager). Each stage is
compared with the fp32 CPU reference on the same observation and noise: the vision features, the
KV cache (valid positions) and the normalised chunk, against the bf16 bar that `verify` applies to
engines (cosine >= 0.999, wall_runtime.export.parity).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wall_runtime.export.parity import compare_stage
from wall_runtime.model.pipeline import WallOSS
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
from wall_runtime.types import Observation

pytestmark = pytest.mark.gpu


def _observation(model: WallOSS, seed: int) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(
        stamp=0.0,
        images={c: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for c in model.cfg.data.cameras},
        state=rng.uniform(-1, 1, model.cfg.net.state_dim).astype(np.float32),
        instruction="put the red block in the bowl",
    )


def _stages(model: WallOSS, obs: Observation, noise: np.ndarray) -> dict[str, np.ndarray]:
    batch = model.preprocess([obs])
    with torch.no_grad():
        features = model.encode_images(batch)
        kv = model.prefix(batch, model.prefix_embeds(batch, features))
        x0 = model.make_noise(1, [noise])
        chunk = model.denoise(batch, kv, x0)
    valid = torch.from_numpy(batch.attention_mask[0, : batch.prefix_length]).bool().to(kv.k.device)
    return {
        "vision": features.float().cpu().numpy(),
        "prefix.k": kv.k[:, 0, :, valid].float().cpu().numpy(),
        "prefix.v": kv.v[:, 0, :, valid].float().cpu().numpy(),
        "chunk": chunk.float().cpu().numpy(),
    }


@pytest.mark.parametrize("size", ["tiny", "small"])
@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_bf16_gpu_matches_fp32_cpu(tmp_path, variant, size):
    ck = write_tiny_checkpoint(tmp_path / "ckpt", variant, size=size)
    reference = WallOSS.from_checkpoint(ck, device="cpu", num_steps=10)
    gpu = WallOSS.from_checkpoint(ck, device="cuda", num_steps=10)
    assert gpu.net.dtype == torch.bfloat16
    obs = _observation(reference, 0)
    noise = np.random.default_rng(1).standard_normal(
        (reference.cfg.net.action_horizon, reference.cfg.net.action_dim)
    )
    want = _stages(reference, obs, noise.astype(np.float32))
    got = _stages(gpu, obs, noise.astype(np.float32))
    report = [compare_stage(name, want[name], got[name], "bf16") for name in want]
    lines = "\n".join(f"{s.stage}: max abs {s.max_abs:.3e}, cosine {s.cosine:.6f}" for s in report)
    print(f"{variant} {size}\n{lines}")
    assert all(s.passed for s in report), lines
