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

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim
