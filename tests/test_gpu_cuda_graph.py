"""The torch backend's CUDA-graph paths equal eager (GPU only): the denoise loop alone
(``CudaGraphDenoise``) and the whole call in two graphs (``CudaGraphPolicy``: prefix = vision + prefill,
and the fused denoise), with no host synchronisation inside a replayed call and a graph cache bounded
and keyed by shape. On the CPU: the prompt-length bucketing is exact, and ``CudaGraphPolicy``'s
plumbing (the same two modules run eagerly) equals the torch pipeline."""

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
    from wall_runtime.backends.cuda_graph import CudaGraphDenoise

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
    graphed = CudaGraphDenoise(model)
    denoiser = graphed.denoiser
    for _ in range(2):  # the second round replays graphs captured in the first
        for (obs, seed), want in zip(cases, expected, strict=True):
            batch, kv, noise = _stage_inputs(model, obs, seed)
            got = graphed(batch, kv, noise)
            assert got.shape == want.shape
            assert (got.float() - want.float()).abs().max().item() <= 1e-3
    assert 1 <= len(denoiser._graphs) <= 2


@pytest.mark.gpu
def test_cuda_graph_pipeline_end_to_end_matches_eager(tmp_path):
    from wall_runtime.backends.cuda_graph import CudaGraphDenoise

    write_tiny_checkpoint(tmp_path / "ckpt", "0.5")
    eager = WallOSS.from_checkpoint(tmp_path / "ckpt", device="cuda")
    graphed = WallOSS.from_checkpoint(tmp_path / "ckpt", device="cuda")
    fast = CudaGraphDenoise(graphed)
    obs = _observation(eager, 3)
    noise = np.random.default_rng(4).standard_normal((eager.cfg.net.action_horizon, eager.cfg.net.action_dim))
    want = eager.infer([obs], [noise.astype(np.float32)])[0]
    for _ in range(3):
        got = graphed.infer([obs], [noise.astype(np.float32)], denoise=fast)[0]
        assert np.abs(got.actions_normalized - want.actions_normalized).max() <= 1e-3


# ---------------------------------------------------------------------------------------------------------
# the whole call in two graphs (CudaGraphPolicy)


def _policy(ck, **options):
    from wall_runtime.backends.cuda_graph import CudaGraphPolicy

    return CudaGraphPolicy.from_checkpoint(ck, num_steps=10, seed=0, **options)


@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_whole_call_plumbing_equals_the_torch_pipeline_on_cpu(tmp_path, variant):
    """``capture=False`` runs the prefix and denoise modules the graphs capture, fed exactly as the graphs
    are (static prompt length, feeds, KV cache handed over as tensors): fp32 on the CPU it must equal
    the torch pipeline."""
    ck = write_tiny_checkpoint(tmp_path / "ckpt", variant)
    policy = _policy(ck, device="cpu", capture=False)
    assert policy.metadata.backend == "cuda_graph"
    reference = WallOSS.from_checkpoint(ck, device="cpu", num_steps=10)
    obs = _observation(reference, 5)
    noise = (
        np.random.default_rng(6)
        .standard_normal((reference.cfg.net.action_horizon, reference.cfg.net.action_dim))
        .astype(np.float32)
    )
    got = policy.infer([obs], [noise])[0]
    want = reference.infer([obs], [noise])[0]
    assert np.abs(got.actions_normalized - want.actions_normalized).max() <= 1e-4
    assert set(got.timing_ms) >= {"preprocess", "prefix", "denoise", "total"}


