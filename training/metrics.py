"""Scores for a clustering and for an autoencoder's reconstructions (numpy only).

Label conventions: class labels are non-negative integers and ``-1`` means "unknown".
Every metric that needs labels ignores the entries whose label is ``-1``; when no entry
is labelled, :func:`clustering_scores` reports ``None`` for those metrics. Cluster ids
are non-negative integers (``0..K-1``).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    silhouette_score,
)

from training.errors import DataError

logger = logging.getLogger(__name__)

UNKNOWN_LABEL = -1
# PSNR of a perfect reconstruction is infinite; a finite cap keeps means and JSON usable.
PSNR_CAP_DB = 100.0
# Images per step when scoring reconstructions: bounds the float64 temporaries.
_RECON_CHUNK = 1024


def _as_ids(values: np.ndarray, name: str, *, minimum: int) -> np.ndarray:
    """Return ``values`` as a 1-D int64 array, refusing non-integers and values < minimum."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of integers, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError(f"{name} must hold integers, got non-integral floats")
    elif arr.dtype.kind not in "iub" and arr.size:
        raise DataError(f"{name} must hold integers, got dtype {arr.dtype}")
    ids = arr.astype(np.int64)
    if ids.size and int(ids.min()) < minimum:
        raise DataError(f"{name} holds {int(ids.min())}; values must be >= {minimum}")
    return ids


