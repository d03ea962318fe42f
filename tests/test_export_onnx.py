"""ONNX export of both checkpoint generations: onnxruntime equals torch (fp32, ≤ 1e-4), the fused
denoise graph equals the step-by-step torch loop, and shapes the graphs were not built for are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wall_runtime.backends.onnxruntime_backend import OnnxRuntimePolicy
from wall_runtime.backends.static_shapes import ShapeMismatchError, denoise_feeds
from wall_runtime.export.verify import as_numpy, synthetic_observation
from wall_runtime.model.decoder import KVCache
from wall_runtime.model.pipeline import WallOSS
from wall_runtime.model.sampler import denoise_stepwise
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
from wall_runtime.types import InpaintHint

STEPS = 10  # the reference step count: the unrolled graph holds all of them
TOL = 1e-4


@pytest.fixture(scope="module", params=["flow", "0.5"])
def setup(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"onnx-{request.param}")
    ck = root / "ckpt"
    write_tiny_checkpoint(ck, request.param)
    policy = OnnxRuntimePolicy.from_checkpoint(ck, cache_dir=root / "cache", num_steps=STEPS, seed=0)
    reference = WallOSS.from_checkpoint(ck, device="cpu", dtype=torch.float32, num_steps=STEPS)
    return request.param, ck, root, policy, reference


def _noise(policy, seed=1, rows=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, policy.metadata.action_horizon, policy.metadata.action_dim)).astype(
        np.float32
    )


def test_onnxruntime_policy_matches_torch(setup):
    variant, _, _, policy, reference = setup
    obs = synthetic_observation(policy, seed=3)
    noise = _noise(policy)
    got = policy.infer([obs], [noise[0]])[0]
    want = reference.infer([obs], [noise[0]])[0]
    assert got.actions_normalized.shape == (policy.metadata.action_horizon, policy.metadata.action_dim)
    err = np.abs(got.actions_normalized - want.actions_normalized).max()
    assert err <= TOL, f"{variant}: normalised chunk differs by {err}"
    assert np.abs(got.actions - want.actions).max() <= TOL * max(1.0, float(np.abs(want.actions).max()))
    # not a degenerate comparison: the chunk moved away from the noise and is not constant
    assert np.abs(want.actions_normalized - noise[0]).max() > 0.1
    assert set(got.timing_ms) >= {"preprocess", "prefix", "denoise", "postprocess", "total"}


def test_prefix_graph_kv_cache_matches_torch(setup):
    _, _, _, policy, reference = setup
    obs = synthetic_observation(policy, seed=4)
    stages = policy.stages([obs], _noise(policy))
    batch = reference.preprocess([obs])
    with torch.no_grad():
        kv = reference.prefix(batch, reference.prefix_embeds(batch, reference.encode_images(batch)))
    pad = policy.shapes.prefix_length - batch.prefix_length
    assert pad > 0  # the graph's prompt is left-padded beyond this prompt: padding must not matter
    for name, want in (("k", kv.k), ("v", kv.v)):
        got = as_numpy(stages[name])[..., pad:, :]
        assert got.shape == tuple(want.shape)
        assert np.abs(got - want.numpy()).max() <= TOL


def test_fused_denoise_graph_equals_stepwise_torch_loop(setup):
    """The whole N-step loop as one graph call == the Python loop calling denoise_step N times."""
    _, _, _, policy, reference = setup
    obs = synthetic_observation(policy, seed=5)
    noise = _noise(policy, seed=6)
    batch = reference.preprocess([obs])
    with torch.no_grad():
        kv = reference.prefix(batch, reference.prefix_embeds(batch, reference.encode_images(batch)))
        lp = batch.prefix_length
        h = policy.shapes.horizon
        stepwise = denoise_stepwise(
            reference.net,
            KVCache(kv.k, kv.v),
            torch.from_numpy(noise),
            torch.from_numpy(batch.dof_mask)[:, None, :].expand(-1, h, -1),
            torch.from_numpy(batch.position_ids[:, :, lp:]),
            torch.from_numpy(batch.attention_mask[:, :lp]),
            reference.settings,
            torch.from_numpy(batch.padding_action),
        ).numpy()
    # feed the graph the torch KV cache, left-padded to the graph's prompt length
    pad = policy.shapes.prefix_length - lp
    feeds = {}
    for name, t in (("k", kv.k), ("v", kv.v)):
        full = np.zeros(policy.shapes.kv_shape(), np.float32)
        full[..., pad:, :] = t.numpy()
        feeds[name] = full
    mask = np.zeros((1, policy.shapes.prefix_length), np.int64)
    mask[:, pad:] = batch.attention_mask[:, :lp]
    fused = as_numpy(policy.run_denoise(denoise_feeds(batch, policy.shapes, noise, mask) | feeds)["actions"])
    assert np.abs(fused - stepwise).max() <= 1e-5
    assert policy.metadata.num_steps == STEPS


def test_several_observations_run_in_groups_of_the_exported_batch(setup):
    _, _, _, policy, reference = setup
    observations = [synthetic_observation(policy, seed=s) for s in (7, 8, 9)]
    noise = _noise(policy, seed=10, rows=3)
    got = policy.infer(observations, list(noise))
    want = reference.infer(observations, list(noise))
    assert len(got) == 3
    for g, w in zip(got, want, strict=True):
        assert np.abs(g.actions_normalized - w.actions_normalized).max() <= TOL


def test_graphs_come_from_the_cache_the_second_time(setup):
    _, ck, root, policy, _ = setup
    again = OnnxRuntimePolicy.from_checkpoint(ck, cache_dir=root / "cache", num_steps=STEPS)
    assert again.shapes == policy.shapes
    manifests = list((root / "cache" / "onnx").glob("*/manifest.json"))
    assert len(manifests) == 1  # reused, not exported a second time


def test_inputs_the_graphs_were_not_built_for_are_refused(setup):
    _, _, _, policy, _ = setup
    obs = synthetic_observation(policy)
    name = policy.shapes.cameras[0]
    wrong_size = synthetic_observation(policy)
    wrong_size.images[name] = np.zeros((720, 1280, 3), np.uint8)
    with pytest.raises(ShapeMismatchError, match=f"{name}=1280x720"):
        policy.infer([wrong_size])
    missing = synthetic_observation(policy)
    del missing.images[name]
    with pytest.raises(ShapeMismatchError, match="cameras"):
        policy.infer([missing])
    long_text = synthetic_observation(policy, instruction=" ".join(["pick up the red block"] * 15))
    with pytest.raises(ShapeMismatchError, match="--text-tokens"):
        policy.infer([long_text])
    hinted = synthetic_observation(policy)
    h, d = policy.metadata.action_horizon, policy.metadata.action_dim
    hinted.inpaint = InpaintHint(np.zeros((h, d), np.float32), np.ones(h, np.float32))
    with pytest.raises(ValueError, match="torch backend"):
        policy.infer([hinted])
    with pytest.raises(ValueError, match="noise"):
        policy.infer([obs], [None, None])


def test_frames_resized_on_the_robot_host_fit_the_graphs_and_give_the_same_chunk(setup):
    """A client with ``resize_images`` sends each frame after the first resize: the graphs built for the
    camera frame take it, and the chunk is the same (the model input is bit-identical)."""
    from wall_runtime.model.image_processing import shrink_for_wire

    _, _, _, policy, _ = setup
    obs = synthetic_observation(policy, seed=8)
    resized = synthetic_observation(policy, seed=8)
    resized.images = {
        v: shrink_for_wire(img, policy.metadata.resolutions[v]) for v, img in obs.images.items()
    }
    assert all(resized.images[v].nbytes < obs.images[v].nbytes for v in obs.images)
    noise = _noise(policy, seed=9)
    want = policy.infer([obs], [noise[0]])[0].actions_normalized
    got = policy.infer([resized], [noise[0]])[0].actions_normalized
    np.testing.assert_array_equal(got, want)


def test_batched_graphs_pad_the_last_group_and_keep_rows_apart(tmp_path):
    """Graphs exported for batch 2 take 3 observations as two calls (the second padded with a copy);
    each row equals torch on that row alone, so padding rows and batch-mates never leak in."""
    write_tiny_checkpoint(tmp_path / "ckpt", "0.5")
    policy = OnnxRuntimePolicy.from_checkpoint(
        tmp_path / "ckpt", cache_dir=tmp_path / "cache", num_steps=2, batch=2
    )
    reference = WallOSS.from_checkpoint(tmp_path / "ckpt", device="cpu", dtype=torch.float32, num_steps=2)
    assert policy.shapes.batch == 2
    observations = [synthetic_observation(policy, seed=s) for s in (11, 12, 13)]
    observations[1].instruction = "open the drawer"  # rows of different prompt lengths
    noise = _noise(policy, seed=14, rows=3)
    got = policy.infer(observations, list(noise))
    assert len(got) == 3
    for obs, n, g in zip(observations, noise, got, strict=True):
        want = reference.infer([obs], [n])[0]
        assert np.abs(g.actions_normalized - want.actions_normalized).max() <= TOL
