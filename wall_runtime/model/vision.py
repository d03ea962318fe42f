"""Qwen2.5-VL vision tower: pixel patches → one embedding per 2×2 block of patches.

The layout follows the published checkpoint (``visual.*`` keys): Conv3d patch embedding without bias,
``depth`` pre-norm blocks (RMSNorm, attention with a fused ``qkv`` and 2-D rotary, SwiGLU MLP with bias),
and a patch merger (RMSNorm, then Linear / GELU / Linear over the 4 patches of a merge block).

Most blocks attend inside windows of ``window_size`` pixels (8×8 patches for the 3B model); the blocks in
``fullatt_block_indexes`` attend over the whole frame. As in the reference, tokens are reordered so that
every window is contiguous, attention runs on that order, and the merger output is put back in raster
order at the end. Attention here is plain SDPA with explicit block-diagonal boolean masks, so the forward
pass has no data-dependent control flow: everything that depends only on the image grids (rotary cos/sin,
the window order, the two masks) is computed once by :meth:`VisionTower.plan`, which makes a fixed-grid
export (ONNX, CUDA graphs) straightforward.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 2048
    hidden_act: str = "silu"
    tokens_per_second: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VisionConfig:
        """Build from the ``vision_config`` of a Qwen2.5-VL ``config.json``; unknown keys are ignored."""
        aliases = {
            "in_chans": "in_channels",
            "num_attention_heads": "num_heads",
            "num_hidden_layers": "depth",
        }
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in d.items():
            name = aliases.get(key, key)
            if name in names and name not in values:
                values[name] = value
        if "in_channels" in d:  # the canonical spelling wins over the alias
            values["in_channels"] = d["in_channels"]
        rope = d.get("rope_parameters") or {}
        if "rope_theta" in rope:
            values.setdefault("rope_theta", rope["rope_theta"])
        if "fullatt_block_indexes" in values:
            values["fullatt_block_indexes"] = tuple(int(i) for i in values["fullatt_block_indexes"])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.hidden_size % self.num_heads or self.head_dim % 4:
            raise ValueError(
                f"vision hidden_size {self.hidden_size} must split into {self.num_heads} heads "
                "of a head_dim divisible by 4 (2-D rotary)"
            )
        if self.window_size % (self.patch_size * self.spatial_merge_size):
            raise ValueError(
                f"window_size {self.window_size} must be a multiple of patch_size × spatial_merge_size "
                f"({self.patch_size * self.spatial_merge_size})"
            )
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"fullatt_block_indexes {bad} outside 0..{self.depth - 1}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"unsupported vision hidden_act {self.hidden_act!r}; known: {sorted(_ACTIVATIONS)}"
            )


_ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


# ---------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class VisionPlan:
    """Everything the forward pass needs that depends only on the image grids.

    ``cos``/``sin``: ``[N, head_dim]`` fp32 rotary tables in window order; ``window_index``: the window
    order of the merge blocks (``[N / merge²]``); ``reverse_index``: its inverse; ``full_mask`` and
    ``window_mask``: ``[N, N]`` boolean, True where attention is allowed (same frame / same window);
    ``full_segment`` / ``window_segment``: the common length of every frame / window when they are all
    equal (0 when not), so attention can run per segment without the ``[N, N]`` mask, which for a
    training batch of many images costs N² (4096² at 64 images of 64 patches).
    """

    grid_thw: tuple[tuple[int, int, int], ...]
    cos: Tensor
    sin: Tensor
    window_index: Tensor
    reverse_index: Tensor
    full_mask: Tensor
    window_mask: Tensor
    full_segment: int = 0
    window_segment: int = 0

    @property
    def num_patches(self) -> int:
        return int(self.cos.shape[0])

    def to(self, device: torch.device | str) -> VisionPlan:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.to(device)
        return VisionPlan(**moved)


def _grid_tuples(grid_thw: Tensor | np.ndarray | Any) -> tuple[tuple[int, int, int], ...]:
    grid = np.asarray(grid_thw.tolist() if isinstance(grid_thw, Tensor) else grid_thw, dtype=np.int64)
    if grid.ndim != 2 or grid.shape[1] != 3 or len(grid) == 0:
        raise ValueError(f"grid_thw must be [n_images, 3] with n_images ≥ 1, got shape {grid.shape}")
    if (grid <= 0).any():
        raise ValueError(f"grid_thw entries must be positive, got {grid.tolist()}")
    return tuple((int(t), int(h), int(w)) for t, h, w in grid)


def _block_mask(lengths: list[int]) -> Tensor:
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return segment[:, None] == segment[None, :]


def build_plan(cfg: VisionConfig, grid_thw: Tensor | np.ndarray | Any) -> VisionPlan:
    """Compute the per-grid constants (on CPU; move with :meth:`VisionPlan.to`)."""
    grids = _grid_tuples(grid_thw)
    m = cfg.spatial_merge_size
    unit = m * m
    win = cfg.window_size // m // cfg.patch_size  # window side in merge blocks
    rows, cols, window_order, window_lengths, frame_lengths = [], [], [], [], []
    offset = 0  # merge blocks before this image
    for t, h, w in grids:
        if h % m or w % m:
            raise ValueError(f"grid {(t, h, w)} is not divisible by the merge size {m}")
        # patch (row, col) of every token, tokens in merge-block order
        r = np.arange(h).reshape(h // m, m, 1, 1).repeat(w // m, 2).repeat(m, 3)
        c = np.arange(w).reshape(1, 1, w // m, m).repeat(h // m, 0).repeat(m, 1)
        rows.append(np.tile(r.transpose(0, 2, 1, 3).ravel(), t))
        cols.append(np.tile(c.transpose(0, 2, 1, 3).ravel(), t))
        # merge blocks grouped by window; windows in raster order, frame by frame
        bh, bw = h // m, w // m
        wh, ww = -(-bh // win), -(-bw // win)
        block = np.arange(t * bh * bw).reshape(t, bh, bw)
        padded = np.full((t, wh * win, ww * win), -1, dtype=np.int64)
        padded[:, :bh, :bw] = block
        by_window = (
            padded.reshape(t, wh, win, ww, win).transpose(0, 1, 3, 2, 4).reshape(t * wh * ww, win * win)
        )
        counts = (by_window >= 0).sum(axis=1)
        window_order.append(by_window[by_window >= 0] + offset)
        window_lengths.extend(int(n) * unit for n in counts if n > 0)
        frame_lengths.extend([h * w] * t)
        offset += t * bh * bw

    window_index = torch.from_numpy(np.concatenate(window_order))
    token_order = (window_index[:, None] * unit + torch.arange(unit)).reshape(-1)
    positions = torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)], axis=1))
    half = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, half, 2, dtype=torch.float32) / half))
    angles = (positions[token_order].to(torch.float32)[..., None] * inv_freq).flatten(1)  # [N, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)
    return VisionPlan(
        grid_thw=grids,
        cos=angles.cos(),
        sin=angles.sin(),
        window_index=window_index,
        reverse_index=torch.argsort(window_index),
        full_mask=_block_mask(frame_lengths),  # frames stay contiguous in window order
        window_mask=_block_mask(window_lengths),
        full_segment=_common_length(frame_lengths),
        window_segment=_common_length(window_lengths),
    )


def _common_length(lengths: list[int]) -> int:
    return lengths[0] if len(set(lengths)) == 1 else 0


# ---------------------------------------------------------------------------------------------- modules


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``[..., N, head_dim]`` by the fp32 tables ``[N, head_dim]``; math in fp32."""
    x32 = x.float()
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=True)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=True)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, segment: int = 0) -> Tensor:
        """``segment > 0``: every ``segment`` consecutive rows attend only among themselves (``mask``
        unused); else ``mask [N, N]`` says who attends to whom."""
        n, dim = x.shape
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, -1).permute(1, 2, 0, 3).unbind(0)  # [heads, N, hd]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if segment > 0:
            q, k, v = (
                t.reshape(self.num_heads, n // segment, segment, -1).transpose(0, 1) for t in (q, k, v)
            )
            out = F.scaled_dot_product_attention(q, k, v)  # [segments, heads, segment, hd]
            return self.proj(out.permute(0, 2, 1, 3).reshape(n, dim))
        out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask)
        return self.proj(out[0].transpose(0, 1).reshape(n, dim))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=True)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=True)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=True)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, segment: int = 0) -> Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, mask, segment)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Conv3d with kernel = stride = one patch, i.e. a linear map of each flattened patch."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel, stride=kernel, bias=False)

    def forward(self, pixel_values: Tensor) -> Tensor:
        weight = self.proj.weight
        return F.linear(pixel_values.to(weight.dtype), weight.reshape(weight.shape[0], -1))


