"""Clustering and reconstruction metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from training.errors import DataError
from training.metrics import (
    clustering_scores,
    contingency,
    hungarian_accuracy,
    majority_accuracy,
    reconstruction_scores,
    sampled_silhouette,
)


def test_contingency_rows_are_clusters_and_ignores_unknown() -> None:
    y_true = np.array([0, 0, 1, 2, -1, 2])
    y_pred = np.array([1, 1, 0, 0, 2, 0])
    expected = np.array([[0, 1, 2], [2, 0, 0], [0, 0, 0]])  # cluster 2 only has a -1 member
    np.testing.assert_array_equal(contingency(y_true, y_pred), expected)


def test_hungarian_permuted_labels_is_one() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([2, 2, 0, 0, 1, 1, 1])
    assert hungarian_accuracy(y_true, y_pred) == 1.0
    assert majority_accuracy(y_true, y_pred) == 1.0


def test_hungarian_square_by_hand() -> None:
    # Contingency (clusters x classes): [[3, 1], [2, 0]]. Best one-to-one matching:
    # c0->1, c1->0 gives 1 + 2 = 3 (c0->0, c1->1 gives 3 + 0 = 3 too) -> 3/6.
    # Majority: c0->0 (3), c1->0 (2) -> 5/6.
    y_true = np.array([0, 0, 0, 1, 0, 0])
    y_pred = np.array([0, 0, 0, 0, 1, 1])
    assert hungarian_accuracy(y_true, y_pred) == pytest.approx(3 / 6)
    assert majority_accuracy(y_true, y_pred) == pytest.approx(5 / 6)


def test_hungarian_more_clusters_than_classes() -> None:
    # 4 clusters, 2 classes: only two clusters can get a class.
    # Contingency [[3, 0], [2, 0], [0, 2], [0, 1]] -> c0->0 (3) + c2->1 (2) = 5 of 8.
    y_true = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    y_pred = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    assert hungarian_accuracy(y_true, y_pred) == pytest.approx(5 / 8)
    assert majority_accuracy(y_true, y_pred) == 1.0


def test_hungarian_fewer_clusters_than_classes() -> None:
    # 2 clusters, 3 classes: contingency [[2, 1, 0], [0, 1, 2]] -> 2 + 2 = 4 of 6.
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1])
    assert hungarian_accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    assert majority_accuracy(y_true, y_pred) == pytest.approx(4 / 6)


def test_unknown_labels_are_ignored() -> None:
    y_true = np.array([0, 0, -1, 1, -1])
    y_pred = np.array([1, 1, 0, 0, 1])
    assert hungarian_accuracy(y_true, y_pred) == 1.0
    with pytest.raises(DataError, match="every label is -1"):
        hungarian_accuracy(np.array([-1, -1]), np.array([0, 1]))


def test_nmi_and_ari_by_hand() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 1])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    emb = np.array([[0.0], [0.1], [1.0], [1.1], [5.0], [5.1]], dtype=np.float32)
    scores = clustering_scores(y_true, y_pred, emb)
    # Joint probabilities: (t0,p0)=2/6, (t0,p1)=1/6, (t1,p1)=1/6, (t1,p2)=2/6.
    pt = {0: 0.5, 1: 0.5}
    pp = {0: 2 / 6, 1: 2 / 6, 2: 2 / 6}
    joint = {(0, 0): 2 / 6, (0, 1): 1 / 6, (1, 1): 1 / 6, (1, 2): 2 / 6}
    mi = sum(p * math.log(p / (pt[t] * pp[c])) for (t, c), p in joint.items())
    h_true = -sum(p * math.log(p) for p in pt.values())
    h_pred = -sum(p * math.log(p) for p in pp.values())
    nmi = mi / ((h_true + h_pred) / 2)
    assert scores["nmi"] == pytest.approx(nmi)
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(y_true, y_pred))
    # ARI: sum C(n_ij, 2) = 2, rows 2 * C(3, 2) = 6, columns 3 * C(2, 2) = 3, C(6, 2) = 15.
    expected_index = 6 * 3 / 15
    ari = (2 - expected_index) / ((6 + 3) / 2 - expected_index)
    assert scores["ari"] == pytest.approx(ari)
    assert scores["ari"] == pytest.approx(0.8 / 3.3)
    assert scores["n"] == 6
    assert scores["n_labelled"] == 6
    assert scores["n_clusters_used"] == 3
    assert scores["hungarian_accuracy"] == pytest.approx(4 / 6)
    assert scores["majority_accuracy"] == pytest.approx(5 / 6)
    assert scores["silhouette"] is not None


def test_clustering_scores_match_sklearn_on_digits() -> None:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    # A crude clustering that is neither perfect nor random: the class id rotated, and
    # every fifth sample moved to the next cluster.
    pred = (y + 3) % 10
    pred[::5] = (pred[::5] + 1) % 10
    y_masked = y.copy()
    y_masked[::7] = -1
    scores = clustering_scores(y_masked, pred, x, seed=0, silhouette_sample=500)
    keep = y_masked >= 0
    assert scores["n"] == len(y)
    assert scores["n_labelled"] == int(keep.sum())
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(y[keep], pred[keep]))
    assert scores["ari"] == pytest.approx(adjusted_rand_score(y[keep], pred[keep]))
    exact = float(np.mean(((y[keep] + 3) % 10) == pred[keep]))
    assert scores["hungarian_accuracy"] == pytest.approx(exact)
    assert 0.75 < exact < 0.85


def test_clustering_scores_without_labels() -> None:
    emb = np.array([[0.0, 0.0], [0.1, 0.0], [3.0, 3.0], [3.1, 3.0]], dtype=np.float32)
    pred = np.array([0, 0, 1, 1])
    for y_true in (None, np.full(4, -1)):
        scores = clustering_scores(y_true, pred, emb)
        for key in ("hungarian_accuracy", "majority_accuracy", "nmi", "ari"):
            assert scores[key] is None
        assert scores["silhouette"] == pytest.approx(_silhouette_by_definition(emb, pred))


def _silhouette_by_definition(emb: np.ndarray, ids: np.ndarray) -> float:
    """s_i = (b_i - a_i) / max(a_i, b_i), written out from Rousseeuw's definition."""
    values = []
    for i in range(len(emb)):
        dist = np.linalg.norm(emb - emb[i], axis=1)
        same = (ids == ids[i]) & (np.arange(len(emb)) != i)
        a = dist[same].mean()
        b = min(dist[ids == other].mean() for other in set(ids.tolist()) - {ids[i]})
        values.append((b - a) / max(a, b))
    return float(np.mean(values))


