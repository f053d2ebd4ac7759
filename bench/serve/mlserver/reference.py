"""What the aecluster service computes in-process for a set of images: the check's reference.

Run with the *project's* venv (it imports ``service``), not MLServer's::

    .venv/bin/python bench/serve/mlserver/reference.py --bundle DIR --out ref.npz

Writes ``images`` (``--images``, default 64, float32 [N, H, W, C] in [0, 1]: scikit-learn
digits for an 8x8 gray bundle, the Fashion-MNIST test images for a 28x28 gray one when
present, else noise) and the service's ``cluster_id``, ``distance`` and ``reconstruction``
for them, computed by ``service.runtime.ModelRuntime.run`` in batches of at most 32.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from service import bundle
from service.runtime import ModelRuntime

FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def images_for(shape: tuple[int, int, int], n: int, seed: int) -> np.ndarray:
    """Real images where the bundle's shape has a local data set, else uniform noise."""
    if shape == (8, 8, 1):
        from sklearn.datasets import load_digits

        digits = (np.asarray(load_digits().images, dtype=np.float32) / 16.0)[..., np.newaxis]
        return np.ascontiguousarray(digits[:n])
    if shape == (28, 28, 1) and FASHION_TEST.is_file():
        import gzip

        raw = gzip.decompress(FASHION_TEST.read_bytes())[16:]  # IDX header: 4 int32
        images = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 28, 28, 1)[:n]
        return images.astype(np.float32) / np.float32(255.0)
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    version_dir = args.bundle.resolve()
    manifest = bundle.read_manifest(version_dir)
    centroids = bundle.load_centroids(version_dir, manifest)
    runtime = ModelRuntime(version_dir, manifest, centroids, device="cpu",
                           batch_sizes=(1, 2, 4, 8, 16, 32))
    images = images_for(runtime.input_shape, args.images, args.seed)
    parts = [runtime.run(images[i:i + 32], with_reconstruction=True)
             for i in range(0, len(images), 32)]
    np.savez(
        args.out,
        images=images,
        cluster_id=np.concatenate([p.cluster_id for p in parts]),
        distance=np.concatenate([p.distance for p in parts]),
        reconstruction=np.concatenate([p.reconstruction for p in parts]),
        n_clusters=np.int64(runtime.n_clusters),
    )
    print(f"wrote {args.out}: {len(images)} images {runtime.input_shape}, "
          f"clusters used {sorted(set(np.concatenate([p.cluster_id for p in parts]).tolist()))}")


if __name__ == "__main__":
    main()
