"""Tests of training.data.arrays: array checks and LoadedData assembly."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.arrays import check_images, check_labels, class_names_for, loaded_from_arrays
from training.data.base import DataOptions
from training.data.pipeline import to_numpy
from training.errors import DataError


def test_check_images_normalises_rank_and_dtype() -> None:
    assert check_images(np.zeros((2, 3, 4), np.uint8), "s").shape == (2, 3, 4, 1)
    ints = check_images(np.full((1, 2, 2, 3), 200, np.int32), "s")
    assert ints.dtype == np.uint8 and ints.max() == 200
    floats = check_images(np.full((1, 2, 2), 0.5, np.float64), "s")
    assert floats.dtype == np.float32


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 3), np.uint8), "shape"),
        (np.zeros((2, 3, 3, 2), np.uint8), "1, 3 or 4 channels"),
        (np.zeros((0, 3, 3), np.uint8), "no images"),
        (np.full((1, 2, 2), 300, np.int32), "0..255"),
        (np.full((1, 2, 2), 1.5), r"\[0, 1\]"),
        (np.full((1, 2, 2), np.nan), "NaN"),
        (np.zeros((1, 2, 2), np.complex64), "dtype"),
    ],
)
def test_check_images_rejects(array: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        check_images(array, "src")


def test_check_labels() -> None:
    assert check_labels(np.array([0.0, 2.0, -1.0]), 3, "s").dtype == np.int64
    with pytest.raises(DataError, match="shape"):
        check_labels(np.zeros(2), 3, "s")
    with pytest.raises(DataError, match="integers"):
        check_labels(np.array([0.5, 1.0]), 2, "s")
    with pytest.raises(DataError, match=">= 0"):
        check_labels(np.array([-2, 1]), 2, "s")


def test_class_names() -> None:
    assert class_names_for([np.array([-1, -1])], None, "s") is None
    assert class_names_for([np.array([0, 2]), np.array([1])], None, "s") == ["0", "1", "2"]
    assert class_names_for([np.array([1])], ["a", "b"], "s") == ["a", "b"]
    with pytest.raises(DataError, match="label 2 has no name"):
        class_names_for([np.array([2])], ["a", "b"], "s")


def test_val_fraction_split_keeps_every_image_once() -> None:
    x = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1).repeat(2, axis=1).repeat(2, axis=2)
    data = loaded_from_arrays("arr", x, np.arange(50) % 5, DataOptions(val_fraction=0.2, seed=7))
    assert data.heldout is not None and data.heldout_kind == "val-fraction"
    assert (data.train.size, data.heldout.size) == (40, 10)
    xt, _ = to_numpy(data.train)
    xh, _ = to_numpy(data.heldout)
    ids = np.round(np.concatenate([xt, xh])[:, 0, 0, 0] * 255).astype(int)
    assert sorted(ids) == list(range(50))
    assert list(ids[:40]) == sorted(ids[:40])  # each split keeps the source order
    assert data.class_names == ["0", "1", "2", "3", "4"]


def test_no_val_fraction_and_unlabelled() -> None:
    data = loaded_from_arrays("arr", np.zeros((5, 2, 2, 3), np.uint8), None,
                              DataOptions(val_fraction=0.0))
    assert data.heldout is None and data.heldout_kind == "none"
    assert data.class_names is None and data.color_mode == "rgb" and data.channels == 3
    assert set(to_numpy(data.train)[1]) == {-1}


def test_test_split_must_match_train_shape() -> None:
    with pytest.raises(DataError, match="test images"):
        loaded_from_arrays("arr", np.zeros((5, 2, 2), np.uint8), None, DataOptions(),
                           x_test=np.zeros((5, 3, 3), np.uint8))
