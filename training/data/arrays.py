"""Checks and assembly shared by the sources that read whole arrays into memory."""

from __future__ import annotations

import logging

import numpy as np

from training.data.base import ColorMode, DataOptions, HeldoutKind, LoadedData, Split
from training.data.pipeline import array_split, native_color, resolve_target
from training.data.splits import heldout_mask
from training.errors import DataError

logger = logging.getLogger(__name__)


def check_images(x: np.ndarray, where: str) -> np.ndarray:
    """Return ``x`` as [N, h, w, c] uint8, or float32 in [0, 1]; raise naming the problem."""
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise DataError(f"{where}: images must have shape (N, H, W) or (N, H, W, C), got {x.shape}")
    if min(x.shape) == 0:
        raise DataError(f"{where}: holds no images (shape {x.shape})")
    if x.shape[-1] not in (1, 3, 4):
        raise DataError(f"{where}: images must have 1, 3 or 4 channels, got {x.shape[-1]}")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 255:
            raise DataError(
                f"{where}: integer pixel values must be in 0..255, got {x.min()}..{x.max()}"
            )
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise DataError(f"{where}: images contain NaN or infinite values")
        if x.min() < 0.0 or x.max() > 1.0:
            raise DataError(
                f"{where}: float pixel values must be in [0, 1], got {x.min():g}..{x.max():g}; "
                "store 8-bit images as uint8"
            )
        return x.astype(np.float32)
    raise DataError(f"{where}: images must be uint8 or float, got dtype {x.dtype}")


def check_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """Return ``y`` as int64 [n] with values >= -1 (-1 = unknown); raise naming the problem."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise DataError(
            f"{where}: labels must have shape ({n},) to match the images, got {y.shape}"
        )
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if len(y) and y.min() < -1:
        raise DataError(f"{where}: labels must be >= 0 (or -1 for unknown), got {y.min()}")
    return y.astype(np.int64)


def class_names_for(
    labels: list[np.ndarray], given: list[str] | None, where: str
) -> list[str] | None:
    """Names for labels 0..max: ``given`` if it covers them, else the numbers as text."""
    known = [y[y >= 0] for y in labels]
    top = max((int(y.max()) for y in known if len(y)), default=-1)
    if top < 0:
        return None
    if given is None:
        return [str(i) for i in range(top + 1)]
    if top >= len(given):
        raise DataError(
            f"{where}: label {top} has no name: class_names lists only {len(given)} names"
        )
    return list(given)


def loaded_from_arrays(
    source: str,
    x_train: np.ndarray,
    y_train: np.ndarray | None,
    options: DataOptions,
    *,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    class_names: list[str] | None = None,
    default_color: ColorMode | None = None,
) -> LoadedData:
    """Assemble :class:`LoadedData` from checked arrays; no test arrays = seeded val split."""
    x_train = check_images(x_train, source)
    y_train = (
        np.full(len(x_train), -1, np.int64)
        if y_train is None
        else check_labels(y_train, len(x_train), source)
    )
    labels = [y_train]
    if x_test is not None:
        x_test = check_images(x_test, source + " (test)")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DataError(
                f"{source}: test images are {x_test.shape[1:]} but train images {x_train.shape[1:]}"
            )
        y_test = (
            np.full(len(x_test), -1, np.int64)
            if y_test is None
            else check_labels(y_test, len(x_test), source + " (test)")
        )
        labels.append(y_test)
    names = class_names_for(labels, class_names, source)
    color = default_color or native_color(x_train.shape[-1])
    target = resolve_target((x_train.shape[1], x_train.shape[2]), color, options)

    heldout: Split | None = None
    kind: HeldoutKind
    if x_test is not None and y_test is not None:
        train = array_split(x_train, y_train, target)
        heldout = array_split(x_test, y_test, target)
        kind = "test-split"
    else:
        mask = heldout_mask(len(x_train), options.val_fraction, options.seed, where=source)
        train = array_split(x_train[~mask], y_train[~mask], target)
        if mask.any():
            heldout = array_split(x_train[mask], y_train[mask], target)
        kind = "val-fraction" if heldout is not None else "none"
    data = LoadedData(
        source=source,
        height=target.height,
        width=target.width,
        channels=target.channels,
        color_mode=target.color_mode,
        class_names=names,
        train=train,
        heldout=heldout,
        heldout_kind=kind,
    )
    logger.info("loaded %s", data.describe())
    return data
