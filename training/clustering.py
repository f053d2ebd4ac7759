"""k-means on bottleneck embeddings, choice of K, and per-cluster statistics (numpy only).

Small and medium embedding sets use scikit-learn's ``KMeans``; above a size threshold
``MiniBatchKMeans`` takes over so millions of embeddings fit in minutes.
Invalid options or embeddings raise :class:`~training.errors.ConfigError`.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.exceptions import ConvergenceWarning

from training.errors import ConfigError
from training.metrics import sampled_silhouette

logger = logging.getLogger(__name__)

# Rows per step when measuring distances to centroids: bounds the [rows, D] temporaries.
_DISTANCE_CHUNK = 65_536


@dataclass
class KMeansResult:
    """A fitted k-means: what the bundle needs (centroids) and what reports need."""

    centroids: np.ndarray  # float32 [K, D]
    labels: np.ndarray  # int64 [N], assignment of the fitted embeddings
    inertia: float  # sum of squared distances of the embeddings to their centroid
    n_iter: int  # Lloyd iterations (kmeans) or mini-batch steps (minibatch)
    algorithm: Literal["kmeans", "minibatch"]
    estimator: KMeans | MiniBatchKMeans  # the fitted scikit-learn estimator


@dataclass
class KSelection:
    """Curves over candidate K values and the K they suggest."""

    k_values: list[int]
    mean_distance: list[float]  # elbow curve: mean Euclidean distance to the assigned centroid
    inertia: list[float]
    silhouette: list[float]  # seeded sample; NaN where undefined
    chosen_k: int  # best silhouette (smallest K on ties)
    elbow_k: int  # point of the mean-distance curve farthest from its chord


def _check_count(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _as_embeddings(embeddings: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """float32, C-contiguous, 2-D and finite, or ConfigError naming the problem."""
    arr = np.asarray(embeddings)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ConfigError(f"{what} must be a 2-D array [N, D] with D >= 1, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ConfigError(f"{what} must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.all(np.isfinite(arr), axis=1)))
        raise ConfigError(
            f"{what} contain NaN or infinite values in {bad} row(s): the encoder diverged or "
            "the input images are not finite; retrain or clean the data before clustering"
        )
    return arr


def _check_clusters(n_clusters: int, n_rows: int) -> int:
    k = _check_count(n_clusters, "n_clusters", 1)
    if k > n_rows:
        raise ConfigError(
            f"n_clusters={k} is more than the {n_rows} embeddings to cluster: "
            "ask for fewer clusters or use more images"
        )
    return k


def _log_distinct(labels: np.ndarray, k: int) -> None:
    used = np.unique(labels).size
    if used < k:
        # scikit-learn says this with a ConvergenceWarning; a log line reaches the user
        # without making warnings-as-errors test runs fail on legitimately tiny data.
        logger.warning(
            "k-means found only %d distinct clusters for K=%d (duplicate embeddings?); "
            "the other centroids have no members", used, k,
        )


def fit_kmeans(
    embeddings: np.ndarray,
    n_clusters: int,
    *,
    seed: int,
    n_init: int = 10,
    minibatch_threshold: int = 100_000,
    batch_size: int = 4096,
) -> KMeansResult:
    """Cluster ``embeddings`` [N, D] into ``n_clusters`` groups with k-means (k-means++ init).

    Runs ``KMeans`` (Lloyd, ``n_init`` restarts) when N <= ``minibatch_threshold`` and
    ``MiniBatchKMeans`` with ``batch_size`` otherwise. Both are seeded by ``seed``. The
    returned ``labels`` come from a final assignment step with the final centroids, so they
    equal ``result.estimator.predict(embeddings)``. Raises :class:`ConfigError` when
    ``n_clusters`` is < 1 or > N, or the embeddings are not a finite 2-D array.
    """
    x = _as_embeddings(embeddings)
    k = _check_clusters(n_clusters, x.shape[0])
    n_init = _check_count(n_init, "n_init", 1)
    minibatch_threshold = _check_count(minibatch_threshold, "minibatch_threshold", 0)
    batch_size = _check_count(batch_size, "batch_size", 1)

    algorithm: Literal["kmeans", "minibatch"]
    estimator: KMeans | MiniBatchKMeans
    if x.shape[0] > minibatch_threshold:
        algorithm = "minibatch"
        estimator = MiniBatchKMeans(
            n_clusters=k, batch_size=batch_size, n_init=n_init, random_state=seed
        )
    else:
        algorithm = "kmeans"
        estimator = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    logger.info(
        "k-means (%s): K=%d on %d embeddings of dimension %d, n_init=%d, seed=%d",
        algorithm, k, x.shape[0], x.shape[1], n_init, seed,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(x)
    seconds = time.perf_counter() - start
    labels = np.asarray(estimator.labels_, dtype=np.int64)
    result = KMeansResult(
        centroids=np.ascontiguousarray(estimator.cluster_centers_, dtype=np.float32),
        labels=labels,
        inertia=float(estimator.inertia_),
        n_iter=int(estimator.n_iter_ if algorithm == "kmeans" else estimator.n_steps_),
        algorithm=algorithm,
        estimator=estimator,
    )
    _log_distinct(labels, k)
    logger.info(
        "k-means (%s): done in %.2f s, %d iterations, inertia %.6g",
        algorithm, seconds, result.n_iter, result.inertia,
    )
    return result


def _distances(embeddings: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Euclidean distance of each embedding to its assigned centroid, float32 [N]."""
    out = np.empty(embeddings.shape[0], dtype=np.float32)
    for start in range(0, embeddings.shape[0], _DISTANCE_CHUNK):
        stop = start + _DISTANCE_CHUNK
        diff = embeddings[start:stop] - centroids[labels[start:stop]]
        out[start:stop] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def _elbow(k_values: Sequence[int], values: Sequence[float]) -> int:
    """K whose point lies farthest from the chord joining the first and last points.

    Both axes are scaled to [0, 1] first, so the answer does not depend on units. With
    fewer than three K values there is no bend to find and the first K is returned.
    """
    ks = np.asarray(k_values, dtype=np.float64)
    ys = np.asarray(values, dtype=np.float64)
    if ks.size < 3:
        return int(ks[0])
    xs = (ks - ks[0]) / (ks[-1] - ks[0])
    span = ys.max() - ys.min()
    yn = (ys - ys.min()) / span if span > 0 else np.zeros_like(ys)
    dx, dy = xs[-1] - xs[0], yn[-1] - yn[0]
    gap = np.abs(dy * (xs - xs[0]) - dx * (yn - yn[0])) / math.hypot(dx, dy)
    return int(ks[int(np.argmax(gap))])


