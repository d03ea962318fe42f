"""``verify``: run a backend and the torch fp32 reference on the same inputs and noise, stage by stage.

Stages compared:

- ``prefix.k`` / ``prefix.v``: the KV cache from the prefix graph (vision tower + prefill), on the
  valid (non-padding) positions.
- ``denoise``: the fused denoise graph fed with the *reference* KV cache, so its own error shows
  apart from the prefix's.
- ``chunk``: the normalised chunk end to end.
- ``actions``: the chunk in robot units; the tolerance is scaled by the normaliser's half-range
  (un-normalisation multiplies every error by it).

fp32 must agree to 1e-4 max abs, fp16 / bf16 to cosine 0.999 (:mod:`wall_runtime.export.parity`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wall_runtime.export.parity import FP32_MAX_ABS, ParityReport, StageParity, compare_stage
from wall_runtime.types import Observation

DEFAULT_INSTRUCTION = "pick up the red block and put it in the bowl"


def as_numpy(value: Any) -> np.ndarray:
    """numpy from an ndarray, an onnxruntime ``OrtValue`` or a (CUDA, bf16) torch tensor."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    if hasattr(value, "numpy"):
        return np.asarray(value.numpy())
    return np.asarray(value)


def synthetic_observation(policy, seed: int = 0, instruction: str = DEFAULT_INSTRUCTION) -> Observation:
    """A reproducible observation in the shapes the policy was built for (random frames and state)."""
    rng = np.random.default_rng(seed)
    shapes = policy.shapes
    images = {
        name: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for name, (h, w) in zip(shapes.cameras, shapes.frame_sizes, strict=True)
    }
    state = rng.uniform(-1.0, 1.0, policy.metadata.state_dim).astype(np.float32)
    return Observation(stamp=0.0, images=images, state=state, instruction=instruction)


def reference_stages(reference, observations, noise: np.ndarray) -> dict[str, np.ndarray]:
    """The torch pipeline's stage outputs on the same observations and noise."""
    batch = reference.preprocess(observations)
    with torch.no_grad():
        features = reference.encode_images(batch)
        embeds = reference.prefix_embeds(batch, features)
        kv = reference.prefix(batch, embeds)
        x0 = torch.from_numpy(noise).to(reference.device)
        chunk = reference.denoise(batch, kv, x0)
    return {"batch": batch, "k": as_numpy(kv.k), "v": as_numpy(kv.v), "actions": as_numpy(chunk)}


def _actions_stage(stage, ref_chunk, cand_chunk, policy, keys, precision) -> StageParity:
    normalizer = policy.preprocessor.normalizers.action
    ref = np.stack([normalizer.unnormalize(c, k) for c, k in zip(ref_chunk, keys, strict=True)])
    cand = np.stack([normalizer.unnormalize(c, k) for c, k in zip(cand_chunk, keys, strict=True)])
    half_range = max(float(np.max(np.abs(normalizer.delta(k)))) / 2 for k in keys)
    result = compare_stage(stage, ref, cand, precision)
    if precision == "fp32":
        tol = FP32_MAX_ABS * max(1.0, half_range)
        result = replace(
            result, criterion=f"max_abs <= {tol:.3g} (1e-4 × half-range)", passed=result.max_abs <= tol
        )
    return result


def verify_policy(
    policy, reference, precision: str, seed: int = 0, instruction: str = DEFAULT_INSTRUCTION
) -> ParityReport:
    """Compare ``policy`` (a :class:`GraphPolicy`) with ``reference`` (an fp32 ``WallOSS``)."""
    shapes = policy.shapes
    observations = [synthetic_observation(policy, seed, instruction)] * shapes.batch
    rng = np.random.default_rng(seed + 1)
    noise = rng.standard_normal((shapes.batch, shapes.horizon, shapes.action_dim)).astype(np.float32)

    cand = policy.stages(observations, noise)
    ref = reference_stages(reference, observations, noise)
    have = ref["batch"].prefix_length
    pad = shapes.prefix_length - have

    stages = []
    for name in ("k", "v"):
        got = as_numpy(cand[name])[..., pad:, :]
        stages.append(compare_stage(f"prefix.{name}", ref[name], got, precision))

    # denoise alone: the backend's fused graph on the reference KV cache
    kv_padded = {}
    for name in ("k", "v"):
        full = np.zeros(shapes.kv_shape(), np.float32)
        full[..., pad:, :] = ref[name]
        kv_padded[name] = full
    from wall_runtime.backends.static_shapes import denoise_feeds

    feeds = denoise_feeds(cand["batch"], shapes, noise, cand["prefix_feeds"]["attention_mask"])
    isolated = as_numpy(policy.run_denoise(feeds | kv_padded)["actions"])
    stages.append(compare_stage("denoise", ref["actions"], isolated, precision))

    chunk = as_numpy(cand["actions"])
    stages.append(compare_stage("chunk", ref["actions"], chunk, precision))
    stages.append(_actions_stage("actions", ref["actions"], chunk, policy, ref["batch"].norm_keys, precision))
    return ParityReport(
        backend=policy.metadata.backend,
        precision=precision,
        checkpoint="",
        steps=policy.metadata.num_steps,
        stages=stages,
    )


def verify_checkpoint(
    checkpoint: str | Path,
    backend: str,
    precision: str | None = None,
    seed: int = 0,
    reference_device: str | None = None,
    **options: Any,
) -> ParityReport:
    """Build ``backend`` for ``checkpoint`` (through the cache) and verify it against torch fp32."""
    from wall_runtime.backends import load_policy
    from wall_runtime.model.pipeline import WallOSS

    if backend not in ("onnxruntime", "tensorrt"):
        raise ValueError(
            f"verify compares an exported backend (onnxruntime or tensorrt) with torch, not {backend!r}"
        )
    if backend == "tensorrt":
        precision = precision or "bf16"
        options["precision"] = precision
    else:
        # the onnxruntime graphs are fp32 (its TensorRT provider too: fp16 is not enabled)
        precision = precision or "fp32"
    policy = load_policy(checkpoint, backend, seed=seed, **options)
    device = reference_device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = {"num_steps": options["num_steps"]} if options.get("num_steps") is not None else {}
    reference = WallOSS.from_checkpoint(
        checkpoint, device=device, dtype=torch.float32, norm_key=options.get("norm_key"), **config
    )
    report = verify_policy(policy, reference, precision, seed=seed)
    report.checkpoint = str(checkpoint)
    policy.close()
    return report
