"""Run an encoder (and optionally its decoder) over a batched dataset, with progress."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from training.metrics import reconstruction_scores

logger = logging.getLogger(__name__)


@dataclass
class Embedded:
    """Embeddings of a split in dataset order, with labels and reconstruction quality."""

    embeddings: np.ndarray  # float32 [N, D]
    labels: np.ndarray  # int64 [N], -1 = unknown
    reconstruction_mse: float | None
    reconstruction_psnr: float | None

    @property
    def has_labels(self) -> bool:
        return bool(np.any(self.labels >= 0))


TensorFn = Callable[[tf.Tensor], tf.Tensor]


def keras_fn(model: keras.Model) -> TensorFn:
    """A traced inference call of a Keras model (avoids Keras' per-batch predict overhead)."""
    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def embed(
    encode: TensorFn,
    batches: tf.data.Dataset,
    *,
    total: int,
    decode: TensorFn | None = None,
    what: str = "embedding",
    log_every_seconds: float = 10.0,
) -> Embedded:
    """Encode every batch of ``(images, labels)``; decode too when ``decode`` is given.

    Reconstruction scores are accumulated batch by batch so a large split never has to
    be held in memory as images, only as embeddings.
    """
    chunks: list[np.ndarray] = []
    label_chunks: list[np.ndarray] = []
    mse_sum = psnr_sum = 0.0
    done = 0
    started = last_log = time.monotonic()
    for images, labels in batches:
        z = encode(images)
        chunks.append(z.numpy().astype(np.float32, copy=False))
        label_chunks.append(labels.numpy().astype(np.int64, copy=False))
        n = int(images.shape[0])
        if decode is not None:
            scores = reconstruction_scores(images.numpy(), decode(z).numpy())
            mse_sum += scores["mse"] * n
            psnr_sum += scores["psnr"] * n
        done += n
        now = time.monotonic()
        if now - last_log >= log_every_seconds:
            logger.info("%s: %d/%d images (%.0f/s)", what, done, total, done / (now - started))
            last_log = now
    seconds = time.monotonic() - started
    logger.info("%s: %d images in %.1f s", what, done, seconds)
    if not chunks:
        raise ValueError(f"{what}: the dataset yielded no images")
    return Embedded(
        embeddings=np.concatenate(chunks),
        labels=np.concatenate(label_chunks),
        reconstruction_mse=mse_sum / done if decode is not None else None,
        reconstruction_psnr=psnr_sum / done if decode is not None else None,
    )
