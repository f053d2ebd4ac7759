"""MNIST-format IDX files: ``idx:DIR`` (MNIST, KMNIST, EMNIST, ...) and ``fashion-mnist``.

A folder holds one set of ``<stem>-images-idx3-ubyte[.gz]`` files, each with an optional
``<stem>-labels-idx1-ubyte[.gz]`` (``.`` instead of ``-`` also works). A stem containing
``train`` and one containing ``t10k`` or ``test`` are the train and held-out splits
(``train``/``t10k`` for MNIST, ``emnist-digits-train``/``emnist-digits-test`` for EMNIST);
a single images file is split by ``val_fraction``. Gzip is recognised by its magic bytes.
EMNIST stores images transposed; they are read as stored.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from training.data.arrays import loaded_from_arrays
from training.data.base import DataOptions, LoadedData
from training.errors import DataError

logger = logging.getLogger(__name__)

# IDX type codes (http://yann.lecun.com/exdb/mnist/): multi-byte values are big-endian.
_IDX_TYPES = MappingProxyType(
    {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
)
_IDX_NAME = re.compile(
    r"^(?P<stem>.+?)[-.](?P<kind>images[-.]idx3|labels[-.]idx1)[-.]ubyte(?P<gz>\.gz)?$"
)


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            magic = handle.read(2)
        if magic == b"\x1f\x8b":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (plain or gzip) into an array; ``ndim`` checks the declared rank."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES:
        raise DataError(
            f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; "
            "expected 00 00 <type> <ndim>)"
        )
    dtype, rank = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    if ndim is not None and rank != ndim:
        raise DataError(f"{path}: declares {rank} dimension(s), expected {ndim}")
    header = 4 + 4 * rank
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes, {header} needed)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=rank, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    present = len(raw) - header
    if present < expected:
        raise DataError(
            f"{path}: truncated data: the header declares {dims} ({expected} bytes), "
            f"the file holds {present}"
        )
    if present > expected:
        raise DataError(
            f"{path}: {present - expected} unexpected bytes after the {dims} data: "
            "not a well-formed IDX file"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=False)


def _role(stem: str) -> tuple[str, str]:
    tokens = re.split(r"[-_.]", stem)
    for token, role in (("train", "train"), ("t10k", "test"), ("test", "test")):
        if token in tokens:
            rest = [t for t in tokens if t != token]
            return role, "-".join(rest)
    return "all", stem


@dataclass
class _IdxSet:
    images: dict[str, Path] = field(default_factory=dict)
    labels: dict[str, Path] = field(default_factory=dict)


def find_idx_set(folder: Path) -> dict[str, tuple[Path, Path | None]]:
    """Role ('train', 'test' or 'all') -> (images file, labels file or None) in ``folder``."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such directory")
    sets: dict[str, _IdxSet] = {}
    for path in sorted(folder.iterdir()):
        match = _IDX_NAME.match(path.name)
        if not match or not path.is_file():
            continue
        role, key = _role(match["stem"])
        found = sets.setdefault(key, _IdxSet())
        slot = found.images if match["kind"].startswith("images") else found.labels
        # Prefer an uncompressed copy when both are present: it reads faster.
        if role not in slot or not match["gz"]:
            slot[role] = path
    sets = {key: found for key, found in sets.items() if found.images}
    if not sets:
        raise DataError(
            f"{folder}: no IDX image files found (expected e.g. train-images-idx3-ubyte.gz "
            "and t10k-images-idx3-ubyte.gz)"
        )
    if len(sets) > 1:
        names = ", ".join(repr(k or "(no prefix)") for k in sorted(sets))
        raise DataError(
            f"{folder}: holds several IDX datasets ({names}): put each in its own folder"
        )
    (found,) = sets.values()
    roles = set(found.images)
    if "all" in roles and len(roles) > 1:
        raise DataError(
            f"{folder}: mixes split files {sorted(found.images.values())}: "
            "expected either one images file or train/test files"
        )
    return {role: (path, found.labels.get(role)) for role, path in found.images.items()}


def _read_pair(images: Path, labels: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    x = read_idx(images, ndim=3)
    if labels is None:
        return x, None
    y = read_idx(labels, ndim=1)
    if len(y) != len(x):
        raise DataError(
            f"{labels}: holds {len(y)} labels but {images.name} holds {len(x)} images"
        )
    return x, y


def load_idx_dir(folder: Path, options: DataOptions, *, source: str | None = None,
                 class_names: list[str] | None = None) -> LoadedData:
    """Load the IDX set in ``folder``: its train/test files, or one file split by val_fraction."""
    roles = find_idx_set(folder)
    source = source or f"idx:{folder}"
    logger.info("reading IDX files %s", ", ".join(str(p) for p, _ in roles.values()))
    if "train" in roles and "test" in roles:
        x_train, y_train = _read_pair(*roles["train"])
        x_test, y_test = _read_pair(*roles["test"])
        if (y_train is None) != (y_test is None):
            # Labels on one side only: keep them, mark the other side unknown.
            if y_train is None:
                y_train = np.full(len(x_train), -1, np.int64)
            if y_test is None:
                y_test = np.full(len(x_test), -1, np.int64)
        return loaded_from_arrays(
            source, x_train, y_train, options,
            x_test=x_test, y_test=y_test, class_names=class_names,
        )
    ((_, (images, labels)),) = roles.items()
    x, y = _read_pair(images, labels)
    return loaded_from_arrays(source, x, y, options, class_names=class_names)


def fashion_mnist_class_names() -> list[str]:
    """Fashion-MNIST's label names, in label order."""
    return ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def load_fashion_mnist(folder: Path, options: DataOptions) -> LoadedData:
    """Fashion-MNIST from ``folder``: 60000 train and 10000 test (t10k) images, 10 classes."""
    if not folder.is_dir():
        raise DataError(
            f"{folder}: Fashion-MNIST folder not found: install Debian's dataset-fashion-mnist "
            "package or pass the folder holding the four IDX .gz files (options.data_dir)"
        )
    roles = find_idx_set(folder)
    missing = [
        f"{role} {kind}"
        for role in ("train", "test")
        for kind, present in (("images", role in roles),
                              ("labels", role in roles and roles[role][1] is not None))
        if not present
    ]
    if missing:
        raise DataError(f"{folder}: Fashion-MNIST files missing: {', '.join(missing)}")
    return load_idx_dir(folder, options, source=f"fashion-mnist:{folder}",
                        class_names=fashion_mnist_class_names())
