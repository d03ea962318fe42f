"""The real models' size without their weights: parameters per part, exported graphs and a memory plan.

Both generations are built at their published size on the meta device (shapes and dtypes, no memory;
spec §2): Qwen2.5-VL-3B backbone (36 layers of 2048, 16 heads / 2 KV heads of 128, FFN 11008, vision
tower depth 32 × 1280) plus

- WALL-OSS-FLOW: a 2048 → 2048 → 2048 SwiGLU action FFN per layer, attention and norms shared,
  20-D actions and state, one ``<|propri|>`` token, 256-pixel views (63 image tokens per 640×480 frame);
- Wall-OSS-0.5: a mixture-of-transformers action expert 1024 wide (own qkv with bias, o_proj, norms,
  FFN, final norm), 26-D actions and state written into the prompt, 448-pixel views (192 tokens), and
  the vision MLP at the 1.1.0 model's padded width 3456.

The memory plan is arithmetic over those shapes for each backend: weights in the backend's dtypes,
the prefix KV cache, and the peak of the transient tensors while the prefix runs (vision tower over
every image of the batch, then the prompt's prefill), for 1–3 views and batch 1–8. It is an estimate:
allocator slack, the CUDA context (~0.5 GiB) and library workspaces are not in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from wall_runtime.model.checkpoint import padded_width
from wall_runtime.model.config import WallConfig, build_config
from wall_runtime.model.image_processing import longest_side_size, smart_resize

PUBLISHED_PARAMETERS = {"flow": 4.2e9, "0.5": 4.0e9}  # model cards: "4.22B" (FLOW), "about 4B" (0.5)
TOKENIZER_LEN = 151667  # Qwen2.5-VL's 151665 tokens + <|propri|> + <|action|> (embedding rows)
VIEWS = ("face_view", "left_wrist_view", "right_wrist_view")
FRAME = (480, 640)  # camera frame (height, width) the plan assumes
TEXT_TOKENS = 64  # instruction budget, as the exported graphs' default
BATCHES = (1, 2, 4, 8)
GiB = 2**30

ASSUMPTIONS = (
    "Wall-OSS-0.5's config.json was not seen (spec §2): the action expert's FFN width is taken as 1024, "
    "the same 1:1 ratio as FLOW's action FFN (2048 → 2048), which gives 4.04 B parameters against the "
    "published 'about 4 B' (2048 would give 4.15 B).",
    "Embedding rows = len(tokenizer) = 151667 (Qwen2.5-VL + <|propri|> + <|action|>); lm_head is tied and "
    "not part of the runtime.",
    "Prompt: ~40 template tokens, 5 per view (label and vision markers) plus its image tokens, a 64-token "
    "instruction budget, and the state (FLOW one <|propri|> token; 0.5 up to 4 tokens per real state dim).",
    "Activations: the peak of the prefix pass (vision over all images of the batch, then the prefill); "
    "'materialised' attention keeps the score matrix (torch on CPU, onnxruntime), 'fused' does not "
    "(SDPA flash / memory-efficient on CUDA, TensorRT fused MHA); the vision tower's block-diagonal masks "
    "over the whole batch's patches are counted.",
)


def published_config_files(variant: str) -> tuple[dict, dict]:
    """``(config.json, config.yml)`` of a published-size checkpoint of ``variant``."""
    from wall_runtime.model.tiny_checkpoint import tiny_config_files

    if variant not in PUBLISHED_PARAMETERS:
        raise ValueError(f"unknown variant {variant!r}; choose flow or 0.5")
    cfg, yml = tiny_config_files(variant, TOKENIZER_LEN)  # type: ignore[arg-type]
    cfg.update(
        hidden_size=2048,
        intermediate_size=11008,
        num_attention_heads=16,
        num_hidden_layers=36,
        num_key_value_heads=2,
        vocab_size=151936,
        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
    )
    cfg["vision_config"].update(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=2048,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
    )
    width = 2048 if variant == "flow" else 1024
    cfg["experts"] = [
        {"hidden_size": 2048, "intermediate_size": 11008, "hidden_act": "silu"},
        {"hidden_size": width, "intermediate_size": width, "hidden_act": "silu"},
    ]
    cfg.update(dim_inputs=[2048, width], action_hidden_size=width, state_hidden_size=2048)
    arm = (
        {"ee_cartesian_pos": 3, "ee_rotation": 3, "gripper": 1}
        if variant == "flow"
        else {"ee_cartesian_pos_relative": 3, "ee_rotation_6D_relative": 6, "gripper": 1}
    )
    state_arm = arm if variant == "flow" else {"ee_cartesian_pos": 3, "ee_rotation_6D": 6, "gripper": 1}

    def layout(parts: dict[str, int], tail: dict[str, int]) -> dict[str, int]:
        return {f"follow_{side}_{k}": n for side in ("left", "right") for k, n in parts.items()} | tail

    tail = {"head_actions": 2, "height": 1, "car_pose": 3} if variant == "flow" else {"action_padding": 6}
    task = yml if variant == "flow" else yml["task"]
    task["dof_config"] = layout(arm, tail)
    task["agent_pos_config"] = layout(state_arm, tail)
    resolution = 256 if variant == "flow" else 448
    if variant == "flow":
        yml["data"]["action_horizon"] = 32
    else:
        task["action_horizon"] = task["action_horizon_flow"] = 32
        yml["data"].pop("key_mappings", None)
    yml["data"]["resolution"] = dict.fromkeys(VIEWS, resolution)
    yml["data"]["max_length"] = 2048
    return cfg, yml


def published_config(variant: str) -> WallConfig:
    """The published-size :class:`WallConfig` (0.5 with the 1.1.0 padded vision MLP)."""
    cfg = build_config(*published_config_files(variant), vocab_size=TOKENIZER_LEN)
    if variant == "0.5":
        cfg = cfg.with_vision_intermediate_size(padded_width(cfg.vision["intermediate_size"]))
    return cfg


# --------------------------------------------------------------------------- parameters


def _part(name: str) -> str:
    if name.startswith("visual."):
        return "vision"
    if name.startswith("model.embed_tokens"):
        return "embedding"
    if name.startswith("action_preprocessor."):
        return "action_head"
    if any(
        f"{s}.1." in name or name.endswith(f"{s}.1.weight")
        for s in ("experts", "_experts", "layernorms", "norms")
    ):
        return "action_expert"
    return "language_model"  # expert 0, and FLOW's shared attention / norms


def _graph(name: str, part: str, last_layer: int = -1) -> tuple[str, ...]:
    """Which exported graph(s) hold a parameter: the prefix (vision + prefill) and/or the denoise loop.

    The prefix graph's outputs are the K/V of every layer, so the exporter drops what only the last
    layer's *output* needs: its (unfused) q projection, o_proj, post-attention norm and FFN.
    """
    in_prefix = ("prefix",)
    if name.startswith(f"model.layers.{last_layer}."):
        tail = name.split(".", 3)[3]
        unused = tail.startswith(
            ("self_attn.q_proj.", "self_attn.o_proj", "post_attention_layernorm", "moe.experts.0.")
        )
        if unused:
            in_prefix = ()
    if part in ("vision", "embedding"):
        return ("prefix",)
    if part == "action_head":
        return ("prefix",) if "propri_proj" in name else ("denoise",)
    if part == "action_expert":
        return ("denoise",)
    if name == "model.norms.0.weight":
        return ()  # 0.5's final norm of the VLM stream: only text generation reads it
    if name == "model.norm.weight" or name.startswith("model.norms."):
        return ("denoise",)
    shared = ".self_attn.q_proj" in name or ".self_attn.k_proj" in name or ".self_attn.v_proj" in name
    shared = shared or ".self_attn.o_proj." in name or "_layernorm." in name  # FLOW: used by every token
    return (*in_prefix, "denoise") if shared else in_prefix


@dataclass(frozen=True)
class ParamInfo:
    name: str
    numel: int
    part: str
    graphs: tuple[str, ...]
    bf16_bytes: int  # under the reference's bf16 serving split (norms and action head fp32)


def parameters(cfg: WallConfig) -> list[ParamInfo]:
    """Every parameter of the network built on the meta device, with its part and graphs."""
    from wall_runtime.model.pipeline import empty_network

    net = empty_network(cfg, torch.bfloat16)
    last = cfg.net.num_layers - 1
    out = []
    for name, p in net.named_parameters():
        part = _part(name)
        out.append(ParamInfo(name, p.numel(), part, _graph(name, part, last), p.numel() * p.element_size()))
    return out


# --------------------------------------------------------------------------- prompt and activations


def image_tokens(resolution: int, frame: tuple[int, int] = FRAME, merge: int = 2, patch: int = 14) -> int:
    h, w = smart_resize(*longest_side_size(*frame, resolution))
    return (h // patch // merge) * (w // patch // merge)


def prompt_length(cfg: WallConfig, views: int) -> int:
    """Prefix tokens (everything before the first ``<|action|>``) for ``views`` cameras."""
    per_view = image_tokens(cfg.data.resolution[VIEWS[0]]) + 5
    real_state = cfg.net.state_dim - cfg.data.agent_pos_config.get("action_padding", 0)
    state = 4 * real_state if cfg.net.state_as_text else 1
    return 40 + views * per_view + TEXT_TOKENS + state


BACKENDS: dict[str, dict[str, Any]] = {
    "torch-cpu": {"weights": "fp32", "bytes": 4, "attention": "materialised"},
    "torch-cuda": {"weights": "bf16 (norms, action head fp32)", "bytes": 2, "attention": "fused"},
    "onnxruntime": {"weights": "fp32 graphs", "bytes": 4, "attention": "materialised"},
    "tensorrt": {"weights": "bf16/fp16 engines", "bytes": 2, "attention": "fused"},
}


def _activations(cfg: WallConfig, views: int, batch: int, nbytes: int, materialised: bool) -> dict[str, int]:
    v = cfg.vision_config()
    n = batch * views * image_tokens(cfg.data.resolution[VIEWS[0]]) * v.spatial_merge_size**2  # patches
    x = n * v.hidden_size * nbytes
    qkv = 3 * x
    scores = v.num_heads * n * n * nbytes if materialised else 0
    mlp = 3 * n * v.intermediate_size * nbytes
    masks = 2 * n * n  # full and window block-diagonal masks (bool) over every patch of the batch
    pixels = n * v.patch_dim * 4
    vision = pixels + masks + 2 * x + max(qkv + scores, mlp)
    net = cfg.net
    length = prompt_length(cfg, views)
    tokens = batch * length
    h = tokens * net.hidden_size * nbytes
    attn = tokens * (net.q_dim + 2 * net.kv_dim) * nbytes + (
        batch * net.num_heads * length * length * nbytes if materialised else 0
    )
    ffn = 3 * tokens * net.expert_intermediate[0] * nbytes
    prefill = 3 * h + max(attn, ffn) + batch * length * length  # + the bool prefix mask
    return {"vision": vision, "prefill": prefill, "peak": max(vision, prefill)}


def kv_cache_bytes(cfg: WallConfig, views: int, batch: int, nbytes: int) -> int:
    net = cfg.net
    return 2 * net.num_layers * batch * net.num_kv_heads * prompt_length(cfg, views) * net.head_dim * nbytes


def size_report(variant: str) -> dict[str, Any]:
    """Parameters per part, exported graphs' sizes and the memory plan of ``variant`` at published size."""
    cfg = published_config(variant)
    params = parameters(cfg)
    parts: dict[str, int] = {}
    for p in params:
        parts[p.part] = parts.get(p.part, 0) + p.numel
    total = sum(p.numel for p in params)
    graphs: dict[str, dict[str, Any]] = {}
    for g in ("prefix", "denoise"):
        numel = sum(p.numel for p in params if g in p.graphs)
        bf16 = sum(p.bf16_bytes for p in params if g in p.graphs)
        graphs[g] = {
            "parameters": numel,
            "onnx_fp32_bytes": 4 * numel,
            "onnx_external_data": 4 * numel > 2**31 - 1,  # protobuf's limit: weights in a .data file
            "tensorrt_bf16_bytes": bf16,
        }
    weights = {
        "torch-cpu": 4 * total,
        "torch-cuda": sum(p.bf16_bytes for p in params),
        "onnxruntime": sum(g["onnx_fp32_bytes"] for g in graphs.values()),
        "tensorrt": sum(g["tensorrt_bf16_bytes"] for g in graphs.values()),
    }
    plan = []
    for backend, info in BACKENDS.items():
        for views in (1, 2, 3):
            for batch in BATCHES:
                act = _activations(cfg, views, batch, info["bytes"], info["attention"] == "materialised")
                kv = kv_cache_bytes(cfg, views, batch, info["bytes"])
                plan.append(
                    {
                        "backend": backend,
                        "views": views,
                        "batch": batch,
                        "prefix_tokens": prompt_length(cfg, views),
                        "weights_bytes": weights[backend],
                        "kv_cache_bytes": kv,
                        "activation_bytes": act["peak"],
                        "activation_vision_bytes": act["vision"],
                        "activation_prefill_bytes": act["prefill"],
                        "total_bytes": weights[backend] + kv + act["peak"],
                    }
                )
    published = PUBLISHED_PARAMETERS[variant]
    return {
        "variant": variant,
        "model": "wall-oss-flow" if variant == "flow" else "wall-oss-0.5",
        "parameters": {**dict(sorted(parts.items())), "total": total},
        "published_parameters": published,
        "deviation_from_published": round(total / published - 1, 4),
        "config": {
            "layers": cfg.net.num_layers,
            "hidden": cfg.net.hidden_size,
            "action_expert": {"width": cfg.net.expert_hidden[1], "ffn": cfg.net.expert_intermediate[1]},
            "vision_mlp": int(cfg.vision["intermediate_size"]),
            "action_dim": cfg.net.action_dim,
            "state_dim": cfg.net.state_dim,
            "horizon": cfg.net.action_horizon,
            "resolution": cfg.data.resolution[VIEWS[0]],
            "image_tokens_per_view": image_tokens(cfg.data.resolution[VIEWS[0]]),
            "frame": list(FRAME),
        },
        "unused_by_flow_inference": sum(p.numel for p in params if not p.graphs),
        "graphs": graphs,
        "backends": BACKENDS,
        "plan": plan,
        "assumptions": list(ASSUMPTIONS),
    }


def gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def param_count_str(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.1f} M"
