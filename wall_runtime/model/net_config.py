"""Hyper-parameters of the WALL-OSS network, in one flat record.

The checkpoint loader builds this from ``config.json`` with the ``config.yml`` overrides applied;
the network modules read nothing else. Both generations are expressed by these fields:

- WALL-OSS-FLOW: shared attention and norms (``attention_per_expert=False``, ``norm_per_expert=False``),
  expert widths ``(2048, 2048)``, expert FFNs ``(11008, 2048)``, one ``<|propri|>`` token embedded by
  ``propri_proj`` (``state_as_text=False``), final t = 1, mixed action attention.
- Wall-OSS-0.5: mixture-of-transformers (per-expert qkv with bias, o_proj, norms, FFN, final norm),
  expert widths ``(2048, 1024)``, state written into the prompt as integers (``state_as_text=True``),
  causal action block, time shift then ``× 0.999``, masked-dof override at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ActionAttention = Literal["mixed", "causal", "bidirectional"]
DofOverride = Literal["none", "prefill", "every_step"]


@dataclass(frozen=True)
class NetConfig:
    variant: Literal["flow", "0.5"]
    # language model (expert 0 is the Qwen2.5 LM)
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, int, int]
    vocab_size: int  # rows of embed_tokens (len(tokenizer) with the added tokens)
    # experts: index 0 = VLM, 1 = action
    expert_hidden: tuple[int, int]  # dim_inputs
    expert_intermediate: tuple[int, int]
    attention_per_expert: bool  # attention_moe: per-expert qkv / o_proj
    norm_per_expert: bool  # norm_moe: per-expert input / post-attention / final norms
    # action head and flow
    action_dim: int  # D, sum of dof_config
    state_dim: int  # P, sum of agent_pos_config
    action_horizon: int  # H, action_horizon_flow
    action_hidden_size: int  # width of the action embedding and of the time embedding
    proj_with_mask: bool  # w1 / propri_proj take [x, mask] (2·D inputs) rather than x
    state_as_text: bool  # use_state_string_representation
    state_bins: int
    use_x_pred: bool
    time_shift: float  # noise_scheduler.time_shift (1.0 = none)
    time_scale: float  # final-t scale: 1.0 (FLOW) or noise_scheduler.s (0.5: 0.999)
    action_attention: ActionAttention  # FLOW default "mixed" (step 0 causal, later bidirectional)
    dof_override: DofOverride  # FLOW default "none", 0.5 "every_step"
    num_steps: int = 10  # Euler steps (the serving argument; config.json's value is not read)
    # width of propri_proj's output (zero-padded to hidden_size); None = hidden_size
    state_hidden_size: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.variant not in ("flow", "0.5"):
            problems.append(f"variant must be 'flow' or '0.5', got {self.variant!r}")
        if self.num_heads % self.num_kv_heads:
            problems.append(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if 2 * sum(self.mrope_section) != self.head_dim:
            problems.append(
                f"mrope_section {self.mrope_section} must sum to head_dim/2 = {self.head_dim // 2}"
            )
        if self.expert_hidden[0] != self.hidden_size:
            problems.append(
                f"expert 0 width {self.expert_hidden[0]} must equal hidden_size {self.hidden_size}"
            )
        shared = [
            n
            for n, per in (("attention", self.attention_per_expert), ("norms", self.norm_per_expert))
            if not per
        ]
        if shared and self.expert_hidden[1] != self.hidden_size:
            problems.append(
                f"shared {' and '.join(shared)} need the action expert width {self.expert_hidden[1]} "
                f"to equal hidden_size {self.hidden_size}"
            )
        if not 0 < self.action_hidden_size <= self.expert_hidden[1]:
            problems.append(
                f"action_hidden_size {self.action_hidden_size} must be in (0, expert width {self.expert_hidden[1]}]"
            )
        if self.action_hidden_size % 2:
            problems.append(f"action_hidden_size {self.action_hidden_size} must be even (sin/cos halves)")
        if self.state_hidden_size is not None and not 0 < self.state_hidden_size <= self.hidden_size:
            problems.append(f"state_hidden_size {self.state_hidden_size} must be in (0, hidden_size]")
        if self.action_attention not in ("mixed", "causal", "bidirectional"):
            problems.append(f"action_attention {self.action_attention!r} is not mixed|causal|bidirectional")
        if self.dof_override not in ("none", "prefill", "every_step"):
            problems.append(f"dof_override {self.dof_override!r} is not none|prefill|every_step")
        if self.num_steps < 1:
            problems.append(f"num_steps must be >= 1, got {self.num_steps}")
        if problems:
            raise ValueError("invalid NetConfig: " + "; ".join(problems))

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def action_width(self) -> int:
        """Width of the action tokens' residual stream (columns ``[:action_width]`` of the published layout)."""
        return self.expert_hidden[1]

    @property
    def propri_width(self) -> int:
        return self.state_hidden_size if self.state_hidden_size is not None else self.hidden_size

    @property
    def has_propri_proj(self) -> bool:
        return not self.state_as_text


def tiny_net_config(variant: Literal["flow", "0.5"], **overrides: object) -> NetConfig:
    """A small config of either generation with the real one's structure (tests, tiny checkpoints).

    hidden 64, 2 layers, 4 query heads, 2 kv heads, head_dim 16; 0.5 has a 32-wide action expert.
    """
    common: dict[str, object] = dict(
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        mrope_section=(2, 3, 3),
        vocab_size=512,
        action_dim=6,
        state_dim=5,
        action_horizon=4,
        proj_with_mask=True,
        state_bins=256,
        use_x_pred=False,
    )
    if variant == "flow":
        fields: dict[str, object] = dict(
            variant="flow",
            expert_hidden=(64, 64),
            expert_intermediate=(128, 64),
            attention_per_expert=False,
            norm_per_expert=False,
            action_hidden_size=64,
            state_as_text=False,
            time_shift=1.0,
            time_scale=1.0,
            action_attention="mixed",
            dof_override="none",
        )
    elif variant == "0.5":
        fields = dict(
            variant="0.5",
            expert_hidden=(64, 32),
            expert_intermediate=(128, 48),
            attention_per_expert=True,
            norm_per_expert=True,
            action_hidden_size=32,
            state_as_text=True,
            time_shift=1.0,
            time_scale=0.999,
            action_attention="causal",
            dof_override="every_step",
        )
    else:
        raise ValueError(f"unknown variant {variant!r}: expected 'flow' or '0.5'")
    return NetConfig(**{**common, **fields, **overrides})  # type: ignore[arg-type]


def small_net_config(variant: Literal["flow", "0.5"], **overrides: object) -> NetConfig:
    """A "small" config for CPU benchmarks: hidden 512, 4 layers, 8 heads / 2 kv heads of 64, chunk 32×D
    with the real action widths (D = 20 for FLOW, 26 for 0.5); 0.5's action expert is half as wide."""
    action_width = 512 if variant == "flow" else 256
    dims = 20 if variant == "flow" else 26
    fields: dict[str, object] = dict(
        hidden_size=512,
        num_layers=4,
        num_heads=8,
        num_kv_heads=2,
        head_dim=64,
        mrope_section=(8, 12, 12),
        vocab_size=4096,
        action_dim=dims,
        state_dim=dims,
        action_horizon=32,
        expert_hidden=(512, action_width),
        expert_intermediate=(1376, action_width if variant == "flow" else 704),
        action_hidden_size=action_width,
    )
    return tiny_net_config(variant, **{**fields, **overrides})
