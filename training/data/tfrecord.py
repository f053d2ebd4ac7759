"""``tfrecord:FILE[,FILE...]``: TFRecord files of ``tf.train.Example``, streamed.

Feature schema (what :func:`write_tfrecord` writes and the reader expects):

=============  ======  ==========================================================
``image``      bytes   required; an encoded image (PNG from the writer; JPEG, BMP,
                       GIF also read); sizes may differ, they are resized
``label``      int64   optional; class index, -1 (the default) = unknown
``split``      bytes   optional; ``test`` marks held-out records, anything else is
                       train. Without any ``test`` record, a seeded ``val_fraction``
                       of the record indices (counted over all files in order) is held out
``height``     int64   optional; the first record's height, width and channels give the
``width``              native size and colour (else its image is decoded to find them)
``channels``
=============  ======  ==========================================================

Sidecar ``FILE.classes.json`` (optional): ``{"class_names": [...] | null, "color_mode":
"gray" | "rgb" | "red", ...}``. Class ``i`` is ``class_names[i]``; without names, labels are
named by their numbers. ``color_mode`` keeps e.g. red-channel data "red" on the way back.
Files are read in the order given, records in file order. One counting pass at load time
sizes the splits; images are decoded only while iterating.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import tensorflow as tf

from training.data.base import COLOR_MODES, ColorMode, DataOptions, HeldoutKind, LoadedData, Split
from training.data.pipeline import AUTOTUNE, Target, convert, decode, native_color, resolve_target
from training.data.splits import heldout_mask
from training.errors import DataError
from training.files import write_text_atomic

logger = logging.getLogger(__name__)


def sidecar_path(path: Path) -> Path:
    """Where the class names and colour mode of ``path`` are kept."""
    return path.with_name(path.name + ".classes.json")


def _features() -> dict[str, tf.io.FixedLenFeature]:
    return {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        "split": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    }


def _count(path: Path) -> tuple[int, int, int, int]:
    """(records, test records, min label, max label) of one file, in one pass."""
    features = _features()

    def step(state: tuple[tf.Tensor, ...], batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        label = batch["label"]
        tests = tf.reduce_sum(tf.cast(tf.equal(batch["split"], b"test"), tf.int64))
        return (
            state[0] + tf.size(label, out_type=tf.int64),
            state[1] + tests,
            tf.minimum(state[2], tf.reduce_min(label)),
            tf.maximum(state[3], tf.reduce_max(label)),
        )

    records = tf.data.TFRecordDataset([str(path)]).batch(512)
    parsed = records.map(lambda s: tf.io.parse_example(s, features))
    start = tuple(tf.constant(v, tf.int64) for v in (0, 0, -1, -1))
    try:
        total, tests, low, high = parsed.reduce(start, step)
    except tf.errors.OpError as exc:
        raise DataError(
            f"{path}: not a TFRecord file of tf.train.Example records with an 'image' bytes "
            f"feature ({exc.message.splitlines()[0]})"
        ) from exc
    return int(total), int(tests), int(low), int(high)


def _int_feature(example: Any, name: str) -> int | None:
    values = example.features.feature[name].int64_list.value
    return int(values[0]) if values else None


def _first_shape(path: Path) -> tuple[int, int, int]:
    """(height, width, channels) of the first record of ``path``."""
    raw = next(iter(tf.data.TFRecordDataset([str(path)]).take(1))).numpy()
    example = tf.train.Example.FromString(raw)
    dims = [_int_feature(example, k) for k in ("height", "width", "channels")]
    if all(d is not None and d > 0 for d in dims):
        height, width, channels = (int(d) for d in dims if d is not None)
        return height, width, channels
    try:
        shape = decode(example.features.feature["image"].bytes_list.value[0]).shape
    except (tf.errors.OpError, IndexError) as exc:
        raise DataError(f"{path}: the first record's image cannot be decoded ({exc})") from exc
    return int(shape[0]), int(shape[1]), int(shape[2])


def _read_sidecars(files: list[Path]) -> dict[str, Any] | None:
    found: dict[str, Any] | None = None
    for path in files:
        side = sidecar_path(path)
        if not side.is_file():
            continue
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{side}: not readable JSON ({exc})") from exc
        names = meta.get("class_names") if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or not (
            names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names))
        ):
            raise DataError(f"{side}: 'class_names' must be a list of strings or null")
        if meta.get("color_mode") not in (None, *COLOR_MODES):
            raise DataError(f"{side}: 'color_mode' must be one of {', '.join(COLOR_MODES)}")
        picked = {"class_names": names, "color_mode": meta.get("color_mode")}
        if found is not None and found != picked:
            raise DataError(f"{side}: class names or colour mode differ from the other files'")
        found = picked
    return found


def _split(
    records: tf.data.Dataset, size: int, target: Target, keep: Any
) -> Split:
    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return tf.io.parse_single_example(serialized, _features())

    def load(item: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        return convert(decode(item["image"]), target), item["label"]

    data = keep(records.map(parse, num_parallel_calls=AUTOTUNE))
    return Split(size=size, dataset=data.map(load, num_parallel_calls=AUTOTUNE), in_memory=False)


def load_tfrecords(files: list[Path], options: DataOptions) -> LoadedData:
    """Stream the records of ``files``; see the module docstring for the schema."""
    if not files:
        raise DataError("tfrecord: needs at least one file, e.g. tfrecord:data/train.tfrecord")
    for path in files:
        if not path.is_file():
            raise DataError(f"{path}: no such TFRecord file")
    counts = [_count(path) for path in files]
    total = sum(c[0] for c in counts)
    if total == 0:
        raise DataError(f"{', '.join(map(str, files))}: no records")
    tests = sum(c[1] for c in counts)
    low = min(c[2] for c in counts if c[0])
    high = max(c[3] for c in counts if c[0])
    if low < -1:
        raise DataError(f"{files[0]}: labels must be >= 0 (or -1 for unknown), found {low}")
    meta = _read_sidecars(files) or {}
    names: list[str] | None = meta.get("class_names")
    if high < 0:
        names = None
    elif names is None:
        names = [str(i) for i in range(high + 1)]
    elif high >= len(names):
        raise DataError(f"{files[0]}: label {high} has no name in the sidecar's class_names")
    first = next(path for path, c in zip(files, counts, strict=True) if c[0])
    height, width, channels = _first_shape(first)
    color: ColorMode = meta.get("color_mode") or native_color(channels)
    if (color == "rgb") != (channels >= 3):
        color = native_color(channels)
    target = resolve_target((height, width), color, options)

    records = tf.data.TFRecordDataset([str(p) for p in files])
    heldout: Split | None = None
    kind: HeldoutKind
    if tests:
        train = _split(records, total - tests, target,
                       lambda d: d.filter(lambda r: tf.not_equal(r["split"], b"test")))
        heldout = _split(records, tests, target,
                         lambda d: d.filter(lambda r: tf.equal(r["split"], b"test")))
        kind = "test-split"
    else:
        mask = heldout_mask(total, options.val_fraction, options.seed, where=str(files[0]))
        if mask.any():
            flags = tf.constant(mask)

            def pick(wanted: bool) -> Any:
                def keep(d: tf.data.Dataset) -> tf.data.Dataset:
                    # Enumerate after parsing: indices count records across all files.
                    chosen = d.enumerate().filter(
                        lambda i, r: tf.equal(tf.gather(flags, i), wanted)
                    )
                    return chosen.map(lambda i, r: r)
                return keep

            train = _split(records, int((~mask).sum()), target, pick(False))
            heldout = _split(records, int(mask.sum()), target, pick(True))
            kind = "val-fraction"
        else:
            train = _split(records, total, target, lambda d: d)
            kind = "none"
    data = LoadedData(
        source="tfrecord:" + ",".join(str(p) for p in files),
        height=target.height,
        width=target.width,
        channels=target.channels,
        color_mode=target.color_mode,
        class_names=names,
        train=train,
        heldout=heldout,
        heldout_kind=kind,
    )
    logger.info("loaded %s", data.describe())
    return data


def _example(png: bytes, label: int, split: bytes, shape: tuple[int, int, int]) -> bytes:
    def ints(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        "label": ints(label),
        "split": tf.train.Feature(bytes_list=tf.train.BytesList(value=[split])),
        "height": ints(shape[0]),
        "width": ints(shape[1]),
        "channels": ints(shape[2]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_tfrecord(data: LoadedData, out: Path, *, include_heldout: bool = True) -> int:
    """Write ``data`` as PNG records (and the sidecar) to ``out``; returns the record count.

    Images are quantised to 8 bits (exact for 8-bit sources); held-out records are marked
    ``split=test`` so reading the file back keeps the same split. The file appears
    atomically: it is written beside ``out`` and renamed into place.
    """
    out = out.expanduser()
    parts = [(b"train", data.train)]
    if include_heldout and data.heldout is not None:
        parts.append((b"test", data.heldout))
    shape = (data.height, data.width, data.channels)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    count = 0
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for split_name, split in parts:
                encoded = split.dataset.map(
                    lambda x, y: (tf.io.encode_png(tf.cast(tf.round(x * 255.0), tf.uint8)), y),
                    num_parallel_calls=AUTOTUNE,
                ).batch(256)
                for pngs, labels in encoded.as_numpy_iterator():
                    for png, label in zip(pngs, labels, strict=True):
                        writer.write(_example(bytes(png), int(label), split_name, shape))
                        count += 1
        sidecar = {
            "class_names": data.class_names,
            "color_mode": data.color_mode,
            "source": data.source,
            "records": count,
            "height": data.height,
            "width": data.width,
            "channels": data.channels,
        }
        write_text_atomic(sidecar_path(out), json.dumps(sidecar, indent=2) + "\n")
        os.replace(tmp, out)
    except (OSError, tf.errors.OpError) as exc:
        raise DataError(f"{out}: cannot write the TFRecord file ({exc})") from exc
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote %d records to %s", count, out)
    return count
