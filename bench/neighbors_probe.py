"""Probe a bundle's embedding: neighbour purity, k-means quality, and what a head adds.

Used to choose issue 5's recipe. It embeds the training and held-out images (for
Fashion-MNIST the 60,000 training and 10,000 test images) through the exported encoder
and reports

- purity@k: the share of each training image's k nearest neighbours (in the embedding)
  that carry its label, a diagnostic of how good a neighbour graph built there would be
  (labels are read for this figure only, never for fitting);
- ACC/NMI/ARI at K=10 and majority accuracy at K=20 of k-means fitted on the training
  embeddings and applied to the test embeddings (issue 5's held-out protocol);
- with ``--head``: the same after fitting a neighbourhood head (parametric UMAP) on top of
  the embedding, i.e. what the contrastive recipe's stage 2 adds to this feature space.

    .venv/bin/python bench/neighbors_probe.py bench/work/conv-mse-latent10-s0/1 --head
    .venv/bin/python bench/neighbors_probe.py models/digits/1 --dataset digits --head
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

logger = logging.getLogger("bench.neighbors_probe")


def scores(train: Any, test: Any, y_train: Any, y_test: Any, *, k: int, seed: int
           ) -> dict[str, float]:
    import numpy as np

    from service import bundle
    from training import clustering, evaluation, neighbors

    _, indices = neighbors.nearest_neighbors(train, k)
    result: dict[str, float] = {
        f"purity_at_{k}": float(np.mean(y_train[indices] == y_train[:, None]))}
    k10 = clustering.fit_kmeans(train, 10, seed=seed)
    ids10, _ = bundle.assign(test, k10.centroids)
    quality = evaluation.clustering_scores(y_test, ids10, test, seed=seed)
    k20 = clustering.fit_kmeans(train, 20, seed=seed)
    ids20, _ = bundle.assign(test, k20.centroids)
    result.update(acc_k10=evaluation.hungarian_accuracy(y_test, ids10),
                  nmi_k10=float(quality["nmi"] or 0), ari_k10=float(quality["ari"] or 0),
                  majority_k20=evaluation.majority_accuracy(y_test, ids20))
    return {name: round(value, 4) for name, value in result.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="bundle version directory")
    parser.add_argument("--dataset", default="fashion-mnist",
                        help="the bundle's dataset, as for `training evaluate` (default "
                             "fashion-mnist; its held-out split is the test set)")
    parser.add_argument("--head", action="store_true",
                        help="also fit a neighbourhood head on the embedding and score it")
    parser.add_argument("--unit-norm", action="store_true",
                        help="unit-normalise the embedding first (cosine neighbours)")
    parser.add_argument("--neighbors", type=int, default=15)
    parser.add_argument("--head-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    import keras
    import numpy as np

    from training.data import DataOptions, batches, load_dataset
    from training.embed import embed
    from training.evaluate import data_options_for, load_bundle
    from training.models.neighborhood import HeadConfig, build_head, fit_head
    from training.neighbors import fuzzy_graph, nearest_neighbors

    loaded = load_bundle(args.bundle)
    data = load_dataset(args.dataset, data_options_for(loaded.manifest, DataOptions()))
    assert data.heldout is not None
    train = embed(loaded.encode, batches(data.train, 512, shuffle=False, seed=0),
                  total=data.train.size, what="embedding train")
    test = embed(loaded.encode, batches(data.heldout, 512, shuffle=False, seed=0),
                 total=data.heldout.size, what="embedding test")
    z_train, z_test = train.embeddings, test.embeddings
    if args.unit_norm:
        z_train = z_train / np.linalg.norm(z_train, axis=1, keepdims=True)
        z_test = z_test / np.linalg.norm(z_test, axis=1, keepdims=True)
    report: dict[str, Any] = {"bundle": str(args.bundle),
                              "embedding": scores(z_train, z_test, train.labels, test.labels,
                                                  k=args.neighbors, seed=args.seed)}
    logger.info("embedding: %s", report["embedding"])
    if args.head:
        config = HeadConfig(n_neighbors=args.neighbors, epochs=args.head_epochs)
        graph = fuzzy_graph(*nearest_neighbors(z_train, args.neighbors))
        keras.utils.set_random_seed(args.seed)
        head = build_head(z_train.shape[1], loaded.manifest.latent_dim, config.hidden)
        fit_head(head, z_train, graph, config, seed=args.seed)
        h_train = head.predict(z_train, batch_size=4096, verbose=0)
        h_test = head.predict(z_test, batch_size=4096, verbose=0)
        report["with_head"] = scores(h_train, h_test, train.labels, test.labels,
                                     k=args.neighbors, seed=args.seed)
        logger.info("with head: %s", report["with_head"])
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
