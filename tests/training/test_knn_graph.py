"""The k-nearest-neighbour graph: exact neighbours on hand-made points, UMAP's fuzzy weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from training.errors import ConfigError
from training.knn_graph import NeighborGraph, fuzzy_graph, nearest_neighbors

# --- nearest_neighbors ------------------------------------------------------------------------


def test_neighbours_of_points_on_a_line() -> None:
    points = np.array([[0.0], [1.0], [3.0], [7.0]])
    distances, indices = nearest_neighbors(points, 2)
    np.testing.assert_array_equal(indices, [[1, 2], [0, 2], [1, 0], [2, 1]])
    np.testing.assert_allclose(distances, [[1, 3], [1, 2], [2, 3], [4, 6]])
    assert distances.dtype == np.float64 and indices.dtype == np.int64


def test_neighbours_in_two_dimensions_nearest_first() -> None:
    points = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0], [10.0, 0.0], [2.0, 0.0]])
    distances, indices = nearest_neighbors(points, 3)
    assert distances.shape == indices.shape == (5, 3)
    expected = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=2)
    np.fill_diagonal(expected, np.inf)
    np.testing.assert_array_equal(indices, np.argsort(expected, axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(distances, np.sort(expected, axis=1)[:, :3])
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_self_is_never_a_neighbour() -> None:
    points = np.random.default_rng(0).normal(size=(50, 3))
    _, indices = nearest_neighbors(points, 7)
    assert not np.any(indices == np.arange(50)[:, None])
    # k distinct neighbours per point.
    assert all(len(set(row)) == 7 for row in indices.tolist())


def test_exact_duplicates_are_neighbours_at_distance_zero() -> None:
    points = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 6.0]])
    distances, indices = nearest_neighbors(points, 2)
    assert not np.any(indices == np.arange(5)[:, None])
    for i in range(3):
        assert set(indices[i].tolist()) == {0, 1, 2} - {i}
        np.testing.assert_array_equal(distances[i], [0.0, 0.0])
    np.testing.assert_array_equal(indices[3:, 0], [4, 3])
    np.testing.assert_allclose(distances[3:, 0], [1.0, 1.0])


def test_more_duplicates_than_neighbours_still_excludes_self() -> None:
    # Six copies of one point and k = 2: the index may return any three of the copies, and
    # a point's own index is then not necessarily among them.
    points = np.vstack([np.zeros((6, 2)), [[9.0, 9.0]]])
    distances, indices = nearest_neighbors(points, 2)
    assert not np.any(indices == np.arange(7)[:, None])
    assert np.all(indices[:6] < 6)
    np.testing.assert_array_equal(distances[:6], 0.0)
    assert all(len(set(row)) == 2 for row in indices.tolist())


def test_integer_features_are_accepted() -> None:
    points = np.array([[0, 0], [0, 2], [5, 5]], dtype=np.int64)
    distances, indices = nearest_neighbors(points, 1)
    np.testing.assert_array_equal(indices[:, 0], [1, 0, 1])
    np.testing.assert_allclose(distances[:, 0], [2.0, 2.0, math.hypot(5, 3)], rtol=1e-6)


def test_cosine_metric() -> None:
    points = np.array([[1.0, 0.0], [10.0, 1.0], [0.0, 1.0], [0.1, 5.0]])
    _, indices = nearest_neighbors(points, 1, metric="cosine")
    np.testing.assert_array_equal(indices[:, 0], [1, 0, 3, 2])


@pytest.mark.parametrize(
    ("features", "k", "message"),
    [
        (np.zeros((4, 2)), 4, "4 neighbours need more than 4 points; there are 4"),
        (np.zeros((4, 2)), 9, "there are 4"),
        (np.zeros((4, 2)), 0, "positive integer, got 0"),
        (np.zeros((4, 2)), -1, "positive integer, got -1"),
        (np.zeros((4, 2)), 2.0, "positive integer, got 2.0"),
        (np.zeros((4, 2)), True, "positive integer, got True"),
        (np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]]), 1, "NaN or infinite"),
        (np.array([[0.0, 1.0], [np.inf, 0.0], [1.0, 1.0]]), 1, "NaN or infinite"),
        (np.arange(5.0), 1, "features must be [n >= 2, d >= 1], got shape (5,)"),
        (np.zeros((2, 2, 2)), 1, "got shape (2, 2, 2)"),
        (np.zeros((1, 3)), 1, "got shape (1, 3)"),
        (np.zeros((3, 0)), 1, "got shape (3, 0)"),
    ],
)
def test_bad_inputs_raise_config_error(features: np.ndarray, k: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        nearest_neighbors(features, k)
    assert message in str(info.value)


# --- fuzzy_graph --------------------------------------------------------------------------------


def _as_dict(graph: NeighborGraph) -> dict[tuple[int, int], float]:
    edges = {(int(h), int(t)): float(w)
             for h, t, w in zip(graph.heads, graph.tails, graph.weights, strict=True)}
    assert len(edges) == graph.n_edges, "an edge is stored twice"
    return edges


def _umap_reference(distances: np.ndarray, indices: np.ndarray) -> dict[tuple[int, int], float]:
    """UMAP's fuzzy union, computed edge by edge with a root finder for each bandwidth."""
    n, k = distances.shape
    target = math.log2(k)
    directed: dict[tuple[int, int], float] = {}
    for i in range(n):
        shifted = distances[i] - distances[i, 0]

        def excess(sigma: float, shifted: np.ndarray = shifted) -> float:
            return float(np.exp(-shifted / sigma).sum()) - target

        sigma = brentq(excess, 1e-6, 1e6, xtol=1e-14, rtol=1e-14)
        for j, s in zip(indices[i], shifted, strict=True):
            directed[(i, int(j))] = math.exp(-s / sigma)
    union: dict[tuple[int, int], float] = {}
    for (i, j), a in directed.items():
        b = directed.get((j, i), 0.0)
        union[(i, j)] = union[(j, i)] = a + b - a * b
    return union


