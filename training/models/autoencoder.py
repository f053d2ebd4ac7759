"""The trainable autoencoder: encoder + decoder with its own training and evaluation steps,
and the loop that fits it."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from training.config import AutoencoderConfig
from training.errors import ConfigError
from training.loop import fit_model
from training.losses import ReconstructionLoss, kl_divergence, psnr, reconstruction_loss
from training.models.architectures import Networks, build_networks, conv_levels
from training.models.base import StepModel

logger = logging.getLogger(__name__)


class Autoencoder(StepModel):
    """An autoencoder trainable with ``model.fit(dataset)`` on ``(images, labels)`` batches.

    ``encoder`` (images -> embedding; for the VAE the posterior mean) and ``decoder``
    (embedding -> reconstruction in [0, 1]) are functional models, exported separately.
    Calling the model returns the deterministic reconstruction ``decoder(encoder(x))``.
    Labels in the batches are ignored. Build it with :func:`build_autoencoder`.

    Metrics, one value per image averaged over the epoch: ``loss``, ``psnr`` (dB) and for
    the VAE ``reconstruction_loss`` and ``kl_loss``. The VAE's reconstruction term is
    summed over pixels (features for the perceptual loss) per image, the scale at which
    ``kl_weight=1`` gives the usual evidence lower bound; the other kinds average over pixels.
    """

    def __init__(self, networks: Networks, config: AutoencoderConfig, *, seed: int = 0,
                 feature_extractor: keras.Model | None = None, **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", f"{config.kind}_autoencoder"), **kwargs)
        self.encoder = networks.encoder
        self.decoder = networks.decoder
        self.posterior = networks.posterior
        self.config = config
        # An attribute, so Keras tracks it: its frozen weights are listed with the model's.
        self.feature_extractor = feature_extractor
        self._loss_fn: ReconstructionLoss = reconstruction_loss(
            config.loss, feature_extractor=feature_extractor,
            reduction="sum" if self.posterior is not None else "mean",
        )
        # Separate seeded streams: adding noise must not shift the VAE's samples.
        self._noise_seed = keras.random.SeedGenerator(seed, name="denoise_seed")
        self._sample_seed = keras.random.SeedGenerator(seed + 1, name="sampling_seed")
        names = ["loss", "psnr"]
        if self.posterior is not None:
            names += ["reconstruction_loss", "kl_loss"]
        self._trackers = [keras.metrics.Mean(name=n) for n in names]
        # The parts are built functional models, so there is nothing left to build.
        self.built = True

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """The epoch-mean trackers; Keras resets them at every epoch and evaluation."""
        return list(self._trackers)

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Deterministic reconstruction of ``inputs`` (the VAE decodes its posterior mean)."""
        return self.decoder(self.encoder(inputs, training=training), training=training)

    def training_pair(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(inputs, targets) of one training step: noisy inputs when denoising, clean targets."""
        sigma = self.config.denoise_sigma
        if sigma <= 0:
            return images, images
        noise = keras.random.normal(tf.shape(images), stddev=sigma, dtype=images.dtype,
                                    seed=self._noise_seed)
        return tf.clip_by_value(images + noise, 0.0, 1.0), images

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        """One optimiser step on a batch; returns the epoch-so-far metrics."""
        images = _images_of(data)
        inputs, targets = self.training_pair(images)
        with tf.GradientTape() as tape:
            terms = self._terms(inputs, targets, training=True)
            loss = self.scale_for_replicas(tf.reduce_mean(terms["loss"]))
            scaled = self.optimizer.scale_loss(loss)
        weights = self.trainable_weights
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights, strict=True))
        return self._update_metrics(terms)

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        """Evaluate a batch: clean inputs; the VAE decodes the posterior mean (no sampling)."""
        images = _images_of(data)
        return self._update_metrics(self._terms(images, images, training=False))

    def _terms(self, inputs: tf.Tensor, targets: tf.Tensor, *,
               training: bool) -> dict[str, tf.Tensor]:
        """Per-image loss terms and PSNR of one forward pass."""
        if self.posterior is None:
            reconstruction = self.decoder(self.encoder(inputs, training=training),
                                          training=training)
            loss = self._loss_fn(targets, reconstruction)
            return {"loss": loss, "psnr": psnr(targets, reconstruction)}
        z_mean, z_log_var = self.posterior(inputs, training=training)
        z = z_mean
        if training:
            eps = keras.random.normal(tf.shape(z_mean), dtype=z_mean.dtype,
                                      seed=self._sample_seed)
            z = z_mean + tf.exp(0.5 * z_log_var) * eps
        reconstruction = self.decoder(z, training=training)
        rec = self._loss_fn(targets, reconstruction)
        kl = kl_divergence(z_mean, z_log_var)
        return {
            "loss": rec + self.config.kl_weight * kl,
            "psnr": psnr(targets, reconstruction),
            "reconstruction_loss": rec,
            "kl_loss": kl,
        }

    def _update_metrics(self, terms: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        for tracker in self._trackers:
            tracker.update_state(terms[tracker.name])
        return self.step_logs(self._trackers)


def _images_of(data: Any) -> tf.Tensor:
    """The images of a batch that may also carry labels (and sample weights)."""
    images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    return images


def build_autoencoder(config: AutoencoderConfig, input_shape: tuple[int, int, int], *,
                      seed: int = 0, feature_extractor: keras.Model | None = None
                      ) -> Autoencoder:
    """Build and compile the autoencoder ``config`` describes for images of ``input_shape``.

    Seeds Python, NumPy and TensorFlow with ``seed`` first, so the same config gives
    the same initial weights. Call inside ``strategy.scope()`` to train distributed. The
    perceptual loss needs ``feature_extractor`` (see ``train_feature_classifier``), built
    in the same scope, taking images of ``input_shape``.
    """
    shape = _checked_shape(input_shape)
    if config.loss == "perceptual":
        if feature_extractor is None:
            raise ConfigError(
                "loss 'perceptual' needs a feature extractor: train one with "
                "train_feature_classifier (requires labels) or choose loss 'mse' or 'bce'"
            )
        expected = tuple(feature_extractor.input_shape[1:])
        if expected != shape:
            raise ConfigError(
                f"the feature extractor takes images of shape {expected}, but the autoencoder "
                f"is built for {shape}: train the extractor on the same images"
            )
        feature_extractor.trainable = False
    elif feature_extractor is not None:
        logger.warning("feature_extractor is ignored: loss is %r, not 'perceptual'", config.loss)
        feature_extractor = None

    keras.utils.set_random_seed(seed)
    model = Autoencoder(build_networks(config, shape), config, seed=seed,
                        feature_extractor=feature_extractor)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate))
    model.build_optimizer()
    if config.kind == "dense":
        layout = "dense " + "-".join(str(u) for u in config.dense_units)
    else:
        layout = f"{conv_levels(shape[0], shape[1], len(config.conv_filters))} conv levels"
    logger.info(
        "built %s autoencoder for %dx%dx%d images: %s, latent %d, loss %s, %d trainable weights",
        config.kind, *shape, layout, config.latent_dim, config.loss,
        sum(math.prod(w.shape) for w in model.trainable_weights),
    )
    return model


def fit_autoencoder(model: Autoencoder, train: tf.data.Dataset, heldout: tf.data.Dataset | None,
                    *, epochs: int, tensorboard_dir: Path | None = None,
                    extra_callbacks: list[keras.callbacks.Callback] | None = None,
                    ) -> dict[str, list[float]]:
    """Train ``model`` for ``epochs`` on batches of ``(images, labels)``; return the history.

    The history has one value per epoch under ``loss`` and ``psnr`` (plus ``val_loss``
    and ``val_psnr`` when ``heldout`` is given; the VAE adds ``reconstruction_loss`` and
    ``kl_loss``). ``tensorboard_dir`` receives the per-epoch metrics as TensorBoard scalars.
    Raises :class:`ConfigError` when training diverges (the loss becomes NaN or infinite);
    :func:`training.loop.fit_model` is the loop.
    """
    return fit_model(model, train, heldout, epochs=epochs, label="autoencoder",
                     image_shape=tuple(model.encoder.input_shape[1:]),
                     learning_rate=model.config.learning_rate, tensorboard_dir=tensorboard_dir,
                     extra_callbacks=extra_callbacks)


def _checked_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    try:
        height, width, channels = (int(d) for d in input_shape)
    except (TypeError, ValueError):
        height = width = channels = 0
    if min(height, width, channels) < 1:
        raise ConfigError(
            f"input_shape must be (height, width, channels) of positive sizes, got {input_shape!r}"
        )
    return height, width, channels
