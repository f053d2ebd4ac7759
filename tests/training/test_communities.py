"""Louvain communities of k-NN graphs: exact counts, the best start kept, the most even of
several searches kept, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
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


def test_a_node_order_that_steps_over_the_count_gives_way_to_the_next(
        caplog: pytest.LogCaptureFixture) -> None:
    # On this graph the first node order of seed 0 gives 9 communities just below a
    # resolution and 11 just above it; the run must not die for it when the next order
    # lands on 10.
    points = np.random.default_rng(0).normal(size=(300, 5))
    _, indices = nearest_neighbors(points, 10)
    adjacency = communities.knn_adjacency(indices)
    with caplog.at_level("WARNING", logger="training.communities"):
        partition = communities.louvain_communities(adjacency, 10, seed=0)
    assert partition.count == 10 and partition.starts_tried == 5
    assert np.bincount(partition.labels).min() > 0
    assert "the first 1 node order(s) of seed 0 step over 10 communities" in caplog.text
    assert partition.modularity == pytest.approx(
        get_modularity(adjacency, partition.labels, resolution=partition.resolution))
    again = communities.louvain_communities(adjacency, 10, seed=0)
    np.testing.assert_array_equal(again.labels, partition.labels)
    # Where the first order lands on the count, nothing is searched past it or logged.
    caplog.clear()
    with caplog.at_level("WARNING", logger="training.communities"):
        communities.louvain_communities(adjacency, 10, seed=1)
    assert "step over" not in caplog.text


def test_an_unreachable_count_names_the_problem() -> None:
    # Four separate pairs: no resolution joins points that share no edge, so two
    # communities cannot be had.
    pairs = communities.knn_adjacency(np.array([[1], [0], [3], [2], [5], [4], [7], [6]]))
    with pytest.raises(ConfigError, match="no Louvain resolution splits the neighbour graph "
                                          r"into exactly 2 communities \(the search saw 4-4 over 8 "
                                          r"node orders\)"):
        communities.louvain_communities(pairs, 2)
    assert communities.louvain_communities(pairs, 4).count == 4


@pytest.mark.parametrize(
    ("labels", "entropy"),
    [
        ([0, 0, 1, 1], np.log(2)),
        ([0, 0, 0, 1], -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))),
        ([0, 1, 2, 0, 1, 2], np.log(3)),
    ],
)
def test_size_entropy_by_hand(labels: list[int], entropy: float) -> None:
    partition = communities.Partition(labels=np.array(labels), resolution=1.0, modularity=0.0,
                                      starts_tried=1)
    assert partition.size_entropy == pytest.approx(entropy)


def test_partition_summary_by_hand() -> None:
    partition = communities.Partition(labels=np.array([0, 0, 1, 1, 2, 2, 2, 2]),
                                      resolution=0.98765432, modularity=0.5, starts_tried=5)
    summary = partition.summary()
    assert summary == {"count": 3, "resolution": 0.987654, "modularity": 0.5,
                       "starts_tried": 5, "sizes": [2, 2, 4],
                       # exp of -(2 * 0.25 ln 0.25 + 0.5 ln 0.5) = 2 * sqrt(2)
                       "effective_count": 2.828}
    assert json.loads(json.dumps(summary)) == summary


def test_the_most_even_of_several_searches_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    points = np.random.default_rng(1).normal(size=(600, 5))  # no real groups: searches differ
    _, indices = nearest_neighbors(points, 8)
    adjacency = communities.knn_adjacency(indices)
    singles = [communities.louvain_communities(adjacency, 6, seed=3 + 100 * i)
               for i in range(4)]
    entropies = [p.size_entropy for p in singles]
    assert len(set(np.round(entropies, 9))) > 1  # the searches really differ here
    # One search is exactly the single Louvain search of the same seed.
    one = communities.most_even_communities(adjacency, 6, seed=3, searches=1)
    np.testing.assert_array_equal(one.labels, singles[0].labels)
    with caplog.at_level("INFO", logger="training.communities"):
        kept = communities.most_even_communities(adjacency, 6, seed=3, searches=4)
    winner = int(np.argmax(entropies))
    np.testing.assert_array_equal(kept.labels, singles[winner].labels)
    assert kept.size_entropy == max(entropies) and kept.count == 6
    assert "kept the most even of 4 searches (effective counts " in caplog.text
    again = communities.most_even_communities(adjacency, 6, seed=3, searches=4)
    np.testing.assert_array_equal(again.labels, kept.labels)


@pytest.mark.parametrize("searches", [0, -1, 2.0, True])
def test_bad_search_counts_are_refused(searches: object) -> None:
    pairs = communities.knn_adjacency(np.array([[1], [0], [3], [2], [5], [4], [7], [6]]))
    with pytest.raises(ConfigError, match="searches must be an integer >= 1, got "):
        communities.most_even_communities(pairs, 4, searches=searches)  # type: ignore[arg-type]
