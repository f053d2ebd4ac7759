"""A small CNN classifier whose penultimate layer serves as the perceptual loss's features."""

from __future__ import annotations

import logging
from typing import Any

import keras
import tensorflow as tf

from training.errors import ConfigError, DataError
from training.interrupt import StopOnInterrupt, stoppable
from training.loop import EpochLogger, check_image_batches, format_metrics
from training.models.base import StepModel

logger = logging.getLogger(__name__)


class FeatureClassifier(StepModel):
    """Trains a functional classifier network with sparse cross-entropy; tracks accuracy.

    Its own steps (rather than ``compile(loss=..., metrics=...)``) let it train under any
    strategy, multi-worker included, like the autoencoder.
    """

    def __init__(self, network: keras.Model, **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", "feature_classifier"), **kwargs)
        self.network = network
        self._trackers = [keras.metrics.Mean(name="loss"), keras.metrics.Mean(name="accuracy")]
        self.built = True

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """The epoch-mean trackers: loss and accuracy."""
        return list(self._trackers)

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Class probabilities for a batch of images."""
        return self.network(inputs, training=training)

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        """One optimiser step on labelled images."""
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            probabilities = self.network(images, training=True)
            per_image = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
            scaled = self.optimizer.scale_loss(self.scale_for_replicas(tf.reduce_mean(per_image)))
        weights = self.trainable_weights
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights, strict=True))
        return self._update(labels, probabilities, per_image)

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        """Loss and accuracy of a labelled batch."""
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        probabilities = self.network(images, training=False)
        per_image = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
        return self._update(labels, probabilities, per_image)

    def _update(self, labels: tf.Tensor, probabilities: tf.Tensor,
                per_image: tf.Tensor) -> dict[str, tf.Tensor]:
        predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        correct = tf.cast(tf.equal(predicted, tf.cast(labels, tf.int64)), tf.float32)
        self._trackers[0].update_state(per_image)
        self._trackers[1].update_state(correct)
        return self.step_logs(self._trackers)


def build_classifier(input_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    """Two 3x3 conv blocks, pooled to at most 7x7, flattened; a 64-unit ``features`` layer.

    Flattening keeps where in the image a pattern is, which global average pooling threw
    away: on Fashion-MNIST (batch 64) the flattened classifier reaches 0.90 validation
    accuracy after 3 epochs and 0.913 after 10, the pooled one 0.78 and 0.84, and the
    perceptual loss is only as good as the classifier's features. Each block pools only
    while the map stays at least 2x2, so tiny images work; large ones are pooled further
    before flattening so the dense layer stays small (at most 7*7*64 inputs).
    """
    images = keras.Input(shape=input_shape, name="images")
    x = images
    height, width = input_shape[0], input_shape[1]
    for i, filters in enumerate((32, 64), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                name=f"cls_conv_{i}")(x)
        if min(height, width) >= 4:
            x = keras.layers.MaxPooling2D(2, name=f"cls_pool_{i}")(x)
            height, width = height // 2, width // 2
    extra = 0
    while max(height, width) > 7 and min(height, width) >= 4:
        extra += 1
        x = keras.layers.MaxPooling2D(2, name=f"cls_shrink_{extra}")(x)
        height, width = height // 2, width // 2
    x = keras.layers.Flatten(name="cls_flatten")(x)
    features = keras.layers.Dense(64, activation="relu", name="features")(x)
    probabilities = keras.layers.Dense(n_classes, activation="softmax",
                                       name="class_probabilities")(features)
    return keras.Model(images, probabilities, name="feature_classifier")


def train_feature_classifier(train: tf.data.Dataset, heldout: tf.data.Dataset | None,
                             input_shape: tuple[int, int, int], n_classes: int, *,
                             epochs: int, seed: int) -> keras.Model:
    """Train a classifier on labelled batches and return its frozen feature model.

    Batches are ``(images [B,H,W,C] in [0, 1], labels [B])`` with every label in
    ``[0, n_classes)``; a label outside raises :class:`DataError`. The returned model maps
    images to the 64 features of the classifier's penultimate layer and has
    ``trainable=False``. Call it inside the strategy scope the autoencoder will use.
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ConfigError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    shape = tuple(int(d) for d in input_shape)
    for dataset, what in ((train, "training"), (heldout, "held-out")):
        if dataset is None:
            continue
        check_image_batches(dataset, shape, what)
        if not isinstance(dataset.element_spec, tuple) or len(dataset.element_spec) < 2:
            raise DataError(f"the {what} dataset has no labels: the perceptual loss's feature "
                            "classifier needs (images, labels) batches")

    def checked(images: tf.Tensor, labels: tf.Tensor, *rest: tf.Tensor) -> tuple[tf.Tensor, ...]:
        labels = tf.cast(labels, tf.int64)
        # Failing inside the pipeline names the problem; the loss would only say "out of range".
        asserts = [
            tf.debugging.assert_greater_equal(labels, tf.constant(0, tf.int64),
                                              message="label_below_zero"),
            tf.debugging.assert_less(labels, tf.constant(n_classes, tf.int64),
                                     message="label_too_large"),
        ]
        with tf.control_dependencies(asserts):
            return (tf.identity(images), tf.identity(labels), *rest)

    keras.utils.set_random_seed(seed)
    network = build_classifier(shape, n_classes)  # type: ignore[arg-type]
    model = FeatureClassifier(network)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.build_optimizer()
    callbacks = [EpochLogger("feature classifier", epochs), StopOnInterrupt()]
    try:
        with stoppable():
            history = model.fit(train.map(checked),
                                validation_data=None if heldout is None else heldout.map(checked),
                                epochs=epochs, callbacks=callbacks,
                                shuffle=False, verbose=0)
    except tf.errors.InvalidArgumentError as exc:
        if "label_below_zero" in str(exc) or "label_too_large" in str(exc):
            raise DataError(
                f"the feature classifier needs every label in [0, {n_classes}); some batch has "
                "an unknown (-1) or larger label: use labelled data only for the perceptual loss"
            ) from None
        raise
    final = {name: values[-1] for name, values in history.history.items()}
    logger.info("feature classifier trained: %s", format_metrics(final))

    extractor = keras.Model(network.input, network.get_layer("features").output,
                            name="feature_extractor")
    extractor.trainable = False
    return extractor