def test_silhouette_none_with_one_cluster() -> None:
    emb = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    scores = clustering_scores(np.arange(10) % 2, np.zeros(10, dtype=np.int64), emb)
    assert scores["n_clusters_used"] == 1
    assert scores["silhouette"] is None


def test_sampled_silhouette_is_seeded() -> None:
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(400, 4)).astype(np.float32)
    ids = (emb[:, 0] > 0).astype(np.int64)
    a = sampled_silhouette(emb, ids, sample_size=100, seed=3)
    b = sampled_silhouette(emb, ids, sample_size=100, seed=3)
    c = sampled_silhouette(emb, ids, sample_size=100, seed=4)
    assert a == b
    assert a != c


def test_bad_inputs_raise_data_error() -> None:
    with pytest.raises(DataError, match="entries"):
        hungarian_accuracy(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(DataError, match=">= 0"):
        majority_accuracy(np.array([0, 1]), np.array([0, -1]))
    with pytest.raises(DataError, match="integers"):
        contingency(np.array([0.5, 1.0]), np.array([0, 1]))
    with pytest.raises(DataError, match="NaN"):
        clustering_scores(None, np.array([0, 1]), np.array([[0.0], [np.nan]]))


def test_psnr_known_arrays() -> None:
    x = np.zeros((3, 2, 2, 1), dtype=np.float32)
    recon = x.copy()
    recon[0] += 0.1  # mse 0.01 -> 20 dB
    recon[1, 0, 0, 0] = 0.2  # mse 0.04 / 4 = 0.01 -> 20 dB
    # image 2 is perfect -> capped at 100 dB
    scores = reconstruction_scores(x, recon)
    assert scores["psnr"] == pytest.approx((20 + 20 + 100) / 3, rel=1e-5)
    assert scores["mse"] == pytest.approx((0.01 * 4 + 0.04) / 12, rel=1e-5)


def test_psnr_of_half_error_image() -> None:
    x = np.ones((1, 4, 4), dtype=np.float32)
    scores = reconstruction_scores(x, x * 0.5)  # mse 0.25 -> 10 log10(4) dB
    assert scores["psnr"] == pytest.approx(10 * math.log10(4))
    assert scores["mse"] == pytest.approx(0.25)


def test_reconstruction_shape_mismatch() -> None:
    with pytest.raises(DataError, match="shape"):
        reconstruction_scores(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)))
