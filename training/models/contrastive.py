"""Augmentation-invariant features: a conv backbone trained with SimCLR's NT-Xent.

Two random views of every image in a batch (a random resized crop, a horizontal flip, a
brightness/contrast change) are embedded; with NT-Xent each view must pick its partner out
of the other ``2B - 2`` views (Chen et al., 2020). What this teaches — that an image and
its shifted, rescaled, re-lit copy are the same thing — is what pixel-space autoencoders
lack (how the two compare: docs/quality.md). The backbone's features then feed the
neighbourhood head.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
import tensorflow as tf

from training.errors import ConfigError
from training.models.base import StepModel

logger = logging.getLogger(__name__)


def augment_views(images: tf.Tensor, seed: keras.random.SeedGenerator, *,
                  min_crop: float, flip: bool = True, relight: bool = False) -> tf.Tensor:
    """One random view per image: resized crop of ``min_crop``..1 of the area, flip, light.

    ``flip=False`` never mirrors: for images whose mirror is another thing (digits, text,
    oriented scans) a flip-invariant embedding would merge what should stay apart.
    ``relight=True`` applies a second, milder light change (contrast x U(0.7, 1.3),
    brightness +-0.2) after the clipped first one. What each view setting measured:
    docs/quality.md.
    """
    n = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    area = keras.random.uniform((n,), min_crop, 1.0, seed=seed)
    log_ratio = keras.random.uniform((n,), -0.25, 0.25, seed=seed)
    ratio = tf.exp(log_ratio)
    side = tf.sqrt(area)
    h = tf.clip_by_value(side * tf.sqrt(ratio), 0.2, 1.0)
    w = tf.clip_by_value(side / tf.sqrt(ratio), 0.2, 1.0)
    y1 = keras.random.uniform((n,), seed=seed) * (1.0 - h)
    x1 = keras.random.uniform((n,), seed=seed) * (1.0 - w)
    # Drawn even without flips, so the light draws below come from the same seed stream.
    mirrored = keras.random.uniform((n,), seed=seed) < 0.5
    if not flip:
        mirrored = tf.zeros_like(mirrored)
    # crop_and_resize mirrors a crop whose x1 > x2: the flip costs nothing extra.
    left = tf.where(mirrored, x1 + w, x1)
    right = tf.where(mirrored, x1, x1 + w)
    boxes = tf.stack([y1, left, y1 + h, right], axis=1)
    views = tf.image.crop_and_resize(images, boxes, tf.range(n), (height, width))
    views = _light_change(views, seed, contrast=0.4, brightness=0.2)
    if relight:
        # Drawn after the first light change, so views without it keep their seed stream.
        views = _light_change(views, seed, contrast=0.3, brightness=0.2)
    return views


def _light_change(views: tf.Tensor, seed: keras.random.SeedGenerator, *, contrast: float,
                  brightness: float) -> tf.Tensor:
    """Per image: x U(1 - contrast, 1 + contrast), + U(-brightness, brightness), clip to [0, 1]."""
    shape = (tf.shape(views)[0], 1, 1, 1)
    scale = keras.random.uniform(shape, 1.0 - contrast, 1.0 + contrast, seed=seed)
    shift = keras.random.uniform(shape, -brightness, brightness, seed=seed)
    return tf.clip_by_value(views * scale + shift, 0.0, 1.0)


def nt_xent(z1: tf.Tensor, z2: tf.Tensor, temperature: float) -> tf.Tensor:
    """Per-view NT-Xent loss of paired projections ``z1[i] <-> z2[i]`` ([2B])."""
    z = tf.math.l2_normalize(tf.concat([z1, z2], axis=0), axis=1)
    n = tf.shape(z1)[0]
    logits = tf.matmul(z, z, transpose_b=True) / temperature
    # A view is not its own negative: mask the diagonal out of the softmax.
    logits -= tf.eye(2 * n, dtype=logits.dtype) * 1e9
    partners = tf.concat([tf.range(n, 2 * n), tf.range(0, n)], axis=0)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(partners, logits)


def build_backbone(input_shape: tuple[int, int, int], filters: tuple[int, ...],
                   feature_dim: int) -> keras.Model:
    """3x3 stride-2 conv + batch-norm + ReLU levels, flatten, dense to ``feature_dim``."""
    inputs = keras.Input(input_shape, name="images")
    x = inputs
    for i, f in enumerate(filters):
        x = keras.layers.Conv2D(f, 3, strides=2, padding="same", use_bias=False,
                                name=f"backbone_conv_{i}")(x)
        x = keras.layers.BatchNormalization(name=f"backbone_bn_{i}")(x)
        x = keras.layers.ReLU(name=f"backbone_relu_{i}")(x)
    x = keras.layers.Flatten(name="backbone_flatten")(x)
    outputs = keras.layers.Dense(feature_dim, name="backbone_features")(x)
    return keras.Model(inputs, outputs, name="backbone")


class ContrastiveModel(StepModel):
    """Backbone + projection MLP trained with NT-Xent on two views per image.

    ``_loss`` gives NT-Xent per view; the step averages it. Train with ``model.fit(dataset)``
    on ``(images, labels)`` batches (labels ignored); the metric is ``loss``. Only
    ``backbone`` is kept afterwards.
    """

    def __init__(self, backbone: keras.Model, *, projection_dim: int, temperature: float,
                 min_crop: float, seed: int, flip: bool = True, relight: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", "contrastive"), **kwargs)
        self.backbone = backbone
        width = int(backbone.output_shape[-1])
        self.projector = keras.Sequential(
            [keras.Input((width,)), keras.layers.BatchNormalization(name="projector_bn"),
             keras.layers.ReLU(name="projector_relu"),
             keras.layers.Dense(projection_dim, name="projector_out")],
            name="projector")
        self.temperature = temperature
        self.min_crop = min_crop
        self.flip = flip
        self.relight = relight
        self._seed = keras.random.SeedGenerator(seed, name="view_seed")
        self._loss_tracker = keras.metrics.Mean(name="loss")
        self.built = True

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self._loss_tracker]

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.backbone(inputs, training=training)

    def _loss(self, images: tf.Tensor, training: bool) -> tf.Tensor:
        views = [augment_views(images, self._seed, min_crop=self.min_crop, flip=self.flip,
                               relight=self.relight)
                 for _ in range(2)]
        both = self.projector(self.backbone(tf.concat(views, axis=0), training=training),
                              training=training)
        z1, z2 = tf.split(both, 2, axis=0)
        return nt_xent(z1, z2, self.temperature)

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            per_view = self._loss(images, training=True)
            loss = self.scale_for_replicas(tf.reduce_mean(per_view))
        weights = self.trainable_weights
        self.optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))
        self._loss_tracker.update_state(per_view)
        return self.step_logs([self._loss_tracker])

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        self._loss_tracker.update_state(self._loss(images, training=False))
        return self.step_logs([self._loss_tracker])


def build_contrastive(input_shape: tuple[int, int, int], *, filters: tuple[int, ...],
                      feature_dim: int = 256, projection_dim: int = 128,
                      temperature: float = 0.5, min_crop: float = 0.4, flip: bool = True,
                      relight: bool = False, learning_rate: float = 1e-3,
                      seed: int = 0) -> ContrastiveModel:
    """Build and compile the contrastive model (call inside ``strategy.scope()``).

    ``projection_dim`` and ``temperature`` are NT-Xent's; Adam holds ``learning_rate``
    over the whole fit.
    """
    if not 0 < temperature < math.inf:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    if not 0 < min_crop <= 1:
        raise ConfigError(f"min_crop must be in (0, 1], got {min_crop!r}")
    keras.utils.set_random_seed(seed)
    model = ContrastiveModel(build_backbone(input_shape, filters, feature_dim),
                             projection_dim=projection_dim, temperature=temperature,
                             min_crop=min_crop, flip=flip, relight=relight, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate))
    model.build_optimizer()
    logger.info("built contrastive backbone for %dx%dx%d images: conv %s, %d features, "
                "nt-xent loss, learning rate %g, %d trainable weights", *input_shape,
                "-".join(map(str, filters)), feature_dim, learning_rate,
                sum(math.prod(w.shape) for w in model.trainable_weights))
    return model
