"""Self-labelling: fine-tune the whole encoder to predict its own communities from new views.

SCAN's last step (Van Gansbeke et al., 2020) and DeepCluster's idea: once the communities
of the training images are found, the network from images to community probabilities
(backbone, histograms and head together) is trained further with cross-entropy to give each
image's community from a random view of it — the same crops, flips and light changes the
backbone learnt from. The head alone was trained on the plain images' fixed features; here
the backbone also learns which of its features tell the communities apart, and new images
get features shaped by the same views. On saved Fashion-MNIST features it raised held-out
majority accuracy by 0.002-0.004 (README, "What was tried").
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training.errors import ConfigError
from training.fit import EpochLogger
from training.interrupt import StopOnInterrupt
from training.models.contrastive import augment_views

logger = logging.getLogger(__name__)

# Lower than the backbone's 1e-3: the network starts trained and should move, not restart
# (the rate the saved-feature probe used).
SELF_LABEL_RATE = 3e-4


class RandomViews(keras.layers.Layer):
    """In training, one random view per image (:func:`augment_views`); at inference, the image."""

    def __init__(self, *, min_crop: float, flip: bool, relight: bool, seed: int,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_crop = min_crop
        self.flip = flip
        self.relight = relight
        self._seed = keras.random.SeedGenerator(seed, name="self_label_view_seed")

    def call(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        if not training:
            return images
        return augment_views(images, self._seed, min_crop=self.min_crop, flip=self.flip,
                             relight=self.relight)


def fit_self_labels(network: keras.Model, images: np.ndarray, labels: np.ndarray, *,
                    epochs: int, min_crop: float, flip: bool, relight: bool, seed: int,
                    batch_size: int = 256) -> list[float]:
    """Train ``network`` (images -> probabilities) in place on views; the per-epoch losses."""
    if epochs < 1:
        raise ConfigError(f"self-labelling needs at least one epoch, got {epochs}")
    if len(images) != len(labels):
        raise ConfigError(f"self-labelling: {len(images)} images but {len(labels)} labels")
    classes = int(network.output_shape[-1])
    if labels.size and not 0 <= int(labels.min()) <= int(labels.max()) < classes:
        raise ConfigError(f"self-labelling: labels must be in 0..{classes - 1}, got "
                          f"{int(labels.min())}..{int(labels.max())}")
    # Batch-norm layers stay in inference mode (Keras runs a non-trainable BatchNormalization
    # so): the head learnt the features its moving statistics give, and batch statistics of
    # views would shift them; with few backbone steps the two differ widely (on digits after
    # 2 epochs the tuned encoder kept 21 % of the communities with them, 85 % without).
    frozen = [layer for layer in network._flatten_layers()
              if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    for layer in frozen:
        layer.trainable = False
    views = RandomViews(min_crop=min_crop, flip=flip, relight=relight, seed=seed,
                        name="self_label_views")
    trainer = keras.Sequential([keras.Input(network.input_shape[1:]), views, network],
                               name="self_label_trainer")
    trainer.compile(optimizer=keras.optimizers.Adam(SELF_LABEL_RATE),
                    loss="sparse_categorical_crossentropy")
    dataset = (tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
               .shuffle(min(len(images), 65_536), seed=seed, reshuffle_each_iteration=True)
               .batch(batch_size).prefetch(2))
    try:
        result = trainer.fit(dataset, epochs=epochs, verbose=0, shuffle=False,
                             callbacks=[EpochLogger("self-labelling", epochs, every=1),
                                        StopOnInterrupt()])
    finally:
        for layer in frozen:
            layer.trainable = True
    losses = [float(v) for v in result.history["loss"]]
    if not all(math.isfinite(v) for v in losses):
        raise ConfigError(f"self-labelling diverged (loss {losses[-1]}); turn it off with "
                          "--self-label-epochs 0")
    return losses
