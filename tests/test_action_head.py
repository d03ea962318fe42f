"""Action head: time embedding formula, action / state embedding, projection back, precision split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wall_runtime.model.action_head import ActionHead, time_embedding
from wall_runtime.model.decoder import WallOSSNet, random_init_
from wall_runtime.model.layers import RMSNorm
from wall_runtime.model.net_config import tiny_net_config
from wall_runtime.model.sampler import denoise


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: one thread is faster, and far faster on a shared, oversubscribed CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_time_embedding_formula() -> None:
    """dim 8: freqs = exp(−ln(10000)·i/3), i = 0..3; [sin(t·f), cos(t·f)]; t raw, not × 1000."""
    t = torch.tensor([0.0, 0.1, 0.999, 1.0])
    got = time_embedding(t, 8).numpy()
    freqs = np.array([math.exp(-math.log(10000.0) * i / 3) for i in range(4)])
    angles = t.numpy()[:, None].astype(np.float64) * freqs[None]
    expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    assert got.dtype == np.float32 and got.shape == (4, 8)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert freqs[-1] == pytest.approx(1e-4)  # the lowest frequency is exactly 1/10000


def test_embed_actions_is_w3_silu_w2_of_w1_and_time() -> None:
    cfg = tiny_net_config("0.5")
    head = random_init_(ActionHead(cfg), seed=1)
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(2, cfg.action_horizon, cfg.action_dim, generator=g)
    mask = torch.ones_like(x_t)
    mask[1, :, -1] = 0
    t = torch.tensor([0.2, 0.7])
    with torch.no_grad():
        got = head.embed_actions(x_t, t, mask)
        w1 = torch.cat([x_t, mask], -1) @ head.w1.weight.T
        temb = time_embedding(t, cfg.action_hidden_size)[:, None].expand(-1, cfg.action_horizon, -1)
        hidden = torch.cat([w1, temb], -1) @ head.w2.weight.T
        expected = torch.nn.functional.silu(hidden) @ head.w3.weight.T
    assert got.shape == (2, cfg.action_horizon, cfg.action_hidden_size)
    assert torch.allclose(got, expected, atol=1e-6)
    # the dof mask is an input of w1: changing it changes the embedding
    assert not torch.allclose(got[1], head.embed_actions(x_t, t, torch.ones_like(x_t))[1].detach())


def test_project_back_reads_the_action_columns_in_fp32() -> None:
    cfg = tiny_net_config("0.5")
    head = random_init_(ActionHead(cfg), seed=3)
    hidden = torch.randn(1, cfg.action_horizon, cfg.action_width + 8).to(torch.bfloat16)
    with torch.no_grad():
        out = head.project_back(hidden)
        expected = hidden[..., : cfg.action_hidden_size].float() @ head.action_proj_back.weight.T
    assert out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=1e-6)


def test_embed_state_flow_and_its_absence_in_0_5() -> None:
    cfg = tiny_net_config("flow")
    net = random_init_(WallOSSNet(cfg), seed=4)
    state = torch.linspace(-1, 1, cfg.state_dim)[None].repeat(2, 1)
    mask = torch.ones_like(state)
    mask[:, -2:] = 0
    with torch.no_grad():
        emb = net.embed_state(state, mask)
        expected = torch.cat([state, mask], -1) @ net.action_preprocessor.propri_proj.weight.T
    assert emb.shape == (2, 1, cfg.hidden_size)
    assert torch.allclose(emb[:, 0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="dims"):
        net.embed_state(state[:, :-1], mask[:, :-1])
    with pytest.raises(ValueError, match="shape"):
        net.embed_state(state, mask[:1])
    with pytest.raises(RuntimeError, match="state_as_text"):
        WallOSSNet(tiny_net_config("0.5")).embed_state(state, mask)


def test_narrow_state_projection_is_zero_padded() -> None:
    cfg = tiny_net_config("flow", state_hidden_size=16)
    net = random_init_(WallOSSNet(cfg), seed=5)
    with torch.no_grad():
        emb = net.embed_state(torch.zeros(1, cfg.state_dim) + 0.3, torch.ones(1, cfg.state_dim))
    assert emb.shape == (1, 1, cfg.hidden_size)
    assert emb[..., 16:].abs().max() == 0 and emb[..., :16].abs().max() > 0


def test_to_inference_dtype_keeps_norms_and_head_in_fp32() -> None:
    net = random_init_(WallOSSNet(tiny_net_config("0.5")), seed=6).to_inference_dtype(torch.bfloat16)
    for name, param in net.named_parameters():
        owner = net.get_submodule(name.rpartition(".")[0])
        keep = name.startswith("action_preprocessor.") or isinstance(owner, RMSNorm)
        assert param.dtype == (torch.float32 if keep else torch.bfloat16), name
    assert net.dtype == torch.bfloat16


def test_rmsnorm_multiplies_weight_in_fp32() -> None:
    norm = RMSNorm(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.001, 0.999, 1.0, 3.0]))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).to(torch.bfloat16)
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.equal(norm(x), (norm.weight * normed).to(torch.bfloat16))
    assert norm(x).dtype == torch.bfloat16


@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_bf16_sampler_close_to_fp32(variant: str) -> None:
    """The bf16 split runs on CPU too; it stays near fp32 on a tiny model (a smoke check of the casts)."""
    cfg = tiny_net_config(variant)
    net32 = random_init_(WallOSSNet(cfg), seed=7, std=0.1).eval()
    net16 = random_init_(WallOSSNet(cfg), seed=7, std=0.1).eval().to_inference_dtype(torch.bfloat16)
    g = torch.Generator().manual_seed(8)
    lp, horizon = 6, cfg.action_horizon
    embeds = torch.randn(1, lp, cfg.hidden_size, generator=g)
    pos = torch.arange(lp)[None, None].expand(3, 1, -1)
    mask = torch.ones(1, lp, dtype=torch.long)
    spos = (lp + torch.arange(horizon))[None, None].expand(3, 1, -1)
    noise = torch.randn(1, horizon, cfg.action_dim, generator=g)
    dof = torch.ones_like(noise)
    outs = []
    with torch.no_grad():
        for net in (net32, net16):
            kv = net.prefix(embeds, pos, mask)
            outs.append(denoise(net, kv, noise, dof, spos, mask))
    assert outs[1].dtype == torch.float32
    assert (outs[0] - outs[1]).abs().max() < 0.1
    assert not torch.equal(outs[0], outs[1])  # bf16 really ran


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_bf16_on_gpu_close_to_fp32_cpu(variant: str) -> None:
    cfg = tiny_net_config(variant)
    net32 = random_init_(WallOSSNet(cfg), seed=7, std=0.1).eval()
    gpu = random_init_(WallOSSNet(cfg), seed=7, std=0.1).eval().cuda().to_inference_dtype(torch.bfloat16)
    lp, horizon = 6, cfg.action_horizon
    embeds = torch.randn(1, lp, cfg.hidden_size)
    pos = torch.arange(lp)[None, None].expand(3, 1, -1)
    mask = torch.ones(1, lp, dtype=torch.long)
    spos = (lp + torch.arange(horizon))[None, None].expand(3, 1, -1)
    noise = torch.randn(1, horizon, cfg.action_dim)
    dof = torch.ones_like(noise)
    with torch.no_grad():
        ref = denoise(net32, net32.prefix(embeds, pos, mask), noise, dof, spos, mask)
        args = [a.cuda() for a in (embeds, pos, mask)]
        out = denoise(gpu, gpu.prefix(*args), noise.cuda(), dof.cuda(), spos.cuda(), mask.cuda())
    assert out.dtype == torch.float32
    assert (out.cpu() - ref).abs().max() < 0.1
