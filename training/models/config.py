"""Hyperparameters of an autoencoder, validated when the config is made."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from training.errors import ConfigError
from training.losses import LossKind
from training.models.umap_head import HeadConfig

ModelKind = Literal["dense", "conv", "vae", "contrastive"]


@dataclass(frozen=True)
class ModelConfig:
    """What to build and how to train it.

    ``dense_units`` are the hidden layers of the dense encoder (mirrored in its decoder);
    ``conv_filters`` the filters of the conv/vae encoder's 3x3 stride-2 convolutions, of
    which only as many are used as keep the feature map at least 2x2. ``denoise_sigma``
    adds Gaussian noise to the training inputs only (targets stay clean). ``kl_weight``
    scales the VAE's KL term, whose companion reconstruction term is summed per image
    (the evidence lower bound at ``kl_weight=1``; with ``mse`` that is a Gaussian decoder
    of variance 1/2, so small images such as 8x8 digits may want a lower ``kl_weight`` to
    keep the KL term from collapsing the embedding).

    ``contrastive`` is a different recipe (:mod:`training.recipes.contrastive`): a conv backbone
    of ``backbone_filters`` trained for augmentation invariance (NT-Xent at ``temperature``
    and a constant ``learning_rate``; crops of at least ``min_crop`` of the area,
    horizontal flips unless ``view_flip`` is false, a second light change if ``view_relight``)
    to ``feature_dim`` features, a neighbourhood head (``head_*``; see
    :class:`~training.models.umap_head.HeadConfig`) to ``latent_dim``, and a conv decoder
    trained for ``decoder_epochs`` on the frozen embedding (loss ``mse`` only). With
    ``joint_embedding`` (the default; the best recipe measured on Fashion-MNIST) the embedding
    is the head's output (rescaled to unit total spread) joined with the unit-length output of
    the projector: ``latent_dim`` + 128 numbers; without it, the head's
    ``latent_dim`` numbers alone. With ``graph_communities`` N >= 2 the head and the joint
    embedding give way to a community head: the Louvain communities of the features' neighbour
    graph, N of them, are learnt by a softmax head whose N probabilities are the embedding
    (:mod:`training.recipes.communities`; better groups at K around N, see docs/quality.md). With
    ``community_searches`` S >= 2 the partition step (Louvain at N, or the coarse search and
    its splits) runs S times from different seeds, and once more on the graph's edges
    reweighted by how often those searches keep them inside a community
    (:func:`training.recipes.communities.consensus_partition`); with 1, the default, it runs once. With
    ``coarse_communities`` C (2 <= C < N) Louvain finds C communities and the most spread of
    them are split in two until there are N (:func:`training.recipes.communities.split_communities`).
    With ``hog_weight`` w > 0 the graph and the head see the unit backbone features joined
    with w times the pixels' unit-length orientation histograms
    (:mod:`training.models.gradients`), computed inside the encoder. With ``graph_whitening``
    p > 0 each of those two parts is partially whitened before it is joined
    (:mod:`training.models.whitening`: principal axes scaled by eigenvalue ** -p, fitted on
    the training images, a fixed layer of the encoder; 0.5 is full whitening).
    Other kinds ignore these fields.
    """

    kind: ModelKind = "conv"
    latent_dim: int = 10
    loss: LossKind = "mse"
    kl_weight: float = 1.0
    denoise_sigma: float = 0.0
    learning_rate: float = 1e-3
    dense_units: tuple[int, ...] = (128, 64)
    conv_filters: tuple[int, ...] = (32, 32, 32)
    backbone_filters: tuple[int, ...] = (32, 64, 128)
    feature_dim: int = 256
    temperature: float = 0.5
    min_crop: float = 0.4
    view_flip: bool = True
    view_relight: bool = False
    joint_embedding: bool = True
    graph_communities: int = 0
    community_searches: int = 1
    coarse_communities: int = 0
    hog_weight: float = 0.0
    graph_whitening: float = 0.0
    head_neighbors: int = 15
    head_epochs: int = 5
    head_hidden: tuple[int, ...] = (256, 256)
    head_min_dist: float = 0.0
    head_max_points: int = 70_000
    decoder_epochs: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in get_args(ModelKind):
            raise ConfigError(f"unknown model kind {self.kind!r}: choose 'dense', 'conv', 'vae' "
                              "or 'contrastive'")
        if self.loss not in get_args(LossKind):
            raise ConfigError(f"unknown loss {self.loss!r}: choose 'mse', 'bce' or 'perceptual'")
        if not _is_int(self.latent_dim) or self.latent_dim < 1:
            raise ConfigError(f"latent_dim must be a positive integer, got {self.latent_dim!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        # `not x >= 0` rather than `x < 0` so NaN is rejected too.
        if not _is_real(self.kl_weight) or not 0 <= self.kl_weight < float("inf"):
            raise ConfigError(f"kl_weight must be a number >= 0, got {self.kl_weight!r}")
        if not _is_real(self.denoise_sigma) or not 0 <= self.denoise_sigma <= 1:
            raise ConfigError(
                f"denoise_sigma must be in [0, 1] (pixel values are in [0, 1]), "
                f"got {self.denoise_sigma!r}"
            )
        if not _is_real(self.learning_rate) or not 0 < self.learning_rate < float("inf"):
            raise ConfigError(f"learning_rate must be a number > 0, got {self.learning_rate!r}")
        for name in ("latent_dim", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("kl_weight", "denoise_sigma", "learning_rate"):
            object.__setattr__(self, name, float(getattr(self, name)))
        # Frozen dataclass: normalise lists from a CLI or JSON into tuples so configs hash.
        object.__setattr__(self, "dense_units", _positive_ints("dense_units", self.dense_units))
        filters = _positive_ints("conv_filters", self.conv_filters)
        if not filters:
            raise ConfigError("conv_filters must name at least one convolution, e.g. (32, 32)")
        object.__setattr__(self, "conv_filters", filters)
        backbone = _positive_ints("backbone_filters", self.backbone_filters)
        if not backbone:
            raise ConfigError("backbone_filters must name at least one convolution")
        object.__setattr__(self, "backbone_filters", backbone)
        object.__setattr__(self, "head_hidden", _positive_ints("head_hidden", self.head_hidden))
        for name in ("feature_dim", "head_neighbors", "head_epochs", "head_max_points",
                     "decoder_epochs", "community_searches"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not _is_int(self.graph_communities) or self.graph_communities < 0 \
                or self.graph_communities == 1:
            raise ConfigError("graph_communities must be 0 (off) or an integer >= 2, got "
                              f"{self.graph_communities!r}")
        object.__setattr__(self, "graph_communities", int(self.graph_communities))
        if not _is_int(self.coarse_communities) or self.coarse_communities < 0 \
                or self.coarse_communities == 1:
            raise ConfigError("coarse_communities must be 0 (off) or an integer >= 2, got "
                              f"{self.coarse_communities!r}")
        object.__setattr__(self, "coarse_communities", int(self.coarse_communities))
        if self.coarse_communities and not \
                self.coarse_communities < self.graph_communities:
            raise ConfigError(f"coarse_communities ({self.coarse_communities}) must be fewer "
                              f"than graph_communities ({self.graph_communities}), which "
                              "they are split into")
        if not _is_real(self.temperature) or not 0 < self.temperature < float("inf"):
            raise ConfigError(f"temperature must be a number > 0, got {self.temperature!r}")
        if not _is_real(self.min_crop) or not 0 < self.min_crop <= 1:
            raise ConfigError(f"min_crop must be in (0, 1], got {self.min_crop!r}")
        if not _is_real(self.hog_weight) or not 0 <= self.hog_weight < float("inf"):
            raise ConfigError(f"hog_weight must be a number >= 0 (0 is off), "
                              f"got {self.hog_weight!r}")
        if not _is_real(self.graph_whitening) or not 0 <= self.graph_whitening <= 0.5:
            raise ConfigError(f"graph_whitening must be a number in [0, 0.5] (0 is off, 0.5 "
                              f"full whitening), got {self.graph_whitening!r}")
        if not _is_real(self.head_min_dist) or not 0 <= self.head_min_dist < 1:
            raise ConfigError(f"head_min_dist must be in [0, 1), got {self.head_min_dist!r}")
        if not isinstance(self.view_flip, bool):
            raise ConfigError(f"view_flip must be true or false, got {self.view_flip!r}")
        if not isinstance(self.view_relight, bool):
            raise ConfigError(f"view_relight must be true or false, got {self.view_relight!r}")
        if not isinstance(self.joint_embedding, bool):
            raise ConfigError(
                f"joint_embedding must be true or false, got {self.joint_embedding!r}")
        for name in ("temperature", "min_crop", "head_min_dist", "hog_weight", "graph_whitening"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.kind == "contrastive" and self.loss != "mse":
            raise ConfigError(
                f"the contrastive recipe trains its decoder with mse; loss {self.loss!r} "
                "applies to the autoencoder kinds (dense, conv, vae)"
            )

    def head_config(self) -> HeadConfig:
        """The neighbourhood head's settings (contrastive kind)."""
        return HeadConfig(n_neighbors=self.head_neighbors, min_dist=self.head_min_dist,
                          epochs=self.head_epochs, hidden=self.head_hidden,
                          learning_rate=self.learning_rate, max_points=self.head_max_points)


def _positive_ints(name: str, values: Iterable[Any]) -> tuple[int, ...]:
    try:
        items = tuple(values)
    except TypeError:
        raise ConfigError(f"{name} must be a sequence of positive integers, got {values!r}") \
            from None
    if not all(_is_int(v) and v > 0 for v in items):
        raise ConfigError(f"{name} must be positive integers, got {values!r}")
    return tuple(int(v) for v in items)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    # numbers.Integral admits numpy integers; bool is an int but never a sensible size.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
