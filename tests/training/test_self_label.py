"""Self-labelling: random views only in training, and a fine-tune that learns real communities."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.cluster import KMeans

from training.data import DataOptions, load_dataset, to_numpy
from training.errors import ConfigError
from training.models.contrastive import build_backbone
from training.models.self_label import RandomViews, fit_self_labels


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits' training images and, as the communities to learn, k-means groups of them."""
    images, _ = to_numpy(load_dataset("digits", DataOptions()).train)
    groups = KMeans(6, n_init=3, random_state=0).fit_predict(images.reshape(len(images), -1))
    return images, groups.astype(np.int64)


def _shape(images: np.ndarray) -> tuple[int, int, int]:
    return (int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))


def _network(shape: tuple[int, int, int], classes: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    backbone = build_backbone(shape, (8, 16), 32)  # conv + batch norm, as the recipe's
    inputs = keras.Input(shape)
    outputs = keras.layers.Dense(classes, activation="softmax")(backbone(inputs))
    return keras.Model(inputs, outputs)


def test_random_views_change_images_only_in_training(digits: tuple[np.ndarray, np.ndarray]
                                                    ) -> None:
    images = tf.constant(digits[0][:16])
    views = RandomViews(min_crop=0.5, flip=True, relight=True, seed=0)
    np.testing.assert_array_equal(views(images, training=False).numpy(), images.numpy())
    changed = views(images, training=True).numpy()
    assert changed.shape == images.shape
    assert not np.allclose(changed, images.numpy())
    assert changed.min() >= 0.0 and changed.max() <= 1.0


def test_fit_self_labels_learns_the_communities_and_keeps_batch_norm_statistics(
        digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, groups = digits
    network = _network(_shape(images), 6)
    norms = [layer for layer in network._flatten_layers()
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms, "the backbone should hold batch-norm layers for this test to mean anything"
    before = [layer.moving_mean.numpy().copy() for layer in norms]
    chance = float(np.mean(network.predict(images, verbose=0).argmax(axis=1) == groups))
    losses = fit_self_labels(network, images, groups, epochs=20, min_crop=0.8, flip=False,
                             relight=False, seed=0)
    assert len(losses) == 20 and losses[-1] < losses[0]
    agreement = float(np.mean(network.predict(images, verbose=0).argmax(axis=1) == groups))
    # Six groups: chance is about 1/6; 20 epochs from scratch reach about 0.55.
    assert agreement > max(0.45, chance + 0.3), (chance, agreement)
    # Frozen during the fine-tune (inference mode), trainable again afterwards.
    for layer, mean in zip(norms, before, strict=True):
        np.testing.assert_array_equal(layer.moving_mean.numpy(), mean)
        assert layer.trainable


@pytest.mark.parametrize(
    ("epochs", "change", "message"),
    [
        (0, "none", "self-labelling needs at least one epoch, got 0"),
        (1, "short", "self-labelling: 1617 images but 5 labels"),
        (1, "too big", "self-labelling: labels must be in 0..5, got 0..6"),
        (1, "negative", "self-labelling: labels must be in 0..5, got -1..5"),
    ],
)
def test_bad_self_label_inputs_raise(digits: tuple[np.ndarray, np.ndarray], epochs: int,
                                     change: str, message: str) -> None:
    images, groups = digits
    labels = groups.copy()
    if change == "short":
        labels = labels[:5]
    elif change == "too big":
        labels[0] = 6
    elif change == "negative":
        labels[0] = -1
    with pytest.raises(ConfigError) as info:
        fit_self_labels(_network(_shape(images), 6), images, labels, epochs=epochs,
                        min_crop=1.0, flip=False, relight=False, seed=0)
    assert message in str(info.value)
