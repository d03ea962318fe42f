"""The flow sampler: N Euler steps from noise (t = 0) to actions, in normalised action space.

Three strategies give the same numbers (tests hold them to 1e-5):

- ``denoise``: the fused loop against a prefix KV cache: RoPE tables and masks built once, every step
  runs only the ``H`` action tokens. This is the function the export wraps (``DenoiseModule``).
- ``denoise_stepwise``: a Python loop calling the public ``WallOSSNet.denoise_step`` once per step.
- ``denoise_full_recompute``: re-runs the whole sequence (prefix + action tokens) at every step with the
  same masks; the reference for the cache, and the slow baseline of the benchmark.

Per generation (spec §10): FLOW uses ``linspace(0, 1, N+1)`` and the "mixed" action attention (step 0
causal among action tokens, later steps bidirectional) with no masked-dof override; 0.5 shifts the grid
(``ts·t / (1 + (ts − 1)·t)``), scales it by ``s`` (final t = 0.999), keeps the action block causal and
overrides the velocity of masked dofs at every step with ``padding_action − noise``.

Optional RTC inpainting guidance (Black et al. 2025, arXiv 2506.07339) pulls the chunk toward target
actions ``Y`` with soft per-step weights ``W`` (used to continue the chunk being executed).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from wall_runtime.model.decoder import KVCache, WallOSSNet, suffix_attention_mask
from wall_runtime.model.net_config import ActionAttention, DofOverride, NetConfig

# velocity(x_t [B, H, D], t [B], step index) -> v [B, H, D]
VelocityFn = Callable[[Tensor, Tensor, int], Tensor]


@dataclass(frozen=True)
class SamplerSettings:
    """How the N Euler steps run. ``from_config`` gives each generation's reference behaviour."""

    num_steps: int
    time_shift: float = 1.0
    time_scale: float = 1.0
    action_attention: ActionAttention = "causal"
    dof_override: DofOverride = "none"

    @classmethod
    def from_config(cls, cfg: NetConfig, **overrides: object) -> SamplerSettings:
        base = cls(
            num_steps=cfg.num_steps,
            time_shift=cfg.time_shift,
            time_scale=cfg.time_scale,
            action_attention=cfg.action_attention,
            dof_override=cfg.dof_override,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.time_shift <= 0:
            raise ValueError(f"time_shift must be > 0, got {self.time_shift}")
        if not 0 < self.time_scale <= 1:
            raise ValueError(f"time_scale must be in (0, 1], got {self.time_scale}")
        if self.action_attention not in ("mixed", "causal", "bidirectional"):
            raise ValueError(f"action_attention {self.action_attention!r} is not mixed|causal|bidirectional")
        if self.dof_override not in ("none", "prefill", "every_step"):
            raise ValueError(f"dof_override {self.dof_override!r} is not none|prefill|every_step")

    def times(self, device: torch.device | None = None) -> Tensor:
        return inference_times(self.num_steps, self.time_shift, self.time_scale, device)

    def causal_schedule(self) -> list[bool]:
        return action_attention_schedule(self.action_attention, self.num_steps)


@dataclass
class RTCGuidance:
    """Training-free inpainting guidance (RTC, ΠGDM-style).

    ``target [B, H, D]``: the actions to continue, normalised like the model's output.
    ``weights [B, H]`` (or ``[B, H, D]``): soft mask, 1 = keep ``target`` there, 0 = free.
    ``max_guidance``: the clip β on the guidance weight.

    Guidance differentiates through the network, so the sampler must run under ``torch.no_grad()``
    rather than ``torch.inference_mode()`` (inference tensors cannot enter autograd).
    """

    target: Tensor
    weights: Tensor
    max_guidance: float = 5.0

    def check(self, noise: Tensor) -> None:
        if self.target.shape != noise.shape:
            raise ValueError(f"guidance target {tuple(self.target.shape)} != noise {tuple(noise.shape)}")
        if self.weights.shape not in (noise.shape, noise.shape[:2]):
            raise ValueError(f"guidance weights {tuple(self.weights.shape)} must be [B, H] or [B, H, D]")
        if not torch.isfinite(self.target).all() or not torch.isfinite(self.weights).all():
            raise ValueError("guidance target and weights must be finite")
        if self.max_guidance < 0:
            raise ValueError(f"max_guidance must be >= 0, got {self.max_guidance}")


def inference_times(
    num_steps: int, time_shift: float = 1.0, time_scale: float = 1.0, device: torch.device | None = None
) -> Tensor:
    """The N+1 time points ``[N+1]`` fp32: ``linspace(0, 1)``, then the shift, then ``× time_scale``."""
    times = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float32, device=device)
    if time_shift != 1.0:
        times = (time_shift * times) / (1 + (time_shift - 1) * times)
    return times * time_scale


