"""Louvain communities of k-NN graphs: exact counts, the best start kept, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score
from sknetwork.clustering import get_modularity

from training import communities
from training.errors import ConfigError
from training.neighbors import nearest_neighbors


def _blobs(per: int = 150, centres: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    offsets = np.array([[4 * i, 5 * (i % 2)] for i in range(centres)], dtype=float)
    points = np.concatenate([rng.normal(0, 0.3, (per, 2)) + offset for offset in offsets])
    return points, np.repeat(np.arange(centres), per)


def test_adjacency_is_symmetric_without_self_loops() -> None:
    indices = np.array([[1, 2], [0, 0], [0, 1]])  # point 1 lists 0 twice; 0 -> 1 and 2
    a = communities.knn_adjacency(indices).toarray()
    np.testing.assert_array_equal(a, a.T)
    assert np.all(np.diag(a) == 0)
    np.testing.assert_array_equal(a, [[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    # A self match in the list is dropped rather than kept as a loop.
    assert communities.knn_adjacency(np.array([[0], [0]])).toarray().tolist() == [[0, 1], [1, 0]]


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        (np.zeros(3, dtype=int), "must be [n, k]"),
        (np.zeros((3, 0), dtype=int), "must be [n, k]"),
        (np.array([[1], [3], [0]]), "must lie in [0, 3)"),
        (np.array([[1], [-1], [0]]), "must lie in [0, 3)"),
    ],
)
def test_bad_neighbour_lists_are_refused(indices: np.ndarray, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        communities.knn_adjacency(indices)
    assert message in str(info.value)


@pytest.mark.parametrize("count", [4, 8])
def test_exactly_the_requested_count_and_the_blobs_found(count: int) -> None:
    points, truth = _blobs()
    _, indices = nearest_neighbors(points, 10)
    partition = communities.louvain_communities(communities.knn_adjacency(indices), count)
    assert partition.count == count
    assert sorted(np.unique(partition.labels)) == list(range(count))
    if count == 4:
        # Four separate blobs: the four communities are the blobs exactly.
        assert adjusted_rand_score(truth, partition.labels) == 1.0
    else:
        # Eight: the blobs are split, never mixed.
        for community in range(count):
            assert len(set(truth[partition.labels == community])) == 1


def test_the_kept_start_has_the_best_modularity_and_the_run_repeats() -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(size=(600, 5))  # no real groups: starts disagree
    _, indices = nearest_neighbors(points, 8)
    adjacency = communities.knn_adjacency(indices)
    one = communities.louvain_communities(adjacency, 6, seed=3, starts=1)
    best = communities.louvain_communities(adjacency, 6, seed=3, starts=6)
    assert one.count == best.count == 6 and best.starts_tried == 6 and one.starts_tried == 1
    # The first start is the one a single-start run keeps; a later one is better here.
    assert best.modularity > one.modularity
    assert best.modularity == pytest.approx(
        get_modularity(adjacency, best.labels, resolution=best.resolution))
    again = communities.louvain_communities(adjacency, 6, seed=3, starts=6)
    np.testing.assert_array_equal(again.labels, best.labels)


@pytest.mark.parametrize(
    ("count", "message"),
    [
        (1, "must be an integer >= 2, got 1"),
        (True, "must be an integer >= 2"),
        (2.0, "must be an integer >= 2"),
        (9, "9 communities need at least 9 images; there are 8"),
    ],
)
def test_bad_counts_are_refused(count: object, message: str) -> None:
    pairs = communities.knn_adjacency(np.array([[1], [0], [3], [2], [5], [4], [7], [6]]))
    with pytest.raises(ConfigError) as info:
        communities.louvain_communities(pairs, count)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_an_unreachable_count_names_the_problem() -> None:
    # Four separate pairs: no resolution joins points that share no edge, so two
    # communities cannot be had.
    pairs = communities.knn_adjacency(np.array([[1], [0], [3], [2], [5], [4], [7], [6]]))
    with pytest.raises(ConfigError, match="no Louvain resolution splits the neighbour graph "
                                          r"into exactly 2 communities \(the search saw 4-"):
        communities.louvain_communities(pairs, 2)
    assert communities.louvain_communities(pairs, 4).count == 4


# --- consensus of runs ----------------------------------------------------------------------------


def test_consensus_weights_keep_agreed_edges_and_cut_the_bridge() -> None:
    # Two cliques of six joined by one bridge edge: every run at a two-community
    # resolution keeps each clique whole and cuts the bridge.
    left = [(i, j) for i in range(6) for j in range(6) if i != j]
    right = [(i + 6, j + 6) for i, j in left]
    rows, cols = zip(*left, *right, (0, 6), (6, 0), strict=True)
    adjacency = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(12, 12))
    two = communities.louvain_communities(adjacency, 2, starts=1)
    weights = communities.consensus_graph(adjacency, two.resolution, runs=7, seed=0)
    assert (weights != weights.T).nnz == 0
    assert weights.nnz == adjacency.nnz  # the same edges, none dropped
    assert weights[0, 6] == pytest.approx(1e-3)  # cut in every run: the floor, not zero
    assert weights[0, 1] == weights[7, 8] == 1.0
    assert weights.data.min() == pytest.approx(1e-3) and weights.data.max() == 1.0


def test_consensus_partitions_count_repeat_and_agree_more_across_seeds() -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(size=(600, 5))  # no real groups: single runs disagree most
    _, indices = nearest_neighbors(points, 8)
    adjacency = communities.knn_adjacency(indices)
    found = communities.louvain_communities(adjacency, 6, seed=3, consensus_runs=10)
    assert found.count == 6 and found.consensus_runs == 10
    again = communities.louvain_communities(adjacency, 6, seed=3, consensus_runs=10)
    np.testing.assert_array_equal(again.labels, found.labels)
    # The modularity reported is the consensus graph's at the reported resolution.
    single = communities.louvain_communities(adjacency, 6, seed=3)
    weights = communities.consensus_graph(adjacency, single.resolution, runs=10, seed=3 + 5)
    assert found.modularity == pytest.approx(
        get_modularity(weights, found.labels, resolution=found.resolution))
    # The point of a consensus: partitions from different seeds agree more than single runs'.
    singles = [communities.louvain_communities(adjacency, 6, seed=s).labels for s in (0, 10, 20)]
    votes = [communities.louvain_communities(adjacency, 6, seed=s, consensus_runs=10).labels
             for s in (0, 10, 20)]

    def agreement(parts: list[np.ndarray]) -> float:
        return float(np.mean([adjusted_rand_score(a, b) for i, a in enumerate(parts)
                              for b in parts[i + 1:]]))

    assert agreement(votes) > agreement(singles)


@pytest.mark.parametrize("runs", [-1, True, 1.5, "3"])
def test_bad_consensus_run_counts_are_refused(runs: object) -> None:
    pairs = communities.knn_adjacency(np.array([[1], [0], [3], [2]]))
    with pytest.raises(ConfigError, match="consensus_runs must be an integer >= 0"):
        communities.louvain_communities(pairs, 2, consensus_runs=runs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="a consensus needs at least one run, got 0"):
        communities.consensus_graph(pairs, 1.0, runs=0, seed=0)
