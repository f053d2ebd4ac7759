"""The training loop: fit an image model on ``tf.data`` batches, one log line per epoch.

Shared by every model with its own steps (:mod:`training.models`, the contrastive recipe):
it depends on none of them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from training.errors import ConfigError, DataError
from training.interrupt import StopOnInterrupt, stoppable

logger = logging.getLogger(__name__)


class EpochLogger(keras.callbacks.Callback):
    """Logs one INFO line per epoch with every metric Keras reports and the epoch's seconds."""

    def __init__(self, label: str, epochs: int, *, every: int = 1) -> None:
        super().__init__()
        self.label = label
        self.epochs = epochs
        self.every = every  # log every n-th epoch (and the last)
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - self._start
        self.seconds.append(seconds)
        if epoch % self.every and epoch != self.epochs - 1:
            return
        logger.info("%s epoch %d/%d: %s (%.1f s)", self.label, epoch + 1, self.epochs,
                    format_metrics(logs or {}), seconds)


class EpochSummaries(keras.callbacks.Callback):
    """Writes every epoch metric as a TensorBoard scalar under ``log_dir``.

    Same layout as Keras' TensorBoard callback (``train/`` and ``validation/`` runs, tags
    ``epoch_<metric>``), but written with TensorFlow's core summary op: Keras' callback
    needs the separate ``tensorboard`` package for ``tf.summary.scalar``, which the
    training image does not ship.
    """

    def __init__(self, log_dir: Path) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict[str, Any] = {}
        plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        self._metadata = summary_pb2.SummaryMetadata(plugin_data=plugin)

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._writers = {run: tf.summary.create_file_writer(str(self.log_dir / run))
                         for run in ("train", "validation")}

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        for name, value in (logs or {}).items():
            run = "validation" if name.startswith("val_") else "train"
            with self._writers[run].as_default():
                tf.summary.write(f"epoch_{name.removeprefix('val_')}",
                                 tf.constant(float(value), tf.float32), step=epoch,
                                 metadata=self._metadata)

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        for writer in self._writers.values():
            writer.close()


def format_metrics(logs: Mapping[str, Any]) -> str:
    """``loss=0.0123 psnr=19.41 dB ...``: PSNR in dB with two decimals, the rest 4 digits.

    Training metrics come before validation ones, each group led by loss and PSNR.
    """

    def order(name: str) -> tuple[bool, int, str]:
        base = name.removeprefix("val_")
        return name.startswith("val_"), {"loss": 0, "psnr": 1}.get(base, 2), base

    parts = []
    for name in sorted(logs, key=order):
        number = float(logs[name])
        parts.append(f"{name}={number:.2f} dB" if name.endswith("psnr") else f"{name}={number:.4g}")
    return " ".join(parts)


def check_image_batches(dataset: tf.data.Dataset, image_shape: tuple[int, ...], what: str) -> None:
    """Raise :class:`DataError` unless ``dataset`` yields float image batches of ``image_shape``.

    Elements are ``images`` or ``(images, labels, ...)`` with images ``[B, H, W, C]``.
    Catching this before ``fit`` turns a deep TensorFlow shape error into a message.
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise DataError(f"the {what} data must be a tf.data.Dataset, got {type(dataset).__name__}")
    spec = dataset.element_spec
    images = spec[0] if isinstance(spec, tuple) else spec
    if not isinstance(images, tf.TensorSpec):
        raise DataError(f"the {what} dataset must yield image tensors or (images, labels) tuples, "
                        f"got elements {spec}")
    if not images.dtype.is_floating:
        raise DataError(f"the {what} images are {images.dtype.name}: expected float32 in [0, 1] "
                        "(divide 8-bit pixels by 255)")
    expected = tf.TensorShape([None, *image_shape])
    if images.shape.rank != 4 or not images.shape.is_compatible_with(expected):
        raise DataError(f"the {what} dataset yields images of shape {images.shape}, the model "
                        f"takes batches [batch, {', '.join(map(str, image_shape))}]: batch the "
                        "dataset and resize the images to the model's input size")
    if int(dataset.cardinality()) == 0:
        raise DataError(f"the {what} dataset is empty")


def fit_model(model: keras.Model, train: tf.data.Dataset, heldout: tf.data.Dataset | None,
              *, epochs: int, label: str, image_shape: tuple[int, ...], learning_rate: float,
              tensorboard_dir: Path | None = None,
              extra_callbacks: list[keras.callbacks.Callback] | None = None,
              ) -> dict[str, list[float]]:
    """Train any compiled image model with its own steps on batches of ``(images, labels)``.

    ``label`` names the model in the per-epoch log lines; ``image_shape`` is the ``[H, W, C]``
    the batches must have. Returns the history: one value per epoch of each metric the
    model's steps report (``val_``-prefixed ones too when ``heldout`` is given).
    ``tensorboard_dir`` receives the per-epoch metrics as TensorBoard scalars. Raises
    :class:`DataError` for batches that do not fit the model and :class:`ConfigError` when
    training diverges (the loss becomes NaN or infinite).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    check_image_batches(train, image_shape, "training")
    if heldout is not None:
        check_image_batches(heldout, image_shape, "held-out")

    callbacks: list[keras.callbacks.Callback] = [
        EpochLogger(label, epochs),
        keras.callbacks.TerminateOnNaN(),
        StopOnInterrupt(),
    ]
    if tensorboard_dir is not None:
        callbacks.append(EpochSummaries(tensorboard_dir))
    callbacks.extend(extra_callbacks or [])

    start = time.perf_counter()
    # shuffle=False: a tf.data pipeline shuffles itself (Keras would ignore it and warn).
    with stoppable():
        history = model.fit(train, validation_data=heldout, epochs=epochs, callbacks=callbacks,
                            shuffle=False, verbose=0)
    result = {name: [float(v) for v in values] for name, values in history.history.items()}
    losses = result.get("loss", [])
    if not losses:
        raise DataError("the training dataset yielded no batches: check its size and batch size")
    if not all(math.isfinite(v) for v in losses):
        raise ConfigError(
            f"training diverged: the loss became {losses[-1]} in epoch {len(losses)}; lower "
            f"learning_rate (now {learning_rate}) or check that images are in [0, 1]"
        )
    final = {name: values[-1] for name, values in result.items()}
    logger.info("trained %d epochs in %.1f s: %s", len(losses), time.perf_counter() - start,
                format_metrics(final))
    return result
