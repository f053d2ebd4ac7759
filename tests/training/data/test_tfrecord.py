"""Tests of training.data.tfrecord: the schema reader and write_tfrecord round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from training.data.arrays import loaded_from_arrays
from training.data.base import DataOptions, LoadedData
from training.data.digits import load_digits_data
from training.data.pipeline import batches, to_numpy
from training.data.tfrecord import load_tfrecords, sidecar_path, write_tfrecord
from training.errors import DataError


def _rgb_data(options: DataOptions, n: int = 30) -> LoadedData:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 5, 7, 3), dtype=np.uint8)
    return loaded_from_arrays("arr", x, np.arange(n) % 3, options, class_names=["a", "b", "c"])


def _example(image: np.ndarray, **ints: int) -> bytes:
    feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[tf.io.encode_png(image).numpy()]))}
    for key, value in ints.items():
        feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_plain(path: Path, images: list[np.ndarray], labels: list[int] | None = None) -> Path:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, image in enumerate(images):
            extra = {} if labels is None else {"label": labels[i]}
            writer.write(_example(image, **extra))
    return path


def test_round_trip_keeps_images_labels_split_and_names(tmp_path: Path) -> None:
    data = _rgb_data(DataOptions(val_fraction=0.2, seed=5))
    out = tmp_path / "sub" / "data.tfrecord"
    assert write_tfrecord(data, out) == 30
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "data.tfrecord", "data.tfrecord.classes.json"]  # no temporary files left
    back = load_tfrecords([out], DataOptions(seed=99))
    assert back.heldout is not None and data.heldout is not None
    assert back.heldout_kind == "test-split" and not back.train.in_memory
    assert (back.train.size, back.heldout.size) == (data.train.size, data.heldout.size)
    assert back.class_names == ["a", "b", "c"] and back.color_mode == "rgb"
    assert (back.height, back.width, back.channels) == (5, 7, 3)
    for before, after in ((data.train, back.train), (data.heldout, back.heldout)):
        x0, y0 = to_numpy(before)
        x1, y1 = to_numpy(after)
        np.testing.assert_array_equal(x0, x1)  # PNG is lossless for 8-bit data
        np.testing.assert_array_equal(y0, y1)


def test_train_only_export_and_quantised_digits(tmp_path: Path) -> None:
    data = load_digits_data(DataOptions(val_fraction=0.1))
    out = tmp_path / "digits.tfrecord"
    assert data.heldout is not None
    assert write_tfrecord(data, out, include_heldout=False) == data.train.size
    back = load_tfrecords([out], DataOptions(val_fraction=0.0))
    assert back.heldout is None and back.heldout_kind == "none"
    x0, y0 = to_numpy(data.train)
    x1, y1 = to_numpy(back.train)
    assert np.abs(x0 - x1).max() <= 0.5 / 255 + 1e-6  # k/16 values come back on the 1/255 grid
    np.testing.assert_array_equal(y0, y1)


def test_red_colour_mode_survives_the_round_trip(tmp_path: Path) -> None:
    data = _rgb_data(DataOptions(color="red", val_fraction=0.0), n=6)
    out = tmp_path / "red.tfrecord"
    write_tfrecord(data, out)
    back = load_tfrecords([out], DataOptions(val_fraction=0.0))
    assert (back.color_mode, back.channels) == ("red", 1)
    np.testing.assert_array_equal(to_numpy(data.train)[0], to_numpy(back.train)[0])


def test_foreign_files_without_labels_or_sidecar_use_a_hashed_val_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    first = _write_plain(tmp_path / "a.tfrecord",
                         [rng.integers(0, 256, (4, 4, 1), dtype=np.uint8) for _ in range(12)])
    second = _write_plain(tmp_path / "b.tfrecord",
                          [rng.integers(0, 256, (6, 2, 3), dtype=np.uint8) for _ in range(8)])
    options = DataOptions(val_fraction=0.25, seed=3, image_size=(4, 4))
    data = load_tfrecords([first, second], options)
    assert data.heldout is not None and data.heldout_kind == "val-fraction"
    assert (data.train.size, data.heldout.size) == (15, 5) and data.class_names is None
    assert data.color_mode == "gray"  # the first record has one channel
    x_train, y_train = to_numpy(data.train)
    x_held, _ = to_numpy(data.heldout)
    assert x_train.shape == (15, 4, 4, 1) and set(y_train) == {-1}
    again = load_tfrecords([first, second], options)
    assert data.heldout is not None and again.heldout is not None
    np.testing.assert_array_equal(x_held, to_numpy(again.heldout)[0])
    other = load_tfrecords([first, second], DataOptions(val_fraction=0.25, seed=4,
                                                        image_size=(4, 4)))
    assert other.heldout is not None
    assert not np.array_equal(x_held, to_numpy(other.heldout)[0])
    streamed = batches(data.train, 4, shuffle=True, seed=0)
    assert sum(len(y) for _, y in streamed.as_numpy_iterator()) == 15


def test_labels_without_names_get_numbers(tmp_path: Path) -> None:
    path = _write_plain(tmp_path / "l.tfrecord", [np.zeros((2, 2, 1), np.uint8)] * 3, [0, 4, -1])
    data = load_tfrecords([path], DataOptions(val_fraction=0.0))
    assert data.class_names == ["0", "1", "2", "3", "4"]
    assert list(to_numpy(data.train)[1]) == [0, 4, -1]


def test_tfrecord_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such TFRecord file"):
        load_tfrecords([tmp_path / "missing.tfrecord"], DataOptions())
    junk = tmp_path / "junk.tfrecord"
    junk.write_bytes(b"this is not a tfrecord file at all")
    with pytest.raises(DataError, match=r"junk\.tfrecord: not a TFRecord file"):
        load_tfrecords([junk], DataOptions())
    no_image = tmp_path / "noimage.tfrecord"
    with tf.io.TFRecordWriter(str(no_image)) as writer:
        feature = {"label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}
        writer.write(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())
    with pytest.raises(DataError, match="'image' bytes feature"):
        load_tfrecords([no_image], DataOptions())
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="no records"):
        load_tfrecords([empty], DataOptions())
    labelled = _write_plain(tmp_path / "x.tfrecord", [np.zeros((2, 2, 1), np.uint8)], [2])
    sidecar_path(labelled).write_text(json.dumps({"class_names": ["a"]}))
    with pytest.raises(DataError, match="label 2 has no name"):
        load_tfrecords([labelled], DataOptions())
    sidecar_path(labelled).write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        load_tfrecords([labelled], DataOptions())
