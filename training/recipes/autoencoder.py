"""The seed autoencoders' recipe: (for the perceptual loss, a feature classifier on the
labels first, then) an autoencoder fitted to reconstruct the training images.

The encoder's output is the embedding; the decoder answers reconstructions as it was
trained to.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.config import AutoencoderConfig
from training.data import LoadedData, Split, batches
from training.errors import ConfigError
from training.models import build_autoencoder, fit_autoencoder, train_feature_classifier
from training.recipes import FittedNetworks

logger = logging.getLogger(__name__)


def check_autoencoder(config: AutoencoderConfig, data: LoadedData) -> None:
    """Fail before fitting when ``data`` cannot train ``config``."""
    if config.loss == "perceptual" and data.class_names is None:
        raise ConfigError(
            "--loss perceptual trains a classifier on labels first, and this dataset has "
            "no labels; use --loss mse or bce"
        )


def fit_autoencoder_recipe(config: AutoencoderConfig, data: LoadedData, *,
                           strategy: tf.distribute.Strategy, seed: int,
                           tensorboard_dir: Path | None = None) -> FittedNetworks:
    """Fit the autoencoder ``config`` describes on ``data.train`` (``data.heldout`` gives
    the validation curves)."""
    check_autoencoder(config, data)
    shape = (data.height, data.width, data.channels)
    train = batches(data.train, config.batch_size, shuffle=True, seed=seed,
                    augment_flip=config.augment_flip)
    heldout = (batches(data.heldout, config.batch_size, shuffle=False, seed=seed)
               if data.heldout is not None else None)
    with strategy.scope():
        extractor = None
        if config.loss == "perceptual":
            assert data.class_names is not None  # check_autoencoder guarantees it
            logger.info("perceptual loss: training the feature classifier on the labels")
            extractor = train_feature_classifier(
                batches(_labelled(data.train), config.batch_size, shuffle=True, seed=seed),
                batches(_labelled(data.heldout), config.batch_size, shuffle=False, seed=seed)
                if data.heldout is not None else None,
                shape, len(data.class_names), epochs=config.classifier_epochs, seed=seed,
            )
        model = build_autoencoder(config, shape, seed=seed, feature_extractor=extractor)
    history = fit_autoencoder(model, train, heldout, epochs=config.epochs,
                              tensorboard_dir=tensorboard_dir)
    return FittedNetworks(encoder=model.encoder, decoder=model.decoder, history=history)


def _labelled(split: Split) -> Split:
    """The labelled images of ``split`` (image folders may label only some of them)."""
    labelled = split.dataset.filter(lambda x, y: y >= 0)
    count = int(split.dataset.reduce(np.int64(0), lambda n, item: n + tf.cast(item[1] >= 0,
                                                                                 tf.int64)))
    return Split(size=count, dataset=labelled, in_memory=split.in_memory)
