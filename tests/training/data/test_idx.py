"""Tests of training.data.idx: the IDX reader, idx:DIR and fashion-mnist on small files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from training.data.base import DataOptions
from training.data.idx import find_idx_set, load_fashion_mnist, load_idx_dir, read_idx
from training.data.pipeline import to_numpy
from training.errors import DataError


def _idx_bytes(array: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    data = _idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 5, 4), dtype=np.uint8)


def _mnist_like(folder: Path, n_train: int = 12, n_test: int = 6, *, labels: bool = True) -> None:
    folder.mkdir(exist_ok=True)
    _write(folder / "train-images-idx3-ubyte.gz", _images(n_train), gz=True)
    _write(folder / "t10k-images-idx3-ubyte.gz", _images(n_test, 1), gz=True)
    if labels:
        _write(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train, dtype=np.uint8) % 10,
               gz=True)
        _write(folder / "t10k-labels-idx1-ubyte.gz", np.arange(n_test, dtype=np.uint8) % 10,
               gz=True)


def test_read_idx_plain_and_gzip(tmp_path: Path) -> None:
    images = _images(3)
    assert np.array_equal(read_idx(_write(tmp_path / "a", images), ndim=3), images)
    assert np.array_equal(read_idx(_write(tmp_path / "b.gz", images, gz=True)), images)
    ints = np.array([1, -2, 300], np.int32)
    assert np.array_equal(read_idx(_write(tmp_path / "c", ints), ndim=1), ints)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "bad magic"),
        (b"\x08\x03\x00\x00", "bad magic"),
        (b"\x00\x00\x07\x03", "bad magic"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
    ],
)
def test_read_idx_rejects_bad_headers(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path, ndim=3)
    assert str(path) in str(info.value)


def test_read_idx_rejects_wrong_dims_truncation_and_trailing_bytes(tmp_path: Path) -> None:
    raw = _idx_bytes(_images(3))
    with pytest.raises(DataError, match="declares 3 dimension"):
        read_idx(_write(tmp_path / "a", _images(3)), ndim=1)
    (tmp_path / "t").write_bytes(raw[:-5])
    with pytest.raises(DataError, match="truncated data"):
        read_idx(tmp_path / "t")
    (tmp_path / "x").write_bytes(raw + b"xx")
    with pytest.raises(DataError, match="unexpected bytes"):
        read_idx(tmp_path / "x")
    (tmp_path / "g.gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(DataError, match="cannot be read"):
        read_idx(tmp_path / "g.gz")


def test_idx_dir_with_train_and_test(tmp_path: Path) -> None:
    _mnist_like(tmp_path)
    data = load_idx_dir(tmp_path, DataOptions())
    assert data.heldout is not None and data.heldout_kind == "test-split"
    assert (data.train.size, data.heldout.size) == (12, 6)
    assert (data.height, data.width, data.channels, data.color_mode) == (5, 4, 1, "gray")
    assert data.class_names == [str(i) for i in range(10)]
    x, y = to_numpy(data.heldout)
    np.testing.assert_allclose(x[..., 0], _images(6, 1) / 255.0, atol=1e-6)
    assert list(y) == [0, 1, 2, 3, 4, 5]
    assert data.source == f"idx:{tmp_path}"


def test_idx_dir_single_file_without_labels_uses_val_fraction(tmp_path: Path) -> None:
    _write(tmp_path / "kmnist-images-idx3-ubyte", _images(20))
    data = load_idx_dir(tmp_path, DataOptions(val_fraction=0.25))
    assert data.heldout is not None and data.heldout_kind == "val-fraction"
    assert (data.train.size, data.heldout.size) == (15, 5)
    assert data.class_names is None


def test_emnist_names_and_resizing(tmp_path: Path) -> None:
    _write(tmp_path / "emnist-digits-train-images-idx3-ubyte", _images(8))
    _write(tmp_path / "emnist-digits-train-labels-idx1-ubyte", np.zeros(8, np.uint8))
    _write(tmp_path / "emnist-digits-test-images-idx3-ubyte", _images(4))
    data = load_idx_dir(tmp_path, DataOptions(image_size=(10, 8), color="rgb"))
    assert data.heldout is not None and data.heldout_kind == "test-split"
    assert (data.height, data.width, data.channels) == (10, 8, 3)
    assert data.class_names == ["0"]
    assert list(to_numpy(data.heldout)[1]) == [-1] * 4


def test_idx_dir_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory"):
        find_idx_set(tmp_path / "missing")
    with pytest.raises(DataError, match="no IDX image files"):
        find_idx_set(tmp_path)
    _write(tmp_path / "a-train-images-idx3-ubyte", _images(2))
    _write(tmp_path / "b-train-images-idx3-ubyte", _images(2))
    with pytest.raises(DataError, match="several IDX datasets"):
        find_idx_set(tmp_path)


def test_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    _write(tmp_path / "train-images-idx3-ubyte", _images(5))
    _write(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="4 labels but train-images-idx3-ubyte holds 5"):
        load_idx_dir(tmp_path, DataOptions())


def test_fashion_mnist_layout_from_a_folder(tmp_path: Path) -> None:
    _mnist_like(tmp_path)
    data = load_fashion_mnist(tmp_path, DataOptions())
    assert data.source == f"fashion-mnist:{tmp_path}"
    assert data.class_names is not None and data.class_names[0] == "T-shirt/top"
    assert data.class_names[9] == "Ankle boot" and data.heldout_kind == "test-split"


def test_fashion_mnist_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Fashion-MNIST folder not found"):
        load_fashion_mnist(tmp_path / "nope", DataOptions())
    _mnist_like(tmp_path, labels=False)
    with pytest.raises(DataError, match="train labels, test labels"):
        load_fashion_mnist(tmp_path, DataOptions())
