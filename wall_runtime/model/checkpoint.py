"""Checkpoint weights: read by the published names, in every form the reference accepts.

Forms (spec §1, §10):

- one ``model.safetensors``, or shards listed in ``model.safetensors.index.json``, or the training
  output ``pytorch_model_fsdp.bin``;
- *unfused* projections (``q_proj`` / ``k_proj`` / ``v_proj``, ``q_proj_experts.E`` …, ``gate_proj`` /
  ``up_proj``) or *fused* ones (``qkv_proj``, ``qkv_proj_experts.E`` = q, k, v stacked on dim 0;
  ``gate_up_proj`` = gate then up). The loader turns whatever the file holds into whatever form the
  network's modules use, so both forms give identical weights.

Normaliser tensors stored beside the weights (``action_preprocessor.normalizer…``, ``….normalizer_…``)
are dropped; statistics come from the normaliser files. The tied ``lm_head.weight`` is not used by the
flow runtime and is dropped too. Any other key the network lacks, and any key it needs that the
checkpoint lacks, is an error naming the key.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from wall_runtime.model.config import WallConfig

log = logging.getLogger(__name__)

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
FSDP_BIN = "pytorch_model_fsdp.bin"
DROPPED_KEYS = ("lm_head.weight",)


class CheckpointError(ValueError):
    """Weights missing, unexpected, of the wrong shape, or unreadable."""


# --------------------------------------------------------------------------- names and shapes


def _vision_shapes(v: Mapping) -> dict[str, tuple[int, ...]]:
    h = int(v["hidden_size"])
    inter = int(v["intermediate_size"])
    out = int(v.get("out_hidden_size", h))
    merge = int(v.get("spatial_merge_size", 2))
    patch = int(v.get("patch_size", 14))
    tp = int(v.get("temporal_patch_size", 2))
    chans = int(v.get("in_chans", v.get("in_channels", 3)))
    ctx = h * merge * merge
    shapes: dict[str, tuple[int, ...]] = {"visual.patch_embed.proj.weight": (h, chans, tp, patch, patch)}
    for n in range(int(v["depth"])):
        b = f"visual.blocks.{n}."
        shapes.update(
            {
                b + "norm1.weight": (h,),
                b + "norm2.weight": (h,),
                b + "attn.q_proj.weight": (h, h),
                b + "attn.q_proj.bias": (h,),
                b + "attn.k_proj.weight": (h, h),
                b + "attn.k_proj.bias": (h,),
                b + "attn.v_proj.weight": (h, h),
                b + "attn.v_proj.bias": (h,),
                b + "attn.proj.weight": (h, h),
                b + "attn.proj.bias": (h,),
                b + "mlp.gate_proj.weight": (inter, h),
                b + "mlp.gate_proj.bias": (inter,),
                b + "mlp.up_proj.weight": (inter, h),
                b + "mlp.up_proj.bias": (inter,),
                b + "mlp.down_proj.weight": (h, inter),
                b + "mlp.down_proj.bias": (h,),
            }
        )
    shapes.update(
        {
            "visual.merger.ln_q.weight": (h,),
            "visual.merger.mlp.0.weight": (ctx, ctx),
            "visual.merger.mlp.0.bias": (ctx,),
            "visual.merger.mlp.2.weight": (out, ctx),
            "visual.merger.mlp.2.bias": (out,),
        }
    )
    return shapes


def unfused_weight_shapes(cfg: WallConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model, fully unfused, by published name (embedding rows = vocab_size)."""
    n = cfg.net
    q, kv = n.num_heads * n.head_dim, n.num_kv_heads * n.head_dim
    shapes = _vision_shapes(cfg.vision)
    shapes["model.embed_tokens.weight"] = (n.vocab_size, n.hidden_size)
    for i in range(n.num_layers):
        p = f"model.layers.{i}."
        if n.attention_per_expert:
            for e, width in enumerate(n.expert_hidden):
                for proj, size in (("q", q), ("k", kv), ("v", kv)):
                    shapes[p + f"self_attn.{proj}_proj_experts.{e}.weight"] = (size, width)
                    shapes[p + f"self_attn.{proj}_proj_experts.{e}.bias"] = (size,)
                shapes[p + f"self_attn.o_proj_experts.{e}.weight"] = (width, q)
        else:
            for proj, size in (("q", q), ("k", kv), ("v", kv)):
                shapes[p + f"self_attn.{proj}_proj.weight"] = (size, n.hidden_size)
                shapes[p + f"self_attn.{proj}_proj.bias"] = (size,)
            shapes[p + "self_attn.o_proj.weight"] = (n.hidden_size, q)
        if n.norm_per_expert:
            for e, width in enumerate(n.expert_hidden):
                shapes[p + f"input_layernorms.{e}.weight"] = (width,)
                shapes[p + f"post_attention_layernorms.{e}.weight"] = (width,)
        else:
            shapes[p + "input_layernorm.weight"] = (n.hidden_size,)
            shapes[p + "post_attention_layernorm.weight"] = (n.hidden_size,)
        for e, (width, inter) in enumerate(zip(n.expert_hidden, n.expert_intermediate, strict=True)):
            shapes[p + f"moe.experts.{e}.gate_proj.weight"] = (inter, width)
            shapes[p + f"moe.experts.{e}.up_proj.weight"] = (inter, width)
            shapes[p + f"moe.experts.{e}.down_proj.weight"] = (width, inter)
    if n.norm_per_expert:
        for e, width in enumerate(n.expert_hidden):
            shapes[f"model.norms.{e}.weight"] = (width,)
    else:
        shapes["model.norm.weight"] = (n.hidden_size,)
    a, d, s = n.action_hidden_size, n.action_dim, n.state_dim
    k = 2 if n.proj_with_mask else 1
    shapes["action_preprocessor.w1.weight"] = (a, k * d)
    shapes["action_preprocessor.w2.weight"] = (a, 2 * a)
    shapes["action_preprocessor.w3.weight"] = (a, a)
    shapes["action_preprocessor.action_proj_back.weight"] = (d, a)
    if not n.state_as_text:
        shapes["action_preprocessor.propri_proj.weight"] = (n.propri_width, k * s)
    return shapes


