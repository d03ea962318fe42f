"""A loaded WALL-OSS checkpoint run eagerly in PyTorch: observations in, action chunks out.

Stages (each timed):

1. ``preprocess``: the shared :class:`~wall_runtime.model.preprocess.Preprocessor` (images, prompt,
   state, masks, noise); no network involved.
2. ``vision``: the vision tower over every image of the batch.
3. ``prefix``: token embeddings with image features and the ``<|propri|>`` embedding scattered in, then
   one pass of the prompt that leaves the KV cache.
4. ``denoise``: the N Euler steps over the action tokens against that cache
   (:func:`wall_runtime.model.sampler.denoise`).
5. ``postprocess``: un-normalisation to robot units (the preprocessor again).

The network itself is :class:`wall_runtime.model.decoder.WallOSSNet` (vision tower attached); the
loop is :mod:`wall_runtime.model.sampler`; fast paths (a CUDA graph for the denoise loop, exported
graphs for both stages) are applied from outside, in :mod:`wall_runtime.backends`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from wall_runtime.model.checkpoint import (
    CheckpointError,
    CheckpointWeights,
    embedding_rows,
    materialize,
    open_checkpoint_weights,
    resolve_vision_mlp_width,
)
from wall_runtime.model.config import WallConfig, load_config
from wall_runtime.model.decoder import KVCache, WallOSSNet
from wall_runtime.model.normalizer import Normalizers, load_normalizers
from wall_runtime.model.preprocess import ObservationError, PreparedBatch, Preprocessor
from wall_runtime.model.sampler import RTCGuidance, SamplerSettings, denoise
from wall_runtime.model.tokenizer import WallTokenizer
from wall_runtime.model.vision import VisionTower
from wall_runtime.types import Observation, PolicyResult

__all__ = [
    "ObservationError",
    "PreparedBatch",
    "Preprocessor",
    "WallOSS",
    "empty_network",
    "load_preprocessor",
]

log = logging.getLogger(__name__)

# the denoise stage: (batch, kv, noise, guidance) -> normalised chunk [B, H, D] on the model's device
DenoiseStage = Callable[[PreparedBatch, KVCache, torch.Tensor, "RTCGuidance | None"], torch.Tensor]


class _SkipInit(TorchFunctionMode):
    """Skips the in-place random initialisers the modules' constructors call: on the meta device
    they would do nothing anyway, but their meta kernels import torch's compiler stack on first use
    (seconds and ~80 MB); every parameter is overwritten from the checkpoint."""

    SKIPPED = frozenset({"normal_", "uniform_", "kaiming_uniform_", "zero_", "zeros_", "ones_", "fill_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in self.SKIPPED:
            target = args[0] if args else (kwargs or {}).get("tensor")
            if isinstance(target, torch.Tensor):
                return target
        return func(*args, **(kwargs or {}))


def empty_network(cfg: WallConfig, dtype: torch.dtype = torch.float32) -> WallOSSNet:
    """The network (vision tower attached) on the meta device, in its run dtypes: shapes and dtypes
    without memory, for :func:`materialize` to fill or for size planning."""
    with torch.device("meta"), _SkipInit():
        net = WallOSSNet(cfg.net)
        net.visual = VisionTower(cfg.vision_config())
    if dtype != torch.float32:
        net.to_inference_dtype(dtype)
    return net


def _open_checkpoint(
    root: Path, norm_key: str | None, **config_options
) -> tuple[Preprocessor, CheckpointWeights]:
    """Read and check everything but the weights' values: config (sized by the weights' shapes),
    tokenizer, normalisers and the weight files' headers. A bad file fails here, before any memory."""
    tokenizer = WallTokenizer.from_checkpoint(root)
    weights = open_checkpoint_weights(root)
    shapes = weights.shapes
    rows = embedding_rows(shapes)
    if rows < len(tokenizer):
        raise CheckpointError(
            f"model.embed_tokens has {rows} rows but the tokenizer has {len(tokenizer)} tokens "
            "(with <|propri|> and <|action|>): the checkpoint and its tokenizer do not belong together"
        )
    # The reference resizes to len(tokenizer), then to the checkpoint's row count if it differs.
    cfg = load_config(root, vocab_size=rows, **config_options)
    cfg = resolve_vision_mlp_width(cfg, shapes)
    normalizers: Normalizers = load_normalizers(
        root,
        cfg.net.action_dim,
        cfg.net.state_dim,
        norm_key,
        action_layout=cfg.data.dof_config,
        state_layout=cfg.data.agent_pos_config,
    )
    return Preprocessor(cfg, tokenizer, normalizers, norm_key), weights


