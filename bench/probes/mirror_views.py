"""Would averaging each image with its mirror help the served K = 20 assignment? A bundle probe.

The contrastive backbone learns that an image and its left-right mirror are the same thing,
so the mean of the encoder's embeddings of both (test-time augmentation) could steady the
assignment of new images. This probe loads an exported bundle's encoder SavedModel and
centroids and scores Fashion-MNIST's test images by majority accuracy (K = the bundle's):
plain, mirror only, the mean of both against the bundle's centroids, the mean against
k-means refitted on the training images' means, and the argmax of the embedding (the
community head's probabilities in the graph presets). Labels are read for scoring only.

    python bench/probes/mirror_views.py models/fashion/1 [--out F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import joblib
import numpy as np
import tensorflow as tf
from sklearn.cluster import KMeans

from training.data.idx import read_idx
from training.evaluation import majority_accuracy

DATA = Path("/usr/share/datasets/fashion-mnist")


def _images(name: str) -> np.ndarray:
    return read_idx(DATA / name).astype(np.float32)[..., None] / 255.0


def _labels(name: str) -> np.ndarray:
    return read_idx(DATA / name).astype(np.int64)


def _nearest(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    squared = ((embeddings[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return np.asarray(squared.argmin(axis=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="a version directory, e.g. models/fashion/1")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    for part in ("encoder", "centroids.joblib"):
        if not (args.bundle / part).exists():
            parser.error(f"{args.bundle}: no {part}; pass an exported bundle's version directory")
    serve = tf.saved_model.load(str(args.bundle / "encoder")).signatures["serving_default"]
    stored = joblib.load(args.bundle / "centroids.joblib")
    centroids = np.asarray(stored["centroids"], dtype=np.float64)

    def encode(images: np.ndarray) -> np.ndarray:
        chunks = [serve(images=tf.constant(images[i:i + 1000]))["embedding"].numpy()
                  for i in range(0, len(images), 1000)]
        return np.concatenate(chunks).astype(np.float64)

    test, test_truth = _images("t10k-images-idx3-ubyte.gz"), _labels("t10k-labels-idx1-ubyte.gz")
    train = _images("train-images-idx3-ubyte.gz")
    plain, mirror = encode(test), encode(test[:, :, ::-1, :])
    both = (plain + mirror) / 2
    train_both = (encode(train) + encode(train[:, :, ::-1, :])) / 2
    refit = KMeans(len(centroids), n_init=10, random_state=0).fit(train_both)
    row = {
        "bundle": str(args.bundle),
        "plain": majority_accuracy(test_truth, _nearest(plain, centroids)),
        "mirror only": majority_accuracy(test_truth, _nearest(mirror, centroids)),
        "mean of both": majority_accuracy(test_truth, _nearest(both, centroids)),
        "mean of both, k-means refitted": majority_accuracy(test_truth, refit.predict(both)),
        "argmax plain": majority_accuracy(test_truth, plain.argmax(axis=1)),
        "argmax mean of both": majority_accuracy(test_truth, both.argmax(axis=1)),
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    if args.out:
        args.out.write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
