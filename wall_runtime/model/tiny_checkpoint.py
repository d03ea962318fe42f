"""A deterministic random-weight tiny WALL-OSS checkpoint of either generation, in the published layout.

The directory holds exactly what a published checkpoint holds: ``config.json`` (Qwen2.5-VL config
plus the WALL-OSS fields), ``config.yml`` (the training config serving reads), the weights
(``model.safetensors`` or shards with ``model.safetensors.index.json``) under the published names,
``tokenizer.json`` + ``tokenizer_config.json`` (a byte-level BPE trained offline on a small corpus,
with the Qwen2 pre-tokenizer and the Qwen special tokens, but *without* ``<|propri|>`` / ``<|action|>``,
which the runtime adds as the reference does), and normaliser statistics (``norm_stats.json`` and/or
``normalizer_action.pth`` / ``normalizer_propri.pth``).

Every tensor is drawn from a generator seeded by ``(seed, name)``, so the same seed gives the same
bytes, and fused and unfused forms hold the same numbers.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml

from wall_runtime.model.checkpoint import (
    fuse_state_dict,
    padded_width,
    published_fused_names,
    unfused_weight_shapes,
    write_state_dict,
)
from wall_runtime.model.config import Variant, build_config
from wall_runtime.model.normalizer import write_norm_stats_json, write_normalizer_pth
from wall_runtime.model.tokenizer import ADDED_TOKENS

# Qwen2's pre-tokenizer split (single digits: \p{N} without a quantifier).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2.5-VL's added tokens, in id order (151643 onwards in the real vocabulary).
QWEN_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)

_CORPUS = (
    "You are a helpful assistant.",
    "Observation: front view: left wrist view: right wrist view: face_view top view",
    "Instruction: pick up the red cube and place it in the bowl",
    "Predict the next action in robot action.",
    "Predict the next action in language.",
    "Proprioception: 12 128 255 0 64 200 31 7",
    "put the sponge on the plate. open the drawer. close the door. fold the towel.",
    "stack the blue block on the green block, then push the button",
    "move the arm to the left and grasp the handle of the mug",
    "pour water into the cup; wipe the table with the cloth",
    "The quick brown fox jumps over the lazy dog 0123456789.",
    "system user assistant Observation Instruction Proprioception",
)

TINY_BPE_VOCAB = 400


def build_tiny_tokenizer():
    """A byte-level BPE in Qwen2's form, trained offline on a built-in corpus."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_BPE_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, s in QWEN_ADDED_TOKENS if s])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, s in QWEN_ADDED_TOKENS if not s])
    return tok


