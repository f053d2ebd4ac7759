"""Tests of training.data.cifar10 on small batches in the CIFAR-10 pickle layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from training.data.base import DataOptions
from training.data.cifar10 import load_cifar10
from training.data.pipeline import to_numpy
from training.errors import DataError


def _batch(path: Path, n: int, seed: int) -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)
    payload = {b"batch_label": b"x", b"labels": [i % 10 for i in range(n)], b"data": data,
               b"filenames": [b"f"] * n}
    path.write_bytes(pickle.dumps(payload, protocol=2))
    return data


def _cifar(folder: Path, *, meta: bool = True) -> list[np.ndarray]:
    folder.mkdir(exist_ok=True)
    arrays = [_batch(folder / f"data_batch_{i}", 3, i) for i in range(1, 6)]
    arrays.append(_batch(folder / "test_batch", 4, 9))
    if meta:
        names = [f"class{i}".encode() for i in range(10)]
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return arrays


def test_cifar_layout_channels_and_split(tmp_path: Path) -> None:
    arrays = _cifar(tmp_path)
    data = load_cifar10(tmp_path, DataOptions())
    assert data.heldout is not None and data.heldout_kind == "test-split"
    assert (data.train.size, data.heldout.size) == (15, 4)
    assert (data.height, data.width, data.channels, data.color_mode) == (32, 32, 3, "rgb")
    assert data.class_names == [f"class{i}" for i in range(10)]
    x, y = to_numpy(data.heldout)
    planes = arrays[-1].reshape(4, 3, 32, 32)
    np.testing.assert_allclose(x[..., 0], planes[:, 0] / 255.0, atol=1e-6)  # red plane first
    np.testing.assert_allclose(x[..., 2], planes[:, 2] / 255.0, atol=1e-6)
    assert list(y) == [0, 1, 2, 3]


def test_cifar_red_channel_and_default_names(tmp_path: Path) -> None:
    _cifar(tmp_path, meta=False)
    data = load_cifar10(tmp_path, DataOptions(color="red", image_size=(16, 16)))
    assert (data.channels, data.height, data.color_mode) == (1, 16, "red")
    assert data.class_names is not None and data.class_names[0] == "airplane"


def test_cifar_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory"):
        load_cifar10(tmp_path / "missing", DataOptions())
    _cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="batches missing: data_batch_3"):
        load_cifar10(tmp_path, DataOptions())
    # A pickle that would call os.system is refused, not run.
    (tmp_path / "data_batch_3").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(DataError, match=r"global os.system is not allowed"):
        load_cifar10(tmp_path, DataOptions())
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8),
                                                          b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"uint8 \(N, 3072\)"):
        load_cifar10(tmp_path, DataOptions())
