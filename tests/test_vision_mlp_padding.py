"""The 1.1.0 model saves the ViT FFN padded to a multiple of 128 (spec §10): both widths load, a zero
padding computes the same outputs, the stored padding is used as stored, any other width is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from wall_runtime.model.checkpoint import CheckpointError
from wall_runtime.model.pipeline import WallOSS
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
from wall_runtime.types import Observation

TINY_VISION_MLP = 64  # tiny config's vision intermediate_size; 128 once padded


def _obs() -> Observation:
    rng = np.random.default_rng(0)
    return Observation(
        stamp=0.0,
        images={
            "face_view": rng.integers(0, 256, (60, 80, 3), dtype=np.uint8),
            "right_wrist_view": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        },
        state=rng.uniform(-1, 1, 8).astype(np.float32),
        instruction="pick up the cup",
    )


NOISE = np.random.default_rng(3).standard_normal((8, 12)).astype(np.float32)


def _infer(model: WallOSS) -> tuple[np.ndarray, torch.Tensor]:
    batch = model.preprocess([_obs()])
    features = model.encode_images(batch)
    actions = model.infer([_obs()], noise=[NOISE])[0].actions_normalized
    return actions, features


@pytest.fixture(scope="module")
def unpadded(tmp_path_factory):
    model = WallOSS.from_checkpoint(write_tiny_checkpoint(tmp_path_factory.mktemp("plain"), "0.5"))
    return model, *_infer(model)


@pytest.mark.parametrize("form", ["published", "fused"])  # vision MLP unfused (0.5 as published) / gate_up
def test_padded_vision_mlp_loads_and_matches_the_unpadded_form(tmp_path, unpadded, form):
    plain_model, plain_actions, plain_features = unpadded
    path = write_tiny_checkpoint(tmp_path, "0.5", form=form, pad_vision_mlp=True)
    stored = load_file(str(path / "model.safetensors"))
    key = "visual.blocks.0.mlp." + ("gate_proj.weight" if form == "published" else "gate_up_proj.weight")
    assert stored[key].shape[0] == (128 if form == "published" else 256)

    model = WallOSS.from_checkpoint(path)
    assert model.cfg.vision["intermediate_size"] == 128
    assert model.net.visual.blocks[1].mlp.gate_proj.weight.shape == (128, 32)
    assert model.cfg.config_json["vision_config"]["intermediate_size"] == TINY_VISION_MLP
    # the first 64 rows are the unpadded weights, bit for bit
    plain_gate = plain_model.net.visual.blocks[0].mlp.gate_proj.weight
    assert torch.equal(model.net.visual.blocks[0].mlp.gate_proj.weight[:TINY_VISION_MLP], plain_gate)

    actions, features = _infer(model)
    # zero padding only adds exact zeros to each sum: identical outputs
    assert torch.equal(features, plain_features)
    np.testing.assert_array_equal(actions, plain_actions)


def test_stored_padding_is_used_as_stored(tmp_path, unpadded):
    _, _, plain_features = unpadded
    path = write_tiny_checkpoint(tmp_path, "0.5", pad_vision_mlp=True)
    sd = load_file(str(path / "model.safetensors"))
    gen = torch.Generator().manual_seed(1)
    for name in list(sd):
        if ".mlp.gate_proj." in name or ".mlp.up_proj." in name:
            sd[name][TINY_VISION_MLP:] = torch.randn(sd[name][TINY_VISION_MLP:].shape, generator=gen)
        if ".mlp.down_proj.weight" in name:
            sd[name][:, TINY_VISION_MLP:] = torch.randn(sd[name][:, TINY_VISION_MLP:].shape, generator=gen)
    save_file(sd, str(path / "model.safetensors"))
    model = WallOSS.from_checkpoint(path)
    assert model.net.visual.blocks[0].mlp.gate_proj.weight[TINY_VISION_MLP:].abs().sum() > 0
    _, features = _infer(model)
    assert not torch.allclose(features, plain_features, atol=1e-3)


@pytest.mark.parametrize("form", ["published", "fused"])
@pytest.mark.parametrize("width", [96, 256])  # neither the config's 64 nor 64 rounded up to 128
def test_other_vision_mlp_widths_are_refused_by_name(tmp_path, form, width):
    path = write_tiny_checkpoint(tmp_path, "0.5", form=form, pad_vision_mlp=width)
    with pytest.raises(CheckpointError, match=r"visual\.blocks\.\d+\.mlp\..*multiple of 128 = 128"):
        WallOSS.from_checkpoint(path)


def test_make_tiny_checkpoint_writes_the_padded_form(tmp_path):
    from typer.testing import CliRunner

    from wall_runtime.cli import app

    r = CliRunner().invoke(
        app, ["make-tiny-checkpoint", str(tmp_path), "--variant", "0.5", "--pad-vision-mlp"]
    )
    assert r.exit_code == 0, r.output
    assert load_file(str(tmp_path / "model.safetensors"))["visual.blocks.1.mlp.down_proj.weight"].shape == (
        32,
        128,
    )
