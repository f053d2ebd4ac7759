"""Tests of training.data.kaggle_csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data.base import DataOptions
from training.data.kaggle_csv import load_kaggle_csv
from training.data.pipeline import to_numpy
from training.errors import DataError


def _csv(path: Path, pixels: np.ndarray, labels: np.ndarray | None) -> Path:
    header = [f"pixel{i}" for i in range(pixels.shape[1])]
    rows = [list(map(str, row)) for row in pixels]
    if labels is not None:
        header = ["label", *header]
        rows = [[str(label), *row] for label, row in zip(labels, rows, strict=True)]
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return path


def test_train_csv_with_labels(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (10, 9))
    path = _csv(tmp_path / "train.csv", pixels, np.arange(10) % 3)
    data = load_kaggle_csv(path, DataOptions(val_fraction=0.0))
    assert (data.height, data.width, data.channels) == (3, 3, 1)
    assert data.class_names == ["0", "1", "2"] and data.source == f"csv:{path}"
    x, y = to_numpy(data.train)
    np.testing.assert_allclose(x.reshape(10, 9), pixels / 255.0, atol=1e-6)
    assert list(y) == list(np.arange(10) % 3)


def test_test_csv_without_labels(tmp_path: Path) -> None:
    path = _csv(tmp_path / "test.csv", np.zeros((4, 16), int), None)
    data = load_kaggle_csv(path, DataOptions(val_fraction=0.5))
    assert data.class_names is None and (data.height, data.width) == (4, 4)
    assert data.heldout is not None and data.heldout.size == 2


def test_csv_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_kaggle_csv(tmp_path / "missing.csv", DataOptions())
    with pytest.raises(DataError, match="do not form a square"):
        load_kaggle_csv(_csv(tmp_path / "a.csv", np.zeros((2, 8), int), None), DataOptions())
    bad = tmp_path / "b.csv"
    bad.write_text("label,pixel0,pixel1,pixel2,pixel3\n1,0,0,x,0\n")
    with pytest.raises(DataError, match="not a numeric table"):
        load_kaggle_csv(bad, DataOptions())
    bad.write_text("label,pixel0,pixel1,pixel2,pixel3\n1,0,0,300,0\n")
    with pytest.raises(DataError, match=r"0\.\.255"):
        load_kaggle_csv(bad, DataOptions())
    bad.write_text("label,pixel0,pixel1,pixel2,pixel3\n")
    with pytest.raises(DataError, match="no image rows"):
        load_kaggle_csv(bad, DataOptions())
    bad.write_text("ImageId,pixel0\n1,0\n")
    with pytest.raises(DataError, match="unexpected column 'ImageId'"):
        load_kaggle_csv(bad, DataOptions())
    bad.write_text("pixel0,pixel2,pixel3,pixel4\n1,0,0,0\n")
    with pytest.raises(DataError, match="without gaps"):
        load_kaggle_csv(bad, DataOptions())
