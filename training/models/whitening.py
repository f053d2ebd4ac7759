"""Partial PCA whitening of feature vectors, as a Keras layer fitted on the training images.

The neighbour graph of the contrastive recipe is built on unit-length features whose
variance can sit in a few directions: the backbone's largest principal axes and, when the
objects are centred, the outline most images share. Those directions weigh in every
distance and crowd out the small ones that tell look-alike classes apart (what damping them
measured: docs/quality.md). Rotating to the principal axes and scaling axis ``i`` by
``eigenvalue_i ** -power`` evens the axes out: ``power = 0.5`` is full whitening (every
axis the same variance, noise included), ``0`` changes nothing, and between them the large
axes are only damped. The result is scaled back to unit length. Fitted once with
:meth:`PartialWhitening.adapt` (like Keras' ``Normalization``), the mean and projection are
fixed weights of the encoder, so served images are transformed exactly as the training
images were.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training.errors import ConfigError

# Axes whose variance is below this share of the largest are scaled as if they had it:
# directions the training images never vary in (a blank border's histograms) must not
# blow up whatever small difference a new image has there.
_EIGENVALUE_FLOOR = 1e-6


def check_power(power: object, name: str = "power") -> float:
    """``power`` as a float in (0, 0.5], or a :class:`ConfigError` that names it."""
    if (isinstance(power, bool) or not isinstance(power, int | float)
            or not math.isfinite(power) or not 0 < power <= 0.5):
        raise ConfigError(f"{name} must be a number in (0, 0.5] (0.5 is full whitening), "
                          f"got {power!r}")
    return float(power)


@keras.saving.register_keras_serializable(package="aecluster")
class PartialWhitening(keras.layers.Layer):
    """Vectors [B, D] -> unit-length ``(x - mean) @ projection`` [B, D]; call ``adapt`` first."""

    def __init__(self, power: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.power = check_power(power)
        self.adapted = False

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ConfigError(f"partial whitening needs vectors [batch, dims] of a fixed "
                              f"size, got {tuple(input_shape)}")
        dims = int(input_shape[-1])
        self.mean = self.add_weight(shape=(dims,), initializer="zeros", trainable=False,
                                    name="mean")
        self.projection = self.add_weight(shape=(dims, dims), initializer="identity",
                                          trainable=False, name="projection")
        # Vectors of another size are refused by Keras with a message that names the layer.
        self.input_spec = keras.layers.InputSpec(ndim=2, axes={-1: dims})
        super().build(input_shape)

    def adapt(self, features: np.ndarray) -> PartialWhitening:
        """Fit the mean and the scaled principal axes on ``features`` [N, D]; returns self."""
        data = np.asarray(features, dtype=np.float64)
        if data.ndim != 2 or data.shape[0] < 2:
            raise ConfigError(f"partial whitening is fitted on at least 2 vectors [n, dims], "
                              f"got shape {data.shape}")
        if not np.all(np.isfinite(data)):
            raise ConfigError("partial whitening: the features hold NaN or inf values")
        if not self.built:
            self.build((None, data.shape[1]))
        elif data.shape[1] != self.mean.shape[0]:
            raise ConfigError(f"partial whitening was built for {self.mean.shape[0]} dims, "
                              f"got {data.shape[1]}")
        mean = data.mean(axis=0)
        values, vectors = np.linalg.eigh(np.cov(data - mean, rowvar=False))
        largest = float(values.max())
        if largest <= 0:
            raise ConfigError("partial whitening: the features do not vary (all rows equal)")
        scale = np.maximum(values, largest * _EIGENVALUE_FLOOR) ** -self.power
        self.mean.assign(mean.astype(np.float32))
        self.projection.assign((vectors * scale).astype(np.float32))
        self.adapted = True
        return self

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        rotated = tf.matmul(tf.cast(inputs, tf.float32) - self.mean, self.projection)
        return tf.math.l2_normalize(rotated, axis=1, epsilon=1e-12)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "power": self.power}
