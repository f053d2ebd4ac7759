"""The contrastive backbone: views, NT-Xent against a NumPy reference, real steps."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from training.errors import ConfigError
from training.models.contrastive import (
    ContrastiveModel,
    augment_views,
    build_backbone,
    build_contrastive,
    nt_xent,
)

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """256 real digits in [0, 1], 8x8x1."""
    return (load_digits().images[:256] / 16.0).astype(np.float32)[..., None]


# --- augment_views ------------------------------------------------------------------------------


def test_views_keep_shape_dtype_and_range(digits: np.ndarray) -> None:
    seed = keras.random.SeedGenerator(0)
    views = augment_views(tf.constant(digits), seed, min_crop=0.4).numpy()
    assert views.shape == digits.shape and views.dtype == np.float32
    assert views.min() >= 0.0 and views.max() <= 1.0
    assert np.all(np.isfinite(views))
    # A view is a transformed copy, not noise: it stays closer to its own image than to others.
    own = np.abs(views - digits).mean(axis=(1, 2, 3))
    other = np.abs(views - np.roll(digits, 1, axis=0)).mean(axis=(1, 2, 3))
    assert np.mean(own < other) > 0.7


def test_two_calls_give_different_views(digits: np.ndarray) -> None:
    seed = keras.random.SeedGenerator(0)
    first = augment_views(tf.constant(digits), seed, min_crop=0.4).numpy()
    second = augment_views(tf.constant(digits), seed, min_crop=0.4).numpy()
    assert not np.allclose(first, second)
    assert np.mean(np.abs(first - second).max(axis=(1, 2, 3)) > 1e-3) > 0.9


def test_seeded_views_are_reproducible(digits: np.ndarray) -> None:
    one = augment_views(tf.constant(digits), keras.random.SeedGenerator(7), min_crop=0.5)
    two = augment_views(tf.constant(digits), keras.random.SeedGenerator(7), min_crop=0.5)
    other = augment_views(tf.constant(digits), keras.random.SeedGenerator(8), min_crop=0.5)
    np.testing.assert_array_equal(one.numpy(), two.numpy())
    assert not np.allclose(one.numpy(), other.numpy())


def test_views_of_a_constant_image_differ_only_in_light() -> None:
    # Crops and flips of a constant image are the same constant; brightness and contrast are
    # drawn per image, so each view is constant and the views differ.
    images = tf.fill((16, 8, 8, 1), 0.5)
    views = augment_views(images, keras.random.SeedGenerator(1), min_crop=1.0).numpy()
    np.testing.assert_allclose(views, views[:, :1, :1, :] * np.ones_like(views), atol=1e-6)
    assert len(np.unique(views[:, 0, 0, 0].round(4))) > 1


def test_views_are_mirrored_only_when_flips_are_on() -> None:
    # Left half white, right half black: a view keeps its left side brighter unless mirrored
    # (crops keep >= 88% of the width, and light changes preserve the order).
    images = np.zeros((64, 8, 8, 1), np.float32)
    images[:, :, :4] = 1.0

    def mirrored(flip: bool) -> np.ndarray:
        views = augment_views(tf.constant(images), keras.random.SeedGenerator(3), min_crop=1.0,
                              flip=flip).numpy()
        return views[:, :, :4].mean(axis=(1, 2, 3)) < views[:, :, 4:].mean(axis=(1, 2, 3))

    assert not mirrored(False).any()
    assert 10 < mirrored(True).sum() < 54  # about half of 64


def test_relight_widens_the_light_change_and_stays_in_range() -> None:
    # Constant mid-grey images: every view is a constant, so its value is the light change
    # alone. The second change adds its own spread on top of the first.
    images = tf.fill((512, 8, 8, 1), 0.5)

    def levels(relight: bool) -> np.ndarray:
        views = augment_views(images, keras.random.SeedGenerator(5), min_crop=1.0,
                              relight=relight).numpy()
        assert views.min() >= 0.0 and views.max() <= 1.0 and np.all(np.isfinite(views))
        return views[:, 0, 0, 0]

    once, twice = levels(False), levels(True)
    # One change: contrast U(0.6, 1.4) x 0.5 + brightness U(-0.2, 0.2), std about 0.163.
    assert once.std() == pytest.approx(0.163, abs=0.02)
    assert twice.std() > once.std() + 0.02
    assert not np.allclose(once, twice)


def test_relight_keeps_the_first_draws(digits: np.ndarray) -> None:
    # The second change is drawn after the first: the crop, flip and first light of a view
    # are the same with or without it, so on the pixels neither view clipped the relit view
    # is an affine function of the plain one (correlation 1).
    plain = augment_views(tf.constant(digits), keras.random.SeedGenerator(2), min_crop=0.5)
    relit = augment_views(tf.constant(digits), keras.random.SeedGenerator(2), min_crop=0.5,
                          relight=True)
    plain, relit = plain.numpy().reshape(len(digits), -1), relit.numpy().reshape(len(digits), -1)
    inside = (plain > 0.01) & (plain < 0.99) & (relit > 0.01) & (relit < 0.99)
    checked = 0
    for p, r, keep in zip(plain[:20], relit[:20], inside[:20], strict=True):
        if keep.sum() >= 3:
            np.testing.assert_allclose(np.corrcoef(p[keep], r[keep])[0, 1], 1.0, atol=1e-4)
            checked += 1
    assert checked >= 15


def test_build_contrastive_passes_relight_to_the_views(digits: np.ndarray) -> None:
    model = build_contrastive(SHAPE, filters=(8,), feature_dim=8, projection_dim=4,
                              relight=True, seed=0)
    assert model.relight is True
    assert build_contrastive(SHAPE, filters=(8,), feature_dim=8).relight is False
    data = tf.data.Dataset.from_tensor_slices((digits[:64], np.zeros(64))).batch(32)
    assert math.isfinite(model.fit(data, epochs=1, verbose=0).history["loss"][-1])


# --- nt_xent ------------------------------------------------------------------------------------


def _nt_xent_reference(z1: np.ndarray, z2: np.ndarray, temperature: float) -> np.ndarray:
    """SimCLR's loss written out per view: -log softmax over the other 2B - 1 views."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    losses = []
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        sims = {j: float(z[i] @ z[j]) / temperature for j in range(2 * n) if j != i}
        denominator = sum(math.exp(s) for s in sims.values())
        losses.append(-math.log(math.exp(sims[partner]) / denominator))
    return np.array(losses)