@pytest.fixture(scope="module")
def random_knn() -> tuple[np.ndarray, np.ndarray]:
    points = np.random.default_rng(3).normal(size=(40, 4))
    return nearest_neighbors(points, 6)


def test_graph_is_symmetric_with_weights_in_unit_interval(
        random_knn: tuple[np.ndarray, np.ndarray]) -> None:
    graph = fuzzy_graph(*random_knn)
    assert graph.n == 40
    assert graph.heads.dtype == graph.tails.dtype == np.int64
    edges = _as_dict(graph)
    for (i, j), w in edges.items():
        assert i != j
        assert edges[(j, i)] == w
    assert np.all(graph.weights > 0) and np.all(graph.weights <= 1)
    # Every directed kNN edge survives the union (in both directions).
    _, indices = random_knn
    for i, row in enumerate(indices):
        for j in row:
            assert (i, int(j)) in edges and (int(j), i) in edges


def test_nearest_neighbour_edges_have_weight_one(
        random_knn: tuple[np.ndarray, np.ndarray]) -> None:
    distances, indices = random_knn
    edges = _as_dict(fuzzy_graph(distances, indices))
    for i in range(len(indices)):
        # exp(-(rho - rho) / sigma) = 1 and the fuzzy union of 1 with anything is 1.
        assert edges[(i, int(indices[i, 0]))] == pytest.approx(1.0, abs=1e-12)
        assert edges[(int(indices[i, 0]), i)] == pytest.approx(1.0, abs=1e-12)


def test_weights_match_a_direct_umap_computation(
        random_knn: tuple[np.ndarray, np.ndarray]) -> None:
    distances, indices = random_knn
    edges = _as_dict(fuzzy_graph(distances, indices))
    expected = _umap_reference(distances, indices)
    assert edges.keys() == expected.keys()
    for key, w in expected.items():
        assert edges[key] == pytest.approx(w, abs=1e-9), key


def test_directed_rows_sum_to_log2_k() -> None:
    # Neighbour lists whose edges are never mutual: the union then leaves each directed
    # weight as it is, so each point's outgoing edges are exactly its bandwidth-scaled row.
    rng = np.random.default_rng(7)
    n, k = 40, 4
    indices = np.array([[(i + 1 + j) % n for j in range(k)] for i in range(n)])
    distances = np.sort(rng.uniform(0.5, 3.0, size=(n, k)), axis=1)
    # i -> i+1..i+4 and j -> j+1..j+4 are never both present when n > 2k.
    graph = fuzzy_graph(distances, indices)
    edges = _as_dict(graph)
    for i in range(n):
        row = [edges[(i, int(j))] for j in indices[i]]
        assert sum(row) == pytest.approx(math.log2(k), rel=1e-9)
        assert row[0] == 1.0
        assert row == sorted(row, reverse=True)


def test_a_single_neighbour_gives_weight_one() -> None:
    distances = np.array([[1.0], [1.0], [2.5]])
    indices = np.array([[1], [0], [1]])
    edges = _as_dict(fuzzy_graph(distances, indices))
    assert edges == {(0, 1): 1.0, (1, 0): 1.0, (1, 2): 1.0, (2, 1): 1.0}


def test_duplicate_points_give_finite_weights() -> None:
    points = np.vstack([np.zeros((4, 2)), [[1.0, 0.0], [1.0, 1.0]]])
    graph = fuzzy_graph(*nearest_neighbors(points, 3))
    assert np.all(np.isfinite(graph.weights))
    assert np.all(graph.weights > 0) and np.all(graph.weights <= 1)
    edges = _as_dict(graph)
    for i in range(4):
        for j in range(4):
            if i != j:
                assert edges[(i, j)] == 1.0


@pytest.mark.parametrize(
    ("distances", "indices", "message"),
    [
        (np.ones((3, 2)), np.zeros((3, 3), dtype=np.int64), "must both be [n, k]"),
        (np.ones((3, 2)), np.zeros((2, 2), dtype=np.int64), "must both be [n, k]"),
        (np.ones(3), np.zeros(3, dtype=np.int64), "must both be [n, k]"),
        (np.ones((3, 0)), np.zeros((3, 0), dtype=np.int64), "must both be [n, k]"),
        (np.array([[1.0], [-0.5], [1.0]]), np.array([[1], [0], [1]]), "non-negative"),
        (np.array([[1.0], [np.nan], [1.0]]), np.array([[1], [0], [1]]), "finite"),
        (np.array([[1.0], [np.inf], [1.0]]), np.array([[1], [0], [1]]), "finite"),
    ],
)
def test_bad_graph_inputs_raise_config_error(distances: np.ndarray, indices: np.ndarray,
                                             message: str) -> None:
    with pytest.raises(ConfigError) as info:
        fuzzy_graph(distances, indices)
    assert message in str(info.value)