def _tokenizer_config(tok) -> dict:
    decoder = {}
    for token, special in QWEN_ADDED_TOKENS:
        decoder[str(tok.token_to_id(token))] = {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [t for t, s in QWEN_ADDED_TOKENS if s and t not in ("<|endoftext|>",)],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


# Sizes of the generated models: "tiny" for tests, "demo" for the trained demo policy, "small" for CPU benchmarks (about 40 M parameters).
SIZES: dict[str, dict] = {
    "tiny": dict(
        hidden=64,
        layers=2,
        heads=4,
        kv_heads=2,
        mrope=[2, 3, 3],
        inter=128,
        action_width={"flow": 64, "0.5": 32},
        action_inter={"flow": 64, "0.5": 64},
        vision=dict(depth=2, hidden=32, inter=64, heads=2, window=56, full=[1]),
        horizon=8,
        resolution={"flow": 112, "0.5": 112},
        max_length=512,
    ),
    # the trained demo policy (wall-runtime train): small enough to train on a 2-core CPU in an hour
    "demo": dict(
        hidden=128,
        layers=4,
        heads=4,
        kv_heads=2,
        mrope=[4, 6, 6],
        inter=256,
        action_width={"flow": 128, "0.5": 64},
        action_inter={"flow": 128, "0.5": 128},
        vision=dict(depth=2, hidden=64, inter=128, heads=2, window=56, full=[1]),
        horizon=16,
        resolution={"flow": 112, "0.5": 112},
        max_length=512,
    ),
    "small": dict(
        hidden=512,
        layers=8,
        heads=8,
        kv_heads=2,
        mrope=[8, 12, 12],
        inter=1376,
        action_width={"flow": 512, "0.5": 256},
        action_inter={"flow": 512, "0.5": 512},
        vision=dict(depth=8, hidden=256, inter=512, heads=4, window=112, full=[3, 7]),
        horizon=32,
        resolution={"flow": 256, "0.5": 448},
        max_length=2048,
    ),
}


@dataclass(frozen=True)
class TinyLayout:
    """A robot's own action/state layout, views and ranges, for a tiny model that fits that robot
    (the demo writes one for the simulated arm): the real dims are normalised over their ranges."""

    dof_config: dict[str, int]
    agent_pos_config: dict[str, int]
    views: tuple[str, ...]
    horizon: int
    action_range: tuple[np.ndarray, np.ndarray]  # q01, q99 of the real (non-padding) action dims
    state_range: tuple[np.ndarray, np.ndarray]


def _apply_layout(variant: Variant, yml: dict, layout: TinyLayout, resolution: int) -> None:
    task = yml if variant == "flow" else yml["task"]
    task["dof_config"] = dict(layout.dof_config)
    task["agent_pos_config"] = dict(layout.agent_pos_config)
    if variant == "flow":
        yml["data"]["action_horizon"] = layout.horizon
    else:
        task["action_horizon"] = task["action_horizon_flow"] = layout.horizon
        yml["data"].pop("key_mappings", None)
    yml["data"]["resolution"] = dict.fromkeys(layout.views, resolution)


def tiny_config_files(
    variant: Variant, tokenizer_len: int, size: str = "tiny", layout: TinyLayout | None = None
) -> tuple[dict, dict]:
    """``(config.json, config.yml)`` contents of a tiny (or small) model of ``variant``."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    z = SIZES[size]
    hidden, heads, kv_heads = z["hidden"], z["heads"], z["kv_heads"]
    vision = {
        "depth": z["vision"]["depth"],
        "hidden_act": "silu",
        "hidden_size": z["vision"]["hidden"],
        "intermediate_size": z["vision"]["inter"],
        "num_heads": z["vision"]["heads"],
        "in_chans": 3,
        "out_hidden_size": hidden,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": z["vision"]["window"],
        "fullatt_block_indexes": z["vision"]["full"],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    }
    action_width = z["action_width"][variant]
    cfg = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": z["inter"],
        "num_attention_heads": heads,
        "num_hidden_layers": z["layers"],
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "vision_config": vision,
        "rope_scaling": {"type": "mrope", "mrope_section": z["mrope"]},
        # config.vocab_size may exceed len(tokenizer); the embedding has len(tokenizer) rows.
        "vocab_size": int(np.ceil((tokenizer_len + 1) / 64) * 64),
        "num_experts": 2,
        "experts": [
            {"hidden_size": hidden, "intermediate_size": z["inter"], "hidden_act": "silu"},
            {
                "hidden_size": action_width,
                "intermediate_size": z["action_inter"][variant],
                "hidden_act": "silu",
            },
        ],
        "dim_inputs": [hidden, action_width],
        "action_hidden_size": action_width,
        "state_hidden_size": hidden,
        "mlp_moe": True,
        "proj_with_mask": True,
        "noise_scheduler": {"beta_alpha": 1.5, "beta_beta": 1.0, "s": 0.999, "num_inference_timesteps": 10},
    }
    if variant == "flow":
        cfg.update({"attention_moe": False, "norm_moe": False, "causal_action_attention_mask": False})
        yml = {
            "model_type": "qwen2_5",
            "padding_side": "left",
            "dof_config": {
                "follow_right_ee_cartesian_pos": 3,
                "follow_right_ee_rotation": 3,
                "follow_right_gripper": 1,
                "action_padding": 3,
            },
            "agent_pos_config": {
                "follow_right_ee_cartesian_pos": 3,
                "follow_right_ee_rotation": 3,
                "follow_right_gripper": 1,
                "action_padding": 3,
            },
            "data": {
                "action_horizon": z["horizon"],
                "max_length": z["max_length"],
                "resolution": dict.fromkeys(("face_view", "right_wrist_view"), z["resolution"][variant]),
            },
        }
    else:
        cfg.update(
            {
                "attention_moe": True,
                "norm_moe": True,
                "causal_action_attention_mask": True,
                "use_state_string_representation": True,
                "use_x_loss": True,
            }
        )
        yml = {
            "model_type": "qwen2_5",
            "task": {
                "dof_config": {
                    "follow_right_ee_cartesian_pos": 3,
                    "follow_right_ee_rotation": 3,
                    "follow_right_gripper": 1,
                    "action_padding": 5,
                },
                "agent_pos_config": {
                    "follow_right_ee_cartesian_pos": 3,
                    "follow_right_ee_rotation": 3,
                    "follow_right_gripper": 2,
                    "action_padding": 4,
                },
                "action_horizon": z["horizon"],
                "action_horizon_flow": z["horizon"],
                "use_state_string_representation": True,
            },
            "data": {
                "key_mappings": {
                    "camera": {
                        "observation.images.faceImg": "face_view",
                        "observation.images.rightImg": "right_wrist_view",
                    }
                },
                "camera_name_mapping": {"face_view": "front view"},
                "max_length": z["max_length"],
                "state_bins": 256,
                "resolution": dict.fromkeys(("face_view", "right_wrist_view"), z["resolution"][variant]),
            },
        }
    if layout is not None:
        _apply_layout(variant, yml, layout, z["resolution"][variant])
    return cfg, yml


def _tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    leaf = name.rsplit(".", 2)
    is_norm = "norm" in name and name.endswith(".weight") and len(shape) == 1
    if is_norm:
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if name.endswith(".bias"):
        return 0.1 * torch.randn(shape, generator=gen)
    if "embed_tokens" in name:
        return 0.5 * torch.randn(shape, generator=gen)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    del leaf
    return torch.randn(shape, generator=gen) / np.sqrt(fan_in)


def _norm_stats(dims: dict[str, int], seed: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """q01 / q99 for the real (non-padding) dims: the padded tail is left to the loader."""
    real = sum(v for k, v in dims.items() if k != "action_padding")
    rng = np.random.default_rng(seed + (1 if label == "action" else 2))
    q01 = rng.uniform(-1.5, -0.2, real).astype(np.float32)
    q99 = (q01 + rng.uniform(0.5, 2.5, real)).astype(np.float32)
    return q01, q99


def _pad_vision_mlp(sd: dict[str, torch.Tensor], width: int) -> None:
    """Zero-pad every vision block's MLP hidden width to ``width`` (gate / up rows, down columns)."""
    for name in list(sd):
        if not (name.startswith("visual.blocks.") and ".mlp." in name):
            continue
        t = sd[name]
        if ".down_proj.weight" in name:
            sd[name] = torch.nn.functional.pad(t, (0, width - t.shape[1]))
        elif ".gate_proj." in name or ".up_proj." in name:
            extra = width - t.shape[0]
            sd[name] = torch.cat([t, t.new_zeros((extra, *t.shape[1:]))])


def write_tiny_checkpoint(
    out_dir: str | Path,
    variant: Variant = "flow",
    *,
    seed: int = 0,
    form: Literal["published", "fused", "unfused"] = "published",
    max_shard_bytes: int | None = None,
    normalizers: Literal["json", "pth", "both"] = "json",
    norm_key: str = "tiny_robot",
    size: str = "tiny",
    layout: TinyLayout | None = None,
    pad_vision_mlp: bool | int = False,
) -> Path:
    """Write the tiny checkpoint into ``out_dir`` (created; existing files are overwritten).

    ``pad_vision_mlp``: store the vision MLP at a wider hidden width, as the authors' 1.1.0 model saves
    it (``True``: ``vision_config.intermediate_size`` rounded up to a multiple of 128; an int: that
    width). The extra rows / columns are zero, so the model computes the same function; config.json
    keeps the unpadded width, as the authors' config does.
    """
    if variant not in ("flow", "0.5"):
        raise ValueError(f"unknown variant {variant!r}; choose 'flow' or '0.5'")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)

    tok = build_tiny_tokenizer()
    tok.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(tok), indent=2))
    tokenizer_len = tok.get_vocab_size(with_added_tokens=True) + len(ADDED_TOKENS)

    cfg_json, cfg_yml = tiny_config_files(variant, tokenizer_len, size, layout)
    for token, key in (
        ("<|endoftext|>", "bos_token_id"),
        ("<|im_end|>", "eos_token_id"),
        ("<|vision_start|>", "vision_start_token_id"),
        ("<|vision_end|>", "vision_end_token_id"),
        ("<|vision_pad|>", "vision_token_id"),
        ("<|image_pad|>", "image_token_id"),
        ("<|video_pad|>", "video_token_id"),
    ):
        cfg_json[key] = tok.token_to_id(token)
    (root / "config.json").write_text(json.dumps(cfg_json, indent=2))
    (root / "config.yml").write_text(yaml.safe_dump(cfg_yml, sort_keys=False))

    wall_cfg = build_config(cfg_json, cfg_yml, vocab_size=tokenizer_len)
    shapes = unfused_weight_shapes(wall_cfg)
    sd = {name: _tensor(name, shape, seed) for name, shape in shapes.items()}
    if pad_vision_mlp is not False:
        inter = int(cfg_json["vision_config"]["intermediate_size"])
        width = padded_width(inter) if pad_vision_mlp is True else int(pad_vision_mlp)
        if width < inter:
            raise ValueError(f"pad_vision_mlp width {width} is narrower than the configured {inter}")
        _pad_vision_mlp(sd, width)
    sd = fuse_state_dict(sd, published_fused_names(wall_cfg, form))
    write_state_dict(sd, root, max_shard_bytes=max_shard_bytes)

    if layout is not None:
        action_stats, state_stats = layout.action_range, layout.state_range
    else:
        action_stats = _norm_stats(wall_cfg.data.dof_config, seed, "action")
        state_stats = _norm_stats(wall_cfg.data.agent_pos_config, seed, "state")
    if normalizers in ("json", "both"):
        write_norm_stats_json(root / "norm_stats.json", action_stats, state_stats)
    if normalizers in ("pth", "both"):
        write_normalizer_pth(
            root / "normalizer_action.pth", {norm_key: (action_stats[0], action_stats[1] - action_stats[0])}
        )
        write_normalizer_pth(
            root / "normalizer_propri.pth", {norm_key: (state_stats[0], state_stats[1] - state_stats[0])}
        )
    return root
