"""From the preprocessor's prepared batch to the fixed-shape feeds of the graph backends, and back.

The shared preprocessor (``Preprocessor.preprocess``) left-pads a batch to its longest prompt. The exported
graphs have one prompt length ``Lp`` for ever, so the prompt is left-padded further, and the image
feature rows and the state token are located by their flat positions in the ``B·Lp`` grid. Left
padding never changes the numbers: padding keys are masked out of every valid row, and the action
tokens' position ids do not depend on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from wall_runtime.export.onnx_export import GraphShapes
from wall_runtime.model.image_processing import wire_frame_size
from wall_runtime.types import Observation

DEFAULT_FRAME = (480, 640)  # (height, width) assumed for a camera the export is not told about
DEFAULT_TEXT_TOKENS = 64


class ShapeMismatchError(ValueError):
    """An observation does not fit the shapes the graphs or engines were built for."""


def _synthetic_observation(preprocessor, frames: Mapping[str, tuple[int, int]]) -> Observation:
    cfg = preprocessor.cfg
    return Observation(
        stamp=0.0,
        images={name: np.zeros((h, w, 3), np.uint8) for name, (h, w) in frames.items()},
        state=np.zeros(cfg.net.state_dim, np.float32),
        instruction="",
    )


def resolve_shapes(
    preprocessor,
    frames: Mapping[str, tuple[int, int]] | None = None,
    batch: int = 1,
    text_tokens: int = DEFAULT_TEXT_TOKENS,
) -> GraphShapes:
    """Static shapes for a checkpoint's ``preprocessor`` (a ``Preprocessor`` or a loaded ``WallOSS``) with
    cameras ``frames`` (view -> raw (height, width)).

    ``Lp`` is the prompt with an empty instruction plus ``text_tokens`` for the instruction (and, for
    0.5, the digits of the state). Cameras default to every view of the checkpoint at 640×480.
    """
    cfg = preprocessor.cfg
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if text_tokens < 0:
        raise ValueError(f"text_tokens must be >= 0, got {text_tokens}")
    if not frames:
        frames = {name: DEFAULT_FRAME for name in cfg.data.cameras}
    unknown = [n for n in frames if n not in cfg.data.cameras]
    if unknown:
        raise ValueError(f"unknown camera(s) {unknown}; this checkpoint knows {list(cfg.data.cameras)}")
    ordered = {n: tuple(int(x) for x in frames[n]) for n in cfg.data.cameras if n in frames}
    prepared = preprocessor.preprocess([_synthetic_observation(preprocessor, ordered)] * batch)
    net = cfg.net
    return GraphShapes(
        batch=batch,
        prefix_length=prepared.prefix_length + text_tokens,
        grid_thw=tuple(tuple(int(x) for x in g) for g in prepared.grid_thw),
        patch_dim=int(prepared.pixel_values.shape[1]),
        horizon=net.action_horizon,
        action_dim=net.action_dim,
        state_dim=net.state_dim,
        state_token=not net.state_as_text,
        num_layers=net.num_layers,
        num_kv_heads=net.num_kv_heads,
        head_dim=net.head_dim,
        cameras=tuple(ordered),
        frame_sizes=tuple(ordered.values()),
    )


def pad_observations(observations: Sequence[Observation], shapes: GraphShapes) -> list[list[Observation]]:
    """Split into groups of exactly ``shapes.batch``; the last group is filled with copies of its first
    observation (their outputs are dropped)."""
    if not observations:
        raise ShapeMismatchError("no observations")
    groups = []
    for i in range(0, len(observations), shapes.batch):
        group = list(observations[i : i + shapes.batch])
        group += [group[0]] * (shapes.batch - len(group))
        groups.append(group)
    return groups


def check_cameras(
    observations: Sequence[Observation], shapes: GraphShapes, resolutions: Mapping[str, int] | None = None
) -> None:
    """Refuse frames the graphs were not built for. With the views' ``resolutions`` a frame also fits
    when it is the built frame after the reference's first resize (a client that resized it already):
    the image grids, and so the graphs, depend only on that size."""
    for i, obs in enumerate(observations):
        if set(obs.images) != set(shapes.cameras):
            raise ShapeMismatchError(
                f"observation {i} has cameras {sorted(obs.images)}; the graphs were built for "
                f"{list(shapes.cameras)} (export again with --camera for this set)"
            )
        for name, size in zip(shapes.cameras, shapes.frame_sizes, strict=False):
            img = obs.images[name]
            if resolutions and name in resolutions and hasattr(img, "shape"):
                res = int(resolutions[name])
                if tuple(img.shape[:2]) == wire_frame_size(size[0], size[1], res):
                    continue
            if hasattr(img, "shape") and tuple(img.shape[:2]) != tuple(size):
                raise ShapeMismatchError(
                    f"observation {i}: camera {name!r} frame is {img.shape[1]}x{img.shape[0]}, the graphs "
                    f"were built for {size[1]}x{size[0]} (export again with --camera {name}={img.shape[1]}x{img.shape[0]})"
                )


def prefix_feeds(batch, shapes: GraphShapes, tokenizer) -> dict[str, np.ndarray]:
    """The prefix graph's inputs for a prepared batch of exactly ``shapes.batch`` rows."""
    b, lp = shapes.batch, shapes.prefix_length
    if batch.input_ids.shape[0] != b:
        raise ShapeMismatchError(f"batch has {batch.input_ids.shape[0]} rows, the graphs take {b}")
    have = batch.prefix_length
    if have > lp:
        raise ShapeMismatchError(
            f"the prompt is {have} tokens before the action tokens; the graphs were built for at most {lp} "
            f"(export again with a larger --text-tokens, or shorten the instruction)"
        )
    grids = tuple(tuple(int(x) for x in g) for g in batch.grid_thw)
    if grids != shapes.grid_thw:
        raise ShapeMismatchError(
            f"image grids {list(grids)} differ from the exported {list(shapes.grid_thw)}"
        )
    pad = lp - have
    ids = np.full((b, lp), tokenizer.pad_id, np.int64)
    ids[:, pad:] = batch.input_ids[:, :have]
    mask = np.zeros((b, lp), np.int64)
    mask[:, pad:] = batch.attention_mask[:, :have]
    positions = np.ones((3, b, lp), np.int64)
    positions[:, :, pad:] = batch.position_ids[:, :, :have]
    flat = ids.reshape(-1)
    image_positions = np.flatnonzero(flat == tokenizer.image_pad_id).astype(np.int64)
    if image_positions.size != shapes.num_image_tokens:
        raise ShapeMismatchError(
            f"{image_positions.size} image tokens in the prompts, the graphs expect {shapes.num_image_tokens}"
        )
    feeds = {
        "pixel_values": np.ascontiguousarray(batch.pixel_values, dtype=np.float32),
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions,
        "image_positions": image_positions,
    }
    if shapes.state_token:
        state_positions = np.flatnonzero(flat == tokenizer.propri_id).astype(np.int64)
        if state_positions.size != b:
            raise ShapeMismatchError("every prompt must hold exactly one <|propri|> token")
        feeds |= {
            "state": batch.state.astype(np.float32),
            "state_mask": batch.state_mask.astype(np.float32),
            "state_positions": state_positions,
        }
    return feeds


def denoise_feeds(
    batch, shapes: GraphShapes, noise: np.ndarray, prefix_mask: np.ndarray
) -> dict[str, np.ndarray]:
    """The denoise graph's inputs other than ``k, v``."""
    h = shapes.horizon
    have = batch.prefix_length
    return {
        "noise": np.ascontiguousarray(noise, dtype=np.float32),
        "dof_mask": np.ascontiguousarray(np.repeat(batch.dof_mask[:, None, :], h, axis=1), dtype=np.float32),
        "suffix_position_ids": np.ascontiguousarray(batch.position_ids[:, :, have:], dtype=np.int64),
        "prefix_mask": prefix_mask,
        "padding_action": batch.padding_action.astype(np.float32),
    }
