"""Reconstruction losses, the VAE's KL term and PSNR.

Every function returns one value per image (shape ``[B]``); averaging over the batch is
left to the training step, so the metrics can weight every image equally across batches
and replicas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import keras
import tensorflow as tf

from training.config import LossKind
from training.errors import ConfigError

Reduction = Literal["mean", "sum"]
ReconstructionLoss = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
"""``loss(target, reconstruction) -> [B]``: one value per image."""


def _per_image(values: tf.Tensor, reduction: Reduction) -> tf.Tensor:
    """Reduce every axis but the batch axis."""
    flat = tf.reshape(values, (tf.shape(values)[0], -1))
    return tf.reduce_sum(flat, axis=1) if reduction == "sum" else tf.reduce_mean(flat, axis=1)


def mse_loss(target: tf.Tensor, reconstruction: tf.Tensor, *,
             reduction: Reduction = "mean") -> tf.Tensor:
    """Squared error per image, averaged (or summed) over pixels and channels."""
    target = tf.cast(target, tf.float32)
    reconstruction = tf.cast(reconstruction, tf.float32)
    return _per_image(tf.square(target - reconstruction), reduction)


def bce_loss(target: tf.Tensor, reconstruction: tf.Tensor, *,
             reduction: Reduction = "mean") -> tf.Tensor:
    """Binary cross-entropy per image between pixel values in [0, 1] and sigmoid outputs.

    The decoder ends in a sigmoid (its output is served), so the loss works on
    probabilities; clipping keeps log() finite where the sigmoid saturates.
    """
    target = tf.cast(target, tf.float32)
    eps = keras.config.epsilon()
    prob = tf.clip_by_value(tf.cast(reconstruction, tf.float32), eps, 1.0 - eps)
    values = -(target * tf.math.log(prob) + (1.0 - target) * tf.math.log(1.0 - prob))
    return _per_image(values, reduction)


def perceptual_loss(feature_extractor: keras.Model, target: tf.Tensor,
                    reconstruction: tf.Tensor, *, reduction: Reduction = "mean") -> tf.Tensor:
    """Squared feature distance per image, the smaller of target and mirrored target.

    A reconstruction is not penalised for being the left-right mirror of its target: many
    image classes (shoes, bags, faces) come in both orientations, and the clusters should
    group by content rather than by facing direction.
    """
    target = tf.cast(target, tf.float32)
    reconstruction = tf.cast(reconstruction, tf.float32)
    mirrored = tf.reverse(target, axis=[2])
    # One call on the stacked batch instead of three: the extractor runs once per step.
    stacked = tf.concat([target, mirrored, reconstruction], axis=0)
    features = tf.cast(feature_extractor(stacked, training=False), tf.float32)
    f_target, f_mirrored, f_recon = tf.split(features, 3, axis=0)
    # The target side is a fixed reference; only the reconstruction should move.
    f_target = tf.stop_gradient(f_target)
    f_mirrored = tf.stop_gradient(f_mirrored)
    direct = _per_image(tf.square(f_target - f_recon), reduction)
    flipped = _per_image(tf.square(f_mirrored - f_recon), reduction)
    return tf.minimum(direct, flipped)


def reconstruction_loss(kind: LossKind, *, feature_extractor: keras.Model | None = None,
                        reduction: Reduction = "mean") -> ReconstructionLoss:
    """The per-image loss function ``(target, reconstruction) -> [B]`` named by ``kind``."""
    if kind == "mse":
        return lambda t, r: mse_loss(t, r, reduction=reduction)
    if kind == "bce":
        return lambda t, r: bce_loss(t, r, reduction=reduction)
    if kind == "perceptual":
        if feature_extractor is None:
            raise ConfigError(
                "loss 'perceptual' needs a feature extractor: train one with "
                "train_feature_classifier (requires labels) or choose loss 'mse' or 'bce'"
            )
        extractor = feature_extractor
        return lambda t, r: perceptual_loss(extractor, t, r, reduction=reduction)
    raise ConfigError(f"unknown loss {kind!r}: choose 'mse', 'bce' or 'perceptual'")


def kl_divergence(z_mean: tf.Tensor, z_log_var: tf.Tensor) -> tf.Tensor:
    """KL(q(z|x) || N(0, I)) per image, summed over the latent dimensions."""
    z_mean = tf.cast(z_mean, tf.float32)
    z_log_var = tf.cast(z_log_var, tf.float32)
    return -0.5 * tf.reduce_sum(1.0 + z_log_var - tf.square(z_mean) - tf.exp(z_log_var), axis=1)


def psnr(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Peak signal-to-noise ratio per image in dB, for values in [0, 1].

    ``10 * log10(1 / MSE)`` over all pixels and channels of each image. Identical images
    would give infinity; the MSE is floored at 1e-10 so they give 100 dB and averages stay
    finite.
    """
    mse = mse_loss(x, y)
    return 10.0 * tf.math.log(1.0 / tf.maximum(mse, 1e-10)) / tf.math.log(10.0)
