"""The action head (``action_preprocessor.*``): action/time embedding, state embedding, projection back.

Everything here runs in fp32 whatever the transformer's dtype, as the reference does (its action
processor stays fp32 and runs under ``autocast(float32)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wall_runtime.model.net_config import NetConfig


def time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of flow time ``t [B]`` in [0, 1] → ``[B, dim]`` fp32.

    ``freqs = exp(-ln(10000) · arange(dim/2) / (dim/2 − 1))``, ``cat(sin(t·freqs), cos(t·freqs))``;
    t is used raw (not × 1000).
    """
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(10000.0) / (half - 1))
    )
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ActionHead(nn.Module):
    """``w1``, ``w2``, ``w3``, ``action_proj_back`` and (FLOW) ``propri_proj``, bias-free.

    - ``embed_actions``: ``w3(silu(w2([w1([x_t, dof_mask]), time_emb(t)])))`` → ``[B, H, action_hidden_size]``
    - ``project_back``: ``action_proj_back(h[..., :action_hidden_size])`` in fp32
    - ``embed_state``: ``propri_proj([state, state_mask])`` → ``[B, 1, state_hidden_size]``
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.action_hidden_size
        mask_factor = 2 if cfg.proj_with_mask else 1
        self.w1 = nn.Linear(cfg.action_dim * mask_factor, width, bias=False)
        self.w2 = nn.Linear(2 * width, width, bias=False)
        self.w3 = nn.Linear(width, width, bias=False)
        self.action_proj_back = nn.Linear(width, cfg.action_dim, bias=False)
        self.propri_proj = (
            nn.Linear(cfg.state_dim * mask_factor, cfg.propri_width, bias=False)
            if cfg.has_propri_proj
            else None
        )

    def embed_actions(self, x_t: Tensor, t: Tensor, dof_mask: Tensor) -> Tensor:
        """``x_t, dof_mask [B, H, D]``, ``t [B]`` → ``[B, H, action_hidden_size]`` fp32."""
        dtype = self.w1.weight.dtype
        inputs = torch.cat([x_t, dof_mask], dim=-1) if self.cfg.proj_with_mask else x_t
        emb = self.w1(inputs.to(dtype))
        temb = time_embedding(t, self.cfg.action_hidden_size).to(dtype)
        temb = temb[:, None, :].expand(-1, emb.shape[1], -1)
        return self.w3(F.silu(self.w2(torch.cat([emb, temb], dim=-1))))

    def project_back(self, hidden: Tensor) -> Tensor:
        """Final (normed) action hidden states ``[B, H, ≥action_hidden_size]`` → ``[B, H, D]`` fp32."""
        hidden = hidden[..., : self.cfg.action_hidden_size]
        return self.action_proj_back(hidden.to(self.action_proj_back.weight.dtype)).float()

    def embed_state(self, state: Tensor, state_mask: Tensor) -> Tensor:
        """Normalised state and its mask ``[B, P]`` (or ``[B, 1, P]``) → ``[B, 1, state_hidden_size]`` fp32."""
        if self.propri_proj is None:
            raise RuntimeError(
                "this model writes the state into the prompt as text (state_as_text=True); it has no propri_proj"
            )
        if state.shape != state_mask.shape:
            raise ValueError(
                f"state {tuple(state.shape)} and state_mask {tuple(state_mask.shape)} differ in shape"
            )
        if state.shape[-1] != self.cfg.state_dim:
            raise ValueError(f"state has {state.shape[-1]} dims, the model expects {self.cfg.state_dim}")
        if state.dim() == 2:
            state, state_mask = state[:, None, :], state_mask[:, None, :]
        dtype = self.propri_proj.weight.dtype
        inputs = torch.cat([state, state_mask], dim=-1) if self.cfg.proj_with_mask else state
        return self.propri_proj(inputs.to(dtype))
