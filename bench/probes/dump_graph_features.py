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

The same features of the 10,000 Fashion-MNIST test images, from the same backbone, are
saved as ``OUT/test_features.npy`` (transfer.py compares how the graph's neighbourhoods and
communities carry from the training images to them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


class _Dumped(Exception):
    """Raised after the features are saved, to stop the run."""


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)

    import keras

    from training import cli, recipe_contrastive
    from training.data.idx import read_idx
    from training.models.gradients import OrientationHistograms

    built: list[Any] = []
    build_contrastive = recipe_contrastive.build_contrastive

    def keep(*args: Any, **kwargs: Any) -> Any:
        built.append(build_contrastive(*args, **kwargs))
        return built[-1]

    def test_features(hog_weight: float) -> np.ndarray:
        """The graph features of the test images: the recipe's own layers, rebuilt."""
        images = read_idx(TEST_IMAGES).astype(np.float32)[..., None] / 255.0
        unit = keras.layers.UnitNormalization()(built[-1].backbone(images, training=False))
        parts = [unit.numpy()]
        if hog_weight:
            parts.append(hog_weight * OrientationHistograms()(images).numpy())
        return np.concatenate(parts, axis=1)

    def dump(features: np.ndarray, indices: np.ndarray, config: Any, *args: Any,
             **kwargs: Any) -> Any:
        np.save(out / "features.npy", features.astype(np.float32))
        np.save(out / "indices.npy", indices.astype(np.int32))
        np.save(out / "test_features.npy", test_features(config.hog_weight).astype(np.float32))
        raise _Dumped

    recipe_contrastive.build_contrastive = keep
    recipe_contrastive._fit_community_head = dump
    try:
        cli.main(argv[2:])
    except _Dumped:
        print(f"saved {out / 'features.npy'}, {out / 'indices.npy'} and "
              f"{out / 'test_features.npy'}")
        return 0
    print("the run ended without reaching the community step", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