class PatchMerger(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.width = cfg.hidden_size * cfg.spatial_merge_size**2
        self.ln_q = RMSNorm(cfg.hidden_size, 1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(self.width, self.width), nn.GELU(), nn.Linear(self.width, cfg.out_hidden_size)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.ln_q(x).reshape(-1, self.width))


class VisionTower(nn.Module):
    """``forward(pixel_values [N, C·T·P·P], grid_thw [n, 3]) → [N / merge², out_hidden_size]``.

    Several images go through in one call (their patches concatenated in ``grid_thw`` order); attention
    never crosses an image or frame. Pass ``plan=`` (from :meth:`plan`) to skip the grid bookkeeping; a
    given plan takes precedence over ``grid_thw``. Output rows are in raster order of merge blocks, image
    after image, i.e. the order of the ``<|image_pad|>`` tokens in the prompt.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)
        self._full_attention = frozenset(cfg.fullatt_block_indexes)
        self._plans: dict[tuple[Any, ...], VisionPlan] = {}

    def plan(self, grid_thw: Tensor | np.ndarray | Any) -> VisionPlan:
        """Per-grid constants on this module's device, cached by grid (cheap to call every frame)."""
        grids = _grid_tuples(grid_thw)
        device = self.patch_embed.proj.weight.device
        key = (grids, str(device))
        if key not in self._plans:
            if len(self._plans) >= 8:  # a robot has a handful of camera layouts; don't grow without bound
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = build_plan(self.cfg, grids).to(device)
        return self._plans[key]

    def forward(
        self, pixel_values: Tensor, grid_thw: Tensor | None = None, plan: VisionPlan | None = None
    ) -> Tensor:
        if plan is None:
            if grid_thw is None:
                raise ValueError("VisionTower.forward needs grid_thw or a precomputed plan")
            plan = self.plan(grid_thw)
        if pixel_values.ndim != 2 or pixel_values.shape[1] != self.cfg.patch_dim:
            raise ValueError(
                f"pixel_values must be [N, {self.cfg.patch_dim}], got {tuple(pixel_values.shape)}"
            )
        if pixel_values.shape[0] != plan.num_patches:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} patches but grid_thw {list(plan.grid_thw)} "
                f"needs {plan.num_patches}"
            )
        unit = self.cfg.spatial_merge_size**2
        x = self.patch_embed(pixel_values)
        n, dim = x.shape
        x = x.view(n // unit, unit, dim)[plan.window_index].reshape(n, dim)
        for i, block in enumerate(self.blocks):
            if i in self._full_attention:
                x = block(x, plan.cos, plan.sin, plan.full_mask, plan.full_segment)
            else:
                x = block(x, plan.cos, plan.sin, plan.window_mask, plan.window_segment)
        return self.merger(x)[plan.reverse_index]


class FixedGridVisionTower(nn.Module):
    """The tower bound to one grid: ``forward(pixel_values) → embeddings``, for ONNX export and CUDA graphs.

    The plan's tensors become non-persistent buffers, so ``.to(device)`` moves them with the weights and
    an exporter records them as constants.
    """

    def __init__(self, tower: VisionTower, grid_thw: Tensor | np.ndarray | Any) -> None:
        super().__init__()
        self.tower = tower
        plan = build_plan(tower.cfg, grid_thw)
        self.grid_thw = plan.grid_thw
        self.segments = (plan.full_segment, plan.window_segment)
        for name in ("cos", "sin", "window_index", "reverse_index", "full_mask", "window_mask"):
            self.register_buffer(name, getattr(plan, name), persistent=False)

    def forward(self, pixel_values: Tensor) -> Tensor:
        plan = VisionPlan(
            self.grid_thw,
            self.cos,
            self.sin,
            self.window_index,
            self.reverse_index,
            self.full_mask,
            self.window_mask,
            *self.segments,
        )
        return self.tower(pixel_values, plan=plan)