def _labelled(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (labels, cluster ids) pair and keep only the labelled entries."""
    true = _as_ids(y_true, "y_true", minimum=UNKNOWN_LABEL)
    pred = _as_ids(y_pred, "y_pred", minimum=0)
    if true.shape != pred.shape:
        raise DataError(
            f"y_true has {true.shape[0]} entries but y_pred has {pred.shape[0]}: "
            "pass one label per clustered sample"
        )
    keep = true != UNKNOWN_LABEL
    return true[keep], pred[keep]


def _require_labels(true: np.ndarray, metric: str) -> None:
    if true.size == 0:
        raise DataError(f"{metric} needs labelled samples, but every label is {UNKNOWN_LABEL}")


def contingency(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Counts of (cluster, class) pairs: int64 ``[max(y_pred) + 1, max(y_true) + 1]``.

    Row ``i`` is cluster ``i`` and column ``j`` is class ``j``, so ids index the matrix
    directly (clusters or classes that never occur give zero rows or columns). Entries
    labelled ``-1`` are not counted.
    """
    pred_all = _as_ids(y_pred, "y_pred", minimum=0)
    true, pred = _labelled(y_true, pred_all)
    # Rows cover every cluster id, labelled or not, so row i is always cluster i.
    n_rows = int(pred_all.max()) + 1 if pred_all.size else 0
    return _count_pairs(true, pred, n_rows)


def _count_pairs(true: np.ndarray, pred: np.ndarray, n_rows: int) -> np.ndarray:
    n_cols = int(true.max()) + 1 if true.size else 0
    flat = np.bincount(pred * n_cols + true, minlength=n_rows * n_cols)
    return flat.reshape(n_rows, n_cols).astype(np.int64)


def hungarian_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes.

    The matching maximises the matched counts of the contingency matrix
    (``scipy.optimize.linear_sum_assignment``). With K clusters and C classes at most
    ``min(K, C)`` clusters get a class; members of unmatched clusters count as wrong.
    Unlabelled (``-1``) entries are ignored; raises :class:`DataError` if none is labelled.
    """
    true, pred = _labelled(y_true, y_pred)
    _require_labels(true, "hungarian_accuracy")
    table = _count_pairs(true, pred, int(pred.max()) + 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / true.size)


def majority_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Accuracy when every cluster predicts its most frequent class (many-to-one).

    Never lower than :func:`hungarian_accuracy`; reaches 1.0 trivially with one cluster per
    sample, so read it together with the number of clusters. Unlabelled entries are ignored;
    raises :class:`DataError` if none is labelled.
    """
    true, pred = _labelled(y_true, y_pred)
    _require_labels(true, "majority_accuracy")
    table = _count_pairs(true, pred, int(pred.max()) + 1)
    return float(table.max(axis=1).sum() / true.size)


def sampled_silhouette(
    embeddings: np.ndarray, cluster_ids: np.ndarray, *, sample_size: int, seed: int
) -> float | None:
    """Mean silhouette coefficient on a seeded random sample of at most ``sample_size`` rows.

    The silhouette costs O(n^2) distances, hence the sample. The same ``seed`` and number
    of rows give the same sample, so scores of different clusterings of one embedding set
    are comparable. Returns None when the sample holds fewer than 2 clusters or every
    sampled row is its own cluster (the coefficient is undefined there).
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    ids = _as_ids(cluster_ids, "cluster_ids", minimum=0)
    if emb.ndim != 2 or emb.shape[0] != ids.shape[0]:
        raise DataError(
            f"embeddings of shape {emb.shape} do not match {ids.shape[0]} cluster ids: "
            "pass a 2-D [N, D] array with one row per cluster id"
        )
    if sample_size < 2:
        raise DataError(f"silhouette sample_size must be at least 2, got {sample_size}")
    n = emb.shape[0]
    if n > sample_size:
        rng = np.random.default_rng(seed)
        index = np.sort(rng.choice(n, size=sample_size, replace=False))
        emb, ids = emb[index], ids[index]
    n_used = np.unique(ids).size
    if n_used < 2 or n_used > ids.size - 1:
        return None
    return float(silhouette_score(emb, ids, metric="euclidean"))


def clustering_scores(
    y_true: np.ndarray | None,
    y_pred: np.ndarray,
    embeddings: np.ndarray,
    *,
    seed: int = 0,
    silhouette_sample: int = 5000,
) -> dict[str, float | int | None]:
    """Everything worth reporting about one clustering of ``embeddings``.

    Keys: ``n`` (samples), ``n_labelled`` (samples with a label other than -1),
    ``n_clusters_used`` (distinct cluster ids), ``hungarian_accuracy``,
    ``majority_accuracy``, ``nmi`` (arithmetic normalisation, as scikit-learn), ``ari``
    (each None when ``y_true`` is None or all -1; computed on labelled entries only) and
    ``silhouette`` (seeded sample of ``silhouette_sample`` rows; None when fewer than two
    clusters are used).
    """
    pred = _as_ids(y_pred, "y_pred", minimum=0)
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] != pred.shape[0]:
        raise DataError(
            f"embeddings of shape {emb.shape} do not match {pred.shape[0]} cluster ids"
        )
    if not np.all(np.isfinite(emb)):
        raise DataError("embeddings contain NaN or infinite values; check the encoder's input")
    scores: dict[str, float | int | None] = {
        "n": int(pred.size),
        "n_labelled": 0,
        "n_clusters_used": int(np.unique(pred).size),
        "hungarian_accuracy": None,
        "majority_accuracy": None,
        "nmi": None,
        "ari": None,
    }
    if y_true is not None:
        true, pred_l = _labelled(y_true, pred)
        scores["n_labelled"] = int(true.size)
        if true.size:
            scores["hungarian_accuracy"] = hungarian_accuracy(y_true, pred)
            scores["majority_accuracy"] = majority_accuracy(y_true, pred)
            scores["nmi"] = float(normalized_mutual_info_score(true, pred_l))
            scores["ari"] = float(adjusted_rand_score(true, pred_l))
    scores["silhouette"] = sampled_silhouette(
        emb, pred, sample_size=silhouette_sample, seed=seed
    )
    logger.info(
        "clustering scores: n=%d clusters used=%d hungarian=%s nmi=%s silhouette=%s",
        scores["n"], scores["n_clusters_used"], _fmt(scores["hungarian_accuracy"]),
        _fmt(scores["nmi"]), _fmt(scores["silhouette"]),
    )
    return scores


def _fmt(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def reconstruction_scores(x: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
    """Mean squared error and PSNR of reconstructions of images in [0, 1].

    ``x`` and ``reconstruction`` have the same shape ``[N, ...]`` (first axis: images).
    ``mse`` is the mean over every pixel of every image. ``psnr`` is the mean over images
    of ``10 * log10(1 / mse_i)`` (data range 1), each capped at 100 dB so a perfect image
    does not make the mean infinite.
    """
    a = np.asarray(x)
    b = np.asarray(reconstruction)
    if a.shape != b.shape:
        raise DataError(f"images have shape {a.shape} but reconstructions have {b.shape}")
    if a.ndim < 2 or a.shape[0] == 0:
        raise DataError(f"expected a non-empty batch of images [N, ...], got shape {a.shape}")
    sq_sum = 0.0
    psnr_sum = 0.0
    for start in range(0, a.shape[0], _RECON_CHUNK):
        diff = a[start:start + _RECON_CHUNK].astype(np.float64) - b[start:start + _RECON_CHUNK]
        if not np.all(np.isfinite(diff)):
            raise DataError("images or reconstructions contain NaN or infinite values")
        per_image = np.mean(diff.reshape(diff.shape[0], -1) ** 2, axis=1)
        sq_sum += float(per_image.sum())
        with np.errstate(divide="ignore"):
            psnr = 10.0 * np.log10(1.0 / per_image)
        psnr_sum += float(np.minimum(psnr, PSNR_CAP_DB).sum())
    n = a.shape[0]
    return {"mse": sq_sum / n, "psnr": psnr_sum / n}
