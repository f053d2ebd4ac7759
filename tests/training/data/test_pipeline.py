"""Tests of training.data.pipeline: conversion, batching, shuffling, caching."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from training.data.base import DataOptions, Split
from training.data.pipeline import (
    Target,
    array_split,
    batches,
    convert,
    native_color,
    resolve_target,
    to_numpy,
)
from training.errors import ConfigError


def _rgb_images(n: int = 40, size: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _epoch_labels(dataset: tf.data.Dataset) -> list[int]:
    return [int(v) for _, y in dataset.as_numpy_iterator() for v in y]


def test_uint8_is_scaled_to_unit_range() -> None:
    image = tf.constant([[[0], [255]], [[51], [102]]], dtype=tf.uint8)
    out = convert(image, Target(2, 2, 1, "gray")).numpy()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], [[0.0, 1.0], [0.2, 0.4]], rtol=1e-6)


def test_colour_modes() -> None:
    rgb = _rgb_images(1)[0]
    gray = convert(tf.constant(rgb), Target(6, 6, 1, "gray")).numpy()[..., 0]
    expected = (rgb.astype(np.float32) / 255.0) @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    np.testing.assert_allclose(gray, expected, atol=1e-5)
    red = convert(tf.constant(rgb), Target(6, 6, 1, "red")).numpy()[..., 0]
    np.testing.assert_allclose(red, rgb[..., 0] / 255.0, atol=1e-6)
    single = rgb[..., :1]
    tiled = convert(tf.constant(single), Target(6, 6, 3, "rgb")).numpy()
    assert np.array_equal(tiled[..., 0], tiled[..., 2])
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=-1)
    kept = convert(tf.constant(rgba), Target(6, 6, 3, "rgb")).numpy()
    np.testing.assert_allclose(kept, rgb / 255.0, atol=1e-6)


def test_run_time_channel_count_gives_the_same_result_as_static() -> None:
    @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.uint8)])
    def dynamic(image: tf.Tensor) -> tf.Tensor:
        return convert(image, Target(3, 4, 1, "gray"))

    for channels in (1, 2, 3, 4):
        image = _rgb_images(1)[0, ..., :1].repeat(channels, axis=-1)
        image[..., :min(channels, 3)] = _rgb_images(1)[0, ..., :min(channels, 3)]
        static = convert(tf.constant(image), Target(3, 4, 1, "gray")).numpy()
        np.testing.assert_allclose(dynamic(tf.constant(image)).numpy(), static, atol=1e-6)


def test_resize_is_bilinear_and_skipped_at_the_same_size() -> None:
    image = tf.constant(_rgb_images(1)[0])
    out = convert(image, Target(12, 3, 3, "rgb"))
    assert out.shape == (12, 3, 3)
    expected = tf.image.resize(tf.cast(image, tf.float32) / 255.0, (12, 3), method="bilinear")
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-6)
    batch = convert(tf.constant(_rgb_images(5)), Target(6, 6, 3, "rgb"))
    # Same size: no resampling at all, so the values are exactly the scaled bytes.
    np.testing.assert_array_equal(batch.numpy(), _rgb_images(5) * np.float32(1.0 / 255.0))


def test_resolve_target_prefers_options() -> None:
    assert native_color(1) == "gray" and native_color(4) == "rgb"
    assert resolve_target((28, 28), "gray", DataOptions()) == Target(28, 28, 1, "gray")
    wanted = DataOptions(image_size=(32, 16), color="rgb")
    assert resolve_target((28, 28), "gray", wanted) == Target(32, 16, 3, "rgb")


def test_split_order_is_fixed_and_to_numpy_limits() -> None:
    images = _rgb_images()
    split = array_split(images, np.arange(40), Target(6, 6, 3, "rgb"))
    assert split.size == 40 and split.in_memory
    x, y = to_numpy(split)
    assert x.shape == (40, 6, 6, 3) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(y, np.arange(40))
    np.testing.assert_allclose(x, images / 255.0, atol=1e-6)
    x5, y5 = to_numpy(split, limit=5)
    assert x5.shape[0] == 5 and list(y5) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError):
        to_numpy(split, limit=-1)


@pytest.mark.parametrize("cache", [True, False])
def test_shuffle_is_seeded_complete_and_reshuffles_each_epoch(cache: bool) -> None:
    split = array_split(_rgb_images(), np.arange(40), Target(6, 6, 3, "rgb"))
    data = batches(split, 8, shuffle=True, seed=3, cache=cache)
    first, second = _epoch_labels(data), _epoch_labels(data)
    assert sorted(first) == list(range(40)) and sorted(second) == list(range(40))
    assert first != list(range(40)) and first != second
    again = batches(split, 8, shuffle=True, seed=3, cache=cache)
    assert _epoch_labels(again) == first
    assert _epoch_labels(batches(split, 8, shuffle=True, seed=4, cache=cache)) != first


def test_batches_carry_images_with_their_labels() -> None:
    images = _rgb_images()
    split = array_split(images, np.arange(40), Target(6, 6, 3, "rgb"))
    for cache in (True, False):
        for x, y in batches(split, 16, shuffle=True, seed=0, cache=cache).as_numpy_iterator():
            assert x.shape[1:] == (6, 6, 3) and x.dtype == np.float32 and y.dtype == np.int64
            np.testing.assert_allclose(x, images[y] / 255.0, atol=1e-6)
    unshuffled = batches(split, 16, shuffle=False, seed=0)
    assert [len(y) for _, y in unshuffled.as_numpy_iterator()] == [16, 16, 8]


def test_a_split_smaller_than_its_size_still_batches(caplog: pytest.LogCaptureFixture) -> None:
    base = array_split(_rgb_images(), np.arange(40), Target(6, 6, 3, "rgb"))
    filtered = Split(size=40, dataset=base.dataset.filter(lambda x, y: y % 2 == 0),
                     in_memory=True)
    labels = _epoch_labels(batches(filtered, 8, shuffle=True, seed=0))
    assert sorted(labels) == list(range(0, 40, 2))
    assert "yielded 20 items where its size says 40" in caplog.text


def test_split_without_reader_shuffles_through_a_buffer() -> None:
    base = array_split(_rgb_images(), np.arange(40), Target(6, 6, 3, "rgb"))
    plain = Split(size=40, dataset=base.dataset, in_memory=False)
    labels = _epoch_labels(batches(plain, 8, shuffle=True, seed=0, shuffle_buffer=40))
    assert sorted(labels) == list(range(40)) and labels != list(range(40))


def test_flip_augmentation_is_seeded_and_only_flips() -> None:
    images = _rgb_images()
    split = array_split(images, np.arange(40), Target(6, 6, 3, "rgb"))
    data = batches(split, 40, shuffle=False, seed=1, augment_flip=True)
    (x, _), = list(data.as_numpy_iterator())
    flipped = [not np.allclose(x[i], images[i] / 255.0, atol=1e-6) for i in range(40)]
    for i in range(40):
        want = images[i, :, ::-1] if flipped[i] else images[i]
        np.testing.assert_allclose(x[i], want / 255.0, atol=1e-6)
    assert 5 < sum(flipped) < 35
    (x_again, _), = list(batches(split, 40, shuffle=False, seed=1, augment_flip=True)
                         .as_numpy_iterator())
    np.testing.assert_array_equal(x, x_again)


def test_bad_batch_arguments_raise() -> None:
    split = array_split(_rgb_images(4), np.arange(4), Target(6, 6, 3, "rgb"))
    with pytest.raises(ConfigError, match="batch_size"):
        batches(split, 0, shuffle=False, seed=0)
    with pytest.raises(ConfigError, match="shuffle_buffer"):
        batches(split, 2, shuffle=True, seed=0, shuffle_buffer=0)


def test_batches_train_a_keras_autoencoder() -> None:
    import keras

    rng = np.random.default_rng(0)
    split = array_split(rng.random((64, 8, 8, 1), dtype=np.float32), np.zeros(64, np.int64),
                        Target(8, 8, 1, "gray"))
    data = batches(split, 16, shuffle=True, seed=0).map(lambda x, y: (x, x))
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Dense(4, activation="relu")(keras.layers.Flatten()(inputs))
    outputs = keras.layers.Reshape((8, 8, 1))(keras.layers.Dense(64, activation="sigmoid")(hidden))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(data, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
