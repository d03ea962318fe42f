"""End-to-end pipeline on tiny checkpoints of both generations (CPU, fp32)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wall_runtime.backends import load_policy
from wall_runtime.model.normalizer import NormalizerError
from wall_runtime.model.pipeline import ObservationError, WallOSS
from wall_runtime.model.prompt import state_text
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
from wall_runtime.types import InpaintHint, Observation

H = 8


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    return WallOSS.from_checkpoint(write_tiny_checkpoint(tmp_path_factory.mktemp("flow"), "flow"))


@pytest.fixture(scope="module")
def v05(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("v05"), "0.5", normalizers="pth")
    return WallOSS.from_checkpoint(path)


def _obs(seed=0, views=("face_view",), state_dims=7, **kw) -> Observation:
    rng = np.random.default_rng(seed)
    images = {v: rng.integers(0, 256, (60 + 8 * i, 80, 3), dtype=np.uint8) for i, v in enumerate(views)}
    state = rng.uniform(-1, 1, state_dims).astype(np.float32)
    return Observation(0.0, images, state, "put the red cube in the bowl", **kw)


def _noise(model, seed=1):
    return np.random.default_rng(seed).standard_normal((H, model.cfg.net.action_dim)).astype(np.float32)


def test_both_variants_load_through_load_policy(tmp_path):
    for variant, dim in (("flow", 10), ("0.5", 12)):
        policy = load_policy(write_tiny_checkpoint(tmp_path / variant, variant), "torch", seed=0)
        meta = policy.metadata
        assert (meta.variant, meta.backend, meta.action_dim, meta.action_horizon) == (
            variant,
            "torch",
            dim,
            H,
        )
        assert meta.cameras == ("face_view", "right_wrist_view")
        result = policy.infer([_obs()])[0]
        assert result.actions.shape == result.actions_normalized.shape == (H, dim)
        assert np.isfinite(result.actions).all()
        assert {"preprocess", "vision", "prefix", "denoise", "postprocess"} <= set(result.timing_ms)


def test_flow_state_is_zero_filled_then_normalised(flow):
    batch = flow.preprocess([_obs(state_dims=7)])
    np.testing.assert_array_equal(batch.state_mask[0], [1] * 7 + [0] * 3)
    np.testing.assert_array_equal(batch.state[0, 7:], [-1, -1, -1])  # normalize(0) on the padded tail
    raw = np.zeros(10, np.float32)
    raw[:7] = _obs(state_dims=7).state
    np.testing.assert_array_equal(batch.state[0], flow.normalizers.state.normalize(raw, flow.norm_key))
    assert batch.prompts[0].count("<|propri|>") == 1
    assert "Observation: front view: <|vision_start|>" in batch.prompts[0]


def test_05_state_is_written_as_integers_without_masked_dims(v05):
    mask = np.array([1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0], np.float32)
    obs = _obs(state_dims=12, state_mask=mask, views=("face_view", "right_wrist_view"))
    batch = v05.preprocess([obs])
    raw = obs.state * mask
    expected = state_text(v05.normalizers.state.normalize(raw, v05.norm_key), mask, 256)
    assert len(expected.split()) == 7
    assert f"Proprioception: {expected}\n<|im_end|>" in batch.prompts[0]
    assert "<|propri|>" not in batch.prompts[0]
    # camera_name_mapping maps face_view; the unmapped camera keeps its raw key
    assert "Observation: front view: " in batch.prompts[0] and " right_wrist_view: " in batch.prompts[0]


def test_05_masked_dofs_come_out_at_their_padding_values(v05):
    dof_mask = np.ones(12, np.float32)
    dof_mask[[1, 5]] = 0  # two real dims masked, plus the action_padding tail below
    dof_mask[7:] = 0
    noise = _noise(v05)
    out = v05.infer([_obs(dof_mask=dof_mask)], noise=[noise])[0]
    pad = v05.normalizers.action.normalize(np.zeros(12, np.float32), v05.norm_key)
    masked = dof_mask == 0
    # every step overrides v = pad − noise, so x = noise + (t_N − t_0)(pad − noise), t_N = 0.999
    expected = noise + np.float32(0.999) * (pad - noise)
    np.testing.assert_allclose(out.actions_normalized[:, masked], expected[:, masked], atol=2e-6)
    assert np.abs(out.actions_normalized[:, masked] - pad[masked]).max() < 0.01
    np.testing.assert_allclose(out.actions[:, masked], 0.0, atol=0.01)  # robot units: raw 0
    assert np.abs(out.actions_normalized[:, ~masked] - expected[:, ~masked]).max() > 0.1


def test_flow_masked_dofs_with_override_reach_padding_exactly(tmp_path):
    model = WallOSS.from_checkpoint(write_tiny_checkpoint(tmp_path, "flow"), dof_override="every_step")
    noise = _noise(model)
    out = model.infer([_obs(state_dims=5)], noise=[noise])[0]  # no dof_mask: first 5 dims present
    pad = model.normalizers.action.normalize(np.zeros(10, np.float32), model.norm_key)
    np.testing.assert_allclose(out.actions_normalized[:, 5:], np.broadcast_to(pad[5:], (H, 5)), atol=2e-6)


def test_noise_is_honoured(flow):
    noise = _noise(flow)
    a = flow.infer([_obs()], noise=[noise])[0].actions_normalized
    b = flow.infer([_obs()], noise=[noise])[0].actions_normalized
    c = flow.infer([_obs()], noise=[_noise(flow, seed=2)])[0].actions_normalized
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_left_padded_batch_equals_single_runs(flow, v05, variant):
    model = flow if variant == "flow" else v05
    observations = [
        _obs(0, views=("face_view", "right_wrist_view")),
        _obs(1, views=("right_wrist_view",), state_dims=3),
        _obs(2, views=("face_view",)),
    ]
    observations[1].instruction = "wave"
    noise = [_noise(model, seed=s) for s in range(3)]
    batch = model.infer(observations, noise=noise)
    assert len(set(len(p) for p in model.preprocess(observations).prompts)) > 1  # really padded
    for i, obs in enumerate(observations):
        single = model.infer([obs], noise=[noise[i]])[0]
        np.testing.assert_allclose(batch[i].actions_normalized, single.actions_normalized, atol=1e-5)


def test_per_observation_norm_keys(tmp_path):
    from wall_runtime.model.normalizer import write_normalizer_pth

    path = write_tiny_checkpoint(tmp_path, "flow", normalizers="pth")
    write_normalizer_pth(
        path / "normalizer_action.pth", {"a": (np.zeros(7), np.ones(7)), "b": (np.ones(7), 2 * np.ones(7))}
    )
    write_normalizer_pth(
        path / "normalizer_propri.pth", {"a": (np.zeros(7), np.ones(7)), "b": (np.zeros(7), np.ones(7))}
    )
    with pytest.raises(NormalizerError, match="several norm keys"):
        WallOSS.from_checkpoint(path)
    model = WallOSS.from_checkpoint(path, norm_key="a")
    noise = _noise(model)
    ra, rb = model.infer([_obs(norm_key="a"), _obs(norm_key="b")], noise=[noise, noise])
    np.testing.assert_allclose(ra.actions_normalized, rb.actions_normalized, atol=1e-5)
    # same normalised chunk, un-normalised with each key: b = 2·a_unit + 1 on the real dims
    np.testing.assert_allclose(rb.actions[:, :7], 2 * ra.actions[:, :7] + 1, atol=1e-5)
    with pytest.raises(NormalizerError, match="unknown norm key 'c'"):
        model.infer([_obs(norm_key="c")])


def test_rtc_inpainting_pulls_toward_the_hint(flow):
    noise = _noise(flow)
    free = flow.infer([_obs()], noise=[noise])[0]
    target = np.full((H, 10), 0.3, np.float32)
    weights = np.array([1, 1, 1, 1, 0, 0, 0, 0], np.float32)
    hint = InpaintHint(actions=target, weights=weights, max_guidance=5.0)
    guided = flow.infer([_obs(inpaint=hint)], noise=[noise])[0]
    err_free = np.abs(free.actions[:4, :7] - 0.3).mean()
    err_guided = np.abs(guided.actions[:4, :7] - 0.3).mean()
    assert err_guided < 0.5 * err_free


@pytest.mark.parametrize(
    "obs_kwargs, message",
    [
        (dict(views=("face_view", "top_view")), r"unknown camera\(s\) \['top_view'\]"),
        (dict(views=()), "no image"),
        (dict(state_dims=11), "state has 11 dims"),
        (dict(dof_mask=np.ones(4, np.float32)), "dof_mask has 4 entries"),
        (dict(state_mask=np.full(10, 0.5, np.float32)), "only 0 and 1"),
    ],
)
def test_bad_observations_are_clear_errors(flow, obs_kwargs, message):
    with pytest.raises(ObservationError, match=message):
        flow.infer([_obs(**obs_kwargs)])


def test_nan_state_and_bad_noise_are_refused(flow):
    obs = _obs()
    obs.state[2] = np.nan
    with pytest.raises(ObservationError, match="NaN"):
        flow.infer([obs])
    with pytest.raises(ObservationError, match=r"noise\[0\] has shape"):
        flow.infer([_obs()], noise=[np.zeros((3, 3), np.float32)])


def test_seeded_generator_reproduces(flow):
    a = flow.infer([_obs()], generator=torch.Generator().manual_seed(5))[0].actions
    b = flow.infer([_obs()], generator=torch.Generator().manual_seed(5))[0].actions
    np.testing.assert_array_equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_cuda_bf16_tracks_cpu_fp32(tmp_path, variant):
    path = write_tiny_checkpoint(tmp_path, variant)
    cpu = WallOSS.from_checkpoint(path)
    gpu = WallOSS.from_checkpoint(path, device="cuda")  # bf16 transformer, fp32 head and norms
    assert gpu.net.dtype == torch.bfloat16
    assert gpu.net.action_preprocessor.w1.weight.dtype == torch.float32
    noise = _noise(cpu)
    a = cpu.infer([_obs()], noise=[noise])[0].actions_normalized
    b = gpu.infer([_obs()], noise=[noise])[0].actions_normalized
    assert np.isfinite(b).all()
    assert np.abs(a - b).max() < 0.25  # bf16 rounding through a random model, not a different result


def test_prompt_ids_and_pixels_match_transformers_processing(v05, tmp_path):
    """Token ids as transformers' tokenizer gives them after the Qwen processor's image-pad expansion."""
    transformers = pytest.importorskip("transformers")
    from wall_runtime.model.image_processing import resize_longest_side

    ckpt = write_tiny_checkpoint(tmp_path, "0.5")
    ref_tok = transformers.AutoTokenizer.from_pretrained(str(ckpt))
    ref_tok.add_tokens(["<|propri|>", "<|action|>"])
    ref_images = transformers.Qwen2VLImageProcessor()
    obs = _obs(4, views=("face_view", "right_wrist_view"), state_dims=9)
    obs.images = {
        k: np.random.default_rng(9).integers(0, 256, (480, 640, 3), dtype=np.uint8) for k in obs.images
    }
    batch = v05.preprocess([obs])
    ref = ref_images(
        images=[resize_longest_side(obs.images[v], 112) for v in ("face_view", "right_wrist_view")]
    )
    np.testing.assert_array_equal(np.asarray(ref["image_grid_thw"]), batch.grid_thw)
    np.testing.assert_allclose(np.asarray(ref["pixel_values"]), batch.pixel_values, atol=1e-5)
    pieces = batch.prompts[0].split("<|image_pad|>")
    text = pieces[0]
    for grid, rest in zip(ref["image_grid_thw"].tolist(), pieces[1:], strict=True):
        text += "<|image_pad|>" * (math.prod(int(x) for x in grid) // 4) + rest
    assert ref_tok(text, add_special_tokens=False)["input_ids"] == batch.input_ids[0].tolist()
