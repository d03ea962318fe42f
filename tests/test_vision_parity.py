"""The vision tower equals transformers' Qwen2.5-VL vision model loaded with the same tiny random weights."""

from __future__ import annotations

import pytest
import torch

from wall_runtime.model.vision import VisionConfig, VisionTower, build_plan

TINY = dict(
    depth=4,
    hidden_size=64,
    intermediate_size=128,
    num_heads=4,
    out_hidden_size=96,
    in_chans=3,
    patch_size=14,
    temporal_patch_size=2,
    spatial_merge_size=2,
    window_size=56,  # 2×2 merge blocks per window: several windows per image, ragged at the edges
    fullatt_block_indexes=[1, 3],
    tokens_per_second=2,
    hidden_act="silu",
)
# 640×480 at 256, 1280×720 at 256, and a two-frame grid (t = 2) to exercise per-frame full attention
GRIDS = torch.tensor([[1, 14, 18], [1, 10, 18], [2, 6, 8]])


@pytest.fixture(scope="module")
def models():
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    hf_kwargs = {("in_channels" if k == "in_chans" else k): v for k, v in TINY.items()}
    hf_config = Qwen2_5_VLVisionConfig(**hf_kwargs)
    hf_config._attn_implementation = "eager"
    torch.manual_seed(0)
    reference = Qwen2_5_VisionTransformerPretrainedModel(hf_config).eval()
    with torch.no_grad():  # the default init leaves norms at 1 and biases at 0: randomise everything
        for parameter in reference.parameters():
            parameter.normal_(0.0, 0.2)
    ours = VisionTower(VisionConfig.from_dict(TINY)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(1)
    return torch.randn(int(GRIDS.prod(-1).sum()), 3 * 2 * 14 * 14)


def test_matches_transformers_fp32(models, pixels):
    reference, ours = models
    with torch.no_grad():
        expected = reference(pixels, grid_thw=GRIDS).pooler_output
        got = ours(pixels, GRIDS)
    assert got.shape == (pixels.shape[0] // 4, 96) == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 1.0  # a meaningful comparison, not two near-zero tensors


def test_each_image_alone_equals_its_slice_of_the_batch(models, pixels):
    _, ours = models
    with torch.no_grad():
        batch = ours(pixels, GRIDS)
        counts = GRIDS.prod(-1).tolist()
        starts = [sum(counts[:i]) for i in range(len(counts))]
        for grid, start, count in zip(GRIDS, starts, counts, strict=True):
            alone = ours(pixels[start : start + count], grid[None])
            torch.testing.assert_close(alone, batch[start // 4 : (start + count) // 4], atol=1e-5, rtol=0)


def test_precomputed_plan_gives_the_same_output(models, pixels):
    _, ours = models
    plan = build_plan(ours.cfg, GRIDS)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels, plan=plan), ours(pixels, GRIDS), atol=0, rtol=0)
    assert ours.plan(GRIDS) is ours.plan(GRIDS.numpy())  # cached per grid
    assert plan.window_mask.sum() < plan.full_mask.sum()  # windows really are smaller than frames


def test_bf16_stays_close_to_fp32(models, pixels):
    _, ours = models
    bf16 = VisionTower(ours.cfg).eval()
    bf16.load_state_dict(ours.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    with torch.no_grad():
        expected = ours(pixels, GRIDS)
        got = bf16(pixels, GRIDS)
    assert got.dtype == torch.bfloat16
    assert bf16.plan(GRIDS).cos.dtype == torch.float32  # rotary tables stay fp32
    relative = (got.float() - expected).norm() / expected.norm()
    assert relative < 0.02  # measured 0.7 % on this model


@pytest.mark.gpu
def test_cuda_bf16_matches_cpu_fp32(models, pixels):
    _, ours = models
    gpu = VisionTower(ours.cfg).eval()
    gpu.load_state_dict(ours.state_dict())
    gpu = gpu.to("cuda", torch.bfloat16)
    with torch.no_grad():
        expected = ours(pixels, GRIDS)
        got = gpu(pixels.cuda(), GRIDS).float().cpu()
    assert (got - expected).norm() / expected.norm() < 0.02


def test_state_dict_names_match_the_published_checkpoint():
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    cfg = VisionConfig()  # Qwen2.5-VL-3B
    with torch.device("meta"):
        ours = VisionTower(cfg)
        reference = Qwen2_5_VisionTransformerPretrainedModel(
            Qwen2_5_VLVisionConfig(
                depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048
            )
        )
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    reference_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours_shapes == reference_shapes
    assert ours_shapes["merger.mlp.0.weight"] == (5120, 5120)
    assert ours_shapes["blocks.31.mlp.gate_proj.bias"] == (3420,)


def test_config_from_qwen_config_json():
    published = {  # vision_config of Qwen2.5-VL-3B-Instruct/config.json
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    }
    cfg = VisionConfig.from_dict(published)
    assert cfg == VisionConfig()
    assert cfg.fullatt_block_indexes == (7, 15, 23, 31) and cfg.patch_dim == 1176
    with pytest.raises(ValueError, match="fullatt_block_indexes"):
        VisionConfig.from_dict({**published, "depth": 8})


def test_bad_inputs_are_refused(models, pixels):
    _, ours = models
    with pytest.raises(ValueError, match="needs 4"):
        ours(pixels[:10], torch.tensor([[1, 2, 2]]))
    with pytest.raises(ValueError, match=r"\[N, 1176\]"):
        ours(pixels[:, :100], GRIDS)
    with pytest.raises(ValueError, match="merge size"):
        ours(pixels[:9], torch.tensor([[1, 3, 3]]))
    with pytest.raises(ValueError, match="grid_thw"):
        ours(pixels, torch.tensor([1, 14, 18]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_fixed_grid_exports_to_onnx(models, pixels, tmp_path):
    import numpy as np
    import onnxruntime

    from wall_runtime.model.vision import FixedGridVisionTower

    _, ours = models
    grids = GRIDS[:2]
    x = pixels[: int(grids.prod(-1).sum())]
    fixed = FixedGridVisionTower(ours, grids).eval()
    path = tmp_path / "vision.onnx"
    torch.onnx.export(
        fixed, (x,), str(path), dynamo=False, input_names=["pixel_values"], output_names=["embeds"]
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixel_values": x.numpy()})[0]
    with torch.no_grad():
        expected = ours(x, grids).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5
