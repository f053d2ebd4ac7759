"""Do linear transforms of the graph features give purer neighbourhoods and better communities?

The neighbour graph of the recommended K = 20 preset is built on [unit backbone features,
0.5 x unit orientation histograms]. Nearest-neighbour classification on such features often
gains from centring them before the unit length (SimpleShot's CL2N) and from whitening
them: a direction every image shares, or a few directions of large variance, otherwise
weigh in every distance. Each transform here is fitted on the training images only (mean,
PCA) and could ship as one fixed linear layer in the encoder. For each variant: purity@15
of the training images' graph and of the test images' 15 nearest training images, then the
shipped partition (coarse 10, split to 20) with Louvain run seeds = the training seed and
it + 1000 (``--run-offsets``), scored on the training images and, carried by a
15-nearest-neighbour vote, on the test images (transfer.py found that vote within 0.003 of
the bundles' figures). Labels are read for scoring only.

    python bench/probes/feature_transforms.py /tmp/probe/seed0 --variants shipped,centre-hog
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from saved_graph import load_saved
from sklearn.neighbors import NearestNeighbors
from transfer import COARSE, COUNT, NEIGHBORS, TEST_LABELS, TRAIN_LABELS, vote

from training import communities
from training.data.idx import read_idx
from training.evaluation import majority_accuracy

FEATURES = 256  # the backbone's unit features come first; the histograms follow
HOG_WEIGHT = 0.5
Transform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def centre(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    return unit(train - mean), unit(test - mean)


def whiten(alpha: float, dims: int | None = None) -> Transform:
    """Centre, rotate to the principal axes, scale axis i by eigenvalue_i ** -alpha, unit length."""
    def apply(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = train.mean(axis=0)
        values, vectors = np.linalg.eigh(np.cov((train - mean).T.astype(np.float64)))
        order = np.argsort(values)[::-1][:dims]
        scale = np.maximum(values[order], values[order][0] * 1e-6) ** -alpha
        project = vectors[:, order] * scale
        return (unit(((train - mean) @ project).astype(np.float32)),
                unit(((test - mean) @ project).astype(np.float32)))
    return apply


def same(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return train, test


# name -> (transform of the backbone part, transform of the histograms); both parts come in
# and go out at unit length, and the histograms are then weighted HOG_WEIGHT.
VARIANTS: dict[str, tuple[Transform, Transform]] = {
    "shipped": (same, same),
    "centre-backbone": (centre, same),
    "centre-hog": (same, centre),
    "centre-both": (centre, centre),
    "whiten-backbone-0.25": (whiten(0.25), same),
    "whiten-backbone-0.5": (whiten(0.5), same),
    "whiten-hog-0.25": (same, whiten(0.25)),
    "whiten-both-0.25": (whiten(0.25), whiten(0.25)),
    "whiten-both-0.15": (whiten(0.15), whiten(0.15)),
    "whiten-both-0.35": (whiten(0.35), whiten(0.35)),
}


def graph_features(train: np.ndarray, test: np.ndarray, variant: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    backbone, hog = VARIANTS[variant]
    b_train, b_test = backbone(train[:, :FEATURES], test[:, :FEATURES])
    h_train, h_test = hog(unit(train[:, FEATURES:]), unit(test[:, FEATURES:]))
    return (np.hstack([b_train, HOG_WEIGHT * h_train]).astype(np.float32),
            np.hstack([b_test, HOG_WEIGHT * h_test]).astype(np.float32))


def score(train: np.ndarray, test: np.ndarray, train_truth: np.ndarray,
          test_truth: np.ndarray, seeds: list[int]) -> dict[str, object]:
    index = NearestNeighbors(n_neighbors=NEIGHBORS + 1).fit(train)
    neighbours = index.kneighbors(train, return_distance=False)
    # Drop each point's own row (duplicates aside, it is the first).
    own = neighbours == np.arange(len(train))[:, None]
    own[~own.any(axis=1), -1] = True
    indices = neighbours[~own].reshape(len(train), NEIGHBORS)
    test_neighbours = index.kneighbors(test, n_neighbors=NEIGHBORS, return_distance=False)
    adjacency = communities.knn_adjacency(indices)
    train_scores, test_scores = [], []
    for seed in seeds:
        coarse = communities.most_even_communities(adjacency, COARSE, seed=seed)
        labels = communities.split_communities(adjacency, train, coarse, COUNT,
                                               seed=seed).labels
        train_scores.append(round(majority_accuracy(train_truth, labels), 4))
        test_scores.append(round(majority_accuracy(test_truth,
                                                   vote(labels[test_neighbours], COUNT)), 4))
    return {
        "purity15_train": round(float(np.mean(train_truth[indices] == train_truth[:, None])), 4),
        "purity15_test": round(float(np.mean(train_truth[test_neighbours]
                                             == test_truth[:, None])), 4),
        "majority_train": train_scores, "majority_test_vote": test_scores,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--run-offsets", default="0,1000",
                        help="Louvain run seeds, as offsets from the training seed")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    try:
        offsets = [int(v) for v in args.run_offsets.split(",") if v]
    except ValueError:
        parser.error(f"--run-offsets must be comma-separated integers, got {args.run_offsets!r}")
    if not offsets:
        parser.error("--run-offsets names no run")
    train_truth = read_idx(TRAIN_LABELS).astype(np.int64)
    test_truth = read_idx(TEST_LABELS).astype(np.int64)
    for directory in args.directories:
        saved = load_saved(directory, train_truth, parser)
        test = np.load(directory / "test_features.npy")
        for variant in variants:
            started = time.perf_counter()
            train_features, test_features = graph_features(saved.features, test, variant)
            result = score(train_features, test_features, train_truth, test_truth,
                           [saved.train_seed + offset for offset in offsets])
            print(json.dumps({"dir": str(directory), "variant": variant, **result,
                              "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
