"""Tests of training.data.digits."""

from __future__ import annotations

import numpy as np

from training.data.base import DataOptions
from training.data.digits import load_digits_data
from training.data.pipeline import to_numpy


def test_digits_are_8x8_gray_scaled_by_16() -> None:
    from sklearn.datasets import load_digits

    data = load_digits_data(DataOptions(val_fraction=0.2, seed=1))
    assert data.source == "digits" and data.class_names == [str(i) for i in range(10)]
    assert (data.height, data.width, data.channels, data.color_mode) == (8, 8, 1, "gray")
    assert data.heldout is not None and data.heldout_kind == "val-fraction"
    assert data.train.size + data.heldout.size == 1797 and data.heldout.size == 359
    x, y = to_numpy(data.train)
    assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() == 1.0
    # Train keeps the original order of the images it holds.
    images = load_digits().images / 16.0
    matches = [int(np.argmin(np.abs(images - x[i, ..., 0]).sum(axis=(1, 2)))) for i in range(3)]
    assert matches == sorted(matches)
    assert set(y) == set(range(10))
