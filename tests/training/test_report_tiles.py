"""Thumbnail grids: exact sizes, crisp upscaling, empty cells, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.report.tiles import (
    BACKGROUND,
    grid,
    grid_size_px,
    save_png,
    to_rgb8,
    upscale,
    upscale_factor,
)


def test_to_rgb8_and_upscale() -> None:
    gray = np.array([[[[0.0], [1.0]], [[0.5], [2.0]]]], dtype=np.float32)  # [1, 2, 2, 1]
    rgb = to_rgb8(gray)
    assert rgb.shape == (1, 2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, :, :, 0].tolist() == [[0, 255], [128, 255]]  # clipped, rounded
    big = upscale(rgb, 3)
    assert big.shape == (1, 6, 6, 3)
    assert (big[0, :3, :3] == 0).all() and (big[0, :3, 3:] == 255).all()
    assert upscale_factor(8, 8) == 6 and upscale_factor(28, 28) == 2 and upscale_factor(64, 32) == 1
    with pytest.raises(ValueError, match="expected images"):
        to_rgb8(np.zeros((2, 2, 2)))


def test_grid_layout_and_size(tmp_path: Path) -> None:
    tile = np.full((4, 6, 3), 10, dtype=np.uint8)
    cells: list[np.ndarray | None] = [tile, None, tile, tile, tile]
    canvas = grid(cells, 3, pad=1)
    assert (canvas.shape[1], canvas.shape[0]) == grid_size_px(2, 3, (4, 6), pad=1) == (22, 11)
    assert (canvas[1:5, 1:7] == 10).all()  # cell 0
    assert (canvas[1:5, 8:14] == BACKGROUND).all()  # cell 1 left empty
    assert (canvas[6:10, 15:21] == BACKGROUND).all()  # cell 5 does not exist
    path = save_png(canvas, tmp_path / "a" / "grid.png")
    with Image.open(path) as image:
        assert image.size == (22, 11)
    with pytest.raises(ValueError, match="tile 1 has shape"):
        grid([tile, np.zeros((4, 5, 3), np.uint8)], 2)
    with pytest.raises(ValueError, match="not empty"):
        grid([None, None], 2)
