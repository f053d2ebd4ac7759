"""What every panel of the report is drawn from: a seeded sample of a split, run through
the bundle exactly as the service runs it (verified checksums, SavedModel signatures,
nearest joblib centroid)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from service import bundle
from training.data import DataOptions, Split, load_dataset, to_numpy
from training.embed import embed
from training.errors import ConfigError
from training.evaluate import (
    LoadedBundle,
    SplitName,
    data_options_for,
    load_bundle,
    select_split,  # `report` and `evaluate` agree on splits
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportOptions:
    """How ``python -m training report`` samples the data and bounds the slow steps."""

    split: SplitName = "heldout"
    max_images: int = 5000  # seeded sample of the split; every panel uses it
    seed: int = 0
    batch_size: int = 256
    map_points: int = 3000  # t-SNE/UMAP cost grows fast: at most this many points
    projector_dir: Path | None = None
    data: DataOptions = field(default_factory=DataOptions)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first option that cannot work."""
        for name in ("max_images", "batch_size", "map_points"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {value}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")


@dataclass
class ReportData:
    """The sampled images with everything the bundle says about them, in dataset order."""

    loaded: LoadedBundle
    source: str
    split: str  # test-split, val-fraction, train or all
    split_size: int
    images: np.ndarray  # float32 [N, H, W, C] in [0, 1]
    labels: np.ndarray  # int64 [N], -1 = unknown
    class_names: list[str] | None
    embeddings: np.ndarray  # float32 [N, D]
    cluster_ids: np.ndarray  # int64 [N]
    distances: np.ndarray  # float32 [N]
    reconstruction_mse: float | None
    reconstruction_psnr: float | None
    seed: int

    @property
    def manifest(self) -> bundle.Manifest:
        return self.loaded.manifest

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def has_labels(self) -> bool:
        return bool(np.any(self.labels >= 0))

    def label_name(self, label: int) -> str:
        """Class name of ``label`` when the dataset names its classes, else the number."""
        if label < 0:
            return "unknown"
        if self.class_names is not None and label < len(self.class_names):
            return self.class_names[label]
        return str(label)

    def outliers(self) -> np.ndarray:
        """bool [N]: beyond the p99 training distance of the assigned cluster (as served)."""
        p99 = np.array([s.p99 for s in self.manifest.cluster_stats], dtype=np.float32)
        return self.distances > p99[self.cluster_ids]


def sample_split(split: Split, max_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of at most ``max_images`` items of ``split``: a seeded sample, in split order.

    Streamed splits are read once and only the chosen items are kept, so memory holds the
    sample, never the split.
    """
    if split.size <= max_images:
        return to_numpy(split)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(split.size, dtype=bool)
    chosen[rng.choice(split.size, size=max_images, replace=False)] = True
    keep = tf.constant(chosen)
    picked = (split.dataset.enumerate()
              .filter(lambda i, item: tf.gather(keep, i))
              .map(lambda i, item: item))
    return to_numpy(Split(size=max_images, dataset=picked, in_memory=False))


def gather(bundle_path: Path, dataset: str, options: ReportOptions) -> ReportData:
    """Load the bundle, sample the split and embed, reconstruct-score and assign the sample."""
    options.validate()
    loaded = load_bundle(bundle_path)
    manifest = loaded.manifest
    data = load_dataset(dataset, data_options_for(manifest, options.data))
    chosen, split_kind = select_split(data, options.split)
    started = time.monotonic()
    logger.info("report: %s:%d on %s (%s split, %d images); sampling at most %d (seed %d)",
                manifest.name, manifest.version, data.source, split_kind, chosen.size,
                options.max_images, options.seed)
    x, y = sample_split(chosen, options.max_images, options.seed)
    if len(y) == 0:
        raise ConfigError(f"the {split_kind} split of {data.source} holds no images")
    logger.info("report: sampled %d images in %.1f s", len(y), time.monotonic() - started)
    stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(options.batch_size)
    embedded = embed(loaded.encode, stream, total=len(y), decode=loaded.decode,
                     what="report: embedding")
    ids, distances = bundle.assign(embedded.embeddings, loaded.centroids)
    return ReportData(
        loaded=loaded,
        source=data.source,
        split=split_kind,
        split_size=chosen.size,
        images=x,
        labels=y,
        class_names=data.class_names,
        embeddings=embedded.embeddings,
        cluster_ids=np.asarray(ids, dtype=np.int64),
        distances=np.asarray(distances, dtype=np.float32),
        reconstruction_mse=embedded.reconstruction_mse,
        reconstruction_psnr=embedded.reconstruction_psnr,
        seed=options.seed,
    )
