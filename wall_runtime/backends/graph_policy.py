"""A ``Policy`` over a static-shape prefix runner and a fused-denoise runner: onnxruntime, TensorRT and
the CUDA-graph backend.

Preprocessing (images, prompt, state, masks, noise) and postprocessing (un-normalisation) are the
shared :class:`~wall_runtime.model.preprocess.Preprocessor`'s; only the two model calls differ, and
they hold the weights: the policy never keeps a torch network of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wall_runtime.backends.base import Policy, policy_metadata
from wall_runtime.backends.input_check import ModelInputCheck
from wall_runtime.backends.noise import check_knots, smooth_noise
from wall_runtime.backends.static_shapes import (
    DEFAULT_TEXT_TOKENS,
    check_cameras,
    denoise_feeds,
    pad_observations,
    prefix_feeds,
)
from wall_runtime.export.onnx_export import GraphShapes
from wall_runtime.types import Observation, PolicyResult

if TYPE_CHECKING:
    from wall_runtime.model.preprocess import Preprocessor

# a graph runner: named inputs -> named outputs (numpy arrays, or device tensors the next runner takes)
Runner = Callable[[Mapping[str, Any]], dict[str, Any]]


def parse_cameras(cameras: Mapping[str, Any] | Sequence[str] | None) -> dict[str, tuple[int, int]] | None:
    """``{"face_view": (480, 640)}`` or ``["face_view=640x480", ...]`` (W×H, as cameras are quoted)
    → view -> (height, width)."""
    if cameras is None:
        return None
    if isinstance(cameras, Mapping):
        return {str(k): (int(v[0]), int(v[1])) for k, v in cameras.items()}
    if isinstance(cameras, str):  # "face_view=640x480,right_wrist_view=640x480" (serve -o cameras=...)
        cameras = [c for c in cameras.split(",") if c.strip()]
    out: dict[str, tuple[int, int]] = {}
    for spec in cameras:
        name, sep, size = str(spec).strip().partition("=")
        w, x, h = size.lower().partition("x")
        if not sep or not x or not w.isdigit() or not h.isdigit():
            raise ValueError(f"camera {spec!r}: expected NAME=WIDTHxHEIGHT, e.g. face_view=640x480")
        out[name] = (int(h), int(w))
    return out


def load_graph_preprocessor(
    checkpoint: str | Path | None, norm_key: str | None = None, num_steps: int | None = None, **config
) -> Preprocessor:
    """The checkpoint's :class:`~wall_runtime.model.preprocess.Preprocessor` (no network): what a graph
    backend keeps, and with the checkpoint path all that its export needs (see ``export.artifacts``)."""
    from wall_runtime.model.pipeline import load_preprocessor

    if checkpoint is None:
        raise ValueError("this backend needs a checkpoint directory")
    if num_steps is not None:
        config["num_steps"] = int(num_steps)
    return load_preprocessor(checkpoint, norm_key=norm_key, **config)


def common_options(options: dict[str, Any]) -> dict[str, Any]:
    """Pop the options every exported-graph backend takes (the rest are backend-specific)."""
    return {
        "cameras": parse_cameras(options.pop("cameras", None)),
        "batch": int(options.pop("batch", 1)),
        "text_tokens": int(options.pop("text_tokens", DEFAULT_TEXT_TOKENS)),
        "num_steps": options.pop("num_steps", None),
        "norm_key": options.pop("norm_key", None),
        "seed": options.pop("seed", None),
        "cache_dir": options.pop("cache_dir", None),
        "noise_knots": options.pop("noise_knots", None),
    }


class GraphPolicy(Policy):
    """Preprocess → ``run_prefix`` → ``run_denoise`` → un-normalise, in groups of the exported batch size."""

    def __init__(
        self,
        preprocessor: Preprocessor,
        shapes: GraphShapes,
        run_prefix: Runner,
        run_denoise: Runner,
        backend: str,
        seed: int | None = None,
        to_numpy: Callable[[Any], np.ndarray] = np.asarray,
        noise_knots: int | None = None,
    ) -> None:
        import torch

        from wall_runtime.model.sampler import SamplerSettings

        self.preprocessor = preprocessor
        # the settings the denoise graph was built with (the checkpoint config's, steps overridden)
        self.settings = SamplerSettings.from_config(preprocessor.cfg.net)
        # smooth initial noise for random-weight (demo) checkpoints, as TorchPolicy.noise_knots
        self.noise_knots = check_knots(noise_knots, preprocessor.cfg.net.action_horizon)
        self._rng = np.random.default_rng(seed)
        self.shapes = shapes
        self.run_prefix = run_prefix
        self.run_denoise = run_denoise
        self._to_numpy = to_numpy
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.metadata = policy_metadata(preprocessor, backend, self.settings.num_steps, shapes.cameras)
        self.input_check = ModelInputCheck(
            preprocessor,
            max_prefix_tokens=shapes.prefix_length,
            frame_sizes=dict(zip(shapes.cameras, shapes.frame_sizes, strict=True)),
            guidance=False,
        )

    def stages(self, observations: Sequence[Observation], noise: np.ndarray) -> dict[str, Any]:
        """One group of exactly ``shapes.batch`` observations through both graphs, every intermediate kept
        (for ``verify``): the prepared batch, the prefix feeds, ``k``, ``v`` and the normalised chunk."""
        batch = self.preprocessor.preprocess(observations)
        feeds = prefix_feeds(batch, self.shapes, self.preprocessor.tokenizer)
        kv = self.run_prefix(feeds)
        chunk = self.run_denoise(denoise_feeds(batch, self.shapes, noise, feeds["attention_mask"]) | kv)
        return {
            "batch": batch,
            "prefix_feeds": feeds,
            "k": kv["k"],
            "v": kv["v"],
            "actions": chunk["actions"],
        }

    def infer(
        self,
        observations: Sequence[Observation],
        noise: Sequence[np.ndarray | None] | None = None,
    ) -> list[PolicyResult]:
        if any(obs.inpaint is not None for obs in observations):
            raise ValueError(
                f"inpainting hints (RTC guidance) need gradients through the network; the {self.metadata.backend} "
                "backend runs a fused forward-only graph. Use the torch backend for guided inference"
            )
        if noise is not None and len(noise) != len(observations):
            raise ValueError(f"{len(noise)} noise arrays for {len(observations)} observations")
        pre = self.preprocessor
        check_cameras(observations, self.shapes, pre.cfg.data.resolution)
        results: list[PolicyResult] = []
        b = self.shapes.batch
        for g, group in enumerate(pad_observations(observations, self.shapes)):
            real = min(b, len(observations) - g * b)
            t0 = time.perf_counter()
            batch = pre.preprocess(group)
            given = list(noise[g * b : g * b + real]) if noise is not None else [None] * real
            if self.noise_knots is not None:
                H, D = pre.cfg.net.action_horizon, pre.cfg.net.action_dim
                given = [
                    n if n is not None else smooth_noise(self._rng, self.noise_knots, H, D) for n in given
                ]
            x0 = pre.make_noise(b, given + [None] * (b - real), self._generator).numpy()
            feeds = prefix_feeds(batch, self.shapes, pre.tokenizer)
            t1 = time.perf_counter()
            kv = self.run_prefix(feeds)
            t2 = time.perf_counter()
            out = self.run_denoise(denoise_feeds(batch, self.shapes, x0, feeds["attention_mask"]) | kv)
            chunk = np.asarray(self._to_numpy(out["actions"]), dtype=np.float32)
            t3 = time.perf_counter()
            group_results = pre.postprocess(chunk[:real], batch.norm_keys[:real])
            t4 = time.perf_counter()
            timing = {
                "preprocess": (t1 - t0) * 1e3,
                "prefix": (t2 - t1) * 1e3,  # vision tower + prefill: one graph
                "denoise": (t3 - t2) * 1e3,
                "postprocess": (t4 - t3) * 1e3,
                "total": (t4 - t0) * 1e3,
            }
            for r in group_results:
                r.timing_ms = dict(timing)
            results += group_results
        return results

    def close(self) -> None:
        """Drop the runners: the sessions / engines / graphs and the weights they hold."""
        self.run_prefix = None
        self.run_denoise = None