def select_k(
    embeddings: np.ndarray,
    k_values: Sequence[int],
    *,
    seed: int,
    sample_size: int = 5000,
    n_init: int = 10,
    minibatch_threshold: int = 100_000,
) -> KSelection:
    """Fit k-means for every K in ``k_values`` and measure how well each K fits.

    For each K (sorted, duplicates dropped, each >= 2 because the silhouette needs two
    clusters): mean distance to the assigned centroid, inertia, and the silhouette on one
    seeded sample of at most ``sample_size`` embeddings (the same sample for every K).
    ``chosen_k`` has the best silhouette; ``elbow_k`` is the bend of the mean-distance
    curve. Fits go through :func:`fit_kmeans` with ``n_init`` and ``minibatch_threshold``
    (so large sets use mini-batches). Logs one INFO line per K.
    """
    x = _as_embeddings(embeddings)
    if not k_values:
        raise ConfigError("k_values is empty: give the candidate numbers of clusters")
    ks = sorted({_check_count(k, "every K in k_values", 2) for k in k_values})
    _check_clusters(ks[-1], x.shape[0])
    sample_size = _check_count(sample_size, "sample_size", 2)
    mean_distance: list[float] = []
    inertia: list[float] = []
    silhouette: list[float] = []
    for i, k in enumerate(ks, start=1):
        start = time.perf_counter()
        result = fit_kmeans(x, k, seed=seed, n_init=n_init,
                            minibatch_threshold=minibatch_threshold)
        dist = _distances(x, result.centroids, result.labels)
        score = sampled_silhouette(x, result.labels, sample_size=sample_size, seed=seed)
        mean_distance.append(float(np.mean(dist, dtype=np.float64)))
        inertia.append(result.inertia)
        silhouette.append(math.nan if score is None else score)
        logger.info(
            "K selection %d/%d: K=%d mean distance %.4f silhouette %.4f (%.1f s)",
            i, len(ks), k, mean_distance[-1], silhouette[-1], time.perf_counter() - start,
        )
    scores = np.asarray(silhouette)
    if np.all(np.isnan(scores)):
        raise ConfigError(
            "the silhouette is undefined for every K (too few distinct embeddings?): "
            "check the embeddings or choose K yourself"
        )
    selection = KSelection(
        k_values=ks, mean_distance=mean_distance, inertia=inertia, silhouette=silhouette,
        chosen_k=ks[int(np.nanargmax(scores))], elbow_k=_elbow(ks, mean_distance),
    )
    logger.info("K selection: best silhouette at K=%d, elbow at K=%d",
                selection.chosen_k, selection.elbow_k)
    return selection


