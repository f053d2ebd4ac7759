"""Pixel-exact thumbnail grids (numpy + Pillow): reconstructions, galleries, manifolds, sprites.

Grids are assembled from the images themselves rather than drawn with matplotlib, so every
thumbnail keeps its pixels (nearest-neighbour upscaling, no interpolation) and the size of
the PNG follows from :func:`grid_size_px` alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

# Grey between tiles and for empty cells: distinct from both black and white images.
BACKGROUND = (200, 200, 200)


def to_rgb8(images: np.ndarray) -> np.ndarray:
    """Images [N, H, W, C] (C = 1 or 3) in [0, 1] as uint8 RGB [N, H, W, 3]."""
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [N, H, W, 1 or 3], got shape {arr.shape}")
    out = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return out


def upscale_factor(height: int, width: int, target: int = 48) -> int:
    """Integer factor that makes the larger side of an image at least ``target`` pixels."""
    return max(1, math.ceil(target / max(height, width)))


def upscale(images: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of [N, H, W, C] by an integer factor (pixels stay crisp)."""
    if factor == 1:
        return images
    return np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)


def grid_size_px(
    n_rows: int, n_cols: int, tile_hw: tuple[int, int], pad: int = 2
) -> tuple[int, int]:
    """(width, height) in pixels of a grid of ``n_rows`` x ``n_cols`` tiles of ``tile_hw``."""
    h, w = tile_hw
    return n_cols * w + (n_cols + 1) * pad, n_rows * h + (n_rows + 1) * pad


def grid(tiles: list[np.ndarray | None], n_cols: int, pad: int = 2) -> np.ndarray:
    """Arrange uint8 RGB tiles [h, w, 3] row by row; ``None`` leaves a cell empty.

    All tiles share one size. Returns the uint8 RGB canvas [H, W, 3].
    """
    if n_cols < 1 or not tiles:
        raise ValueError("a grid needs at least one cell and one column")
    first = next((t for t in tiles if t is not None), None)
    if first is None:
        raise ValueError("a grid needs at least one tile that is not empty")
    h, w = first.shape[:2]
    n_rows = math.ceil(len(tiles) / n_cols)
    width, height = grid_size_px(n_rows, n_cols, (h, w), pad)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = BACKGROUND
    for i, tile in enumerate(tiles):
        if tile is None:
            continue
        if tile.shape != (h, w, 3):
            raise ValueError(f"tile {i} has shape {tile.shape}, expected {(h, w, 3)}")
        r, c = divmod(i, n_cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top:top + h, left:left + w] = tile
    return canvas


def save_png(pixels: np.ndarray, path: Path) -> Path:
    """Write a uint8 RGB(A) array as a PNG (parent directories created); return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG", optimize=True)
    return path
