"""Checkpoint IO: every published form loads to the same weights and outputs; bad files fail by name."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from wall_runtime.model.checkpoint import CheckpointError, read_state_dict
from wall_runtime.model.pipeline import WallOSS
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
from wall_runtime.types import Observation


def _obs(seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(
        stamp=0.0,
        images={"face_view": rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)},
        state=rng.uniform(-1, 1, 7).astype(np.float32),
        instruction="pick up the cup",
    )


def _run(path, noise: np.ndarray) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    model = WallOSS.from_checkpoint(path)
    out = model.infer([_obs()], noise=[noise])[0].actions_normalized
    return out, {k: v.clone() for k, v in model.net.state_dict().items()}


@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_fused_unfused_and_sharded_forms_give_identical_outputs(tmp_path, variant):
    paths = {
        "published": write_tiny_checkpoint(tmp_path / "pub", variant),
        "fused": write_tiny_checkpoint(tmp_path / "fused", variant, form="fused"),
        "unfused": write_tiny_checkpoint(tmp_path / "unfused", variant, form="unfused"),
        "sharded": write_tiny_checkpoint(
            tmp_path / "shard", variant, form="unfused", max_shard_bytes=100_000
        ),
    }
    keys = {name: set(read_state_dict(p)) for name, p in paths.items()}
    assert any("gate_up_proj" in k for k in keys["fused"])
    assert not any("gate_up_proj" in k or "qkv_proj" in k for k in keys["unfused"])
    assert len(list(paths["sharded"].glob("model-*-of-*.safetensors"))) > 1
    assert (paths["sharded"] / "model.safetensors.index.json").is_file()

    noise = np.random.default_rng(3).standard_normal((8, 10 if variant == "flow" else 12)).astype(np.float32)
    reference, ref_sd = _run(paths["published"], noise)
    assert np.isfinite(reference).all() and np.abs(reference).max() > 0
    for name in ("fused", "unfused", "sharded"):
        out, sd = _run(paths[name], noise)
        for k in ref_sd:
            assert torch.equal(sd[k], ref_sd[k]), f"{name}: {k} differs"
        np.testing.assert_array_equal(out, reference, err_msg=name)


def _rewrite(path, edit) -> None:
    sd = load_file(str(path / "model.safetensors"))
    edit(sd)
    save_file(sd, str(path / "model.safetensors"))


def test_missing_key_is_named(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "flow")
    _rewrite(path, lambda sd: sd.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(
        CheckpointError, match=r"missing key\(s\): .*model\.layers\.1\.self_attn\.k_proj\.bias"
    ):
        WallOSS.from_checkpoint(path)


def test_missing_fused_part_is_named(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "0.5")
    _rewrite(path, lambda sd: sd.pop("model.layers.0.moe.experts.1.gate_up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.moe\.experts\.1\.(gate|up)_proj\.weight"):
        WallOSS.from_checkpoint(path)


def test_unexpected_key_is_named(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "flow")
    _rewrite(path, lambda sd: sd.__setitem__("model.layers.9.mystery.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): model\.layers\.9\.mystery\.weight"):
        WallOSS.from_checkpoint(path)


def test_wrong_shape_is_named(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "flow")
    _rewrite(path, lambda sd: sd.__setitem__("action_preprocessor.w3.weight", torch.zeros(3, 3)))
    with pytest.raises(CheckpointError, match=r"action_preprocessor\.w3\.weight has shape \(3, 3\)"):
        WallOSS.from_checkpoint(path)


def test_normaliser_and_tied_head_keys_are_dropped(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "0.5")
    noise = np.zeros((8, 12), np.float32)
    before = WallOSS.from_checkpoint(path).infer([_obs()], noise=[noise])[0].actions_normalized

    def add(sd):
        sd["action_preprocessor.normalizer_action.min.robot"] = torch.zeros(12)
        sd["action_preprocessor.normalizer_propri.delta.robot"] = torch.ones(12)
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()

    _rewrite(path, add)
    after = WallOSS.from_checkpoint(path).infer([_obs()], noise=[noise])[0].actions_normalized
    np.testing.assert_array_equal(before, after)


def test_embedding_smaller_than_tokenizer_is_refused(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "flow")
    _rewrite(
        path, lambda sd: sd.__setitem__("model.embed_tokens.weight", sd["model.embed_tokens.weight"][:-2])
    )
    with pytest.raises(ValueError, match="rows but the tokenizer has"):
        WallOSS.from_checkpoint(path)


def test_shard_index_listing_an_absent_file_is_named(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "flow", max_shard_bytes=200_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    (path / shard).unlink()
    with pytest.raises(CheckpointError, match=shard):
        read_state_dict(path)


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    def digest(p):
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(p.iterdir())}

    a = digest(write_tiny_checkpoint(tmp_path / "a", "0.5", seed=1))
    b = digest(write_tiny_checkpoint(tmp_path / "b", "0.5", seed=1))
    c = digest(write_tiny_checkpoint(tmp_path / "c", "0.5", seed=2))
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"]
    assert a["tokenizer.json"] == c["tokenizer.json"]


def test_shards_without_an_index_are_read(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "a", "flow", max_shard_bytes=200_000)
    expected = read_state_dict(path)
    (path / "model.safetensors.index.json").unlink()
    got = read_state_dict(path)
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_full_size_flow_layout_has_the_published_parameter_count():
    import math

    from wall_runtime.model.checkpoint import unfused_weight_shapes
    from wall_runtime.model.config import build_config
    from wall_runtime.model.size import published_config_files

    cfg = build_config(*published_config_files("flow"), vocab_size=151667)
    total = sum(math.prod(s) for s in unfused_weight_shapes(cfg).values())
    assert 4.15e9 < total < 4.3e9  # "about 4.2 B" on the model cards


def test_full_size_05_action_expert_shapes():
    from wall_runtime.model.checkpoint import fuse_shapes, published_fused_names, unfused_weight_shapes
    from wall_runtime.model.config import build_config
    from wall_runtime.model.size import published_config_files

    cfg = build_config(*published_config_files("0.5"), vocab_size=151667)
    shapes = fuse_shapes(unfused_weight_shapes(cfg), published_fused_names(cfg, "published"))
    assert shapes["model.layers.0.self_attn.qkv_proj_experts.1.weight"] == (2560, 1024)
    assert shapes["model.layers.0.self_attn.qkv_proj_experts.1.bias"] == (2560,)
    assert shapes["model.layers.0.self_attn.o_proj_experts.1.weight"] == (1024, 2048)
    assert shapes["model.layers.35.moe.experts.0.gate_up_proj.weight"] == (22016, 2048)
    assert shapes["visual.blocks.0.mlp.gate_proj.weight"] == (3420, 1280)  # vision MLP unfused in 0.5
    assert shapes["visual.blocks.0.attn.qkv.weight"] == (3840, 1280)
    assert shapes["model.norms.1.weight"] == (1024,)
    assert shapes["action_preprocessor.w1.weight"] == (1024, 2 * 26)  # the 26-D contract, proj_with_mask
    assert "action_preprocessor.propri_proj.weight" not in shapes  # state is text
    assert "lm_head.weight" not in shapes
