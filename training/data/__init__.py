"""Data sources and the one tf.data pipeline they share.

``load_dataset(spec, options)`` reads any supported source (see ``SOURCE_HELP``) into
splits of unbatched (image float32 [H, W, C] in [0, 1], label int64, -1 = unknown);
``batches`` shuffles, augments, caches and batches a split for training; ``to_numpy``
materialises a modest split; ``write_tfrecord`` converts any loaded dataset to TFRecords.
"""

from __future__ import annotations

from training.data.base import DataOptions, LoadedData, Split
from training.data.loader import SOURCE_HELP, load_dataset
from training.data.pipeline import batches, to_numpy
from training.data.tfrecord import write_tfrecord

__all__ = [
    "SOURCE_HELP",
    "DataOptions",
    "LoadedData",
    "Split",
    "batches",
    "load_dataset",
    "to_numpy",
    "write_tfrecord",
]
