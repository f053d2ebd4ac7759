"""Tests of training.data.npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data.base import DataOptions
from training.data.npz import load_npz
from training.data.pipeline import to_numpy
from training.errors import DataError


def test_npz_with_labels_and_names(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.arange(10) % 2, class_names=np.array(["cat", "dog"]))
    data = load_npz(path, DataOptions(val_fraction=0.0))
    assert data.class_names == ["cat", "dog"] and data.color_mode == "rgb"
    images, labels = to_numpy(data.train)
    np.testing.assert_allclose(images, x / 255.0, atol=1e-6)
    assert list(labels) == [0, 1] * 5


def test_npz_float_images_without_labels(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    np.savez(path, x=np.full((4, 3, 3), 0.25, np.float32))
    data = load_npz(path, DataOptions(color="gray", val_fraction=0.5))
    assert data.class_names is None and data.channels == 1
    assert data.heldout is not None and data.heldout.size == 2
    assert np.allclose(to_numpy(data.train)[0], 0.25)


def test_npz_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_npz(tmp_path / "missing.npz", DataOptions())
    np.savez(tmp_path / "nox.npz", images=np.zeros((2, 3, 3)))
    with pytest.raises(DataError, match="has no array 'x'"):
        load_npz(tmp_path / "nox.npz", DataOptions())
    np.savez(tmp_path / "rank.npz", x=np.zeros((2, 3)))
    with pytest.raises(DataError, match="shape"):
        load_npz(tmp_path / "rank.npz", DataOptions())
    np.savez(tmp_path / "y.npz", x=np.zeros((2, 3, 3)), y=np.zeros(3))
    with pytest.raises(DataError, match="labels must have shape"):
        load_npz(tmp_path / "y.npz", DataOptions())
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable numpy"):
        load_npz(tmp_path / "junk.npz", DataOptions())
    np.savez(tmp_path / "obj.npz", x=np.zeros((2, 3, 3)), class_names=np.array([1, "a"], object))
    with pytest.raises(DataError, match=r"obj\.npz"):
        load_npz(tmp_path / "obj.npz", DataOptions())
