"""Does a consensus of several partition searches beat one search?

The split preset's partition moves with Louvain's run seed by about ±0.01 of majority
accuracy (README, "What was tried"), and no label-free score tested picks the better runs
reliably. A consensus does not pick: it reweights each edge of the 15-neighbour graph by
the share of ``m`` saved partitions (``partition_choice.py``'s ``partitions-w<P>.npy``)
that put its two images in one community, so edges the runs disagree on weigh little, and
runs the shipped step (coarse 10, split to 20) once more on the reweighted graph.

For each graph it uses disjoint groups of ``m`` saved runs, one consensus per group and
final run seed, and prints its majority beside the group's own mean and first run (labels
read for scoring only; training images).

    python bench/probes/consensus.py /tmp/probe/seed0 --whitening 0.25 --members 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from partition_choice import build_graph
from saved_graph import load_saved
from transfer import COARSE, COUNT, TRAIN_LABELS

from training import communities
from training.data.idx import read_idx
from training.evaluation import majority_accuracy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--whitening", type=float, default=0.0,
                        help="the saved partitions' whitening power (names the file)")
    parser.add_argument("--members", type=int, default=8, help="partitions per consensus")
    parser.add_argument("--final-seeds", type=int, default=2,
                        help="final searches per consensus (run seeds 500000 + 1000 i)")
    parser.add_argument("--forms", default="0.01:1,0.01:2",
                        help="comma-separated floor:power edge weightings")
    args = parser.parse_args()
    forms = [tuple(float(v) for v in form.split(":")) for form in args.forms.split(",")]
    if any(len(form) != 2 or not 0 <= form[0] < 1 or form[1] <= 0 for form in forms):
        parser.error("--forms entries must be floor:power with 0 <= floor < 1, power > 0")
    truth = read_idx(TRAIN_LABELS).astype(np.int64)
    for directory in args.directories:
        saved = load_saved(directory, truth, parser)
        saved_partitions = directory / f"partitions-w{args.whitening:g}.npy"
        if not saved_partitions.is_file():
            parser.error(f"{directory}: no {saved_partitions.name}; run partition_choice.py "
                         f"with --whitening {args.whitening:g} first")
        partitions = np.load(saved_partitions)
        if not 2 <= args.members <= len(partitions):
            parser.error(f"--members must lie in [2, {len(partitions)}] (saved runs)")
        features, _, adjacency = build_graph(saved.features, args.whitening)
        for group in range(len(partitions) // args.members):
            members = partitions[group * args.members:(group + 1) * args.members]
            single = [majority_accuracy(truth, p) for p in members]
            for floor, power in forms:
                started = time.perf_counter()
                graph = communities.consensus_graph(adjacency, list(members),
                                                    floor=floor, power=power)
                results = []
                for final in range(args.final_seeds):
                    seed = saved.train_seed + 500_000 + 1000 * final
                    coarse = communities.most_even_communities(graph, COARSE, seed=seed)
                    labels = communities.split_communities(graph, features, coarse, COUNT,
                                                           seed=seed).labels
                    results.append(round(float(majority_accuracy(truth, labels)), 4))
                print(json.dumps({
                    "dir": str(directory), "whitening": args.whitening, "group": group,
                    "floor": floor, "power": power, "consensus": results,
                    "members_mean": round(float(np.mean(single)), 4),
                    "members_first": round(float(single[0]), 4),
                    "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
