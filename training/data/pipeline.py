"""The one tf.data pipeline every source goes through, and the batching on top of it.

Preprocessing, in this order: scale to float32 [0, 1] (8-bit values / 255), colour
conversion (gray: luminance with ``tf.image.rgb_to_grayscale``'s ITU-R BT.601 weights;
rgb: gray images tiled to three channels; red: channel 0), then ``tf.image.resize``
(bilinear, no antialiasing, aspect ratio not kept) when the size differs from the target.
The service must preprocess incoming images the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from training.data.base import ColorMode, DataOptions, Split
from training.errors import ConfigError

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class Target:
    """The image format a split is converted to."""

    height: int
    width: int
    channels: int
    color_mode: ColorMode


def native_color(channels: int) -> ColorMode:
    """The colour mode a source with ``channels`` channels has when nobody asks otherwise."""
    return "rgb" if channels >= 3 else "gray"


def resolve_target(
    native_size: tuple[int, int], default_color: ColorMode, options: DataOptions
) -> Target:
    """Target format: the options' size and colour where given, else the source's own."""
    mode: ColorMode = options.color or default_color
    height, width = options.image_size or native_size
    return Target(int(height), int(width), 3 if mode == "rgb" else 1, mode)


def _to_unit(image: tf.Tensor) -> tf.Tensor:
    if image.dtype.is_integer:
        return tf.image.convert_image_dtype(image, tf.float32)
    return tf.cast(image, tf.float32)


def _to_color(image: tf.Tensor, mode: ColorMode) -> tf.Tensor:
    # Decoded files may have 1 (gray), 2 (gray+alpha), 3 (rgb) or 4 (rgba) channels, known
    # only at run time; arrays know theirs statically and skip the tf.cond.
    if mode == "red":
        return image[..., :1]
    if mode == "gray":
        def color() -> tf.Tensor:
            return tf.image.rgb_to_grayscale(image[..., :3])
    else:
        def color() -> tf.Tensor:
            return image[..., :3]

    def gray() -> tf.Tensor:
        single = image[..., :1]
        return single if mode == "gray" else tf.concat([single, single, single], axis=-1)

    static = image.shape[-1]
    if static is not None:
        return color() if static >= 3 else gray()
    return tf.cond(tf.shape(image)[-1] >= 3, color, gray)


def _resize(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    h, w = image.shape[-3], image.shape[-2]
    if h is not None and w is not None:
        if (h, w) == (height, width):
            return image
        return tf.image.resize(image, (height, width), method="bilinear")
    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[-3], height), tf.equal(shape[-2], width))
    return tf.cond(
        same,
        lambda: image,
        lambda: tf.image.resize(image, (height, width), method="bilinear"),
    )


def convert(image: tf.Tensor, target: Target) -> tf.Tensor:
    """Bring one image [h, w, c] or a batch [n, h, w, c] (uint8 or float) to ``target``."""
    out = _resize(_to_color(_to_unit(image), target.color_mode), target.height, target.width)
    # Bilinear weights are convex, but rounding may step a hair outside [0, 1].
    out = tf.clip_by_value(out, 0.0, 1.0)
    lead = [None] * (out.shape.rank - 3) if out.shape.rank is not None else []
    return tf.ensure_shape(out, [*lead, target.height, target.width, target.channels])


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """Decode PNG/JPEG/BMP/GIF bytes to uint8 [h, w, c] (first frame of an animation)."""
    return tf.io.decode_image(encoded, channels=0, dtype=tf.uint8, expand_animations=False)


@dataclass
class ArrayReader:
    """Reads a split held in memory as raw arrays, converting blocks of images at once."""

    images: tf.Tensor
    labels: tf.Tensor
    target: Target
    block: int = 256

    def dataset(self, shuffle_seed: int | None) -> tf.data.Dataset:
        """Unbatched converted (image, label); a full seeded shuffle of indices if asked."""
        n = int(self.labels.shape[0])
        index = tf.data.Dataset.range(n)
        if shuffle_seed is not None:
            index = index.shuffle(n, seed=shuffle_seed, reshuffle_each_iteration=True)
        return index.batch(self.block).map(self._load, num_parallel_calls=AUTOTUNE).unbatch()

    def _load(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return convert(tf.gather(self.images, index), self.target), tf.gather(self.labels, index)


@dataclass
class FileReader:
    """Streams image files: only the file names and labels are held in memory."""

    paths: np.ndarray
    labels: np.ndarray
    target: Target

    def dataset(self, shuffle_seed: int | None) -> tf.data.Dataset:
        """Unbatched converted (image, label); a full seeded shuffle of file names if asked."""
        files = tf.data.Dataset.from_tensor_slices((self.paths, self.labels))
        if shuffle_seed is not None:
            files = files.shuffle(len(self.paths), seed=shuffle_seed, reshuffle_each_iteration=True)
        return files.map(self._load, num_parallel_calls=AUTOTUNE)

    def _load(self, path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return convert(decode(tf.io.read_file(path)), self.target), label


def array_split(images: np.ndarray, labels: np.ndarray, target: Target) -> Split:
    """An in-memory split from raw images [N, h, w, c] (uint8, or float in [0, 1])."""
    reader = ArrayReader(
        tf.constant(images), tf.constant(np.asarray(labels, dtype=np.int64)), target
    )
    return Split(size=len(labels), dataset=reader.dataset(None), in_memory=True, reader=reader)


def file_split(paths: list[str], labels: np.ndarray, target: Target) -> Split:
    """A streamed split of image files, read in the order given."""
    reader = FileReader(
        np.asarray(paths, dtype=object).astype(str), np.asarray(labels, dtype=np.int64), target
    )
    return Split(size=len(paths), dataset=reader.dataset(None), in_memory=False, reader=reader)


def to_numpy(split: Split, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [N, H, W, C], y int64 [N]) of the first ``limit`` items (all by default)."""
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0 or None, got {limit}")
    count = split.size if limit is None else min(limit, split.size)
    image_spec, _ = split.dataset.element_spec
    x = np.empty((count, *image_spec.shape), dtype=np.float32)
    y = np.empty((count,), dtype=np.int64)
    filled = 0
    for images, labels in split.dataset.take(count).batch(1024).as_numpy_iterator():
        x[filled : filled + len(labels)] = images
        y[filled : filled + len(labels)] = labels
        filled += len(labels)
    if filled < count:
        # A split whose dataset was filtered after loading keeps its old size; use what came.
        logger.warning("the split yielded %d items where its size says %d", filled, count)
        return x[:filled], y[:filled]
    return x, y


