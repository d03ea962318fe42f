"""The WALL-OSS language model with its action expert, and the network the flow sampler drives.

Module and parameter names are the published weight names, so a state dict loads by name:

- ``model.embed_tokens``
- ``model.layers.N.self_attn.{q,k,v,o}_proj`` (FLOW: attention shared by all tokens; q/k/v with bias)
  or ``model.layers.N.self_attn.qkv_proj_experts.{0,1}`` (with bias) and ``o_proj_experts.{0,1}``
  (mixture-of-transformers, 0.5)
- ``model.layers.N.moe.experts.{0,1}.{gate_proj,up_proj,down_proj}``
- ``model.layers.N.{input_layernorm,post_attention_layernorm}`` (shared) or
  ``model.layers.N.{input_layernorms,post_attention_layernorms}.{0,1}`` (per expert)
- ``model.norm`` or ``model.norms.{0,1}``
- ``action_preprocessor.{w1,w2,w3,action_proj_back[,propri_proj]}``

Canonical in-memory form (the loader converts other published forms into it): FFN gate / up
*unfused*; shared attention q / k / v *unfused*; per-expert attention *fused* ``qkv_proj_experts.E``
with rows q, k, v stacked on dim 0. ``lm_head`` is tied and not kept. ``visual.*`` is the vision
tower, which callers attach as ``net.visual``.

Routing is static: the prefix (system, images, text, state) is expert 0 and the ``H`` action tokens
at the end of the sequence are expert 1. So every forward takes the sequence as *segments*, one per
expert in sequence order, instead of scattering tokens by type. The action tokens of 0.5 live in a
``expert_hidden[1]``-wide stream, which is exactly the reference's "columns [:1024] of the 2048
stream, rest zero": its norms, projections and FFN only ever read and write those columns.

Inference is shaped for export (static shapes, explicit KV tensors, no data-dependent Python):
``prefix`` runs the prompt once and returns the per-layer K/V; ``denoise_step`` runs only the action
tokens against that cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wall_runtime.model.action_head import ActionHead
from wall_runtime.model.layers import RMSNorm, SwiGLU, apply_rope, mrope_cos_sin
from wall_runtime.model.net_config import NetConfig

PREFIX_EXPERT = 0
ACTION_EXPERT = 1


class KVCache(NamedTuple):
    """Keys and values of the prefix, after RoPE: each ``[layers, B, kv_heads, Lp, head_dim]``."""

    k: Tensor
    v: Tensor


# ---------------------------------------------------------------------------------------------------------
# attention masks (bool, True = may attend), all [B, 1, Lq, Lk]


def _position_grid(rows: int, cols: int, device: torch.device) -> tuple[Tensor, Tensor]:
    # index comparisons rather than torch.eye / tril on bool: those export to ONNX ops that
    # onnxruntime has no bool kernel for
    return (
        torch.arange(rows, device=device)[:, None],
        torch.arange(cols, device=device)[None, :],
    )


def prefix_attention_mask(prefix_mask: Tensor) -> Tensor:
    """Causal over the prefix, padding keys removed.

    A padding query row keeps its own diagonal so that no row is empty (an empty row gives NaN, and
    NaN in a padded token's value would leak through a zero attention weight).
    """
    valid = prefix_mask.bool()
    length = valid.shape[1]
    row, col = _position_grid(length, length, valid.device)
    return (((col <= row)[None] & valid[:, None, :]) | (col == row)[None])[:, None]


def suffix_attention_mask(prefix_mask: Tensor, horizon: int, causal_actions: bool) -> Tensor:
    """Action-token rows: every valid prefix key, then a lower-triangular or full action block."""
    valid = prefix_mask.bool()
    batch = valid.shape[0]
    row, col = _position_grid(horizon, horizon, valid.device)
    block = col <= row if causal_actions else (col >= 0) & (row >= 0)
    left = valid[:, None, :].expand(batch, horizon, valid.shape[1])
    right = block[None].expand(batch, horizon, horizon)
    return torch.cat([left, right], dim=-1)[:, None]


def full_attention_mask(prefix_mask: Tensor, horizon: int, causal_actions: bool) -> Tensor:
    """The whole sequence: prefix rows as in ``prefix_attention_mask`` (they never see actions)."""
    top = prefix_attention_mask(prefix_mask)
    top = torch.cat([top, top.new_zeros(*top.shape[:3], horizon)], dim=-1)
    return torch.cat([top, suffix_attention_mask(prefix_mask, horizon, causal_actions)], dim=2)


# ---------------------------------------------------------------------------------------------------------
# layers


class SharedAttention(nn.Module):
    """FLOW: one q/k/v/o set for every token."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.q_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.kv_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.kv_dim, bias=True)
        self.o_proj = nn.Linear(cfg.q_dim, cfg.hidden_size, bias=False)

    def project_qkv(self, x: Tensor, expert: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def project_out(self, x: Tensor, expert: int) -> Tensor:
        return self.o_proj(x)


class ExpertAttention(nn.Module):
    """Mixture-of-transformers: per-expert fused qkv (rows q, k, v) and o_proj; attention is joint."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.split = (cfg.q_dim, cfg.kv_dim, cfg.kv_dim)
        self.qkv_proj_experts = nn.ModuleList(
            [nn.Linear(width, sum(self.split), bias=True) for width in cfg.expert_hidden]
        )
        self.o_proj_experts = nn.ModuleList(
            [nn.Linear(cfg.q_dim, width, bias=False) for width in cfg.expert_hidden]
        )

    def project_qkv(self, x: Tensor, expert: int) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.qkv_proj_experts[expert](x).split(self.split, dim=-1)
        return q, k, v

    def project_out(self, x: Tensor, expert: int) -> Tensor:
        return self.o_proj_experts[expert](x)


class ExpertFFNs(nn.Module):
    """``moe.experts.{0,1}``: the VLM FFN and the action FFN, chosen by token type."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.experts = nn.ModuleList(
            [
                SwiGLU(width, inter)
                for width, inter in zip(cfg.expert_hidden, cfg.expert_intermediate, strict=True)
            ]
        )


class DecoderLayer(nn.Module):
    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.self_attn: SharedAttention | ExpertAttention = (
            ExpertAttention(cfg) if cfg.attention_per_expert else SharedAttention(cfg)
        )
        if cfg.norm_per_expert:
            self.input_layernorms = nn.ModuleList([RMSNorm(w, cfg.rms_norm_eps) for w in cfg.expert_hidden])
            self.post_attention_layernorms = nn.ModuleList(
                [RMSNorm(w, cfg.rms_norm_eps) for w in cfg.expert_hidden]
            )
        else:
            self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.moe = ExpertFFNs(cfg)

    def _input_norm(self, expert: int) -> nn.Module:
        return self.input_layernorms[expert] if self.cfg.norm_per_expert else self.input_layernorm

    def _post_norm(self, expert: int) -> nn.Module:
        return (
            self.post_attention_layernorms[expert]
            if self.cfg.norm_per_expert
            else self.post_attention_layernorm
        )

    def forward(
        self,
        segments: Sequence[tuple[int, Tensor]],
        cos: Tensor,
        sin: Tensor,
        mask: Tensor,
        past: tuple[Tensor, Tensor] | None = None,
        kv_only: bool = False,
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Run one layer over consecutive segments ``(expert, hidden [B, L_i, width_e])``.

        ``kv_only``: stop once this layer's K/V exist (the segments come back unchanged): the prefix
        pass needs the last layer's K/V but not its output.

        ``cos/sin [B, sum L_i, head_dim]``, ``mask [B, 1, sum L_i, Lpast + sum L_i]``, ``past`` the
        cached ``(k, v) [B, kv_heads, Lpast, head_dim]``. Returns the new segments and this call's
        own ``k, v [B, kv_heads, sum L_i, head_dim]`` (after RoPE).
        """
        cfg = self.cfg
        batch = segments[0][1].shape[0]
        lengths = [h.shape[1] for _, h in segments]
        total = sum(lengths)
        projected = [self.self_attn.project_qkv(self._input_norm(e)(h), e) for e, h in segments]
        q = torch.cat([p[0] for p in projected], dim=1).view(batch, total, cfg.num_heads, cfg.head_dim)
        k = torch.cat([p[1] for p in projected], dim=1).view(batch, total, cfg.num_kv_heads, cfg.head_dim)
        v = torch.cat([p[2] for p in projected], dim=1).view(batch, total, cfg.num_kv_heads, cfg.head_dim)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        v = v.transpose(1, 2)
        new_k, new_v = k, v
        if kv_only:
            return [h for _, h in segments], new_k, new_v
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        attn = F.scaled_dot_product_attention(q, _repeat_kv(k, cfg), _repeat_kv(v, cfg), attn_mask=mask)
        attn = attn.transpose(1, 2).reshape(batch, total, cfg.q_dim)
        out = []
        for (e, h), a in zip(segments, attn.split(lengths, dim=1), strict=True):
            h = h + self.self_attn.project_out(a, e)
            h = h + self.moe.experts[e](self._post_norm(e)(h))
            out.append(h)
        return out, new_k, new_v


def _repeat_kv(x: Tensor, cfg: NetConfig) -> Tensor:
    groups = cfg.num_heads // cfg.num_kv_heads
    if groups == 1:
        return x
    batch, heads, length, dim = x.shape
    return x[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)


class WallDecoder(nn.Module):
    """``model.*``: token embedding, decoder layers with per-token-type experts, final norm(s)."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.num_layers)])
        if cfg.norm_per_expert:
            self.norms = nn.ModuleList([RMSNorm(w, cfg.rms_norm_eps) for w in cfg.expert_hidden])
        else:
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def final_norm(self, expert: int) -> nn.Module:
        return self.norms[expert] if self.cfg.norm_per_expert else self.norm

    def rope(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        return mrope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta, cfg.mrope_section, dtype)

    def forward_segments(
        self,
        segments: Sequence[tuple[int, Tensor]],
        cos: Tensor,
        sin: Tensor,
        mask: Tensor,
        past: KVCache | None = None,
        final_norm: bool = True,
        return_kv: bool = True,
        kv_only: bool = False,
    ) -> tuple[list[Tensor], Tensor | None, Tensor | None]:
        """All layers; returns the (normed) segments and this call's ``k, v [layers, B, kv, L, hd]``
        (``None`` when ``return_kv`` is False: the denoise steps never keep the action tokens' K/V).

        ``kv_only``: only the K/V are wanted (the prefix pass): the last layer stops after its K/V and
        no segments are returned, which saves its attention output, FFN and the final norm."""
        hidden = list(segments)
        ks, vs = [], []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            layer_past = (past.k[i], past.v[i]) if past is not None else None
            out, k, v = layer(hidden, cos, sin, mask, layer_past, kv_only=kv_only and i == last)
            hidden = [(e, h) for (e, _), h in zip(hidden, out, strict=True)]
            if return_kv:
                ks.append(k)
                vs.append(v)
        if kv_only:
            return [], torch.stack(ks), torch.stack(vs)
        if final_norm:
            hidden = [(e, self.final_norm(e)(h)) for e, h in hidden]
        if not return_kv:
            return [h for _, h in hidden], None, None
        return [h for _, h in hidden], torch.stack(ks), torch.stack(vs)


class WallOSSNet(nn.Module):
    """The network of either generation: ``model`` (language model + action expert) and the action head.

    Callers attach the vision tower as ``visual`` so that the whole published state dict loads by name.
    Shapes: ``B`` batch, ``Lp`` prefix length (left-padded), ``H`` action horizon, ``D`` action dim.
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = WallDecoder(cfg)
        self.action_preprocessor = ActionHead(cfg)

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's dtype (the action head and norms may differ: see ``to_inference_dtype``)."""
        return self.model.embed_tokens.weight.dtype

    def to_inference_dtype(self, dtype: torch.dtype) -> WallOSSNet:
        """Cast the network to ``dtype`` except the language model's norms and the action head (fp32).

        This is the reference's split for bf16 serving. An attached ``visual`` tower is cast whole.
        """
        self.to(dtype)
        for module in self.model.modules():
            if isinstance(module, RMSNorm):
                module.float()
        self.action_preprocessor.float()
        return self

    def kv_cache_shape(self, batch: int, prefix_length: int) -> tuple[int, int, int, int, int]:
        """Shape of each of ``KVCache.k`` / ``.v``: ``(layers, B, kv_heads, Lp, head_dim)``."""
        cfg = self.cfg
        return (cfg.num_layers, batch, cfg.num_kv_heads, prefix_length, cfg.head_dim)

    # --- embeddings -----------------------------------------------------------------------------------

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        return self.model.embed_tokens(input_ids)

    def embed_state(self, state: Tensor, state_mask: Tensor) -> Tensor:
        """FLOW's ``<|propri|>`` embedding from ``[normalised state, mask]`` → ``[B, 1, hidden]``, model dtype."""
        emb = self.action_preprocessor.embed_state(state, state_mask)
        return F.pad(emb, (0, self.cfg.hidden_size - emb.shape[-1])).to(self.dtype)

    def embed_actions(self, x_t: Tensor, t: Tensor, dof_mask: Tensor) -> Tensor:
        """Action-token inputs ``[B, H, action_width]`` in the model dtype (computed in fp32)."""
        emb = self.action_preprocessor.embed_actions(x_t, t, dof_mask)
        return F.pad(emb, (0, self.cfg.action_width - emb.shape[-1])).to(self.dtype)

    # --- inference ------------------------------------------------------------------------------------

    def prefix(self, inputs_embeds: Tensor, position_ids: Tensor, attention_mask: Tensor) -> KVCache:
        """Run the prompt once: ``inputs_embeds [B, Lp, hidden]``, ``position_ids [3, B, Lp]``,
        ``attention_mask [B, Lp]`` (1 = token, 0 = left padding) → the prefix ``KVCache``."""
        self._check_prefix(inputs_embeds, position_ids, attention_mask)
        inputs_embeds = inputs_embeds.to(self.dtype)
        cos, sin = self.model.rope(position_ids, self.dtype)
        mask = prefix_attention_mask(attention_mask)
        _, k, v = self.model.forward_segments([(PREFIX_EXPERT, inputs_embeds)], cos, sin, mask, kv_only=True)
        return KVCache(k, v)

    def prefix_with_hidden(
        self, inputs_embeds: Tensor, position_ids: Tensor, attention_mask: Tensor
    ) -> tuple[KVCache, Tensor]:
        """``prefix`` that also returns the final normed hidden states ``[B, Lp, hidden]``."""
        self._check_prefix(inputs_embeds, position_ids, attention_mask)
        inputs_embeds = inputs_embeds.to(self.dtype)
        cos, sin = self.model.rope(position_ids, self.dtype)
        mask = prefix_attention_mask(attention_mask)
        (hidden,), k, v = self.model.forward_segments([(PREFIX_EXPERT, inputs_embeds)], cos, sin, mask)
        return KVCache(k, v), hidden

    def denoise_step(
        self,
        kv: KVCache,
        x_t: Tensor,
        t: Tensor,
        dof_mask: Tensor,
        suffix_position_ids: Tensor,
        prefix_mask: Tensor,
        causal_actions: bool,
    ) -> Tensor:
        """Velocity ``[B, H, D]`` (fp32) at ``x_t [B, H, D]``, time ``t [B]``, from the action tokens
        only, against the cached prefix. ``suffix_position_ids [3, B, H]``, ``prefix_mask [B, Lp]``.

        With ``use_x_pred`` the network predicts the clean chunk and this returns
        ``(pred − x_t) / clamp(1 − t, 0.05)``.
        """
        self.check_suffix(kv, x_t, t, dof_mask, suffix_position_ids, prefix_mask)
        cos, sin = self.model.rope(suffix_position_ids, self.dtype)
        mask = suffix_attention_mask(prefix_mask, x_t.shape[1], causal_actions)
        return self.cached_velocity(kv, x_t, t, dof_mask, cos, sin, mask)

    def cached_velocity(
        self, kv: KVCache, x_t: Tensor, t: Tensor, dof_mask: Tensor, cos: Tensor, sin: Tensor, mask: Tensor
    ) -> Tensor:
        """``denoise_step`` with the RoPE tables and the suffix mask already built (the fused loop's body)."""
        actions = self.embed_actions(x_t, t, dof_mask)
        (hidden,), _, _ = self.model.forward_segments(
            [(ACTION_EXPERT, actions)], cos, sin, mask, past=kv, return_kv=False
        )
        return self._velocity(hidden, x_t, t)

    def full_velocity(
        self,
        prefix_embeds: Tensor,
        prefix_position_ids: Tensor,
        prefix_mask: Tensor,
        x_t: Tensor,
        t: Tensor,
        dof_mask: Tensor,
        suffix_position_ids: Tensor,
        causal_actions: bool,
    ) -> Tensor:
        """Reference velocity: re-run the whole sequence (prefix + action tokens) with the same masks."""
        self._check_prefix(prefix_embeds, prefix_position_ids, prefix_mask)
        self.check_suffix(None, x_t, t, dof_mask, suffix_position_ids, prefix_mask)
        actions = self.embed_actions(x_t, t, dof_mask)
        position_ids = torch.cat([prefix_position_ids, suffix_position_ids], dim=-1)
        cos, sin = self.model.rope(position_ids, self.dtype)
        mask = full_attention_mask(prefix_mask, x_t.shape[1], causal_actions)
        segments = [(PREFIX_EXPERT, prefix_embeds.to(self.dtype)), (ACTION_EXPERT, actions)]
        (_, hidden), _, _ = self.model.forward_segments(segments, cos, sin, mask, return_kv=False)
        return self._velocity(hidden, x_t, t)

    def _velocity(self, hidden: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        pred = self.action_preprocessor.project_back(hidden.float())
        if self.cfg.use_x_pred:
            return (pred - x_t) / torch.clamp(1.0 - t.float(), min=0.05)[:, None, None]
        return pred

    def check_suffix(
        self,
        kv: KVCache | None,
        x_t: Tensor,
        t: Tensor,
        dof_mask: Tensor,
        suffix_position_ids: Tensor,
        prefix_mask: Tensor,
    ) -> None:
        """Shape checks of the denoise inputs, each failing with a message naming the input."""
        cfg = self.cfg
        batch, horizon = x_t.shape[:2]
        if tuple(x_t.shape) != (batch, horizon, cfg.action_dim):
            raise ValueError(f"x_t / noise {tuple(x_t.shape)} != (B, H, action_dim={cfg.action_dim})")
        if dof_mask.shape != x_t.shape:
            raise ValueError(f"dof_mask {tuple(dof_mask.shape)} != x_t {tuple(x_t.shape)}")
        if tuple(t.shape) != (batch,):
            raise ValueError(f"t {tuple(t.shape)} != ({batch},)")
        if tuple(suffix_position_ids.shape) != (3, batch, horizon):
            raise ValueError(
                f"suffix_position_ids {tuple(suffix_position_ids.shape)} != (3, {batch}, {horizon})"
            )
        if prefix_mask.dim() != 2 or prefix_mask.shape[0] != batch:
            raise ValueError(f"prefix_mask {tuple(prefix_mask.shape)} != ({batch}, Lp)")
        if kv is not None:
            expected = self.kv_cache_shape(batch, prefix_mask.shape[1])
            if tuple(kv.k.shape) != expected or tuple(kv.v.shape) != expected:
                raise ValueError(
                    f"kv cache {tuple(kv.k.shape)} / {tuple(kv.v.shape)} != {expected} "
                    "(layers, B, kv_heads, Lp, head_dim) for this prefix_mask"
                )

    def _check_prefix(self, inputs_embeds: Tensor, position_ids: Tensor, attention_mask: Tensor) -> None:
        batch, length, width = inputs_embeds.shape
        if width != self.cfg.hidden_size:
            raise ValueError(f"inputs_embeds width {width} != hidden_size {self.cfg.hidden_size}")
        if tuple(position_ids.shape) != (3, batch, length):
            raise ValueError(f"position_ids {tuple(position_ids.shape)} != (3, {batch}, {length})")
        if tuple(attention_mask.shape) != (batch, length):
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} != ({batch}, {length})")


def random_init_(module: nn.Module, seed: int, std: float = 0.2) -> nn.Module:
    """Deterministic random weights (tiny checkpoints, tests): N(0, std) for every matrix and bias,
    U(0.5, 1.5) for norm weights, so that no path is trivially zero or identity. Independent of the
    global RNG and of the device."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            owner = module.get_submodule(name.rpartition(".")[0])
            if isinstance(owner, RMSNorm):
                values = torch.rand(param.shape, generator=generator) + 0.5
            else:
                values = torch.randn(param.shape, generator=generator) * std
            param.copy_(values.to(param.dtype))
    return module
