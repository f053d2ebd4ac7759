"""The real Fashion-MNIST through load_dataset (Debian's dataset-fashion-mnist files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from training.data import DataOptions, load_dataset

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

pytestmark = [
    pytest.mark.fashion,
    pytest.mark.skipif(
        not all((FASHION_DIR / name).is_file() for name in FILES),
        reason=f"Fashion-MNIST IDX files not in {FASHION_DIR} (apt install dataset-fashion-mnist)",
    ),
]


def _labels(dataset: tf.data.Dataset) -> np.ndarray:
    # Batched, so the labels arrive in a handful of steps rather than one per image.
    return np.concatenate([y for _, y in dataset.batch(10_000).as_numpy_iterator()])


def test_real_fashion_mnist() -> None:
    data = load_dataset("fashion-mnist", DataOptions())
    assert data.source == f"fashion-mnist:{FASHION_DIR}"
    assert data.heldout is not None and data.heldout_kind == "test-split"
    assert (data.train.size, data.heldout.size) == (60_000, 10_000)
    assert (data.height, data.width, data.channels, data.color_mode) == (28, 28, 1, "gray")
    assert data.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    images, _ = next(data.train.dataset.batch(512).as_numpy_iterator())
    assert images.shape == (512, 28, 28, 1) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert np.array_equal(np.bincount(_labels(data.train.dataset)), [6000] * 10)
    assert np.array_equal(np.bincount(_labels(data.heldout.dataset)), [1000] * 10)