def action_attention_schedule(action_attention: ActionAttention, num_steps: int) -> list[bool]:
    """Per step, whether action tokens attend causally among themselves ("mixed": only step 0)."""
    if action_attention == "causal":
        return [True] * num_steps
    if action_attention == "bidirectional":
        return [False] * num_steps
    if action_attention == "mixed":
        return [True] + [False] * (num_steps - 1)
    raise ValueError(f"action_attention {action_attention!r} is not mixed|causal|bidirectional")


def rtc_guidance_weight(t: Tensor, max_guidance: float) -> Tensor:
    """``min(β, (1 − t) / (t · r²))`` with ``r² = (1 − t)² / (t² + (1 − t)²)``, written so t = 0 and
    t = 1 give β instead of 0/0."""
    t = t.float()
    weight = (t * t + (1 - t) * (1 - t)) / (t * (1 - t))
    return torch.clamp(weight, max=max_guidance)


def _guided_velocity(velocity: VelocityFn, x: Tensor, t: Tensor, step: int, guidance: RTCGuidance) -> Tensor:
    """RTC: ``v + w(t) · Jᵀ (W ⊙ (Y − x̂1))`` with ``x̂1 = x + (1 − t) v`` and J = ∂x̂1/∂x (one VJP)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "RTC guidance needs a vector-Jacobian product: run the sampler under torch.no_grad(), "
            "not torch.inference_mode(), and build the prefix cache outside inference mode too"
        )
    weights = guidance.weights.float()
    if weights.dim() == 2:
        weights = weights[..., None]
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        v = velocity(x_in, t, step)
        x1 = x_in + (1 - t.float())[:, None, None] * v
        error = weights * (guidance.target.float() - x1)
        (correction,) = torch.autograd.grad(x1, x_in, grad_outputs=error.detach())
    return v.detach() + rtc_guidance_weight(t, guidance.max_guidance)[:, None, None] * correction


def _outside_inference_mode(kv: KVCache) -> KVCache:
    # a cache built under inference_mode cannot be saved for backward; a clone made outside can
    if kv.k.is_inference() or kv.v.is_inference():
        return KVCache(kv.k.clone(), kv.v.clone())
    return kv


def integrate(
    velocity: VelocityFn,
    noise: Tensor,
    dof_mask: Tensor,
    settings: SamplerSettings,
    padding_action: Tensor | None = None,
    guidance: RTCGuidance | None = None,
) -> Tensor:
    """The Euler loop shared by every strategy: ``x ← x + (t[k+1] − t[k]) · v(x, t[k])``.

    Masked-dof override (when ``settings.dof_override`` is not "none" and ``padding_action`` —
    the normalised value of a raw 0, ``[B, D]`` or ``[B, H, D]`` — is given):
    ``v ← (padding_action − noise) · (1 − dof_mask) + v · dof_mask``, at step 0 only ("prefill") or at
    every step. It is applied unconditionally: with an all-ones mask it is the identity, so no
    data-dependent branch is needed.
    """
    if noise.shape != dof_mask.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and dof_mask {tuple(dof_mask.shape)} differ in shape")
    if guidance is not None:
        guidance.check(noise)
    x = noise.float()
    dof_mask = dof_mask.float()
    times = settings.times(x.device)
    batch = x.shape[0]
    padding_velocity = None
    if padding_action is not None and tuple(padding_action.shape) not in (
        tuple(noise.shape),
        (noise.shape[0], noise.shape[2]),
    ):
        raise ValueError(f"padding_action {tuple(padding_action.shape)} must be [B, D] or [B, H, D]")
    if padding_action is not None and settings.dof_override != "none":
        pad = padding_action.float()
        if pad.dim() == 2:
            pad = pad[:, None, :]
        padding_velocity = (pad - x) * (1 - dof_mask)
    for step in range(settings.num_steps):
        t = times[step].expand(batch)
        if guidance is None:
            v = velocity(x, t, step)
        else:
            v = _guided_velocity(velocity, x, t, step, guidance)
        if padding_velocity is not None and (settings.dof_override == "every_step" or step == 0):
            v = padding_velocity + v * dof_mask
        x = x + (times[step + 1] - times[step]) * v
    return x


def denoise(
    net: WallOSSNet,
    kv: KVCache,
    noise: Tensor,
    dof_mask: Tensor,
    suffix_position_ids: Tensor,
    prefix_mask: Tensor,
    settings: SamplerSettings | None = None,
    padding_action: Tensor | None = None,
    guidance: RTCGuidance | None = None,
) -> Tensor:
    """The whole flow loop against a prefix cache, fused: ``noise [B, H, D]`` → final chunk ``[B, H, D]``.

    ``settings`` defaults to the generation's reference behaviour (``SamplerSettings.from_config``).
    """
    settings = settings or SamplerSettings.from_config(net.cfg)
    net.check_suffix(kv, noise, noise.new_zeros(noise.shape[0]), dof_mask, suffix_position_ids, prefix_mask)
    if guidance is not None:
        kv = _outside_inference_mode(kv)
    horizon = noise.shape[1]
    cos, sin = net.model.rope(suffix_position_ids, net.dtype)
    schedule = settings.causal_schedule()
    masks = {causal: suffix_attention_mask(prefix_mask, horizon, causal) for causal in set(schedule)}

    def velocity(x: Tensor, t: Tensor, step: int) -> Tensor:
        return net.cached_velocity(kv, x, t, dof_mask, cos, sin, masks[schedule[step]])

    return integrate(velocity, noise, dof_mask, settings, padding_action, guidance)


def denoise_stepwise(
    net: WallOSSNet,
    kv: KVCache,
    noise: Tensor,
    dof_mask: Tensor,
    suffix_position_ids: Tensor,
    prefix_mask: Tensor,
    settings: SamplerSettings | None = None,
    padding_action: Tensor | None = None,
    guidance: RTCGuidance | None = None,
) -> Tensor:
    """The same loop calling the public ``net.denoise_step`` once per step (masks rebuilt each time)."""
    settings = settings or SamplerSettings.from_config(net.cfg)
    if guidance is not None:
        kv = _outside_inference_mode(kv)
    schedule = settings.causal_schedule()

    def velocity(x: Tensor, t: Tensor, step: int) -> Tensor:
        return net.denoise_step(kv, x, t, dof_mask, suffix_position_ids, prefix_mask, schedule[step])

    return integrate(velocity, noise, dof_mask, settings, padding_action, guidance)


def denoise_full_recompute(
    net: WallOSSNet,
    prefix_embeds: Tensor,
    prefix_position_ids: Tensor,
    prefix_mask: Tensor,
    noise: Tensor,
    dof_mask: Tensor,
    suffix_position_ids: Tensor,
    settings: SamplerSettings | None = None,
    padding_action: Tensor | None = None,
    guidance: RTCGuidance | None = None,
) -> Tensor:
    """Reference: no cache; every step re-runs prefix + action tokens with the same masks."""
    settings = settings or SamplerSettings.from_config(net.cfg)
    if guidance is not None and prefix_embeds.is_inference():
        prefix_embeds = prefix_embeds.clone()
    schedule = settings.causal_schedule()

    def velocity(x: Tensor, t: Tensor, step: int) -> Tensor:
        return net.full_velocity(
            prefix_embeds,
            prefix_position_ids,
            prefix_mask,
            x,
            t,
            dof_mask,
            suffix_position_ids,
            schedule[step],
        )

    return integrate(velocity, noise, dof_mask, settings, padding_action, guidance)


# ---------------------------------------------------------------------------------------------------------
# export-shaped wrappers: plain tensors in and out, settings fixed at construction


class PrefixModule(nn.Module):
    """``(inputs_embeds, position_ids, attention_mask) -> (k, v)``."""

    def __init__(self, net: WallOSSNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, inputs_embeds: Tensor, position_ids: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        kv = self.net.prefix(inputs_embeds, position_ids, attention_mask)
        return kv.k, kv.v


class DenoiseModule(nn.Module):
    """``(k, v, noise, dof_mask, suffix_position_ids, prefix_mask, padding_action) -> actions``: the
    whole fused loop as one graph. ``padding_action [B, D]`` is ignored when the settings have no
    masked-dof override."""

    def __init__(self, net: WallOSSNet, settings: SamplerSettings | None = None) -> None:
        super().__init__()
        self.net = net
        self.settings = settings or SamplerSettings.from_config(net.cfg)

    def forward(
        self,
        k: Tensor,
        v: Tensor,
        noise: Tensor,
        dof_mask: Tensor,
        suffix_position_ids: Tensor,
        prefix_mask: Tensor,
        padding_action: Tensor,
    ) -> Tensor:
        return denoise(
            self.net,
            KVCache(k, v),
            noise,
            dof_mask,
            suffix_position_ids,
            prefix_mask,
            self.settings,
            padding_action,
        )


# ---------------------------------------------------------------------------------------------------------
# timing (for benchmarks; tests never assert on speed)


@dataclass(frozen=True)
class TimingStats:
    repeats: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    min_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, float]:
        return {
            "repeats": self.repeats,
            "mean_ms": self.mean_ms,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
        }


def time_callable(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> TimingStats:
    """Wall-clock ``fn()`` ``repeats`` times after ``warmup`` calls, under ``torch.no_grad``.

    Synchronises CUDA around each call when a GPU is in use, so the figures are end-to-end.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sync = (
        torch.cuda.synchronize
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else (lambda: None)
    )
    samples = []
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            samples.append((time.perf_counter() - start) * 1e3)
    ordered = sorted(samples)
    p95_index = min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))
    return TimingStats(
        repeats=repeats,
        mean_ms=statistics.fmean(samples),
        p50_ms=statistics.median(samples),
        p95_ms=ordered[p95_index],
        min_ms=ordered[0],
        max_ms=ordered[-1],
    )


