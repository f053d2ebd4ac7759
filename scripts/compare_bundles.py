"""Are two bundle versions the same model? Weight by weight, centroid by centroid.

Seeded runs are bit-reproducible, so a refactoring that claims to change nothing can be
held to it: train the same command before and after, then

    .venv/bin/python scripts/compare_bundles.py models/before/1 models/after/1 --dataset digits

Checks, each printed SAME or DIFF: the centroids; every encoder and decoder variable; the
manifest's evaluation, final losses, cluster statistics and label map; the exemplar PNGs;
and the cluster of every image of ``--dataset`` as the service would assign it. The
SavedModel graph files are not compared: they differ between any two exports. Exit 0 when
all are the same, 1 otherwise, 2 for a path that is not a bundle version.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _variables(version: Path, part: str) -> list[bytes]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(version / part / "variables" / "variables"))
    # `variables/N` entries in key order; the checkpoint's other lists are written in an
    # order that changes from export to export.
    keys = sorted(k for k in reader.get_variable_to_shape_map() if k.startswith("variables/"))
    return [np.asarray(reader.get_tensor(k)).tobytes() for k in keys]


def _assignments(version: Path, dataset: str) -> np.ndarray:
    from service import bundle
    from training.data import DataOptions, batches, load_dataset
    from training.embed import embed
    from training.evaluate import data_options_for, load_bundle

    loaded = load_bundle(version)
    data = load_dataset(dataset, data_options_for(loaded.manifest, DataOptions()))
    ids = []
    for split in (data.train, data.heldout):
        if split is None:
            continue
        embedded = embed(loaded.encode, batches(split, 512, shuffle=False, seed=0),
                         total=split.size, what=f"embedding {version}")
        ids.append(bundle.assign(embedded.embeddings, loaded.centroids)[0])
    return np.concatenate(ids)


def compare(a: Path, b: Path, dataset: str | None) -> list[tuple[str, bool]]:
    """(check, same) for every check of the module docstring."""
    from service import bundle

    ma, mb = bundle.read_manifest(a), bundle.read_manifest(b)
    ca, cb = bundle.load_centroids(a, ma), bundle.load_centroids(b, mb)
    checks = [("centroids", ca.shape == cb.shape and bool(np.array_equal(ca, cb)))]
    checks += [(f"{part} variables", _variables(a, part) == _variables(b, part))
               for part in ("encoder", "decoder")]
    for field in ("evaluation", "cluster_stats", "label_map"):
        checks.append((f"manifest {field}", json.dumps(getattr(ma, field), default=str)
                       == json.dumps(getattr(mb, field), default=str)))
    checks.append(("manifest final losses",
                   ma.training.final_losses == mb.training.final_losses))
    pngs = sorted(k for k in ma.files if k.startswith("exemplars/"))
    checks.append(("exemplar PNGs", pngs == sorted(k for k in mb.files
                                                   if k.startswith("exemplars/"))
                   and all(ma.files[k] == mb.files[k] for k in pngs)))
    if dataset is not None:
        checks.append((f"clusters of every {dataset} image",
                       bool(np.array_equal(_assignments(a, dataset), _assignments(b, dataset)))))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="a bundle version directory")
    parser.add_argument("b", type=Path, help="the version to compare it with")
    parser.add_argument("--dataset", default=None,
                        help="also compare the cluster of every image of this dataset spec")
    args = parser.parse_args(argv)
    from service.bundle import BundleError

    try:
        checks = compare(args.a, args.b, args.dataset)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, same in checks:
        print(f"{'SAME' if same else 'DIFF'}  {name}")
    everything = all(same for _, same in checks)
    print("the same model" if everything else "different models")
    return 0 if everything else 1


if __name__ == "__main__":
    sys.exit(main())
