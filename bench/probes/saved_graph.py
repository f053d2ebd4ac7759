"""Load and check what dump_graph_features.py saved: the probes' shared first step."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class SavedGraph:
    train_seed: int  # from the directory's name, ``seed<N>``
    features: np.ndarray  # [N, D] the graph features
    indices: np.ndarray  # [N, k] each image's neighbours


def load_saved(directory: Path, truth: np.ndarray, parser: argparse.ArgumentParser) -> SavedGraph:
    """The arrays in ``directory``; a bad directory exits through ``parser.error``."""
    name = directory.name.rsplit("seed", 1)
    if len(name) != 2 or not name[1].isdigit():
        parser.error(f"{directory}: the directory's name must end in seed<N>, as "
                     "dump_graph_features.py's OUT in its docstring")
    for part in ("features.npy", "indices.npy"):
        if not (directory / part).is_file():
            parser.error(f"{directory}: no {part}; run dump_graph_features.py first")
    features = np.load(directory / "features.npy")
    indices = np.load(directory / "indices.npy")
    if features.shape[0] != truth.size or indices.shape[0] != truth.size:
        parser.error(f"{directory}: {features.shape[0]} feature rows and "
                     f"{indices.shape[0]} neighbour rows, but {truth.size} training labels")
    return SavedGraph(int(name[1]), features, indices)
