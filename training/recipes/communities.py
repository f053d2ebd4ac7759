"""Communities of a k-nearest-neighbour graph: Louvain at a resolution that gives K groups.

k-means cuts a feature space with straight boundaries between centroids; groups of images
that curve through the space, or differ in spread, are cut badly. A community detection on
the neighbour graph follows the neighbourhoods instead. The service still assigns by nearest
centroid, so the contrastive recipe teaches a small head to predict these communities
(:mod:`training.recipes.contrastive`). How they measured against k-means: docs/quality.md.

Louvain (Blondel et al., 2008; scikit-network's implementation) maximises modularity at a
resolution; higher resolutions give more, smaller communities. The resolution is bisected
until the partition has exactly the requested number (when the first seeded node order
steps over it, the next orders are searched the same way), and among a few seeded starts
(node orders) at that resolution the one with the highest modularity (the objective itself,
no label) is kept. Louvain rather than Leiden: scikit-network's Leiden gave different
partitions for the same seed, and a bundle must be repeatable from its seed.

The partition still depends on the seed (the node order), and a choice among several
searches would pick among near-equals by noise. :func:`consensus_partition` does not
choose: it reweights the graph's edges by how often several searches keep them inside a
community and runs the step once more on that graph (``--community-searches``). What the
seed changes, and what choosing and the consensus measured: docs/quality.md.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from sknetwork.clustering import Louvain, get_modularity

from training.errors import ConfigError

logger = logging.getLogger(__name__)

# Resolutions searched (log scale): far below and above what k-NN graphs of images need
# (about 0.1-3 for 10-40 communities of 60,000 images).
_LOW, _HIGH = 1e-4, 1e3
_BISECTION_STEPS = 24
# Node orders searched for an exact count before giving up (each a full bisection).
_ORDERS_TO_SEARCH = 8


@dataclass(frozen=True)
class Partition:
    """Community of each graph node (0..count-1), and how it was found."""

    labels: np.ndarray  # int64 [n]
    resolution: float
    modularity: float
    starts_tried: int
    # With split_communities: the coarse partition's count, which resolution, modularity
    # and starts_tried then describe; None when Louvain found all communities at once.
    coarse_count: int | None = None

    @property
    def count(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def size_entropy(self) -> float:
        """Shannon entropy (nats) of the community sizes: log(count) when all are equal."""
        shares = np.bincount(self.labels) / self.labels.size
        shares = shares[shares > 0]
        return float(-(shares * np.log(shares)).sum())

    def summary(self) -> dict[str, Any]:
        """How the partition was found and how big its communities are, as plain JSON types.

        The bundle keeps it (``report/communities.json``) so that a served model's
        communities can be inspected without rerunning the search.
        """
        return {"count": self.count, "resolution": round(self.resolution, 6),
                "modularity": round(self.modularity, 6), "starts_tried": self.starts_tried,
                "sizes": [int(size) for size in np.bincount(self.labels)],
                # exp(entropy) reads as an "effective number" of equal communities.
                "effective_count": round(math.exp(self.size_entropy), 3),
                "coarse_count": self.coarse_count}


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
                       starts: int = 5) -> Partition:
    """A Louvain partition of ``adjacency`` into exactly ``count`` communities.

    Raises :class:`ConfigError` when no resolution gives ``count`` communities for any of
    the node orders searched (a graph whose communities jump past ``count``, such as one of
    more separate pieces than ``count``).
    """
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 2:
        raise ConfigError(f"the community count must be an integer >= 2, got {count!r}")
    n = adjacency.shape[0]
    if count > n:
        raise ConfigError(f"{count} communities need at least {count} images; there are {n}")
    if starts < 1:
        raise ConfigError(f"starts must be >= 1, got {starts!r}")
    if adjacency.nnz == 0:
        # Louvain (scikit-network) refuses an empty matrix with a bare ValueError.
        raise ConfigError(f"the neighbour graph of {n} images has no edges to find "
                          "communities in")
    started = time.perf_counter()

    def run(resolution: float, start: int) -> np.ndarray:
        # Nodes are visited in a seeded random order: the seed alone decides the partition.
        labels = Louvain(resolution=resolution, shuffle_nodes=True, random_state=seed + start,
                         sort_clusters=True).fit_predict(adjacency)
        return np.asarray(labels, dtype=np.int64)

    def bisect(start: int) -> tuple[float, np.ndarray] | None:
        low, high = math.log(_LOW), math.log(_HIGH)
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            labels = run(math.exp(middle), start)
            got = int(labels.max()) + 1
            counts.append(got)
            if got == count:
                return math.exp(middle), labels
            if got < count:
                low = middle
            else:
                high = middle
        return None

    # The count is a step function of the resolution, and for one node order it can step
    # over ``count`` (19 communities just below a resolution, 21 just above it); another
    # order usually lands on it. Order 0 comes first, so a graph it splits keeps its
    # partition. ``bisect`` records every count it sees in ``counts`` for the error.
    counts: list[int] = []
    found: tuple[int, float, np.ndarray] | None = None
    for start in range(_ORDERS_TO_SEARCH):
        hit = bisect(start)
        if hit is not None:
            found = (start, *hit)
            break
    if found is None:
        raise ConfigError(
            f"no Louvain resolution splits the neighbour graph into exactly {count} "
            f"communities (the search saw {min(counts)}-{max(counts)} over "
            f"{_ORDERS_TO_SEARCH} node orders); choose another --graph-communities")
    first, resolution, best = found
    if first:
        logger.warning("communities: the first %d node order(s) of seed %d step over %d "
                       "communities at every resolution; node order %d gives exactly %d",
                       first, seed, count, first, count)
    best_q = float(get_modularity(adjacency, best, resolution=resolution))
    tried = 1
    for start in range(first + 1, first + starts):
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


def split_communities(adjacency: sp.csr_matrix, features: np.ndarray, coarse: Partition,
                      count: int, *, seed: int = 0, starts: int = 5) -> Partition:
    """``coarse`` split, one community at a time, until it has ``count`` communities.

    Each step takes the community with the largest within-community sum of squared
    distances to its mean in ``features`` (bisecting k-means' rule) and splits it in two
    by Louvain on its own subgraph. Louvain at one resolution for the whole graph can spend
    communities on groups that are merely big, several pure pieces of one class, while two
    classes share one community; the spread finds the mixed groups instead. A community
    whose subgraph has no two-way split (pieces it cannot join) is passed over for the next
    most spread. The recipe splits only when asked (``--coarse-communities``), as the K = 20
    preset does; what splitting measured: docs/quality.md.
    """
    if isinstance(count, bool) or not isinstance(count, int | np.integer):
        raise ConfigError(f"the community count must be an integer, got {count!r}")
    if count <= coarse.count:
        raise ConfigError(f"splitting needs more communities ({count}) than the coarse "
                          f"partition has ({coarse.count})")
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] != coarse.labels.size \
            or adjacency.shape[0] != coarse.labels.size:
        raise ConfigError(f"features {features.shape} and graph {adjacency.shape} must have "
                          f"one row per node of the partition ({coarse.labels.size})")
    started = time.perf_counter()
    labels = coarse.labels.copy()
    # In float64: the spread is a difference of two large sums.
    squares = np.einsum("ij,ij->i", features, features, dtype=np.float64)

    def spread(members: np.ndarray) -> float:
        """Sum of squared distances to the mean: sum |x|^2 - n |mean|^2."""
        mean = features[members].mean(axis=0, dtype=np.float64)
        return float(squares[members].sum() - members.size * mean @ mean)

    # Only the two halves of a split change, so each community's spread is computed once.
    spreads = [spread(np.flatnonzero(labels == community)) for community in range(coarse.count)]
    unsplittable: set[int] = set()  # a failed search fails again: not retried
    while len(spreads) < count:
        groups = len(spreads)
        for community in np.argsort(-np.array(spreads), kind="stable"):
            members = np.flatnonzero(labels == community)
            if members.size < 2 or community in unsplittable:
                continue
            try:
                halves = louvain_communities(adjacency[members][:, members].tocsr(), 2,
                                             seed=seed, starts=starts).labels
            except ConfigError:
                unsplittable.add(int(community))
                continue
            labels[members[halves == 1]] = groups
            spreads[community] = spread(members[halves == 0])
            spreads.append(spread(members[halves == 1]))
            logger.info("communities: split community %d (%d images) into %d and %d",
                        community, members.size, int((halves == 0).sum()),
                        int((halves == 1).sum()))
            break
        else:
            raise ConfigError(f"no community of the {groups} found splits in two; choose "
                              "fewer --graph-communities or more --coarse-communities")
    logger.info("communities: %d from %d by splitting the most spread in %.1f s", count,
                coarse.count, time.perf_counter() - started)
    return dataclasses.replace(coarse, labels=labels, coarse_count=coarse.count)


# Edge weights of the consensus graph: floor + (1 - floor) * agreement ** power. The floor
# keeps an edge every search cut in the graph (at a hundredth of its weight), so the graph
# does not fall into more pieces than the communities asked for; the square makes edges the
# searches disagree on weigh less still (chosen over linear weights: docs/quality.md).
CONSENSUS_FLOOR = 0.01
CONSENSUS_POWER = 2.0
# Seeds of a consensus's searches are this far apart, beyond the node orders one search
# uses (its seed plus up to _ORDERS_TO_SEARCH + starts, 13 with the default starts), so no
# two searches share a node order.
_SEARCH_SEED_STRIDE = 100


def consensus_graph(adjacency: sp.csr_matrix, partitions: list[np.ndarray]
                    ) -> tuple[sp.csr_matrix, float]:
    """``adjacency``'s edges reweighted by how often the ``partitions`` keep them inside.

    An edge whose two images share a community in a share ``a`` of the partitions weighs
    ``CONSENSUS_FLOOR + (1 - CONSENSUS_FLOOR) * a ** CONSENSUS_POWER``. Returns the graph
    and the mean of ``a`` over the edges.
    """
    if not partitions:
        raise ConfigError("a consensus graph needs at least one partition")
    stacked = np.stack([np.asarray(p) for p in partitions])
    if stacked.ndim != 2 or stacked.shape[1] != adjacency.shape[0]:
        raise ConfigError(f"partitions {stacked.shape} must each label the graph's "
                          f"{adjacency.shape[0]} nodes")
    edges = adjacency.tocoo()
    shares = (stacked[:, edges.row] == stacked[:, edges.col]).mean(axis=0)
    weights = CONSENSUS_FLOOR + (1.0 - CONSENSUS_FLOOR) * shares ** CONSENSUS_POWER
    graph = sp.csr_matrix((weights, (edges.row, edges.col)), shape=edges.shape)
    return graph, float(shares.mean())


def consensus_partition(search: Callable[[sp.csr_matrix, int], Partition],
                        adjacency: sp.csr_matrix, searches: int, *, seed: int = 0
                        ) -> tuple[Partition, float]:
    """The partition step run once more on the consensus of ``searches`` runs of it.

    ``search(graph, seed)`` is the whole partition step on ``graph`` (Louvain at the count,
    or the coarse search and its splits). Run ``i`` uses seed ``seed + 100 i`` on
    ``adjacency``; their partitions reweight its edges (:func:`consensus_graph`), and the
    step runs again, with ``seed``, on that graph. Where choosing one search picks among
    near-equals by noise, the consensus keeps what the searches agree on: edges inside a
    community in every run keep their weight, edges a node order happened to keep inside
    lose it. Returns the partition and the mean agreement of the graph's edges. No label is
    read.
    """
    if isinstance(searches, bool) or not isinstance(searches, int | np.integer) or searches < 2:
        raise ConfigError(f"a consensus of partitions needs at least 2 searches, "
                          f"got {searches!r}")
    started = time.perf_counter()
    partitions = [search(adjacency, seed + _SEARCH_SEED_STRIDE * i).labels
                  for i in range(int(searches))]
    graph, agreement = consensus_graph(adjacency, partitions)
    partition = search(graph, seed)
    logger.info("communities: the partition step rerun on the consensus of %d searches "
                "(their edges kept inside a community: %.3f on average) in %.1f s",
                len(partitions), agreement, time.perf_counter() - started)
    return partition, agreement
