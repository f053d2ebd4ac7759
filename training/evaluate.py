"""``python -m training evaluate``: score an exported bundle on a labelled split.

The bundle is used exactly as the service uses it: checksums verified, the encoder and
decoder SavedModels called through their ``serving_default`` signatures, images assigned
to the nearest joblib centroid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tensorflow as tf

from service import bundle
from training import metrics
from training.data import DataOptions, LoadedData, Split, batches, load_dataset
from training.embed import TensorFn, embed
from training.errors import TrainingError

logger = logging.getLogger(__name__)

SplitName = Literal["heldout", "train", "all"]


@dataclass
class LoadedBundle:
    """A verified bundle with its SavedModels loaded as plain tensor functions."""

    path: Path
    manifest: bundle.Manifest
    centroids: np.ndarray
    encode: TensorFn
    decode: TensorFn
    # The loaded SavedModel objects: signatures of a collected object stop working.
    owners: tuple[Any, ...] = ()


def load_bundle(path: Path) -> LoadedBundle:
    """Read, verify and load a bundle; raises :class:`TrainingError` naming the problem."""
    try:
        manifest = bundle.read_manifest(path)
        centroids = bundle.load_centroids(path, manifest)  # verifies every checksum first
    except bundle.BundleError as exc:
        raise TrainingError(str(exc)) from exc
    encoder = tf.saved_model.load(str(path / bundle.ENCODER_DIR))
    decoder = tf.saved_model.load(str(path / bundle.DECODER_DIR))
    enc_sig = encoder.signatures[bundle.SIGNATURE]
    dec_sig = decoder.signatures[bundle.SIGNATURE]

    def encode(x: tf.Tensor) -> tf.Tensor:
        return enc_sig(**{bundle.ENCODER_INPUT: x})[bundle.ENCODER_OUTPUT]

    def decode(z: tf.Tensor) -> tf.Tensor:
        return dec_sig(**{bundle.DECODER_INPUT: z})[bundle.DECODER_OUTPUT]

    return LoadedBundle(path, manifest, centroids, encode, decode, owners=(encoder, decoder))


def data_options_for(manifest: bundle.Manifest, base: DataOptions) -> DataOptions:
    """Options that reproduce the bundle's input spec and its training-time split."""
    hp = manifest.training.hyperparameters
    return replace(
        base,
        image_size=(manifest.input.height, manifest.input.width),
        color=manifest.input.color_mode,
        val_fraction=float(hp.get("val_fraction", base.val_fraction)),
        seed=int(hp.get("seed", base.seed)),
    )


def select_split(data: LoadedData, split: SplitName) -> tuple[Split, str]:
    """The split named ``split`` of ``data`` and its kind (shared by evaluate and report)."""
    if split == "train":
        return data.train, "train"
    if split == "heldout":
        if data.heldout is None:
            raise TrainingError(
                f"{data.source} has no held-out split (val_fraction 0 and no test split); "
                "use --split train or all"
            )
        return data.heldout, data.heldout_kind
    if data.heldout is None:
        return data.train, "train"
    both = data.train.dataset.concatenate(data.heldout.dataset)
    return Split(data.train.size + data.heldout.size, both,
                 data.train.in_memory and data.heldout.in_memory), "all"


def evaluate_bundle(
    path: Path,
    dataset: str,
    *,
    split: SplitName = "heldout",
    options: DataOptions | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Scores of the bundle at ``path`` on ``dataset``; the dict the CLI prints as JSON."""
    loaded = load_bundle(path)
    manifest = loaded.manifest
    data = load_dataset(dataset, data_options_for(manifest, options or DataOptions()))
    chosen, split_kind = select_split(data, split)
    logger.info("evaluate: %s:%d on %s (%s, %d images)", manifest.name, manifest.version,
                data.source, split_kind, chosen.size)
    held = embed(loaded.encode, batches(chosen, batch_size, shuffle=False, seed=0),
                 total=chosen.size, decode=loaded.decode, what=f"embedding {split_kind}")
    ids, distances = bundle.assign(held.embeddings, loaded.centroids)
    p99 = np.array([s.p99 for s in manifest.cluster_stats], dtype=np.float32)
    scores: dict[str, Any] = {
        "bundle": str(path),
        "model": manifest.name,
        "version": manifest.version,
        "dataset": data.source,
        "split": split_kind,
        "n_clusters": manifest.n_clusters,
    }
    labels = held.labels if held.has_labels else None
    scores.update(metrics.clustering_scores(labels, ids, held.embeddings, seed=0))
    scores["reconstruction_mse"] = held.reconstruction_mse
    scores["reconstruction_psnr"] = held.reconstruction_psnr
    scores["outlier_fraction"] = float(np.mean(distances > p99[ids]))
    scores["mean_distance"] = float(np.mean(distances))
    return scores
