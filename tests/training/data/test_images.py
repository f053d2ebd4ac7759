"""Tests of training.data.images on folders of real PNG/JPEG files made with Pillow."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.base import DataOptions
from training.data.images import check_image, list_image_files, load_image_folder
from training.data.pipeline import batches, to_numpy
from training.errors import DataError


def _png(path: Path, value: int, size: tuple[int, int] = (6, 4), mode: str = "L") -> Path:
    """A flat image of ``value`` (gray) or (value, 0, 255 - value) (RGB); size is (w, h)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, color).save(path)
    return path


def _classes(folder: Path) -> None:
    for i in range(4):
        _png(folder / "cats" / f"c{i}.png", 10 * i)
        _png(folder / "dogs" / f"d{i}.png", 100 + 10 * i)


def test_listing_is_sorted_recursive_and_skips_hidden_and_other_files(tmp_path: Path) -> None:
    _png(tmp_path / "b" / "z.png", 1)
    _png(tmp_path / "a.JPG", 1)
    _png(tmp_path / ".hidden" / "x.png", 1)
    _png(tmp_path / ".y.png", 1)
    (tmp_path / "notes.txt").write_text("hello")
    names = [p.relative_to(tmp_path).as_posix() for p in list_image_files(tmp_path)]
    assert names == ["a.JPG", "b/z.png"]


def test_sub_folders_give_labels_and_images_stream(tmp_path: Path) -> None:
    _classes(tmp_path)
    data = load_image_folder(tmp_path, DataOptions(val_fraction=0.0))
    assert data.class_names == ["cats", "dogs"] and data.skipped_files == 0
    assert not data.train.in_memory and data.train.reader is not None
    assert (data.height, data.width, data.channels, data.color_mode) == (4, 6, 1, "gray")
    x, y = to_numpy(data.train)
    assert list(y) == [0, 0, 0, 0, 1, 1, 1, 1]
    np.testing.assert_allclose(x[:, 0, 0, 0], np.array([0, 10, 20, 30, 100, 110, 120, 130]) / 255,
                               atol=1e-6)
    assert data.source == f"images:{tmp_path.resolve()}"


@pytest.mark.parametrize("cache", [False, True])
def test_streamed_split_batches_shuffle_all_files(tmp_path: Path, cache: bool) -> None:
    _classes(tmp_path)
    data = load_image_folder(tmp_path, DataOptions(val_fraction=0.0, image_size=(8, 8)))
    stream = batches(data.train, 3, shuffle=True, seed=0, cache=cache)
    epochs = [[(round(float(x[0, 0, 0]) * 255), int(y)) for xb, yb in stream.as_numpy_iterator()
               for x, y in zip(xb, yb, strict=True)] for _ in range(2)]
    expected = [(v, 0) for v in (0, 10, 20, 30)] + [(v, 1) for v in (100, 110, 120, 130)]
    assert sorted(epochs[0]) == expected and sorted(epochs[1]) == expected
    assert epochs[0] != expected and epochs[0] != epochs[1]


def test_held_out_split_is_a_seeded_share_of_the_files(tmp_path: Path) -> None:
    _classes(tmp_path)
    data = load_image_folder(tmp_path, DataOptions(val_fraction=0.25, seed=2))
    assert data.heldout is not None and data.heldout_kind == "val-fraction"
    assert (data.train.size, data.heldout.size) == (6, 2)
    values = np.concatenate([to_numpy(data.train)[0], to_numpy(data.heldout)[0]])[:, 0, 0, 0]
    assert sorted(np.round(values * 255).astype(int)) == [0, 10, 20, 30, 100, 110, 120, 130]


def test_mixed_sizes_modes_and_formats_are_resized_and_converted(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 200, size=(6, 4), mode="RGB")
    _png(tmp_path / "b.jpg", 50, size=(12, 8), mode="RGB")
    _png(tmp_path / "c.png", 90, size=(3, 3), mode="L")
    Image.new("RGBA", (5, 5), (255, 0, 0, 128)).save(tmp_path / "d.png")
    data = load_image_folder(tmp_path, DataOptions(val_fraction=0.0, color="red"))
    assert (data.height, data.width, data.channels) == (4, 6, 1)  # the first image's size
    x, _ = to_numpy(data.train)
    np.testing.assert_allclose(x[:, 1, 1, 0], [200 / 255, 50 / 255, 90 / 255, 1.0], atol=0.02)
    rgb = load_image_folder(tmp_path, DataOptions(val_fraction=0.0, color="rgb",
                                                  image_size=(5, 7)))
    x, _ = to_numpy(rgb.train)
    assert x.shape == (4, 5, 7, 3)
    np.testing.assert_allclose(x[2, 0, 0], [90 / 255] * 3, atol=1e-6)  # gray tiled


