"""Train the recommended K = 20 preset's backbone and save its graph features, then stop.

A probe for the community step (README, "What was tried"): it runs the real training CLI
with ``_fit_community_head`` wrapped so that the features the neighbour graph is built on
([unit backbone features, hog_weight x orientation histograms], one row per training
image) and the graph's neighbour indices are written to ``OUT/features.npy`` and
``OUT/indices.npy``; the run then stops before the head, the decoder and the export.

    python bench/probes/dump_graph_features.py /tmp/probe/seed0 -- train \
        --dataset fashion-mnist --preset contrastive-graph20-split --seed 0 \
        --out /tmp/probe/unused0/fashion/1

(split_graphs.py reads the training seed from OUT's name, ``seed<N>``; ``--out`` must be a
version directory, though nothing is written there.)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np


class _Dumped(Exception):
    """Raised after the features are saved, to stop the run."""


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)

    from training import cli, recipe_contrastive

    def dump(features: np.ndarray, indices: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        np.save(out / "features.npy", features.astype(np.float32))
        np.save(out / "indices.npy", indices.astype(np.int32))
        raise _Dumped

    recipe_contrastive._fit_community_head = dump
    try:
        cli.main(argv[2:])
    except _Dumped:
        print(f"saved {out / 'features.npy'} and {out / 'indices.npy'}")
        return 0
    print("the run ended without reaching the community step", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