def load_preprocessor(
    checkpoint_dir: str | Path, norm_key: str | None = None, **config_options
) -> Preprocessor:
    """A checkpoint's :class:`Preprocessor` without its network: what a backend whose weights live in
    exported graphs or engines keeps. Checks the checkpoint as :meth:`WallOSS.from_checkpoint` does."""
    return _open_checkpoint(Path(checkpoint_dir), norm_key, **config_options)[0]


def load_network(
    checkpoint_dir: str | Path,
    cfg: WallConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> WallOSSNet:
    """The network of ``checkpoint_dir`` for a ``cfg`` already read from it (a :class:`Preprocessor`'s):
    what an export builds from when its graphs are not cached yet."""
    net = empty_network(cfg, dtype)
    materialize(net, open_checkpoint_weights(checkpoint_dir), cfg, torch.device(device))
    return net.eval()


def _timer(device: torch.device):
    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


class WallOSS:
    """A loaded checkpoint: its :class:`Preprocessor` and its network (vision tower attached), with the
    eager stages ``encode_images`` → ``prefix_embeds`` → ``prefix`` → ``denoise`` and ``infer`` over them.

    The preprocessor's names (``cfg``, ``tokenizer``, ``normalizers``, ``norm_key``, ``preprocess``,
    ...) are readable here too: this is the torch reference every other backend is held to.
    """

    def __init__(
        self,
        preprocessor: Preprocessor,
        net: WallOSSNet,
        *,
        device: torch.device | str = "cpu",
        settings: SamplerSettings | None = None,
    ):
        self.preprocessor = preprocessor
        self.net = net
        self.device = torch.device(device)
        self.settings = settings or SamplerSettings.from_config(preprocessor.cfg.net)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint_dir: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        norm_key: str | None = None,
        **config_options,
    ) -> WallOSS:
        """Load a checkpoint directory in the published layout.

        ``dtype`` defaults to fp32 on CPU and bf16 on CUDA (the action head and the language model's
        norms stay fp32). ``config_options`` go to :func:`build_config` (``num_steps``,
        ``action_attention``, ``dof_override``, ``variant``).
        """
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        preprocessor, weights = _open_checkpoint(Path(checkpoint_dir), norm_key, **config_options)
        net = empty_network(preprocessor.cfg, dtype)
        materialize(net, weights, preprocessor.cfg, device)  # straight from the mapped files, cast on the way
        net.eval()
        return cls(preprocessor, net, device=device)

    # ------------------------------------------------------------------ the preprocessor's side

    @property
    def cfg(self) -> WallConfig:
        return self.preprocessor.cfg

    @property
    def tokenizer(self) -> WallTokenizer:
        return self.preprocessor.tokenizer

    @property
    def normalizers(self) -> Normalizers:
        return self.preprocessor.normalizers

    @property
    def norm_key(self) -> str:
        return self.preprocessor.norm_key

    @property
    def vision_cfg(self):
        return self.preprocessor.vision_cfg

    def preprocess(self, observations: Sequence[Observation]) -> PreparedBatch:
        return self.preprocessor.preprocess(observations)

    def make_noise(
        self,
        batch_size: int,
        noise: Sequence[np.ndarray | None] | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """:meth:`Preprocessor.make_noise` on this model's device."""
        return self.preprocessor.make_noise(batch_size, noise, generator).to(self.device)

    def guidance(self, observations: Sequence[Observation], keys: Sequence[str]) -> RTCGuidance | None:
        return self.preprocessor.guidance(observations, keys, self.device)

    # ------------------------------------------------------------------ the network's stages

    @torch.no_grad()
    def encode_images(self, batch: PreparedBatch) -> torch.Tensor:
        visual = self.net.visual
        pixel_values = torch.from_numpy(batch.pixel_values).to(
            self.device, visual.patch_embed.proj.weight.dtype
        )
        return visual(pixel_values, torch.from_numpy(batch.grid_thw))

    @torch.no_grad()
    def prefix_embeds(self, batch: PreparedBatch, image_features: torch.Tensor) -> torch.Tensor:
        """Token embeddings of the prefix with image features and (FLOW) the state embedding in place."""
        ids = torch.from_numpy(batch.input_ids[:, : batch.prefix_length]).to(self.device)
        embeds = self.net.embed_tokens(ids)
        image_slots = ids == self.tokenizer.image_pad_id
        if int(image_slots.sum()) != image_features.shape[0]:
            raise RuntimeError(
                f"{int(image_slots.sum())} image tokens in the prompts but {image_features.shape[0]} image features"
            )
        embeds = embeds.masked_scatter(image_slots[..., None], image_features.to(embeds.dtype))
        if not self.cfg.net.state_as_text:
            state = torch.from_numpy(batch.state).to(self.device)
            state_mask = torch.from_numpy(batch.state_mask).to(self.device)
            propri = self.net.embed_state(state, state_mask)  # [B, 1, hidden]
            slots = ids == self.tokenizer.propri_id
            if not bool((slots.sum(dim=1) == 1).all()):
                raise RuntimeError("every prompt must hold exactly one <|propri|> token")
            embeds = embeds.masked_scatter(slots[..., None], propri.to(embeds.dtype))
        return embeds

    @torch.no_grad()
    def prefix(self, batch: PreparedBatch, embeds: torch.Tensor):
        Lp = batch.prefix_length
        position_ids = torch.from_numpy(batch.position_ids[:, :, :Lp]).to(self.device)
        mask = torch.from_numpy(batch.attention_mask[:, :Lp]).to(self.device)
        return self.net.prefix(embeds, position_ids, mask)

    def denoise(self, batch: PreparedBatch, kv, noise: torch.Tensor, guidance: RTCGuidance | None = None):
        H = self.cfg.net.action_horizon
        Lp = batch.prefix_length
        dof_mask = torch.from_numpy(batch.dof_mask).to(self.device)[:, None, :].expand(-1, H, -1).contiguous()
        suffix_positions = torch.from_numpy(batch.position_ids[:, :, Lp:]).to(self.device)
        prefix_mask = torch.from_numpy(batch.attention_mask[:, :Lp]).to(self.device)
        padding = torch.from_numpy(batch.padding_action).to(self.device)
        if guidance is None:
            with torch.no_grad():
                return denoise(
                    self.net, kv, noise, dof_mask, suffix_positions, prefix_mask, self.settings, padding
                )
        return denoise(
            self.net, kv, noise, dof_mask, suffix_positions, prefix_mask, self.settings, padding, guidance
        )

    # ------------------------------------------------------------------ all stages

    def infer(
        self,
        observations: Sequence[Observation],
        noise: Sequence[np.ndarray | None] | None = None,
        generator: torch.Generator | None = None,
        denoise: DenoiseStage | None = None,
    ) -> list[PolicyResult]:
        """Every stage, timed. ``denoise`` replaces the eager loop (a fast path applied from outside,
        e.g. :class:`wall_runtime.backends.cuda_graph.CudaGraphDenoise`)."""
        run_denoise = denoise or self.denoise
        now = _timer(self.device)
        t0 = now()
        batch = self.preprocess(observations)
        x0 = self.make_noise(len(observations), noise, generator)
        guidance = self.guidance(observations, batch.norm_keys)
        t1 = now()
        features = self.encode_images(batch)
        t2 = now()
        embeds = self.prefix_embeds(batch, features)
        kv = self.prefix(batch, embeds)
        t3 = now()
        chunk = run_denoise(batch, kv, x0, guidance)
        t4 = now()
        results = self.preprocessor.postprocess(chunk.detach().float().cpu().numpy(), batch.norm_keys)
        t5 = now()
        timing = {
            "preprocess": (t1 - t0) * 1e3,
            "vision": (t2 - t1) * 1e3,
            "prefix": (t3 - t2) * 1e3,
            "denoise": (t4 - t3) * 1e3,
            "postprocess": (t5 - t4) * 1e3,
            "total": (t5 - t0) * 1e3,
        }
        for r in results:
            r.timing_ms = dict(timing)
        return results
