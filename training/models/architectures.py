"""Encoder and decoder networks for the three model kinds, as functional Keras models.

Names are part of the bundle contract: the encoder's input is ``images`` and its output
layer ``embedding``; the decoder's input is ``embedding`` and its output layer
``reconstruction``. Every network works for any ``(H, W, C)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras

from training.config import AutoencoderConfig


@dataclass(frozen=True)
class Networks:
    """The functional parts of one autoencoder.

    ``encoder`` maps images to the served embedding. For the VAE, ``posterior`` maps
    images to ``(z_mean, z_log_var)`` and shares its layers with ``encoder`` (whose
    output is ``z_mean``); for the other kinds it is None.
    """

    encoder: keras.Model
    decoder: keras.Model
    posterior: keras.Model | None = None


def conv_levels(height: int, width: int, max_levels: int) -> int:
    """How many 3x3 stride-2 'same' convolutions keep the feature map at least 2x2."""
    levels = 0
    while levels < max_levels and min(math.ceil(height / 2), math.ceil(width / 2)) >= 2:
        height, width = math.ceil(height / 2), math.ceil(width / 2)
        levels += 1
    return levels


def build_networks(config: AutoencoderConfig, input_shape: tuple[int, int, int]) -> Networks:
    """Build the encoder and decoder that ``config.kind`` names for images of ``input_shape``."""
    if config.kind == "dense":
        return Networks(_dense_encoder(config, input_shape), _dense_decoder(config, input_shape))
    levels = conv_levels(input_shape[0], input_shape[1], len(config.conv_filters))
    filters = config.conv_filters[:levels]
    decoder = _conv_decoder(config, input_shape, filters)
    images = keras.Input(shape=input_shape, name="images")
    features = _conv_stack(images, filters)
    z_mean = keras.layers.Dense(config.latent_dim, name="embedding")(features)
    encoder = keras.Model(images, z_mean, name="encoder")
    if config.kind == "conv":
        return Networks(encoder, decoder)
    # Zero-initialised log-variance starts every posterior at unit variance, the prior's,
    # so the KL term begins small and early steps are not dominated by sampling noise.
    z_log_var = keras.layers.Dense(config.latent_dim, kernel_initializer="zeros",
                                   name="z_log_var")(features)
    posterior = keras.Model(images, [z_mean, z_log_var], name="posterior")
    return Networks(encoder, decoder, posterior)


def _dense_encoder(config: AutoencoderConfig, input_shape: tuple[int, int, int]) -> keras.Model:
    images = keras.Input(shape=input_shape, name="images")
    x = keras.layers.Flatten(name="flatten")(images)
    for i, units in enumerate(config.dense_units, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"enc_dense_{i}")(x)
    embedding = keras.layers.Dense(config.latent_dim, name="embedding")(x)
    return keras.Model(images, embedding, name="encoder")


def _dense_decoder(config: AutoencoderConfig, input_shape: tuple[int, int, int]) -> keras.Model:
    embedding = keras.Input(shape=(config.latent_dim,), name="embedding")
    x = embedding
    for i, units in enumerate(reversed(config.dense_units), start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"dec_dense_{i}")(x)
    x = keras.layers.Dense(math.prod(input_shape), activation="sigmoid", name="dec_pixels")(x)
    reconstruction = keras.layers.Reshape(input_shape, name="reconstruction")(x)
    return keras.Model(embedding, reconstruction, name="decoder")


def _conv_stack(images: keras.KerasTensor, filters: tuple[int, ...]) -> keras.KerasTensor:
    x = images
    for i, n in enumerate(filters, start=1):
        x = keras.layers.Conv2D(n, 3, strides=2, padding="same", activation="relu",
                                name=f"enc_conv_{i}")(x)
    return keras.layers.Flatten(name="flatten")(x)


def _conv_decoder(config: AutoencoderConfig, input_shape: tuple[int, int, int],
                  filters: tuple[int, ...]) -> keras.Model:
    height, width, channels = input_shape
    # The encoder's feature-map sizes, image first: each 'same' stride-2 conv gives ceil(s/2).
    sizes = [(height, width)]
    for _ in filters:
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    # With no conv level (images under 4 pixels) the decoder starts from the image size.
    start_filters = filters[-1] if filters else config.conv_filters[0]
    h0, w0 = sizes[-1]
    embedding = keras.Input(shape=(config.latent_dim,), name="embedding")
    x = keras.layers.Dense(h0 * w0 * start_filters, activation="relu", name="dec_dense")(embedding)
    x = keras.layers.Reshape((h0, w0, start_filters), name="dec_reshape")(x)
    # Transposed convolutions rather than UpSampling2D + Conv2D: same output size, but the
    # kernel runs on the coarse grid (measured ~2x faster on CPU). Each level doubles the
    # size; where the encoder rounded an odd size up, drop the extra row/column right there,
    # on the small map, so the decoder mirrors the encoder and ends at exactly H x W
    # (cropping the full-size map instead made its gradient the slowest op of a step).
    for i, n in enumerate(reversed(filters), start=1):
        x = keras.layers.Conv2DTranspose(n, 3, strides=2, padding="same", activation="relu",
                                         name=f"dec_deconv_{i}")(x)
        target_h, target_w = sizes[len(filters) - i]
        extra_h, extra_w = x.shape[1] - target_h, x.shape[2] - target_w
        if extra_h or extra_w:
            x = keras.layers.Cropping2D(((0, extra_h), (0, extra_w)), name=f"dec_crop_{i}")(x)
    reconstruction = keras.layers.Conv2D(channels, 3, padding="same", activation="sigmoid",
                                         name="reconstruction")(x)
    return keras.Model(embedding, reconstruction, name="decoder")
