"""``csv:FILE``: Kaggle digit-recognizer CSV files.

A header row names an optional ``label`` column and ``pixel0`` .. ``pixelN`` columns
(N + 1 a perfect square, the image row-major); each further row is one image with values
0..255. ``train.csv`` has labels, ``test.csv`` does not. The held-out split is val_fraction.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from training.data.arrays import loaded_from_arrays
from training.data.base import DataOptions, LoadedData
from training.errors import DataError


def _columns(header: str, path: Path) -> tuple[int | None, list[int]]:
    names = [name.strip().strip('"').strip() for name in header.split(",")]
    label_col = None
    pixels: dict[int, int] = {}
    for col, name in enumerate(names):
        match = re.fullmatch(r"pixel(\d+)", name, flags=re.IGNORECASE)
        if name.lower() == "label" and label_col is None:
            label_col = col
        elif match:
            pixels[int(match[1])] = col
        else:
            raise DataError(
                f"{path}: unexpected column {name!r} in the header: expected an optional "
                "'label' column and pixel0..pixelN columns"
            )
    if sorted(pixels) != list(range(len(pixels))) or not pixels:
        raise DataError(f"{path}: pixel columns must be pixel0..pixelN without gaps")
    return label_col, [pixels[i] for i in range(len(pixels))]


def load_kaggle_csv(path: Path, options: DataOptions) -> LoadedData:
    """Load a digit-recognizer CSV; pixel values are scaled from 0..255 to [0, 1]."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as text ({exc})") from exc
    if not lines:
        raise DataError(f"{path}: is empty")
    label_col, pixel_cols = _columns(lines[0], path)
    side = math.isqrt(len(pixel_cols))
    if side * side != len(pixel_cols):
        raise DataError(
            f"{path}: {len(pixel_cols)} pixel columns do not form a square image"
        )
    rows = [line for line in lines[1:] if line.strip()]
    if not rows:
        raise DataError(f"{path}: has a header but no image rows")
    try:
        table = np.loadtxt(rows, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: not a numeric table ({exc})") from exc
    if table.shape[1] != len(pixel_cols) + (label_col is not None):
        raise DataError(
            f"{path}: rows have {table.shape[1]} values but the header names "
            f"{len(pixel_cols) + (label_col is not None)} columns"
        )
    pixels = table[:, pixel_cols]
    if not np.all(np.isfinite(pixels)) or pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: pixel values must be in 0..255")
    if np.all(pixels == np.round(pixels)):
        images = pixels.astype(np.uint8)
    else:
        images = (pixels / 255.0).astype(np.float32)
    images = images.reshape(len(rows), side, side, 1)
    labels = None
    if label_col is not None:
        labels = table[:, label_col]
        if not np.all(labels == np.round(labels)) or labels.min() < 0:
            raise DataError(f"{path}: labels must be non-negative integers")
        labels = labels.astype(np.int64)
    return loaded_from_arrays(f"csv:{path}", images, labels, options)
