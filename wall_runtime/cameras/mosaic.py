"""A mosaic picture of several cameras with their stamps and measured rates (``cameras snapshot``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Tile:
    title: str  # camera name and view
    lines: tuple[str, ...]  # stamp, age, fps ... or the error
    image: np.ndarray | None  # RGB, or None when the camera gave nothing usable
    ok: bool = True


def mosaic(tiles: list[Tile], tile_height: int = 240) -> np.ndarray:
    """Tiles side by side (up to 3 per row), each captioned; failed cameras as dark red tiles."""
    if not tiles:
        raise ValueError("no tiles")
    caption_h = 22 + 18 * max(len(t.lines) for t in tiles)
    rendered = []
    for t in tiles:
        if t.image is not None:
            h, w = t.image.shape[:2]
            width = max(160, round(w * tile_height / h))
            body = cv2.resize(t.image, (width, tile_height), interpolation=cv2.INTER_AREA)
        else:
            width = round(tile_height * 4 / 3)
            body = np.zeros((tile_height, width, 3), np.uint8)
            body[:] = (90, 0, 0)
        caption = np.full((caption_h, width, 3), 30 if t.ok else 60, np.uint8)
        color = (255, 255, 255) if t.ok else (255, 120, 120)
        cv2.putText(caption, t.title, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
        for i, line in enumerate(t.lines):
            cv2.putText(
                caption, line[:60], (6, 37 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, color, 1, cv2.LINE_AA
            )
        rendered.append(np.vstack([caption, body]))
    cols = min(3, len(rendered))
    rows = math.ceil(len(rendered) / cols)
    width = max(r.shape[1] for r in rendered)
    height = rendered[0].shape[0]
    out = np.zeros((rows * height, cols * width, 3), np.uint8)
    for i, r in enumerate(rendered):
        y, x = (i // cols) * height, (i % cols) * width
        out[y : y + height, x : x + r.shape[1]] = r
    return out
