"""Networks and layers: the autoencoders' networks and trainable model, the feature
classifier, and the parts the contrastive recipe composes (see :mod:`training.recipes`).

Their options are declared in :mod:`training.config`.
"""

from __future__ import annotations

from training.models.architectures import Networks, build_networks, conv_levels
from training.models.autoencoder import Autoencoder, build_autoencoder, fit_autoencoder
from training.models.base import StepModel
from training.models.classifier import FeatureClassifier, build_classifier, train_feature_classifier

__all__ = [
    "Autoencoder",
    "FeatureClassifier",
    "Networks",
    "StepModel",
    "build_autoencoder",
    "build_classifier",
    "build_networks",
    "conv_levels",
    "fit_autoencoder",
    "train_feature_classifier",
]
