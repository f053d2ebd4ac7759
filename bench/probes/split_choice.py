"""Which community should each of the split preset's ten splits take? A probe on saved features.

The recommended K = 20 preset finds 10 Louvain communities and then, ten times, splits the
community with the largest within-community sum of squared distances (its "spread") in two
by Louvain on the subgraph it induces. This probe keeps the bisection and changes only the
choice of community:

- ``oracle``: the split that puts the most extra training images under their community's
  majority label (it reads the labels, so it bounds what a label-free rule could gain from
  the choice; greedy, so not a strict bound);
- label-free rules built on the bisection's cut: the lowest normalised cut, the spread over
  the normalised cut, the spread times one minus the conductance, the size over the
  normalised cut, the spread over the conductance. A community of one class should split
  anywhere at a high cut, a mixture of two along a low one.

Scores are the share of training images under their community's majority label (labels
read for scoring only), from the saved arrays of dump_graph_features.py:

    python bench/probes/split_choice.py DIR [DIR ...] [--run-seeds 0,1] [--out F]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from saved_graph import load_saved

from training import communities
from training.data.idx import read_idx
from training.evaluation import majority_accuracy

LABELS = Path("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz")


@dataclass
class Bisection:
    """One community's Louvain bisection and what the rules read from it."""

    first: np.ndarray
    second: np.ndarray
    size: int
    spread: float
    ncut: float
    conductance: float
    gain: int  # extra images under the majority label after the split (labels)


Rule = Callable[[Bisection], float]

RULES: dict[str, Rule] = {
    "spread (shipped)": lambda b: b.spread,
    "oracle (labels)": lambda b: float(b.gain),
    "lowest ncut": lambda b: -b.ncut,
    "spread / ncut": lambda b: b.spread / b.ncut,
    "spread x (1 - conductance)": lambda b: b.spread * (1.0 - b.conductance),
    "size / ncut": lambda b: b.size / b.ncut,
    "spread / conductance": lambda b: b.spread / b.conductance,
}


def _majority_hits(truth: np.ndarray, members: np.ndarray) -> int:
    return int(np.bincount(truth[members], minlength=1).max())


def bisect(adjacency: sp.csr_matrix, features: np.ndarray, truth: np.ndarray,
           degree: np.ndarray, members: np.ndarray, seed: int) -> Bisection:
    sub = adjacency[members][:, members].tocsr()
    halves = communities.louvain_communities(sub, 2, seed=seed).labels
    first, second = members[halves == 0], members[halves == 1]
    cut = float(sub[halves == 0][:, halves == 1].sum())
    volume_first, volume_second = float(degree[first].sum()), float(degree[second].sum())
    part = features[members].astype(np.float64)
    # A cut of 0 would divide by zero; such a split is the best one for every cut rule.
    tiny = 1e-12
    return Bisection(
        first=first, second=second, size=members.size,
        spread=float(((part - part.mean(axis=0)) ** 2).sum()),
        ncut=max(cut / volume_first + cut / volume_second, tiny),
        conductance=max(cut / min(volume_first, volume_second), tiny),
        gain=(_majority_hits(truth, first) + _majority_hits(truth, second)
              - _majority_hits(truth, members)),
    )


def split_by(rule: Rule, adjacency: sp.csr_matrix, features: np.ndarray, truth: np.ndarray,
             coarse: communities.Partition, count: int, seed: int) -> np.ndarray:
    labels = coarse.labels.copy()
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    cache: dict[int, Bisection] = {}
    n = coarse.count
    while n < count:
        for community in range(n):
            if community not in cache:
                cache[community] = bisect(adjacency, features, truth, degree,
                                          np.flatnonzero(labels == community), seed)
        best = max(range(n), key=lambda c: rule(cache[c]))
        labels[cache.pop(best).second] = n
        n += 1
    return labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--run-seeds", default="0,1",
                        help="Louvain run offsets: run r uses seed = the training seed + 1000 r")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    truth = read_idx(LABELS).astype(np.int64)
    results = []
    for directory in args.dirs:
        saved = load_saved(directory, truth, parser)
        features, indices, train_seed = saved.features, saved.indices, saved.train_seed
        adjacency = communities.knn_adjacency(indices)
        for offset in (int(s) for s in args.run_seeds.split(",")):
            seed = train_seed + 1000 * offset
            coarse = communities.louvain_communities(adjacency, 10, seed=seed)
            row: dict[str, object] = {"dir": str(directory), "seed": seed}
            for rule_name, rule in RULES.items():
                labels = split_by(rule, adjacency, features, truth, coarse, 20, seed)
                row[rule_name] = round(majority_accuracy(truth, labels), 4)
            print(json.dumps(row), flush=True)
            results.append(row)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