def save_k_selection(selection: KSelection, out_dir: Path) -> list[Path]:
    """Write ``k_selection.json`` and ``k_selection.png`` into ``out_dir``; return both paths.

    The JSON holds the fields of :class:`KSelection` (undefined silhouettes as null); the
    PNG shows the elbow and silhouette curves with the chosen and elbow K marked.
    """
    # Imported here: matplotlib is only needed by the one caller that draws.
    from training.charts import Panel, plot_panels

    out_dir.mkdir(parents=True, exist_ok=True)
    payload = asdict(selection)
    payload["silhouette"] = [None if math.isnan(s) else s for s in selection.silhouette]
    json_path = out_dir / "k_selection.json"
    json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    marks = {f"best silhouette K={selection.chosen_k}": float(selection.chosen_k)}
    elbow_marks = {**marks, f"elbow K={selection.elbow_k}": float(selection.elbow_k)}
    panels = [
        Panel(
            title="Elbow", x=selection.k_values,
            series={"mean distance to centroid": selection.mean_distance},
            xlabel="K (clusters)", ylabel="mean Euclidean distance", marks=elbow_marks,
            integer_x=True,
        ),
        Panel(
            title="Silhouette", x=selection.k_values,
            series={"silhouette (sample)": selection.silhouette},
            xlabel="K (clusters)", ylabel="mean silhouette coefficient", marks=marks,
            integer_x=True,
        ),
    ]
    png_path = plot_panels(panels, out_dir / "k_selection.png", title="Choice of K")
    return [json_path, png_path]


def distance_stats(
    distances: np.ndarray, cluster_ids: np.ndarray, n_clusters: int
) -> list[dict[str, float | int]]:
    """Per-cluster distance statistics, clusters 0..K-1 in order.

    Each entry has exactly the keys of ``service.bundle.ClusterStats``: ``cluster``,
    ``count``, ``mean``, ``p50``, ``p95``, ``p99`` (percentiles with linear interpolation).
    A cluster without members gets ``count`` 0 and zeros for the statistics, so the list
    always has K entries (the manifest requires it). Feed the distances computed the way
    the service computes them (``service.bundle.assign``), so outlier thresholds match.
    """
    k = _check_count(n_clusters, "n_clusters", 1)
    dist = np.asarray(distances, dtype=np.float64)
    ids = np.asarray(cluster_ids)
    if dist.ndim != 1 or ids.shape != dist.shape:
        raise ConfigError(
            f"distances {dist.shape} and cluster_ids {ids.shape} must be 1-D of equal length"
        )
    if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= k):
        raise ConfigError(f"cluster_ids must be integers in [0, {k - 1}] for n_clusters={k}")
    if not np.all(np.isfinite(dist)):
        raise ConfigError("distances contain NaN or infinite values")
    order = np.argsort(ids, kind="stable")
    counts = np.bincount(ids, minlength=k) if ids.size else np.zeros(k, dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    stats: list[dict[str, float | int]] = []
    for c in range(k):
        members = dist[order[bounds[c]:bounds[c + 1]]]
        if members.size:
            p50, p95, p99 = np.percentile(members, [50.0, 95.0, 99.0])
            mean = float(members.mean())
        else:
            mean = p50 = p95 = p99 = 0.0
        stats.append({
            "cluster": c, "count": int(counts[c]), "mean": mean,
            "p50": float(p50), "p95": float(p95), "p99": float(p99),
        })
    return stats


def majority_label_map(
    cluster_ids: np.ndarray, labels: np.ndarray, n_clusters: int
) -> dict[int, int]:
    """Cluster -> most frequent label among its members whose label is >= 0.

    Ties go to the smallest label. Members labelled -1 (unknown) are ignored; clusters with
    no labelled member are left out of the map.
    """
    k = _check_count(n_clusters, "n_clusters", 1)
    ids = np.asarray(cluster_ids)
    lab = np.asarray(labels)
    if ids.ndim != 1 or lab.shape != ids.shape:
        raise ConfigError(
            f"cluster_ids {ids.shape} and labels {lab.shape} must be 1-D of equal length"
        )
    if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= k):
        raise ConfigError(f"cluster_ids must be integers in [0, {k - 1}] for n_clusters={k}")
    if lab.size and lab.dtype.kind not in "iu":
        raise ConfigError(f"labels must be integers (-1 for unknown), got dtype {lab.dtype}")
    keep = lab >= 0
    ids, lab = ids[keep].astype(np.int64), lab[keep].astype(np.int64)
    if not lab.size:
        return {}
    n_labels = int(lab.max()) + 1
    table = np.bincount(ids * n_labels + lab, minlength=k * n_labels).reshape(k, n_labels)
    # argmax returns the first maximum, i.e. the smallest label on ties.
    best = table.argmax(axis=1)
    return {c: int(best[c]) for c in range(k) if table[c].sum() > 0}
