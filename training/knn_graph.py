"""The k-nearest-neighbour graph of a feature set, weighted as UMAP weights it.

A parametric neighbourhood head (:mod:`training.models.umap_head`) learns an embedding
in which images that are near neighbours in a feature space stay close and random pairs
move apart. Which pairs are neighbours, and how strongly, is the fuzzy simplicial set of
UMAP (McInnes et al., 2018, section 3): per point, distances to its k nearest neighbours
are shifted by the distance to the nearest one (``rho``) and scaled by a bandwidth
(``sigma``) chosen so that the weights sum to log2(k); the directed graph is then
symmetrised with the fuzzy union ``A + A^T - A * A^T``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

from training.errors import ConfigError

logger = logging.getLogger(__name__)

# Bisection steps for each point's bandwidth: 64 halvings reach float64 resolution.
_BANDWIDTH_STEPS = 64


@dataclass
class NeighborGraph:
    """A symmetric weighted graph over ``n`` points as edge lists (both directions stored)."""

    n: int
    heads: np.ndarray  # int64 [E]
    tails: np.ndarray  # int64 [E]
    weights: np.ndarray  # float64 [E], in (0, 1]

    @property
    def n_edges(self) -> int:
        return int(self.heads.size)


def nearest_neighbors(features: np.ndarray, k: int, *, metric: str = "euclidean",
                      n_jobs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices of each point's ``k`` nearest other points, nearest first."""
    features = _check_features(features)
    n = features.shape[0]
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"the neighbour count must be a positive integer, got {k!r}")
    if k >= n:
        raise ConfigError(f"{k} neighbours need more than {k} points; there are {n}")
    started = time.perf_counter()
    index = NearestNeighbors(n_neighbors=k + 1, metric=metric, n_jobs=n_jobs).fit(features)
    distances, indices = index.kneighbors(features)
    # Each point is usually its own first neighbour, but exact duplicates may take that
    # place; drop the self match wherever it is, else the last column.
    is_self = indices == np.arange(n)[:, None]
    keep = ~is_self
    keep[~is_self.any(axis=1), -1] = False
    distances = distances[keep].reshape(n, k)
    indices = indices[keep].reshape(n, k)
    logger.info("neighbours: %d nearest of %d points (%d dims) in %.1f s",
                k, n, features.shape[1], time.perf_counter() - started)
    return distances.astype(np.float64), indices.astype(np.int64)


def fuzzy_graph(distances: np.ndarray, indices: np.ndarray) -> NeighborGraph:
    """UMAP's symmetric fuzzy neighbour graph from each point's k nearest neighbours."""
    if distances.shape != indices.shape or distances.ndim != 2 or distances.shape[1] < 1:
        raise ConfigError(
            f"distances {distances.shape} and indices {indices.shape} must both be [n, k]"
        )
    if not np.all(np.isfinite(distances)) or np.any(distances < 0):
        raise ConfigError("neighbour distances must be finite and non-negative")
    n, k = distances.shape
    rho = distances[:, 0]
    shifted = np.maximum(distances - rho[:, None], 0.0)
    sigma = _bandwidths(shifted, target=np.log2(k) if k > 1 else 1.0)
    weights = np.exp(-shifted / sigma[:, None])
    directed = sp.csr_matrix((weights.ravel(), (np.repeat(np.arange(n), k), indices.ravel())),
                             shape=(n, n))
    directed.sum_duplicates()
    transpose = directed.transpose().tocsr()
    union = (directed + transpose - directed.multiply(transpose)).tocoo()
    union.eliminate_zeros()
    return NeighborGraph(n=n, heads=union.row.astype(np.int64), tails=union.col.astype(np.int64),
                         weights=union.data.astype(np.float64))


def _bandwidths(shifted: np.ndarray, *, target: float) -> np.ndarray:
    """Per row, the sigma with ``sum(exp(-shifted / sigma)) == target`` (by bisection)."""
    n = shifted.shape[0]
    low = np.zeros(n)
    high = np.full(n, np.inf)
    sigma = np.ones(n)
    for _ in range(_BANDWIDTH_STEPS):
        total = np.exp(-shifted / sigma[:, None]).sum(axis=1)
        too_wide = total > target
        high = np.where(too_wide, sigma, high)
        low = np.where(too_wide, low, sigma)
        sigma = np.where(np.isinf(high), sigma * 2.0, (low + high) / 2.0)
    # All-equal distances (duplicates) leave every weight at 1 whatever sigma is; keep the
    # bandwidth away from zero so the weights stay finite.
    scale = np.maximum(shifted.mean(axis=1), 1e-12)
    return np.maximum(sigma, 1e-3 * scale)


def _check_features(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] < 2 or features.shape[1] < 1:
        raise ConfigError(f"features must be [n >= 2, d >= 1], got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        features = features.astype(np.float32)
    if not np.all(np.isfinite(features)):
        raise ConfigError("features contain NaN or infinite values")
    return features
