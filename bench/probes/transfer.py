"""Where do the split preset's communities lose accuracy from the training to the test images?

The recommended K = 20 preset's partition holds the majority label of about 0.801 of the
training images, while the same seeds' bundles score 0.788-0.802 on the test images. An
earlier probe (README, "What was tried") carried a partition from 50,000 training images to
10,000 others without loss, but those 10,000 had been seen by the backbone. This probe
compares the training images with the unseen test images on the same backbone's graph
features (dump_graph_features.py saves both):

- purity@15: the share of an image's 15 nearest training images with its label, for the
  training images (their graph) and for the test images;
- the shipped partition (coarse 10, split to 20, as ``_fit_community_head``) scored on the
  training images, then carried to the test images by a 15-nearest-neighbour vote and
  scored there, with each community's majority label counted on the test images themselves
  (as the bench does) and as read off the training images.

Labels are read for scoring only.

    python bench/probes/transfer.py /tmp/probe/seed0 /tmp/probe/seed1 ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from saved_graph import load_saved
from sklearn.neighbors import NearestNeighbors

from training import communities
from training.data.idx import read_idx
from training.evaluation import contingency, majority_accuracy

TRAIN_LABELS = Path("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz")
TEST_LABELS = TRAIN_LABELS.with_name("t10k-labels-idx1-ubyte.gz")
COARSE, COUNT, NEIGHBORS = 10, 20, 15


def vote(neighbour_labels: np.ndarray, count: int) -> np.ndarray:
    """Each row's most frequent value (ties to the nearer neighbour's: rows are nearest first)."""
    votes = np.zeros((len(neighbour_labels), count))
    weights = 1.0 + 1e-3 * np.arange(neighbour_labels.shape[1], 0, -1)
    np.add.at(votes, (np.repeat(np.arange(len(neighbour_labels)), neighbour_labels.shape[1]),
                      neighbour_labels.ravel()), np.tile(weights, len(neighbour_labels)))
    return votes.argmax(axis=1)


def mapped_accuracy(truth: np.ndarray, clusters: np.ndarray, mapping: np.ndarray) -> float:
    return float(np.mean(mapping[clusters] == truth))


def probe(directory: Path, train_truth: np.ndarray, test_truth: np.ndarray,
          parser: argparse.ArgumentParser) -> dict[str, float | int]:
    saved = load_saved(directory, train_truth, parser)
    test_path = directory / "test_features.npy"
    if not test_path.is_file():
        parser.error(f"{directory}: no test_features.npy; run today's dump_graph_features.py")
    test = np.load(test_path)
    if test.shape != (test_truth.size, saved.features.shape[1]):
        parser.error(f"{directory}: test features of shape {test.shape}, expected "
                     f"({test_truth.size}, {saved.features.shape[1]})")
    started = time.perf_counter()
    index = NearestNeighbors(n_neighbors=NEIGHBORS).fit(saved.features)
    test_neighbours = index.kneighbors(test, return_distance=False)
    adjacency = communities.knn_adjacency(saved.indices)
    coarse = communities.most_even_communities(adjacency, COARSE, seed=saved.train_seed)
    partition = communities.split_communities(adjacency, saved.features, coarse, COUNT,
                                              seed=saved.train_seed).labels
    carried = vote(partition[test_neighbours], COUNT)
    train_map = contingency(train_truth, partition).argmax(axis=1)  # rows are communities
    return {
        "seed": saved.train_seed,
        "purity15_train": round(float(np.mean(train_truth[saved.indices]
                                              == train_truth[:, None])), 4),
        "purity15_test": round(float(np.mean(train_truth[test_neighbours]
                                             == test_truth[:, None])), 4),
        "knn15_train": round(float(np.mean(vote(train_truth[saved.indices], 10)
                                           == train_truth)), 4),
        "knn15_test": round(float(np.mean(vote(train_truth[test_neighbours], 10)
                                          == test_truth)), 4),
        "majority_train": round(majority_accuracy(train_truth, partition), 4),
        "majority_test_vote": round(majority_accuracy(test_truth, carried), 4),
        "majority_test_vote_train_map": round(mapped_accuracy(test_truth, carried, train_map), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directories", nargs="+", type=Path)
    args = parser.parse_args()
    train_truth = read_idx(TRAIN_LABELS).astype(np.int64)
    test_truth = read_idx(TEST_LABELS).astype(np.int64)
    for directory in args.directories:
        print(json.dumps({"dir": str(directory),
                          **probe(directory, train_truth, test_truth, parser)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
