"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download)."""

from __future__ import annotations

import numpy as np

from training.data.arrays import loaded_from_arrays
from training.data.base import DataOptions, LoadedData


def load_digits_data(options: DataOptions) -> LoadedData:
    """The digits as gray 8x8 images scaled from 0..16 to [0, 1], labels 0..9."""
    from sklearn.datasets import load_digits  # local: scikit-learn is slow to import

    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[..., np.newaxis]
    return loaded_from_arrays(
        "digits", images, np.asarray(bunch.target), options,
        class_names=[str(i) for i in range(10)],
    )
