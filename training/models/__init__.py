"""Autoencoder models: configuration, networks, the trainable model, the feature classifier."""

from __future__ import annotations

from training.models.architectures import Networks, build_networks, conv_levels
from training.models.autoencoder import Autoencoder, build_autoencoder, fit_autoencoder
from training.models.base import StepModel
from training.models.classifier import FeatureClassifier, build_classifier, train_feature_classifier
from training.models.config import ModelConfig, ModelKind

__all__ = [
    "Autoencoder",
    "FeatureClassifier",
    "ModelConfig",
    "ModelKind",
    "Networks",
    "StepModel",
    "build_autoencoder",
    "build_classifier",
    "build_networks",
    "conv_levels",
    "fit_autoencoder",
    "train_feature_classifier",
]