def test_nt_xent_matches_numpy_on_a_tiny_example() -> None:
    z1 = np.array([[1.0, 2.0], [-0.5, 1.0]], dtype=np.float32)
    z2 = np.array([[2.0, 1.5], [3.0, -1.0]], dtype=np.float32)
    for temperature in (0.5, 0.1, 1.0):
        got = nt_xent(tf.constant(z1), tf.constant(z2), temperature).numpy()
        assert got.shape == (4,)
        np.testing.assert_allclose(got, _nt_xent_reference(z1, z2, temperature), rtol=1e-5,
                                   atol=1e-6)


def test_nt_xent_matches_numpy_on_random_projections() -> None:
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 6, 5)).astype(np.float32)
    got = nt_xent(tf.constant(z1), tf.constant(z2), 0.5).numpy()
    np.testing.assert_allclose(got, _nt_xent_reference(z1, z2, 0.5), rtol=1e-5, atol=1e-6)


def test_aligned_pairs_score_lower_than_random_pairs() -> None:
    # Four pairs, each view identical to its partner and orthogonal to the other six views.
    aligned = tf.eye(4, 8)
    best = nt_xent(aligned, aligned * 3.0, 0.5).numpy()  # the scale is normalised away
    # -log(e^2 / (e^2 + 6 e^0)) for every view.
    np.testing.assert_allclose(best, np.log(np.exp(2.0) + 6.0) - 2.0, rtol=1e-6)
    rng = np.random.default_rng(1)
    random = np.array([nt_xent(tf.constant(rng.normal(size=(4, 8)), tf.float32),
                               tf.constant(rng.normal(size=(4, 8)), tf.float32), 0.5).numpy()
                       for _ in range(20)])
    assert best.max() < random.mean(axis=1).min()
    # Partners swapped between pairs: each view's partner is orthogonal and its lookalike is
    # a negative - worse than random.
    swapped = nt_xent(aligned, tf.roll(aligned, 1, axis=0), 0.5).numpy()
    assert swapped.mean() > random.mean()


# --- models -------------------------------------------------------------------------------------


def test_build_backbone_output_shape() -> None:
    backbone = build_backbone(SHAPE, (8, 16), 32)
    assert backbone.input_shape == (None, *SHAPE) and backbone.output_shape == (None, 32)
    assert backbone.get_layer("backbone_conv_1").output.shape[1:] == (2, 2, 16)
    assert backbone.predict(np.zeros((3, *SHAPE), np.float32), verbose=0).shape == (3, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"temperature": -0.5}, "temperature must be > 0"),
        ({"temperature": float("inf")}, "temperature must be > 0"),
        ({"temperature": float("nan")}, "temperature must be > 0"),
        ({"min_crop": 0.0}, "min_crop must be in (0, 1], got 0.0"),
        ({"min_crop": 1.5}, "min_crop must be in (0, 1]"),
        ({"min_crop": -0.2}, "min_crop must be in (0, 1]"),
    ],
)
def test_build_contrastive_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_contrastive(SHAPE, filters=(8,), feature_dim=8, **kwargs)
    assert message in str(info.value)


def test_a_few_steps_on_digits_lower_the_loss(digits: np.ndarray) -> None:
    model = build_contrastive(SHAPE, filters=(8, 16), feature_dim=32, projection_dim=16,
                              temperature=0.5, min_crop=0.5, learning_rate=3e-3, seed=0)
    assert isinstance(model, ContrastiveModel)
    # The projector: batch norm, ReLU and one dense layer to projection_dim.
    assert [type(layer).__name__ for layer in model.projector.layers] == [
        "BatchNormalization", "ReLU", "Dense"]
    assert model.projector.output_shape == (None, 16)
    data = tf.data.Dataset.from_tensor_slices((digits, np.zeros(len(digits)))).batch(64)
    before = [w.numpy().copy() for w in model.backbone.trainable_weights]
    initial = model.evaluate(data, verbose=0)
    history = model.fit(data, epochs=6, verbose=0).history
    assert list(history) == ["loss"]
    losses = history["loss"]
    assert all(math.isfinite(v) for v in losses)
    # Random embeddings give about log(2B - 1) per view; a few epochs must do better.
    assert initial == pytest.approx(math.log(127), abs=0.5)
    assert losses[-1] < losses[0] and losses[-1] < initial - 0.2
    after = model.backbone.trainable_weights
    # Adam holds the rate it was given over the whole fit.
    assert float(model.optimizer.learning_rate) == pytest.approx(3e-3)
    assert all(not np.allclose(b, a.numpy()) for b, a in zip(before, after, strict=True))
    # Inference is the backbone alone.
    features = model.predict(digits[:5], verbose=0)
    np.testing.assert_allclose(features, model.backbone.predict(digits[:5], verbose=0),
                               atol=1e-6)
    assert features.shape == (5, 32)
