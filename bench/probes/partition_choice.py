"""Can a label-free score pick the better of several Louvain partitions of one graph?

The split preset's communities move with Louvain's run seed: on one backbone's features the
share of training images under their community's majority label ranges over 0.02-0.05
between runs (README, "What was tried"). This probe runs the shipped partition step (coarse
10, split to 20) with R run seeds on saved graph features (optionally partially whitened,
as ``--graph-whitening``), and for each partition computes label-free scores:

- ``modularity`` of the 20 communities on the whole graph;
- ``entropy``: the entropy of the community sizes;
- ``consistency``: the share of images whose community is the one most of their 15
  neighbours hold;
- ``stability``: the mean adjusted Rand index with the other runs' partitions (the medoid
  of the runs has the highest; a partition the graph gives again and again is more likely
  its real structure than one a run happened on).

Labels are read for scoring only: it prints each score's Spearman correlation with the
majority accuracy over the runs, and the majority of the partition each score would pick.
With ``--subsets m`` it also estimates what keeping the most stable of m searches gives on
average: 500 random subsets of m of the runs, stability computed within each subset, the
kept partition's majority against the subset's mean. The partitions are saved beside the
features (``partitions-w<P>.npy``) and reused by later invocations.

    python bench/probes/partition_choice.py /tmp/probe/seed0 --runs 12 --whitening 0.25
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from feature_transforms import HOG_WEIGHT, graph_features, whiten
from saved_graph import load_saved
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors
from transfer import COARSE, COUNT, NEIGHBORS, TRAIN_LABELS, vote

from training import communities
from training.data.idx import read_idx
from training.evaluation import majority_accuracy


def modularity(adjacency: communities.sp.csr_matrix, labels: np.ndarray) -> float:
    degrees = np.asarray(adjacency.sum(axis=1)).ravel()
    total = degrees.sum()
    coo = adjacency.tocoo()
    inside = coo.data[labels[coo.row] == labels[coo.col]].sum() / total
    expected = sum((degrees[labels == c].sum() / total) ** 2 for c in np.unique(labels))
    return float(inside - expected)


def build_graph(features: np.ndarray, whitening: float
                ) -> tuple[np.ndarray, np.ndarray, communities.sp.csr_matrix]:
    """The recipe's graph features (partially whitened when ``whitening`` > 0), each
    image's 15 neighbours and their 0/1 adjacency."""
    if whitening:
        transform = whiten(whitening)
        unit_hog = features[:, 256:] / HOG_WEIGHT
        backbone, _ = transform(features[:, :256], features[:1, :256])
        hog, _ = transform(unit_hog, unit_hog[:1])
        features = np.hstack([backbone, HOG_WEIGHT * hog]).astype(np.float32)
    else:
        features, _ = graph_features(features, features[:1], "shipped")
    neighbours = NearestNeighbors(n_neighbors=NEIGHBORS + 1).fit(features).kneighbors(
        features, return_distance=False)
    own = neighbours == np.arange(len(features))[:, None]
    own[~own.any(axis=1), -1] = True
    indices = neighbours[~own].reshape(len(features), NEIGHBORS)
    return features, indices, communities.knn_adjacency(indices)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--runs", type=int, default=12, help="Louvain run seeds per graph")
    parser.add_argument("--subsets", type=int, nargs="*", default=[],
                        help="subset sizes for the keep-the-most-stable estimate")
    parser.add_argument("--whitening", type=float, default=0.0,
                        help="partial whitening power of both parts (0: the shipped graph)")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    if not 0 <= args.whitening <= 0.5:
        parser.error("--whitening must be in [0, 0.5]")
    truth = read_idx(TRAIN_LABELS).astype(np.int64)
    for directory in args.directories:
        saved = load_saved(directory, truth, parser)
        started = time.perf_counter()
        saved_partitions = directory / f"partitions-w{args.whitening:g}.npy"
        features, indices, adjacency = build_graph(saved.features, args.whitening)
        partitions = (list(np.load(saved_partitions)) if saved_partitions.is_file() else [])
        for run in range(len(partitions), args.runs):
            seed = saved.train_seed + 1000 * run
            coarse = communities.most_even_communities(adjacency, COARSE, seed=seed)
            partitions.append(communities.split_communities(adjacency, features, coarse, COUNT,
                                                            seed=seed).labels)
        partitions = partitions[:args.runs]
        np.save(saved_partitions, np.array(partitions))
        majority = np.array([majority_accuracy(truth, p) for p in partitions])
        scores: dict[str, np.ndarray] = {
            "modularity": np.array([modularity(adjacency, p) for p in partitions]),
            "entropy": np.array([-(np.bincount(p) / len(p) * np.log(np.bincount(p) / len(p)))
                                 .sum() for p in partitions]),
            "consistency": np.array([np.mean(vote(p[indices], COUNT) == p)
                                     for p in partitions]),
        }
        ari = np.array([[adjusted_rand_score(a, b) if i != j else np.nan
                         for j, b in enumerate(partitions)] for i, a in enumerate(partitions)])
        scores["stability"] = np.nanmean(ari, axis=1)
        rng = np.random.default_rng(0)
        kept: dict[str, list[float]] = {}
        for m in args.subsets:
            if not 2 <= m <= args.runs:
                parser.error(f"--subsets sizes must lie in [2, --runs], got {m}")
            gains, picked = [], []
            for _ in range(500):
                members = rng.choice(args.runs, m, replace=False)
                within = np.nanmean(ari[np.ix_(members, members)], axis=1)
                picked.append(majority[members[int(np.argmax(within))]])
                gains.append(picked[-1] - majority[members].mean())
            kept[str(m)] = [round(float(np.mean(picked)), 4), round(float(np.mean(gains)), 4)]
        print(json.dumps({
            "dir": str(directory), "whitening": args.whitening,
            "majority": [round(float(m), 4) for m in majority],
            "mean": round(float(majority.mean()), 4), "first": round(float(majority[0]), 4),
            **{name: {"spearman": round(float(spearmanr(values, majority)[0]), 3),
                      "picks": round(float(majority[int(np.argmax(values))]), 4)}
               for name, values in scores.items()},
            "most_stable_of_m": kept,  # m -> [mean majority kept, mean gain over the subset]
            "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