def test_corrupt_files_are_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _classes(tmp_path)
    (tmp_path / "cats" / "text.png").write_text("not an image")
    good = (tmp_path / "dogs" / "d0.png").read_bytes()
    (tmp_path / "dogs" / "cut.png").write_bytes(good[: len(good) // 2])
    jpeg = tmp_path / "dogs" / "j.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    with caplog.at_level(logging.WARNING, logger="training.data.images"):
        data = load_image_folder(tmp_path, DataOptions(val_fraction=0.0))
    assert data.skipped_files == 3 and data.train.size == 8
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "skipped 3" in message and "text.png" in message and "cut.png" in message
    assert len(to_numpy(data.train)[1]) == 8  # iterating never meets a bad file


def test_strict_mode_fails_on_the_first_corrupt_file(tmp_path: Path) -> None:
    _classes(tmp_path)
    bad = tmp_path / "cats" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"bad\.png: not a readable image"):
        load_image_folder(tmp_path, DataOptions(strict=True))


def test_check_image_rejects_unsupported_formats(tmp_path: Path) -> None:
    tiff = tmp_path / "t.png"
    Image.new("L", (4, 4)).save(tiff, format="TIFF")
    with pytest.raises(ValueError, match="TIFF images are not supported"):
        check_image(tiff)
    assert check_image(_png(tmp_path / "ok.png", 3, size=(5, 2))) == (2, 5)


def test_labels_csv_relative_to_its_folder_with_header(tmp_path: Path) -> None:
    images = tmp_path / "train_imgs"
    for i in range(4):
        _png(images / f"{i}.png", i)
    _png(images / "unlisted.png", 9)
    csv = tmp_path / "train.txt"
    csv.write_text("path,label\ntrain_imgs/0.png,3\ntrain_imgs/1.png,1\n"
                   "train_imgs/2.png,\ntrain_imgs/3.png,1\n")
    data = load_image_folder(images, DataOptions(labels_file=csv, val_fraction=0.0))
    assert data.class_names == ["0", "1", "2", "3"]
    assert list(to_numpy(data.train)[1]) == [3, 1, -1, 1, -1]


def test_labels_csv_relative_to_the_images_folder_with_names(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        _png(tmp_path / "imgs" / f"{name}.png", 1)
    csv = tmp_path / "labels.csv"
    csv.write_text("a.png,water\nb.png,forest\nc.png,water\n")
    data = load_image_folder(tmp_path / "imgs", DataOptions(labels_file=csv, val_fraction=0.0))
    assert data.class_names == ["forest", "water"]
    assert list(to_numpy(data.train)[1]) == [1, 0, 1]


def test_labels_csv_problems(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png", 1)
    csv = tmp_path / "labels.csv"
    csv.write_text("a.png,1\nmissing.png,2\n")
    with pytest.raises(DataError, match=r"names 1 file\(s\) that do not exist") as info:
        load_image_folder(tmp_path / "imgs", DataOptions(labels_file=csv))
    assert "missing.png" in str(info.value)
    with pytest.raises(DataError, match="labels file not found"):
        load_image_folder(tmp_path / "imgs", DataOptions(labels_file=tmp_path / "nope.csv"))
    csv.write_text("a.png\n")
    with pytest.raises(DataError, match="expected 'path,label'"):
        load_image_folder(tmp_path / "imgs", DataOptions(labels_file=csv))
    _png(tmp_path / "other.png", 1)
    csv.write_text("other.png,1\n")
    with pytest.raises(DataError, match="is not inside"):
        load_image_folder(tmp_path / "imgs", DataOptions(labels_file=csv))


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory"):
        load_image_folder(tmp_path / "nope", DataOptions())
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        load_image_folder(tmp_path, DataOptions())
    (tmp_path / "x.png").write_text("x")
    with pytest.raises(DataError, match="none of the 1 image files is readable"):
        load_image_folder(tmp_path, DataOptions())


def test_one_sub_folder_or_loose_files_give_no_labels(tmp_path: Path) -> None:
    _png(tmp_path / "only" / "a.png", 1)
    _png(tmp_path / "only" / "b.png", 2)
    assert load_image_folder(tmp_path, DataOptions(val_fraction=0.0)).class_names is None
    _png(tmp_path / "other" / "c.png", 2)
    _png(tmp_path / "loose.png", 2)
    assert load_image_folder(tmp_path, DataOptions(val_fraction=0.0)).class_names is None
