"""Which graph should split the coarse communities? A probe on saved graph features.

The recommended K = 20 preset finds 10 Louvain communities on the 15-neighbour graph of
[unit backbone features, 0.5 x orientation histograms] and splits the most spread one in
two, ten times, by Louvain on the subgraph the community induces. Inside one coarse
community (pullovers, coats and shirts; sneakers and ankle boots) the backbone's features
already agree on what kind of thing the images are; what tells its classes apart is the
outline, which the histograms carry. So this probe splits on other graphs: each
community's own 15-neighbour graph (every member keeps 15 neighbours inside it), with the
histograms weighted ``w`` instead of 0.5. Labels are read for scoring only: the share of
training images under their community's majority label. ``--pixel-weights`` builds the
whole graph again with unit-length PCA-50 pixels joined, for the outline at full resolution.

    python bench/probes/split_graphs.py DIR [DIR ...]   # DIRs from dump_graph_features.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from saved_graph import load_saved
from sklearn.decomposition import PCA

from training import communities, neighbors
from training.data.idx import read_idx
from training.evaluation import majority_accuracy

FEATURES = 256  # the backbone's unit features come first; the histograms follow
SHIPPED_HOG = 0.5
LABELS = Path("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz")
IMAGES = LABELS.with_name("train-images-idx3-ubyte.gz")


def split(coarse: communities.Partition, features: np.ndarray, count: int,
          subgraph: Callable[[np.ndarray], sp.csr_matrix], seed: int) -> np.ndarray:
    """split_communities' rule (largest spread first) with the subgraph given by ``subgraph``.

    A copy rather than an option of the shipped function: only this probe splits on graphs
    other than the shared one, and none of them measured better (README, "What was tried").
    """
    labels = coarse.labels.copy()

    def spread(members: np.ndarray) -> float:
        part = features[members].astype(np.float64)
        return float(((part - part.mean(axis=0)) ** 2).sum())

    spreads = [spread(np.flatnonzero(labels == c)) for c in range(coarse.count)]
    while len(spreads) < count:
        for community in np.argsort(-np.array(spreads), kind="stable"):
            members = np.flatnonzero(labels == community)
            halves = communities.louvain_communities(subgraph(members), 2, seed=seed).labels
            labels[members[halves == 1]] = len(spreads)
            spreads[community] = spread(members[halves == 0])
            spreads.append(spread(members[halves == 1]))
            break
    return labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--weights", default="0.5,0.75,1.0,1.5",
                        help="histogram weights of the local graphs (empty: none)")
    parser.add_argument("--run-seeds", default="0,1,2",
                        help="Louvain run offsets: run r searches with seed = the training seed "
                             "(DIR's name ends in seed<N>) + 1000 r; 0 is the recipe's own")
    parser.add_argument("--backbone-spread", action="store_true",
                        help="also split by the spread of the backbone's features alone")
    parser.add_argument("--neighbors", default="",
                        help="also the shipped split on graphs of these neighbour counts, "
                             "e.g. 10,20 (the saved graph has the recipe's 15)")
    parser.add_argument("--pixel-weights", default="",
                        help="also the shipped split on the graph of the saved features joined "
                             "with these weights x unit-length PCA-50 pixels, e.g. 0.25,0.5")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    truth = read_idx(LABELS).astype(np.int64)
    weights = [float(w) for w in args.weights.split(",") if w]
    results = []
    for directory in args.dirs:
        saved = load_saved(directory, truth, parser)
        features, indices, train_seed = saved.features, saved.indices, saved.train_seed
        adjacency = communities.knn_adjacency(indices)
        k = indices.shape[1]
        others = {}
        for count in (int(c) for c in args.neighbors.split(",") if c):
            _, found = neighbors.nearest_neighbors(features, count)
            others[count] = communities.knn_adjacency(found)
        joined = {}
        pixel_weights = [float(w) for w in args.pixel_weights.split(",") if w]
        if pixel_weights:
            pixels = read_idx(IMAGES).reshape(truth.size, -1).astype(np.float32) / 255.0
            components = PCA(50, random_state=0).fit_transform(pixels)
            components /= np.linalg.norm(components, axis=1, keepdims=True)
            for w in pixel_weights:
                with_pixels = np.hstack([features, w * components]).astype(np.float32)
                _, found = neighbors.nearest_neighbors(with_pixels, k)
                joined[w] = (with_pixels, communities.knn_adjacency(found))
        for offset in (int(s) for s in args.run_seeds.split(",")):
            seed = train_seed + 1000 * offset  # offset 0 is the recipe's own search
            coarse = communities.louvain_communities(adjacency, 10, seed=seed)
            row = {"dir": str(directory), "seed": seed,
                   "coarse": round(majority_accuracy(truth, coarse.labels), 4)}
            shipped = communities.split_communities(adjacency, features, coarse, 20, seed=seed)
            row["shipped"] = round(majority_accuracy(truth, shipped.labels), 4)
            for w in weights:
                scaled = features.copy()
                scaled[:, FEATURES:] *= w / SHIPPED_HOG

                def local(members: np.ndarray, scaled: np.ndarray = scaled,
                          k: int = k) -> sp.csr_matrix:
                    _, idx = neighbors.nearest_neighbors(scaled[members], k)
                    return communities.knn_adjacency(idx)

                started = time.perf_counter()
                labels = split(coarse, features, 20, local, seed)
                row[f"local w{w}"] = round(majority_accuracy(truth, labels), 4)
                print(f"  w {w}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
            for count, graph in others.items():
                coarse_k = communities.louvain_communities(graph, 10, seed=seed)
                labels = communities.split_communities(graph, features, coarse_k, 20,
                                                       seed=seed).labels
                row[f"{count} neighbours"] = round(majority_accuracy(truth, labels), 4)
            for w, (with_pixels, graph) in joined.items():
                coarse_p = communities.louvain_communities(graph, 10, seed=seed)
                labels = communities.split_communities(graph, with_pixels, coarse_p, 20,
                                                       seed=seed).labels
                row[f"pixels w{w}"] = round(majority_accuracy(truth, labels), 4)
            if args.backbone_spread:
                # The shipped split; only the spread that picks the community to split is
                # measured on the backbone's features alone.
                labels = communities.split_communities(adjacency, features[:, :FEATURES],
                                                       coarse, 20, seed=seed).labels
                row["backbone spread"] = round(majority_accuracy(truth, labels), 4)
            print(json.dumps(row), flush=True)
            results.append(row)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
