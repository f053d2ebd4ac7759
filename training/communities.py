"""Communities of a k-nearest-neighbour graph: Louvain at a resolution that gives K groups.

k-means cuts a feature space with straight boundaries between centroids; groups of images
that curve through the space, or differ in spread, are cut badly. A community detection on
the neighbour graph follows the neighbourhoods instead: on Fashion-MNIST's contrastive
features, graph communities at about 20 groups hold majority labels on 0.75-0.80 of the
images, where k-means at K = 20 on the same features holds 0.72-0.75 (README, "Clustering
quality"). The service still assigns by nearest centroid, so the contrastive recipe teaches
a small head to predict these communities (:mod:`training.recipe_contrastive`).

Louvain (Blondel et al., 2008; scikit-network's implementation) maximises modularity at a
resolution; higher resolutions give more, smaller communities. The resolution is bisected
until the partition has exactly the requested number, and among a few seeded starts (node
orders) at that resolution the one with the highest modularity (the objective itself, no
label) is kept. Louvain rather than Leiden: scikit-network's Leiden gave different
partitions for the same seed, and a bundle must be repeatable from its seed.

One Louvain run depends on the order it visits the nodes: runs that differ only in that
order agree on most edges and disagree on the borders between communities. With
``consensus_runs`` R, R more runs at the found resolution vote on every edge, and the
final partition is found, the same way, on the graph whose edge weights are the share of
runs that kept both ends together (a consensus clustering, Lancichinetti & Fortunato,
2012): edges the runs agree on bind, borders they disagree on loosen.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sknetwork.clustering import Louvain, get_modularity

from training.errors import ConfigError

logger = logging.getLogger(__name__)

# Resolutions searched (log scale): far below and above what k-NN graphs of images need
# (about 0.1-3 for 10-40 communities of 60,000 images).
_LOW, _HIGH = 1e-4, 1e3
_BISECTION_STEPS = 24
# Consensus weight of an edge that no run kept (see consensus_graph).
_CUT_EDGE_WEIGHT = 1e-3


@dataclass(frozen=True)
class Partition:
    """Community of each graph node (0..count-1), and how it was found."""

    labels: np.ndarray  # int64 [n]
    resolution: float
    modularity: float
    starts_tried: int
    consensus_runs: int = 0

    @property
    def count(self) -> int:
        return int(self.labels.max()) + 1


def knn_adjacency(indices: np.ndarray) -> sp.csr_matrix:
    """Symmetric 0/1 adjacency of the graph joining each point to its listed neighbours."""
    if indices.ndim != 2 or indices.shape[1] < 1:
        raise ConfigError(f"neighbour indices must be [n, k] with k >= 1, got {indices.shape}")
    n, k = indices.shape
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise ConfigError(f"neighbour indices must lie in [0, {n}); got "
                          f"{int(indices.min())}..{int(indices.max())}")
    rows = np.repeat(np.arange(n), k)
    adjacency = sp.csr_matrix((np.ones(n * k), (rows, indices.ravel())), shape=(n, n))
    adjacency = adjacency.maximum(adjacency.T).tocsr()
    adjacency.setdiag(0)
    adjacency.eliminate_zeros()
    adjacency.data[:] = 1.0  # a neighbour listed twice is still one edge
    return adjacency


def louvain_communities(adjacency: sp.csr_matrix, count: int, *, seed: int = 0,
                        starts: int = 5, consensus_runs: int = 0) -> Partition:
    """A Louvain partition of ``adjacency`` into exactly ``count`` communities.

    With ``consensus_runs`` R > 0 the partition is that of the consensus graph of R runs
    (module docstring); its resolution and modularity are those on the consensus graph.

    Raises :class:`ConfigError` when no resolution gives ``count`` communities (a graph of
    fewer nodes, or one whose communities jump past ``count`` at every resolution).
    """
    if isinstance(consensus_runs, bool) or not isinstance(consensus_runs, int | np.integer) \
            or consensus_runs < 0:
        raise ConfigError(f"consensus_runs must be an integer >= 0, got {consensus_runs!r}")
    single = _best_partition(adjacency, count, seed=seed, starts=starts)
    if not consensus_runs:
        return single
    started = time.perf_counter()
    weights = consensus_graph(adjacency, single.resolution, runs=int(consensus_runs),
                              seed=seed + starts)
    logger.info("consensus graph of %d Louvain runs in %.1f s", consensus_runs,
                time.perf_counter() - started)
    final = _best_partition(weights, count, seed=seed, starts=starts)
    return Partition(labels=final.labels, resolution=final.resolution,
                     modularity=final.modularity, starts_tried=final.starts_tried,
                     consensus_runs=int(consensus_runs))


def consensus_graph(adjacency: sp.csr_matrix, resolution: float, *, runs: int,
                    seed: int) -> sp.csr_matrix:
    """``adjacency``'s edges weighted by the share of ``runs`` Louvain runs joining their ends.

    An edge no run kept keeps a weight of a thousandth rather than none: a node whose
    every edge was cut would otherwise become a community of its own. (A weight floor as
    large as one run's share, (together + 1) / (runs + 1), undoes the consensus: seed 0's
    crop 1.0 features then gave the single run's 0.779 majority, against 0.789 here.)
    """
    if runs < 1:
        raise ConfigError(f"a consensus needs at least one run, got {runs!r}")
    edges = sp.coo_matrix(adjacency)
    together = np.zeros(edges.nnz)
    for run in range(runs):
        labels = Louvain(resolution=resolution, shuffle_nodes=True, random_state=seed + run,
                         sort_clusters=True).fit_predict(adjacency)
        together += labels[edges.row] == labels[edges.col]
    weights = np.maximum(together / runs, _CUT_EDGE_WEIGHT)
    return sp.csr_matrix((weights, (edges.row, edges.col)), shape=adjacency.shape)


def _best_partition(adjacency: sp.csr_matrix, count: int, *, seed: int,
                    starts: int) -> Partition:
    """The bisection for ``count`` communities, then the best modularity of ``starts``."""
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 2:
        raise ConfigError(f"the community count must be an integer >= 2, got {count!r}")
    n = adjacency.shape[0]
    if count > n:
        raise ConfigError(f"{count} communities need at least {count} images; there are {n}")
    if starts < 1:
        raise ConfigError(f"starts must be >= 1, got {starts!r}")
    started = time.perf_counter()

    def run(resolution: float, start: int) -> np.ndarray:
        # Nodes are visited in a seeded random order: the seed alone decides the partition.
        labels = Louvain(resolution=resolution, shuffle_nodes=True, random_state=seed + start,
                         sort_clusters=True).fit_predict(adjacency)
        return np.asarray(labels, dtype=np.int64)

    low, high = math.log(_LOW), math.log(_HIGH)
    found: tuple[float, np.ndarray] | None = None
    counts: list[int] = []
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        labels = run(math.exp(middle), 0)
        got = int(labels.max()) + 1
        counts.append(got)
        if got == count:
            found = (math.exp(middle), labels)
            break
        if got < count:
            low = middle
        else:
            high = middle
    if found is None:
        raise ConfigError(
            f"no Louvain resolution splits the neighbour graph into exactly {count} "
            f"communities (the search saw {min(counts)}-{max(counts)}); choose another "
            f"--graph-communities")
    resolution, best = found
    best_q = float(get_modularity(adjacency, best, resolution=resolution))
    tried = 1
    for start in range(1, starts):
        labels = run(resolution, start)
        tried += 1
        if int(labels.max()) + 1 != count:
            continue
        q = float(get_modularity(adjacency, labels, resolution=resolution))
        if q > best_q:
            best, best_q = labels, q
    sizes = np.bincount(best, minlength=count)
    logger.info("communities: %d at resolution %.4g (modularity %.4f, best of %d starts; "
                "sizes %d-%d) in %.1f s", count, resolution, best_q, tried, sizes.min(),
                sizes.max(), time.perf_counter() - started)
    return Partition(labels=best, resolution=resolution, modularity=best_q, starts_tried=tried)
