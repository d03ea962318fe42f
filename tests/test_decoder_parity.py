"""Decoder parity: our expert-0 path against transformers' Qwen2.5-VL language model (same tiny weights).

transformers is the numerical reference here only; the runtime never imports it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from wall_runtime.model.decoder import (
    ACTION_EXPERT,
    PREFIX_EXPERT,
    WallOSSNet,
    full_attention_mask,
    random_init_,
)
from wall_runtime.model.net_config import tiny_net_config


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: one thread is faster, and far faster on a shared, oversubscribed CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


transformers = pytest.importorskip("transformers")

IMAGE, VIDEO, VISION_START, VISION_END = 500, 501, 502, 503
# (t, h, w) patch grids of two images; after the 2x2 merge they give 6 and 2 tokens
GRIDS = [(1, 4, 6), (1, 2, 4)]


def _hf_model(variant: str):
    cfg = tiny_net_config(variant)
    hf_cfg = transformers.Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.expert_intermediate[0],
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads,
            vocab_size=cfg.vocab_size,
            rms_norm_eps=cfg.rms_norm_eps,
            max_position_embeddings=4096,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": cfg.rope_theta,
                "mrope_section": list(cfg.mrope_section),
            },
            bos_token_id=None,
            eos_token_id=None,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=cfg.hidden_size,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    hf = transformers.Qwen2_5_VLForConditionalGeneration(hf_cfg).eval()
    with torch.no_grad():
        for name, param in hf.model.language_model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.2)
    return cfg, hf


def _copy_language_model(hf, net: WallOSSNet) -> None:
    """Published-name transfer: the Qwen LM becomes expert 0 (fused qkv for the per-expert form)."""
    src = hf.model.language_model.state_dict()
    dst = net.state_dict()
    out = {}
    cfg = net.cfg
    out["model.embed_tokens.weight"] = src["embed_tokens.weight"]
    out["model.norms.0.weight" if cfg.norm_per_expert else "model.norm.weight"] = src["norm.weight"]
    for i in range(cfg.num_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        if cfg.attention_per_expert:
            for kind in ("weight", "bias"):
                out[q + f"self_attn.qkv_proj_experts.0.{kind}"] = torch.cat(
                    [src[p + f"self_attn.{n}_proj.{kind}"] for n in "qkv"]
                )
            out[q + "self_attn.o_proj_experts.0.weight"] = src[p + "self_attn.o_proj.weight"]
        else:
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                for kind in ("weight", "bias"):
                    if p + f"self_attn.{n}.{kind}" in src:
                        out[q + f"self_attn.{n}.{kind}"] = src[p + f"self_attn.{n}.{kind}"]
        for n in ("gate_proj", "up_proj", "down_proj"):
            out[q + f"moe.experts.0.{n}.weight"] = src[p + f"mlp.{n}.weight"]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            key = q + (f"{norm}s.0.weight" if cfg.norm_per_expert else f"{norm}.weight")
            out[key] = src[p + f"{norm}.weight"]
    assert set(out) <= set(dst), set(out) - set(dst)
    net.load_state_dict(out, strict=False)


def _prompt(text_lengths: list[int], pad: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    ids: list[int] = [0] * pad
    for n, grid in zip(text_lengths, [*GRIDS, None], strict=True):
        ids += torch.randint(1, IMAGE, (n,), generator=g).tolist()
        if grid is not None:
            ids += [VISION_START] + [IMAGE] * (grid[0] * grid[1] * grid[2] // 4) + [VISION_END]
    return ids


@pytest.fixture(scope="module", params=["flow", "0.5"])
def parity_case(request):
    cfg, hf = _hf_model(request.param)
    net = WallOSSNet(cfg).eval()
    _copy_language_model(hf, net)
    # batch of 2: the second prompt is 3 text tokens shorter and left-padded
    rows = [_prompt([5, 3, 4], pad=0, seed=1), _prompt([2, 3, 4], pad=3, seed=2)]
    input_ids = torch.tensor(rows)
    attention_mask = (torch.arange(input_ids.shape[1])[None] >= torch.tensor([[0], [3]])).long()
    grid_thw = torch.tensor(GRIDS * 2)
    pixels = torch.randn(
        int(grid_thw.prod(-1).sum()), 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(3)
    )
    return cfg, hf, net, input_ids, attention_mask, grid_thw, pixels


def test_decoder_matches_transformers_qwen2_5_vl(parity_case) -> None:
    cfg, hf, net, input_ids, attention_mask, grid_thw, pixels = parity_case
    with torch.no_grad():
        position_ids, _ = hf.model.get_rope_index(
            input_ids,
            mm_token_type_ids=(input_ids == IMAGE).int(),
            image_grid_thw=grid_thw,
            attention_mask=attention_mask,
        )
        ref = hf.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            pixel_values=pixels,
            image_grid_thw=grid_thw,
            use_cache=True,
        )
        image_embeds = torch.cat(hf.model.get_image_features(pixels, grid_thw).pooler_output)
        embeds = net.embed_tokens(input_ids)
        embeds[input_ids == IMAGE] = image_embeds
        kv, hidden = net.prefix_with_hidden(embeds, position_ids, attention_mask)

    valid = attention_mask.bool()
    # the position ids really are 3-D over the images (else this would test plain RoPE only)
    assert not torch.equal(position_ids[0], position_ids[1])
    err = (hidden[valid] - ref.last_hidden_state[valid]).abs().max().item()
    assert err <= 1e-4, f"final hidden states differ by {err}"
    assert ref.last_hidden_state[valid].abs().max() > 0.1
    for layer in range(cfg.num_layers):
        keys = ref.past_key_values.layers[layer].keys  # [B, kv_heads, L, head_dim], after RoPE
        values = ref.past_key_values.layers[layer].values
        k_err = (kv.k[layer].transpose(1, 2)[valid] - keys.transpose(1, 2)[valid]).abs().max().item()
        v_err = (kv.v[layer].transpose(1, 2)[valid] - values.transpose(1, 2)[valid]).abs().max().item()
        assert k_err <= 1e-4 and v_err <= 1e-4, (layer, k_err, v_err)


def test_cached_keys_independent_of_padding(parity_case) -> None:
    """A left-padded row gives the same prefix K/V and hidden states as the same prompt alone."""
    cfg, _, net, input_ids, attention_mask, _, _ = parity_case
    torch.manual_seed(4)
    embeds = torch.randn(*input_ids.shape, cfg.hidden_size)
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
    with torch.no_grad():
        kv, hidden = net.prefix_with_hidden(embeds, pos, attention_mask)
        kv1, hidden1 = net.prefix_with_hidden(embeds[1:, 3:], pos[:, 1:, 3:], attention_mask[1:, 3:])
    assert torch.isfinite(hidden).all()
    assert (hidden[1, 3:] - hidden1[0]).abs().max() <= 1e-5
    assert (kv.k[:, 1, :, 3:] - kv1.k[:, 0]).abs().max() <= 1e-5


def test_prefix_kv_equals_the_full_pass_kv(parity_case) -> None:
    """``prefix`` stops the last layer after its K/V (no attention output, FFN or final norm):
    the cache is bit-identical to the one the full pass leaves."""
    cfg, _, net, input_ids, attention_mask, _, _ = parity_case
    embeds = torch.randn(*input_ids.shape, cfg.hidden_size, generator=torch.Generator().manual_seed(5))
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
    with torch.no_grad():
        full, _ = net.prefix_with_hidden(embeds, pos, attention_mask)
        cache = net.prefix(embeds, pos, attention_mask)
    assert torch.equal(cache.k, full.k) and torch.equal(cache.v, full.v)


def _reference_routed_hidden(net: WallOSSNet, embeds, position_ids, token_types, mask):
    """Straight transcription of the reference's routing by token type over ONE full-width stream:
    every token has ``hidden_size`` columns; a per-expert module of expert e reads and writes columns
    ``[:expert_hidden[e]]`` of the tokens of type e and the rest stay zero (spec §2); shared modules
    (FLOW's attention and norms) see every token."""
    from wall_runtime.model.layers import apply_rope, mrope_cos_sin

    cfg = net.cfg
    h = embeds.clone()
    batch, length, _ = h.shape
    experts = list(enumerate(cfg.expert_hidden))
    cos, sin = mrope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta, cfg.mrope_section)

    def routed(module_of, x):
        out = torch.zeros_like(x)
        for e, width in experts:
            sel = token_types == e
            y = module_of(e)(x[sel][:, :width])
            out[sel] = torch.nn.functional.pad(y, (0, x.shape[-1] - y.shape[-1]))
        return out

    def norm(per_expert, shared):
        return (lambda x: routed(lambda e: per_expert[e], x)) if cfg.norm_per_expert else shared

    for layer in net.model.layers:
        attn = layer.self_attn
        normed = norm(getattr(layer, "input_layernorms", None), getattr(layer, "input_layernorm", None))(h)
        if cfg.attention_per_expert:
            qkv = torch.zeros(batch, length, cfg.q_dim + 2 * cfg.kv_dim)
            for e, width in experts:
                sel = token_types == e
                qkv[sel] = attn.qkv_proj_experts[e](normed[sel][:, :width])
            q, k, v = qkv.split([cfg.q_dim, cfg.kv_dim, cfg.kv_dim], dim=-1)
        else:
            q, k, v = attn.q_proj(normed), attn.k_proj(normed), attn.v_proj(normed)
        q = apply_rope(q.view(batch, length, cfg.num_heads, cfg.head_dim).transpose(1, 2), cos, sin)
        k = apply_rope(k.view(batch, length, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2), cos, sin)
        v = v.view(batch, length, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        rep = cfg.num_heads // cfg.num_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)) / cfg.head_dim**0.5
        out = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v
        out = out.transpose(1, 2).reshape(batch, length, cfg.q_dim)
        if cfg.attention_per_expert:
            delta = torch.zeros_like(h)
            for e, width in experts:
                sel = token_types == e
                delta[sel, :width] = attn.o_proj_experts[e](out[sel])
            h = h + delta
        else:
            h = h + attn.o_proj(out)
        post = norm(
            getattr(layer, "post_attention_layernorms", None),
            getattr(layer, "post_attention_layernorm", None),
        )
        h = h + routed(lambda e, layer=layer: layer.moe.experts[e], post(h))
    final = norm(getattr(net.model, "norms", None), getattr(net.model, "norm", None))
    return final(h)


@pytest.mark.parametrize("variant", ["flow", "0.5"])
@pytest.mark.parametrize("causal_actions", [True, False])
def test_segments_match_routing_by_token_type(variant: str, causal_actions: bool) -> None:
    """Our per-segment forward (0.5: narrow action stream) equals the reference's routing by token type
    over a zero-padded full-width stream, with the same attention mask."""
    cfg = tiny_net_config(variant)
    net = random_init_(WallOSSNet(cfg), seed=5).eval()
    batch, lp, horizon = 2, 9, cfg.action_horizon
    g = torch.Generator().manual_seed(6)
    prefix = torch.randn(batch, lp, cfg.hidden_size, generator=g)
    actions = torch.randn(batch, horizon, cfg.action_width, generator=g)
    pos = torch.arange(lp + horizon)[None, None].expand(3, batch, -1)
    prefix_mask = torch.ones(batch, lp, dtype=torch.long)
    prefix_mask[1, :2] = 0
    mask = full_attention_mask(prefix_mask, horizon, causal_actions)
    with torch.no_grad():
        cos, sin = net.model.rope(pos, torch.float32)
        (ours_p, ours_a), _, _ = net.model.forward_segments(
            [(PREFIX_EXPERT, prefix), (ACTION_EXPERT, actions)], cos, sin, mask
        )
        full = torch.cat(
            [prefix, torch.nn.functional.pad(actions, (0, cfg.hidden_size - cfg.action_width))], dim=1
        )
        types = torch.cat([torch.zeros(batch, lp), torch.ones(batch, horizon)], dim=1).long()
        ref = _reference_routed_hidden(net, full, pos, types, mask)
    valid = prefix_mask.bool()
    assert (ours_p[valid] - ref[:, :lp][valid]).abs().max() <= 1e-5
    assert (ours_a - ref[:, lp:, : cfg.action_width]).abs().max() <= 1e-5
    assert torch.all(ref[:, lp:, cfg.action_width :] == 0)
    # the action expert really is a different path: routing the action tokens as type 0 changes them
    if variant == "0.5":
        return  # type-0 modules cannot read a 32-wide stream; the widths already differ
    with torch.no_grad():
        as_prefix = _reference_routed_hidden(net, full, pos, torch.zeros_like(types), mask)
    assert (as_prefix[:, lp:] - ref[:, lp:]).abs().max() > 1e-2


def test_published_weight_names() -> None:
    flow = set(WallOSSNet(tiny_net_config("flow")).state_dict())
    mot = set(WallOSSNet(tiny_net_config("0.5")).state_dict())
    for name in (
        "model.embed_tokens.weight",
        "model.norm.weight",
        "model.layers.1.self_attn.q_proj.bias",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.0.moe.experts.1.gate_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "action_preprocessor.propri_proj.weight",
        "action_preprocessor.w2.weight",
    ):
        assert name in flow, name
    for name in (
        "model.norms.1.weight",
        "model.layers.1.self_attn.qkv_proj_experts.1.bias",
        "model.layers.1.self_attn.o_proj_experts.1.weight",
        "model.layers.0.input_layernorms.1.weight",
        "model.layers.0.post_attention_layernorms.0.weight",
        "model.layers.0.moe.experts.1.down_proj.weight",
        "action_preprocessor.action_proj_back.weight",
    ):
        assert name in mot, name
    assert "model.layers.0.self_attn.o_proj_experts.0.bias" not in mot
    assert not any("propri_proj" in n for n in mot)
    cfg = tiny_net_config("0.5")
    net = WallOSSNet(cfg)
    assert net.model.layers[0].self_attn.qkv_proj_experts[1].weight.shape == (cfg.q_dim + 2 * cfg.kv_dim, 32)
    assert net.model.layers[0].self_attn.o_proj_experts[1].weight.shape == (32, cfg.q_dim)


def test_config_rejects_inconsistent_shapes() -> None:
    with pytest.raises(ValueError, match="mrope_section"):
        tiny_net_config("flow", mrope_section=(2, 2, 2))
    with pytest.raises(ValueError, match="shared attention"):
        tiny_net_config("flow", expert_hidden=(64, 32), action_hidden_size=32)
    cfg = tiny_net_config("0.5")
    with pytest.raises(ValueError, match="action_hidden_size"):
        dataclasses.replace(cfg, action_hidden_size=48)
