"""Observations in, model inputs out; the normalised chunk in, robot units out.

The half of WALL-OSS inference that every backend shares and that needs no network: images (Pillow
resizes, patchify), state normalisation (and, for 0.5, its discretisation into the prompt), prompt
tokens with image pads expanded, left padding across the batch, mRoPE position ids, row masks, the
normalised padding action, the initial noise and RTC guidance targets; and after the network,
un-normalisation to robot units. The backends differ only in how the prefix and the denoise loop run
(:mod:`wall_runtime.model.pipeline` for torch, :mod:`wall_runtime.backends.graph_policy` for graphs).

Batches of observations from different robots (different norm keys, cameras, masks) are fine: each
row is prepared on its own and rows are left-padded to one prefix length.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from wall_runtime.model.config import WallConfig
from wall_runtime.model.image_processing import preprocess_images
from wall_runtime.model.normalizer import Normalizers
from wall_runtime.model.prompt import encode_prompt, pad_left, state_text
from wall_runtime.model.rope_index import get_rope_index
from wall_runtime.model.sampler import RTCGuidance
from wall_runtime.model.tokenizer import PROPRI_TOKEN, WallTokenizer
from wall_runtime.types import Observation, PolicyResult

log = logging.getLogger(__name__)


class ObservationError(ValueError):
    """An observation the model cannot take (unknown camera, wrong state width, NaN, bad mask)."""


@dataclass
class PreparedBatch:
    """Model inputs for a batch, built by :meth:`Preprocessor.preprocess` (numpy, on the host)."""

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


class Preprocessor:
    """A checkpoint's configuration, tokenizer and normalisers: everything but the network.

    Built by :func:`wall_runtime.model.pipeline.load_preprocessor` (no weights read) or held by a
    loaded :class:`wall_runtime.model.pipeline.WallOSS`.
    """

    def __init__(
        self,
        cfg: WallConfig,
        tokenizer: WallTokenizer,
        normalizers: Normalizers,
        norm_key: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.normalizers = normalizers
        self.norm_key = normalizers.resolve_key(norm_key)
        self.vision_cfg = cfg.vision_config()
        self._warned_missing_views: set[tuple[str, ...]] = set()

    def row_masks(self, obs: Observation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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

    def views(self, obs: Observation) -> list[str]:
        """The checkpoint's views present in ``obs``, in the checkpoint's order (unknown ones refused)."""
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
        """Observations → the model inputs of one batch (rows left-padded to the longest prompt)."""
        if not observations:
            raise ObservationError("no observations")
        cfg = self.cfg
        H = cfg.net.action_horizon
        rows, pixels, grids, prompts = [], [], [], []
        states, state_masks, dof_masks, pads, keys = [], [], [], [], []
        merge = self.vision_cfg.spatial_merge_size**2
        for obs in observations:
            key = self.normalizers.resolve_key(obs.norm_key) if obs.norm_key else self.norm_key
            views = self.views(obs)
            raw_state, state_mask, dof_mask = self.row_masks(obs)
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

    def make_noise(
        self,
        batch_size: int,
        noise: Sequence[np.ndarray | None] | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The initial flow sample ``[B, H, D]`` on the CPU: ``torch.randn`` from ``generator``, with the rows
        ``noise`` gives replaced (checked for shape and finiteness)."""
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
        return out

    def guidance(
        self,
        observations: Sequence[Observation],
        keys: Sequence[str],
        device: torch.device | str = "cpu",
    ) -> RTCGuidance | None:
        """RTC inpainting targets from each observation's hint (rows without one get weight 0), on ``device``."""
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
            torch.from_numpy(target).to(device), torch.from_numpy(weights).to(device), max_guidance
        )

    def postprocess(self, normalized: np.ndarray, keys: Sequence[str]) -> list[PolicyResult]:
        """The normalised chunks ``[B, H, D]`` (float32, host) → one result per row in robot units."""
        return [
            PolicyResult(
                actions=self.normalizers.action.unnormalize(normalized[i], key),
                actions_normalized=normalized[i].copy(),
            )
            for i, key in enumerate(keys)
        ]
