"""Exemplars: the training images nearest to each centroid, stored in the bundle as PNGs.

They let the service show what a cluster looks like without the training data. The
choice uses what training already has (embeddings in dataset order, their cluster ids and
distances); the images themselves are fetched from the training split in one pass that
keeps only the chosen ones, so a streamed source is never loaded whole.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from service import bundle
from training.data.base import Split
from training.errors import ConfigError, ExportError

logger = logging.getLogger(__name__)

# Thumbnails are for looking at, not for computing: larger training images are shrunk so a
# bundle with many clusters stays small. Images at or under this size are stored as they are.
THUMBNAIL_MAX_SIDE = 128
FETCH_BATCH = 1024


def nearest(
    cluster_ids: np.ndarray, distances: np.ndarray, n_clusters: int, per_cluster: int
) -> dict[int, np.ndarray]:
    """Cluster -> dataset indices of its ``per_cluster`` members nearest to the centroid.

    Nearest first; ties keep dataset order (a stable sort), so the choice is reproducible.
    A cluster with fewer members gets them all; an empty cluster gets an empty array.
    """
    if per_cluster < 0:
        raise ConfigError(f"exemplars per cluster must be >= 0, got {per_cluster}")
    ids = np.asarray(cluster_ids, dtype=np.int64)
    dist = np.asarray(distances, dtype=np.float64)
    if ids.shape != dist.shape or ids.ndim != 1:
        raise ConfigError(
            f"cluster ids {ids.shape} and distances {dist.shape} must be vectors of one length"
        )
    chosen: dict[int, np.ndarray] = {}
    for cluster in range(n_clusters):
        members = np.flatnonzero(ids == cluster)
        order = np.argsort(dist[members], kind="stable")[:per_cluster]
        chosen[cluster] = members[order]
    return chosen


def fetch(split: Split, indices: np.ndarray) -> dict[int, np.ndarray]:
    """Dataset index -> image float32 [H, W, C] of the split, for the given indices only.

    One ordered pass over ``split.dataset`` that stops after the last wanted index and
    keeps nothing else; progress is logged for long passes.
    """
    wanted = np.unique(np.asarray(indices, dtype=np.int64))
    if wanted.size == 0:
        return {}
    if wanted[0] < 0 or wanted[-1] >= split.size:
        raise ConfigError(
            f"exemplar indices must be in 0..{split.size - 1}, got {wanted[0]}..{wanted[-1]}"
        )
    last = int(wanted[-1])
    found: dict[int, np.ndarray] = {}
    start = 0
    started = last_log = time.monotonic()
    dataset = split.dataset.take(last + 1).batch(FETCH_BATCH)
    for images, _ in dataset.as_numpy_iterator():
        stop = start + len(images)
        lo, hi = np.searchsorted(wanted, [start, stop])
        for index in wanted[lo:hi]:
            found[int(index)] = np.array(images[index - start], dtype=np.float32)
        start = stop
        now = time.monotonic()
        if now - last_log >= 10.0:
            logger.info("exemplars: read %d/%d training images", start, last + 1)
            last_log = now
    missing = [int(i) for i in wanted if int(i) not in found]
    if missing:
        raise ExportError(
            f"the training split ended after {start} images, before exemplar index "
            f"{missing[0]}: the split changed while training was running"
        )
    logger.info("exemplars: %d images fetched in one pass over %d in %.1f s",
                len(found), start, time.monotonic() - started)
    return found


def collect(
    split: Split,
    cluster_ids: np.ndarray,
    distances: np.ndarray,
    n_clusters: int,
    per_cluster: int,
) -> dict[int, list[np.ndarray]]:
    """Cluster -> its nearest training images (float32 [H, W, C] in [0, 1]), nearest first."""
    if per_cluster == 0:
        return {}
    chosen = nearest(cluster_ids, distances, n_clusters, per_cluster)
    images = fetch(split, np.concatenate(list(chosen.values())))
    return {c: [images[int(i)] for i in idx] for c, idx in chosen.items()}


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An image in [0, 1] as 8-bit pixels [H, W] (one channel) or [H, W, 3]."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ExportError(f"an exemplar must be [H, W, 1] or [H, W, 3], got {array.shape}")
    return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def png_bytes(image: np.ndarray, max_side: int = THUMBNAIL_MAX_SIDE) -> bytes:
    """PNG of an image in [0, 1], shrunk (aspect kept) when a side is over ``max_side``."""
    thumb = Image.fromarray(to_uint8(image))
    if max(thumb.size) > max_side:
        thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write(
    version_dir: Path, exemplars: Mapping[int, Sequence[np.ndarray]]
) -> dict[str, list[str]]:
    """Write ``exemplars/<cluster>/<i>.png`` under ``version_dir``; returns the manifest field.

    Every cluster gets a key, an empty list when it has no members, so readers can tell
    "no exemplars" from "not stored".
    """
    field: dict[str, list[str]] = {}
    for cluster in sorted(exemplars):
        paths = []
        for index, image in enumerate(exemplars[cluster]):
            relative = bundle.exemplar_path(cluster, index)
            target = version_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(png_bytes(image))
            paths.append(relative)
        field[str(cluster)] = paths
    return field


def decode_png(data: bytes) -> np.ndarray:
    """8-bit pixels [H, W] or [H, W, 3] of a PNG written by :func:`write` (for tests, reports)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)

