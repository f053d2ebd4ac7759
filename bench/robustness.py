"""The default recipe on transformed data, against k-means on the raw pixels.

A recipe tuned to one test set falls apart on data it was not tuned on. This bench trains
the default (`python -m training train` with no model options) on transformed variants of
a dataset's training images and scores the held-out images through the exported bundle,
beside k-means on the raw pixels of the same split:

- ``plain``: the images as they are;
- ``inverted``: 1 - x (white on black becomes black on white);
- ``shifted``: every image moved by a seeded random -1, 0 or +1 pixel each way (on 8x8
  digits that is an eighth of the image), the uncovered row and column filled with the
  image's background (the median of its border pixels);
- ``rolled``: the same moves as rolls, so what leaves one side comes back on the other
  (the ``shifted`` of the first rows: on 8x8 digits whose strokes touch the border the roll
  puts a stroke on the opposite edge);
- ``subsampled-half``: a seeded half of the images;
- ``enlarged-28``: images smaller than 28x28 resized to 28x28 (bilinear), so the digits
  come at MNIST's size, the shape of the unseen dataset of issue 41 (small grayscale
  images, 10 classes); larger images are refused.

    .venv/bin/python bench/robustness.py                  # digits, every variant, seed 0
    .venv/bin/python bench/robustness.py --dataset fashion-mnist --variants inverted

Results go to bench/results/robustness.{json,md}; rows of other datasets and variants
already there are kept. The bundles are trained in a temporary folder and dropped, unless
``--keep DIR`` is given: then each stays in ``DIR/<dataset>-seed<S>/<variant>/m/1`` beside
the variant's archive, to read what decided a partition afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
VARIANTS = ("plain", "inverted", "shifted", "rolled", "subsampled-half", "enlarged-28")
ENLARGED_SIDE = 28


def _rolled(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(images)
    for i, image in enumerate(images):
        dy, dx = rng.integers(-1, 2, size=2)
        out[i] = np.roll(np.roll(image, dy, axis=0), dx, axis=1)
    return out


def _shifted(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The moves of :func:`_rolled` (same draws), with the background coming in instead."""
    height, width = images.shape[1:3]
    out = np.empty_like(images)
    for i, image in enumerate(images):
        dy, dx = (int(d) for d in rng.integers(-1, 2, size=2))
        border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
        out[i] = np.median(border)
        out[i, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
            image[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def _enlarged(images: np.ndarray) -> np.ndarray:
    from scipy.ndimage import zoom

    height, width = images.shape[1:3]
    if height > ENLARGED_SIDE or width > ENLARGED_SIDE:
        raise SystemExit(f"enlarged-28 needs images of at most {ENLARGED_SIDE}x{ENLARGED_SIDE}, "
                         f"got {height}x{width}")
    factors = (1, ENLARGED_SIDE / height, ENLARGED_SIDE / width)
    # order=1: bilinear, which keeps the values inside [0, 1] without clipping.
    return zoom(images, factors, order=1, grid_mode=True, mode="nearest").astype(images.dtype)


def transform(name: str, images: np.ndarray, labels: np.ndarray, *, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """The ``name`` variant of ``images`` ([N, H, W] in [0, 1]) and its labels."""
    rng = np.random.default_rng(seed)
    transforms: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
        "plain": lambda: (images, labels),
        "inverted": lambda: (1.0 - images, labels),
        "shifted": lambda: (_shifted(images, rng), labels),
        "rolled": lambda: (_rolled(images, rng), labels),
        "subsampled-half": lambda: (lambda keep: (images[keep], labels[keep]))(
            np.sort(rng.permutation(len(images))[: len(images) // 2])),
        "enlarged-28": lambda: (_enlarged(images), labels),
    }
    if name not in transforms:
        raise SystemExit(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)}")
    return transforms[name]()


def hungarian_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    table = np.zeros((int(truth.max()) + 1, int(predicted.max()) + 1))
    np.add.at(table, (truth, predicted), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(truth))


def _source(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """All images of ``dataset`` (train and held-out split together), [N, H, W] in [0, 1]."""
    from training.data import DataOptions, load_dataset, to_numpy

    data = load_dataset(dataset, DataOptions(seed=0))
    parts = [to_numpy(split) for split in (data.train, data.heldout) if split is not None]
    images = np.concatenate([p[0] for p in parts])[..., 0]
    return images, np.concatenate([np.asarray(p[1]) for p in parts])


def run_variant(dataset: str, variant: str, seed: int, work: Path) -> dict[str, Any]:
    from sklearn.cluster import KMeans

    from training.data import DataOptions, load_dataset, to_numpy

    images, labels = transform(variant, *_source(dataset), seed=seed)
    archive = work / f"{variant}.npz"
    np.savez(archive, x=np.round(images * 255).astype(np.uint8), y=labels)
    out = work / variant / "m" / "1"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "training", "train", "--dataset", f"npz:{archive}",
                    "--seed", str(seed), "--out", str(out), "--overwrite"], check=True,
                   cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                   stdout=subprocess.DEVNULL)  # its summary: the row below has what matters
    seconds = time.monotonic() - started
    manifest = json.loads((out / "manifest.json").read_text())
    scores, options = manifest["evaluation"], manifest["training"]["hyperparameters"]
    # k-means on the raw pixels of the same seeded split: fit on train, score held-out.
    data = load_dataset(f"npz:{archive}", DataOptions(seed=seed))
    assert data.heldout is not None
    train_x, _ = to_numpy(data.train)
    test_x, test_y = to_numpy(data.heldout)
    kmeans = KMeans(10, n_init=10, random_state=seed).fit(train_x.reshape(len(train_x), -1))
    raw = hungarian_accuracy(np.asarray(test_y), kmeans.predict(test_x.reshape(len(test_x), -1)))
    return {"dataset": dataset, "variant": variant, "seed": seed, "n_heldout": scores["n"],
            "acc": round(scores["hungarian_accuracy"], 4), "nmi": round(scores["nmi"], 4),
            "raw_kmeans_acc": round(raw, 4), "view_flip": options.get("view_flip"),
            "mirror_ratio": options.get("mirror_ratio"), "epochs": options.get("epochs"),
            "invert": options.get("invert"),
            "light_border_share": options.get("light_border_share"),
            "seconds": round(seconds, 1)}


def _known(value: Any) -> str:
    """A recorded decision, or a dash for rows run before the recipe made it."""
    return "-" if value is None else str(value)


def _order(row: dict[str, Any]) -> tuple[Any, ...]:
    """Dataset, then the variants in VARIANTS' order, then seed: a variant's seeds together."""
    variant = row["variant"]
    rank = VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS)
    return row["dataset"], rank, variant, row["seed"]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| dataset | variant | seed | ACC (default) | NMI | ACC (raw-pixel k-means) | "
             "mirrored | mirror ratio | inverted | light border | epochs | time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=_order):
        lines.append(f"| {r['dataset']} | {r['variant']} | {r['seed']} | {r['acc']:.3f} | "
                     f"{r['nmi']:.3f} | {r['raw_kmeans_acc']:.3f} | {r['view_flip']} | "
                     f"{r['mirror_ratio']} | {_known(r.get('invert'))} | "
                     f"{_known(r.get('light_border_share'))} | {r['epochs']} | "
                     f"{r['seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


@contextmanager
def workdir(keep: Path | None, dataset: str, seed: int) -> Iterator[Path]:
    """Where the variants' archives and bundles go: a temporary folder, or one under ``keep``."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="aecluster-robustness-") as work:
            yield Path(work)
        return
    # The dataset's name may be a source spec (``npz:/a/b.npz``): keep only a file-safe form.
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset)
    kept = keep / f"{safe}-seed{seed}"
    kept.mkdir(parents=True, exist_ok=True)
    yield kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep the archives and bundles under DIR instead of dropping them")
    args = parser.parse_args(argv)
    path = args.results / "robustness.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    with workdir(args.keep, args.dataset, args.seed) as work:
        for variant in args.variants.split(","):
            row = run_variant(args.dataset, variant, args.seed, work)
            print(json.dumps(row), flush=True)
            rows = [r for r in rows if (r["dataset"], r["variant"], r["seed"])
                    != (row["dataset"], row["variant"], row["seed"])] + [row]
            args.results.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
            (args.results / "robustness.md").write_text(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
