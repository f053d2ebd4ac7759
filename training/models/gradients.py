"""Gradient-orientation histograms of the pixels (HOG-like), as a Keras layer.

The contrastive backbone learns what survives crops and light changes, so it keeps less of
an object's fine outline (an edge, a strap), which can be what tells two look-alike classes
apart. A histogram of edge directions per small cell keeps exactly that outline; the
contrastive recipe joins it to the backbone's features for the neighbour graph (what it
measured: docs/quality.md). As a layer inside the encoder it is computed for served images
exactly as for the training images, so the bundle contract (an encoder SavedModel,
nearest-centroid assignment) is unchanged.

For each pixel the central-difference gradient (each component zero on the first and last
column or row, where it cannot be centred) gives a magnitude and
an unsigned direction in [0, 180) degrees; the magnitude is shared between the two nearest
of ``bins`` direction centres (linear interpolation, wrapping at 180 degrees) and summed
over ``cell`` x ``cell`` pixel cells (pixels past the last whole cell are dropped). The
flattened histograms are scaled to unit length. Colour images are averaged to grey first.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from training.errors import ConfigError


@keras.saving.register_keras_serializable(package="aecluster")
class OrientationHistograms(keras.layers.Layer):
    """Images [B, H, W, C] -> unit-length histograms [B, (H // cell) * (W // cell) * bins]."""

    def __init__(self, cell: int = 4, bins: int = 9, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value, low in (("cell", cell, 1), ("bins", bins, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"orientation histograms: {name} must be an integer >= {low}, "
                                  f"got {value!r}")
        self.cell = cell
        self.bins = bins

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 4 or input_shape[1] is None or input_shape[2] is None:
            raise ConfigError("orientation histograms need images [batch, height, width, "
                              f"channels] of a fixed size, got {tuple(input_shape)}")
        if input_shape[1] < self.cell or input_shape[2] < self.cell:
            raise ConfigError(f"orientation histograms: images of {input_shape[1]}x"
                              f"{input_shape[2]} are smaller than one {self.cell}x{self.cell} cell")
        super().build(input_shape)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        height, width = input_shape[1], input_shape[2]
        if height is None or width is None:
            return (input_shape[0], None)
        return (input_shape[0], self.output_dim(height, width))

    def output_dim(self, height: int, width: int) -> int:
        return (height // self.cell) * (width // self.cell) * self.bins

    def call(self, images: tf.Tensor) -> tf.Tensor:
        grey = tf.reduce_mean(tf.cast(images, tf.float32), axis=-1)
        # Central differences; x is zero on the outer columns, y on the outer rows.
        gx = tf.pad(grey[:, :, 2:] - grey[:, :, :-2], [[0, 0], [0, 0], [1, 1]])
        gy = tf.pad(grey[:, 2:, :] - grey[:, :-2, :], [[0, 0], [1, 1], [0, 0]])
        magnitude = tf.sqrt(gx * gx + gy * gy)
        # Direction in bin units, [0, bins); bin k is centred on (k + 0.5) * 180 / bins degrees.
        direction = tf.math.floormod(tf.atan2(gy, gx), math.pi) * (self.bins / math.pi)
        centres = tf.range(self.bins, dtype=tf.float32) + 0.5
        offset = tf.abs(direction[..., None] - centres)
        offset = tf.minimum(offset, self.bins - offset)  # 0 and 180 degrees are one direction
        share = tf.nn.relu(1.0 - offset)  # the two nearest centres, weights summing to 1
        votes = magnitude[..., None] * share  # [B, H, W, bins]
        height = (votes.shape[1] // self.cell) * self.cell
        width = (votes.shape[2] // self.cell) * self.cell
        cells = tf.nn.avg_pool2d(votes[:, :height, :width, :], self.cell, self.cell, "VALID")
        flat = tf.reshape(cells, (-1, self.output_dim(votes.shape[1], votes.shape[2])))
        # A blank image has no edges: its histogram stays zero instead of dividing by zero.
        return tf.math.l2_normalize(flat, axis=1, epsilon=1e-12)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "cell": self.cell, "bins": self.bins}