# Fused name pattern -> the unfused part suffixes it stacks, in order.
_FUSIONS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"^(.*\.self_attn\.)qkv_proj_experts\.(\d+)\.(weight|bias)$"), ("q", "k", "v")),
    (re.compile(r"^(.*\.self_attn\.)qkv_proj\.(weight|bias)$"), ("q", "k", "v")),
    (re.compile(r"^(visual\.blocks\.\d+\.attn\.)qkv\.(weight|bias)$"), ("q", "k", "v")),
    (re.compile(r"^(.*\.)gate_up_proj\.(weight|bias)$"), ("gate", "up")),
)


def _parts_of(fused_name: str) -> list[str] | None:
    """The unfused names a fused name stacks (q, k, v or gate, up), or None for a plain name."""
    m = _FUSIONS[0][0].match(fused_name)
    if m:
        pre, e, kind = m.groups()
        return [f"{pre}{x}_proj_experts.{e}.{kind}" for x in "qkv"]
    m = _FUSIONS[1][0].match(fused_name)
    if m:
        pre, kind = m.groups()
        return [f"{pre}{x}_proj.{kind}" for x in "qkv"]
    m = _FUSIONS[2][0].match(fused_name)
    if m:
        pre, kind = m.groups()
        return [f"{pre}{x}_proj.{kind}" for x in "qkv"]
    m = _FUSIONS[3][0].match(fused_name)
    if m:
        pre, kind = m.groups()
        return [f"{pre}gate_proj.{kind}", f"{pre}up_proj.{kind}"]
    return None