def test_the_graph_backend_honours_noise_knots_and_publishes_the_state_layout(tmp_path):
    """Options and metadata a graph backend must carry like the torch one: ``noise_knots`` reaches the
    policy, and the openpi endpoint finds the checkpoint's state layout in its metadata (a graph
    policy holds no torch model to read it from)."""
    from wall_runtime.transport.openpi_ws import _policy_state_layout

    ck = write_tiny_checkpoint(tmp_path / "ckpt", "flow")
    policy = _policy(ck, device="cpu", capture=False, noise_knots=4)
    reference = WallOSS.from_checkpoint(ck, device="cpu", num_steps=10)
    assert policy.noise_knots == 4
    layout = _policy_state_layout(policy)
    assert layout and layout == dict(reference.cfg.data.agent_pos_config)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_whole_call_graphs_equal_eager_bf16_and_match_fp32(tmp_path, variant):
    from wall_runtime.export.parity import compare_stage

    ck = write_tiny_checkpoint(tmp_path / "ckpt", variant)
    graphed = _policy(ck)
    eager = _policy(ck, capture=False)
    reference = WallOSS.from_checkpoint(ck, device="cpu", num_steps=10)
    assert graphed.dtype == torch.bfloat16
    h, d = reference.cfg.net.action_horizon, reference.cfg.net.action_dim
    for round_ in range(2):  # the second round replays the graphs captured in the first
        for seed in (0, 1, 2):
            obs = _observation(
                reference, seed, instruction=("stack the cups", "open the drawer now")[seed % 2]
            )
            noise = np.random.default_rng(seed).standard_normal((h, d)).astype(np.float32)
            got = graphed.infer([obs], [noise])[0].actions_normalized
            want = eager.infer([obs], [noise])[0].actions_normalized
            assert np.abs(got - want).max() <= 1e-3, (round_, seed)
            fp32 = reference.infer([obs], [noise])[0].actions_normalized
            assert compare_stage("chunk", fp32, got, "bf16").passed
    # one static shape: one graph per stage, however often it ran
    assert len(graphed.run_prefix._graphs) == 1 and len(graphed.run_denoise._graphs) == 1
    # stage times are the graphs' GPU times (a replay returns at launch), within the call's wall time
    t = graphed.infer([obs], [noise])[0].timing_ms
    assert t["prefix"] > 0 and t["denoise"] > 0 and t["prefix"] + t["denoise"] <= t["total"]


@pytest.mark.gpu
def test_a_replayed_call_does_not_wait_for_the_gpu(tmp_path):
    """Prefix and denoise replays (inputs copied in, graph launched, KV cache handed over) under
    ``torch.cuda.set_sync_debug_mode("error")``: any host synchronisation raises."""
    from wall_runtime.backends.static_shapes import denoise_feeds, prefix_feeds

    ck = write_tiny_checkpoint(tmp_path / "ckpt", "0.5")
    policy = _policy(ck)
    obs = _observation(policy.preprocessor, 0)
    policy.infer([obs])  # captures both graphs
    batch = policy.preprocessor.preprocess([obs])
    feeds = prefix_feeds(batch, policy.shapes, policy.preprocessor.tokenizer)
    noise = np.zeros((1, policy.shapes.horizon, policy.shapes.action_dim), np.float32)
    rest = denoise_feeds(batch, policy.shapes, noise, feeds["attention_mask"])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            kv = policy.run_prefix(feeds)
            out = policy.run_denoise(rest | kv)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert out["actions"].shape == (1, policy.shapes.horizon, policy.shapes.action_dim)
    assert torch.isfinite(out["actions"]).all()


@pytest.mark.gpu
def test_graph_cache_is_bounded_and_keyed_by_shape():
    from wall_runtime.backends.cuda_graph import GraphedRunner

    class Double(torch.nn.Module):
        def forward(self, x):
            return x * 2 + 1

    runner = GraphedRunner(Double(), ("x",), ("y",), "cuda", max_graphs=2)
    shapes = [(4, 8), (2, 8), (4, 8), (3, 8), (2, 8)]
    for i, shape in enumerate(shapes):
        x = np.full(shape, float(i), np.float32)
        y = runner({"x": x})["y"]
        assert torch.equal(y.cpu(), torch.from_numpy(x * 2 + 1))
    keys = [k[0][1] for k in runner._graphs]
    assert keys == [(3, 8), (2, 8)]  # (4, 8) was least recently used when (2, 8) came back
