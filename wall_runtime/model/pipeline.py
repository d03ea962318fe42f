"""End-to-end WALL-OSS inference: observations in, action chunks out.

Stages (each timed):

1. ``preprocess``: images (Pillow resizes, patchify), state normalisation (and, for 0.5, its
   discretisation into the prompt), prompt tokens with image pads expanded, left padding across
   the batch, mRoPE position ids, masks and the normalised padding action.
2. ``vision``: the vision tower over every image of the batch.
3. ``prefix``: token embeddings with image features and the ``<|propri|>`` embedding scattered in, then
   one pass of the prompt that leaves the KV cache.
4. ``denoise``: the N Euler steps over the action tokens against that cache.
5. ``postprocess``: un-normalisation to robot units.

Batches of observations from different robots (different norm keys, cameras, masks) are fine: each
row is prepared on its own and rows are left-padded to one prefix length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from wall_runtime.model.checkpoint import (
    CheckpointError,
    embedding_rows,
    materialize,
    open_checkpoint_weights,
    resolve_vision_mlp_width,
)
from wall_runtime.model.config import WallConfig, load_config
from wall_runtime.model.decoder import WallOSSNet
from wall_runtime.model.image_processing import preprocess_images
from wall_runtime.model.normalizer import Normalizers, load_normalizers
from wall_runtime.model.prompt import encode_prompt, pad_left, state_text
from wall_runtime.model.rope_index import get_rope_index
from wall_runtime.model.sampler import RTCGuidance, SamplerSettings, denoise
from wall_runtime.model.tokenizer import PROPRI_TOKEN, WallTokenizer
from wall_runtime.model.vision import VisionTower
from wall_runtime.types import Observation, PolicyResult

log = logging.getLogger(__name__)


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


class ObservationError(ValueError):
    """An observation the model cannot take (unknown camera, wrong state width, NaN, bad mask)."""


@dataclass
class PreparedBatch:
    """Model inputs for a batch, built by :meth:`WallOSS.preprocess` (numpy, on the host)."""

    input_ids: np.ndarray  # int64 [B, L]
    attention_mask: np.ndarray  # int64 [B, L], 0 = left padding
    position_ids: np.ndarray  # int64 [3, B, L]
    prefix_length: int  # L − H: every row's action tokens are its last H tokens
    pixel_values: np.ndarray  # float32 [ΣN, 1176]
    grid_thw: np.ndarray  # int64 [images, 3]
    state: np.ndarray  # float32 [B, P] normalised, zero-filled where masked
    state_mask: np.ndarray  # float32 [B, P]
    dof_mask: np.ndarray  # float32 [B, D]
    padding_action: np.ndarray  # float32 [B, D], normalize(0) per row
    norm_keys: list[str]
    prompts: list[str] = field(default_factory=list)


def _timer(device: torch.device):
    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


class WallOSS:
    """A loaded checkpoint: configuration, tokenizer, normalisers and network (vision tower attached)."""

    def __init__(
        self,
        cfg: WallConfig,
        tokenizer: WallTokenizer,
        normalizers: Normalizers,
        net: WallOSSNet,
        *,
        norm_key: str | None = None,
        device: torch.device | str = "cpu",
        settings: SamplerSettings | None = None,
    ):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.normalizers = normalizers
        self.net = net
        self.device = torch.device(device)
        self.norm_key = normalizers.resolve_key(norm_key)
        self.settings = settings or SamplerSettings.from_config(cfg.net)
        self.vision_cfg = cfg.vision_config()
        self._warned_missing_views: set[tuple[str, ...]] = set()

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
        root = Path(checkpoint_dir)
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        # Everything is read and checked before the network gets memory: a bad file fails here.
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
        normalizers = load_normalizers(
            root,
            cfg.net.action_dim,
            cfg.net.state_dim,
            norm_key,
            action_layout=cfg.data.dof_config,
            state_layout=cfg.data.agent_pos_config,
        )
        net = empty_network(cfg, dtype)
        materialize(net, weights, cfg, device)  # straight from the mapped files, cast on the way
        net.eval()
        return cls(cfg, tokenizer, normalizers, net, norm_key=norm_key, device=device)

    # ------------------------------------------------------------------ stages

    def _row_masks(self, obs: Observation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw state zero-filled to the model width, its mask, and the dof mask."""
        P, D = self.cfg.net.state_dim, self.cfg.net.action_dim
        state = np.asarray(obs.state, dtype=np.float32).reshape(-1)
        if not np.isfinite(state).all():
            raise ObservationError("state holds NaN or infinity")
        if obs.state_mask is not None:
            state_mask = np.asarray(obs.state_mask, dtype=np.float32).reshape(-1)
            if state_mask.shape != (P,):
                raise ObservationError(
                    f"state_mask has {state_mask.size} entries; the model state has {P} dims"
                )
        else:
            if state.size > P:
                raise ObservationError(f"state has {state.size} dims; the model state has {P}")
            state_mask = np.zeros(P, np.float32)
            state_mask[: state.size] = 1
        if not np.isin(state_mask, (0, 1)).all():
            raise ObservationError("state_mask must hold only 0 and 1")
        full = np.zeros(P, np.float32)
        if state.size == P:
            full[:] = state
        elif obs.state_mask is not None and state.size == int(state_mask.sum()):
            full[state_mask.astype(bool)] = state  # compact form: the present dims in order
        elif obs.state_mask is None:
            full[: state.size] = state
        else:
            raise ObservationError(
                f"state has {state.size} dims; with a state_mask it must have {P} (full) or "
                f"{int(state_mask.sum())} (the present dims)"
            )
        full[state_mask == 0] = 0  # a masked dim reads as raw 0, like a zero-filled one
        if obs.dof_mask is not None:
            dof_mask = np.asarray(obs.dof_mask, dtype=np.float32).reshape(-1)
            if dof_mask.shape != (D,):
                raise ObservationError(f"dof_mask has {dof_mask.size} entries; the model action has {D} dims")
            if not np.isin(dof_mask, (0, 1)).all():
                raise ObservationError("dof_mask must hold only 0 and 1")
        else:
            # the first len(state) dims, never the virtual action_padding tail
            real = D - self.cfg.data.dof_config.get("action_padding", 0)
            dof_mask = np.zeros(D, np.float32)
            dof_mask[: min(int(state_mask.sum()), real)] = 1
        return full, state_mask, dof_mask

    def _views(self, obs: Observation) -> list[str]:
        known = self.cfg.data.cameras
        unknown = [name for name in obs.images if name not in known]
        if unknown:
            raise ObservationError(f"unknown camera(s) {unknown}; this checkpoint knows {list(known)}")
        views = [name for name in known if name in obs.images]
        if not views:
            raise ObservationError(f"the observation has no image; expected some of {list(known)}")
        missing = tuple(name for name in known if name not in obs.images)
        if missing and missing not in self._warned_missing_views:
            # The authors' serving refuses an observation without a configured view; a robot that
            # deliberately runs with fewer cameras is allowed here, but never silently.
            self._warned_missing_views.add(missing)
            log.warning(
                "observation without view(s) %s that this checkpoint was configured with (%s): the prompt "
                "omits them, unlike training; the reference's serving would refuse this observation",
                list(missing),
                list(known),
            )
        for name in views:
            img = obs.images[name]
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ObservationError(f"image {name!r} must be an HxWx3 uint8 RGB array")
        return views

    def preprocess(self, observations: Sequence[Observation]) -> PreparedBatch:
        if not observations:
            raise ObservationError("no observations")
        cfg = self.cfg
        H = cfg.net.action_horizon
        rows, pixels, grids, prompts = [], [], [], []
        states, state_masks, dof_masks, pads, keys = [], [], [], [], []
        merge = self.vision_cfg.spatial_merge_size**2
        for obs in observations:
            key = self.normalizers.resolve_key(obs.norm_key) if obs.norm_key else self.norm_key
            views = self._views(obs)
            raw_state, state_mask, dof_mask = self._row_masks(obs)
            norm_state = self.normalizers.state.normalize(raw_state, key)
            pv, grid = preprocess_images(
                [obs.images[v] for v in views], [cfg.data.resolution[v] for v in views]
            )
            counts = [int(np.prod(g)) // merge for g in grid]
            text = (
                state_text(norm_state, state_mask, cfg.net.state_bins)
                if cfg.net.state_as_text
                else PROPRI_TOKEN
            )
            encoded = encode_prompt(
                self.tokenizer,
                [cfg.camera_label(v) for v in views],
                obs.instruction,
                text,
                H,
                counts,
                cfg.data.max_length,
            )
            rows.append(encoded.input_ids)
            prompts.append(encoded.text)
            pixels.append(pv)
            grids.append(grid)
            states.append(norm_state)
            state_masks.append(state_mask)
            dof_masks.append(dof_mask)
            pads.append(self.normalizers.action.normalize(np.zeros(cfg.net.action_dim, np.float32), key))
            keys.append(key)
        input_ids, attention_mask = pad_left(rows, self.tokenizer.pad_id)
        grid_thw = np.concatenate(grids, axis=0)
        position_ids, _ = get_rope_index(
            input_ids,
            grid_thw,
            attention_mask,
            image_token_id=self.tokenizer.image_pad_id,
            vision_start_token_id=self.tokenizer.vision_start_id,
            spatial_merge_size=self.vision_cfg.spatial_merge_size,
        )
        return PreparedBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            prefix_length=input_ids.shape[1] - H,
            pixel_values=np.concatenate(pixels, axis=0),
            grid_thw=grid_thw,
            state=np.stack(states),
            state_mask=np.stack(state_masks),
            dof_mask=np.stack(dof_masks),
            padding_action=np.stack(pads),
            norm_keys=keys,
            prompts=prompts,
        )

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

    def make_noise(
        self,
        batch_size: int,
        noise: Sequence[np.ndarray | None] | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        H, D = self.cfg.net.action_horizon, self.cfg.net.action_dim
        out = torch.randn(batch_size, H, D, dtype=torch.float32, generator=generator)
        if noise is not None:
            if len(noise) != batch_size:
                raise ObservationError(f"{len(noise)} noise arrays for {batch_size} observations")
            for i, n in enumerate(noise):
                if n is None:
                    continue
                arr = np.asarray(n, dtype=np.float32)
                if arr.shape != (H, D):
                    raise ObservationError(f"noise[{i}] has shape {arr.shape}; expected ({H}, {D})")
                if not np.isfinite(arr).all():
                    raise ObservationError(f"noise[{i}] holds NaN or infinity")
                out[i] = torch.from_numpy(arr)
        return out.to(self.device)

    def guidance(self, observations: Sequence[Observation], keys: Sequence[str]) -> RTCGuidance | None:
        """RTC inpainting targets from each observation's hint (rows without one get weight 0)."""
        hints = [obs.inpaint for obs in observations]
        if all(h is None for h in hints):
            return None
        H, D = self.cfg.net.action_horizon, self.cfg.net.action_dim
        target = np.zeros((len(hints), H, D), np.float32)
        weights = np.zeros((len(hints), H), np.float32)
        max_guidance = 0.0
        for i, (hint, key) in enumerate(zip(hints, keys, strict=True)):
            if hint is None:
                continue
            actions = np.asarray(hint.actions, np.float32)
            w = np.asarray(hint.weights, np.float32)
            if actions.shape != (H, D) or w.shape != (H,):
                raise ObservationError(f"inpaint hint must be actions ({H}, {D}) and weights ({H},)")
            target[i] = self.normalizers.action.normalize(actions, key)
            weights[i] = np.clip(w, 0, 1)
            max_guidance = max(max_guidance, float(hint.max_guidance))
        return RTCGuidance(
            torch.from_numpy(target).to(self.device), torch.from_numpy(weights).to(self.device), max_guidance
        )

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
    ) -> list[PolicyResult]:
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
        chunk = self.denoise(batch, kv, x0, guidance)
        t4 = now()
        normalized = chunk.detach().float().cpu().numpy()
        results = []
        for i, key in enumerate(batch.norm_keys):
            actions = self.normalizers.action.unnormalize(normalized[i], key)
            results.append(PolicyResult(actions=actions, actions_normalized=normalized[i].copy()))
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