def _fused_name(unfused_name: str) -> str | None:
    """The fused name an unfused projection belongs to, or None."""
    for pattern, repl in (
        (r"^(.*\.self_attn\.)[qkv]_proj_experts\.(\d+)\.(weight|bias)$", r"\1qkv_proj_experts.\2.\3"),
        (r"^(visual\.blocks\.\d+\.attn\.)[qkv]_proj\.(weight|bias)$", r"\1qkv.\2"),
        (r"^(.*\.self_attn\.)[qkv]_proj\.(weight|bias)$", r"\1qkv_proj.\2"),
        (r"^(.*\.)(?:gate|up)_proj\.(weight|bias)$", r"\1gate_up_proj.\2"),
    ):
        if re.match(pattern, unfused_name):
            return re.sub(pattern, repl, unfused_name)
    return None


def fuse_shapes(shapes: Mapping[str, tuple[int, ...]], which: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Shapes after fusing the groups whose fused names are in ``which``."""
    wanted = set(which)
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        fused = _fused_name(name)
        if fused is None or fused not in wanted:
            out[name] = shape
        elif fused not in out:
            parts = _parts_of(fused) or []
            rows = sum(shapes[p][0] for p in parts)
            out[fused] = (rows, *shape[1:])
    return out


def published_fused_names(cfg: WallConfig, form: str) -> set[str]:
    """Which fused names a checkpoint of ``form`` holds: "unfused", "fused" or "published".

    Published: FLOW (97406f2) stores unfused language projections; 0.5 stores fused language
    projections (``qkv_proj_experts``, ``gate_up_proj``) and an unfused vision MLP; the vision
    ``attn.qkv`` is fused in every form.
    """
    all_fused = {f for f in (_fused_name(k) for k in unfused_weight_shapes(cfg)) if f}
    vision_qkv = {f for f in all_fused if f.startswith("visual.") and ".attn.qkv." in f}
    if form == "unfused":
        return vision_qkv
    if form == "fused":
        return all_fused
    if form == "published":
        if cfg.variant == "flow":
            return vision_qkv
        return {f for f in all_fused if not (f.startswith("visual.") and "gate_up_proj" in f)}
    raise ValueError(f"unknown weight form {form!r}; choose unfused, fused or published")


# --------------------------------------------------------------------------- state-dict conversion


def fuse_state_dict(sd: Mapping[str, torch.Tensor], which: Iterable[str]) -> dict[str, torch.Tensor]:
    """Stack unfused parts into the fused names listed in ``which`` (dim 0, in q, k, v / gate, up order)."""
    wanted = set(which)
    out: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    for name in sd:
        fused = _fused_name(name)
        if fused is None or fused not in wanted:
            out[name] = sd[name]
            continue
        if fused in done:
            continue
        parts = _parts_of(fused) or []
        missing = [p for p in parts if p not in sd]
        if missing:
            raise CheckpointError(f"cannot build {fused}: the checkpoint lacks {', '.join(missing)}")
        out[fused] = torch.cat([sd[p] for p in parts], dim=0)
        done.add(fused)
    return out


def unfuse_state_dict(sd: Mapping[str, torch.Tensor], cfg: WallConfig) -> dict[str, torch.Tensor]:
    """Split every fused tensor into its unfused parts, using the configured sizes."""
    sizes = unfused_weight_shapes(cfg)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in sd.items():
        parts = _parts_of(name)
        if parts is None:
            out[name] = tensor
            continue
        if any(p not in sizes for p in parts):
            raise CheckpointError(f"unexpected key {name}: the configured model has no such projection")
        rows = [sizes[p][0] for p in parts]
        if tensor.shape[0] != sum(rows):
            raise CheckpointError(
                f"{name} has {tensor.shape[0]} rows; the config expects {' + '.join(map(str, rows))}"
            )
        for part, piece in zip(parts, torch.split(tensor, rows, dim=0), strict=True):
            out[part] = piece.contiguous()
    return out


def is_normalizer_key(name: str) -> bool:
    return "action_preprocessor.normalizer" in name or ".normalizer_" in name


def adapt_state_dict(
    sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], cfg: WallConfig
) -> dict[str, torch.Tensor]:
    """Checkpoint tensors renamed to exactly the ``expected`` names and shapes, or a clear error."""
    kept = {k: v for k, v in sd.items() if not is_normalizer_key(k) and k not in DROPPED_KEYS}
    unfused = unfuse_state_dict(kept, cfg)
    want_fused = {k for k in expected if _parts_of(k) is not None}
    adapted = fuse_state_dict(unfused, want_fused)
    missing = sorted(set(expected) - set(adapted))
    unexpected = sorted(set(adapted) - set(expected))
    if missing or unexpected:
        lines = []
        if missing:
            lines.append(f"missing key(s): {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            lines.append(
                f"unexpected key(s): {', '.join(unexpected[:20])}" + (" ..." if len(unexpected) > 20 else "")
            )
        raise CheckpointError("checkpoint does not match the configured model: " + "; ".join(lines))
    for name, shape in expected.items():
        if tuple(adapted[name].shape) != tuple(shape):
            raise CheckpointError(
                f"{name} has shape {tuple(adapted[name].shape)} in the checkpoint, the model expects {tuple(shape)}"
            )
    return adapted


# --------------------------------------------------------------------------- files


def read_state_dict(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: sharded or single safetensors, or the FSDP .bin."""
    from safetensors import safe_open

    root = Path(checkpoint_dir)
    index = root / SAFETENSORS_INDEX
    files: list[Path]
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        files = [root / f for f in dict.fromkeys(weight_map.values())]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{index} lists shard(s) that are absent: {', '.join(absent)}")
    elif (root / SAFETENSORS).is_file():
        files = [root / SAFETENSORS]
    elif sorted(root.glob("*.safetensors")):
        files = sorted(root.glob("*.safetensors"))  # early FLOW checkpoints: shards without an index
    elif (root / FSDP_BIN).is_file():
        sd = torch.load(root / FSDP_BIN, map_location="cpu", weights_only=True)
        return dict(sd.get("state_dict", sd))
    else:
        raise CheckpointError(
            f"{root} holds no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {FSDP_BIN}"
        )
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key in sd:
                    raise CheckpointError(f"{key} appears in more than one shard ({f.name})")
                sd[key] = handle.get_tensor(key)
    if index.is_file():
        listed = set(json.loads(index.read_text())["weight_map"])
        if listed != set(sd):
            raise CheckpointError(
                f"{index} and its shards disagree on: {', '.join(sorted(listed ^ set(sd))[:10])}"
            )
    return sd


def embedding_rows(sd: Mapping[str, torch.Tensor]) -> int:
    if "model.embed_tokens.weight" not in sd:
        raise CheckpointError("missing key: model.embed_tokens.weight")
    return int(sd["model.embed_tokens.weight"].shape[0])


def load_into(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], cfg: WallConfig) -> None:
    """Load checkpoint tensors into ``module`` (whose parameter names are the published names)."""
    target = module.state_dict()
    expected = {k: tuple(v.shape) for k, v in target.items()}
    adapted = adapt_state_dict(sd, expected, cfg)
    with torch.no_grad():
        for name, tensor in adapted.items():
            target[name].copy_(tensor.to(dtype=target[name].dtype))


def write_state_dict(
    sd: Mapping[str, torch.Tensor], out_dir: str | Path, max_shard_bytes: int | None = None
) -> list[Path]:
    """Write safetensors: one ``model.safetensors``, or shards plus ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    root = Path(out_dir)
    tensors = {k: v.contiguous() for k, v in sd.items()}
    meta = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(tensors, str(root / SAFETENSORS), metadata=meta)
        return [root / SAFETENSORS]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    total = len(shards)
    weight_map: dict[str, str] = {}
    paths = []
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{total:05d}.safetensors"
        save_file(shard, str(root / fname), metadata=meta)
        weight_map.update(dict.fromkeys(shard, fname))
        paths.append(root / fname)
    total_size = sum(t.numel() * t.element_size() for t in tensors.values())
    (root / SAFETENSORS_INDEX).write_text(
        json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=2)
    )
    return paths
