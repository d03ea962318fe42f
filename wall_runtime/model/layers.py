"""Building blocks of the language model: RMSNorm, SwiGLU FFN and multimodal rotary embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32.

    The weight multiply also happens in fp32 before casting back to the input dtype: that is what the
    authors' bf16 serving does (their norms stay fp32), and it differs from transformers' Qwen2 norm,
    which casts first. In fp32 the two are identical.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * x32).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``, bias-free; the canonical in-memory form is unfused gate / up."""

    def __init__(self, dim: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, intermediate, bias=False)
        self.up_proj = nn.Linear(dim, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope_inv_freq(head_dim: int, theta: float, device: torch.device | None = None) -> Tensor:
    """Inverse frequencies ``1 / theta^(2i/head_dim)``, fp32, ``[head_dim/2]``."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return 1.0 / (theta**exponent)


def mrope_cos_sin(
    position_ids: Tensor,
    head_dim: int,
    theta: float,
    mrope_section: tuple[int, int, int],
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Text mRoPE tables from ``position_ids [3, B, L]`` (temporal, height, width).

    Frequency band ``j`` of ``head_dim/2`` takes its angle from axis 0, 1 or 2 according to
    ``mrope_section`` (e.g. 16 temporal, 24 height, 24 width bands), and the table is duplicated for
    the two rotate-half halves. Returns ``cos, sin [B, L, head_dim]`` computed in fp32 and then cast
    to ``dtype`` (the reference rounds them to the model dtype, bf16 on GPU).
    """
    inv_freq = rope_inv_freq(head_dim, theta, position_ids.device)
    angles = position_ids.float()[..., None] * inv_freq  # [3, B, L, head_dim/2]
    parts = angles.split(list(mrope_section), dim=-1)
    angles = torch.cat([part[i % 3] for i, part in enumerate(parts)], dim=-1)  # [B, L, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [B, heads, L, head_dim]`` by tables ``[B, L, head_dim]``."""
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin
