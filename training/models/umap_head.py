"""A parametric neighbourhood head: features -> a low-dimensional, clusterable embedding.

The head is a small MLP trained with UMAP's cross-entropy (parametric UMAP, Sainburg et
al., 2021): pairs that are neighbours in the fuzzy graph of :mod:`training.knn_graph` are
pulled together, random pairs pushed apart, through the low-dimensional similarity
``1 / (1 + a * d^(2b))``. Unlike UMAP itself it is a network, so new images are embedded
by the exported encoder SavedModel exactly like training images, and k-means centroids
fitted on its outputs stay valid at serving time.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from scipy.optimize import curve_fit

from training import interrupt
from training.errors import ConfigError
from training.knn_graph import NeighborGraph

logger = logging.getLogger(__name__)

# Probabilities are clipped away from 0 before the log: pairs that already sit far apart
# (or on top of each other) would otherwise give infinite losses and NaN gradients.
_EPSILON = 1e-4


@dataclass(frozen=True)
class UmapHeadConfig:
    """How the neighbourhood head is built and trained.

    ``min_dist`` is UMAP's: 0 lets neighbours collapse onto each other, which suits
    clustering (the N2D recipe). Each epoch samples as many edges as the graph has, with
    probability proportional to their weight, and ``negatives`` random points per edge.
    """

    n_neighbors: int = 15
    min_dist: float = 0.0
    negatives: int = 5
    epochs: int = 10
    batch_size: int = 2048
    hidden: tuple[int, ...] = (256, 256)
    learning_rate: float = 1e-3
    max_points: int = 70_000  # the graph is built on a sample of at most this many images
    min_steps: int = 1000

    def __post_init__(self) -> None:
        for name in ("n_neighbors", "negatives", "epochs", "batch_size", "max_points",
                     "min_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ConfigError(f"head {name} must be a positive integer, got {value!r}")
        if not all(isinstance(h, int | np.integer) and not isinstance(h, bool) and h > 0
                   for h in self.hidden):
            raise ConfigError(f"head hidden sizes must be positive integers, got {self.hidden!r}")
        if not 0 <= self.min_dist < 1:
            raise ConfigError(f"head min_dist must be in [0, 1), got {self.min_dist!r}")
        if not 0 < self.learning_rate < math.inf:
            raise ConfigError(f"head learning_rate must be > 0, got {self.learning_rate!r}")


def similarity_curve(min_dist: float, spread: float = 1.0) -> tuple[float, float]:
    """UMAP's ``a, b`` so that ``1 / (1 + a d^(2b))`` fits its target similarity curve."""
    def curve(d: np.ndarray, a: float, b: float) -> np.ndarray:
        return 1.0 / (1.0 + a * d ** (2 * b))

    d = np.linspace(0, spread * 3, 300)
    target = np.where(d < min_dist, 1.0, np.exp(-(d - min_dist) / spread))
    (a, b), _ = curve_fit(curve, d, target, p0=(1.0, 1.0))
    return float(a), float(b)


def build_head(input_dim: int, latent_dim: int, hidden: tuple[int, ...], *,
               name: str = "neighborhood_head") -> keras.Model:
    """The MLP features -> embedding (ReLU hidden layers, linear output)."""
    inputs = keras.Input((input_dim,), name="features")
    x = inputs
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense_{i}")(x)
    outputs = keras.layers.Dense(latent_dim, name="head_embedding")(x)
    return keras.Model(inputs, outputs, name=name)


def fit_head(head: keras.Model, features: np.ndarray, graph: NeighborGraph, config: UmapHeadConfig,
             *, seed: int = 0) -> list[float]:
    """Train ``head`` on ``graph`` (over the rows of ``features``); returns the epoch losses."""
    if features.ndim != 2 or features.shape[0] != graph.n:
        raise ConfigError(f"features {features.shape} do not match a graph of {graph.n} points")
    if graph.n_edges == 0:
        raise ConfigError("the neighbour graph has no edges")
    if not np.all(np.isfinite(features)):
        raise ConfigError("the head's input features contain NaN or infinite values")
    a, b = similarity_curve(config.min_dist)
    x = tf.constant(features, dtype=tf.float32)
    optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
    negatives = config.negatives

    def similarity(u: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
        squared = tf.reduce_sum(tf.square(u - v), axis=1)
        # The small offset keeps the gradient of d^(2b) finite at d = 0 (b < 1).
        return 1.0 / (1.0 + a * tf.pow(squared + 1e-6, b))

    # autograph=False: the step has no tensor-dependent Python control flow, and AutoGraph
    # cannot convert a closure defined inside a function (it warns and runs it as-is).
    @tf.function(reduce_retracing=True, autograph=False)
    def step(heads: tf.Tensor, tails: tf.Tensor, others: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            h = head(tf.gather(x, heads), training=True)
            t = head(tf.gather(x, tails), training=True)
            o = head(tf.gather(x, others), training=True)
            attract = -tf.math.log(tf.clip_by_value(similarity(h, t), _EPSILON, 1.0))
            repel = -tf.math.log(tf.clip_by_value(
                1.0 - similarity(tf.repeat(h, negatives, axis=0), o), _EPSILON, 1.0))
            loss = tf.reduce_mean(attract) + negatives * tf.reduce_mean(repel)
        weights = head.trainable_weights
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))
        return loss

    rng = np.random.default_rng(seed)
    probability = graph.weights / graph.weights.sum()
    losses: list[float] = []
    epochs = max(config.epochs, math.ceil(config.min_steps / math.ceil(graph.n_edges
                                                                       / config.batch_size)))
    for epoch in range(epochs):
        started = time.perf_counter()
        edges = rng.choice(graph.n_edges, size=graph.n_edges, p=probability)
        total, steps = 0.0, 0
        with interrupt.stoppable():
            for start in range(0, edges.size, config.batch_size):
                chosen = edges[start:start + config.batch_size]
                others = rng.integers(0, graph.n, size=chosen.size * negatives)
                total += float(step(tf.constant(graph.heads[chosen]),
                                    tf.constant(graph.tails[chosen]), tf.constant(others)))
                steps += 1
                interrupt.check()  # a Ctrl-C during the step stops here, between steps
        losses.append(total / steps)
        # A NaN weight need not show in the loss (a ReLU may turn NaN into 0 and the clipped
        # loss stays finite), so the weights are checked too.
        if not math.isfinite(losses[-1]) or not all(
                np.all(np.isfinite(w)) for w in head.get_weights()):
            raise ConfigError(
                f"the neighbourhood head diverged (loss {losses[-1]}, NaN or infinite values "
                f"in its weights or loss) in epoch {epoch + 1}; "
                f"lower its learning rate (now {config.learning_rate})"
            )
        if epoch == epochs - 1 or epochs <= 20 or epoch % max(1, epochs // 10) == 0:
            logger.info("neighbourhood head epoch %d/%d: loss %.4f (%.1f s)", epoch + 1,
                        epochs, losses[-1], time.perf_counter() - started)
    return losses
