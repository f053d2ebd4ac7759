"""Louvain communities of k-NN graphs: exact counts, the best start kept, coarse communities
split by spread, the consensus of several searches, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from sknetwork.clustering import get_modularity

from training.errors import ConfigError
from training.knn_graph import nearest_neighbors
from training.recipes import communities


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
    with caplog.at_level("WARNING", logger="training.recipes.communities"):
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
    with caplog.at_level("WARNING", logger="training.recipes.communities"):
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
                       "effective_count": 2.828, "coarse_count": None}
    assert json.loads(json.dumps(summary)) == summary


def _coarse(labels: np.ndarray) -> communities.Partition:
    return communities.Partition(labels=labels, resolution=0.5, modularity=0.25, starts_tried=5)


def _spread_and_size() -> tuple[np.ndarray, np.ndarray]:
    """Group 0: two tight blobs 10 apart (60 points each, widely spread); group 1: one
    tight blob of 200 points (the larger, but with little spread)."""
    rng = np.random.default_rng(2)
    points = np.concatenate([rng.normal(0, 0.2, (60, 2)),
                             rng.normal(0, 0.2, (60, 2)) + np.array([10.0, 0.0]),
                             rng.normal(0, 0.3, (200, 2)) + np.array([5.0, 8.0])])
    return points, np.repeat([0, 1, 2], [60, 60, 200])


def test_the_most_spread_community_is_split_not_the_largest(
        caplog: pytest.LogCaptureFixture) -> None:
    points, truth = _spread_and_size()
    adjacency = communities.knn_adjacency(nearest_neighbors(points, 6)[1])
    coarse = _coarse(np.where(truth == 2, 1, 0))
    with caplog.at_level("INFO", logger="training.recipes.communities"):
        split = communities.split_communities(adjacency, points, coarse, 3, seed=0)
    # Splitting by size would have cut the 200-point blob; the spread cuts the two blobs.
    assert adjusted_rand_score(truth, split.labels) == 1.0
    assert split.count == 3 and np.all(split.labels[truth == 2] == 1)
    assert split.coarse_count == 2 and split.summary()["coarse_count"] == 2
    assert split.summary()["sizes"] == [60, 200, 60]
    # The coarse partition's search is what resolution, modularity and starts describe.
    assert (split.resolution, split.modularity, split.starts_tried) == (0.5, 0.25, 5)
    np.testing.assert_array_equal(coarse.labels, np.where(truth == 2, 1, 0))  # not changed
    assert "split community 0 (120 images) into 60 and 60" in caplog.text
    assert "3 from 2 by splitting the most spread" in caplog.text
    again = communities.split_communities(adjacency, points, coarse, 3, seed=0)
    np.testing.assert_array_equal(again.labels, split.labels)


def test_a_community_without_a_two_way_split_is_passed_over() -> None:
    points, truth = _spread_and_size()
    # Three far-flung points (the most spread group) linked only to the blobs: their own
    # subgraph has no edge, so Louvain gives three singletons at every resolution.
    far = np.array([[-40.0, -40.0], [60.0, -40.0], [5.0, 60.0]])
    everything = np.concatenate([points, far])
    indices = np.concatenate([nearest_neighbors(points, 6)[1],
                              np.array([[0] * 6, [60] * 6, [120] * 6])])
    indices[:3, 0] = [320, 321, 322]  # the blobs list them too, so the graph is symmetric
    adjacency = communities.knn_adjacency(indices)
    coarse = _coarse(np.concatenate([np.where(truth == 2, 1, 0), [2, 2, 2]]))
    split = communities.split_communities(adjacency, everything, coarse, 4, seed=0)
    assert np.all(split.labels[-3:] == 2)  # passed over, whole
    assert adjusted_rand_score(truth, split.labels[:-3]) == 1.0  # the next most spread split


def test_a_graph_without_edges_names_the_problem() -> None:
    empty = communities.knn_adjacency(np.array([[1], [0], [3], [2]]))[[0, 2]][:, [0, 2]]
    with pytest.raises(ConfigError, match="the neighbour graph of 2 images has no edges"):
        communities.louvain_communities(empty.tocsr(), 2)


def test_no_community_to_split_names_the_problem() -> None:
    # Two communities of three points whose only edges run between them.
    indices = np.array([[3, 4, 5], [3, 4, 5], [3, 4, 5], [0, 1, 2], [0, 1, 2], [0, 1, 2]])
    adjacency = communities.knn_adjacency(indices)
    points = np.arange(12, dtype=float).reshape(6, 2)
    with pytest.raises(ConfigError, match="no community of the 2 found splits in two"):
        communities.split_communities(adjacency, points, _coarse(np.array([0, 0, 0, 1, 1, 1])),
                                      3)


@pytest.mark.parametrize(
    ("count", "rows", "message"),
    [
        (2, 320, r"needs more communities \(2\) than the coarse partition has \(2\)"),
        (1, 320, r"needs more communities \(1\)"),
        (3.0, 320, "the community count must be an integer, got 3.0"),
        (3, 319, r"features \(319, 2\) and graph \(320, 320\) must have one row per node "
                 r"of the partition \(320\)"),
    ],
)
def test_bad_splits_are_refused(count: object, rows: int, message: str) -> None:
    points, truth = _spread_and_size()
    adjacency = communities.knn_adjacency(nearest_neighbors(points, 6)[1])
    with pytest.raises(ConfigError, match=message):
        communities.split_communities(adjacency, points[:rows], _coarse(np.where(truth == 2, 1, 0)),
                                      count)  # type: ignore[arg-type]


def _partition(labels: list[int]) -> communities.Partition:
    return communities.Partition(labels=np.array(labels), resolution=1.0, modularity=0.5,
                                 starts_tried=1)


def test_the_consensus_graph_weighs_each_edge_by_how_often_it_stays_inside() -> None:
    # A path 0-1-2-3: edge 0-1 inside in both partitions, 1-2 in one, 2-3 in neither.
    adjacency = communities.knn_adjacency(np.array([[1], [2], [3], [2]]))
    graph, agreement = communities.consensus_graph(adjacency, [np.array([0, 0, 0, 1]),
                                                               np.array([0, 0, 1, 2])])
    floor, power = communities.CONSENSUS_FLOOR, communities.CONSENSUS_POWER
    weight = {1.0: 1.0, 0.5: floor + (1 - floor) * 0.5 ** power, 0.0: floor}
    for (i, j), share in {(0, 1): 1.0, (1, 2): 0.5, (2, 3): 0.0}.items():
        assert graph[i, j] == graph[j, i] == pytest.approx(weight[share])
    assert graph.nnz == adjacency.nnz  # no edge added, none lost
    assert (graph != graph.T).nnz == 0
    assert agreement == pytest.approx(0.5)  # the mean of 1, 0.5 and 0 over the edges


@pytest.mark.parametrize("partitions, message", [
    ([], "at least one partition"),
    ([np.zeros(3, dtype=int)], "must each label the graph's 4 nodes"),
])
def test_bad_consensus_partitions_are_refused(partitions: list[np.ndarray],
                                              message: str) -> None:
    adjacency = communities.knn_adjacency(np.array([[1], [2], [3], [2]]))
    with pytest.raises(ConfigError, match=message):
        communities.consensus_graph(adjacency, partitions)


def test_the_consensus_step_reruns_the_search_on_what_the_searches_agree_on(
        caplog: pytest.LogCaptureFixture) -> None:
    points, truth = _blobs(centres=4)
    adjacency = communities.knn_adjacency(nearest_neighbors(points, 10)[1])
    calls: list[tuple[bool, int]] = []

    def search(graph: communities.sp.csr_matrix, seed: int) -> communities.Partition:
        calls.append((graph is adjacency, seed))
        return communities.louvain_communities(graph, 4, seed=seed)

    with caplog.at_level("INFO"):
        partition, agreement = communities.consensus_partition(search, adjacency, 3, seed=5)
    # Three searches on the graph itself (seed + 100 i), then one on the consensus graph.
    assert calls == [(True, 5), (True, 105), (True, 205), (False, 5)]
    assert partition.count == 4
    assert adjusted_rand_score(truth, partition.labels) == pytest.approx(1.0)
    coo = adjacency.tocoo()
    inside = [np.mean(p[coo.row] == p[coo.col]) for p in
              (communities.louvain_communities(adjacency, 4, seed=s).labels
               for s in (5, 105, 205))]
    assert agreement == pytest.approx(np.mean(inside))
    assert 0.9 < agreement <= 1.0  # blobs: nearly every neighbour edge stays inside
    assert "rerun on the consensus of 3 searches" in caplog.text


def test_the_consensus_graph_changes_the_final_search() -> None:
    # The last search sees the reweighted graph: with partitions that all cut the blobs
    # the same way, its edges across blobs weigh CONSENSUS_FLOOR, inside ones 1.
    points, truth = _blobs(centres=4)
    adjacency = communities.knn_adjacency(nearest_neighbors(points, 10)[1])
    seen: list[communities.sp.csr_matrix] = []

    def search(graph: communities.sp.csr_matrix, seed: int) -> communities.Partition:
        seen.append(graph)
        return _partition(list(truth))

    communities.consensus_partition(search, adjacency, 2)
    final = seen[-1].tocoo()
    across = truth[final.row] != truth[final.col]
    assert np.all(final.data[across] == pytest.approx(communities.CONSENSUS_FLOOR))
    assert np.all(final.data[~across] == pytest.approx(1.0))


@pytest.mark.parametrize("searches", [1, 0, 2.5, True])
def test_a_consensus_needs_two_searches(searches: object) -> None:
    adjacency = communities.knn_adjacency(np.array([[1], [0]]))
    with pytest.raises(ConfigError, match="needs at least 2 searches"):
        communities.consensus_partition(lambda graph, seed: _partition([0, 1]), adjacency,
                                        searches)  # type: ignore[arg-type]