def _materialized(split: Split, batch_size: int, shuffle: bool, seed: int) -> tf.data.Dataset:
    # Converted images live in one tensor and batches gather from it: a full shuffle then
    # costs an index buffer, not a second copy of the images.
    x, y = to_numpy(split)
    logger.info("cached %d images (%.0f MB) in memory", len(y), x.nbytes / 2**20)
    images, labels = tf.constant(x), tf.constant(y)
    index = tf.data.Dataset.range(len(y))
    if shuffle:
        index = index.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return index.batch(batch_size).map(
        lambda i: (tf.gather(images, i), tf.gather(labels, i)), num_parallel_calls=AUTOTUNE
    )


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    augment_flip: bool = False,
    cache: bool | None = None,
    shuffle_buffer: int | None = None,
) -> tf.data.Dataset:
    """Batches (images float32 [B, H, W, C], labels int64 [B]) of ``split``, prefetched.

    ``shuffle`` reshuffles every epoch, reproducibly for a given ``seed``; ``augment_flip``
    flips images left-right at random (seeded). ``cache`` keeps the converted images in
    memory (None: when the split is in memory). Cached splits and splits with a reader
    shuffle completely; others (TFRecords) through a buffer of ``shuffle_buffer`` images
    (None: min(size, 10000)).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle_buffer is not None and shuffle_buffer < 1:
        raise ConfigError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
    use_cache = split.in_memory if cache is None else cache
    if use_cache:
        data = _materialized(split, batch_size, shuffle, seed)
    else:
        if split.reader is not None:
            items = split.reader.dataset(seed if shuffle else None)
        else:
            items = split.dataset
            if shuffle:
                buffer = shuffle_buffer or min(split.size, 10_000)
                items = items.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        data = items.batch(batch_size)
    if augment_flip:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

        def flip(batch: tuple[tf.Tensor, tf.Tensor], s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return tf.image.stateless_random_flip_left_right(batch[0], seed=s), batch[1]

        data = tf.data.Dataset.zip((data, seeds)).map(flip, num_parallel_calls=AUTOTUNE)
    return data.prefetch(AUTOTUNE)
