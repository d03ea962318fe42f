"""Multimodal (mRoPE) position ids for prompts with images, as Qwen2.5-VL's ``get_rope_index`` builds them.

Each token gets three position components (temporal, height, width). Text tokens count up by one in all
three. An image block of ``t × h × w`` merged tokens (``h, w`` = grid / merge size) starting at position
``s`` gets temporal ``s + frame``, height ``s + row`` and width ``s + column``; the text after it resumes at
``s + max(h, w)``. Padding (attention mask 0) is skipped when counting and its positions are 0;
``rope_deltas = max position + 1 − number of real tokens`` per row, as in transformers 5.x.

Images are found as in the reference: each ``<|vision_start|>`` followed by an image token opens one image,
whose grid is the next row of ``image_grid_thw`` (images are consumed in order across the batch), and the
image tokens must form one run of exactly ``t·h·w / merge²`` tokens.
"""

from __future__ import annotations

import numpy as np


def _image_positions(start: int, grid: np.ndarray, merge: int) -> np.ndarray:
    t, h, w = int(grid[0]), int(grid[1]) // merge, int(grid[2]) // merge
    frame, row, col = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([frame.ravel(), row.ravel(), col.ravel()]).astype(np.int64) + start


def _row_positions(
    ids: np.ndarray, grids: np.ndarray, image_token_id: int, vision_start_token_id: int, merge: int
) -> tuple[np.ndarray, int]:
    """Positions ``[3, len(ids)]`` for one unpadded row and how many grids it consumed."""
    starts = np.flatnonzero(ids[:-1] == vision_start_token_id)
    n_images = int(np.count_nonzero(ids[starts + 1] == image_token_id))
    if n_images > len(grids):
        raise ValueError(f"the prompt has more images than image_grid_thw rows ({len(grids)})")
    image_tokens = np.flatnonzero(ids == image_token_id)
    expected = int(sum(int(np.prod(g)) // merge**2 for g in grids[:n_images]))
    if len(image_tokens) != expected:
        raise ValueError(
            f"the prompt has {len(image_tokens)} image tokens but its {n_images} image(s) need {expected} "
            f"(grids {grids[:n_images].tolist()}, merge size {merge})"
        )
    pieces: list[np.ndarray] = []
    cursor = 0  # index into ids
    position = 0  # next position value
    for grid in grids[:n_images]:
        begin = int(image_tokens[np.searchsorted(image_tokens, cursor)])
        count = int(np.prod(grid)) // merge**2
        if not np.all(ids[begin : begin + count] == image_token_id):
            raise ValueError(
                f"image at token {begin} should be {count} consecutive image tokens (grid {grid.tolist()})"
            )
        text = begin - cursor
        pieces.append(np.broadcast_to(np.arange(position, position + text, dtype=np.int64), (3, text)))
        position += text
        pieces.append(_image_positions(position, grid, merge))
        position += max(int(grid[1]), int(grid[2])) // merge
        cursor = begin + count
    text = len(ids) - cursor
    pieces.append(np.broadcast_to(np.arange(position, position + text, dtype=np.int64), (3, text)))
    return np.concatenate(pieces, axis=1), n_images


def get_rope_index(
    input_ids: np.ndarray,
    image_grid_thw: np.ndarray | None,
    attention_mask: np.ndarray | None,
    *,
    image_token_id: int,
    vision_start_token_id: int,
    spatial_merge_size: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Position ids ``int64 [3, B, L]`` and rope deltas ``int64 [B, 1]`` for token ids ``[B, L]``."""
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    batch, length = input_ids.shape
    if attention_mask is None:
        keep = np.ones((batch, length), dtype=bool)
    else:
        attention_mask = np.asarray(attention_mask)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {attention_mask.shape} differs from input_ids {input_ids.shape}"
            )
        keep = attention_mask.astype(bool)
    grids = (
        np.zeros((0, 3), dtype=np.int64) if image_grid_thw is None else np.asarray(image_grid_thw, np.int64)
    )
    if grids.ndim != 2 or grids.shape[1] != 3:
        raise ValueError(f"image_grid_thw must be [n_images, 3], got shape {grids.shape}")

    position_ids = np.zeros((3, batch, length), dtype=np.int64)
    deltas = np.zeros((batch, 1), dtype=np.int64)
    used = 0
    for b in range(batch):
        ids = input_ids[b][keep[b]]
        if len(ids) == 0:
            continue
        positions, n_images = _row_positions(
            ids, grids[used:], image_token_id, vision_start_token_id, spatial_merge_size
        )
        used += n_images
        position_ids[:, b, keep[b]] = positions
        deltas[b, 0] = positions.max() + 1 - len(ids)
    if used != len(grids):
        raise ValueError(f"image_grid_thw has {len(grids)} rows but the prompts hold {used} image(s)")
    return position_ids, deltas
