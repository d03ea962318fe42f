"""The torch backend's CUDA-graph denoise path equals eager (GPU only), and the prompt-length
bucketing it relies on is exact (checked on the CPU too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wall_runtime.model.decoder import KVCache
from wall_runtime.model.pipeline import WallOSS
from wall_runtime.model.sampler import denoise
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
from wall_runtime.types import Observation


def _observation(model, seed: int, instruction: str = "stack the cups") -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(
        stamp=0.0,
        images={c: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for c in model.cfg.data.cameras},
        state=rng.uniform(-1, 1, model.cfg.net.state_dim).astype(np.float32),
        instruction=instruction,
    )


def _stage_inputs(model, obs, seed):
    batch = model.preprocess([obs])
    with torch.no_grad():
        kv = model.prefix(batch, model.prefix_embeds(batch, model.encode_images(batch)))
    g = torch.Generator().manual_seed(seed)
    noise = model.make_noise(1, None, g)
    return batch, kv, noise


@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_left_padding_the_prefix_cache_changes_nothing(tmp_path, variant):
    """What CudaGraphDenoiser does to bucket prompt lengths, checked on the CPU in fp32."""
    write_tiny_checkpoint(tmp_path / "ckpt", variant)
    model = WallOSS.from_checkpoint(tmp_path / "ckpt", device="cpu", num_steps=3)
    batch, kv, noise = _stage_inputs(model, _observation(model, 0), 0)
    lp, h = batch.prefix_length, model.cfg.net.action_horizon
    args = (
        torch.from_numpy(batch.dof_mask)[:, None, :].expand(-1, h, -1),
        torch.from_numpy(batch.position_ids[:, :, lp:]),
    )
    mask = torch.from_numpy(batch.attention_mask[:, :lp])
    pad_action = torch.from_numpy(batch.padding_action)
    with torch.no_grad():
        plain = denoise(model.net, kv, noise, *args, mask, model.settings, pad_action)
        padded_kv = KVCache(F.pad(kv.k, (0, 0, 37, 0)), F.pad(kv.v, (0, 0, 37, 0)))
        padded = denoise(model.net, padded_kv, noise, *args, F.pad(mask, (37, 0)), model.settings, pad_action)
    assert (padded - plain).abs().max().item() <= 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_cuda_graph_denoise_equals_eager_bf16(tmp_path, variant):
    from wall_runtime.backends.cuda_graph import use_cuda_graph

    write_tiny_checkpoint(tmp_path / "ckpt", variant)
    model = WallOSS.from_checkpoint(tmp_path / "ckpt", device="cuda")  # bf16, head and norms fp32
    assert model.net.dtype == torch.bfloat16
    eager_denoise = model.denoise
    cases = [
        (_observation(model, s, text), s) for s, text in ((0, "stack the cups"), (1, "open the drawer now"))
    ]
    expected = []
    for obs, seed in cases:
        batch, kv, noise = _stage_inputs(model, obs, seed)
        with torch.no_grad():
            expected.append(eager_denoise(batch, kv, noise))
    denoiser = use_cuda_graph(model)
    for _ in range(2):  # the second round replays graphs captured in the first
        for (obs, seed), want in zip(cases, expected, strict=True):
            batch, kv, noise = _stage_inputs(model, obs, seed)
            got = model.denoise(batch, kv, noise)
            assert got.shape == want.shape
            assert (got.float() - want.float()).abs().max().item() <= 1e-3
    assert 1 <= len(denoiser._graphs) <= 2


@pytest.mark.gpu
def test_cuda_graph_pipeline_end_to_end_matches_eager(tmp_path):
    from wall_runtime.backends.cuda_graph import use_cuda_graph

    write_tiny_checkpoint(tmp_path / "ckpt", "0.5")
    eager = WallOSS.from_checkpoint(tmp_path / "ckpt", device="cuda")
    graphed = WallOSS.from_checkpoint(tmp_path / "ckpt", device="cuda")
    use_cuda_graph(graphed)
    obs = _observation(eager, 3)
    noise = np.random.default_rng(4).standard_normal((eager.cfg.net.action_horizon, eager.cfg.net.action_dim))
    want = eager.infer([obs], [noise.astype(np.float32)])[0]
    for _ in range(3):
        got = graphed.infer([obs], [noise.astype(np.float32)])[0]
        assert np.abs(got.actions_normalized - want.actions_normalized).max() <= 1e-3
