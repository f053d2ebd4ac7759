"""k-means fitting (full and mini-batch), K selection and per-cluster statistics."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.datasets import load_digits, make_blobs

from service.bundle import ClusterStats, assign
from training.clustering import (
    KSelection,
    distance_stats,
    fit_kmeans,
    majority_label_map,
    save_k_selection,
    select_k,
)
from training.errors import ConfigError
from training.metrics import hungarian_accuracy


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(n_samples=300, centers=3, n_features=4, cluster_std=0.4,
                      center_box=(-10.0, 10.0), random_state=0)
    return x.astype(np.float32), y.astype(np.int64)


def test_fit_kmeans_assignments_equal_predict(digits: tuple[np.ndarray, np.ndarray],
                                              caplog: pytest.LogCaptureFixture) -> None:
    x, y = digits
    with caplog.at_level(logging.INFO, logger="training.clustering"):
        result = fit_kmeans(x.astype(np.float64), 10, seed=0, n_init=3)
    assert result.algorithm == "kmeans"
    assert isinstance(result.estimator, KMeans)
    assert result.centroids.dtype == np.float32
    assert result.centroids.shape == (10, 64)
    assert result.labels.dtype == np.int64
    np.testing.assert_array_equal(result.labels, result.estimator.predict(x))
    # The service's reference assignment agrees with scikit-learn's.
    ids, dist = assign(x, result.centroids)
    np.testing.assert_array_equal(ids, result.labels)
    assert result.inertia == pytest.approx(float(np.sum(dist.astype(np.float64) ** 2)),
                                           rel=1e-4)
    assert result.n_iter >= 1
    assert hungarian_accuracy(y, result.labels) > 0.6  # digits cluster well in pixel space
    messages = [r.getMessage() for r in caplog.records]
    assert any("done in" in m and "inertia" in m for m in messages)


def test_fit_kmeans_is_seeded(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = blobs
    a = fit_kmeans(x, 5, seed=7, n_init=1)
    b = fit_kmeans(x, 5, seed=7, n_init=1)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_minibatch_path(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    result = fit_kmeans(x, 10, seed=0, n_init=3, minibatch_threshold=1000, batch_size=256)
    assert result.algorithm == "minibatch"
    assert isinstance(result.estimator, MiniBatchKMeans)
    assert result.centroids.dtype == np.float32
    np.testing.assert_array_equal(result.labels, result.estimator.predict(x))
    assert hungarian_accuracy(y, result.labels) > 0.6
    # Below the threshold the exact algorithm runs.
    assert fit_kmeans(x[:500], 10, seed=0, n_init=1, minibatch_threshold=1000).algorithm == (
        "kmeans"
    )


@pytest.mark.parametrize(
    ("embeddings", "k", "match"),
    [
        (np.zeros((5, 2)), 6, "more than the 5 embeddings"),
        (np.zeros((5, 2)), 0, "at least 1"),
        (np.zeros((5, 2)), 2.5, "integer"),
        (np.array([[0.0, 1.0], [np.nan, 0.0]]), 1, "NaN or infinite"),
        (np.zeros(5), 1, "2-D"),
    ],
)
def test_fit_kmeans_config_errors(embeddings: np.ndarray, k: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        fit_kmeans(embeddings, k, seed=0)


def test_duplicate_embeddings_log_instead_of_warning(caplog: pytest.LogCaptureFixture) -> None:
    x = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0]], dtype=np.float32), 5, axis=0)
    with caplog.at_level(logging.WARNING, logger="training.clustering"):
        result = fit_kmeans(x, 3, seed=0, n_init=1)
    assert result.centroids.shape == (3, 2)
    assert any("only 2 distinct clusters" in r.getMessage() for r in caplog.records)


def test_select_k_three_blobs(blobs: tuple[np.ndarray, np.ndarray],
                              caplog: pytest.LogCaptureFixture) -> None:
    x, _ = blobs
    with caplog.at_level(logging.INFO, logger="training.clustering"):
        selection = select_k(x, [6, 2, 3, 4, 5, 3], seed=0, sample_size=200, n_init=3)
    assert selection.k_values == [2, 3, 4, 5, 6]
    assert selection.chosen_k == 3
    assert selection.elbow_k == 3
    assert len(selection.silhouette) == len(selection.mean_distance) == 5
    assert max(selection.silhouette) == selection.silhouette[1] > 0.7
    assert all(a >= b for a, b in zip(selection.inertia, selection.inertia[1:], strict=False))
    per_k = [r.getMessage() for r in caplog.records if "K selection " in r.getMessage()]
    assert len(per_k) == 5


def test_select_k_mean_distance_is_mean_of_assigned_distances(
    blobs: tuple[np.ndarray, np.ndarray],
) -> None:
    x, _ = blobs
    selection = select_k(x, [4], seed=1, n_init=2)
    result = fit_kmeans(x, 4, seed=1, n_init=2)
    _, dist = assign(x, result.centroids)
    assert selection.mean_distance[0] == pytest.approx(float(dist.mean()), rel=1e-4)
    assert selection.inertia[0] == pytest.approx(result.inertia)


def test_select_k_config_errors(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = blobs
    with pytest.raises(ConfigError, match="empty"):
        select_k(x, [], seed=0)
    with pytest.raises(ConfigError, match="at least 2"):
        select_k(x, [1, 2], seed=0)
    with pytest.raises(ConfigError, match="more than the 10 embeddings"):
        select_k(x[:10], [2, 11], seed=0)


def test_save_k_selection(tmp_path: Path) -> None:
    selection = KSelection(
        k_values=[2, 3, 4, 5], mean_distance=[3.0, 1.0, 0.9, 0.8],
        inertia=[90.0, 10.0, 8.0, 7.0], silhouette=[0.5, 0.8, math.nan, 0.3],
        chosen_k=3, elbow_k=3,
    )
    paths = save_k_selection(selection, tmp_path / "report")
    assert [p.name for p in paths] == ["k_selection.json", "k_selection.png"]
    data = json.loads(paths[0].read_text(encoding="utf-8"))
    assert data["chosen_k"] == 3
    assert data["silhouette"] == [0.5, 0.8, None, 0.3]
    with Image.open(paths[1]) as image:
        assert image.format == "PNG"
        assert image.size == (1000, 400)


def test_distance_stats_by_hand() -> None:
    distances = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 10.0], dtype=np.float32)
    cluster_ids = np.array([0, 0, 0, 0, 0, 2])
    stats = distance_stats(distances, cluster_ids, 3)
    assert [s["cluster"] for s in stats] == [0, 1, 2]
    c0, c1, c2 = stats
    # Linear interpolation on [1, 2, 3, 4, 5]: position q/100 * 4.
    assert c0 == {"cluster": 0, "count": 5, "mean": 3.0, "p50": 3.0,
                  "p95": pytest.approx(4.8), "p99": pytest.approx(4.96)}
    assert c1 == {"cluster": 1, "count": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0}
    assert c2 == {"cluster": 2, "count": 1, "mean": 10.0, "p50": 10.0, "p95": 10.0,
                  "p99": 10.0}
    # Exactly the bundle contract's fields.
    for entry in stats:
        assert set(entry) == set(ClusterStats.model_fields)
        ClusterStats.model_validate(entry)


def test_distance_stats_errors() -> None:
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        distance_stats(np.ones(3), np.array([0, 1, 2]), 2)
    with pytest.raises(ConfigError, match="equal length"):
        distance_stats(np.ones(3), np.array([0, 1]), 2)
    with pytest.raises(ConfigError, match="NaN"):
        distance_stats(np.array([1.0, np.nan]), np.array([0, 1]), 2)


def test_majority_label_map_ties_and_unknown() -> None:
    cluster_ids = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
    labels = np.array([5, 2, 2, 5, 1, 1, -1, -1, -1, 0])
    # cluster 0: labels 2 and 5 tie -> 2; cluster 1: 1; cluster 2: only unknown -> absent;
    # cluster 3: 0; cluster 4: no members -> absent.
    assert majority_label_map(cluster_ids, labels, 5) == {0: 2, 1: 1, 3: 0}
    assert majority_label_map(cluster_ids, np.full(10, -1), 5) == {}
    with pytest.raises(ConfigError, match="integers"):
        majority_label_map(cluster_ids, labels.astype(np.float64), 5)
