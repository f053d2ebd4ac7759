"""2-D maps of embeddings for people to look at: t-SNE (scikit-learn)."""

from __future__ import annotations

import logging
import time

import numpy as np
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

logger = logging.getLogger(__name__)

# Below this many points a neighbourhood embedding says nothing worth a picture.
MIN_POINTS = 10


def subsample(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of at most ``limit`` of ``n`` rows."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def tsne(embeddings: np.ndarray, seed: int) -> np.ndarray:
    """t-SNE of ``embeddings`` [N, D] to float32 [N, 2] (Barnes-Hut, PCA init, seeded)."""
    n = len(embeddings)
    # Perplexity must stay below N; 30 is scikit-learn's default for larger sets.
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    logger.info("report: t-SNE on %d points (perplexity %.0f); this is the slowest step",
                n, perplexity)
    started = time.monotonic()
    # One OpenMP thread: on a busy machine (CI, shared cores) Barnes-Hut's threads spin-wait
    # on each other and run several times slower than one thread; idle, two gain < 2x.
    with threadpool_limits(limits=1, user_api="openmp"):
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                  random_state=seed).fit_transform(np.asarray(embeddings, dtype=np.float32))
    logger.info("report: t-SNE done in %.1f s", time.monotonic() - started)
    return np.asarray(xy, dtype=np.float32)

