"""Per-image losses, KL term and PSNR against hand-computed values."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.errors import ConfigError
from training.losses import (
    bce_loss,
    kl_divergence,
    mse_loss,
    perceptual_loss,
    psnr,
    reconstruction_loss,
)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, size=(4, 6, 5, 2)).astype("float32")


def _flatten_extractor(shape: tuple[int, int, int]) -> keras.Model:
    """Features = the pixels themselves: the perceptual loss becomes a flip-aware MSE."""
    inputs = keras.Input(shape=shape)
    return keras.Model(inputs, keras.layers.Flatten()(inputs))


def _projection_extractor(shape: tuple[int, int, int], seed: int) -> keras.Model:
    """A fixed random linear map to 7 features, reproducible in NumPy."""
    inputs = keras.Input(shape=shape)
    dense = keras.layers.Dense(7, use_bias=False)
    outputs = dense(keras.layers.Flatten()(inputs))
    kernel = np.random.default_rng(seed).normal(size=(int(np.prod(shape)), 7)).astype("float32")
    dense.set_weights([kernel])
    model = keras.Model(inputs, outputs)
    model.trainable = False
    return model


def test_psnr_known_values() -> None:
    x = np.zeros((3, 4, 4, 1), dtype="float32")
    y = np.stack([np.full((4, 4, 1), v, dtype="float32") for v in (0.1, 1.0, 0.0)])
    # MSE 0.01 -> 20 dB; MSE 1 -> 0 dB; identical -> the 100 dB cap.
    np.testing.assert_allclose(psnr(x, y).numpy(), [20.0, 0.0, 100.0], atol=1e-4)


def test_psnr_is_per_image_and_symmetric(images: np.ndarray) -> None:
    other = np.clip(images + 0.05 * np.arange(1, 5)[:, None, None, None], 0, 1).astype("float32")
    values = psnr(images, other).numpy()
    expected = 10 * np.log10(1 / np.mean((images - other) ** 2, axis=(1, 2, 3)))
    assert values.shape == (4,)
    np.testing.assert_allclose(values, expected, rtol=1e-5)
    np.testing.assert_allclose(psnr(other, images).numpy(), values, rtol=1e-6)
    assert values[0] > values[-1]  # more noise, lower PSNR


def test_mse_per_image_mean_and_sum(images: np.ndarray) -> None:
    recon = images[::-1].copy()
    per_pixel = (images - recon) ** 2
    np.testing.assert_allclose(mse_loss(images, recon).numpy(), per_pixel.mean(axis=(1, 2, 3)),
                               rtol=1e-6)
    np.testing.assert_allclose(mse_loss(images, recon, reduction="sum").numpy(),
                               per_pixel.sum(axis=(1, 2, 3)), rtol=1e-5)


def test_bce_matches_reference_and_stays_finite_at_saturation(images: np.ndarray) -> None:
    recon = np.clip(images[::-1], 0.01, 0.99)
    reference = -(images * np.log(recon) + (1 - images) * np.log(1 - recon)).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(bce_loss(images, recon).numpy(), reference, rtol=1e-5)
    saturated = bce_loss(np.zeros((1, 2, 2, 1), "float32"), np.ones((1, 2, 2, 1), "float32"))
    assert np.all(np.isfinite(saturated.numpy())) and saturated.numpy()[0] > 10


def test_kl_divergence_zero_at_prior_and_known_value() -> None:
    zeros = np.zeros((2, 3), dtype="float32")
    np.testing.assert_allclose(kl_divergence(zeros, zeros).numpy(), [0.0, 0.0], atol=1e-7)
    mean = np.array([[1.0, -2.0]], dtype="float32")
    log_var = np.array([[0.5, -1.0]], dtype="float32")
    expected = -0.5 * np.sum(1 + log_var - mean**2 - np.exp(log_var))
    np.testing.assert_allclose(kl_divergence(mean, log_var).numpy(), [expected], rtol=1e-6)


def test_perceptual_takes_min_over_the_horizontal_flip(images: np.ndarray) -> None:
    extractor = _flatten_extractor(images.shape[1:])
    mirrored = images[:, :, ::-1, :].copy()
    # A mirrored reconstruction costs nothing, although its pixel error is large.
    np.testing.assert_allclose(perceptual_loss(extractor, images, mirrored).numpy(), 0, atol=1e-7)
    assert np.all(mse_loss(images, mirrored).numpy() > 0.01)
    np.testing.assert_allclose(perceptual_loss(extractor, images, images).numpy(), 0, atol=1e-7)

    recon = np.clip(images * 0.7 + 0.1, 0, 1).astype("float32")
    direct = ((images - recon) ** 2).mean(axis=(1, 2, 3))
    flipped = ((mirrored - recon) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(perceptual_loss(extractor, images, recon).numpy(),
                               np.minimum(direct, flipped), rtol=1e-5)


def test_perceptual_uses_the_extractor_features(images: np.ndarray) -> None:
    extractor = _projection_extractor(images.shape[1:], seed=1)
    kernel = extractor.get_weights()[0]
    recon = np.random.default_rng(2).uniform(size=images.shape).astype("float32")

    def features(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) @ kernel

    direct = ((features(images) - features(recon)) ** 2).sum(axis=1)
    flipped = ((features(images[:, :, ::-1]) - features(recon)) ** 2).sum(axis=1)
    got = perceptual_loss(extractor, images, recon, reduction="sum").numpy()
    np.testing.assert_allclose(got, np.minimum(direct, flipped), rtol=1e-4)


def test_perceptual_gradient_reaches_only_the_reconstruction(images: np.ndarray) -> None:
    extractor = _projection_extractor(images.shape[1:], seed=3)
    target = tf.Variable(images)
    recon = tf.Variable(images[::-1].copy())
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(perceptual_loss(extractor, target, recon))
    grad_target, grad_recon = tape.gradient(loss, [target, recon])
    assert grad_target is None or not np.any(grad_target.numpy())
    assert np.any(grad_recon.numpy())


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_reconstruction_loss_factory(kind: str, images: np.ndarray) -> None:
    recon = np.clip(images[::-1], 0.05, 0.95)
    direct = {"mse": mse_loss, "bce": bce_loss}[kind](images, recon, reduction="sum")
    loss = reconstruction_loss(kind, reduction="sum")  # type: ignore[arg-type]
    np.testing.assert_allclose(loss(images, recon).numpy(), direct.numpy(), rtol=1e-6)


def test_reconstruction_loss_errors() -> None:
    with pytest.raises(ConfigError, match="feature extractor"):
        reconstruction_loss("perceptual")
    with pytest.raises(ConfigError, match="unknown loss"):
        reconstruction_loss("l1")  # type: ignore[arg-type]