def time_denoise_strategies(
    net: WallOSSNet,
    prefix_embeds: Tensor,
    prefix_position_ids: Tensor,
    prefix_mask: Tensor,
    noise: Tensor,
    dof_mask: Tensor,
    suffix_position_ids: Tensor,
    settings: SamplerSettings | None = None,
    padding_action: Tensor | None = None,
    repeats: int = 5,
    warmup: int = 1,
) -> dict[str, TimingStats]:
    """Time ``prefix``, the fused cached loop, the step-wise loop and full recomputation on one input."""
    settings = settings or SamplerSettings.from_config(net.cfg)
    with torch.no_grad():
        kv = net.prefix(prefix_embeds, prefix_position_ids, prefix_mask)
    args = (noise, dof_mask, suffix_position_ids, prefix_mask, settings, padding_action)
    return {
        "prefix": time_callable(
            lambda: net.prefix(prefix_embeds, prefix_position_ids, prefix_mask), repeats, warmup
        ),
        "denoise_fused": time_callable(lambda: denoise(net, kv, *args), repeats, warmup),
        "denoise_stepwise": time_callable(lambda: denoise_stepwise(net, kv, *args), repeats, warmup),
        "prefix_plus_denoise": time_callable(
            lambda: denoise(net, net.prefix(prefix_embeds, prefix_position_ids, prefix_mask), *args),
            repeats,
            warmup,
        ),
        "full_recompute": time_callable(
            lambda: denoise_full_recompute(
                net,
                prefix_embeds,
                prefix_position_ids,
                prefix_mask,
                noise,
                dof_mask,
                suffix_position_ids,
                settings,
                padding_action,
            ),
            repeats,
            warmup,
        ),
    }
