"""``cifar10:DIR``: the CIFAR-10 "python version" batches.

``data_batch_1`` .. ``data_batch_5`` (train), ``test_batch`` (held out), ``batches.meta``
(label names; CIFAR-10's own names when it is absent). Each batch is a pickled dict with
``data`` uint8 (N, 3072), the red, green then blue 32x32 planes, and ``labels``.
Pickles can run code when loaded, so only the few globals these files use are allowed.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from training.data.arrays import loaded_from_arrays
from training.data.base import DataOptions, LoadedData
from training.errors import DataError

logger = logging.getLogger(__name__)


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Python 2 era files name numpy.core; numpy 2 moved it to numpy._core.
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"),
                              ("numpy._core.multiarray", "_reconstruct")}:
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = _BatchUnpickler(handle, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError,
            AttributeError, IndexError) as exc:
        raise DataError(f"{path}: not a readable CIFAR batch ({exc})") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path}: not a CIFAR batch (holds {type(raw).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in raw.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: a CIFAR batch needs 'data' and 'labels', found {sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(labels)} labels for {len(data)} images")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def cifar10_class_names() -> list[str]:
    """CIFAR-10's label names, in label order."""
    return ["airplane", "automobile", "bird", "cat", "deer",
            "dog", "frog", "horse", "ship", "truck"]


def load_cifar10(folder: Path, options: DataOptions) -> LoadedData:
    """CIFAR-10 from ``folder``: 50000 train images (5 batches), 10000 test images."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such directory")
    train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
    test_file = folder / "test_batch"
    missing = [p.name for p in [*train_files, test_file] if not p.is_file()]
    if missing:
        raise DataError(
            f"{folder}: CIFAR-10 batches missing: {', '.join(missing)} (expected the extracted "
            "cifar-10-batches-py folder)"
        )
    parts = [_read_batch(p) for p in train_files]
    x_test, y_test = _read_batch(test_file)
    meta = folder / "batches.meta"
    names = cifar10_class_names()
    if meta.is_file():
        raw_names = _unpickle(meta).get("label_names")
        if raw_names is not None:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw_names]
    else:
        logger.info("%s has no batches.meta: using CIFAR-10's standard class names", folder)
    return loaded_from_arrays(
        f"cifar10:{folder}",
        np.concatenate([x for x, _ in parts]),
        np.concatenate([y for _, y in parts]),
        options,
        x_test=x_test,
        y_test=y_test,
        class_names=names,
    )
