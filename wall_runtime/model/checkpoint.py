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

import functools
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wall_runtime.model.config import WallConfig
from wall_runtime.model.weight_files import (
    TensorEntry,
    WeightFileError,
    open_safetensors,
    read_safetensors_header,
)

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


def is_normalizer_key(name: str) -> bool:
    return "action_preprocessor.normalizer" in name or ".normalizer_" in name


def _kept(name: str) -> bool:
    return not is_normalizer_key(name) and name not in DROPPED_KEYS


# --------------------------------------------------------------------------- the vision MLP width

VISION_MLP_ALIGN = 128  # the 1.1.0 model pads the ViT FFN width up to a multiple of this (spec §10)


def padded_width(width: int, align: int = VISION_MLP_ALIGN) -> int:
    return -(-int(width) // align) * align


def stored_vision_mlp_width(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """The vision MLP hidden width block 0 stores (unfused gate, fused gate_up or down), if any."""
    b = "visual.blocks.0.mlp."
    if len(shapes.get(b + "gate_proj.weight", ())) == 2:
        return int(shapes[b + "gate_proj.weight"][0])
    if len(shapes.get(b + "gate_up_proj.weight", ())) == 2 and shapes[b + "gate_up_proj.weight"][0] % 2 == 0:
        return int(shapes[b + "gate_up_proj.weight"][0]) // 2
    if len(shapes.get(b + "down_proj.weight", ())) == 2:
        return int(shapes[b + "down_proj.weight"][1])
    return None


def resolve_vision_mlp_width(cfg: WallConfig, shapes: Mapping[str, tuple[int, ...]]) -> WallConfig:
    """``cfg`` with the vision MLP width the checkpoint stores, when that is the 1.1.0 padded form.

    The authors' 1.1.0 model rounds ``vision_config.intermediate_size`` up to a multiple of 128 (3420 →
    3456) and saves that width; the padding rows are used as stored. Any other stored width is left to
    the shape check, which refuses it by name.
    """
    configured = int(cfg.vision["intermediate_size"])
    stored = stored_vision_mlp_width(shapes)
    if stored is None or stored == configured or stored != padded_width(configured):
        return cfg
    log.info("vision MLP: checkpoint stores the 1.1.0 padded width %d (config %d)", stored, configured)
    return cfg.with_vision_intermediate_size(stored)


def _shape_hint(name: str, cfg: WallConfig) -> str:
    if name.startswith("visual.blocks.") and ".mlp." in name:
        configured = int(cfg.config_json.get("vision_config", cfg.vision).get("intermediate_size", 0))
        return (
            f" (the vision MLP width must be vision_config.intermediate_size = {configured} or, as the 1.1.0"
            f" model saves it, that rounded up to a multiple of {VISION_MLP_ALIGN} = {padded_width(configured)})"
        )
    return ""


# --------------------------------------------------------------------------- copy plan


@dataclass(frozen=True)
class Copy:
    """Stored tensor rows ``src`` go into parameter ``param`` rows ``dst`` (None = all rows)."""

    param: str
    dst: tuple[int, int] | None = None
    src: tuple[int, int] | None = None


def plan_copies(
    stored: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], cfg: WallConfig
) -> dict[str, list[Copy]]:
    """For each stored tensor, where its rows go in the model; every problem is an error by name.

    Stored and model forms may differ (fused ``qkv`` / ``gate_up`` vs. unfused parts): a fused stored
    tensor is split by rows into the model's parts, stored parts fill row ranges of a fused parameter.
    Either way every value is copied once, as is, so all forms give bit-identical parameters.
    """
    part_rows = {k: v[0] for k, v in unfused_weight_shapes(cfg).items()}
    plan: dict[str, list[Copy]] = {}
    filled: dict[str, list[str]] = {}  # param -> stored names that fill it
    unexpected: list[str] = []
    for name, shape in stored.items():
        if not _kept(name):
            continue
        shape = tuple(shape)
        parts = _parts_of(name)
        fused = _fused_name(name)
        if name in expected:
            if shape != tuple(expected[name]):
                raise CheckpointError(
                    f"{name} has shape {shape} in the checkpoint, the model expects {tuple(expected[name])}"
                    + _shape_hint(name, cfg)
                )
            plan[name] = [Copy(name)]
            filled.setdefault(name, []).append(name)
        elif parts is not None and all(p in expected for p in parts):
            rows = [expected[p][0] for p in parts]
            if not shape or shape[0] != sum(rows):
                got = shape[0] if shape else 0
                raise CheckpointError(
                    f"{name} has {got} rows; the config expects {' + '.join(map(str, rows))}"
                    + _shape_hint(name, cfg)
                )
            copies, offset = [], 0
            for p, r in zip(parts, rows, strict=True):
                if shape[1:] != tuple(expected[p][1:]):
                    raise CheckpointError(
                        f"{name} has shape {shape}; its part {p} must be {tuple(expected[p])}"
                        + _shape_hint(name, cfg)
                    )
                copies.append(Copy(p, None, (offset, offset + r)))
                filled.setdefault(p, []).append(name)
                offset += r
            plan[name] = copies
        elif fused is not None and fused in expected:
            siblings = _parts_of(fused) or []
            rows = [part_rows.get(p, 0) for p in siblings]
            i = siblings.index(name)
            want = (rows[i], *expected[fused][1:])
            if shape != want or sum(rows) != expected[fused][0]:
                raise CheckpointError(
                    f"{name} has shape {shape} in the checkpoint, the model expects {want}"
                    + _shape_hint(name, cfg)
                )
            offset = sum(rows[:i])
            plan[name] = [Copy(fused, (offset, offset + rows[i]))]
            filled.setdefault(fused, []).append(name)
        else:
            unexpected.append(name)
    missing: list[str] = []
    for param in expected:
        sources = filled.get(param, [])
        if not sources:
            missing.append(param)
        elif len(sources) > 1 and param in sources:
            raise CheckpointError(f"{param} is stored twice: as {', '.join(sorted(set(sources)))}")
        elif param not in sources and _parts_of(param) is not None:
            parts = _parts_of(param) or []
            lacking = [p for p in parts if p not in sources]
            if lacking:
                raise CheckpointError(f"cannot build {param}: the checkpoint lacks {', '.join(lacking)}")
    if missing or unexpected:
        lines = []
        if missing:
            lines.append(
                f"missing key(s): {', '.join(sorted(missing)[:20])}" + (" ..." if len(missing) > 20 else "")
            )
        if unexpected:
            lines.append(
                f"unexpected key(s): {', '.join(sorted(unexpected)[:20])}"
                + (" ..." if len(unexpected) > 20 else "")
            )
        raise CheckpointError("checkpoint does not match the configured model: " + "; ".join(lines))
    return plan


def _rows(t: torch.Tensor, rows: tuple[int, int] | None) -> torch.Tensor:
    return t if rows is None else t[rows[0] : rows[1]]


def copy_tensor(params: Mapping[str, torch.Tensor], source: torch.Tensor, copies: Iterable[Copy]) -> None:
    """Copy (and cast, and move) one stored tensor into the parameters its plan names."""
    with torch.no_grad():
        for c in copies:
            _rows(params[c.param], c.dst).copy_(_rows(source, c.src))


# --------------------------------------------------------------------------- files


@dataclass
class CheckpointWeights:
    """A checkpoint directory's weights, checked but not read: names, shapes and dtypes from the
    file headers (safetensors), or the tensors of an FSDP ``.bin`` / an in-memory state dict."""

    root: Path
    shards: dict[Path, dict[str, TensorEntry]] = field(default_factory=dict)
    state_dict: Mapping[str, torch.Tensor] | None = None

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        if self.state_dict is not None:
            return {k: tuple(v.shape) for k, v in self.state_dict.items()}
        return {k: e.shape for entries in self.shards.values() for k, e in entries.items()}

    @property
    def stored_bytes(self) -> int:
        if self.state_dict is not None:
            return sum(v.numel() * v.element_size() for v in self.state_dict.values())
        return sum(e.nbytes for entries in self.shards.values() for e in entries.values())

    def tensors(self) -> Iterator[tuple[str, torch.Tensor, Callable[[], None]]]:
        """``(name, tensor, release)`` one at a time, shard by shard; a tensor is a view onto the
        mapped file, valid until ``release()`` (which drops its pages) or the next tensor."""
        if self.state_dict is not None:
            for name, tensor in self.state_dict.items():
                yield name, tensor, lambda: None
            return
        for path, entries in self.shards.items():
            try:
                with open_safetensors(path, entries) as handle:
                    for name in entries:
                        view = handle.view(name)
                        yield name, view, functools.partial(handle.release, name)
                        del view
            except OSError as exc:
                raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def open_checkpoint_weights(checkpoint_dir: str | Path) -> CheckpointWeights:
    """Find and check a checkpoint directory's weight files (sharded or single safetensors, or the
    FSDP .bin) without reading the weights; every problem is a :class:`CheckpointError` naming the file."""
    root = Path(checkpoint_dir)
    index = root / SAFETENSORS_INDEX
    files: list[Path]
    listed: set[str] | None = None
    if index.is_file():
        try:
            table = json.loads(index.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{index}: not valid JSON: {exc}") from exc
        weight_map = table.get("weight_map") if isinstance(table, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        files = [root / str(f) for f in dict.fromkeys(weight_map.values())]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{index} lists shard(s) that are absent: {', '.join(absent)}")
        listed = set(weight_map)
    elif (root / SAFETENSORS).is_file():
        files = [root / SAFETENSORS]
    elif sorted(root.glob("*.safetensors")):
        files = sorted(root.glob("*.safetensors"))  # early FLOW checkpoints: shards without an index
    elif (root / FSDP_BIN).is_file():
        return CheckpointWeights(root, state_dict=_load_fsdp_bin(root / FSDP_BIN))
    else:
        raise CheckpointError(
            f"{root} holds no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {FSDP_BIN}"
        )
    shards: dict[Path, dict[str, TensorEntry]] = {}
    seen: dict[str, Path] = {}
    for f in files:
        try:
            entries = read_safetensors_header(f)
        except WeightFileError as exc:
            raise CheckpointError(str(exc)) from exc
        for key in entries:
            if key in seen:
                raise CheckpointError(f"{key} appears in more than one shard ({seen[key].name}, {f.name})")
            seen[key] = f
        shards[f] = entries
    if listed is not None and listed != set(seen):
        raise CheckpointError(
            f"{index} and its shards disagree on: {', '.join(sorted(listed ^ set(seen))[:10])}"
        )
    return CheckpointWeights(root, shards=shards)


def _load_fsdp_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:  # zip-format files map lazily (no second copy); legacy ones are read whole
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle / zip
        raise CheckpointError(f"{path}: cannot read as a PyTorch state dict: {exc}") from exc
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return dict(sd)


def read_state_dict(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, copied into memory (tools and tests; loading a model
    goes through :func:`load_weights`, which never holds this second copy)."""
    weights = open_checkpoint_weights(checkpoint_dir)
    return {name: tensor.clone() for name, tensor, _ in weights.tensors()}


def embedding_rows(shapes: Mapping[str, tuple[int, ...]] | Mapping[str, torch.Tensor]) -> int:
    if "model.embed_tokens.weight" not in shapes:
        raise CheckpointError("missing key: model.embed_tokens.weight")
    value = shapes["model.embed_tokens.weight"]
    return int(value.shape[0] if isinstance(value, torch.Tensor) else value[0])


def load_weights(module: torch.nn.Module, weights: CheckpointWeights, cfg: WallConfig) -> None:
    """Fill ``module``'s parameters (any device / dtype, possibly uninitialised) from ``weights``,
    tensor by tensor: each stored tensor is cast and copied straight into its parameter, then its
    pages are released. The plan is checked first, so a mismatch fails before anything is copied."""
    params = module.state_dict(keep_vars=True)
    expected = {k: tuple(v.shape) for k, v in params.items()}
    plan = plan_copies(weights.shapes, expected, cfg)
    for name, tensor, release in weights.tensors():
        copies = plan.get(name)
        if copies:
            copy_tensor(params, tensor, copies)
        release()


def _allocate(module: torch.nn.Module, device: torch.device | str) -> None:
    """Uninitialised storage for every meta parameter / buffer (``Module.to_empty`` does the same, but
    through ``empty_like`` on meta tensors, which imports sympy on first use: ~1 s and ~40 MB)."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.is_meta:
                empty = torch.empty(param.shape, dtype=param.dtype, device=device)
                sub._parameters[name] = torch.nn.Parameter(empty, requires_grad=param.requires_grad)
        for name, buf in list(sub._buffers.items()):
            if buf is not None and buf.is_meta:
                sub._buffers[name] = torch.empty(buf.shape, dtype=buf.dtype, device=device)


def materialize(
    module: torch.nn.Module,
    weights: CheckpointWeights,
    cfg: WallConfig,
    device: torch.device | str = "cpu",
) -> torch.nn.Module:
    """Give a module built on the meta device (dtypes already set) real storage on ``device`` and fill
    it from ``weights``. The copy plan is checked against the meta shapes first, so a checkpoint that
    does not fit fails before any memory is allocated; nothing is initialised twice."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}
    plan = plan_copies(weights.shapes, expected, cfg)
    _allocate(module, device)
    params = module.state_dict(keep_vars=True)
    for name, tensor, release in weights.tensors():
        copies = plan.get(name)
        if copies:
            copy_tensor(params, tensor, copies)
        release()
    return module


def load_into(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], cfg: WallConfig) -> None:
    """Load in-memory checkpoint tensors into ``module`` (whose parameter names are the published names)."""
    load_weights(module, CheckpointWeights(Path("."), state_dict=sd), cfg)


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
